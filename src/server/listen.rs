//! Listening sockets: TCP (every address, or `-i`), Unix (`-U PATH`, `-U -`),
//! AF_VSOCK (`--vsock`), and the accepted streams, including the one on
//! stdin/stdout for `-s`.
//!
//! Binding happens before the server forks or starts any thread, so that a
//! `--run` command, a pidfile reader or a client never sees a server that is
//! not yet listening.

use crate::cli::Family;
use crate::error::{Error, Result};
use nix::errno::Errno;
use socket2::{Domain, Socket, Type};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The default NBD port.
pub const DEFAULT_PORT: u16 = 10809;

/// One listening socket.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
    Vsock(Socket),
}

/// One accepted connection.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Vsock(Socket),
    /// `-s`: the client is on stdin and stdout, which may be one socket, a
    /// pair of pipes, or even a plain file holding the client's bytes.
    Stdio {
        input: File,
        output: File,
    },
}

/// The fd the connection reads from (and shuts down to stop reading).
impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
            Stream::Vsock(s) => s.as_fd(),
            Stream::Stdio { input, .. } => input.as_fd(),
        }
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).read(buf),
            Stream::Unix(s) => (&*s).read(buf),
            Stream::Vsock(s) => (&*s).read(buf),
            Stream::Stdio { input, .. } => (&*input).read(buf),
        }
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write(buf),
            Stream::Unix(s) => (&*s).write(buf),
            Stream::Vsock(s) => (&*s).write(buf),
            Stream::Stdio { output, .. } => (&*output).write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write_vectored(bufs),
            Stream::Unix(s) => (&*s).write_vectored(bufs),
            Stream::Vsock(s) => (&*s).write_vectored(bufs),
            Stream::Stdio { output, .. } => (&*output).write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One connection's socket, shared by the halves that read and write it,
/// by shutdown and by the `--timeout` timer: the connection costs one fd,
/// not one per user.
#[derive(Clone)]
pub struct Shared(pub Arc<Stream>);

impl Shared {
    pub fn new(stream: Stream) -> Self {
        Shared(Arc::new(stream))
    }

    pub fn stream(&self) -> &Stream {
        &self.0
    }
}

impl AsFd for Shared {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Read for Shared {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        (&*self.0).write_vectored(bufs)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Stream {
    /// Make an accepted stream ready for its connection thread (blocking,
    /// `SO_KEEPALIVE` on TCP if asked).
    pub fn prepare(&self, keepalive: bool) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_nonblocking(false)?;
                if keepalive {
                    socket2::SockRef::from(s).set_keepalive(true)?;
                }
            }
            Stream::Unix(s) => {
                s.set_nonblocking(false)?;
                widen_send_buffer(s.as_fd());
            }
            Stream::Vsock(s) => s.set_nonblocking(false)?,
            // inetd and libnbd's connect_command hand us a socket.
            Stream::Stdio { output, .. } => widen_send_buffer(output.as_fd()),
        }
        Ok(())
    }
}

/// Send buffer asked for on Unix-domain connections (the kernel doubles it
/// and caps it at `net.core.wmem_max`).
const UNIX_SEND_BUFFER: usize = 2 << 20;

/// Let a whole large read reply sit in a Unix socket's send buffer.  The
/// default (about 200 KiB) made a worker sending a 1 MiB reply block and
/// wake half a dozen times while the client drained it; this raised
/// sequential 1 MiB reads by about 40%.  TCP is left to its own tuning
/// (setting the size would turn that off).  Not a socket, or refused: no
/// harm, the default stays.
fn widen_send_buffer(fd: BorrowedFd<'_>) {
    let sock = socket2::SockRef::from(&fd);
    if matches!(sock.domain(), Ok(d) if d == socket2::Domain::UNIX) {
        if let Err(e) = sock.set_send_buffer_size(UNIX_SEND_BUFFER) {
            crate::log::debug(format!("SO_SNDBUF: {e}"));
        }
    }
}

