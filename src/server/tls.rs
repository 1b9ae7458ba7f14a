//! TLS: loading X.509 certificates or a pre-shared key file at startup,
//! upgrading a connection on `NBD_OPT_STARTTLS`, and the encrypted stream
//! the transmission phase then runs over.
//!
//! # One SSL object, two halves
//!
//! The transmission phase reads requests and writes replies from different
//! threads at the same time (one worker holds the read half while another
//! sends a reply), but an OpenSSL `SSL` object must not be used by two
//! threads at once.  The halves here share one `SslStream` behind a mutex,
//! and the socket underneath is switched to nonblocking mode once the
//! handshake is over.  Each half takes the mutex only for one `SSL_read` or
//! `SSL_write` call, which never waits for the network: when OpenSSL needs
//! more input (or room to send) it returns `WANT_READ` (`WANT_WRITE`), the
//! half drops the mutex and waits in `poll(2)` on its own duplicate of the
//! socket, then tries again.  So a worker waiting for the next request never
//! holds the lock a replying worker needs, and a reply stuck on a full socket
//! never stops requests from being read (which could deadlock against a
//! client that is itself blocked sending a large write).
//!
//! This is sound because, with renegotiation disabled and no session tickets
//! sent after the handshake, `SSL_read` consumes only socket input and
//! `SSL_write` only produces socket output: neither can steal the readiness
//! the other is waiting for.  `SSL_read` is always tried before polling, so
//! bytes OpenSSL has already buffered (read-ahead) are never missed.
//!
//! Payloads are not copied on our side, except that a reply header and the
//! first part of its data are gathered into one TLS record (at most 16 KiB).

use crate::cli::{Options, TlsMode};
use crate::error::{Error, Result};
use crate::server::listen::{Shared as SharedSocket, Stream};
use crate::server::lock;
use crate::server::transmission::{Reader, Writer};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use openssl::error::ErrorStack;
use openssl::nid::Nid;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslFiletype, SslMethod, SslMode, SslOptions,
    SslStream, SslVerifyMode, SslVersion,
};
use openssl::x509::store::X509Lookup;
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509NameRef, X509};
use std::cell::RefCell;
use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Largest TLS record payload: the most a reply header is gathered with.
const RECORD: usize = 16 * 1024;

/// nbdkit's certificate directory for root.
pub const ROOT_CERTIFICATES_DIR: &str = "/etc/pki/nbdkit";

/// Credentials loaded at startup, shared by every connection.
pub struct Tls {
    /// `--tls=require`: nothing but STARTTLS (or ABORT) before TLS.
    pub require: bool,
    ctx: SslContext,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("require", &self.require)
            .finish_non_exhaustive()
    }
}

/// Load TLS credentials as the options ask, in nbdkit's way: `--tls-psk`
/// wins over certificates; certificates come from `--tls-certificates` or
/// the default directories.  `Ok(None)` means TLS is off (asked for, or no
/// credentials found and TLS not required).
pub fn init(o: &Options) -> Result<Option<Arc<Tls>>> {
    let mode = o.tls.unwrap_or(TlsMode::On);
    if mode == TlsMode::Off {
        return Ok(None);
    }
    let require = mode == TlsMode::Require;
    let (ctx, what) = match &o.tls_psk {
        Some(file) => (psk_context(file)?, "Pre-Shared Keys (PSK)"),
        None => match find_certificates(o.tls_certificates.as_deref()) {
            Some(dir) => (x509_context(&dir, o.tls_verify_peer)?, "X.509 certificates"),
            None => {
                if require {
                    return Err(Error::config(
                        "--tls=require but could not load TLS certificates. Try setting \
                         '--tls-certificates=/path/to/certificates' or read the \"TLS\" section \
                         in nbdkit(1).",
                    ));
                }
                if o.tls == Some(TlsMode::On) {
                    crate::log::warning(
                        "--tls=on but could not load TLS certificates. TLS will be disabled and \
                         TLS connections will be rejected. Try setting \
                         '--tls-certificates=/path/to/certificates' or read the \"TLS\" section \
                         in nbdkit(1).",
                    );
                }
                crate::log::debug("TLS disabled: could not load TLS certificates");
                return Ok(None);
            }
        },
    };
    crate::log::debug(format!("TLS enabled using: {what}"));
    Ok(Some(Arc::new(Tls { require, ctx })))
}

