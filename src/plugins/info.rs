//! The info plugin: `nbdkit info [mode=]MODE` serves facts about the
//! client and the server as a small read-only disk:
//!
//! - `exportname` (default): the export name the client asked for;
//! - `base64exportname`: the export name, base64-decoded;
//! - `address`: the client's address (`IP:PORT`, `[IPv6]:PORT`, `unix`);
//! - `time`, `uptime`, `conntime`: wallclock time, server uptime or time
//!   since the connection opened, as 8 bytes of big-endian seconds then
//!   4 bytes of big-endian microseconds, computed afresh on every read.
//!
//! Uptime and connection time use the monotonic clock, so unlike nbdkit's
//! they do not jump when the wallclock is set.

use crate::error::{Error, Result};
use crate::plugin::{Handle, Plugin};
use crate::server::peer::{self, PeerAddr};
use nix::errno::Errno;
use std::time::{Duration, Instant, SystemTime};

/// The `mode=` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    ExportName,
    Base64ExportName,
    Address,
    Time,
    Uptime,
    ConnTime,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        Some(match s.to_ascii_lowercase().as_str() {
            "exportname" | "export-name" => Mode::ExportName,
            "base64exportname" | "base64-export-name" => Mode::Base64ExportName,
            "address" => Mode::Address,
            "time" => Mode::Time,
            "uptime" => Mode::Uptime,
            "conntime" => Mode::ConnTime,
            _ => return None,
        })
    }
}

/// The info plugin.
#[derive(Debug)]
pub struct InfoPlugin {
    mode: Mode,
    mode_given: bool,
    started: Instant,
}

impl Default for InfoPlugin {
    fn default() -> Self {
        InfoPlugin {
            mode: Mode::default(),
            mode_given: false,
            started: Instant::now(),
        }
    }
}

impl InfoPlugin {
    /// An unconfigured info plugin (mode `exportname`).
    pub fn new() -> Self {
        InfoPlugin::default()
    }
}

/// Decode standard base64 (RFC 4648 alphabet; `=` padding optional).
pub fn base64_decode(s: &str) -> std::result::Result<Vec<u8>, String> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let body = s.trim_end_matches('=');
    if s.len() - body.len() > 2 || (s.len() != body.len() && !s.len().is_multiple_of(4)) {
        return Err("bad padding".into());
    }
    if body.len() % 4 == 1 {
        return Err("truncated input".into());
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    for (n, chunk) in body.as_bytes().chunks(4).enumerate() {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = value(c).ok_or_else(|| {
                format!("invalid character {:?} at offset {}", c as char, n * 4 + i)
            })?;
            acc |= v << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Ok(out)
}

/// The client's address as the `address` mode shows it.
fn address_string() -> Result<String> {
    let peer = peer::current()
        .ok_or_else(|| Error::new(Errno::ENOTSUP, "info: the client's address is unknown"))?;
    match peer.addr {
        PeerAddr::Inet(a) => Ok(a.to_string()),
        PeerAddr::Unix => Ok("unix".into()),
        PeerAddr::Vsock { cid, port } => Ok(format!("vsock:{cid}:{port}")),
        PeerAddr::Other(_) => Err(Error::new(
            Errno::ENOTSUP,
            "info: the client's address family is not supported",
        )),
    }
}

const CALLBACKS: &[&str] = &[
    "config",
    "config_help",
    "open",
    "get_size",
    "can_multi_conn",
    "can_cache",
    "pread",
];

impl Plugin for InfoPlugin {
    fn name(&self) -> &'static str {
        "info"
    }

    fn description(&self) -> &'static str {
        "info plugin: serve client and server information"
    }

    fn magic_config_key(&self) -> Option<&'static str> {
        Some("mode")
    }

    fn config_help(&self) -> &'static str {
        "mode=exportname|base64exportname|address|time|uptime|conntime\n\
         \x20                    Plugin mode (default exportname)."
    }

    fn callbacks(&self) -> &'static [&'static str] {
        CALLBACKS
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn dump_plugin(&self) -> Vec<String> {
        vec!["info_address=yes".into(), "info_base64=yes".into()]
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "mode" if self.mode_given => Err(Error::config(format!(
                "mode given more than once (second: {value})"
            ))),
            "mode" => {
                self.mode = Mode::parse(value).ok_or_else(|| {
                    Error::config(format!(
                        "unknown mode: '{value}' (expected exportname, base64exportname, \
                         address, time, uptime or conntime)"
                    ))
                })?;
                self.mode_given = true;
                Ok(())
            }
            _ => Err(Error::config(format!("unknown parameter '{key}'"))),
        }
    }

    fn open(&self, _readonly: bool, export_name: &str, _is_tls: bool) -> Result<Box<dyn Handle>> {
        let content = match self.mode {
            Mode::ExportName => Content::Fixed(export_name.as_bytes().to_vec()),
            Mode::Base64ExportName => {
                Content::Fixed(base64_decode(export_name).map_err(|why| {
                    Error::new(
                        Errno::EINVAL,
                        format!("info: the export name is not valid base64 ({why})"),
                    )
                })?)
            }
            Mode::Address => Content::Fixed(address_string()?.into_bytes()),
            Mode::Time => Content::Time(Clock::Wall),
            Mode::Uptime => Content::Time(Clock::Since(self.started)),
            Mode::ConnTime => Content::Time(Clock::Since(Instant::now())),
        };
        Ok(Box::new(InfoHandle { content }))
    }
}

