//! The per-thread state behind nbdkit's "thread-local magic": which
//! connection a callback runs for (export name, TLS, peer, where interned
//! strings live), the error a plugin set with `nbdkit_set_error`, and the
//! messages it reported with `nbdkit_error` while a callback ran.
//!
//! The adapter wraps every call into the plugin with [`call`]; the exported
//! `nbdkit_*` functions read the state with [`with_conn`] and friends.

use crate::error::Error;
use crate::server::peer::Peer;
use nix::errno::Errno;
use std::cell::{Cell, RefCell};
use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::sync::{Arc, Mutex};

/// Interned strings: each stays at a fixed address until the arena is
/// dropped (a connection's arena at connection close, the global one never
/// before exit), as `nbdkit_strdup_intern` promises.
#[derive(Default)]
pub struct Arena(Mutex<Vec<CString>>);

impl Arena {
    /// Keep `s` and return its stable address.
    pub fn intern(&self, s: CString) -> *const c_char {
        let p = s.as_ptr();
        // Moving a CString moves only its pointer, not the heap bytes.
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(s);
        p
    }
}

/// Strings interned outside any connection (while configuring).
static GLOBAL_ARENA: Mutex<Vec<CString>> = Mutex::new(Vec::new());

/// What the plugin may ask about the connection a callback serves.
pub struct Conn {
    pub export_name: CString,
    pub is_tls: bool,
    pub peer: Option<Peer>,
    pub arena: Arc<Arena>,
}

thread_local! {
    /// The connection the running callback serves (null outside one).
    static CONN: Cell<*const Conn> = const { Cell::new(std::ptr::null()) };
    /// Set while a callback runs: nbdkit_error messages are collected.
    static IN_CALL: Cell<bool> = const { Cell::new(false) };
    static MESSAGES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    /// `nbdkit_set_error`'s value for the running callback.
    static SET_ERROR: Cell<i32> = const { Cell::new(0) };
    /// Strings interned on a connection thread before `open` (preconnect,
    /// list_exports, default_export): they live as long as the thread,
    /// which serves one connection, or are handed to the handle by `open`.
    static PENDING: RefCell<Option<Arc<Arena>>> = const { RefCell::new(None) };
}

/// The arena for strings interned on this connection thread before `open`.
pub fn pending_arena() -> Arc<Arena> {
    PENDING.with(|p| p.borrow_mut().get_or_insert_with(Default::default).clone())
}

/// Hand the pre-open arena over (to the handle being opened).
pub fn take_pending_arena() -> Arc<Arena> {
    PENDING.with(|p| p.borrow_mut().take()).unwrap_or_default()
}

/// What happened during one call into the plugin.
pub struct Outcome<R> {
    pub value: R,
    /// `errno` right after the call returned.
    pub errno: i32,
    /// The value given to `nbdkit_set_error`, 0 if none.
    pub set_error: i32,
    /// Messages given to `nbdkit_error`, oldest first.
    pub messages: Vec<String>,
}

impl<R> Outcome<R> {
    /// The error to report for a failed call, following nbdkit: the errno
    /// set with `nbdkit_set_error`, else `errno` if the plugin declared it
    /// preserved, else `EIO`.  Earlier messages are logged now; the last
    /// one becomes the error's message (or `fallback` if there was none).
    pub fn error(mut self, errno_is_preserved: bool, fallback: impl FnOnce() -> String) -> Error {
        let mut e = self.set_error;
        if e == 0 && errno_is_preserved {
            e = self.errno;
        }
        if e <= 0 {
            e = libc::EIO;
        }
        let last = self.messages.pop();
        for m in self.messages {
            crate::log::error(m);
        }
        Error::new(Errno::from_raw(e), last.unwrap_or_else(fallback))
    }

    /// The call succeeded: messages it reported are logged now.
    pub fn ok(self) -> R {
        for m in self.messages {
            crate::log::error(m);
        }
        self.value
    }
}

/// Run `f` (one call into the plugin) with `conn` as the current
/// connection, collecting what the plugin reports.
pub fn call<R>(conn: Option<&Conn>, f: impl FnOnce() -> R) -> Outcome<R> {
    let prev_conn = CONN.with(|c| c.replace(conn.map_or(std::ptr::null(), |c| c as *const Conn)));
    let prev_in = IN_CALL.with(|c| c.replace(true));
    let prev_err = SET_ERROR.with(|c| c.replace(0));
    let prev_msgs = MESSAGES.with(|m| std::mem::take(&mut *m.borrow_mut()));
    let value = f();
    let errno = Errno::last_raw();
    let set_error = SET_ERROR.with(|c| c.replace(prev_err));
    IN_CALL.with(|c| c.set(prev_in));
    CONN.with(|c| c.set(prev_conn));
    let messages = MESSAGES.with(|m| std::mem::replace(&mut *m.borrow_mut(), prev_msgs));
    Outcome {
        value,
        errno,
        set_error,
        messages,
    }
}

/// `nbdkit_error`: collected while a callback runs, else logged at once
/// (plugin background threads, `load`, `unload`).
pub fn report_error(msg: String) {
    if IN_CALL.with(|c| c.get()) {
        MESSAGES.with(|m| m.borrow_mut().push(msg));
    } else {
        crate::log::error(msg);
    }
}

/// `nbdkit_set_error`.
pub fn set_error(err: i32) {
    SET_ERROR.with(|c| c.set(err));
}

/// Look at the current connection, if a callback for one is running.
pub fn with_conn<R>(f: impl FnOnce(Option<&Conn>) -> R) -> R {
    let p = CONN.with(|c| c.get());
    // SAFETY: CONN is only non-null while `call` runs with a `&Conn` that
    // outlives the call, on this same thread.
    let conn = unsafe { p.as_ref() };
    f(conn)
}

/// Intern `s` with nbdkit's lifetime rules: until the current connection
/// closes, or until exit when no connection is being served.
pub fn intern(s: &CStr) -> *const c_char {
    let s = s.to_owned();
    with_conn(|c| match c {
        Some(c) => c.arena.intern(s),
        None => {
            let p = s.as_ptr();
            GLOBAL_ARENA
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(s);
            p
        }
    })
}