/// The certificate directory to use: the one given, or nbdkit's defaults
/// (`$HOME/.pki/nbdkit`, `$HOME/.config/pki/nbdkit`; `/etc/pki/nbdkit` for
/// root).  A directory counts only if its three required files are readable.
fn find_certificates(given: Option<&str>) -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = match given {
        Some(d) => vec![PathBuf::from(d)],
        None if nix::unistd::geteuid().is_root() => vec![PathBuf::from(ROOT_CERTIFICATES_DIR)],
        None => match std::env::var_os("HOME") {
            Some(home) => {
                let home = PathBuf::from(home);
                vec![home.join(".pki/nbdkit"), home.join(".config/pki/nbdkit")]
            }
            None => Vec::new(),
        },
    };
    let readable = |p: &Path| nix::unistd::access(p, nix::unistd::AccessFlags::R_OK).is_ok();
    candidates.into_iter().find(|dir| {
        ["ca-cert.pem", "server-cert.pem", "server-key.pem"]
            .iter()
            .all(|f| readable(&dir.join(f)))
    })
}

/// Settings every context shares: TLS 1.2 or later, no renegotiation, no
/// session tickets, EOF without close_notify treated as EOF.
fn base_context() -> std::result::Result<SslContextBuilder, ErrorStack> {
    let mut b = SslContextBuilder::new(SslMethod::tls_server())?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    b.set_options(
        SslOptions::NO_RENEGOTIATION
            | SslOptions::NO_COMPRESSION
            | SslOptions::IGNORE_UNEXPECTED_EOF
            | SslOptions::CIPHER_SERVER_PREFERENCE,
    );
    b.set_mode(SslMode::ACCEPT_MOVING_WRITE_BUFFER);
    b.set_num_tickets(0)?;
    b.set_read_ahead(true);
    Ok(b)
}

fn ssl_error(what: impl fmt::Display, e: ErrorStack) -> Error {
    Error::config(format!("TLS: {what}: {}", reasons(&e)))
}

/// OpenSSL's reasons, without its source file names and line numbers.
fn reasons(e: &ErrorStack) -> String {
    let list: Vec<String> = e
        .errors()
        .iter()
        .map(|x| {
            x.reason()
                .map(str::to_string)
                .unwrap_or_else(|| x.to_string())
        })
        .collect();
    if list.is_empty() {
        "unknown error".to_string()
    } else {
        list.join(": ")
    }
}

fn x509_context(dir: &Path, verify_peer: bool) -> Result<SslContext> {
    let f = |name: &str| dir.join(name);
    let mut b = base_context().map_err(|e| ssl_error("creating context", e))?;
    let ca = f("ca-cert.pem");
    b.set_ca_file(&ca)
        .map_err(|e| ssl_error(format!("loading {}", ca.display()), e))?;
    let crl = f("ca-crl.pem");
    if nix::unistd::access(&crl, nix::unistd::AccessFlags::R_OK).is_ok() {
        let store = b.cert_store_mut();
        store
            .add_lookup(X509Lookup::file())
            .and_then(|l| l.load_crl_file(&crl, SslFiletype::PEM).map(|_| ()))
            .and_then(|()| store.set_flags(X509VerifyFlags::CRL_CHECK))
            .map_err(|e| ssl_error(format!("loading {}", crl.display()), e))?;
    }
    let (cert, key) = (f("server-cert.pem"), f("server-key.pem"));
    b.set_certificate_chain_file(&cert)
        .and_then(|()| b.set_private_key_file(&key, SslFiletype::PEM))
        .and_then(|()| b.check_private_key())
        .map_err(|e| {
            ssl_error(
                format!(
                    "loading server certificate and key ({}, {})",
                    cert.display(),
                    key.display()
                ),
                e,
            )
        })?;
    if verify_peer {
        let names =
            X509::stack_from_pem(&std::fs::read(&ca).map_err(|e| Error::io(e, ca.display()))?)
                .map_err(|e| ssl_error(format!("loading {}", ca.display()), e))?;
        let mut list = openssl::stack::Stack::new().map_err(|e| ssl_error("stack", e))?;
        for c in names {
            let name = c
                .subject_name()
                .to_owned()
                .map_err(|e| ssl_error("CA name", e))?;
            list.push(name).map_err(|e| ssl_error("CA name", e))?;
        }
        b.set_client_ca_list(list);
        b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    } else {
        b.set_verify(SslVerifyMode::NONE);
    }
    crate::log::debug(format!(
        "successfully loaded TLS certificates from {}",
        dir.display()
    ));
    Ok(b.build())
}

