//! A thin, safe wrapper over the parts of libnbd's C API (libnbd(3)) that
//! the nbd plugin uses.  All `unsafe` of the plugin lives here.
//!
//! The `libnbd` crate is not on the registry we build from, so this module
//! declares the few functions it needs itself (they exist in every libnbd
//! since 1.14, Debian 12's) and loads `libnbd.so.0` when the plugin first
//! needs it (see [`load`]).
//!
//! An [`Nbd`] owns one `struct nbd_handle`.  libnbd serialises every call
//! on a handle with the handle's own lock, so `&Nbd` may be used from many
//! threads.  Data commands are issued with the asynchronous API and waited
//! for in [`Nbd::execute`]; some other thread must keep the state machine
//! moving with [`Nbd::poll_once`] meanwhile (see `conn.rs`).

use crate::error::{Error, Result};
use libc::{c_char, c_int, c_uint, c_void, size_t};
use nix::errno::Errno;
use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

/// The opaque C handle.
#[repr(C)]
struct NbdHandle {
    _private: [u8; 0],
}

type CompletionFn = extern "C" fn(*mut c_void, *mut c_int) -> c_int;
type ExtentFn =
    extern "C" fn(*mut c_void, *const c_char, u64, *mut u32, size_t, *mut c_int) -> c_int;
type ListFn = extern "C" fn(*mut c_void, *const c_char, *const c_char) -> c_int;
type FreeFn = extern "C" fn(*mut c_void);

/// `nbd_completion_callback`.
#[repr(C)]
struct CompletionCallback {
    callback: Option<CompletionFn>,
    user_data: *mut c_void,
    free: Option<FreeFn>,
}

/// `nbd_extent_callback`.
#[repr(C)]
struct ExtentCallback {
    callback: Option<ExtentFn>,
    user_data: *mut c_void,
    free: Option<FreeFn>,
}

/// `nbd_list_callback`.
#[repr(C)]
struct ListCallback {
    callback: Option<ListFn>,
    user_data: *mut c_void,
    free: Option<FreeFn>,
}

pub const TLS_DISABLE: c_int = 0;
pub const TLS_ALLOW: c_int = 1;
pub const TLS_REQUIRE: c_int = 2;

const SIZE_MINIMUM: c_int = 0;
const SIZE_PREFERRED: c_int = 1;
const SIZE_MAXIMUM: c_int = 2;

pub const CMD_FLAG_FUA: u32 = 0x01;
pub const CMD_FLAG_NO_HOLE: u32 = 0x02;
pub const CMD_FLAG_REQ_ONE: u32 = 0x08;
pub const CMD_FLAG_FAST_ZERO: u32 = 0x10;

const AIO_DIRECTION_READ: c_uint = 1;
const AIO_DIRECTION_WRITE: c_uint = 2;

/// The meta context the plugin asks for and passes through.
pub const BASE_ALLOCATION: &str = "base:allocation";

/// The shared object the plugin loads: libnbd's soname since 1.0.
const LIBNBD: &str = "libnbd.so.0";

/// Declares the libnbd functions the plugin calls.  libnbd is not linked:
/// it (with GnuTLS, libxml2 and ICU behind it) would cost every nbdkit
/// start-up over a millisecond, whatever the plugin.  Instead [`load`] opens
/// it when the `nbd` plugin first needs it and fills a table of pointers;
/// each function here has libnbd's name and signature and calls through
/// that table, so the code below reads as if libnbd were linked.
macro_rules! libnbd_api {
    ($(fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty;)*) => {
        /// Pointers to libnbd's functions, resolved once.
        struct Api {
            $($name: unsafe extern "C" fn($($ty),*) -> $ret,)*
        }

        impl Api {
            /// Look every function up in `lib`.
            ///
            /// # Safety
            /// `lib` is a live handle from `dlopen` of libnbd, never closed.
            unsafe fn resolve(lib: *mut c_void) -> std::result::Result<Api, String> {
                Ok(Api {
                    $($name: {
                        let symbol = concat!(stringify!($name), "\0");
                        // SAFETY: `lib` is live (the caller's promise) and
                        // `symbol` is NUL-terminated.
                        let f = unsafe { libc::dlsym(lib, symbol.as_ptr().cast()) };
                        if f.is_null() {
                            return Err(format!(
                                "{LIBNBD}: no {} (libnbd 1.14 or later is needed)",
                                stringify!($name)
                            ));
                        }
                        // SAFETY: libnbd exports this symbol as a function
                        // with exactly the C signature declared here
                        // (libnbd-api(3)); a data pointer from dlsym and a
                        // function pointer have the same size on Linux.
                        unsafe {
                            std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($ty),*) -> $ret>(f)
                        }
                    },)*
                })
            }
        }

        $(
            /// libnbd's function of this name.
            ///
            /// # Safety
            /// As libnbd documents for it; and [`load`] has succeeded, which
            /// every caller's handle or failed call implies.
            unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
                // SAFETY: the caller keeps libnbd's own contract.
                unsafe { (api().$name)($($arg),*) }
            }
        )*
    };
}

