//! The server's own NBD URI (for `--run`'s `$uri`, `--print-uri` and debug
//! output), and shell quoting for the `--run` preamble.  Pure functions.

use std::fmt::Write;
use std::os::unix::ffi::OsStrExt;

/// Where the server listens, as far as a URI is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// TCP: the port, if one was given or picked.
    Tcp(Option<u16>),
    /// A Unix socket path (any bytes).
    Unix(std::path::PathBuf),
    /// AF_VSOCK: the port, if one was given.
    Vsock(Option<u32>),
}

/// Percent-encode everything but RFC 3986 unreserved characters and `/`.
pub fn percent_encode(s: &str) -> String {
    percent_encode_bytes(s.as_bytes())
}

/// [`percent_encode`] for any bytes (a socket path need not be UTF-8).
pub fn percent_encode_bytes(s: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// What a URI says about TLS.  Only `--tls=require` shows: it makes the
/// scheme `nbds…` and names the credentials the client needs (libnbd reads
/// `tls-certificates=` and `tls-psk-file=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriTls<'a> {
    /// TLS is off or optional: a plain `nbd…` URI.
    Off,
    /// TLS is required, with credentials from a default place.
    Required,
    /// TLS is required; `--tls-certificates` names this directory.
    Certificates(&'a str),
    /// TLS is required; `--tls-psk` names this key file.
    PskFile(&'a str),
}

/// The URI in the NBD URI spec's preferred form:
/// `nbd+unix://?socket=PATH`, `nbd+unix:///NAME?socket=PATH`,
/// `nbd://localhost[:PORT][/NAME]`, `nbd+vsock://1[:PORT][/NAME]` (CID 1 is
/// the local machine), or with TLS required
/// `nbds+unix://?socket=PATH&tls-certificates=DIR`,
/// `nbds://localhost[:PORT][/NAME]?tls-psk-file=FILE` and so on.
pub fn make_uri(endpoint: &Endpoint, exportname: &[u8], tls: UriTls<'_>) -> String {
    let s = if tls == UriTls::Off { "" } else { "s" };
    let mut uri = String::new();
    let mut sep = '?';
    match endpoint {
        Endpoint::Unix(path) => {
            let _ = write!(uri, "nbd{s}+unix://");
            push_export(&mut uri, exportname);
            uri.push_str("?socket=");
            uri.push_str(&percent_encode_bytes(path.as_os_str().as_bytes()));
            sep = '&';
        }
        Endpoint::Tcp(port) => {
            let _ = write!(uri, "nbd{s}://localhost");
            if let Some(p) = port {
                let _ = write!(uri, ":{p}");
            }
            push_export(&mut uri, exportname);
        }
        Endpoint::Vsock(port) => {
            let _ = write!(uri, "nbd{s}+vsock://1");
            if let Some(p) = port {
                let _ = write!(uri, ":{p}");
            }
            push_export(&mut uri, exportname);
        }
    }
    let query = match tls {
        UriTls::Certificates(dir) => Some(("tls-certificates", dir)),
        UriTls::PskFile(file) => Some(("tls-psk-file", file)),
        UriTls::Off | UriTls::Required => None,
    };
    if let Some((key, value)) = query {
        let _ = write!(uri, "{sep}{key}={}", percent_encode(value));
    }
    uri
}

fn push_export(uri: &mut String, exportname: &[u8]) {
    if !exportname.is_empty() {
        uri.push('/');
        uri.push_str(&percent_encode_bytes(exportname));
    }
}

/// Quote `s` for `/bin/sh` as nbdkit does (so `--print-uri` prints the
/// same lines): bare when it is made only of letters, digits and `.-_=,:/`,
/// otherwise in double quotes with `$`, `` ` ``, `\` and `"` escaped.
pub fn shell_quote(s: &str) -> String {
    // Quoting only adds ASCII around and inside UTF-8 input.
    String::from_utf8(shell_quote_bytes(s.as_bytes())).unwrap_or_default()
}

/// [`shell_quote`] for any bytes: bytes that are not ASCII are passed
/// through inside the quotes, as the shell reads them.
pub fn shell_quote_bytes(s: &[u8]) -> Vec<u8> {
    let safe = |c: u8| c.is_ascii_alphanumeric() || b".-_=,:/".contains(&c);
    if !s.is_empty() && s.iter().all(|&c| safe(c)) {
        return s.to_vec();
    }
    let mut out = Vec::with_capacity(s.len() + 2);
    out.push(b'"');
    for &c in s {
        if matches!(c, b'$' | b'`' | b'\\' | b'"') {
            out.push(b'\\');
        }
        out.push(c);
    }
    out.push(b'"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_uris() {
        let ep = Endpoint::Unix("/tmp/nbdkitAbc/socket".into());
        assert_eq!(
            make_uri(&ep, b"", UriTls::Off),
            "nbd+unix://?socket=/tmp/nbdkitAbc/socket"
        );
        assert_eq!(
            make_uri(&ep, b"foo", UriTls::Off),
            "nbd+unix:///foo?socket=/tmp/nbdkitAbc/socket"
        );
        assert_eq!(
            make_uri(&ep, b"a b/c?d&e%", UriTls::Off),
            "nbd+unix:///a%20b/c%3Fd%26e%25?socket=/tmp/nbdkitAbc/socket"
        );
        let ep = Endpoint::Unix("/tmp/work/my sock".into());
        assert_eq!(
            make_uri(&ep, b"", UriTls::Off),
            "nbd+unix://?socket=/tmp/work/my%20sock"
        );
        // Any bytes: a path that is not UTF-8 is percent-encoded as is.
        let ep = Endpoint::Unix(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(
            b"/tmp/\xff\xfe/s",
        )));
        assert_eq!(
            make_uri(&ep, b"", UriTls::Off),
            "nbd+unix://?socket=/tmp/%FF%FE/s"
        );
        assert_eq!(shell_quote_bytes(b"/tmp/\xff"), b"\"/tmp/\xff\"".to_vec());
    }

    #[test]
    fn tcp_uris() {
        assert_eq!(
            make_uri(&Endpoint::Tcp(Some(10999)), b"", UriTls::Off),
            "nbd://localhost:10999"
        );
        assert_eq!(
            make_uri(&Endpoint::Tcp(Some(10999)), b"foo", UriTls::Off),
            "nbd://localhost:10999/foo"
        );
        assert_eq!(
            make_uri(&Endpoint::Tcp(None), b"", UriTls::Off),
            "nbd://localhost"
        );
    }

    #[test]
    fn tls_uris() {
        let unix = Endpoint::Unix("/tmp/s".into());
        assert_eq!(
            make_uri(&unix, b"", UriTls::Certificates("/my pki")),
            "nbds+unix://?socket=/tmp/s&tls-certificates=/my%20pki"
        );
        assert_eq!(
            make_uri(&unix, b"d", UriTls::PskFile("keys.psk")),
            "nbds+unix:///d?socket=/tmp/s&tls-psk-file=keys.psk"
        );
        assert_eq!(
            make_uri(&Endpoint::Tcp(Some(10999)), b"d", UriTls::PskFile("/k")),
            "nbds://localhost:10999/d?tls-psk-file=/k"
        );
        assert_eq!(
            make_uri(&Endpoint::Tcp(None), b"", UriTls::Required),
            "nbds://localhost"
        );
    }

    #[test]
    fn vsock_uris() {
        assert_eq!(
            make_uri(&Endpoint::Vsock(Some(4294967295)), b"", UriTls::Off),
            "nbd+vsock://1:4294967295"
        );
        assert_eq!(
            make_uri(&Endpoint::Vsock(None), b"a b", UriTls::Off),
            "nbd+vsock://1/a%20b"
        );
    }

    #[test]
    fn quoting_is_nbdkits() {
        assert_eq!(
            shell_quote("nbd://localhost:10809"),
            "nbd://localhost:10809"
        );
        assert_eq!(
            shell_quote("nbd+unix://?socket=/tmp/s"),
            "\"nbd+unix://?socket=/tmp/s\""
        );
        assert_eq!(shell_quote("a$b`c\\d\"e'f"), "\"a\\$b\\`c\\\\d\\\"e'f\"");
        assert_eq!(shell_quote(""), "\"\"");
    }

    #[test]
    fn quoting_round_trips_through_sh() {
        for s in [
            "",
            "plain",
            "it's $x",
            "a b\"c\\d`e",
            "nbd+unix://?socket=/x",
            "\n",
        ] {
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(format!("v={}; printf %s \"$v\"", shell_quote(s)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
        }
    }
}