fn psk_context(file: &str) -> Result<SslContext> {
    // The file is read again at each handshake (so keys can be changed
    // without a restart), by absolute path since a daemon changes directory.
    let path = std::fs::canonicalize(file).map_err(|e| Error::io(e, file))?;
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(e, file))?;
    let keys = parse_psk_file(&text).map_err(|e| Error::config(format!("{file}: {e}")))?;
    if keys.is_empty() {
        return Err(Error::config(format!(
            "{file}: the PSK file holds no keys (expected username:hexkey lines, as psktool writes)"
        )));
    }
    let mut b = base_context().map_err(|e| ssl_error("creating context", e))?;
    // TLS 1.2 PSK suites (ECDHE first); in TLS 1.3 an external PSK needs a
    // SHA-256 suite.
    b.set_cipher_list("ECDHE-PSK:PSK:!aNULL:!eNULL")
        .and_then(|()| b.set_ciphersuites("TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256"))
        .map_err(|e| ssl_error("setting PSK ciphers", e))?;
    b.set_psk_server_callback(move |_ssl, identity, out| {
        let identity = String::from_utf8_lossy(identity.unwrap_or_default()).into_owned();
        let keys = match std::fs::read_to_string(&path) {
            Ok(t) => parse_psk_file(&t).unwrap_or_default(),
            Err(e) => {
                crate::log::error(format!("{}: {e}", path.display()));
                Vec::new()
            }
        };
        match keys.into_iter().find(|(user, _)| *user == identity) {
            Some((_, key)) if key.len() <= out.len() => {
                out[..key.len()].copy_from_slice(&key);
                crate::log::debug(format!("TLS PSK: username '{identity}'"));
                set_peer(|p| p.psk_identity = Some(identity));
                Ok(key.len())
            }
            _ => {
                crate::log::error(format!("TLS PSK: unknown username '{identity}'"));
                Ok(0)
            }
        }
    });
    Ok(b.build())
}

/// Parse a psktool key file: `username:hexkey` lines.
pub fn parse_psk_file(text: &str) -> std::result::Result<Vec<(String, Vec<u8>)>, String> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let bad = |what: &str| format!("line {}: {what}", n + 1);
        let (user, hex) = line
            .split_once(':')
            .ok_or_else(|| bad("expected username:hexkey"))?;
        if user.is_empty() {
            return Err(bad("empty username"));
        }
        keys.push((
            user.to_string(),
            decode_hex(hex).ok_or_else(|| bad("key is not hexadecimal"))?,
        ));
    }
    Ok(keys)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

// ---------------------------------------------------------------------------
// What the client proved, for this connection's plugins and filters.

