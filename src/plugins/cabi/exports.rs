//! The server side of nbdkit's plugin ABI: the `nbdkit_*` functions a
//! plugin calls, exported from the binary with C linkage (build.rs links it
//! with `-rdynamic`).  The variadic ones live in shim.c and call
//! [`nbdkit_rs_error`] / [`nbdkit_rs_debug`] with the formatted message.
//!
//! Every function follows nbdkit's documented contract: on failure it
//! reports with `nbdkit_error` and returns -1 or NULL.  Parsing uses the
//! same code as our built-in plugins (`crate::parse`).

#![allow(clippy::missing_safety_doc)]

use super::context::{self, with_conn};
use super::ffi::{NbdkitExport, NbdkitExtent};
use crate::extents::Extents;
use crate::server::peer::PeerAddr;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_double, c_int, c_uint, c_void};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Whether stdin/stdout are free for plugins (not with `-s`).
static STDIO_SAFE: AtomicBool = AtomicBool::new(true);

/// Record whether stdin and stdout belong to the NBD connection (`-s`).
pub fn set_stdio_safe(safe: bool) {
    STDIO_SAFE.store(safe, Ordering::Relaxed);
}

/// The server's own `-D nbdkit.*` debug flags, exported like nbdkit's.
#[no_mangle]
pub static nbdkit_debug_environ: AtomicI32 = AtomicI32::new(0);
#[no_mangle]
pub static nbdkit_debug_tls_session: AtomicI32 = AtomicI32::new(0);
#[no_mangle]
pub static nbdkit_debug_backend_controlpath: AtomicI32 = AtomicI32::new(1);
#[no_mangle]
pub static nbdkit_debug_backend_datapath: AtomicI32 = AtomicI32::new(1);

/// A C string argument as text (lossy: plugins pass bytes).
///
/// # Safety
/// `p` is null or a valid NUL-terminated string.
unsafe fn text<'a>(p: *const c_char) -> Option<std::borrow::Cow<'a, str>> {
    // SAFETY: the caller promises `p` is null or a valid C string.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy())
}

fn err(msg: impl Into<String>) {
    context::report_error(msg.into());
}

/// A heap copy the plugin frees with `free()`.
fn malloc_string(s: &str) -> *mut c_char {
    let Ok(c) = CString::new(s) else {
        err("string contains a NUL byte");
        return std::ptr::null_mut();
    };
    // SAFETY: `c` is a valid C string; strdup copies it into malloc'd memory.
    let p = unsafe { libc::strdup(c.as_ptr()) };
    if p.is_null() {
        err("strdup: Cannot allocate memory");
    }
    p
}

// ---- messages ------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn nbdkit_rs_error(msg: *const c_char) {
    // SAFETY: shim.c passes a formatted, NUL-terminated message.
    if let Some(m) = unsafe { text(msg) } {
        err(m.trim_end_matches('\n'));
    }
}

#[no_mangle]
pub unsafe extern "C" fn nbdkit_rs_debug(msg: *const c_char) {
    // SAFETY: shim.c passes a formatted, NUL-terminated message.
    if let Some(m) = unsafe { text(msg) } {
        crate::log::debug(m.trim_end_matches('\n'));
    }
}

#[no_mangle]
pub extern "C" fn nbdkit_rs_verbose() -> c_int {
    c_int::from(crate::log::verbose())
}

#[no_mangle]
pub extern "C" fn nbdkit_set_error(e: c_int) {
    context::set_error(e);
}