libnbd_api! {
    fn nbd_create() -> *mut NbdHandle;
    fn nbd_close(h: *mut NbdHandle) -> ();
    fn nbd_get_error() -> *const c_char;
    fn nbd_get_errno() -> c_int;
    fn nbd_get_version(h: *mut NbdHandle) -> *const c_char;
    fn nbd_supports_tls(h: *mut NbdHandle) -> c_int;
    fn nbd_supports_uri(h: *mut NbdHandle) -> c_int;
    fn nbd_set_handle_name(h: *mut NbdHandle, name: *const c_char) -> c_int;
    fn nbd_set_export_name(h: *mut NbdHandle, name: *const c_char) -> c_int;
    fn nbd_add_meta_context(h: *mut NbdHandle, name: *const c_char) -> c_int;
    fn nbd_set_full_info(h: *mut NbdHandle, request: bool) -> c_int;
    fn nbd_set_pread_initialize(h: *mut NbdHandle, request: bool) -> c_int;
    fn nbd_set_opt_mode(h: *mut NbdHandle, enable: bool) -> c_int;
    fn nbd_set_uri_allow_local_file(h: *mut NbdHandle, allow: bool) -> c_int;
    fn nbd_set_tls(h: *mut NbdHandle, tls: c_int) -> c_int;
    fn nbd_set_tls_certificates(h: *mut NbdHandle, dir: *const c_char) -> c_int;
    fn nbd_set_tls_verify_peer(h: *mut NbdHandle, verify: bool) -> c_int;
    fn nbd_set_tls_username(h: *mut NbdHandle, name: *const c_char) -> c_int;
    fn nbd_set_tls_psk_file(h: *mut NbdHandle, file: *const c_char) -> c_int;
    fn nbd_connect_uri(h: *mut NbdHandle, uri: *const c_char) -> c_int;
    fn nbd_connect_unix(h: *mut NbdHandle, path: *const c_char) -> c_int;
    fn nbd_connect_tcp(h: *mut NbdHandle, host: *const c_char, port: *const c_char) -> c_int;
    fn nbd_connect_vsock(h: *mut NbdHandle, cid: u32, port: u32) -> c_int;
    fn nbd_connect_socket(h: *mut NbdHandle, sock: c_int) -> c_int;
    fn nbd_connect_systemd_socket_activation(
        h: *mut NbdHandle,
        argv: *mut *mut c_char,
    ) -> c_int;
    fn nbd_opt_go(h: *mut NbdHandle) -> c_int;
    fn nbd_opt_abort(h: *mut NbdHandle) -> c_int;
    fn nbd_opt_info(h: *mut NbdHandle) -> c_int;
    fn nbd_opt_list(h: *mut NbdHandle, cb: ListCallback) -> c_int;
    fn nbd_get_canonical_export_name(h: *mut NbdHandle) -> *mut c_char;
    fn nbd_get_export_description(h: *mut NbdHandle) -> *mut c_char;
    fn nbd_shutdown(h: *mut NbdHandle, flags: u32) -> c_int;
    fn nbd_get_size(h: *mut NbdHandle) -> i64;
    fn nbd_get_block_size(h: *mut NbdHandle, size_type: c_int) -> i64;
    fn nbd_is_read_only(h: *mut NbdHandle) -> c_int;
    fn nbd_can_flush(h: *mut NbdHandle) -> c_int;
    fn nbd_can_fua(h: *mut NbdHandle) -> c_int;
    fn nbd_is_rotational(h: *mut NbdHandle) -> c_int;
    fn nbd_can_trim(h: *mut NbdHandle) -> c_int;
    fn nbd_can_zero(h: *mut NbdHandle) -> c_int;
    fn nbd_can_fast_zero(h: *mut NbdHandle) -> c_int;
    fn nbd_can_multi_conn(h: *mut NbdHandle) -> c_int;
    fn nbd_can_cache(h: *mut NbdHandle) -> c_int;
    fn nbd_can_meta_context(h: *mut NbdHandle, name: *const c_char) -> c_int;
    fn nbd_aio_pread(
        h: *mut NbdHandle,
        buf: *mut c_void,
        count: size_t,
        offset: u64,
        cb: CompletionCallback,
        flags: u32,
    ) -> i64;
    fn nbd_aio_pwrite(
        h: *mut NbdHandle,
        buf: *const c_void,
        count: size_t,
        offset: u64,
        cb: CompletionCallback,
        flags: u32,
    ) -> i64;
    fn nbd_aio_flush(h: *mut NbdHandle, cb: CompletionCallback, flags: u32) -> i64;
    fn nbd_aio_trim(
        h: *mut NbdHandle,
        count: u64,
        offset: u64,
        cb: CompletionCallback,
        flags: u32,
    ) -> i64;
    fn nbd_aio_cache(
        h: *mut NbdHandle,
        count: u64,
        offset: u64,
        cb: CompletionCallback,
        flags: u32,
    ) -> i64;
    fn nbd_aio_zero(
        h: *mut NbdHandle,
        count: u64,
        offset: u64,
        cb: CompletionCallback,
        flags: u32,
    ) -> i64;
    fn nbd_aio_block_status(
        h: *mut NbdHandle,
        count: u64,
        offset: u64,
        extent: ExtentCallback,
        cb: CompletionCallback,
        flags: u32,
    ) -> i64;
    fn nbd_aio_disconnect(h: *mut NbdHandle, flags: u32) -> c_int;
    fn nbd_aio_get_fd(h: *mut NbdHandle) -> c_int;
    fn nbd_aio_get_direction(h: *mut NbdHandle) -> c_uint;
    fn nbd_aio_notify_read(h: *mut NbdHandle) -> c_int;
    fn nbd_aio_notify_write(h: *mut NbdHandle) -> c_int;
    fn nbd_aio_is_negotiating(h: *mut NbdHandle) -> c_int;
    fn nbd_aio_is_ready(h: *mut NbdHandle) -> c_int;
    fn nbd_aio_is_dead(h: *mut NbdHandle) -> c_int;
    fn nbd_aio_is_closed(h: *mut NbdHandle) -> c_int;
}