/// What is known about the TLS peer of the current connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// Subject DN of the client certificate, RFC 4514 style (most specific
    /// first, e.g. `CN=alice,O=Example,C=US`), as GnuTLS and nbdkit give it.
    pub subject_dn: Option<String>,
    /// Issuer DN of the client certificate, in the same form.
    pub issuer_dn: Option<String>,
    /// The PSK username the client used.
    pub psk_identity: Option<String>,
}

thread_local! {
    /// Set on the connection's thread once its TLS handshake has completed;
    /// `.open`, `.list_exports` and `.default_export` run there.
    static PEER: RefCell<Option<Peer>> = const { RefCell::new(None) };
}

fn set_peer(f: impl FnOnce(&mut Peer)) {
    PEER.with(|p| f(p.borrow_mut().get_or_insert_with(Peer::default)));
}

/// Whether the current connection uses TLS (`nbdkit_is_tls`).
pub fn is_tls() -> bool {
    PEER.with(|p| p.borrow().is_some())
}

/// The TLS peer of the current connection, if it uses TLS.
pub fn peer() -> Option<Peer> {
    PEER.with(|p| p.borrow().clone())
}

/// Subject DN of the client certificate (`nbdkit_peer_tls_dn`).
pub fn peer_dn() -> Option<String> {
    peer().and_then(|p| p.subject_dn)
}

/// Issuer DN of the client certificate (`nbdkit_peer_tls_issuer_dn`).
pub fn peer_issuer_dn() -> Option<String> {
    peer().and_then(|p| p.issuer_dn)
}

/// Forget the TLS state of the connection that ran on this thread.
pub fn clear_peer() {
    PEER.with(|p| *p.borrow_mut() = None);
}

/// A distinguished name in RFC 4514 form: RDNs from last to first,
/// `TYPE=value` joined by `,`, with the special characters escaped.
pub fn format_dn(name: &X509NameRef) -> String {
    let entries: Vec<String> = name
        .entries()
        .map(|e| {
            let nid = e.object().nid();
            let key = match nid {
                Nid::PKCS9_EMAILADDRESS => "EMAIL".to_string(),
                Nid::UNDEF => e.object().to_string(),
                n => n
                    .short_name()
                    .map(str::to_string)
                    .unwrap_or_else(|_| e.object().to_string()),
            };
            let value = e.data().to_string().unwrap_or_default();
            format!("{key}={}", escape_dn_value(&value))
        })
        .collect();
    entries.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// RFC 4514 section 2.4 escaping of an attribute value.
pub fn escape_dn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        if c == '\0' {
            out.push_str("\\00");
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The upgrade and the encrypted halves.

impl Stream {
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
            Stream::Vsock(s) => s.set_nonblocking(on),
            // dup_fd has checked that both are the same socket.
            Stream::Stdio { input, .. } => socket2::SockRef::from(input).set_nonblocking(on),
        }
    }

    fn dup_fd(&self) -> io::Result<OwnedFd> {
        match self {
            Stream::Tcp(s) => s.as_fd().try_clone_to_owned(),
            Stream::Unix(s) => s.as_fd().try_clone_to_owned(),
            Stream::Vsock(s) => s.as_fd().try_clone_to_owned(),
            // The encrypted halves wait on one fd, so -s can use TLS when
            // stdin and stdout are one socket (inetd, socat, libnbd's
            // connect_command), not a pair of pipes or files.
            Stream::Stdio { input, output } => {
                let (i, o) = (
                    nix::sys::stat::fstat(input)?,
                    nix::sys::stat::fstat(output)?,
                );
                let socket = i.st_mode & libc::S_IFMT == libc::S_IFSOCK;
                if socket && (i.st_dev, i.st_ino) == (o.st_dev, o.st_ino) {
                    input.as_fd().try_clone_to_owned()
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "TLS with -s needs stdin and stdout to be the same socket",
                    ))
                }
            }
        }
    }
}