// ---- parsing -------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn nbdkit_parse_size(s: *const c_char) -> i64 {
    // SAFETY: the plugin passes a C string (or NULL, refused).
    let Some(s) = (unsafe { text(s) }) else {
        err("nbdkit_parse_size: NULL string");
        return -1;
    };
    match crate::parse::parse_size(&s) {
        Ok(v) => v as i64,
        Err(e) => {
            err(e.message());
            -1
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn nbdkit_parse_bool(s: *const c_char) -> c_int {
    // SAFETY: the plugin passes a C string (or NULL, refused).
    let Some(s) = (unsafe { text(s) }) else {
        err("nbdkit_parse_bool: NULL string");
        return -1;
    };
    match crate::parse::parse_bool(&s) {
        Ok(b) => c_int::from(b),
        Err(e) => {
            err(e.message());
            -1
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn nbdkit_parse_probability(
    what: *const c_char,
    s: *const c_char,
    r: *mut c_double,
) -> c_int {
    // SAFETY: the plugin passes C strings (or NULL).
    let (what, s) = unsafe { (text(what).unwrap_or_default(), text(s)) };
    let Some(s) = s else {
        err(format!("{what}: NULL string"));
        return -1;
    };
    match crate::parse::parse_probability(&what, &s) {
        Ok(v) => {
            if !r.is_null() {
                // SAFETY: `r` is non-null and points to a double (the ABI).
                unsafe { *r = v };
            }
            0
        }
        Err(e) => {
            err(e.message());
            -1
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn nbdkit_parse_delay(
    what: *const c_char,
    s: *const c_char,
    sec: *mut c_uint,
    nsec: *mut c_uint,
) -> c_int {
    // SAFETY: the plugin passes C strings (or NULL).
    let (what, s) = unsafe { (text(what).unwrap_or_default(), text(s)) };
    let Some(s) = s else {
        err(format!("{what}: NULL string"));
        return -1;
    };
    match crate::parse::parse_delay(&what, &s) {
        Ok(d) => {
            let Ok(secs) = c_uint::try_from(d.as_secs()) else {
                err(format!("{what}: delay is too long: \"{s}\""));
                return -1;
            };
            if !sec.is_null() {
                // SAFETY: `sec` is non-null and points to an unsigned (the ABI).
                unsafe { *sec = secs };
            }
            if !nsec.is_null() {
                // SAFETY: as for `sec`.
                unsafe { *nsec = d.subsec_nanos() };
            }
            0
        }
        Err(e) => {
            err(e.message());
            -1
        }
    }
}

/// One signed or unsigned integer parser per C type, all through
/// `crate::parse`.
macro_rules! int_parser {
    ($name:ident, $t:ty, signed) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(what: *const c_char, s: *const c_char, r: *mut $t) -> c_int {
            // SAFETY: the plugin passes C strings (or NULL).
            let (what, s) = unsafe { (text(what).unwrap_or_default(), text(s)) };
            let Some(s) = s else {
                err(format!("{what}: NULL string"));
                return -1;
            };
            match crate::parse::parse_signed(&what, &s, <$t>::MIN as i64, <$t>::MAX as i64) {
                Ok(v) => {
                    if !r.is_null() {
                        // SAFETY: `r` is non-null and points to the C type.
                        unsafe { *r = v as $t };
                    }
                    0
                }
                Err(e) => {
                    err(e.message());
                    -1
                }
            }
        }
    };
    ($name:ident, $t:ty, unsigned) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(what: *const c_char, s: *const c_char, r: *mut $t) -> c_int {
            // SAFETY: the plugin passes C strings (or NULL).
            let (what, s) = unsafe { (text(what).unwrap_or_default(), text(s)) };
            let Some(s) = s else {
                err(format!("{what}: NULL string"));
                return -1;
            };
            if s.trim_start().starts_with('-') {
                err(format!("{what}: negative numbers are not allowed"));
                return -1;
            }
            match crate::parse::parse_unsigned(&what, &s, <$t>::MAX as u64) {
                Ok(v) => {
                    if !r.is_null() {
                        // SAFETY: `r` is non-null and points to the C type.
                        unsafe { *r = v as $t };
                    }
                    0
                }
                Err(e) => {
                    err(e.message());
                    -1
                }
            }
        }
    };
}

int_parser!(nbdkit_parse_int, c_int, signed);
int_parser!(nbdkit_parse_int8_t, i8, signed);
int_parser!(nbdkit_parse_int16_t, i16, signed);
int_parser!(nbdkit_parse_int32_t, i32, signed);
int_parser!(nbdkit_parse_int64_t, i64, signed);
int_parser!(nbdkit_parse_unsigned, c_uint, unsigned);
int_parser!(nbdkit_parse_uint8_t, u8, unsigned);
int_parser!(nbdkit_parse_uint16_t, u16, unsigned);
int_parser!(nbdkit_parse_uint32_t, u32, unsigned);
int_parser!(nbdkit_parse_uint64_t, u64, unsigned);

// ---- paths and passwords -------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn nbdkit_absolute_path(path: *const c_char) -> *mut c_char {
    // SAFETY: the plugin passes a C string (or NULL).
    let path = unsafe { text(path) };
    match path.as_deref() {
        None | Some("") => {
            err("cannot convert null or empty path to an absolute path");
            std::ptr::null_mut()
        }
        Some(p) if p.starts_with('/') => malloc_string(p),
        Some(p) => match std::env::current_dir() {
            Ok(cwd) => malloc_string(&format!("{}/{p}", cwd.display())),
            Err(e) => {
                err(format!("getcwd: {e}"));
                std::ptr::null_mut()
            }
        },
    }
}

#[no_mangle]
pub unsafe extern "C" fn nbdkit_realpath(path: *const c_char) -> *mut c_char {
    // SAFETY: the plugin passes a C string (or NULL).
    let path = unsafe { text(path) };
    match path.as_deref() {
        None | Some("") => {
            err("cannot resolve a null or empty path");
            std::ptr::null_mut()
        }
        Some(p) => match std::fs::canonicalize(p) {
            Ok(r) => malloc_string(&r.to_string_lossy()),
            Err(e) => {
                err(format!("realpath: {p}: {e}"));
                std::ptr::null_mut()
            }
        },
    }
}

#[no_mangle]
pub unsafe extern "C" fn nbdkit_read_password(
    value: *const c_char,
    password: *mut *mut c_char,
) -> c_int {
    if password.is_null() {
        err("nbdkit_read_password: NULL password pointer");
        return -1;
    }
    // SAFETY: `password` is non-null and points to a `char *` (the ABI).
    unsafe { *password = std::ptr::null_mut() };
    // SAFETY: the plugin passes a C string (or NULL).
    let Some(value) = (unsafe { text(value) }) else {
        err("nbdkit_read_password: NULL value");
        return -1;
    };
    match crate::password::read_password(&value) {
        Ok(pw) => {
            let p = malloc_string(&pw);
            if p.is_null() {
                return -1;
            }
            // SAFETY: as above.
            unsafe { *password = p };
            0
        }
        Err(e) => {
            err(e.message());
            -1
        }
    }
}

#[no_mangle]
pub extern "C" fn nbdkit_stdio_safe() -> c_int {
    c_int::from(STDIO_SAFE.load(Ordering::Relaxed))
}

// ---- control ---------------------------------------------------------------

#[no_mangle]
pub extern "C" fn nbdkit_nanosleep(sec: c_uint, nsec: c_uint) -> c_int {
    let d = std::time::Duration::new(u64::from(sec), 0)
        + std::time::Duration::from_nanos(u64::from(nsec));
    match crate::server::quit::sleep(d) {
        Ok(()) => 0,
        Err(e) => {
            err(format!("nbdkit_nanosleep: {}", e.message()));
            nix::errno::Errno::set_raw(e.errno() as i32);
            -1
        }
    }
}

#[no_mangle]
pub extern "C" fn nbdkit_shutdown() {
    crate::server::quit::request();
}

/// Forced: the running request gets no reply and the connection closes.
/// Soft: running requests finish, later ones fail with ESHUTDOWN.
#[no_mangle]
pub extern "C" fn nbdkit_disconnect(force: c_int) {
    if force != 0 {
        crate::server::transmission::disconnect_now();
    } else {
        crate::server::transmission::disconnect_soon();
    }
}

#[no_mangle]
pub extern "C" fn nbdkit_export_name() -> *const c_char {
    with_conn(|c| match c {
        Some(c) => c.export_name.as_ptr(),
        None => {
            err("no connection in this thread");
            std::ptr::null()
        }
    })
}

#[no_mangle]
pub extern "C" fn nbdkit_is_tls() -> c_int {
    with_conn(|c| match c {
        Some(c) => c_int::from(c.is_tls),
        None => {
            err("no connection in this thread");
            -1
        }
    })
}

// ---- peer ----------------------------------------------------------------

fn with_peer<R>(what: &str, fail: R, f: impl FnOnce(&crate::server::peer::Peer) -> R) -> R {
    with_conn(|c| match c.and_then(|c| c.peer.as_ref()) {
        Some(p) => f(p),
        None => {
            err(format!("{what}: no client connection in this thread"));
            fail
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nbdkit_peer_name(
    addr: *mut libc::sockaddr,
    addrlen: *mut libc::socklen_t,
) -> c_int {
    if addr.is_null() || addrlen.is_null() {
        err("nbdkit_peer_name: NULL argument");
        return -1;
    }
    let sa = with_peer("nbdkit_peer_name", None, |p| match &p.addr {
        PeerAddr::Inet(a) => Some(socket2::SockAddr::from(*a)),
        PeerAddr::Unix => socket2::SockAddr::unix("").ok(),
        PeerAddr::Vsock { cid, port } => Some(socket2::SockAddr::vsock(*cid, *port)),
        PeerAddr::Other(_) => {
            err("nbdkit_peer_name: the peer's address is unknown");
            None
        }
    });
    let Some(sa) = sa else { return -1 };
    // SAFETY: `addrlen` is non-null and points to the buffer size.
    let room = unsafe { *addrlen } as usize;
    let n = (sa.len() as usize).min(room);
    // SAFETY: `sa` holds `sa.len()` valid bytes, and the plugin's buffer
    // `addr` has room for `*addrlen` bytes; we copy at most that many.
    unsafe {
        std::ptr::copy_nonoverlapping(sa.as_ptr().cast::<u8>(), addr.cast::<u8>(), n);
        *addrlen = sa.len();
    }
    0
}

fn creds(what: &str) -> Option<crate::server::peer::UnixCreds> {
    with_peer(what, None, |p| {
        if p.creds.is_none() {
            err(format!("{what}: not a Unix domain socket"));
        }
        p.creds
    })
}

#[no_mangle]
pub extern "C" fn nbdkit_peer_pid() -> i64 {
    creds("nbdkit_peer_pid").map_or(-1, |c| i64::from(c.pid))
}

#[no_mangle]
pub extern "C" fn nbdkit_peer_uid() -> i64 {
    creds("nbdkit_peer_uid").map_or(-1, |c| i64::from(c.uid))
}

#[no_mangle]
pub extern "C" fn nbdkit_peer_gid() -> i64 {
    creds("nbdkit_peer_gid").map_or(-1, |c| i64::from(c.gid))
}

fn intern_str(s: &str) -> *const c_char {
    match CString::new(s) {
        Ok(c) => context::intern(&c),
        Err(_) => {
            err("string contains a NUL byte");
            std::ptr::null()
        }
    }
}

#[no_mangle]
pub extern "C" fn nbdkit_peer_security_context() -> *const c_char {
    let label = with_peer("nbdkit_peer_security_context", Err(()), |p| {
        Ok(p.security_label.clone())
    });
    match label {
        Ok(Some(l)) => intern_str(&l),
        Ok(None) => {
            err("nbdkit_peer_security_context: the peer has no security context");
            std::ptr::null()
        }
        Err(()) => std::ptr::null(),
    }
}

#[no_mangle]
pub extern "C" fn nbdkit_peer_tls_dn() -> *const c_char {
    match with_peer("nbdkit_peer_tls_dn", Err(()), |p| Ok(p.tls_peer.clone())) {
        Ok(t) => intern_str(t.as_ref().map_or("", |t| &t.subject_dn)),
        Err(()) => std::ptr::null(),
    }
}

#[no_mangle]
pub extern "C" fn nbdkit_peer_tls_issuer_dn() -> *const c_char {
    match with_peer("nbdkit_peer_tls_issuer_dn", Err(()), |p| {
        Ok(p.tls_peer.clone())
    }) {
        Ok(t) => intern_str(t.as_ref().map_or("", |t| &t.issuer_dn)),
        Err(()) => std::ptr::null(),
    }
}

// ---- interning -----------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn nbdkit_strdup_intern(s: *const c_char) -> *const c_char {
    if s.is_null() {
        err("nbdkit_strdup_intern: NULL string");
        nix::errno::Errno::set_raw(libc::EINVAL);
        return std::ptr::null();
    }
    // SAFETY: `s` is a non-null C string (the ABI).
    context::intern(unsafe { CStr::from_ptr(s) })
}

#[no_mangle]
pub unsafe extern "C" fn nbdkit_strndup_intern(s: *const c_char, n: usize) -> *const c_char {
    if s.is_null() {
        err("nbdkit_strndup_intern: NULL string");
        nix::errno::Errno::set_raw(libc::EINVAL);
        return std::ptr::null();
    }
    // SAFETY: `s` is valid for reads up to its NUL or `n` bytes,
    // whichever comes first; strnlen reads no further.
    let len = unsafe { libc::strnlen(s, n) };
    // SAFETY: the first `len` bytes of `s` are readable and contain no NUL.
    let bytes = unsafe { std::slice::from_raw_parts(s.cast::<u8>(), len) };
    let c = CString::new(bytes).expect("strnlen stops before any NUL");
    context::intern(&c)
}

// ---- extents ---------------------------------------------------------------

#[no_mangle]
pub extern "C" fn nbdkit_extents_new(start: u64, end: u64) -> *mut c_void {
    if start > end || end > i64::MAX as u64 {
        err(format!(
            "nbdkit_extents_new: start ({start}) > end ({end}) or end too large"
        ));
        nix::errno::Errno::set_raw(libc::ERANGE);
        return std::ptr::null_mut();
    }
    Box::into_raw(Box::new(Extents::new(start, end))).cast()
}

#[no_mangle]
pub unsafe extern "C" fn nbdkit_extents_free(exts: *mut c_void) {
    if !exts.is_null() {
        // SAFETY: non-null extents handed to plugins come from
        // nbdkit_extents_new (Box::into_raw); lists the server passes to
        // `.extents` are never freed by well-behaved plugins (nbdkit's
        // contract).
        drop(unsafe { Box::from_raw(exts.cast::<Extents>()) });
    }
}

#[no_mangle]
pub unsafe extern "C" fn nbdkit_extents_count(exts: *const c_void) -> usize {
    // SAFETY: `exts` is an extents list from the server or extents_new.
    unsafe { exts.cast::<Extents>().as_ref() }.map_or(0, |e| e.list().len())
}

#[no_mangle]
pub unsafe extern "C" fn nbdkit_get_extent(exts: *const c_void, i: usize) -> NbdkitExtent {
    // SAFETY: `exts` is an extents list from the server or extents_new.
    let e = unsafe { exts.cast::<Extents>().as_ref() }.and_then(|e| e.list().get(i).copied());
    match e {
        Some(e) => NbdkitExtent {
            offset: e.offset,
            length: e.length,
            type_: e.flags,
        },
        None => NbdkitExtent {
            offset: 0,
            length: 0,
            type_: 0,
        },
    }
}

#[no_mangle]
pub unsafe extern "C" fn nbdkit_add_extent(
    exts: *mut c_void,
    offset: u64,
    length: u64,
    type_: u32,
) -> c_int {
    // SAFETY: `exts` is the list passed to `.extents` or from extents_new,
    // used only by the thread running that callback.
    let Some(e) = (unsafe { exts.cast::<Extents>().as_mut() }) else {
        err("nbdkit_add_extent: NULL extents list");
        return -1;
    };
    if length == 0 {
        return 0;
    }
    match e.add(offset, length, type_) {
        Ok(()) => 0,
        Err(x) => {
            err(format!("nbdkit_add_extent: {}", x.message()));
            nix::errno::Errno::set_raw(x.errno() as i32);
            -1
        }
    }
}

// ---- export lists ----------------------------------------------------------

/// `struct nbdkit_exports`: what `.list_exports` adds.
#[derive(Default)]
pub struct Exports {
    /// Names and descriptions, kept as C strings for `nbdkit_get_export`.
    pub list: Vec<(CString, Option<CString>)>,
    /// Set by `nbdkit_use_default_export`: where the default export goes.
    pub default_at: Vec<usize>,
}

/// nbdkit's cap on the number of exports in one list.
const MAX_EXPORTS: usize = 10_000;

#[no_mangle]
pub extern "C" fn nbdkit_exports_new() -> *mut c_void {
    Box::into_raw(Box::<Exports>::default()).cast()
}

#[no_mangle]
pub unsafe extern "C" fn nbdkit_exports_free(exps: *mut c_void) {
    if !exps.is_null() {
        // SAFETY: lists handed to plugins by nbdkit_exports_new are boxes.
        drop(unsafe { Box::from_raw(exps.cast::<Exports>()) });
    }
}

#[no_mangle]
pub unsafe extern "C" fn nbdkit_exports_count(exps: *const c_void) -> usize {
    // SAFETY: `exps` is an export list from the server or exports_new.
    unsafe { exps.cast::<Exports>().as_ref() }.map_or(0, |e| e.list.len())
}

#[no_mangle]
pub unsafe extern "C" fn nbdkit_get_export(exps: *const c_void, i: usize) -> NbdkitExport {
    // SAFETY: `exps` is an export list from the server or exports_new.
    let e = unsafe { exps.cast::<Exports>().as_ref() }.and_then(|e| e.list.get(i));
    match e {
        Some((n, d)) => NbdkitExport {
            name: n.as_ptr().cast_mut(),
            description: d
                .as_ref()
                .map_or(std::ptr::null_mut(), |d| d.as_ptr().cast_mut()),
        },
        None => NbdkitExport {
            name: std::ptr::null_mut(),
            description: std::ptr::null_mut(),
        },
    }
}

#[no_mangle]
pub unsafe extern "C" fn nbdkit_add_export(
    exps: *mut c_void,
    name: *const c_char,
    description: *const c_char,
) -> c_int {
    // SAFETY: `exps` is the list passed to `.list_exports` (or from
    // exports_new), used by one thread at a time.
    let Some(e) = (unsafe { exps.cast::<Exports>().as_mut() }) else {
        err("nbdkit_add_export: NULL export list");
        return -1;
    };
    if name.is_null() {
        err("nbdkit_add_export: NULL export name");
        return -1;
    }
    if e.list.len() >= MAX_EXPORTS {
        err("nbdkit_add_export: too many exports");
        nix::errno::Errno::set_raw(libc::EINVAL);
        return -1;
    }
    // SAFETY: `name` is a non-null C string (the ABI).
    let n = unsafe { CStr::from_ptr(name) }.to_owned();
    if n.as_bytes().len() > 4096 {
        err("nbdkit_add_export: export name too long");
        nix::errno::Errno::set_raw(libc::EINVAL);
        return -1;
    }
    // SAFETY: `description` is null or a C string (the ABI).
    let d = (!description.is_null()).then(|| unsafe { CStr::from_ptr(description) }.to_owned());
    e.list.push((n, d));
    0
}

#[no_mangle]
pub unsafe extern "C" fn nbdkit_use_default_export(exps: *mut c_void) -> c_int {
    // SAFETY: as for nbdkit_add_export.
    let Some(e) = (unsafe { exps.cast::<Exports>().as_mut() }) else {
        err("nbdkit_use_default_export: NULL export list");
        return -1;
    };
    let at = e.list.len();
    e.default_at.push(at);
    e.list.push((CString::default(), None));
    0
}

/// The exported functions, referenced so the linker keeps them in the
/// binary (nothing in Rust calls most of them).
pub fn keep() -> usize {
    extern "C" {
        fn nbdkit_rs_shim_anchor();
    }
    let fns: &[*const ()] = &[
        nbdkit_rs_shim_anchor as *const (),
        nbdkit_rs_error as *const (),
        nbdkit_rs_debug as *const (),
        nbdkit_rs_verbose as *const (),
        nbdkit_set_error as *const (),
        nbdkit_parse_size as *const (),
        nbdkit_parse_bool as *const (),
        nbdkit_parse_probability as *const (),
        nbdkit_parse_delay as *const (),
        nbdkit_parse_int as *const (),
        nbdkit_parse_int8_t as *const (),
        nbdkit_parse_int16_t as *const (),
        nbdkit_parse_int32_t as *const (),
        nbdkit_parse_int64_t as *const (),
        nbdkit_parse_unsigned as *const (),
        nbdkit_parse_uint8_t as *const (),
        nbdkit_parse_uint16_t as *const (),
        nbdkit_parse_uint32_t as *const (),
        nbdkit_parse_uint64_t as *const (),
        nbdkit_absolute_path as *const (),
        nbdkit_realpath as *const (),
        nbdkit_read_password as *const (),
        nbdkit_stdio_safe as *const (),
        nbdkit_nanosleep as *const (),
        nbdkit_shutdown as *const (),
        nbdkit_disconnect as *const (),
        nbdkit_export_name as *const (),
        nbdkit_is_tls as *const (),
        nbdkit_peer_name as *const (),
        nbdkit_peer_pid as *const (),
        nbdkit_peer_uid as *const (),
        nbdkit_peer_gid as *const (),
        nbdkit_peer_security_context as *const (),
        nbdkit_peer_tls_dn as *const (),
        nbdkit_peer_tls_issuer_dn as *const (),
        nbdkit_strdup_intern as *const (),
        nbdkit_strndup_intern as *const (),
        nbdkit_extents_new as *const (),
        nbdkit_extents_free as *const (),
        nbdkit_extents_count as *const (),
        nbdkit_get_extent as *const (),
        nbdkit_add_extent as *const (),
        nbdkit_exports_new as *const (),
        nbdkit_exports_free as *const (),
        nbdkit_exports_count as *const (),
        nbdkit_get_export as *const (),
        nbdkit_add_export as *const (),
        nbdkit_use_default_export as *const (),
        &nbdkit_debug_environ as *const AtomicI32 as *const (),
        &nbdkit_debug_tls_session as *const AtomicI32 as *const (),
        &nbdkit_debug_backend_controlpath as *const AtomicI32 as *const (),
        &nbdkit_debug_backend_datapath as *const AtomicI32 as *const (),
    ];
    std::hint::black_box(fns).len()
}
