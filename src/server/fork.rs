//! Forking off the serving process, with a readiness pipe.
//!
//! Both `--run` (the parent supervises COMMAND) and backgrounding (the
//! parent exits) fork after the listening sockets exist and before any
//! thread does.  The parent then blocks until the server reports that it is
//! ready — pidfile written, plugins' `after_fork` done — or dies trying, so
//! nobody downstream of the parent races the server's startup.

use crate::error::{Error, Result};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::OwnedFd;

/// Which side of the fork this process is on.
pub enum Role {
    /// The serving process: call [`Ready::signal`] once ready to serve.
    Server(Ready),
    /// The original process, with the server's pid and the pipe to wait on.
    Parent { server: Pid, ready: OwnedFd },
}

/// The server's end of the readiness pipe.
pub struct Ready(OwnedFd);

impl Ready {
    /// Tell the parent the server is ready.
    pub fn signal(self) {
        let _ = nix::unistd::write(&self.0, &[1]);
    }
}

/// Fork.  With `die_with_parent` the server gets SIGTERM when the parent
/// exits (for `--run`, where the parent stays to supervise).  Call before
/// any thread exists.
pub fn fork(die_with_parent: bool) -> Result<Role> {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::os(e, "pipe2"))?;
    let parent = nix::unistd::getpid();
    // SAFETY: the caller guarantees no other thread exists, so the child may
    // go on running arbitrary code.
    match unsafe { nix::unistd::fork() }.map_err(|e| Error::os(e, "fork"))? {
        nix::unistd::ForkResult::Parent { child } => {
            drop(w);
            Ok(Role::Parent {
                server: child,
                ready: r,
            })
        }
        nix::unistd::ForkResult::Child => {
            drop(r);
            if die_with_parent {
                nix::sys::prctl::set_pdeathsig(Some(Signal::SIGTERM))
                    .map_err(|e| Error::os(e, "prctl: PR_SET_PDEATHSIG"))?;
                if nix::unistd::getppid() != parent {
                    return Err(Error::config("the parent exited before the server started"));
                }
            }
            Ok(Role::Server(Ready(w)))
        }
    }
}

/// Block until the server is ready.  If it exits first, return the status
/// nbdkit should exit with (the server has already said why).
pub fn wait_ready(server: Pid, ready: OwnedFd) -> std::result::Result<(), i32> {
    let mut byte = [0u8; 1];
    let became_ready = matches!(nix::unistd::read(&ready, &mut byte), Ok(1));
    drop(ready);
    if became_ready {
        return Ok(());
    }
    Err(waitpid(server, None)
        .ok()
        .and_then(exit_status)
        .unwrap_or(1))
}

/// The exit status for a server that ended with `status` (128+N, with a
/// message, when a signal killed it).
pub fn exit_status(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => {
            eprintln!("nbdkit: nbdkit command was killed by signal {}", sig as i32);
            Some(128 + sig as i32)
        }
        _ => None,
    }
}