impl Listener {
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l) => l.as_fd(),
            Listener::Vsock(l) => l.as_fd(),
        }
    }

    /// Accept one connection (blocking unless the socket is nonblocking).
    pub fn accept(&self) -> std::io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Listener::Unix(l) => Ok(Stream::Unix(l.accept()?.0)),
            Listener::Vsock(l) => Ok(Stream::Vsock(l.accept()?.0)),
        }
    }

    pub fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(on),
            Listener::Unix(l) => l.set_nonblocking(on),
            Listener::Vsock(l) => l.set_nonblocking(on),
        }
    }

    /// A description for debug messages.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => format!("tcp {a}"),
                Err(_) => "tcp ?".into(),
            },
            Listener::Unix(l) => match l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_path_buf))
            {
                Some(p) => format!("unix {}", p.display()),
                None => "unix ?".into(),
            },
            Listener::Vsock(l) => match l.local_addr().ok().and_then(|a| a.as_vsock_address()) {
                Some((_, port)) => format!("vsock port {port}"),
                None => "vsock ?".into(),
            },
        }
    }
}

/// Parse a `-p` value: a decimal TCP port (0 picks a free one).
pub fn parse_port(s: &str) -> Result<u16> {
    s.parse::<u16>()
        .map_err(|_| Error::config(format!("-p: invalid port number '{s}' (expecting 0-65535)")))
}

/// Bind TCP listeners on `ipaddr` (or every address) at `port`.  With port 0
/// the first socket picks a free port and the others use the same one.
pub fn bind_tcp(ipaddr: Option<&str>, port: u16, family: Family) -> Result<Vec<Listener>> {
    let mut addrs: Vec<SocketAddr> = match ipaddr {
        None => vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
        ],
        Some(host) => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            (host, port)
                .to_socket_addrs()
                .map_err(|e| Error::config(format!("getaddrinfo: {host}: {port}: {e}")))?
                .collect()
        }
    };
    addrs.retain(|a| match family {
        Family::Any => true,
        Family::V4 => a.is_ipv4(),
        Family::V6 => a.is_ipv6(),
    });
    addrs.dedup();
    if addrs.is_empty() {
        return Err(Error::config(format!(
            "{}: no address of the requested family",
            ipaddr.unwrap_or("<any>")
        )));
    }
    let mut listeners = Vec::new();
    let mut chosen_port = port;
    let mut last_err = None;
    for mut addr in addrs {
        addr.set_port(chosen_port);
        match bind_one_tcp(addr) {
            Ok(l) => {
                if chosen_port == 0 {
                    chosen_port = l.local_addr().map(|a| a.port()).unwrap_or(0);
                }
                crate::log::debug(format!("bound to {addr}"));
                listeners.push(Listener::Tcp(l));
            }
            Err(e)
                if matches!(
                    e.errno(),
                    Errno::EADDRINUSE | Errno::EAFNOSUPPORT | Errno::EADDRNOTAVAIL
                ) =>
            {
                crate::log::debug(format!("bind {addr}: {} (ignored)", e.message()));
                last_err = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    if listeners.is_empty() {
        let e = last_err.expect("at least one address was tried");
        return Err(Error::new(
            e.errno(),
            format!("unable to bind to any TCP/IP sockets: {}", e.message()),
        ));
    }
    Ok(listeners)
}

fn bind_one_tcp(addr: SocketAddr) -> Result<TcpListener> {
    let ctx = |e: std::io::Error| Error::io(e, format!("bind {addr}"));
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(ctx)?;
    sock.set_reuse_address(true).map_err(ctx)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true).map_err(ctx)?;
    }
    sock.bind(&addr.into()).map_err(ctx)?;
    sock.listen(libc::SOMAXCONN).map_err(ctx)?;
    Ok(sock.into())
}

/// Bind a Unix-domain listener at `path`.  A socket left behind by a server
/// that is gone (connecting to it is refused) is replaced; a live one, or
/// anything that is not a socket, is left alone and the bind fails.
pub fn bind_unix(path: &Path) -> Result<Listener> {
    // sun_path holds 108 bytes including the terminating NUL.
    if path.as_os_str().len() >= 108 {
        return Err(Error::config(format!(
            "{}: Unix domain socket path too long",
            path.display()
        )));
    }
    let l = match UnixListener::bind(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && is_stale_socket(path) => {
            crate::log::debug(format!(
                "{}: removing a stale socket (nothing listens on it)",
                path.display()
            ));
            std::fs::remove_file(path).map_err(|e| Error::io(e, path.display()))?;
            UnixListener::bind(path)
        }
        other => other,
    }
    .map_err(|e| Error::io(e, path.display()))?;
    crate::log::debug(format!("bound to unix socket {}", path.display()));
    Ok(Listener::Unix(l))
}