static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();

/// Open libnbd and resolve its functions, once per process; the error
/// names what is missing.  Everything else here needs it done first:
/// [`Nbd::create`] calls it.
pub fn load() -> Result<()> {
    match API.get_or_init(|| open(LIBNBD)) {
        Ok(_) => Ok(()),
        Err(msg) => Err(Error::config(msg.clone())),
    }
}

/// Open the shared object `name` and resolve libnbd's functions in it.
fn open(name: &str) -> std::result::Result<Api, String> {
    let cname = CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: `cname` is a valid C string.  dlopen runs the library's (and
    // its dependencies') initialisers, which need nothing from us; the
    // handle is never closed, so the table stays valid for the process's
    // life.
    let lib = unsafe { libc::dlopen(cname.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if lib.is_null() {
        return Err(crate::plugins::cabi::dlerror());
    }
    // SAFETY: `lib` was just opened and is never closed.
    unsafe { Api::resolve(lib) }
}

/// The loaded table.  Only called through the wrappers, whose callers hold
/// a handle or a failed call's error, both of which need [`load`] to have
/// succeeded.
fn api() -> &'static Api {
    match API.get() {
        Some(Ok(api)) => api,
        _ => unreachable!("libnbd was called before it was loaded"),
    }
}

/// The calling thread's last libnbd error, as an [`Error`] (libnbd keeps
/// the message and errno per thread, so this must be called right after
/// the failing call, on the same thread).
fn last_error() -> Error {
    // SAFETY: both functions only read libnbd's thread-local error state;
    // the message pointer, when not NULL, is a NUL-terminated string valid
    // until the next libnbd call on this thread, and is copied at once.
    let (msg, errno) = unsafe {
        let p = nbd_get_error();
        let msg = if p.is_null() {
            "unknown libnbd error".to_string()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        };
        (msg, nbd_get_errno())
    };
    let errno = if errno == 0 {
        Errno::EIO
    } else {
        Errno::from_raw(errno)
    };
    Error::new(errno, msg)
}

/// A string for C; an interior NUL is a configuration error.
pub fn cstring(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::config(format!("{what}: must not contain a NUL byte")))
}

/// Take a `malloc`ed C string returned by libnbd.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string allocated with `malloc` that the
/// caller owns.
unsafe fn take_string(p: *mut c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: by the contract above, `p` is a valid C string we own; it is
    // copied and then released with the allocator that made it.
    unsafe {
        let s = CStr::from_ptr(p).to_string_lossy().into_owned();
        libc::free(p.cast());
        Some(s)
    }
}

