//! The `pause` filter: hold requests on command, for example while the
//! storage below is snapshotted.
//!
//! `pause-control=SOCKET` names a Unix socket the filter listens on (one
//! control client at a time).  Commands are single bytes: `p` pauses, `r`
//! resumes; each is answered with its upper-case letter once it has taken
//! effect, and anything else with `X` (newline, tab and space are ignored
//! without an answer).  While paused, every request (read, write, flush,
//! trim, zero, extents, cache) on every connection waits before reaching
//! the layer below; `P` is only sent once the requests that were already
//! running have finished, so the plugin is then idle.  Waiting requests
//! fail with ESHUTDOWN if the server is told to stop, so a paused server
//! still shuts down promptly.

use crate::error::{Error, Result};
use crate::extents::Extents;
use crate::filter::{Filter, FilterContext};
use crate::layers::{Backend, Context};
use crate::server::{lock, quit};
use nix::errno::Errno;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Longest Unix socket path (`sun_path` less its terminating NUL).
const UNIX_PATH_MAX: usize = 107;
/// How often waiters look at the shutdown flag.
const POLL: Duration = Duration::from_millis(100);

#[derive(Default)]
struct State {
    paused: bool,
    /// Requests between `begin` and the end of their call below.
    in_flight: usize,
}

/// Shared by every connection and the control thread.
#[derive(Default)]
struct Gate {
    state: Mutex<State>,
    changed: Condvar,
}

/// A request passed the gate; dropping it counts it as finished.
struct Pass<'a>(&'a Gate);

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).in_flight -= 1;
        self.0.changed.notify_all();
    }
}