/// Is `path` a socket that nobody listens on any more?
fn is_stale_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    is_socket
        && matches!(UnixStream::connect(path),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// `VMADDR_CID_ANY`: listen on every context ID of this machine.
const VMADDR_CID_ANY: u32 = u32::MAX;

/// Parse a `--vsock` port: any 32-bit number.
pub fn parse_vsock_port(s: &str) -> Result<u32> {
    s.parse::<u32>().map_err(|_| {
        Error::config(format!(
            "-p: invalid vsock port number '{s}' (expecting 0-4294967295)"
        ))
    })
}

/// Bind an AF_VSOCK listener on every CID at `port`.
pub fn bind_vsock(port: u32) -> Result<Listener> {
    let ctx = |e: std::io::Error| Error::io(e, format!("bind vsock port {port}"));
    let sock = Socket::new(Domain::VSOCK, Type::STREAM, None)
        .map_err(|e| Error::io(e, "socket: AF_VSOCK (is the vsock kernel module loaded?)"))?;
    sock.bind(&socket2::SockAddr::vsock(VMADDR_CID_ANY, port))
        .map_err(ctx)?;
    sock.listen(libc::SOMAXCONN).map_err(ctx)?;
    crate::log::debug(format!("bound to vsock port {port}"));
    Ok(Listener::Vsock(sock))
}

/// Turn a socket inherited from a service manager into a listener of the
/// right kind; anything that is not a listening stream socket is refused.
pub fn adopt(fd: OwnedFd) -> Result<Listener> {
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let sock = Socket::from(fd);
    let what = |e: std::io::Error| Error::io(e, format!("socket activation: fd {raw}"));
    let listening =
        sock.r#type().map_err(what)? == Type::STREAM && sock.is_listener().map_err(what)?;
    if !listening {
        return Err(Error::config(format!(
            "socket activation: fd {raw} is not a listening stream socket"
        )));
    }
    let domain = sock.domain().map_err(what)?;
    Ok(if domain == Domain::UNIX {
        Listener::Unix(UnixListener::from(OwnedFd::from(sock)))
    } else if domain == Domain::IPV4 || domain == Domain::IPV6 {
        Listener::Tcp(TcpListener::from(sock))
    } else if domain == Domain::VSOCK {
        Listener::Vsock(sock)
    } else {
        return Err(Error::config(format!(
            "socket activation: fd {raw} has an unsupported address family"
        )));
    })
}

/// A private directory `/tmp/nbdkitXXXXXX` for `-U -`, removed on drop.
pub struct PrivateDir {
    dir: PathBuf,
}

impl PrivateDir {
    pub fn create() -> Result<Self> {
        let dir = nix::unistd::mkdtemp("/tmp/nbdkitXXXXXX")
            .map_err(|e| Error::os(e, "mkdtemp: /tmp/nbdkitXXXXXX"))?;
        Ok(PrivateDir { dir })
    }

    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("socket")
    }

    /// Remove the directory and its socket now (also done on drop).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(self.socket_path());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adopts_listening_sockets_by_family() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(matches!(adopt(tcp.into()), Ok(Listener::Tcp(_))));
        let dir = tempfile::tempdir().unwrap();
        let unix = UnixListener::bind(dir.path().join("s")).unwrap();
        assert!(matches!(adopt(unix.into()), Ok(Listener::Unix(_))));
        // Bound but not listening, a datagram socket, a plain file.
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        assert!(adopt(sock.into()).is_err());
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(adopt(udp.into()).is_err());
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(adopt(file.into()).is_err());
    }

    #[test]
    fn stale_sockets_are_replaced_live_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        drop(UnixListener::bind(&path).unwrap());
        assert!(is_stale_socket(&path));
        let live = bind_unix(&path).unwrap();
        assert!(!is_stale_socket(&path));
        assert!(bind_unix(&path).is_err());
        drop(live);
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(!is_stale_socket(&file));
    }

    #[test]
    fn vsock_ports_are_32_bit() {
        assert_eq!(parse_vsock_port("4294967295").unwrap(), u32::MAX);
        assert!(parse_vsock_port("4294967296").is_err());
        assert!(parse_vsock_port("-1").is_err());
    }
}
