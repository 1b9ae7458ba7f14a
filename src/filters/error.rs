//! The `error` filter: fail a configurable share of requests with a chosen
//! errno, to test how clients cope with errors.
//!
//! Every data call (pread, pwrite, trim, zero, extents, cache) has its own
//! settings: which error (`error-CALL=`), how often (`error-CALL-rate=`), and
//! a trigger file (`error-CALL-file=`) that must exist for errors to be
//! injected, so a test can switch faults on and off at run time.  `error=`,
//! `error-rate=` and `error-file=` set all calls at once.

use crate::error::{Error, Result};
use crate::extents::Extents;
use crate::filter::{Filter, FilterContext};
use crate::layers::{Backend, Context};
use nix::errno::Errno;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The errors a client can be sent (those the NBD protocol carries).
const ERRORS: &[(&str, Errno)] = &[
    ("EPERM", Errno::EPERM),
    ("EIO", Errno::EIO),
    ("ENOMEM", Errno::ENOMEM),
    ("EINVAL", Errno::EINVAL),
    ("ENOSPC", Errno::ENOSPC),
    ("ESHUTDOWN", Errno::ESHUTDOWN),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Call {
    Pread,
    Pwrite,
    Trim,
    Zero,
    Extents,
    Cache,
}

const CALLS: [(Call, &str); 6] = [
    (Call::Pread, "pread"),
    (Call::Pwrite, "pwrite"),
    (Call::Trim, "trim"),
    (Call::Zero, "zero"),
    (Call::Extents, "extents"),
    (Call::Cache, "cache"),
];

#[derive(Clone, Debug)]
struct Settings {
    error: Errno,
    /// 0.0 never, 1.0 always.
    rate: f64,
    file: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            error: Errno::EIO,
            rate: 0.0,
            file: None,
        }
    }
}

struct Shared {
    settings: [Settings; 6],
    /// splitmix64 state, shared lock-free by all connections.
    rng: AtomicU64,
}

impl Shared {
    fn random(&self) -> f64 {
        let mut z = self
            .rng
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `Err` with the configured errno if this call should fail now.
    fn check(&self, call: Call) -> Result<()> {
        let s = &self.settings[call as usize];
        if s.rate <= 0.0 {
            return Ok(());
        }
        if let Some(f) = &s.file {
            if !f.exists() {
                return Ok(());
            }
        }
        if s.rate < 1.0 && self.random() >= s.rate {
            return Ok(());
        }
        let name = ERRORS
            .iter()
            .find(|(_, e)| *e == s.error)
            .map_or("EIO", |(n, _)| n);
        let fname = CALLS[call as usize].1;
        // The server logs the failed request with this message.
        Err(Error::new(
            s.error,
            format!("injecting {name} error into {fname}"),
        ))
    }
}

fn parse_error(key: &str, value: &str) -> Result<Errno> {
    ERRORS
        .iter()
        .find(|(n, _)| *n == value)
        .map(|(_, e)| *e)
        .ok_or_else(|| Error::config(format!("{key}: unknown error name '{value}'")))
}

/// `N%`, a probability `0..1`, or a ratio `A:B`.
fn parse_rate(key: &str, value: &str) -> Result<f64> {
    let bad = || Error::config(format!("{key}: could not parse rate '{value}'"));
    let v = value.trim();
    let d = if let Some(p) = v.strip_suffix('%') {
        p.trim().parse::<f64>().map_err(|_| bad())? / 100.0
    } else if let Some((a, b)) = v.split_once(':') {
        let a: f64 = a.trim().parse().map_err(|_| bad())?;
        let b: f64 = b.trim().parse().map_err(|_| bad())?;
        if b == 0.0 {
            return Err(bad());
        }
        a / b
    } else {
        v.parse::<f64>().map_err(|_| bad())?
    };
    if !(0.0..=1.0).contains(&d) {
        return Err(Error::config(format!(
            "{key}: rate out of range: '{value}' parsed as {d}"
        )));
    }
    Ok(d)
}

fn absolute(value: &str) -> Result<PathBuf> {
    if value.is_empty() {
        return Err(Error::config("error-file: the file name must not be empty"));
    }
    let p = PathBuf::from(value);
    if p.is_absolute() {
        return Ok(p);
    }
    let cwd = std::env::current_dir().map_err(|e| Error::io(e, "getcwd"))?;
    Ok(cwd.join(p))
}

pub struct ErrorFilter {
    settings: [Settings; 6],
    shared: Arc<Shared>,
}

impl ErrorFilter {
    pub fn new() -> Self {
        ErrorFilter {
            settings: Default::default(),
            shared: Arc::new(Shared {
                settings: Default::default(),
                rng: AtomicU64::new(0),
            }),
        }
    }
}

impl Default for ErrorFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl Filter for ErrorFilter {
    fn name(&self) -> &'static str {
        "error"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit error filter")
    }

