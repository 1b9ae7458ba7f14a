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
//! Signals sent to the supervisor while COMMAND runs (SIGTERM, SIGINT,
//! SIGHUP, SIGQUIT): the same signal is passed on to COMMAND (the shell's
//! pid, which is COMMAND itself when the shell execs it), and the server is
//! told to stop with SIGTERM.  A signal that came from the terminal
//! (`Ctrl-C`, `Ctrl-\`) already reached COMMAND, which shares nbdkit's process
//! group, so it is not sent a second time.  nbdkit then waits for COMMAND
//! and exits with its status (128+N when the signal killed it).  A COMMAND
//! that ignores or traps the signal and is still running after
//! [`GRACE`] gets SIGKILL, so nbdkit always exits within a few seconds.
//! COMMAND keeps nbdkit's process group and terminal, and starts with
//! default signal handling (nothing ignored).

use crate::server::fork;
use crate::server::uri::{shell_quote, shell_quote_bytes};
use nix::sys::signal::{kill, Signal};
use nix::sys::signal::{sigaction, signal, SaFlags, SigAction, SigHandler, SigSet};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// How long COMMAND may go on after a forwarded signal before it is killed.
pub const GRACE: Duration = Duration::from_secs(3);

/// How long the server may take to stop after a signal before SIGKILL.
const SERVER_GRACE: Duration = Duration::from_secs(1);

/// The signals passed on to COMMAND.
const FORWARDED: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// The server's pid, for the signal handler that forwards stop requests.
static SERVER: AtomicI32 = AtomicI32::new(0);
/// COMMAND's pid (the shell), once it runs.
static COMMAND: AtomicI32 = AtomicI32::new(0);
/// The first signal received, or 0.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let _ = RECEIVED.compare_exchange(0, sig, Ordering::Relaxed, Ordering::Relaxed);
    // Signals the terminal generates carry SI_KERNEL and have been sent to
    // the whole foreground process group, COMMAND included.
    // SAFETY: the kernel passes a valid siginfo_t with SA_SIGINFO; reading
    // si_code is async-signal-safe.
    let from_terminal = !info.is_null() && unsafe { (*info).si_code } == libc::SI_KERNEL;
    let command = COMMAND.load(Ordering::Relaxed);
    if command > 0 && !from_terminal {
        // SAFETY: kill(2) is async-signal-safe and touches no memory.
        unsafe { libc::kill(command, sig) };
    }
    let server = SERVER.load(Ordering::Relaxed);
    if server > 0 {
        // SAFETY: as above.
        unsafe { libc::kill(server, libc::SIGTERM) };
    }
}

