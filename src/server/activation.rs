//! systemd socket activation: listening sockets handed over by a service
//! manager (systemd, `systemd-socket-activate`, libnbd's `[ CMD ]`).
//!
//! The protocol (sd_listen_fds(3)): `LISTEN_PID` names the process the
//! sockets are for, `LISTEN_FDS` says how many there are, starting at fd 3.
//! Both variables are removed once read so that nothing we start inherits
//! them.  `LISTEN_FDNAMES` is ignored, as nbdkit does.  Turning the fds into
//! listeners is [`crate::server::listen::adopt`]'s job.

use crate::cli::Options;
use crate::error::{Error, Result};
use crate::server::listen::{self, Listener};
use std::os::fd::{FromRawFd, OwnedFd};

/// The first inherited fd.
const FIRST_FD: i32 = 3;
/// nbdkit accepts at most this many sockets.
const MAX_FDS: u32 = 16;

/// Sockets passed to us by a service manager.
#[derive(Debug)]
pub struct Activation {
    fds: Vec<OwnedFd>,
}

/// Look at `LISTEN_PID` and `LISTEN_FDS`.  Call before any thread exists
/// (it changes the environment).
pub fn detect() -> Result<Option<Activation>> {
    let Some(count) = listen_fds_for_us(
        std::env::var("LISTEN_PID").ok().as_deref(),
        std::env::var("LISTEN_FDS").ok().as_deref(),
        std::process::id(),
    )?
    else {
        return Ok(None);
    };
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    let mut fds = Vec::new();
    for fd in FIRST_FD..FIRST_FD + count as i32 {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        // SAFETY: fcntl on an arbitrary descriptor number is harmless; it
        // only tells us whether the descriptor is open.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
            .map_err(|e| Error::os(e, format!("socket activation: fd {fd}")))?;
        // SAFETY: the service manager handed this open descriptor to us and
        // nothing else in the process owns it.
        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    crate::log::debug(format!("socket activation: {count} socket(s) from fd 3"));
    Ok(Some(Activation { fds }))
}

/// How many fds the environment hands to process `pid`, if any.
fn listen_fds_for_us(
    pid_var: Option<&str>,
    fds_var: Option<&str>,
    pid: u32,
) -> Result<Option<u32>> {
    let Some(for_pid) = pid_var.and_then(|s| s.trim().parse::<u32>().ok()) else {
        return Ok(None);
    };
    if for_pid != pid {
        crate::log::warning("LISTEN_PID was not for us (ignored)");
        return Ok(None);
    }
    let Some(count) = fds_var.and_then(|s| s.trim().parse::<u32>().ok()) else {
        return Ok(None);
    };
    if count == 0 || count > MAX_FDS {
        return Err(Error::config(format!(
            "socket activation: LISTEN_FDS={count} out of range"
        )));
    }
    Ok(Some(count))
}

/// Refuse the options that choose where to listen, which the service
/// manager has already decided.
pub fn check_conflicts(o: &Options) -> Result<()> {
    let flag = if o.ipaddr.is_some() {
        "-i"
    } else if o.port.is_some() {
        "-p"
    } else if o.single {
        "-s"
    } else if o.unix.is_some() {
        "-U"
    } else if o.run.is_some() {
        "--run"
    } else if o.vsock {
        "--vsock"
    } else {
        return Ok(());
    };
    Err(Error::config(format!(
        "cannot use socket activation with {flag} flag"
    )))
}

impl Activation {
    /// The inherited sockets as listeners.
    pub fn listeners(self) -> Result<Vec<Listener>> {
        self.fds.into_iter().map(listen::adopt).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_rules() {
        assert_eq!(listen_fds_for_us(None, Some("1"), 7).unwrap(), None);
        assert_eq!(listen_fds_for_us(Some("x"), Some("1"), 7).unwrap(), None);
        assert_eq!(listen_fds_for_us(Some("8"), Some("1"), 7).unwrap(), None);
        assert_eq!(listen_fds_for_us(Some("7"), None, 7).unwrap(), None);
        assert_eq!(listen_fds_for_us(Some("7"), Some("z"), 7).unwrap(), None);
        assert_eq!(listen_fds_for_us(Some("7"), Some("2"), 7).unwrap(), Some(2));
        assert_eq!(
            listen_fds_for_us(Some("7"), Some("16"), 7).unwrap(),
            Some(16)
        );
        for bad in ["0", "17"] {
            let e = listen_fds_for_us(Some("7"), Some(bad), 7).unwrap_err();
            assert!(e.message().contains("out of range"), "{}", e.message());
        }
    }

    #[test]
    fn listening_options_conflict() {
        let o = crate::cli::parse(["-p", "1", "null"]).unwrap();
        assert!(check_conflicts(&o)
            .unwrap_err()
            .message()
            .contains("-p flag"));
        let o = crate::cli::parse(["-f", "-o", "null"]).unwrap();
        assert!(check_conflicts(&o).is_ok());
    }
}