    fn description(&self) -> &'static str {
        "Inject errors into requests."
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn config_help(&self) -> &'static str {
        "error=EPERM|EIO|ENOMEM|EINVAL|ENOSPC|ESHUTDOWN\n\
         \x20                              The error indication to return.\n\
         error-rate=0%..100%|0..1|N:M   Rate of errors to generate.\n\
         error-file=TRIGGER             Set trigger filename.\n\
         error-pread*, error-pwrite*, error-trim*, error-zero*, error-extents*, error-cache*\n\
         \x20                              Apply settings only to read/write/etc"
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let Some(rest) = key.strip_prefix("error") else {
            return Ok(false);
        };
        // "", "-rate", "-file", or "-CALL", "-CALL-rate", "-CALL-file".
        let (which, what) = {
            let mut which: Option<usize> = None;
            let mut what = rest;
            for (i, (_, name)) in CALLS.iter().enumerate() {
                if let Some(r) = rest.strip_prefix('-').and_then(|r| r.strip_prefix(name)) {
                    if r.is_empty() || r == "-rate" || r == "-file" {
                        which = Some(i);
                        what = r;
                        break;
                    }
                }
            }
            (which, what)
        };
        let targets: Vec<usize> = match which {
            Some(i) => vec![i],
            None => (0..CALLS.len()).collect(),
        };
        match what {
            "" => {
                let e = parse_error(key, value)?;
                targets.iter().for_each(|&i| self.settings[i].error = e);
            }
            "-rate" => {
                let r = parse_rate(key, value)?;
                targets.iter().for_each(|&i| self.settings[i].rate = r);
            }
            "-file" => {
                let p = absolute(value)?;
                targets
                    .iter()
                    .for_each(|&i| self.settings[i].file = Some(p.clone()));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id()).rotate_left(32);
        self.shared = Arc::new(Shared {
            settings: self.settings.clone(),
            rng: AtomicU64::new(seed),
        });
        Ok(())
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        Ok(Box::new(ErrorContext {
            next: next.open(readonly, export, is_tls)?,
            shared: self.shared.clone(),
        }))
    }
}

struct ErrorContext {
    next: Box<dyn Context>,
    shared: Arc<Shared>,
}

impl FilterContext for ErrorContext {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn pread(&self, buf: &mut [u8], offset: u64, f: u32) -> Result<()> {
        self.shared.check(Call::Pread)?;
        self.next.pread(buf, offset, f)
    }

    fn pwrite(&self, buf: &[u8], offset: u64, f: u32) -> Result<()> {
        self.shared.check(Call::Pwrite)?;
        self.next.pwrite(buf, offset, f)
    }

    fn trim(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        self.shared.check(Call::Trim)?;
        self.next.trim(count, offset, f)
    }

    fn zero(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        self.shared.check(Call::Zero)?;
        self.next.zero(count, offset, f)
    }

    fn extents(&self, extents: &mut Extents, f: u32) -> Result<()> {
        self.shared.check(Call::Extents)?;
        self.next.extents(extents, f)
    }

    fn cache(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        self.shared.check(Call::Cache)?;
        self.next.cache(count, offset, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("r", "10%").unwrap(), 0.1);
        assert_eq!(parse_rate("r", "0.25").unwrap(), 0.25);
        assert_eq!(parse_rate("r", "1:4").unwrap(), 0.25);
        assert!(parse_rate("r", "150%").is_err());
        assert!(parse_rate("r", "-0.1").is_err());
        assert!(parse_rate("r", "often").is_err());
        assert!(parse_rate("r", "1:0").is_err());
    }

    #[test]
    fn keys() {
        let mut f = ErrorFilter::new();
        assert!(f.config("error", "ENOSPC").unwrap());
        assert!(f.config("error-pread", "EPERM").unwrap());
        assert!(f.config("error-zero-rate", "100%").unwrap());
        assert!(f.config("error-cache-file", "/tmp/t").unwrap());
        assert!(f.config("error", "ENOENT").is_err());
        assert!(!f.config("error-bogus", "1").unwrap());
        assert!(!f.config("size", "1").unwrap());
        assert_eq!(f.settings[Call::Pread as usize].error, Errno::EPERM);
        assert_eq!(f.settings[Call::Pwrite as usize].error, Errno::ENOSPC);
        assert_eq!(f.settings[Call::Zero as usize].rate, 1.0);
        assert_eq!(f.settings[Call::Trim as usize].rate, 0.0);
        assert!(f.settings[Call::Cache as usize].file.is_some());
        assert!(f.settings[Call::Pread as usize].file.is_none());
    }

    #[test]
    fn random_is_uniform_enough() {
        let s = Shared {
            settings: Default::default(),
            rng: AtomicU64::new(42),
        };
        let n = 10_000;
        let below = (0..n).filter(|_| s.random() < 0.3).count();
        assert!((2700..3300).contains(&below), "{below}");
    }
}
