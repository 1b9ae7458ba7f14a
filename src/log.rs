//! Error and debug messages in nbdkit's format.
//!
//! Errors and warnings go where `--log` says (see [`Destination`]): on
//! stderr or in a file as `nbdkit: [NAME[CONN]: ]error: MSG`, or to syslog.
//! Debug messages (`-v`) always go to stderr as
//! `nbdkit: [NAME[CONN]: ]debug: MSG`.  The optional `NAME[CONN]` prefix
//! names the thread's layer and connection number, set by the server with
//! [`set_thread_context`].  Control characters in debug messages are escaped
//! so a log line stays one line.

use crate::error::{Error, Result};
use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static VERBOSE: AtomicBool = AtomicBool::new(false);

/// Where errors and warnings go (`--log`).
#[derive(Debug)]
pub enum Destination {
    Stderr,
    /// The system log through `/dev/log`, as `nbdkit[PID]: MSG`.
    Syslog,
    /// Discarded.
    Null,
    /// Appended to a file.
    File(std::fs::File),
}

static DESTINATION: Mutex<Destination> = Mutex::new(Destination::Stderr);

/// What `--log` asked for: `Ok(None)` for the default (stderr, or syslog
/// once the server has gone into the background).
pub fn parse_destination(opt: Option<&str>) -> Result<Option<Destination>> {
    Ok(Some(match opt {
        None | Some("default") => return Ok(None),
        Some("stderr") => Destination::Stderr,
        Some("syslog") => Destination::Syslog,
        Some("null") => Destination::Null,
        Some(p) if p.starts_with('/') => std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(p)
            .map(Destination::File)
            .map_err(|e| Error::io(e, format!("--log: {p}")))?,
        Some(_) => {
            return Err(Error::config(
                "--log must be \"default\", \"stderr\", \"syslog\", \"null\", or an absolute path",
            ))
        }
    }))
}

/// Send errors and warnings to `dest` from now on.
pub fn set_destination(dest: Destination) {
    if matches!(dest, Destination::Syslog) {
        // SAFETY: the identity is a static C string, as openlog requires
        // (it keeps the pointer); LOG_PID and LOG_DAEMON are plain flags.
        unsafe { libc::openlog(c"nbdkit".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
    }
    *DESTINATION.lock().unwrap_or_else(|p| p.into_inner()) = dest;
}

/// Write an error (`level` "error") or warning to the chosen destination.
fn emit(level: &str, priority: libc::c_int, msg: &str) {
    let dest = DESTINATION.lock().unwrap_or_else(|p| p.into_inner());
    match &*dest {
        Destination::Stderr => {
            let line = format!("{}{level}: {msg}\n", prefix());
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
        Destination::File(f) => {
            let line = format!("{}{level}: {msg}\n", prefix());
            let _ = (&*f).write_all(line.as_bytes());
        }
        Destination::Null => {}
        Destination::Syslog => {
            // The priority says it is an error; the text names the thread.
            let text = CONTEXT.with(|c| match &*c.borrow() {
                Some(ctx) => format!("{ctx}: {msg}"),
                None => msg.to_string(),
            });
            let text =
                std::ffi::CString::new(text.replace('\0', "\\0")).expect("NUL bytes were replaced");
            // SAFETY: both pointers are valid NUL-terminated strings for the
            // duration of the call, and "%s" consumes exactly one of them.
            unsafe { libc::syslog(priority, c"%s".as_ptr(), text.as_ptr()) };
        }
    }
}

thread_local! {
    static CONTEXT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Turn debug messages on or off (`-v`).
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

/// Whether debug messages are printed.
pub fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed)
}

/// Name this thread in log lines, e.g. `memory[3]` for connection 3.
pub fn set_thread_context(ctx: Option<String>) {
    CONTEXT.with(|c| *c.borrow_mut() = ctx);
}

fn prefix() -> String {
    CONTEXT.with(|c| match &*c.borrow() {
        Some(ctx) => format!("nbdkit: {ctx}: "),
        None => "nbdkit: ".to_string(),
    })
}

/// Report an error (always, to the `--log` destination).
pub fn error(msg: impl AsRef<str>) {
    emit("error", libc::LOG_ERR, msg.as_ref());
}

/// Report a warning (always, to the `--log` destination).
pub fn warning(msg: impl AsRef<str>) {
    emit("warning", libc::LOG_WARNING, msg.as_ref());
}

/// Print a debug message if `-v` was given.
pub fn debug(msg: impl AsRef<str>) {
    if !verbose() {
        return;
    }
    let line = format!("{}debug: {}\n", prefix(), escape(msg.as_ref()));
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Escape control characters C-style (`\n`, `\t`, `\x01`).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_option_words() {
        assert!(parse_destination(None).unwrap().is_none());
        assert!(parse_destination(Some("default")).unwrap().is_none());
        assert!(matches!(
            parse_destination(Some("null")),
            Ok(Some(Destination::Null))
        ));
        assert!(matches!(
            parse_destination(Some("syslog")),
            Ok(Some(Destination::Syslog))
        ));
        let e = parse_destination(Some("relative.log")).unwrap_err();
        assert!(e.message().contains("absolute path"), "{}", e.message());
        assert!(parse_destination(Some("/nonexistent/dir/x.log")).is_err());
    }

    #[test]
    fn escapes_control_characters() {
        assert_eq!(escape("a\nb\tc\x01\\"), "a\\nb\\tc\\x01\\\\");
    }
}
