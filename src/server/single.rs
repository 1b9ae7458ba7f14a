//! `-s` (inetd style): serve exactly one connection on stdin/stdout, then
//! exit.
//!
//! stdin and stdout are usually one socket (inetd, xinetd, `socat EXEC:`,
//! libnbd's `connect_command`), but may be pipes or even a plain file holding
//! a client's bytes, so the connection only ever uses read(2) and write(2).
//! [`take_stdio`] keeps private copies of fds 0 and 1 before the server
//! points them at /dev/null (plugins must not read the client's bytes); the
//! connection then runs in the calling thread.  A stop request shuts down
//! reading on the client socket, as for listened-on connections; a reply
//! still being written after the grace period gets both sides shut down,
//! and a write stuck on a full pipe ends the process a second later.

use crate::error::{Error, Result};
use crate::server::listen::{Shared, Stream};
use crate::server::{connection, peer, quit, timeout, Server};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set when the connection has ended: from then on the stop watcher leaves
/// the process to finish (plugins' cleanup) on its own.
static DONE: AtomicBool = AtomicBool::new(false);

/// Keep close-on-exec copies of stdin and stdout for the connection.
pub fn take_stdio() -> Result<Stream> {
    let copy = |fd: BorrowedFd<'_>, what: &str| -> Result<File> {
        fd.try_clone_to_owned()
            .map(File::from)
            .map_err(|e| Error::io(e, format!("-s: cannot use {what}")))
    };
    Ok(Stream::Stdio {
        input: copy(std::io::stdin().as_fd(), "stdin")?,
        output: copy(std::io::stdout().as_fd(), "stdout")?,
    })
}

/// Serve the one connection to its end.
pub fn serve(server: &Server, stream: Stream) -> Result<()> {
    stream
        .prepare(server.keepalive)
        .map_err(|e| Error::io(e, "-s"))?;
    let socket = Shared::new(stream);
    let input = socket.clone();
    let peer = peer::Peer::of_fd(socket.as_fd());
    let (reader, writer) = connection::split(&socket);
    // Wake a connection waiting for the client's next request when asked to
    // stop.  The thread is left behind when the connection ends first: the
    // process is about to exit.
    let _ = std::thread::Builder::new()
        .name("single-quit".into())
        .spawn(move || {
            use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
            loop {
                let mut fds = [PollFd::new(quit::fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::NONE) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    _ => break,
                }
            }
            let _ = nix::sys::socket::shutdown(
                input.as_fd().as_raw_fd(),
                nix::sys::socket::Shutdown::Read,
            );
            // A reply still being written after the grace period is going
            // to a client that stopped reading: close the write side too
            // (stdout may be a socket of its own), which fails the write.
            std::thread::sleep(crate::server::SHUTDOWN_GRACE);
            if DONE.load(Ordering::Acquire) {
                return;
            }
            crate::log::debug("shutting down: closing the connection still writing");
            let output = match input.stream() {
                Stream::Stdio { output, .. } => output.as_fd().as_raw_fd(),
                other => other.as_fd().as_raw_fd(),
            };
            for fd in [input.as_fd().as_raw_fd(), output] {
                let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
            }
            // Pipes and files cannot be shut down: a write blocked on a full
            // pipe would hold the process forever.  Give up on it.
            std::thread::sleep(std::time::Duration::from_secs(1));
            if DONE.load(Ordering::Acquire) {
                return;
            }
            crate::log::error("the client is not reading its replies: exiting");
            std::process::exit(0);
        });
    let name = format!("{}[1]", server.stack.plugin.name());
    crate::log::set_thread_context(Some(name));
    crate::log::debug(format!(
        "serving one connection on stdin/stdout from {}",
        peer.describe()
    ));
    peer::set_current(Some(peer));
    timeout::arm(server.timeout, socket.clone());
    connection::handle(server, reader, writer, socket);
    DONE.store(true, Ordering::Release);
    crate::log::debug("connection closed");
    crate::log::set_thread_context(None);
    Ok(())
}
