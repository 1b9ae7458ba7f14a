//! The `ip` filter: allow or deny clients by address, Unix peer
//! credentials, vsock address, security label or TLS client certificate.
//!
//! `allow=` and `deny=` take comma-separated rules and may be repeated.  A
//! client matching any allow rule is admitted; otherwise one matching any
//! deny rule is refused; otherwise it is admitted.  With neither parameter
//! the filter does nothing.  A client whose address family cannot be told
//! (neither TCP, Unix nor vsock) is refused whenever there are rules, as in
//! nbdkit ≥ 1.40.
//!
//! Normally clients are checked in `preconnect`, so a refused client sees
//! its connection closed before any NBD byte.  If any `dn:` or `issuer-dn:`
//! rule exists, all checking moves to `open` and `list_exports`, after TLS
//! (the certificate is only known then); until this server speaks TLS those
//! rules never match.

use crate::error::{Error, Result};
use crate::filter::{Filter, FilterContext};
use crate::layers::Backend;
use crate::parse::parse_unsigned;
use crate::plugin::ExportInfo;
use crate::server::peer::{self, Peer, PeerAddr};
use nix::errno::Errno;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One allow or deny rule.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Any,
    AnyIpv4,
    AnyIpv6,
    AnyUnix,
    AnyVsock,
    Ipv4(Ipv4Addr, u8),
    Ipv6(Ipv6Addr, u8),
    Pid(i32),
    Uid(u32),
    Gid(u32),
    VsockCid(u32),
    VsockPort(u32),
    Security(String),
    /// Shell wildcard on the client certificate's subject DN.
    Dn(String),
    /// Shell wildcard on the client certificate's issuer DN.
    IssuerDn(String),
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Any => write!(f, "any"),
            Rule::AnyIpv4 => write!(f, "anyipv4"),
            Rule::AnyIpv6 => write!(f, "anyipv6"),
            Rule::AnyUnix => write!(f, "anyunix"),
            Rule::AnyVsock => write!(f, "anyvsock"),
            Rule::Ipv4(a, n) => write!(f, "{a}/{n}"),
            Rule::Ipv6(a, n) => write!(f, "{a}/{n}"),
            Rule::Pid(v) => write!(f, "pid:{v}"),
            Rule::Uid(v) => write!(f, "uid:{v}"),
            Rule::Gid(v) => write!(f, "gid:{v}"),
            Rule::VsockCid(v) => write!(f, "vsock-cid:{v}"),
            Rule::VsockPort(v) => write!(f, "vsock-port:{v}"),
            Rule::Security(s) => write!(f, "security:{s}"),
            Rule::Dn(s) => write!(f, "dn:{s}"),
            Rule::IssuerDn(s) => write!(f, "issuer-dn:{s}"),
        }
    }
}

/// Do the first `prefix` bits of `a` and `b` agree?
fn same_prefix(a: u128, b: u128, bits: u32, prefix: u8) -> bool {
    let prefix = u32::from(prefix).min(bits);
    if prefix == 0 {
        return true;
    }
    let shift = bits - prefix;
    (a >> shift) == (b >> shift)
}

/// Shell-style wildcard match (`fnmatch(3)` without flags: `*`, `?`,
/// `[...]`, backslash escapes; `*` also matches `,` and `/`).
fn wildcard_match(pattern: &str, s: &str) -> bool {
    let (Ok(p), Ok(s)) = (std::ffi::CString::new(pattern), std::ffi::CString::new(s)) else {
        return false;
    };
    // SAFETY: both pointers are valid NUL-terminated strings that outlive
    // the call; fnmatch only reads them.
    unsafe { libc::fnmatch(p.as_ptr(), s.as_ptr(), 0) == 0 }
}

