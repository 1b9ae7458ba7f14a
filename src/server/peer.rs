//! Who is on the other end of a connection: the peer's address, its Unix
//! credentials, its security label and (once TLS exists) its client
//! certificate's names.  What nbdkit's `nbdkit_peer_name`, `_pid`, `_uid`,
//! `_gid`, `_security_context`, `_tls_dn` and `_tls_issuer_dn` answer.
//!
//! The server learns this once per connection ([`Peer::of_fd`]) and makes it
//! the connection thread's [`current`] peer before calling `preconnect`, so
//! layers can look at it from `preconnect`, `list_exports`,
//! `default_export` and `open` (all run on the connection thread).

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};

/// The peer's socket address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddr {
    /// TCP over IPv4 or IPv6 (IPv4-mapped IPv6 addresses are shown as IPv4).
    Inet(SocketAddr),
    /// A Unix domain socket (socket file, socketpair, `-s`).
    Unix,
    /// `AF_VSOCK`.
    Vsock { cid: u32, port: u32 },
    /// Another address family (its number), or none could be read.
    Other(Option<i32>),
}

/// The peer process's credentials (Unix domain sockets, `SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixCreds {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// The subject and issuer distinguished names of a verified TLS client
/// certificate (RFC 4514 strings, as `gnutls_x509_crt_get_dn` prints them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPeer {
    pub subject_dn: String,
    pub issuer_dn: String,
}

/// Everything known about a connection's peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub addr: PeerAddr,
    /// `Some` for Unix domain sockets.
    pub creds: Option<UnixCreds>,
    /// The peer's security label (`SO_PEERSEC`), where the kernel has one.
    pub security_label: Option<String>,
    /// The client certificate, once a TLS session with a peer certificate
    /// is up: the TLS code fills this with [`set_tls_peer`] after the
    /// handshake, so `dn:`/`issuer-dn:` ip rules (checked at open) see it.
    pub tls_peer: Option<TlsPeer>,
}

impl Peer {
    /// A peer nothing is known about (`Other(None)`).
    pub fn unknown() -> Peer {
        Peer {
            addr: PeerAddr::Other(None),
            creds: None,
            security_label: None,
            tls_peer: None,
        }
    }

    /// Ask the kernel about the peer of the connected socket `fd` (any
    /// stream type: TCP, Unix, vsock).  What cannot be read stays unknown.
    pub fn of_fd(fd: BorrowedFd<'_>) -> Peer {
        use nix::sys::socket::{getsockopt, sockopt};
        let addr = match socket2::SockRef::from(&fd).peer_addr() {
            Ok(sa) => {
                if let Some(a) = sa.as_socket() {
                    let ip = match a.ip() {
                        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
                        v4 => v4,
                    };
                    PeerAddr::Inet(SocketAddr::new(ip, a.port()))
                } else if sa.is_unix() {
                    PeerAddr::Unix
                } else if let Some((cid, port)) = sa.as_vsock_address() {
                    PeerAddr::Vsock { cid, port }
                } else {
                    PeerAddr::Other(Some(i32::from(sa.family())))
                }
            }
            Err(_) => PeerAddr::Other(None),
        };
        let creds = match addr {
            PeerAddr::Unix => getsockopt(&fd, sockopt::PeerCredentials)
                .ok()
                .map(|c| UnixCreds {
                    pid: c.pid(),
                    uid: c.uid(),
                    gid: c.gid(),
                }),
            _ => None,
        };
        Peer {
            addr,
            creds,
            security_label: security_label(fd),
            tls_peer: None,
        }
    }

    /// A short description for debug messages.
    pub fn describe(&self) -> String {
        match (&self.addr, &self.creds) {
            (PeerAddr::Inet(a), _) => a.to_string(),
            (PeerAddr::Unix, Some(c)) => {
                format!("unix socket (pid {} uid {} gid {})", c.pid, c.uid, c.gid)
            }
            (PeerAddr::Unix, None) => "unix socket".into(),
            (PeerAddr::Vsock { cid, port }, _) => format!("vsock cid {cid} port {port}"),
            (PeerAddr::Other(Some(f)), _) => format!("address family {f}"),
            (PeerAddr::Other(None), _) => "unknown peer".into(),
        }
    }
}

/// `SO_PEERSEC`: the peer's LSM label, if the kernel has one for it.
fn security_label(fd: BorrowedFd<'_>) -> Option<String> {
    let mut buf = [0u8; 256];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` is valid for writes of `len` bytes and `len` points to
    // its size; the kernel writes at most that many bytes and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERSEC,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    let bytes = &buf[..(len as usize).min(buf.len())];
    let bytes = bytes.split(|&b| b == 0).next().unwrap_or_default();
    (!bytes.is_empty()).then(|| String::from_utf8_lossy(bytes).into_owned())
}

thread_local! {
    static CURRENT: RefCell<Option<Peer>> = const { RefCell::new(None) };
}

/// Make `peer` the current thread's connection peer (the server does this
/// on each connection thread before `preconnect`).
pub fn set_current(peer: Option<Peer>) {
    CURRENT.with(|c| *c.borrow_mut() = peer);
}

/// The peer of the connection this thread serves, if any.
pub fn current() -> Option<Peer> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Record the verified TLS client certificate of the current connection
/// (for the TLS code, after its handshake).
pub fn set_tls_peer(tls: TlsPeer) {
    CURRENT.with(|c| {
        if let Some(p) = c.borrow_mut().as_mut() {
            p.tls_peer = Some(tls);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn socketpair_peer_has_our_credentials() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let p = Peer::of_fd(a.as_fd());
        assert_eq!(p.addr, PeerAddr::Unix);
        let c = p.creds.expect("credentials");
        assert_eq!(c.pid as u32, std::process::id());
        assert_eq!(c.uid, nix::unistd::getuid().as_raw());
    }

    #[test]
    fn tcp_peer_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let p = Peer::of_fd(s.as_fd());
        assert_eq!(p.addr, PeerAddr::Inet(c.local_addr().unwrap()));
        assert!(p.creds.is_none());
    }

    #[test]
    fn current_peer_is_per_thread() {
        set_current(Some(Peer::unknown()));
        set_tls_peer(TlsPeer {
            subject_dn: "CN=a".into(),
            issuer_dn: "CN=b".into(),
        });
        assert_eq!(current().unwrap().tls_peer.unwrap().subject_dn, "CN=a");
        std::thread::spawn(|| assert!(current().is_none()))
            .join()
            .unwrap();
        set_current(None);
    }
}
