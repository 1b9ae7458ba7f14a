//! The server: listeners, connections, handshake state, request dispatch
//! and shutdown, kept apart from the plugins and filters it drives.
//!
//! - [`listen`]: binding TCP, Unix and vsock sockets;
//! - [`activation`]: sockets passed by systemd (`LISTEN_FDS`);
//! - [`single`]: `-s`, one connection on stdin/stdout;
//! - [`connection`]: one client from accept to close;
//! - [`timeout`]: `--timeout`, the handshake deadline;
//! - [`negotiate`]: option negotiation;
//! - [`export`]: an opened export and its cached capabilities;
//! - [`transmission`]: requests and replies, with parallel workers;
//! - [`quit`]: the single shutdown mechanism;
//! - [`threads`]: the process-wide budget for client threads;
//! - [`peer`]: who is connected (address, credentials);
//! - [`fork`]: forking the serving process off with a readiness pipe;
//! - [`captive`], [`uri`]: `--run` and the server's URI;
//! - [`privs`], [`notify`]: `-u`/`-g`, and sd_notify readiness;
//! - [`tls`]: TLS credentials, STARTTLS and the encrypted stream.

pub mod activation;
pub mod budget;
pub mod captive;
pub mod connection;
pub mod export;
pub mod fork;
pub mod listen;
pub mod negotiate;
pub mod notify;
pub mod peer;
pub mod privs;
pub mod quit;
pub mod recv;
pub mod single;
pub mod threads;
pub mod timeout;
pub mod tls;
pub mod transmission;
pub mod uri;

use crate::error::{Error, Result};
use crate::layers::Stack;
use crate::plugin::ThreadModel;
use listen::{Listener, Stream};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Lock `m`, carrying on if a thread panicked while holding it (the data
/// guarded here stays consistent: maps of fds, or `()` for serialization).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Hold the thread model's request lock, if there is one.
pub fn hold(request_lock: Option<&Mutex<()>>) -> Option<MutexGuard<'_, ()>> {
    request_lock.map(lock)
}

/// Everything connections share.
pub struct Server {
    pub stack: Stack,
    pub handshake: negotiate::HandshakeConfig,
    pub thread_model: ThreadModel,
    /// Workers per connection for parallel plugins (`-t`).
    pub threads: usize,
    /// Set SO_KEEPALIVE on accepted TCP connections (`--keepalive`).
    pub keepalive: bool,
    /// How long a client may take to negotiate (`--timeout`).
    pub timeout: Option<std::time::Duration>,
}

/// How long a prompt stop waits for in-flight replies before it closes the
/// connections' write sides as well.
pub(crate) const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// The live connections, so shutdown can wake and wait for them.
#[derive(Default)]
struct Registry {
    live: Mutex<HashMap<u64, listen::Shared>>,
    idle: Condvar,
}

impl Registry {
    fn add(&self, id: u64, socket: listen::Shared) {
        lock(&self.live).insert(id, socket);
    }

    fn remove(&self, id: u64) {
        let mut live = lock(&self.live);
        live.remove(&id);
        if live.is_empty() {
            self.idle.notify_all();
            quit::wake_drain();
        }
    }

    /// Stop reading from every connection: clients waiting between requests
    /// see their connection closed once in-flight requests are answered.
    fn shut_down_all(&self, how: nix::sys::socket::Shutdown) {
        let live = lock(&self.live);
        for socket in live.values() {
            let fd = std::os::fd::AsFd::as_fd(socket);
            let _ = nix::sys::socket::shutdown(std::os::fd::AsRawFd::as_raw_fd(&fd), how);
        }
    }

    /// A graceful stop: wait until the last connection has closed, or a
    /// prompt stop is requested.
    fn drain(&self) -> Result<()> {
        loop {
            quit::clear_drain_wakeups();
            if quit::requested() || lock(&self.live).is_empty() {
                return Ok(());
            }
            let mut fds = [
                PollFd::new(quit::fd(), PollFlags::POLLIN),
                PollFd::new(quit::drain_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(Error::os(e, "poll")),
            }
        }
    }

    /// Wait until every connection has closed, or `limit` has passed;
    /// `true` when none is left.
    fn wait_idle(&self, limit: Option<std::time::Duration>) -> bool {
        let deadline = limit.map(|l| std::time::Instant::now() + l);
        let mut live = lock(&self.live);
        while !live.is_empty() {
            live = match deadline {
                None => self.idle.wait(live).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.idle
                        .wait_timeout(live, left)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0)
                }
            };
        }
        true
    }
}