/// While the supervisor waits for the command, the stop signals are passed
/// on to COMMAND and stop the server.
fn set_supervisor_signals(server: Pid) {
    SERVER.store(server.as_raw(), Ordering::Relaxed);
    let action = SigAction::new(
        SigHandler::SigAction(forward),
        SaFlags::SA_RESTART | SaFlags::SA_SIGINFO,
        SigSet::empty(),
    );
    for sig in FORWARDED {
        // SAFETY: the handler only uses atomics and calls kill(2), both
        // async-signal-safe.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

/// In COMMAND (after fork, before exec): undo Rust's ignored SIGPIPE (and
/// any keyboard signal nbdkit's own parent ignored), so COMMAND starts as
/// from a shell.
fn restore_default_signals() -> std::io::Result<()> {
    for sig in [Signal::SIGINT, Signal::SIGQUIT, Signal::SIGPIPE] {
        // SAFETY: signal(2) is async-signal-safe; SIG_DFL runs no code.
        unsafe { signal(sig, SigHandler::SigDfl) }.map_err(std::io::Error::from)?;
    }
    Ok(())
}

/// Wait for COMMAND; after a signal, give it [`GRACE`] then SIGKILL.
///
/// The wait sleeps until COMMAND exits or a signal arrives (`ppoll` on a
/// pidfd, with the forwarded signals blocked everywhere else, so none slips
/// in between the check and the sleep): a captive nbdkit exits as soon as
/// COMMAND does.  Only while a signal's grace runs does it wake to look at
/// the clock.
fn wait_command(child: &mut std::process::Child) -> std::io::Result<std::process::ExitStatus> {
    let pid = Pid::from_raw(child.id() as i32);
    COMMAND.store(pid.as_raw(), Ordering::Relaxed);
    let mut forwarded = SigSet::empty();
    for sig in FORWARDED {
        forwarded.add(sig);
    }
    // With a pidfd, the forwarded signals stay blocked from here to the end
    // but inside `ppoll` (see [`sleep_until_exit`]).  Without one (a kernel
    // before 5.3), they stay deliverable and the loop looks every [`POLL`].
    let waiter = pidfd_open(pid).and_then(|fd| {
        let before = forwarded
            .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)
            .ok()?;
        Some((fd, before))
    });
    let status = wait_command_until(child, pid, waiter.as_ref());
    if let Some((_, before)) = &waiter {
        let _ = before.thread_set_mask();
    }
    COMMAND.store(0, Ordering::Relaxed);
    status
}

/// The loop of [`wait_command`]; `waiter` is COMMAND's pidfd and the signal
/// mask from before the forwarded signals were blocked.
fn wait_command_until(
    child: &mut std::process::Child,
    pid: Pid,
    waiter: Option<&(OwnedFd, SigSet)>,
) -> std::io::Result<std::process::ExitStatus> {
    // A signal that arrived before COMMAND's pid was known.
    let early = RECEIVED.load(Ordering::Relaxed);
    if early != 0 {
        if let Ok(sig) = Signal::try_from(early) {
            let _ = kill(pid, sig);
        }
    }
    let mut since: Option<Instant> = None;
    let mut killed = false;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if since.is_none() && RECEIVED.load(Ordering::Relaxed) != 0 {
            since = Some(Instant::now());
        }
        if let Some(t) = since {
            if !killed && t.elapsed() >= GRACE {
                let _ = kill(pid, Signal::SIGKILL);
                killed = true;
            }
        }
        match (waiter, since) {
            (Some((fd, mask)), None) => _ = sleep_until_exit(fd, *mask, None),
            (Some((fd, mask)), Some(_)) => _ = sleep_until_exit(fd, *mask, Some(POLL)),
            (None, _) => std::thread::sleep(POLL),
        }
    }
}

/// How often the supervisor looks again while it cannot sleep until an
/// event: during a signal's grace, or where the kernel has no pidfds.
const POLL: Duration = Duration::from_millis(20);

/// A pidfd for `pid` (Linux 5.3 and later): readable once `pid` exits.
fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open(2) takes a pid and flags and touches no memory of
    // ours; on success it returns a new file descriptor, owned from here.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sleep until the process behind `pidfd` exits, a signal is delivered, or
/// `timeout` passes.  The caller keeps the forwarded signals blocked; `ppoll`
/// lets them through (`mask`, the mask from before) only while it sleeps,
/// atomically, so one that arrived since the caller last looked ends the
/// sleep at once.  `true` when the process has exited.
fn sleep_until_exit(pidfd: &OwnedFd, mask: SigSet, timeout: Option<Duration>) -> bool {
    use nix::poll::{PollFd, PollFlags};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    let timeout = timeout.map(nix::sys::time::TimeSpec::from_duration);
    match nix::poll::ppoll(&mut fds, timeout, Some(mask)) {
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN)),
        Err(e) => {
            // EINTR is the signal this waits for; anything else must not
            // turn the caller's loop into a busy one.
            if e != nix::errno::Errno::EINTR {
                std::thread::sleep(POLL);
            }
            false
        }
    }
}

