//! `--timeout=T`: a client must finish negotiating within T of being
//! accepted, or its connection is shut down.
//!
//! The connection's own thread arms the timer with [`arm`] before the
//! handshake and [`handshake_done`] disarms it (it is kept in a thread-local
//! so the negotiation code needs no extra parameter).  The timer is a small
//! thread waiting on a channel: disarming drops the sender, which wakes it at
//! once; otherwise, when the time is up, it shuts the socket down in both
//! directions, so the blocked handshake read returns end-of-file and the
//! connection ends like any other.  Without `--timeout` nothing is started.

use crate::server::listen::Shared;
use std::cell::RefCell;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::Duration;

thread_local! {
    static PENDING: RefCell<Option<Sender<()>>> = const { RefCell::new(None) };
}

/// Start this connection's handshake deadline: `socket` is shut down if
/// [`handshake_done`] is not called in this thread within `limit`.
pub fn arm(limit: Option<Duration>, socket: Shared) {
    let Some(limit) = limit else { return };
    let (tx, rx) = mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("timeout".into())
        .spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                crate::log::error(format!(
                    "client did not finish negotiation within {limit:?}: closing the connection"
                ));
                let _ = nix::sys::socket::shutdown(
                    socket.as_fd().as_raw_fd(),
                    nix::sys::socket::Shutdown::Both,
                );
            }
        });
    match spawned {
        Ok(_) => PENDING.with(|p| *p.borrow_mut() = Some(tx)),
        Err(e) => crate::log::error(format!("cannot start the --timeout timer: {e}")),
    }
}

/// The handshake is over (finished or failed): cancel this thread's timer.
pub fn handshake_done() {
    PENDING.with(|p| p.borrow_mut().take());
}