/// Accept connections on `listeners` until a stop is requested.  After a
/// graceful stop, wait for open connections to close by themselves; after a
/// prompt one (or a prompt one during the wait), stop reading from open
/// connections and wait for them to finish.
pub fn serve(server: Arc<Server>, listeners: Vec<Listener>) -> Result<()> {
    for l in &listeners {
        l.set_nonblocking(true).map_err(|e| Error::io(e, "fcntl"))?;
        crate::log::debug(format!("listening on {}", l.describe()));
    }
    let registry = Arc::new(Registry::default());
    let next_id = AtomicU64::new(1);
    let mut backoff = AcceptBackoff::default();
    while !quit::requested() && !quit::draining() {
        let mut fds: Vec<PollFd> = Vec::with_capacity(listeners.len() + 2);
        fds.push(PollFd::new(quit::fd(), PollFlags::POLLIN));
        fds.push(PollFd::new(quit::drain_fd(), PollFlags::POLLIN));
        // While accepting is paused the listeners are left out, so a
        // pending connection cannot spin the loop; the pause is the timeout.
        let paused = backoff.pause();
        if paused.is_none() {
            for l in &listeners {
                fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
            }
        }
        let timeout = match paused {
            Some(d) => PollTimeout::try_from(d).unwrap_or(PollTimeout::MAX),
            None => PollTimeout::NONE,
        };
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::os(e, "poll")),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        if ready[0] {
            break;
        }
        if ready[1] {
            // A drain request (re-checked by the loop condition), or a
            // connection closing, which is no reason to stop.
            quit::clear_drain_wakeups();
            continue;
        }
        // After a pause, every listener is tried again.
        let try_all = paused.is_some();
        let ready = ready.get(2..).unwrap_or(&[]);
        for (i, l) in listeners.iter().enumerate() {
            if !try_all && !ready.get(i).copied().unwrap_or(false) {
                continue;
            }
            loop {
                match l.accept() {
                    Ok(stream) => {
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        // Setting a connection up takes more descriptors;
                        // running out there is the same shortage.
                        if let Err(e) = start_connection(&server, &registry, id, stream) {
                            backoff.failed(&e);
                            break;
                        }
                        backoff.succeeded();
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) if AcceptBackoff::is_resource_shortage(&e) => {
                        backoff.failed(&e);
                        break;
                    }
                    Err(e) => {
                        crate::log::error(format!("accept: {e}"));
                        break;
                    }
                }
            }
            if backoff.armed {
                break;
            }
        }
    }
    notify::stopping();
    drop(listeners);
    if !quit::requested() {
        crate::log::debug("exiting when the last connection closes: no new connections");
        registry.drain()?;
    }
    crate::log::debug("shutting down: no new connections");
    registry.shut_down_all(nix::sys::socket::Shutdown::Read);
    // In-flight requests get a moment to send their replies; a worker
    // still stuck after that is writing to a client that stopped reading,
    // so close the write side too, which fails its write.
    if !registry.wait_idle(Some(SHUTDOWN_GRACE)) {
        crate::log::debug("shutting down: closing connections still writing");
        registry.shut_down_all(nix::sys::socket::Shutdown::Both);
        registry.wait_idle(None);
    }
    Ok(())
}

/// Pausing `accept` when the process or the system is out of file
/// descriptors (or memory): a pending connection stays readable, so
/// retrying at once would spin at full CPU and log without end.  Each
/// failure in a row doubles the pause, from 10 ms up to 1 s.  A shortage is
/// logged when it starts, and at most once every 10 s however often it
/// comes and goes.
#[derive(Debug, Default)]
struct AcceptBackoff {
    delay: Option<std::time::Duration>,
    /// The pause is due (set by a failure, cleared when the wait is over).
    armed: bool,
    logged: Option<std::time::Instant>,
}

impl AcceptBackoff {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(10);
    const MAX: std::time::Duration = std::time::Duration::from_secs(1);
    const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    fn is_resource_shortage(e: &std::io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        )
    }

    /// How long to wait before accepting again, if a pause is due; taking
    /// it disarms it (the next accept attempt decides what follows).
    fn pause(&mut self) -> Option<std::time::Duration> {
        if std::mem::take(&mut self.armed) {
            self.delay
        } else {
            None
        }
    }

    fn failed(&mut self, e: &std::io::Error) {
        let next = match self.delay {
            None => {
                if self.logged.is_none_or(|t| t.elapsed() >= Self::LOG_EVERY) {
                    self.logged = Some(std::time::Instant::now());
                    crate::log::error(format!(
                        "accept: {e}: not accepting new connections until one can be opened"
                    ));
                }
                Self::FIRST
            }
            Some(d) => (d * 2).min(Self::MAX),
        };
        self.delay = Some(next);
        self.armed = true;
    }

    fn succeeded(&mut self) {
        if self.delay.take().is_some() {
            crate::log::debug("accept: accepting new connections again");
        }
        self.armed = false;
    }
}

/// Set up and start one accepted connection.  A shortage of descriptors
/// or memory is returned (the connection is dropped, and accepting
/// pauses); any other failure is logged here.
fn start_connection(
    server: &Arc<Server>,
    registry: &Arc<Registry>,
    id: u64,
    stream: Stream,
) -> std::io::Result<()> {
    match stream.prepare(server.keepalive) {
        Ok(()) => {}
        Err(e) if AcceptBackoff::is_resource_shortage(&e) => return Err(e),
        Err(e) => {
            crate::log::error(format!("connection {id}: {e}"));
            return Ok(());
        }
    };
    let socket = listen::Shared::new(stream);
    let halves = connection::split(&socket);
    let peer = peer::Peer::of_fd(std::os::fd::AsFd::as_fd(&socket));
    let Some(permit) = threads::reserve() else {
        crate::log::error(format!(
            "connection {id}: refused: too many threads ({} in use)",
            threads::live()
        ));
        return Ok(());
    };
    registry.add(id, socket.clone());
    let name = format!("{}[{id}]", server.stack.plugin.name());
    let server = server.clone();
    let reg = registry.clone();
    let spawned = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let _permit = permit;
            crate::log::set_thread_context(Some(name));
            crate::log::debug(format!("accepted connection from {}", peer.describe()));
            peer::set_current(Some(peer));
            if server.timeout.is_some() {
                timeout::arm(server.timeout, socket.clone());
            }
            connection::handle(&server, halves.0, halves.1, socket);
            crate::log::debug("connection closed");
            reg.remove(id);
        });
    if let Err(e) = spawned {
        crate::log::error(format!("cannot start connection thread: {e}"));
        registry.remove(id);
    }
    Ok(())
}