/// Run the TLS handshake on `socket` (after the STARTTLS reply was sent)
/// and replace the plaintext halves with encrypted ones.  On success the
/// connection's [`Peer`] is recorded for this thread.
pub fn upgrade(tls: &Tls, socket: SharedSocket, r: &mut Reader, w: &mut Writer) -> Result<()> {
    if !r.buffer().is_empty() {
        // Plaintext the client sent before the handshake must never be
        // taken for protected data.
        return Err(Error::config(
            "STARTTLS: client sent data before the TLS handshake",
        ));
    }
    crate::log::debug("starting TLS handshake");
    let fail = |msg: String| {
        crate::log::error(format!("TLS handshake: {msg}"));
        Error::config(format!("TLS handshake: {msg}"))
    };
    let fd = socket
        .stream()
        .dup_fd()
        .map_err(|e| Error::io(e, "TLS: dup"))?;
    let ssl = Ssl::new(&tls.ctx).map_err(|e| fail(e.to_string()))?;
    // Blocking socket: the handshake runs on this connection's thread alone.
    let stream = ssl.accept(socket).map_err(|e| {
        let detail = match &e {
            openssl::ssl::HandshakeError::Failure(m) => {
                let why = match m.error().ssl_error() {
                    Some(stack) => reasons(stack),
                    None => m.error().to_string(),
                };
                let verify = m.ssl().verify_result();
                if verify == openssl::x509::X509VerifyResult::OK {
                    why
                } else {
                    format!("{why} ({})", verify.error_string())
                }
            }
            openssl::ssl::HandshakeError::SetupFailure(e) => reasons(e),
            openssl::ssl::HandshakeError::WouldBlock(_) => "interrupted".to_string(),
        };
        clear_peer();
        fail(detail)
    })?;
    let ssl = stream.ssl();
    let mut peer = peer().unwrap_or_default();
    if let Some(cert) = ssl.peer_certificate() {
        peer.subject_dn = Some(format_dn(cert.subject_name()));
        peer.issuer_dn = Some(format_dn(cert.issuer_name()));
    }
    crate::log::debug(format!(
        "TLS handshake completed: {} {}{}",
        ssl.version_str(),
        ssl.current_cipher().map(|c| c.name()).unwrap_or("?"),
        match &peer.subject_dn {
            Some(dn) => format!(", client certificate {dn}"),
            None => String::new(),
        }
    ));
    if let (Some(subject_dn), Some(issuer_dn)) = (&peer.subject_dn, &peer.issuer_dn) {
        // For the ip filter's dn:/issuer-dn: rules.
        crate::server::peer::set_tls_peer(crate::server::peer::TlsPeer {
            subject_dn: subject_dn.clone(),
            issuer_dn: issuer_dn.clone(),
        });
    }
    PEER.with(|p| *p.borrow_mut() = Some(peer));
    stream
        .get_ref()
        .stream()
        .set_nonblocking(true)
        .map_err(|e| Error::io(e, "TLS: fcntl"))?;
    let shared = Arc::new(Shared {
        ssl: Mutex::new(stream),
        fd,
    });
    *r = Reader::new(Box::new(TlsReader(shared.clone())));
    *w = Box::new(TlsWriter(shared));
    Ok(())
}

/// The encrypted stream both halves use.
struct Shared {
    ssl: Mutex<SslStream<SharedSocket>>,
    /// A duplicate of the socket to wait on without holding `ssl`.
    fd: OwnedFd,
}