impl Rule {
    fn matches(&self, peer: &Peer) -> bool {
        let ip = match &peer.addr {
            PeerAddr::Inet(a) => Some(a.ip()),
            _ => None,
        };
        let creds = peer.creds;
        let tls = peer.tls_peer.as_ref();
        match self {
            Rule::Any => true,
            Rule::AnyIpv4 => matches!(ip, Some(IpAddr::V4(_))),
            Rule::AnyIpv6 => matches!(ip, Some(IpAddr::V6(_))),
            Rule::AnyUnix => peer.addr == PeerAddr::Unix,
            Rule::AnyVsock => matches!(peer.addr, PeerAddr::Vsock { .. }),
            Rule::Ipv4(a, n) => match ip {
                Some(IpAddr::V4(p)) => {
                    same_prefix(u32::from(*a).into(), u32::from(p).into(), 32, *n)
                }
                _ => false,
            },
            Rule::Ipv6(a, n) => match ip {
                Some(IpAddr::V6(p)) => same_prefix(u128::from(*a), u128::from(p), 128, *n),
                // Peers on IPv4-mapped addresses are seen as IPv4.
                Some(IpAddr::V4(p)) => {
                    same_prefix(u128::from(*a), u128::from(p.to_ipv6_mapped()), 128, *n)
                }
                None => false,
            },
            Rule::Pid(v) => creds.is_some_and(|c| c.pid == *v),
            Rule::Uid(v) => creds.is_some_and(|c| c.uid == *v),
            Rule::Gid(v) => creds.is_some_and(|c| c.gid == *v),
            Rule::VsockCid(v) => matches!(peer.addr, PeerAddr::Vsock { cid, .. } if cid == *v),
            Rule::VsockPort(v) => matches!(peer.addr, PeerAddr::Vsock { port, .. } if port == *v),
            Rule::Security(l) => peer.security_label.as_deref() == Some(l.as_str()),
            Rule::Dn(p) => tls.is_some_and(|t| wildcard_match(p, &t.subject_dn)),
            Rule::IssuerDn(p) => tls.is_some_and(|t| wildcard_match(p, &t.issuer_dn)),
        }
    }
}

/// Parse an `allow=`/`deny=` value into rules.
fn parse_rules(key: &str, value: &str) -> Result<Vec<Rule>> {
    // Distinguished names contain commas: such a value is one rule.
    if let Some(p) = value.strip_prefix("dn:") {
        return Ok(vec![Rule::Dn(p.to_string())]);
    }
    if let Some(p) = value.strip_prefix("issuer-dn:") {
        return Ok(vec![Rule::IssuerDn(p.to_string())]);
    }
    value.split(',').map(|e| parse_rule(key, e)).collect()
}

fn parse_rule(key: &str, entry: &str) -> Result<Rule> {
    let id = |what: &str, v: &str| -> Result<u64> {
        parse_unsigned(what, v, i32::MAX as u64)
            .map_err(|_| Error::config(format!("{what}: parameter out of range: {key}={entry}")))
    };
    let rule = match entry {
        "" => return Err(Error::config(format!("{key}: empty entry in rule list"))),
        "all" | "any" => Rule::Any,
        "allipv4" | "anyipv4" => Rule::AnyIpv4,
        "allipv6" | "anyipv6" => Rule::AnyIpv6,
        "allunix" | "anyunix" => Rule::AnyUnix,
        "allvsock" | "anyvsock" => Rule::AnyVsock,
        _ => {
            if let Some(v) = entry.strip_prefix("pid:") {
                Rule::Pid(id("pid", v)? as i32)
            } else if let Some(v) = entry.strip_prefix("uid:") {
                Rule::Uid(id("uid", v)? as u32)
            } else if let Some(v) = entry.strip_prefix("gid:") {
                Rule::Gid(id("gid", v)? as u32)
            } else if let Some(v) = entry.strip_prefix("vsock-cid:") {
                Rule::VsockCid(parse_unsigned("vsock-cid", v, u32::MAX.into())? as u32)
            } else if let Some(v) = entry.strip_prefix("vsock-port:") {
                Rule::VsockPort(parse_unsigned("vsock-port", v, u32::MAX.into())? as u32)
            } else if let Some(v) = entry.strip_prefix("security:") {
                Rule::Security(v.to_string())
            } else if entry.contains(':') || entry.contains('.') {
                parse_address(key, entry)?
            } else {
                return Err(Error::config(format!(
                    "don't know how to parse rule: {key}={entry}"
                )));
            }
        }
    };
    Ok(rule)
}

/// `A.B.C.D[/NN]` or an IPv6 address (RFC 5952 forms) with optional `/NN`.
fn parse_address(key: &str, entry: &str) -> Result<Rule> {
    let (addr, prefix) = match entry.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (entry, None),
    };
    let bad = || {
        Error::config(format!(
            "cannot parse address \"{addr}\" from {key}={entry}"
        ))
    };
    let ip: IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let n = match prefix {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => {
                return Err(Error::config(format!(
                    "{key}: cannot parse prefix length: {p}"
                )))
            }
        },
    };
    Ok(match ip {
        IpAddr::V4(a) => Rule::Ipv4(a, n),
        IpAddr::V6(a) => Rule::Ipv6(a, n),
    })
}

