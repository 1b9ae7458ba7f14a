//! Error and debug messages in nbdkit's format.
//!
//! Errors always go to stderr as `nbdkit: [NAME[CONN]: ]error: MSG`; debug
//! messages (`-v`) as `nbdkit: [NAME[CONN]: ]debug: MSG`.  The optional
//! `NAME[CONN]` prefix names the thread's layer and connection number, set by
//! the server with [`set_thread_context`].  Control characters in debug
//! messages are escaped so a log line stays one line.

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static VERBOSE: AtomicBool = AtomicBool::new(false);

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

/// Print an error message (always shown).
pub fn error(msg: impl AsRef<str>) {
    let line = format!("{}error: {}\n", prefix(), msg.as_ref());
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Print a warning (always shown).
pub fn warning(msg: impl AsRef<str>) {
    let line = format!("{}warning: {}\n", prefix(), msg.as_ref());
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
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
    fn escapes_control_characters() {
        assert_eq!(escape("a\nb\tc\x01\\"), "a\\nb\\tc\\x01\\\\");
    }
}
