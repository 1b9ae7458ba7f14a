//! The `exitwhen` filter: exit gracefully when an outside event happens — a
//! file is created or deleted, a pipe is closed, a process exits, or a
//! script says so (exit status 88).
//!
//! Events are checked when a client connects or disconnects and, while no
//! client is connected, every `exit-when-poll` seconds (default 60) by a
//! background thread.  Once one has happened the server refuses new
//! connections, lets open ones finish their work, and exits when the last
//! one closes (at once when idle).  An event that has already happened when
//! the server gets ready makes it exit at once with status 0.

use crate::error::{Error, Result};
use crate::filter::{Filter, FilterContext, Guarded};
use crate::layers::Backend;
use crate::parse::parse_unsigned;
use crate::server::peer::Peer;
use crate::server::{lock, quit};
use nix::errno::Errno;
use std::fs::File;
use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The exit status by which an `exit-when-script` reports its event.
const SCRIPT_EVENT: i32 = 88;

enum Event {
    FileCreated(PathBuf),
    FileDeleted(PathBuf),
    /// The read end of a pipe inherited from whoever started us.
    PipeClosed(RawFd),
    /// `/proc/PID/stat`, opened at configuration time so that a recycled
    /// PID is not mistaken for the process we watch.
    ProcessExits(File),
    Script(String),
}

impl Event {
    /// Has the event happened?  Errors are logged and count as "no".
    fn happened(&self) -> bool {
        match self {
            Event::FileCreated(p) => {
                let yes = p.exists();
                if yes {
                    crate::log::debug(format!(
                        "exit-when-file-created: detected {} created",
                        p.display()
                    ));
                }
                yes
            }
            Event::FileDeleted(p) => match std::fs::symlink_metadata(p) {
                Ok(_) => false,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    crate::log::debug(format!(
                        "exit-when-file-deleted: detected {} deleted",
                        p.display()
                    ));
                    true
                }
                Err(e) => {
                    crate::log::error(format!(
                        "exit-when-file-deleted: access: {}: {e}",
                        p.display()
                    ));
                    false
                }
            },
            Event::PipeClosed(fd) => pipe_closed(*fd),
            Event::ProcessExits(stat) => process_exited(stat),
            Event::Script(cmd) => script_event(cmd),
        }
    }
}

fn pipe_closed(fd: RawFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    // SAFETY: the fd was handed to us on the command line for this purpose
    // and nothing else in the server closes it; if it is not open, poll
    // reports POLLNVAL rather than touching another object.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => {
            let r = fds[0].revents().unwrap_or(PollFlags::empty());
            if r.contains(PollFlags::POLLNVAL) {
                crate::log::error("exit-when-pipe-closed: invalid file descriptor");
                true
            } else if r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
                crate::log::debug("exit-when-pipe-closed: detected pipe closed");
                true
            } else {
                false
            }
        }
        Err(Errno::EINTR) => false,
        Err(e) => {
            crate::log::error(format!("exit-when-pipe-closed: poll: {}", e.desc()));
            false
        }
    }
}

fn process_exited(stat: &File) -> bool {
    let mut buf = [0u8; 512];
    match stat.read_at(&mut buf, 0) {
        Ok(n) => {
            // "PID (comm) S ...": a zombie (Z) or dead (X) process has exited
            // even if its parent has not reaped it yet.
            let text = &buf[..n];
            let state = text
                .iter()
                .rposition(|&b| b == b')')
                .and_then(|i| text[i + 1..].iter().find(|b| !b.is_ascii_whitespace()));
            let gone = matches!(state, Some(b'Z' | b'X'));
            if gone {
                crate::log::debug("exit-when-process-exits: detected process exit");
            }
            gone
        }
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
            crate::log::debug("exit-when-process-exits: detected process exit");
            true
        }
        Err(e) => {
            crate::log::error(format!("exit-when-process-exits: read: {e}"));
            false
        }
    }
}

