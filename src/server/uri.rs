//! The server's own NBD URI (for `--run`'s `$uri`, `--print-uri` and debug
//! output), and shell quoting for the `--run` preamble.  Pure functions.

use std::fmt::Write;

/// Where the server listens, as far as a URI is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// TCP: the port, if one was given or picked.
    Tcp(Option<u16>),
    /// A Unix socket path.
    Unix(String),
    /// AF_VSOCK: the port, if one was given.
    Vsock(Option<u32>),
}

/// Percent-encode everything but RFC 3986 unreserved characters and `/`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The URI in the NBD URI spec's preferred form:
/// `nbd+unix://?socket=PATH`, `nbd+unix:///NAME?socket=PATH`,
/// `nbd://localhost[:PORT][/NAME]`, `nbd+vsock://1[:PORT][/NAME]` (CID 1 is
/// the local machine).
pub fn make_uri(endpoint: &Endpoint, exportname: &str) -> String {
    let mut uri = String::new();
    match endpoint {
        Endpoint::Unix(path) => {
            uri.push_str("nbd+unix://");
            push_export(&mut uri, exportname);
            uri.push_str("?socket=");
            uri.push_str(&percent_encode(path));
        }
        Endpoint::Tcp(port) => {
            uri.push_str("nbd://localhost");
            if let Some(p) = port {
                let _ = write!(uri, ":{p}");
            }
            push_export(&mut uri, exportname);
        }
        Endpoint::Vsock(port) => {
            uri.push_str("nbd+vsock://1");
            if let Some(p) = port {
                let _ = write!(uri, ":{p}");
            }
            push_export(&mut uri, exportname);
        }
    }
    uri
}

fn push_export(uri: &mut String, exportname: &str) {
    if !exportname.is_empty() {
        uri.push('/');
        uri.push_str(&percent_encode(exportname));
    }
}

/// Quote `s` for `/bin/sh`: bare when it is made only of safe characters,
/// otherwise in single quotes.
pub fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-._=,:/+%@".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_uris() {
        let ep = Endpoint::Unix("/tmp/nbdkitAbc/socket".into());
        assert_eq!(
            make_uri(&ep, ""),
            "nbd+unix://?socket=/tmp/nbdkitAbc/socket"
        );
        assert_eq!(
            make_uri(&ep, "foo"),
            "nbd+unix:///foo?socket=/tmp/nbdkitAbc/socket"
        );
        assert_eq!(
            make_uri(&ep, "a b/c?d&e%"),
            "nbd+unix:///a%20b/c%3Fd%26e%25?socket=/tmp/nbdkitAbc/socket"
        );
        let ep = Endpoint::Unix("/tmp/work/my sock".into());
        assert_eq!(make_uri(&ep, ""), "nbd+unix://?socket=/tmp/work/my%20sock");
    }

    #[test]
    fn tcp_uris() {
        assert_eq!(
            make_uri(&Endpoint::Tcp(Some(10999)), ""),
            "nbd://localhost:10999"
        );
        assert_eq!(
            make_uri(&Endpoint::Tcp(Some(10999)), "foo"),
            "nbd://localhost:10999/foo"
        );
        assert_eq!(make_uri(&Endpoint::Tcp(None), ""), "nbd://localhost");
    }

    #[test]
    fn vsock_uris() {
        assert_eq!(
            make_uri(&Endpoint::Vsock(Some(4294967295)), ""),
            "nbd+vsock://1:4294967295"
        );
        assert_eq!(
            make_uri(&Endpoint::Vsock(None), "a b"),
            "nbd+vsock://1/a%20b"
        );
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
