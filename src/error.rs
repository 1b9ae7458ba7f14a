//! The error type shared by plugins, filters and the server.
//!
//! Every failure carries an errno, because that is what finally reaches an
//! NBD client (mapped to an NBD error code at the protocol edge), and a
//! human-readable message, which is what reaches the log (and, during option
//! negotiation, the client's error reply).  This module does no I/O.

use nix::errno::Errno;
use std::fmt;

/// A failed operation: the errno to report and a message to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    errno: Errno,
    msg: String,
}

/// Result type used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error with an explicit errno and message.
    pub fn new(errno: Errno, msg: impl Into<String>) -> Self {
        Error {
            errno,
            msg: msg.into(),
        }
    }

    /// A configuration or usage error (reported at startup, exit status 1).
    pub fn config(msg: impl Into<String>) -> Self {
        Error::new(Errno::EINVAL, msg)
    }

    /// An error from the OS: `context: strerror(errno)`.
    pub fn os(errno: Errno, context: impl fmt::Display) -> Self {
        Error::new(errno, format!("{context}: {}", errno.desc()))
    }

    /// Wrap an `std::io::Error` with a context string, keeping its errno.
    pub fn io(err: std::io::Error, context: impl fmt::Display) -> Self {
        let errno = err
            .raw_os_error()
            .map(Errno::from_raw)
            .unwrap_or(Errno::EIO);
        Error::new(errno, format!("{context}: {err}"))
    }

    /// The errno carried by this error.
    pub fn errno(&self) -> Errno {
        self.errno
    }

    /// The message carried by this error.
    pub fn message(&self) -> &str {
        &self.msg
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        let errno = err
            .raw_os_error()
            .map(Errno::from_raw)
            .unwrap_or(Errno::EIO);
        Error::new(errno, err.to_string())
    }
}

impl From<Errno> for Error {
    fn from(errno: Errno) -> Self {
        Error::new(errno, errno.desc())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_error_keeps_errno() {
        let e = Error::io(std::io::Error::from_raw_os_error(libc::ENOSPC), "pwrite");
        assert_eq!(e.errno(), Errno::ENOSPC);
        assert!(e.message().starts_with("pwrite: "));
    }

    #[test]
    fn config_errors_are_einval() {
        assert_eq!(Error::config("bad").errno(), Errno::EINVAL);
    }
}
