//! Captive mode (`--run 'COMMAND'`): the supervisor side.
//!
//! The listening sockets are bound first; then the process forks (before any
//! thread exists).  The child is the server.  The parent — the process the
//! user started — waits until the server says it is ready (pidfile written,
//! plugins' `after_fork` done), then runs COMMAND under `/bin/sh -c` with the
//! shell variables `uri`, `nbd`, `exportname`, `port` and `unixsocket` set
//! (not exported), waits for it, stops the server and exits with COMMAND's
//! status (or 128+N when a signal killed COMMAND or the server).  The server
//! gets SIGTERM if the supervisor dies, so it is never left behind.

use crate::error::{Error, Result};
use crate::server::uri::shell_quote;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

/// Which side of the fork this process is on.
pub enum Role {
    /// The server: call [`Ready::signal`] once it is ready to serve.
    Server(Ready),
    /// The supervisor: pass both to [`supervise`].
    Supervisor { server: Pid, ready: OwnedFd },
}

/// The server's end of the readiness pipe.
pub struct Ready(OwnedFd);

impl Ready {
    /// Tell the supervisor the server is ready (it may start COMMAND).
    pub fn signal(self) {
        let _ = nix::unistd::write(&self.0, &[1]);
    }
}

/// Fork into supervisor and server.  Call before any thread exists.
pub fn fork() -> Result<Role> {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::os(e, "pipe2"))?;
    let supervisor = nix::unistd::getpid();
    // SAFETY: the caller guarantees no other thread exists, so the child may
    // go on running arbitrary code.
    match unsafe { nix::unistd::fork() }.map_err(|e| Error::os(e, "fork"))? {
        nix::unistd::ForkResult::Parent { child } => {
            drop(w);
            ignore_interactive_signals();
            Ok(Role::Supervisor {
                server: child,
                ready: r,
            })
        }
        nix::unistd::ForkResult::Child => {
            drop(r);
            nix::sys::prctl::set_pdeathsig(Some(Signal::SIGTERM))
                .map_err(|e| Error::os(e, "prctl: PR_SET_PDEATHSIG"))?;
            if nix::unistd::getppid() != supervisor {
                return Err(Error::config(
                    "the --run supervisor exited before the server started",
                ));
            }
            Ok(Role::Server(Ready(w)))
        }
    }
}

/// While the supervisor waits for the command, keyboard signals are the
/// command's business (as with `system(3)`).
fn ignore_interactive_signals() {
    use nix::sys::signal::{signal, SigHandler};
    for sig in [Signal::SIGINT, Signal::SIGQUIT] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
}

/// The exit status for a server that ended (`status`) on its own.
fn server_status(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => {
            eprintln!("nbdkit: nbdkit command was killed by signal {}", sig as i32);
            Some(128 + sig as i32)
        }
        _ => None,
    }
}

/// The values `--run` exposes to COMMAND.
#[derive(Debug, Clone, Default)]
pub struct RunVars {
    pub uri: String,
    pub exportname: String,
    pub port: String,
    pub unixsocket: String,
}

/// The script handed to `/bin/sh -c`: variable assignments, then COMMAND.
pub fn script(vars: &RunVars, command: &str) -> String {
    let mut s = String::new();
    s.push_str(&format!("uri={}\n", shell_quote(&vars.uri)));
    s.push_str("nbd=\"$uri\"\n");
    s.push_str(&format!("exportname={}\n", shell_quote(&vars.exportname)));
    s.push_str(&format!("port={}\n", shell_quote(&vars.port)));
    s.push_str(&format!("unixsocket={}\n", shell_quote(&vars.unixsocket)));
    s.push_str(command);
    s.push('\n');
    s
}

/// Wait for the server to be ready, run COMMAND while it serves, then stop
/// it; return the exit status nbdkit should exit with.
pub fn supervise(server: Pid, ready: OwnedFd, vars: &RunVars, command: &str) -> i32 {
    let mut byte = [0u8; 1];
    let became_ready = matches!(nix::unistd::read(&ready, &mut byte), Ok(1));
    drop(ready);
    if !became_ready {
        // The server failed to start (it has printed why).
        return waitpid(server, None)
            .ok()
            .and_then(server_status)
            .unwrap_or(1);
    }
    let mut rc = match Command::new("/bin/sh")
        .arg("-c")
        .arg(script(vars, command))
        .status()
    {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => code,
            (None, Some(sig)) => {
                eprintln!("nbdkit: external command was killed by signal {sig}");
                128 + sig
            }
            _ => 1,
        },
        Err(e) => {
            crate::log::error(format!("failure to execute external command: {e}"));
            1
        }
    };
    match waitpid(server, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => {
            let _ = kill(server, Signal::SIGTERM);
            let _ = waitpid(server, None);
        }
        Ok(status @ WaitStatus::Exited(..)) if rc == 0 => rc = server_status(status).unwrap_or(rc),
        Ok(status @ WaitStatus::Signaled(..)) => rc = server_status(status).unwrap_or(rc),
        _ => {}
    }
    rc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_sets_variables_without_exporting_them() {
        let vars = RunVars {
            uri: "nbd+unix://?socket=/tmp/x y/socket".into(),
            exportname: "it's".into(),
            port: String::new(),
            unixsocket: "/tmp/x y/socket".into(),
        };
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(script(&vars, "printf '%s|%s|%s|%s|%s|' \"$uri\" \"$nbd\" \"$exportname\" \"$port\" \"$unixsocket\"; env | grep -c '^uri=' || true"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "nbd+unix://?socket=/tmp/x y/socket|nbd+unix://?socket=/tmp/x y/socket|it's||/tmp/x y/socket|0\n"
        );
    }
}
