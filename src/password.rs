//! Reading secrets given on the command line the way `nbdkit_read_password`
//! does, for any plugin or filter with a `password=` style parameter:
//!
//! - `-` asks on the terminal (echo off) when nbdkit starts;
//! - `-FD` reads file descriptor `FD` (inherited from the parent) to its end;
//! - `+FILE` reads the file `FILE`;
//! - anything else is the secret itself.
//!
//! One trailing newline is removed from what was read (files and prompts
//! normally end in one); the literal form is kept as given.

use crate::error::{Error, Result};
use std::io::{BufRead, Read, Write};
use std::os::fd::{FromRawFd, RawFd};

/// Resolve a password-style value (`-`, `-FD`, `+FILE` or literal).
pub fn read_password(value: &str) -> Result<String> {
    if value == "-" {
        return prompt("password: ");
    }
    if let Some(num) = value.strip_prefix('-') {
        if !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()) {
            return read_fd(num);
        }
        // "-foo" is an ordinary password that starts with a dash.
        return Ok(value.to_string());
    }
    if let Some(path) = value.strip_prefix('+') {
        let data = std::fs::read(path).map_err(|e| Error::io(e, format!("open: {path}")))?;
        return finish(data, path);
    }
    Ok(value.to_string())
}

fn finish(mut data: Vec<u8>, what: &str) -> Result<String> {
    if data.last() == Some(&b'\n') {
        data.pop();
    }
    String::from_utf8(data).map_err(|_| Error::config(format!("{what}: password is not UTF-8")))
}

fn read_fd(num: &str) -> Result<String> {
    let fd: RawFd = num
        .parse()
        .map_err(|_| Error::config(format!("password=-{num}: bad file descriptor")))?;
    if fd <= 2 {
        return Err(Error::config(format!(
            "password=-{fd}: cannot use stdin, stdout or stderr; use password=- to prompt"
        )));
    }
    // SAFETY: F_GETFD only queries the descriptor; it is checked to be open
    // before we take ownership of it below.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(Error::config(format!(
            "password=-{fd}: file descriptor {fd} is not open"
        )));
    }
    // SAFETY: the descriptor is open (checked above) and was handed to us
    // by the parent for this purpose; nbdkit also closes it after reading.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut data = Vec::new();
    f.read_to_end(&mut data)
        .map_err(|e| Error::io(e, format!("password=-{fd}: read")))?;
    finish(data, &format!("password=-{fd}"))
}

/// Ask on the terminal with echo turned off.
fn prompt(label: &str) -> Result<String> {
    let stdin = std::io::stdin();
    // SAFETY: isatty only inspects file descriptor 0.
    if unsafe { libc::isatty(0) } != 1 {
        return Err(Error::config(
            "stdin is not a tty, cannot read password interactively",
        ));
    }
    let _ = std::io::stderr().write_all(label.as_bytes());
    // SAFETY: termios is plain old data, fully written by tcgetattr.
    let mut old: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd 0 is a terminal (checked above) and `old` is valid memory.
    let have_tty = unsafe { libc::tcgetattr(0, &mut old) } == 0;
    if have_tty {
        let mut quiet = old;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: valid termios for fd 0, restored below.
        unsafe { libc::tcsetattr(0, libc::TCSAFLUSH, &quiet) };
    }
    let mut line = String::new();
    let r = stdin.lock().read_line(&mut line);
    if have_tty {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(0, libc::TCSAFLUSH, &old) };
        let _ = std::io::stderr().write_all(b"\n");
    }
    r.map_err(|e| Error::io(e, "reading password"))?;
    finish(line.into_bytes(), "password")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn literal_and_dash_words() {
        assert_eq!(read_password("secret").unwrap(), "secret");
        assert_eq!(read_password("").unwrap(), "");
        assert_eq!(read_password("-abc").unwrap(), "-abc");
    }

    #[test]
    fn from_file_strips_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "hunter2\n\n").unwrap();
        let v = read_password(&format!("+{}", p.display())).unwrap();
        assert_eq!(v, "hunter2\n");
        std::fs::write(&p, "x").unwrap();
        assert_eq!(read_password(&format!("+{}", p.display())).unwrap(), "x");
        let e = read_password("+/nonexistent/pw").unwrap_err();
        assert!(e.message().contains("/nonexistent/pw"), "{}", e.message());
    }

    #[test]
    fn from_fd() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "fdpass\n").unwrap();
        let fd = std::fs::File::open(&p).unwrap().into_raw_fd();
        assert_eq!(read_password(&format!("-{fd}")).unwrap(), "fdpass");
        assert!(read_password("-1").is_err());
        assert!(read_password("-987654").is_err());
    }
}
