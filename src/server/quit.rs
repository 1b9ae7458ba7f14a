//! The one shutdown mechanism: a flag plus a self-pipe, in two strengths.
//!
//! - [`request`] stops the server promptly: signals (SIGINT, SIGTERM, SIGHUP,
//!   SIGQUIT), the end of a `--run` command and parent death end up here.
//!   Setting the flag writes a byte to a pipe whose read end every blocking
//!   wait polls (the accept loop, [`sleep`]), so the server wakes at once;
//!   open connections stop reading further requests.
//! - [`request_graceful`] drains the server (nbdkit's `nbdkit_shutdown` as
//!   the exitlast and exitwhen filters use it): no new connections, open
//!   ones finish their work, and the server exits when the last one closes
//!   (at once when idle).  A prompt request still overrides a drain.
//!
//! Signal handlers are installed through `signal-hook`, which only does
//! async-signal-safe work (store to an atomic, write to the pipe) and starts
//! no threads, so this can be set up before forking.

use crate::error::{Error, Result};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// The signals that ask nbdkit to stop cleanly.
pub const QUIT_SIGNALS: [i32; 4] = [
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGQUIT,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGHUP,
];

struct Quit {
    flag: Arc<AtomicBool>,
    read: UnixStream,
    write: UnixStream,
    /// Set by [`request_graceful`].
    draining: AtomicBool,
    /// Wakes the server while it drains (never read by anyone else, so it
    /// can be emptied without hiding a prompt request from other waiters).
    drain_read: UnixStream,
    drain_write: UnixStream,
}

static QUIT: OnceLock<Quit> = OnceLock::new();

fn nonblocking_pair() -> (UnixStream, UnixStream) {
    let (read, write) = UnixStream::pair().expect("socketpair for the quit pipe");
    read.set_nonblocking(true).expect("nonblocking quit pipe");
    write.set_nonblocking(true).expect("nonblocking quit pipe");
    (read, write)
}

fn get() -> &'static Quit {
    QUIT.get_or_init(|| {
        let (read, write) = nonblocking_pair();
        let (drain_read, drain_write) = nonblocking_pair();
        Quit {
            flag: Arc::new(AtomicBool::new(false)),
            read,
            write,
            draining: AtomicBool::new(false),
            drain_read,
            drain_write,
        }
    })
}

/// Create the pipe and route the quit signals to it; ignore SIGPIPE.
pub fn install_signal_handlers() -> Result<()> {
    let q = get();
    for sig in QUIT_SIGNALS {
        signal_hook::flag::register(sig, q.flag.clone()).map_err(|e| Error::io(e, "sigaction"))?;
        let w = q.write.try_clone().map_err(|e| Error::io(e, "dup"))?;
        signal_hook::low_level::pipe::register(sig, w).map_err(|e| Error::io(e, "sigaction"))?;
    }
    // SAFETY: setting SIGPIPE to SIG_IGN has no preconditions; broken
    // connections then show up as EPIPE errors from write.
    unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigIgn,
        )
    }
    .map_err(|e| Error::os(e, "signal"))?;
    Ok(())
}

/// Ask the server to stop (safe from any thread).
pub fn request() {
    let q = get();
    q.flag.store(true, Ordering::SeqCst);
    let _ = (&q.write).write(&[1]);
}

/// Has a prompt stop been requested?
pub fn requested() -> bool {
    get().flag.load(Ordering::SeqCst)
}

/// Ask the server to drain and exit: refuse new connections, let open ones
/// finish, exit when the last one closes (safe from any thread).
pub fn request_graceful() {
    let q = get();
    q.draining.store(true, Ordering::SeqCst);
    wake_drain();
}

/// Has a graceful stop been requested?
pub fn draining() -> bool {
    get().draining.load(Ordering::SeqCst)
}

/// Wake the server's drain wait (a connection closed, or a drain began).
pub fn wake_drain() {
    let _ = (&get().drain_write).write(&[1]);
}

/// Readable after [`wake_drain`]; only the server's accept loop polls it.
pub fn drain_fd() -> BorrowedFd<'static> {
    get().drain_read.as_fd()
}

/// Empty the drain pipe before re-checking what woke the server.
pub fn clear_drain_wakeups() {
    let mut buf = [0u8; 64];
    while matches!((&get().drain_read).read(&mut buf), Ok(n) if n > 0) {}
}

/// The read end of the pipe: readable once a stop has been requested.
pub fn fd() -> BorrowedFd<'static> {
    get().read.as_fd()
}

/// Sleep for `d`, waking early if the server is told to stop (nbdkit's
/// `nbdkit_nanosleep`): returns `ESHUTDOWN` in that case.
pub fn sleep(d: std::time::Duration) -> Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = std::time::Instant::now() + d;
    loop {
        if requested() {
            return Err(Error::new(
                nix::errno::Errno::ESHUTDOWN,
                "server is shutting down",
            ));
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(fd(), PollFlags::POLLIN)];
        let _ = poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        );
    }
}