impl Shared {
    /// Run one nonblocking OpenSSL call under the lock; on WANT_READ or
    /// WANT_WRITE release the lock, wait for the socket, and retry.
    fn call(
        &self,
        mut op: impl FnMut(
            &mut SslStream<SharedSocket>,
        ) -> std::result::Result<usize, openssl::ssl::Error>,
    ) -> io::Result<usize> {
        loop {
            let result = op(&mut lock(&self.ssl));
            let e = match result {
                Ok(n) => return Ok(n),
                Err(e) => e,
            };
            let wait = match e.code() {
                ErrorCode::WANT_READ => PollFlags::POLLIN,
                ErrorCode::WANT_WRITE => PollFlags::POLLOUT,
                ErrorCode::ZERO_RETURN => return Ok(0),
                ErrorCode::SYSCALL => match e.into_io_error() {
                    Ok(io) if io.kind() == io::ErrorKind::Interrupted => continue,
                    Ok(io) => return Err(io),
                    // EOF without close_notify.
                    Err(_) => return Ok(0),
                },
                _ => {
                    return Err(io::Error::other(format!("TLS: {e}")));
                }
            };
            let mut fds = [PollFd::new(self.fd.as_fd(), wait)];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Say goodbye (close_notify) if the socket takes it right away.
        let _ = lock(&self.ssl).shutdown();
    }
}

struct TlsReader(Arc<Shared>);

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.call(|s| s.ssl_read(buf))
    }
}

struct TlsWriter(Arc<Shared>);

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // Without partial writes, SSL_write returns only once all of `buf`
        // is sent; after WANT_WRITE it is retried with the same bytes.
        self.0.call(|s| s.ssl_write(buf))
    }

    /// Gather a short first buffer (a reply header) with the start of the
    /// next ones into one record, instead of sending a tiny record of its
    /// own.  Only up to one record is copied.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut bufs = bufs.iter().filter(|b| !b.is_empty());
        let Some(first) = bufs.next() else {
            return Ok(0);
        };
        if first.len() >= RECORD {
            return self.write(first);
        }
        let mut scratch = [0u8; RECORD];
        scratch[..first.len()].copy_from_slice(first);
        let mut n = first.len();
        for b in bufs {
            let take = b.len().min(RECORD - n);
            scratch[n..n + take].copy_from_slice(&b[..take]);
            n += take;
            if n == RECORD {
                break;
            }
        }
        self.write(&scratch[..n])
    }

    fn flush(&mut self) -> io::Result<()> {
        // SSL_write hands each record to the kernel before returning.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psk_files_parse_like_psktool_writes_them() {
        let keys = parse_psk_file("alice:00ff10\nbob:ABCD\r\n\n").unwrap();
        assert_eq!(
            keys,
            vec![
                ("alice".to_string(), vec![0, 255, 16]),
                ("bob".to_string(), vec![0xab, 0xcd])
            ]
        );
        assert!(parse_psk_file("alice").is_err());
        assert!(parse_psk_file("alice:0").is_err());
        assert!(parse_psk_file("alice:zz").is_err());
        assert!(parse_psk_file(":00").is_err());
        assert_eq!(parse_psk_file("").unwrap(), vec![]);
    }

    #[test]
    fn dn_values_are_escaped_as_rfc_4514_says() {
        assert_eq!(escape_dn_value("alice"), "alice");
        assert_eq!(escape_dn_value("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape_dn_value(" #x "), "\\ #x\\ ");
        assert_eq!(escape_dn_value("#x"), "\\#x");
    }

    #[test]
    fn dns_list_the_most_specific_name_first() {
        let mut b = openssl::x509::X509NameBuilder::new().unwrap();
        b.append_entry_by_text("C", "US").unwrap();
        b.append_entry_by_text("O", "Test, Inc").unwrap();
        b.append_entry_by_text("CN", "alice").unwrap();
        b.append_entry_by_nid(Nid::PKCS9_EMAILADDRESS, "a@example.com")
            .unwrap();
        let name = b.build();
        assert_eq!(
            format_dn(&name),
            "EMAIL=a@example.com,CN=alice,O=Test\\, Inc,C=US"
        );
    }

    #[test]
    fn the_peer_is_per_thread() {
        clear_peer();
        assert!(!is_tls());
        set_peer(|p| p.subject_dn = Some("CN=x".into()));
        assert!(is_tls());
        assert_eq!(peer_dn().as_deref(), Some("CN=x"));
        std::thread::spawn(|| assert!(!is_tls())).join().unwrap();
        clear_peer();
        assert_eq!(peer_issuer_dn(), None);
    }
}
