//! Captive mode (`--run 'COMMAND'`): the supervisor side.
//!
//! The listening sockets are bound first; then the process forks (before any
//! thread exists).  The child is the server.  The parent — the process the
//! user started — waits until the server says it is ready (pidfile written,
//! plugins' `after_fork` done), then runs COMMAND under `/bin/sh -c` with the
//! shell variables `uri`, `nbd`, `exportname`, `port`, `unixsocket`, `tls`,
//! `tls_certificates` and `tls_psk` set
//! (not exported), waits for it, stops the server and exits with COMMAND's
//! status (or 128+N when a signal killed COMMAND or the server).  The server
//! gets SIGTERM if the supervisor dies, so it is never left behind.
//!
//! Signals sent to the supervisor while COMMAND runs: SIGINT and SIGQUIT
//! are ignored, as `system(3)` does (a terminal delivers them to COMMAND
//! and the server too); SIGTERM and SIGHUP are passed on to the server as
//! SIGTERM, so it stops cleanly.  COMMAND then sees its connections close,
//! and nbdkit still waits for COMMAND and exits with its status.  COMMAND
//! itself starts with default signal handling (nothing ignored).

use crate::server::fork;
use crate::server::uri::shell_quote;
use nix::sys::signal::{kill, Signal};
use nix::sys::signal::{sigaction, signal, SaFlags, SigAction, SigHandler, SigSet};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

/// The server's pid, for the signal handler that forwards stop requests.
static SERVER: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_stop(_: libc::c_int) {
    let pid = SERVER.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe and touches no memory.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

/// While the supervisor waits for the command, keyboard signals are the
/// command's business (as with `system(3)`); SIGTERM and SIGHUP stop the
/// server.
fn set_supervisor_signals(server: Pid) {
    SERVER.store(server.as_raw(), Ordering::Relaxed);
    for sig in [Signal::SIGINT, Signal::SIGQUIT] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
    let forward = SigAction::new(
        SigHandler::Handler(forward_stop),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only reads an atomic and calls kill(2), both
        // async-signal-safe.
        let _ = unsafe { sigaction(sig, &forward) };
    }
}

/// In COMMAND (after fork, before exec): undo the supervisor's ignored
/// signals, and Rust's ignored SIGPIPE, so COMMAND starts as from a shell.
fn restore_default_signals() -> std::io::Result<()> {
    for sig in [Signal::SIGINT, Signal::SIGQUIT, Signal::SIGPIPE] {
        // SAFETY: signal(2) is async-signal-safe; SIG_DFL runs no code.
        unsafe { signal(sig, SigHandler::SigDfl) }.map_err(std::io::Error::from)?;
    }
    Ok(())
}

/// The values `--run` exposes to COMMAND.
#[derive(Debug, Clone, Default)]
pub struct RunVars {
    pub uri: String,
    pub exportname: String,
    pub port: String,
    pub unixsocket: String,
    /// `$tls`: `None` (unset) when TLS is off, 1 when on, 2 when required.
    pub tls: Option<u8>,
    /// `$tls_certificates`, `$tls_psk`: the options as given, or empty.
    pub tls_certificates: String,
    pub tls_psk: String,
}

/// The script handed to `/bin/sh -c`: variable assignments, then COMMAND.
pub fn script(vars: &RunVars, command: &str) -> String {
    let mut s = String::new();
    s.push_str(&format!("uri={}\n", shell_quote(&vars.uri)));
    s.push_str("nbd=\"$uri\"\n");
    s.push_str(&format!("exportname={}\n", shell_quote(&vars.exportname)));
    s.push_str(&format!("port={}\n", shell_quote(&vars.port)));
    s.push_str(&format!("unixsocket={}\n", shell_quote(&vars.unixsocket)));
    if let Some(tls) = vars.tls {
        s.push_str(&format!("tls={tls}\n"));
    }
    s.push_str(&format!(
        "tls_certificates={}\n",
        shell_quote(&vars.tls_certificates)
    ));
    s.push_str(&format!("tls_psk={}\n", shell_quote(&vars.tls_psk)));
    s.push_str(command);
    s.push('\n');
    s
}

/// Wait for the server to be ready, run COMMAND while it serves, then stop
/// it; return the exit status nbdkit should exit with.
pub fn supervise(server: Pid, ready: OwnedFd, vars: &RunVars, command: &str) -> i32 {
    set_supervisor_signals(server);
    if let Err(rc) = fork::wait_ready(server, ready) {
        return rc;
    }
    let mut sh = Command::new("/bin/sh");
    sh.arg("-c").arg(script(vars, command));
    // SAFETY: the hook runs between fork and exec and only calls signal(2),
    // which is async-signal-safe; it allocates nothing and takes no locks.
    unsafe { sh.pre_exec(restore_default_signals) };
    let mut rc = match sh.status() {
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
        Ok(status @ WaitStatus::Exited(..)) if rc == 0 => {
            rc = fork::exit_status(status).unwrap_or(rc)
        }
        Ok(status @ WaitStatus::Signaled(..)) => rc = fork::exit_status(status).unwrap_or(rc),
        _ => {}
    }
    rc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_variables() {
        let run = |vars: &RunVars| {
            let out = Command::new("/bin/sh")
                .arg("-c")
                .arg(script(
                    vars,
                    "printf '%s|%s|%s' \"${tls-unset}\" \"$tls_certificates\" \"$tls_psk\"",
                ))
                .env_remove("tls")
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(run(&RunVars::default()), "unset||");
        let vars = RunVars {
            tls: Some(2),
            tls_certificates: "pki".into(),
            tls_psk: "my keys.psk".into(),
            ..RunVars::default()
        };
        assert_eq!(run(&vars), "2|pki|my keys.psk");
    }

    #[test]
    fn script_sets_variables_without_exporting_them() {
        let vars = RunVars {
            uri: "nbd+unix://?socket=/tmp/x y/socket".into(),
            exportname: "it's".into(),
            port: String::new(),
            unixsocket: "/tmp/x y/socket".into(),
            ..RunVars::default()
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