#[derive(Default)]
pub struct Ip {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    /// `-D ip.rules=1`: show the rules and each decision.
    debug_rules: bool,
}

impl Ip {
    pub fn new() -> Self {
        Self::default()
    }

    /// Is checking deferred to `open`/`list_exports` (after TLS)?
    fn late(&self) -> bool {
        self.allow
            .iter()
            .chain(&self.deny)
            .any(|r| matches!(r, Rule::Dn(_) | Rule::IssuerDn(_)))
    }

    fn first_match(&self, list: &str, rules: &[Rule], peer: &Peer) -> bool {
        let hit = rules.iter().find(|r| r.matches(peer));
        if self.debug_rules {
            crate::log::debug(format!(
                "ip: match source {} with {list}: {}",
                peer.describe(),
                match hit {
                    Some(r) => format!("{list}={r} => yes"),
                    None => "=> no".into(),
                }
            ));
        }
        hit.is_some()
    }

    fn allowed(&self, peer: &Peer) -> bool {
        if self.allow.is_empty() && self.deny.is_empty() {
            return true;
        }
        if matches!(peer.addr, PeerAddr::Other(_)) {
            return false;
        }
        self.first_match("allow", &self.allow, peer) || !self.first_match("deny", &self.deny, peer)
    }

    fn check(&self, peer: Option<&Peer>) -> Result<()> {
        let unknown = Peer::unknown();
        if self.allowed(peer.unwrap_or(&unknown)) {
            Ok(())
        } else {
            Err(Error::new(
                Errno::EPERM,
                "client not permitted to connect because of source address restriction",
            ))
        }
    }
}

