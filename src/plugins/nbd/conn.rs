//! One connection to the remote server, shared by every request thread.
//!
//! Requests are issued with libnbd's asynchronous API from the threads that
//! serve them, so many can be in flight on the one connection at once; a
//! reader thread per connection drives libnbd's state machine (receiving
//! replies, finishing sends that would have blocked) and so runs the
//! completion callbacks that wake the waiting request threads.  A pipe
//! wakes the reader when a new command has bytes left to send.

use super::libnbd::{Command, Nbd, Polled};
use crate::error::{Error, Result};
use nix::fcntl::OFlag;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long closing waits for the server to hang up after `NBD_CMD_DISC`
/// before the socket is closed on it anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

struct Shared {
    nbd: Nbd,
    wake_r: OwnedFd,
    wake_w: OwnedFd,
    closing: AtomicBool,
}

impl Shared {
    fn wake(&self) {
        // A full pipe already holds a wake-up: EAGAIN is fine.
        let _ = nix::unistd::write(self.wake_w.as_fd(), &[0u8]);
    }

    fn drain(&self) {
        let mut buf = [0u8; 64];
        while let Ok(n) = nix::unistd::read(self.wake_r.as_fd(), &mut buf) {
            if n < buf.len() {
                break;
            }
        }
    }
}

/// A connected libnbd handle with its reader thread.
pub struct Connection {
    shared: Arc<Shared>,
    reader: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connection")
    }
}

impl Connection {
    /// Take over a handle that has reached the transmission phase.
    pub fn start(nbd: Nbd) -> Result<Connection> {
        let (wake_r, wake_w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
            .map_err(|e| Error::os(e, "pipe2"))?;
        let shared = Arc::new(Shared {
            nbd,
            wake_r,
            wake_w,
            closing: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        let reader = std::thread::Builder::new()
            .name("nbd-reader".into())
            .spawn(move || reader_loop(&s))
            .map_err(|e| Error::io(e, "cannot start the nbd reader thread"))?;
        Ok(Connection {
            shared,
            reader: Mutex::new(Some(reader)),
        })
    }

    /// The handle, for capability queries.
    pub fn nbd(&self) -> &Nbd {
        &self.shared.nbd
    }

    /// Run one data command and wait for its reply.
    pub fn execute(&self, cmd: Command<'_>) -> Result<Vec<(u64, u64, u32)>> {
        let s = &self.shared;
        s.nbd.execute(cmd, || {
            if s.nbd.wants_write() {
                s.wake();
            }
        })
    }
}

fn reader_loop(s: &Shared) {
    let mut deadline: Option<Instant> = None;
    // A prompt stop of the server cuts the connection, so that requests
    // waiting for a slow remote server end at once (with an error).
    let mut quit = Some(crate::server::quit::fd());
    loop {
        if deadline.is_none() && s.closing.load(Ordering::Acquire) {
            deadline = Some(Instant::now() + CLOSE_GRACE);
        }
        let timeout = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    crate::log::debug("nbd: remote server did not hang up, closing the socket");
                    break;
                }
                left.as_millis().clamp(1, 1000) as i32
            }
            None => -1,
        };
        match s.nbd.poll_once(s.wake_r.as_fd(), quit, timeout) {
            Ok(Polled::Finished) => break,
            Ok(Polled::Quit) => {
                crate::log::debug("nbd: server stopping, closing the remote connection");
                quit = None;
            }
            Ok(Polled::Woken) => s.drain(),
            Ok(Polled::Progress) => {}
            Err(e) => {
                crate::log::error(format!("nbd: {}", e.message()));
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let s = &self.shared;
        if let Err(e) = s.nbd.aio_disconnect() {
            crate::log::debug(format!("nbd: disconnect: {}", e.message()));
        }
        s.closing.store(true, Ordering::Release);
        s.wake();
        let reader = self
            .reader
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(r) = reader {
            let _ = r.join();
        }
        // The last reference to `shared` goes here: nbd_close.
    }
}
