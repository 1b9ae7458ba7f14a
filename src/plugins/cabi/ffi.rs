//! The C layout of nbdkit's `struct nbdkit_plugin` (nbdkit-plugin.h) and
//! the other types that cross the plugin ABI.  One struct serves API
//! versions 1 and 2: the slots are the same, only the meaning of the
//! `*_v1` and `pread`..`zero` slots differs (v1 plugins fill the first set,
//! v2 plugins the second).

use std::os::raw::{c_char, c_int, c_void};

pub type Handle = *mut c_void;

/// `struct nbdkit_plugin`, fields in header order.  Every function pointer
/// is an `Option` so a zeroed struct means "no callbacks".
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NbdkitPlugin {
    pub struct_size: u64,
    pub api_version: c_int,
    pub thread_model: c_int,

    pub name: *const c_char,
    pub longname: *const c_char,
    pub version: *const c_char,
    pub description: *const c_char,

    pub load: Option<unsafe extern "C" fn()>,
    pub unload: Option<unsafe extern "C" fn()>,

    pub config: Option<unsafe extern "C" fn(*const c_char, *const c_char) -> c_int>,
    pub config_complete: Option<unsafe extern "C" fn() -> c_int>,
    pub config_help: *const c_char,

    pub open: Option<unsafe extern "C" fn(c_int) -> Handle>,
    pub close: Option<unsafe extern "C" fn(Handle)>,

    pub get_size: Option<unsafe extern "C" fn(Handle) -> i64>,

    pub can_write: Option<unsafe extern "C" fn(Handle) -> c_int>,
    pub can_flush: Option<unsafe extern "C" fn(Handle) -> c_int>,
    pub is_rotational: Option<unsafe extern "C" fn(Handle) -> c_int>,
    pub can_trim: Option<unsafe extern "C" fn(Handle) -> c_int>,

    pub pread_v1: Option<unsafe extern "C" fn(Handle, *mut c_void, u32, u64) -> c_int>,
    pub pwrite_v1: Option<unsafe extern "C" fn(Handle, *const c_void, u32, u64) -> c_int>,
    pub flush_v1: Option<unsafe extern "C" fn(Handle) -> c_int>,
    pub trim_v1: Option<unsafe extern "C" fn(Handle, u32, u64) -> c_int>,
    pub zero_v1: Option<unsafe extern "C" fn(Handle, u32, u64, c_int) -> c_int>,

    pub errno_is_preserved: c_int,

    pub dump_plugin: Option<unsafe extern "C" fn()>,

    pub can_zero: Option<unsafe extern "C" fn(Handle) -> c_int>,
    pub can_fua: Option<unsafe extern "C" fn(Handle) -> c_int>,

    pub pread: Option<unsafe extern "C" fn(Handle, *mut c_void, u32, u64, u32) -> c_int>,
    pub pwrite: Option<unsafe extern "C" fn(Handle, *const c_void, u32, u64, u32) -> c_int>,
    pub flush: Option<unsafe extern "C" fn(Handle, u32) -> c_int>,
    pub trim: Option<unsafe extern "C" fn(Handle, u32, u64, u32) -> c_int>,
    pub zero: Option<unsafe extern "C" fn(Handle, u32, u64, u32) -> c_int>,

    pub magic_config_key: *const c_char,

    pub can_multi_conn: Option<unsafe extern "C" fn(Handle) -> c_int>,

    pub can_extents: Option<unsafe extern "C" fn(Handle) -> c_int>,
    pub extents: Option<unsafe extern "C" fn(Handle, u32, u64, u32, *mut c_void) -> c_int>,
    pub can_cache: Option<unsafe extern "C" fn(Handle) -> c_int>,
    pub cache: Option<unsafe extern "C" fn(Handle, u32, u64, u32) -> c_int>,

    pub thread_model_fn: Option<unsafe extern "C" fn() -> c_int>,

    pub can_fast_zero: Option<unsafe extern "C" fn(Handle) -> c_int>,

    pub preconnect: Option<unsafe extern "C" fn(c_int) -> c_int>,

    pub get_ready: Option<unsafe extern "C" fn() -> c_int>,
    pub after_fork: Option<unsafe extern "C" fn() -> c_int>,

    pub list_exports: Option<unsafe extern "C" fn(c_int, c_int, *mut c_void) -> c_int>,
    pub default_export: Option<unsafe extern "C" fn(c_int, c_int) -> *const c_char>,
    pub export_description: Option<unsafe extern "C" fn(Handle) -> *const c_char>,

    pub cleanup: Option<unsafe extern "C" fn()>,

    pub block_size: Option<unsafe extern "C" fn(Handle, *mut u32, *mut u32, *mut u32) -> c_int>,
}

/// `struct nbdkit_extent`, returned by value from `nbdkit_get_extent`.
#[repr(C)]
pub struct NbdkitExtent {
    pub offset: u64,
    pub length: u64,
    pub type_: u32,
}

/// `struct nbdkit_export`, returned by value from `nbdkit_get_export`.
#[repr(C)]
pub struct NbdkitExport {
    pub name: *mut c_char,
    pub description: *mut c_char,
}

pub const THREAD_MODEL_SERIALIZE_CONNECTIONS: c_int = 0;
pub const THREAD_MODEL_SERIALIZE_ALL_REQUESTS: c_int = 1;
pub const THREAD_MODEL_SERIALIZE_REQUESTS: c_int = 2;
pub const THREAD_MODEL_PARALLEL: c_int = 3;

pub const FLAG_MAY_TRIM: u32 = 1 << 0;
pub const FLAG_FUA: u32 = 1 << 1;
pub const FLAG_REQ_ONE: u32 = 1 << 2;
pub const FLAG_FAST_ZERO: u32 = 1 << 3;

pub const FUA_NONE: c_int = 0;
pub const FUA_EMULATE: c_int = 1;
pub const CACHE_NONE: c_int = 0;
pub const CACHE_EMULATE: c_int = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_header() {
        // nbdkit 1.32's struct_size (Debian's plugins print this value).
        assert_eq!(std::mem::size_of::<NbdkitPlugin>(), 384);
        assert_eq!(std::mem::offset_of!(NbdkitPlugin, name), 16);
        assert_eq!(std::mem::offset_of!(NbdkitPlugin, block_size), 376);
    }
}