/// After a forwarded signal: COMMAND has ended, but processes it started
/// may live on (the shell died, its `sleep` did not).  nbdkit is their
/// subreaper, so they are its children now: pass them the same signal, and
/// SIGKILL after [`GRACE`] those still there, so nothing is left behind.
fn stop_orphans(server: Pid, sig: Signal) {
    let orphans = || -> Vec<Pid> {
        let mut pids = Vec::new();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return pids;
        };
        for task in tasks.flatten() {
            if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
                pids.extend(
                    list.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok())
                        .map(Pid::from_raw)
                        .filter(|&p| p != server),
                );
            }
        }
        pids
    };
    let start = Instant::now();
    let mut signalled = std::collections::HashSet::new();
    loop {
        let live = orphans();
        for &pid in &live {
            // Reap what has exited; signal what has not been signalled.
            if !matches!(
                waitpid(pid, Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive)
            ) {
                continue;
            }
            if signalled.insert(pid) {
                let _ = kill(pid, sig);
            } else if start.elapsed() >= GRACE {
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
        if live.is_empty() || start.elapsed() >= GRACE + Duration::from_secs(1) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stop the server if it is still running and reap it.  After a signal,
/// it gets [`SERVER_GRACE`] to finish before SIGKILL.
fn stop_server(server: Pid) -> nix::Result<WaitStatus> {
    let _ = kill(server, Signal::SIGTERM);
    if RECEIVED.load(Ordering::Relaxed) == 0 {
        return waitpid(server, None);
    }
    let start = Instant::now();
    loop {
        match waitpid(server, Some(WaitPidFlag::WNOHANG))? {
            WaitStatus::StillAlive => {}
            status => return Ok(status),
        }
        if start.elapsed() >= SERVER_GRACE {
            let _ = kill(server, Signal::SIGKILL);
            return waitpid(server, None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The values `--run` exposes to COMMAND.
#[derive(Debug, Clone, Default)]
pub struct RunVars {
    pub uri: String,
    /// `$exportname`: any bytes, as `-e` gave it.
    pub exportname: std::ffi::OsString,
    pub port: String,
    /// `$unixsocket`: any bytes, as the path was given.
    pub unixsocket: std::ffi::OsString,
    /// `$tls`: `None` (unset) when TLS is off, 1 when on, 2 when required.
    pub tls: Option<u8>,
    /// `$tls_certificates`, `$tls_psk`: the options as given, or empty.
    pub tls_certificates: String,
    pub tls_psk: String,
}

/// The script handed to `/bin/sh -c`: variable assignments, then COMMAND.
pub fn script(vars: &RunVars, command: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut s = Vec::new();
    let text = script_text(vars, command);
    // `unixsocket=` and `exportname=` go first: they may be any bytes.
    s.extend_from_slice(b"unixsocket=");
    s.extend_from_slice(&shell_quote_bytes(vars.unixsocket.as_bytes()));
    s.extend_from_slice(b"\nexportname=");
    s.extend_from_slice(&shell_quote_bytes(vars.exportname.as_bytes()));
    s.push(b'\n');
    s.extend_from_slice(text.as_bytes());
    std::ffi::OsString::from_vec(s)
}

fn script_text(vars: &RunVars, command: &str) -> String {
    let mut s = String::new();
    s.push_str(&format!("uri={}\n", shell_quote(&vars.uri)));
    s.push_str("nbd=\"$uri\"\n");
    s.push_str(&format!("port={}\n", shell_quote(&vars.port)));
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
    // Orphans of COMMAND become our children, so a signal can reach them.
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let mut sh = Command::new("/bin/sh");
    sh.arg("-c").arg(script(vars, command));
    // SAFETY: the hook runs between fork and exec and only calls signal(2),
    // which is async-signal-safe; it allocates nothing and takes no locks.
    unsafe { sh.pre_exec(restore_default_signals) };
    let mut rc = match sh.spawn().and_then(|mut child| wait_command(&mut child)) {
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
    if let Ok(sig) = Signal::try_from(RECEIVED.load(Ordering::Relaxed)) {
        stop_orphans(server, sig);
    }
    match waitpid(server, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => {
            let _ = stop_server(server);
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

    /// `sh -c SCRIPT`, its pid, and this thread's signal mask.
    fn shell(script: &str) -> (std::process::Child, Pid, SigSet) {
        let child = Command::new("/bin/sh")
            .args(["-c", script])
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        (child, pid, SigSet::thread_get_mask().unwrap())
    }

    #[test]
    fn without_a_pidfd_the_supervisor_still_sees_the_command_end() {
        let (mut child, pid, _) = shell("exit 3");
        let status = wait_command_until(&mut child, pid, None).unwrap();
        assert_eq!(status.code(), Some(3));
    }

    #[test]
    fn the_supervisor_sleeps_until_the_command_exits() {
        let (mut child, pid, mask) = shell("exit 0");
        let fd = pidfd_open(pid).expect("pidfd_open");
        // Woken by the exit itself, long before the timeout.
        assert!(sleep_until_exit(&fd, mask, Some(Duration::from_secs(60))));
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn the_supervisor_sleep_ends_at_its_timeout_while_the_command_runs() {
        let (mut child, pid, mask) = shell("exec sleep 60");
        let fd = pidfd_open(pid).expect("pidfd_open");
        assert!(!sleep_until_exit(
            &fd,
            mask,
            Some(Duration::from_millis(10))
        ));
        child.kill().unwrap();
        assert!(sleep_until_exit(&fd, mask, Some(Duration::from_secs(60))));
        let _ = child.wait();
    }

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