fn script_event(cmd: &str) -> bool {
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .status();
    match status {
        Ok(st) => match (st.code(), st.signal()) {
            (Some(0), _) => false,
            (Some(SCRIPT_EVENT), _) => {
                crate::log::debug("exit-when-script: detected scripted event");
                true
            }
            (Some(code), _) => {
                crate::log::error(format!("{cmd}: command failed with exit code {code}"));
                false
            }
            (None, Some(sig)) => {
                crate::log::error(format!("{cmd}: command was killed by signal {sig}"));
                false
            }
            (None, None) => false,
        },
        Err(e) => {
            crate::log::error(format!("exit-when-script: {e}"));
            false
        }
    }
}

/// What the filter, its connections and its polling thread share.
#[derive(Default)]
struct Shared {
    events: Mutex<Vec<Event>>,
    /// An event has happened: refuse new connections.
    exiting: AtomicBool,
    connections: Mutex<usize>,
}

impl Shared {
    /// Check every event (once one has happened the answer stays yes) and
    /// start the graceful exit when one has.
    fn check(&self) -> bool {
        if self.exiting.load(Ordering::SeqCst) {
            return true;
        }
        let events = lock(&self.events);
        if events.iter().any(Event::happened) {
            self.exiting.store(true, Ordering::SeqCst);
            quit::request_graceful();
            return true;
        }
        false
    }
}

pub struct ExitWhen {
    shared: Arc<Shared>,
    poll: Duration,
}

impl ExitWhen {
    pub fn new() -> Self {
        ExitWhen {
            shared: Arc::default(),
            poll: Duration::from_secs(60),
        }
    }

    fn add(&self, e: Event) {
        lock(&self.shared.events).push(e);
    }
}

impl Default for ExitWhen {
    fn default() -> Self {
        Self::new()
    }
}

/// An absolute path, as the server may change directory when it
/// backgrounds.
fn absolute(key: &str, value: &str) -> Result<PathBuf> {
    if value.is_empty() {
        return Err(Error::config(format!("{key}: file name must not be empty")));
    }
    std::path::absolute(value).map_err(|e| Error::io(e, format!("{key}: {value}")))
}

/// One open connection; dropping it is the filter's `close`.
struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.check();
        let mut n = lock(&self.0.connections);
        *n -= 1;
        if *n == 0 && self.0.exiting.load(Ordering::SeqCst) {
            crate::log::debug("exitwhen: exiting on last client connection");
        }
    }
}