/// Which time a time mode reports.
#[derive(Debug, Clone, Copy)]
enum Clock {
    Wall,
    Since(Instant),
}

#[derive(Debug)]
enum Content {
    Fixed(Vec<u8>),
    Time(Clock),
}

/// The 12-byte time record: seconds (be64) then microseconds (be32).
fn time_record(d: Duration) -> [u8; 12] {
    let mut r = [0u8; 12];
    r[..8].copy_from_slice(&d.as_secs().to_be_bytes());
    r[8..].copy_from_slice(&d.subsec_micros().to_be_bytes());
    r
}

/// One connection to the info disk.
#[derive(Debug)]
pub struct InfoHandle {
    content: Content,
}

impl Handle for InfoHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(match &self.content {
            Content::Fixed(v) => v.len() as u64,
            Content::Time(_) => 12,
        })
    }

    fn can_multi_conn(&self) -> Result<bool> {
        Ok(true)
    }

    fn pread(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let time;
        let data: &[u8] = match &self.content {
            Content::Fixed(v) => v,
            Content::Time(clock) => {
                let d = match clock {
                    Clock::Wall => SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default(),
                    Clock::Since(t) => t.elapsed(),
                };
                time = time_record(d);
                &time
            }
        };
        let start = offset as usize;
        let src = data
            .get(start..start + buf.len())
            .ok_or_else(|| Error::new(Errno::EIO, "read beyond the end of the disk"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("AP8A/w==").unwrap(), [0, 255, 0, 255]);
        assert_eq!(base64_decode("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
        assert!(base64_decode("a").is_err());
        assert!(base64_decode("aGVs*G8=").unwrap_err().contains("offset 4"));
        assert!(base64_decode("aGVsbG8===").is_err());
        assert!(base64_decode("aGVsbA=").is_err());
    }

    #[test]
    fn modes() {
        let mut p = InfoPlugin::new();
        assert!(p.config("mode", "bogus").is_err());
        p.config("mode", "base64exportname").unwrap();
        assert!(p.config("mode", "time").is_err());
        let h = p.open(true, "aGVsbG8=", false).unwrap();
        let mut b = [0u8; 5];
        h.pread(&mut b, 0).unwrap();
        assert_eq!(&b, b"hello");
        assert!(p.open(true, "!!", false).is_err());

        let mut p = InfoPlugin::new();
        p.config("mode", "conntime").unwrap();
        let h = p.open(true, "", false).unwrap();
        assert_eq!(h.get_size().unwrap(), 12);
        let mut t = [0u8; 12];
        h.pread(&mut t, 0).unwrap();
        assert!(u64::from_be_bytes(t[..8].try_into().unwrap()) < 60);
        assert!(u32::from_be_bytes(t[8..].try_into().unwrap()) < 1_000_000);
    }
}