impl Gate {
    /// Wait while paused, then count the request as in flight.
    fn begin(&self) -> Result<Pass<'_>> {
        let mut st = lock(&self.state);
        while st.paused {
            if quit::requested() {
                return Err(Error::new(Errno::ESHUTDOWN, "server is shutting down"));
            }
            st = self
                .changed
                .wait_timeout(st, POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.in_flight += 1;
        Ok(Pass(self))
    }

    /// Stop new requests, then wait for those in flight to finish.
    /// Returns false if the server began to stop meanwhile.
    fn pause(&self) -> bool {
        let mut st = lock(&self.state);
        if !st.paused {
            st.paused = true;
            crate::log::debug("pause: pausing, waiting for requests to complete");
        }
        while st.in_flight > 0 {
            if quit::requested() {
                return false;
            }
            st = self
                .changed
                .wait_timeout(st, POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        crate::log::debug("pause: paused");
        true
    }

    fn resume(&self) {
        let mut st = lock(&self.state);
        if st.paused {
            st.paused = false;
            crate::log::debug("pause: resumed");
        }
        drop(st);
        self.changed.notify_all();
    }
}

pub struct Pause {
    path: Option<PathBuf>,
    listener: Mutex<Option<UnixListener>>,
    gate: Arc<Gate>,
}

impl Pause {
    pub fn new() -> Self {
        Pause {
            path: None,
            listener: Mutex::new(None),
            gate: Arc::new(Gate::default()),
        }
    }
}

impl Default for Pause {
    fn default() -> Self {
        Self::new()
    }
}

/// Wait until `fd` is readable; false if the server is stopping.
fn wait_readable(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        if quit::requested() {
            return false;
        }
        let mut fds = [
            PollFd::new(fd, PollFlags::POLLIN),
            PollFd::new(quit::fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::from(1000u16)) {
            Ok(_) => {
                if fds[0].revents().is_some_and(|r| !r.is_empty()) {
                    return true;
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => {
                crate::log::error(format!("pause: poll: {}", e.desc()));
                return false;
            }
        }
    }
}

/// Serve one control client until it hangs up.
fn serve_control(gate: &Gate, mut s: UnixStream) {
    let mut byte = [0u8; 1];
    loop {
        if !wait_readable(s.as_fd()) {
            return;
        }
        match s.read(&mut byte) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                crate::log::error(format!("pause: read: {e}"));
                return;
            }
        }
        let reply = match byte[0] {
            b'p' => {
                if !gate.pause() {
                    return;
                }
                b'P'
            }
            b'r' => {
                gate.resume();
                b'R'
            }
            b'\n' | b'\t' | b' ' | b'\r' => continue,
            _ => b'X',
        };
        if s.write_all(&[reply]).is_err() {
            return;
        }
    }
}

fn control_thread(gate: Arc<Gate>, listener: UnixListener) {
    loop {
        if !wait_readable(listener.as_fd()) {
            return;
        }
        match listener.accept() {
            Ok((s, _)) => {
                let _ = s.set_nonblocking(false);
                serve_control(&gate, s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => crate::log::error(format!("pause: accept: {e}")),
        }
    }
}

impl Filter for Pause {
    fn name(&self) -> &'static str {
        "pause"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit pause filter")
    }

    fn description(&self) -> &'static str {
        "Pause and resume NBD requests through a control socket."
    }

    fn config_help(&self) -> &'static str {
        "pause-control=SOCKET           Control socket."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "pause-control" {
            return Ok(false);
        }
        if value.is_empty() {
            return Err(Error::config("pause-control socket name is empty"));
        }
        self.path = Some(std::path::absolute(value).map_err(|e| Error::io(e, value))?);
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        let Some(path) = &self.path else {
            return Err(Error::config("pause-control socket was not set"));
        };
        let len = path.as_os_str().len();
        if len > UNIX_PATH_MAX {
            return Err(Error::config(format!(
                "pause-control socket path too long: length {len} > max {UNIX_PATH_MAX} bytes"
            )));
        }
        // A socket left over from an earlier run is replaced.
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|e| Error::io(e, path.display()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io(e, "pause-control: fcntl"))?;
        *lock(&self.listener) = Some(listener);
        Ok(())
    }

    fn after_fork(&self) -> Result<()> {
        let Some(listener) = lock(&self.listener).take() else {
            return Ok(());
        };
        let gate = self.gate.clone();
        std::thread::Builder::new()
            .name("pause-control".into())
            .spawn(move || control_thread(gate, listener))
            .map_err(|e| Error::io(e, "pause: cannot start the control thread"))?;
        Ok(())
    }

    fn cleanup(&self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        Ok(Box::new(PauseContext {
            next: next.open(readonly, export, is_tls)?,
            gate: self.gate.clone(),
        }))
    }
}

struct PauseContext {
    next: Box<dyn Context>,
    gate: Arc<Gate>,
}

impl FilterContext for PauseContext {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn pread(&self, buf: &mut [u8], offset: u64, f: u32) -> Result<()> {
        let _p = self.gate.begin()?;
        self.next.pread(buf, offset, f)
    }

    fn pwrite(&self, buf: &[u8], offset: u64, f: u32) -> Result<()> {
        let _p = self.gate.begin()?;
        self.next.pwrite(buf, offset, f)
    }

    fn flush(&self, f: u32) -> Result<()> {
        let _p = self.gate.begin()?;
        self.next.flush(f)
    }

    fn trim(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        let _p = self.gate.begin()?;
        self.next.trim(count, offset, f)
    }

    fn zero(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        let _p = self.gate.begin()?;
        self.next.zero(count, offset, f)
    }

    fn extents(&self, extents: &mut Extents, f: u32) -> Result<()> {
        let _p = self.gate.begin()?;
        self.next.extents(extents, f)
    }

    fn cache(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        let _p = self.gate.begin()?;
        self.next.cache(count, offset, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_waits_for_requests_in_flight_and_blocks_new_ones() {
        let gate = Arc::new(Gate::default());
        let pass = gate.begin().unwrap();
        let g = gate.clone();
        let pauser = std::thread::spawn(move || g.pause());
        std::thread::sleep(Duration::from_millis(50));
        assert!(!pauser.is_finished(), "pause must wait for the request");
        drop(pass);
        assert!(pauser.join().unwrap());
        let g = gate.clone();
        let blocked = std::thread::spawn(move || g.begin().map(|_| ()).is_ok());
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !blocked.is_finished(),
            "a new request must wait while paused"
        );
        gate.resume();
        assert!(blocked.join().unwrap());
        assert_eq!(lock(&gate.state).in_flight, 0);
    }

    #[test]
    fn the_socket_is_required() {
        let mut f = Pause::new();
        assert!(f.config_complete().is_err());
        assert!(f.config("pause-control", "").is_err());
        let long = format!("/tmp/{}", "x".repeat(200));
        assert!(f.config("pause-control", &long).unwrap());
        let e = f.config_complete().unwrap_err();
        assert!(e.message().contains("path too long"), "{}", e.message());
    }
}