/// Take over a socket inherited from the parent process and named by
/// number on the command line (`socket-fd=`); call once per number.
pub fn inherited_socket(fd: RawFd) -> Result<OwnedFd> {
    // SAFETY: an all-zero `stat` is a valid value for fstat to fill in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat only writes into `st`; a closed `fd` just fails.
    let r = unsafe { libc::fstat(fd, &mut st) };
    if r == -1 {
        let e = Errno::last();
        return Err(Error::config(format!("socket-fd: {fd}: {}", e.desc())));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(Error::config(format!("socket-fd: {fd} is not a socket")));
    }
    // SAFETY: the descriptor is open (fstat succeeded) and was handed to us
    // by whoever started nbdkit, for this plugin alone; nothing else in the
    // process owns it, and the plugin takes it once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One libnbd handle.
pub struct Nbd {
    h: NonNull<NbdHandle>,
}

// SAFETY: libnbd handles are thread-safe: every API call takes the handle's
// internal mutex (libnbd(3), "Multithreading"), and the handle is not tied
// to the thread that created it.
unsafe impl Send for Nbd {}
// SAFETY: as above; `&Nbd` only ever calls libnbd functions, which lock.
unsafe impl Sync for Nbd {}

impl Drop for Nbd {
    fn drop(&mut self) {
        // SAFETY: we own the handle and nothing borrows `self` any more, so
        // no command issued through us can still be waiting for it.
        unsafe { nbd_close(self.h.as_ptr()) }
    }
}

/// The outcome of an asynchronous command, filled in by libnbd's callbacks
/// on whichever thread runs the state machine.
#[derive(Default)]
struct Pending {
    /// `Some(errno)` once the completion callback ran (0 = success).
    done: Mutex<Option<c_int>>,
    cv: Condvar,
    /// `base:allocation` extents seen so far: (offset, length, flags).
    extents: Mutex<Vec<(u64, u64, u32)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

extern "C" fn on_complete(user_data: *mut c_void, error: *mut c_int) -> c_int {
    // SAFETY: `user_data` is the `Arc<Pending>` pointer given with this
    // callback; its reference is only released by `on_free`, which libnbd
    // calls after this callback.  `error` points at libnbd's status int.
    let (pending, err) = unsafe { (&*(user_data as *const Pending), *error) };
    *lock(&pending.done) = Some(err);
    // The lock is released first, so the woken thread need not wait for
    // it; one thread waits per command.
    pending.cv.notify_one();
    // 1: retire the command now, nobody will ask for it by cookie.
    1
}

extern "C" fn on_extent(
    user_data: *mut c_void,
    metacontext: *const c_char,
    offset: u64,
    entries: *mut u32,
    nr_entries: size_t,
    _error: *mut c_int,
) -> c_int {
    // SAFETY: `user_data` is an `Arc<Pending>` pointer kept alive until
    // `on_free`; `metacontext` is a C string and `entries` an array of
    // `nr_entries` u32 that libnbd owns for the duration of this call.
    let (pending, context, entries) = unsafe {
        (
            &*(user_data as *const Pending),
            CStr::from_ptr(metacontext),
            std::slice::from_raw_parts(entries, nr_entries),
        )
    };
    if context.to_bytes() != BASE_ALLOCATION.as_bytes() {
        return 0;
    }
    let mut list = lock(&pending.extents);
    let mut off = offset;
    for pair in entries.chunks_exact(2) {
        let len = u64::from(pair[0]);
        list.push((off, len, pair[1]));
        off = off.saturating_add(len);
    }
    0
}

extern "C" fn on_free(user_data: *mut c_void) {
    // SAFETY: each callback registered with `on_free` owns one strong count
    // made by `Arc::into_raw`; libnbd calls the free function exactly once
    // per registered callback, so this gives that count back once.
    unsafe { drop(Arc::from_raw(user_data as *const Pending)) }
}

/// Register `pending` for one libnbd callback: the callback holds one
/// strong count, released by [`on_free`].
fn share(pending: &Arc<Pending>) -> *mut c_void {
    Arc::into_raw(Arc::clone(pending)) as *mut c_void
}

fn completion(pending: &Arc<Pending>) -> CompletionCallback {
    CompletionCallback {
        callback: Some(on_complete),
        user_data: share(pending),
        free: Some(on_free),
    }
}

/// A data command for [`Nbd::execute`].
pub enum Command<'a> {
    Pread(&'a mut [u8], u64),
    Pwrite(&'a [u8], u64, u32),
    Flush,
    Trim(u64, u64, u32),
    Zero(u64, u64, u32),
    Cache(u64, u64),
    BlockStatus(u64, u64, u32),
}

/// What [`Nbd::poll_once`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Polled {
    /// The handle is closed or dead: the state machine is finished.
    Finished,
    /// The state machine moved (or the timeout passed).
    Progress,
    /// The wake-up descriptor was readable.
    Woken,
    /// The quit descriptor was readable: the connection was cut.
    Quit,
}

impl Nbd {
    /// A fresh, unconnected handle.
    pub fn create() -> Result<Nbd> {
        load()?;
        // SAFETY: nbd_create has no preconditions but a loaded libnbd
        // (just checked); NULL means failure.
        let h = unsafe { nbd_create() };
        NonNull::new(h).map(|h| Nbd { h }).ok_or_else(last_error)
    }

    fn ptr(&self) -> *mut NbdHandle {
        self.h.as_ptr()
    }

    /// Turn a libnbd status (-1 on error) into a `Result`.
    fn check(r: c_int) -> Result<c_int> {
        if r == -1 {
            Err(last_error())
        } else {
            Ok(r)
        }
    }

    fn flag(&self, f: unsafe extern "C" fn(*mut NbdHandle) -> c_int) -> Result<bool> {
        // SAFETY: `f` is one of libnbd's handle queries, taking a valid
        // handle, which `self` is.
        Self::check(unsafe { f(self.ptr()) }).map(|r| r != 0)
    }

    fn set_str(
        &self,
        f: unsafe extern "C" fn(*mut NbdHandle, *const c_char) -> c_int,
        what: &str,
        value: &str,
    ) -> Result<()> {
        let c = cstring(what, value)?;
        // SAFETY: valid handle and a NUL-terminated string that libnbd
        // copies before returning.
        Self::check(unsafe { f(self.ptr(), c.as_ptr()) }).map(drop)
    }

    fn set_bool(
        &self,
        f: unsafe extern "C" fn(*mut NbdHandle, bool) -> c_int,
        value: bool,
    ) -> Result<()> {
        // SAFETY: valid handle, plain value.
        Self::check(unsafe { f(self.ptr(), value) }).map(drop)
    }

    /// libnbd's version string.
    pub fn version(&self) -> String {
        // SAFETY: returns a static string owned by libnbd.
        unsafe { CStr::from_ptr(nbd_get_version(self.ptr())) }
            .to_string_lossy()
            .into_owned()
    }

    pub fn supports_tls(&self) -> bool {
        self.flag(nbd_supports_tls).unwrap_or(false)
    }

    pub fn supports_uri(&self) -> bool {
        self.flag(nbd_supports_uri).unwrap_or(false)
    }

    pub fn set_handle_name(&self, name: &str) -> Result<()> {
        self.set_str(nbd_set_handle_name, "handle name", name)
    }
    pub fn set_export_name(&self, name: &str) -> Result<()> {
        self.set_str(nbd_set_export_name, "export", name)
    }
    pub fn add_meta_context(&self, name: &str) -> Result<()> {
        self.set_str(nbd_add_meta_context, "meta context", name)
    }
    pub fn set_full_info(&self, on: bool) -> Result<()> {
        self.set_bool(nbd_set_full_info, on)
    }
    pub fn set_pread_initialize(&self, on: bool) -> Result<()> {
        self.set_bool(nbd_set_pread_initialize, on)
    }
    pub fn set_opt_mode(&self, on: bool) -> Result<()> {
        self.set_bool(nbd_set_opt_mode, on)
    }
    pub fn set_uri_allow_local_file(&self, on: bool) -> Result<()> {
        self.set_bool(nbd_set_uri_allow_local_file, on)
    }
    pub fn set_tls(&self, mode: c_int) -> Result<()> {
        // SAFETY: valid handle, plain value (checked by libnbd).
        Self::check(unsafe { nbd_set_tls(self.ptr(), mode) }).map(drop)
    }
    pub fn set_tls_certificates(&self, dir: &str) -> Result<()> {
        self.set_str(nbd_set_tls_certificates, "tls-certificates", dir)
    }
    pub fn set_tls_verify_peer(&self, on: bool) -> Result<()> {
        self.set_bool(nbd_set_tls_verify_peer, on)
    }
    pub fn set_tls_username(&self, name: &str) -> Result<()> {
        self.set_str(nbd_set_tls_username, "tls-username", name)
    }
    pub fn set_tls_psk_file(&self, file: &str) -> Result<()> {
        self.set_str(nbd_set_tls_psk_file, "tls-psk", file)
    }

    pub fn connect_uri(&self, uri: &str) -> Result<()> {
        self.set_str(nbd_connect_uri, "uri", uri)
    }
    pub fn connect_unix(&self, path: &str) -> Result<()> {
        self.set_str(nbd_connect_unix, "socket", path)
    }
    pub fn connect_tcp(&self, host: &str, port: &str) -> Result<()> {
        let h = cstring("hostname", host)?;
        let p = cstring("port", port)?;
        // SAFETY: valid handle and two NUL-terminated strings that outlive
        // the (synchronous) call.
        Self::check(unsafe { nbd_connect_tcp(self.ptr(), h.as_ptr(), p.as_ptr()) }).map(drop)
    }
    pub fn connect_vsock(&self, cid: u32, port: u32) -> Result<()> {
        // SAFETY: valid handle, plain values.
        Self::check(unsafe { nbd_connect_vsock(self.ptr(), cid, port) }).map(drop)
    }
    /// Connect over an already connected socket; libnbd takes it over (and
    /// closes it with the handle).
    pub fn connect_socket(&self, sock: OwnedFd) -> Result<()> {
        let fd = sock.into_raw_fd();
        // SAFETY: valid handle; `fd` is an open descriptor whose ownership
        // passes to libnbd here.
        Self::check(unsafe { nbd_connect_socket(self.ptr(), fd) }).map(drop)
    }
    /// Run `argv` as a socket-activated NBD server and connect to it.
    pub fn connect_systemd_socket_activation(&self, argv: &[String]) -> Result<()> {
        let owned = argv
            .iter()
            .map(|a| cstring("command", a))
            .collect::<Result<Vec<_>>>()?;
        let mut ptrs: Vec<*mut c_char> = owned.iter().map(|c| c.as_ptr() as *mut c_char).collect();
        ptrs.push(std::ptr::null_mut());
        // SAFETY: valid handle; `ptrs` is a NULL-terminated array of C
        // strings that outlive the (synchronous) call.  libnbd copies them
        // and does not write through the pointers.
        Self::check(unsafe { nbd_connect_systemd_socket_activation(self.ptr(), ptrs.as_mut_ptr()) })
            .map(drop)
    }

    pub fn opt_go(&self) -> Result<()> {
        self.flag(nbd_opt_go).map(drop)
    }
    pub fn opt_abort(&self) -> Result<()> {
        self.flag(nbd_opt_abort).map(drop)
    }
    pub fn opt_info(&self) -> Result<()> {
        self.flag(nbd_opt_info).map(drop)
    }

    /// `NBD_OPT_LIST`: the server's exports as (name, description).
    pub fn opt_list(&self) -> Result<Vec<(String, String)>> {
        extern "C" fn one(ud: *mut c_void, name: *const c_char, desc: *const c_char) -> c_int {
            // SAFETY: `ud` is the `&mut Vec` passed below, alive for the
            // whole synchronous nbd_opt_list call during which libnbd calls
            // us; `name` and `desc` are C strings valid during this call.
            let (list, name, desc) = unsafe {
                (
                    &mut *(ud as *mut Vec<(String, String)>),
                    CStr::from_ptr(name),
                    CStr::from_ptr(desc),
                )
            };
            list.push((
                name.to_string_lossy().into_owned(),
                desc.to_string_lossy().into_owned(),
            ));
            0
        }
        let mut list: Vec<(String, String)> = Vec::new();
        let cb = ListCallback {
            callback: Some(one),
            user_data: (&mut list as *mut Vec<(String, String)>).cast(),
            free: None,
        };
        // SAFETY: valid handle; the callback's user data outlives the call,
        // and libnbd never calls a list callback after nbd_opt_list returns.
        Self::check(unsafe { nbd_opt_list(self.ptr(), cb) })?;
        Ok(list)
    }

    pub fn canonical_export_name(&self) -> Option<String> {
        // SAFETY: valid handle; the result is NULL or a malloc'ed string
        // that we own.
        unsafe { take_string(nbd_get_canonical_export_name(self.ptr())) }
    }

    pub fn export_description(&self) -> Option<String> {
        // SAFETY: as for canonical_export_name.
        unsafe { take_string(nbd_get_export_description(self.ptr())) }
    }

    /// Synchronous `NBD_CMD_DISC` (for handles nobody polls).
    pub fn shutdown(&self) -> Result<()> {
        // SAFETY: valid handle, plain flags.
        Self::check(unsafe { nbd_shutdown(self.ptr(), 0) }).map(drop)
    }

    pub fn is_negotiating(&self) -> bool {
        self.flag(nbd_aio_is_negotiating).unwrap_or(false)
    }
    pub fn is_ready(&self) -> bool {
        self.flag(nbd_aio_is_ready).unwrap_or(false)
    }
    /// Closed or dead: no more commands will complete.
    pub fn is_finished(&self) -> bool {
        self.flag(nbd_aio_is_closed).unwrap_or(true) || self.flag(nbd_aio_is_dead).unwrap_or(true)
    }

    pub fn size(&self) -> Result<u64> {
        // SAFETY: valid handle.
        let r = unsafe { nbd_get_size(self.ptr()) };
        u64::try_from(r).map_err(|_| last_error())
    }

    /// (minimum, preferred, maximum), or `None` when the server gave none.
    pub fn block_size(&self) -> Result<Option<(u32, u32, u32)>> {
        let get = |kind| -> Result<Option<u32>> {
            // SAFETY: valid handle, one of the LIBNBD_SIZE_* values.
            let r = unsafe { nbd_get_block_size(self.ptr(), kind) };
            match r {
                -1 => Err(last_error()),
                0 => Ok(None),
                r => u32::try_from(r).map(Some).map_err(|_| {
                    Error::new(
                        Errno::EINVAL,
                        format!("remote server's block size {r} is out of range"),
                    )
                }),
            }
        };
        Ok(
            match (get(SIZE_MINIMUM)?, get(SIZE_PREFERRED)?, get(SIZE_MAXIMUM)?) {
                (Some(a), Some(b), Some(c)) => Some((a, b, c)),
                _ => None,
            },
        )
    }

    pub fn is_read_only(&self) -> Result<bool> {
        self.flag(nbd_is_read_only)
    }
    pub fn can_flush(&self) -> Result<bool> {
        self.flag(nbd_can_flush)
    }
    pub fn can_fua(&self) -> Result<bool> {
        self.flag(nbd_can_fua)
    }
    pub fn is_rotational(&self) -> Result<bool> {
        self.flag(nbd_is_rotational)
    }
    pub fn can_trim(&self) -> Result<bool> {
        self.flag(nbd_can_trim)
    }
    pub fn can_zero(&self) -> Result<bool> {
        self.flag(nbd_can_zero)
    }
    pub fn can_fast_zero(&self) -> Result<bool> {
        self.flag(nbd_can_fast_zero)
    }
    pub fn can_multi_conn(&self) -> Result<bool> {
        self.flag(nbd_can_multi_conn)
    }
    pub fn can_cache(&self) -> Result<bool> {
        self.flag(nbd_can_cache)
    }
    pub fn can_meta_context(&self, name: &str) -> Result<bool> {
        let c = cstring("meta context", name)?;
        // SAFETY: valid handle and C string.
        Self::check(unsafe { nbd_can_meta_context(self.ptr(), c.as_ptr()) }).map(|r| r != 0)
    }

    /// Issue `cmd` and wait until the server answered it (or the
    /// connection died).  `issued` runs once the command is queued, before
    /// waiting: it must make sure the state machine's driver notices.
    /// Returns the `base:allocation` extents for `BlockStatus`.
    pub fn execute(&self, cmd: Command<'_>, issued: impl FnOnce()) -> Result<Vec<(u64, u64, u32)>> {
        let pending = Arc::new(Pending::default());
        let h = self.ptr();
        // SAFETY: (all arms) `h` is a valid handle.  Buffers are borrowed
        // for the whole of this function, which does not return until the
        // completion callback has run (libnbd calls it exactly once for a
        // command it accepted, and touches the buffer no more afterwards);
        // when libnbd refuses the command (-1) it keeps no reference to the
        // buffer.  Every callback gets its own strong count on `pending`,
        // released by `on_free` even when the call fails.
        let cookie = unsafe {
            match cmd {
                Command::Pread(buf, off) => nbd_aio_pread(
                    h,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    off,
                    completion(&pending),
                    0,
                ),
                Command::Pwrite(buf, off, flags) => nbd_aio_pwrite(
                    h,
                    buf.as_ptr().cast(),
                    buf.len(),
                    off,
                    completion(&pending),
                    flags,
                ),
                Command::Flush => nbd_aio_flush(h, completion(&pending), 0),
                Command::Trim(count, off, flags) => {
                    nbd_aio_trim(h, count, off, completion(&pending), flags)
                }
                Command::Zero(count, off, flags) => {
                    nbd_aio_zero(h, count, off, completion(&pending), flags)
                }
                Command::Cache(count, off) => nbd_aio_cache(h, count, off, completion(&pending), 0),
                Command::BlockStatus(count, off, flags) => nbd_aio_block_status(
                    h,
                    count,
                    off,
                    ExtentCallback {
                        callback: Some(on_extent),
                        user_data: share(&pending),
                        free: Some(on_free),
                    },
                    completion(&pending),
                    flags,
                ),
            }
        };
        if cookie == -1 {
            return Err(last_error());
        }
        issued();
        let mut done = lock(&pending.done);
        let err = loop {
            match *done {
                Some(e) => break e,
                None => done = pending.cv.wait(done).unwrap_or_else(|e| e.into_inner()),
            }
        };
        drop(done);
        if err != 0 {
            let errno = Errno::from_raw(err);
            return Err(Error::new(
                errno,
                format!("remote server: {}", errno.desc()),
            ));
        }
        let list = std::mem::take(&mut *lock(&pending.extents));
        Ok(list)
    }

    /// Whether the state machine wants to write (a command is waiting to
    /// be sent), so that the poller must be woken to add `POLLOUT`.
    pub fn wants_write(&self) -> bool {
        // SAFETY: valid handle.
        unsafe { nbd_aio_get_direction(self.ptr()) & AIO_DIRECTION_WRITE != 0 }
    }

    /// Start `NBD_CMD_DISC`; the server then closes the connection.
    pub fn aio_disconnect(&self) -> Result<()> {
        // SAFETY: valid handle, plain flags.
        Self::check(unsafe { nbd_aio_disconnect(self.ptr(), 0) }).map(drop)
    }

    /// Wait (up to `timeout_ms`, -1 = forever) for the socket to be ready
    /// in the direction the state machine wants, for `wake` to be readable
    /// or for `quit` (if given) to be readable, and move the state machine
    /// on.
    pub fn poll_once(
        &self,
        wake: BorrowedFd<'_>,
        quit: Option<BorrowedFd<'_>>,
        timeout_ms: c_int,
    ) -> Result<Polled> {
        if self.is_finished() {
            return Ok(Polled::Finished);
        }
        // SAFETY: valid handle.
        let (fd, dir) = unsafe {
            (
                nbd_aio_get_fd(self.ptr()),
                nbd_aio_get_direction(self.ptr()),
            )
        };
        if fd < 0 {
            return Ok(Polled::Finished);
        }
        let mut events = 0;
        if dir & AIO_DIRECTION_READ != 0 {
            events |= libc::POLLIN;
        }
        if dir & AIO_DIRECTION_WRITE != 0 {
            events |= libc::POLLOUT;
        }
        let pollfd = |fd, events| libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let mut fds = [
            pollfd(fd, events),
            pollfd(wake.as_raw_fd(), libc::POLLIN),
            pollfd(quit.map_or(-1, |q| q.as_raw_fd()), libc::POLLIN),
        ];
        // SAFETY: `fds` is a valid array of three pollfd structures (a
        // negative fd is ignored by poll).  The socket stays open while we
        // poll: only nbd_close, which needs ownership, closes it.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 3, timeout_ms) };
        if r == -1 {
            let e = Errno::last();
            if e == Errno::EINTR {
                return Ok(Polled::Progress);
            }
            return Err(Error::os(e, "poll"));
        }
        if fds[2].revents != 0 {
            // SAFETY: shutdown(2) on libnbd's open socket only ends the
            // connection; the descriptor stays valid and owned by libnbd,
            // whose next read or write then fails, failing every command
            // still in flight.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            return Ok(Polled::Quit);
        }
        let ready = fds[0].revents;
        // SAFETY: valid handle.
        let dir = unsafe { nbd_aio_get_direction(self.ptr()) };
        let broken = ready & (libc::POLLHUP | libc::POLLERR) != 0;
        // A failure here moves the handle to the dead state, where libnbd
        // fails every command still in flight; the caller sees Finished.
        if dir & AIO_DIRECTION_READ != 0 && (ready & libc::POLLIN != 0 || broken) {
            // SAFETY: valid handle.
            let _ = unsafe { nbd_aio_notify_read(self.ptr()) };
        } else if dir & AIO_DIRECTION_WRITE != 0 && (ready & libc::POLLOUT != 0 || broken) {
            // SAFETY: valid handle.
            let _ = unsafe { nbd_aio_notify_write(self.ptr()) };
        }
        if fds[1].revents != 0 {
            Ok(Polled::Woken)
        } else {
            Ok(Polled::Progress)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_a_clear_error() {
        let Err(e) = open("libnbd-not-here.so.0") else {
            panic!("opened a library that does not exist");
        };
        assert!(e.contains("libnbd-not-here.so.0"), "{e}");
    }

    #[test]
    fn a_library_without_libnbds_functions_is_refused() {
        let Err(e) = open("libc.so.6") else {
            panic!("libc taken for libnbd");
        };
        assert!(e.contains("no nbd_create"), "{e}");
    }

    #[test]
    fn libnbd_loads_and_makes_handles() {
        load().unwrap();
        let h = Nbd::create().unwrap();
        assert!(h.version().starts_with("1."), "{}", h.version());
    }
}