impl Filter for ExitWhen {
    fn name(&self) -> &'static str {
        "exitwhen"
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit exitwhen filter")
    }

    fn description(&self) -> &'static str {
        "Exit gracefully when an event occurs."
    }

    fn config_help(&self) -> &'static str {
        "exit-when-file-created=FILE    Exit when FILE is created.\n\
         exit-when-file-deleted=FILE    Exit when FILE is deleted.\n\
         exit-when-pipe-closed=FD       Exit when the pipe read from FD is closed.\n\
         exit-when-process-exits=PID    Exit when process PID exits.\n\
         exit-when-script=SCRIPT        Exit when SCRIPT exits with status 88.\n\
         exit-when-poll=SECS            Seconds between checks when idle (default 60)."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "exit-when-file-created" => self.add(Event::FileCreated(absolute(key, value)?)),
            "exit-when-file-deleted" => self.add(Event::FileDeleted(absolute(key, value)?)),
            "exit-when-pipe-closed" | "exit-when-fd-closed" => {
                let fd = parse_unsigned(key, value, i32::MAX as u64)? as RawFd;
                self.add(Event::PipeClosed(fd));
            }
            "exit-when-process-exits" | "exit-when-pid-exits" => {
                let pid = parse_unsigned(key, value, i32::MAX as u64)? as i32;
                if pid == 0 {
                    return Err(Error::config(format!("{key}: PID must not be 0")));
                }
                let path = format!("/proc/{pid}/stat");
                let stat = File::open(&path).map_err(|e| Error::io(e, format!("{key}: {path}")))?;
                self.add(Event::ProcessExits(stat));
            }
            "exit-when-script" => self.add(Event::Script(value.to_string())),
            "exit-when-poll" => {
                let secs = parse_unsigned(key, value, u32::MAX as u64)?;
                if secs == 0 {
                    return Err(Error::config(format!(
                        "{key}: the polling interval must be at least 1 second"
                    )));
                }
                self.poll = Duration::from_secs(secs);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn dump_plugin(&self) -> Vec<String> {
        [
            "file_created",
            "file_deleted",
            "pipe_closed",
            "process_exits",
            "script",
        ]
        .iter()
        .map(|e| format!("exitwhen_{e}=yes"))
        .collect()
    }

    fn get_ready(&self) -> Result<()> {
        if self.shared.check() {
            crate::log::debug("exitwhen: an event has already happened: exiting");
        }
        Ok(())
    }

    fn after_fork(&self) -> Result<()> {
        if lock(&self.shared.events).is_empty() || self.shared.exiting.load(Ordering::SeqCst) {
            return Ok(());
        }
        let shared = self.shared.clone();
        let interval = self.poll;
        std::thread::Builder::new()
            .name("exitwhen".into())
            .spawn(move || {
                // quit::sleep fails once a prompt stop is requested.
                while quit::sleep(interval).is_ok() && !quit::draining() {
                    let idle = *lock(&shared.connections) == 0;
                    if idle && shared.check() {
                        crate::log::debug("exitwhen: shutdown from polling thread");
                        return;
                    }
                }
            })
            .map_err(|e| Error::io(e, "exitwhen: cannot start the polling thread"))?;
        Ok(())
    }

    fn preconnect(&self, next: &dyn Backend, readonly: bool, peer: &Peer) -> Result<()> {
        if self.shared.check() {
            return Err(Error::new(
                Errno::ESHUTDOWN,
                "exitwhen: nbdkit is exiting: rejecting new connection",
            ));
        }
        next.preconnect(readonly, peer)
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        let ctx = next.open(readonly, export, is_tls)?;
        *lock(&self.shared.connections) += 1;
        Ok(Box::new(Guarded(Open(self.shared.clone()), ctx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let mut f = ExitWhen::new();
        assert!(f.config("exit-when-poll", "5").unwrap());
        assert_eq!(f.poll, Duration::from_secs(5));
        assert!(f.config("exit-when-poll", "0").is_err());
        assert!(f.config("exit-when-poll", "-1").is_err());
        assert!(f.config("exit-when-pipe-closed", "x").is_err());
        assert!(f.config("exit-when-file-created", "").is_err());
        assert!(f.config("exit-when-process-exits", "0").is_err());
        assert!(!f.config("size", "1M").unwrap());
        assert!(f.config("exit-when-file-created", "rel/name").unwrap());
        let events = lock(&f.shared.events);
        assert!(matches!(&events[0], Event::FileCreated(p) if p.is_absolute()));
    }

    #[test]
    fn events() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        assert!(!Event::FileCreated(p.clone()).happened());
        assert!(Event::FileDeleted(p.clone()).happened());
        std::fs::write(&p, b"").unwrap();
        assert!(Event::FileCreated(p.clone()).happened());
        assert!(!Event::FileDeleted(p).happened());
        assert!(!Event::Script("exit 0".into()).happened());
        assert!(!Event::Script("exit 3".into()).happened());
        assert!(Event::Script("exit 88".into()).happened());
        let me = File::open("/proc/self/stat").unwrap();
        assert!(!process_exited(&me));
    }

    #[test]
    fn pipe_events() {
        // Close-on-exec: a child spawned by a test running at the same time
        // would otherwise hold the write end open.
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&r);
        assert!(!pipe_closed(fd));
        drop(w);
        assert!(pipe_closed(fd));
    }

    #[test]
    fn exited_child_is_detected() {
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let stat = File::open(format!("/proc/{}/stat", child.id())).unwrap();
        assert!(!process_exited(&stat));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(process_exited(&stat));
    }
}