impl Filter for Ip {
    fn name(&self) -> &'static str {
        "ip"
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit ip filter")
    }

    fn description(&self) -> &'static str {
        "Filter clients by IP address, process ID, user ID or group ID."
    }

    fn config_help(&self) -> &'static str {
        "allow=addr[,addr...]           Set allow list.\n\
         deny=addr[,addr...]            Set deny list."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "allow" => self.allow.extend(parse_rules(key, value)?),
            "deny" => self.deny.extend(parse_rules(key, value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn debug_flag(&mut self, flag: &str, value: &str) -> Result<bool> {
        if flag != "rules" {
            return Ok(false);
        }
        self.debug_rules = parse_unsigned("-D ip.rules", value, i32::MAX as u64)? != 0;
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.debug_rules {
            for (list, rules) in [("allow", &self.allow), ("deny", &self.deny)] {
                let shown: Vec<String> = rules.iter().map(|r| format!("{list}={r}")).collect();
                crate::log::debug(format!("ip: parsed {list}: {}", shown.join(" ")));
            }
        }
        Ok(())
    }

    fn preconnect(&self, next: &dyn Backend, readonly: bool, peer: &Peer) -> Result<()> {
        if !self.late() {
            self.check(Some(peer))?;
        }
        next.preconnect(readonly, peer)
    }

    fn list_exports(
        &self,
        next: &dyn Backend,
        readonly: bool,
        is_tls: bool,
    ) -> Result<Vec<ExportInfo>> {
        if self.late() {
            self.check(peer::current().as_ref())?;
        }
        next.list_exports(readonly, is_tls)
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        if self.late() {
            self.check(peer::current().as_ref())?;
        }
        Ok(Box::new(crate::filter::PassThrough(
            next.open(readonly, export, is_tls)?,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::peer::{TlsPeer, UnixCreds};
    use std::net::SocketAddr;

    fn tcp(s: &str) -> Peer {
        Peer {
            addr: PeerAddr::Inet(s.parse::<SocketAddr>().unwrap()),
            ..Peer::unknown()
        }
    }

    fn unix(pid: i32, uid: u32, gid: u32) -> Peer {
        Peer {
            addr: PeerAddr::Unix,
            creds: Some(UnixCreds { pid, uid, gid }),
            ..Peer::unknown()
        }
    }

    fn filter(params: &[(&str, &str)]) -> Ip {
        let mut f = Ip::new();
        for (k, v) in params {
            assert!(f.config(k, v).unwrap());
        }
        f
    }

    #[test]
    fn parses_every_rule_kind() {
        let r = parse_rules(
            "allow",
            "all,any,allipv4,anyipv6,anyunix,allvsock,10.0.0.0/8,::1,fe80::/10,pid:1,uid:2,gid:3,\
             vsock-cid:4,vsock-port:5,security:x",
        )
        .unwrap();
        assert_eq!(r.len(), 15);
        assert_eq!(r[6], Rule::Ipv4(Ipv4Addr::new(10, 0, 0, 0), 8));
        assert_eq!(r[7], Rule::Ipv6(Ipv6Addr::LOCALHOST, 128));
        assert_eq!(
            parse_rules("allow", "dn:*,O=Test,*").unwrap(),
            vec![Rule::Dn("*,O=Test,*".into())]
        );
        for bad in [
            "",
            "a,,b",
            "nonsense",
            "1.2.3",
            "1.2.3.4/33",
            "::1/129",
            "::1/x",
            "uid:x",
            "pid:-1",
            "10.0.0.0/",
        ] {
            assert!(
                parse_rules("allow", bad).is_err(),
                "{bad:?} should not parse"
            );
        }
    }

    #[test]
    fn decisions() {
        let v4 = tcp("127.0.0.1:5000");
        let v6 = tcp("[::1]:5000");
        let me = unix(100, 1000, 1000);
        assert!(filter(&[]).allowed(&Peer::unknown()));
        let f = filter(&[("allow", "allipv4,allipv6"), ("deny", "all")]);
        assert!(f.allowed(&v4) && f.allowed(&v6) && !f.allowed(&me));
        let f = filter(&[("allow", "127.0.0.0/8"), ("deny", "all")]);
        assert!(f.allowed(&v4) && !f.allowed(&v6) && !f.allowed(&tcp("10.1.1.1:1")));
        let f = filter(&[("allow", "::/127"), ("deny", "all")]);
        assert!(f.allowed(&v6) && !f.allowed(&v4));
        let f = filter(&[("deny", "::ffff:127.0.0.0/104")]);
        assert!(!f.allowed(&v4) && f.allowed(&v6));
        let f = filter(&[("allow", "uid:1000"), ("deny", "all")]);
        assert!(f.allowed(&me) && !f.allowed(&unix(1, 0, 1000)) && !f.allowed(&v4));
        let f = filter(&[("deny", "gid:1000")]);
        assert!(!f.allowed(&me) && f.allowed(&unix(1, 0, 0)));
        let f = filter(&[("deny", "pid:100")]);
        assert!(!f.allowed(&me) && f.allowed(&v4));
        // Allow only is no restriction at all.
        let f = filter(&[("allow", "10.0.0.1")]);
        assert!(f.allowed(&v4));
        // Unknown families are refused once there are rules.
        assert!(!f.allowed(&Peer::unknown()));
        let vs = Peer {
            addr: PeerAddr::Vsock { cid: 1, port: 99 },
            ..Peer::unknown()
        };
        assert!(!filter(&[("deny", "vsock-cid:1")]).allowed(&vs));
        assert!(filter(&[("deny", "vsock-port:1")]).allowed(&vs));
        assert!(!filter(&[("deny", "anyvsock")]).allowed(&vs));
    }

    #[test]
    fn distinguished_names() {
        let f = filter(&[("allow", "dn:*,O=Test,*,C=US"), ("deny", "all")]);
        assert!(f.late());
        let mut p = tcp("127.0.0.1:1");
        assert!(!f.allowed(&p), "without TLS a dn: rule never matches");
        p.tls_peer = Some(TlsPeer {
            subject_dn: "CN=client,O=Test,L=Here,C=US".into(),
            issuer_dn: "CN=ca,O=Test,C=US".into(),
        });
        assert!(f.allowed(&p));
        let f = filter(&[("allow", "dn:CN=foobar,*,C=US"), ("deny", "all")]);
        assert!(!f.allowed(&p));
        let f = filter(&[("allow", "issuer-dn:CN=ca,*"), ("deny", "all")]);
        assert!(f.allowed(&p));
        assert!(!filter(&[("deny", "all")]).late());
    }
}
