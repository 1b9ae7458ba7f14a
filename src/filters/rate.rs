//! The `rate` filter: limit read and write bandwidth, in bits per second,
//! for the whole server (`rate=`) and per connection (`connection-rate=`),
//! with rates that can be changed at run time through files.
//!
//! It works as nbdkit's: a token bucket per direction for the server and per
//! connection, holding up to `burstiness=` seconds of tokens (default 2) and
//! starting full, so a client may burst that much after a quiet period.  A
//! request takes 8 tokens per byte from the server bucket, then from its
//! connection's; when a bucket runs dry the request sleeps for as long as
//! the missing tokens take to arrive, then tries again.

use crate::error::{Error, Result};
use crate::filter::{Filter, FilterContext};
use crate::layers::{Backend, Context};
use crate::parse::parse_size;
use crate::server::{lock, quit};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A token bucket (tokens are bits).
#[derive(Debug)]
struct Bucket {
    /// Tokens per second; 0 means no limit.
    rate: u64,
    /// Capacity in seconds of `rate`.
    capacity_secs: f64,
    capacity: u64,
    level: u64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u64, capacity_secs: f64) -> Self {
        let capacity = (rate as f64 * capacity_secs) as u64;
        Bucket {
            rate,
            capacity_secs,
            capacity,
            level: capacity,
            last: Instant::now(),
        }
    }

    /// Change the rate; returns the old one.
    fn adjust(&mut self, rate: u64) -> u64 {
        let old = self.rate;
        self.rate = rate;
        self.capacity = (rate as f64 * self.capacity_secs) as u64;
        self.level = self.level.min(self.capacity);
        old
    }

    /// Take `n` tokens at time `now`: 0 if they were there, else the tokens
    /// still missing and how long to sleep before trying again.
    fn run(&mut self, n: u64, now: Instant) -> (u64, Duration) {
        if self.rate == 0 {
            return (0, Duration::ZERO);
        }
        let usec = now.saturating_duration_since(self.last).as_micros();
        let add = (u128::from(self.rate) * usec / 1_000_000).min(u128::from(u64::MAX)) as u64;
        self.level += add.min(self.capacity - self.level);
        self.last = now;
        if self.level >= n {
            self.level -= n;
            return (0, Duration::ZERO);
        }
        let missing = n - self.level;
        self.level = 0;
        let nsec = u128::from(missing) * 1_000_000_000 / u128::from(self.rate);
        (
            missing,
            Duration::from_nanos(nsec.min(u128::from(u64::MAX)) as u64),
        )
    }
}

/// Wait until `count` bytes' worth of tokens have been taken from `bucket`.
fn wait(bucket: &Mutex<Bucket>, count: usize) -> Result<()> {
    let mut bits = count as u64 * 8;
    while bits > 0 {
        let (left, sleep) = lock(bucket).run(bits, Instant::now());
        bits = left;
        if bits > 0 {
            quit::sleep(sleep)?;
        }
    }
    Ok(())
}

/// Re-read a rate file, if there is one and it exists, and apply it.
fn adjust_from(file: Option<&PathBuf>, bucket: &Mutex<Bucket>) {
    let Some(path) = file else { return };
    // A missing or unreadable file is not an error: the rate stays.
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let line = text.lines().next().unwrap_or("").trim();
    let Ok(rate) = parse_size(line) else {
        crate::log::debug(format!(
            "rate: {}: could not parse rate {line:?}",
            path.display()
        ));
        return;
    };
    let old = lock(bucket).adjust(rate);
    if old != rate {
        crate::log::debug(format!("rate adjusted from {old} to {rate}"));
    }
}

struct Shared {
    connection_rate: u64,
    burstiness: f64,
    rate_file: Option<PathBuf>,
    connection_rate_file: Option<PathBuf>,
    read: Mutex<Bucket>,
    write: Mutex<Bucket>,
}

pub struct Rate {
    rate: u64,
    connection_rate: u64,
    rate_file: Option<PathBuf>,
    connection_rate_file: Option<PathBuf>,
    burstiness: f64,
    shared: Arc<Shared>,
}

impl Rate {
    pub fn new() -> Self {
        Rate {
            rate: 0,
            connection_rate: 0,
            rate_file: None,
            connection_rate_file: None,
            burstiness: 2.0,
            shared: Arc::new(Shared {
                connection_rate: 0,
                burstiness: 2.0,
                rate_file: None,
                connection_rate_file: None,
                read: Mutex::new(Bucket::new(0, 2.0)),
                write: Mutex::new(Bucket::new(0, 2.0)),
            }),
        }
    }
}

impl Default for Rate {
    fn default() -> Self {
        Self::new()
    }
}

fn parse_rate(key: &str, value: &str, old: u64) -> Result<u64> {
    if old > 0 {
        return Err(Error::config(format!(
            "{key} set twice on the command line"
        )));
    }
    let r = parse_size(value).map_err(|e| Error::config(format!("{key}: {}", e.message())))?;
    if r == 0 {
        return Err(Error::config(format!("{key} cannot be set to 0")));
    }
    Ok(r)
}

fn absolute(key: &str, value: &str) -> Result<PathBuf> {
    if value.is_empty() {
        return Err(Error::config(format!(
            "{key}: the file name must not be empty"
        )));
    }
    let p = PathBuf::from(value);
    if p.is_absolute() {
        return Ok(p);
    }
    let cwd = std::env::current_dir().map_err(|e| Error::io(e, "getcwd"))?;
    Ok(cwd.join(p))
}

impl Filter for Rate {
    fn name(&self) -> &'static str {
        "rate"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit rate filter")
    }

    fn description(&self) -> &'static str {
        "Limit bandwidth by connection or server."
    }

    fn config_help(&self) -> &'static str {
        "rate=BITSPERSEC                Limit total bandwidth.\n\
         connection-rate=BITSPERSEC     Limit per-connection bandwidth.\n\
         rate-file=FILENAME             Dynamically adjust total bandwidth.\n\
         connection-rate-file=FILENAME  Dynamically adjust per-connection bandwidth.\n\
         burstiness=SECS                Seconds of burst allowed (default 2.0)."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "rate" => self.rate = parse_rate(key, value, self.rate)?,
            "connection-rate" => {
                self.connection_rate = parse_rate(key, value, self.connection_rate)?
            }
            "rate-file" => self.rate_file = Some(absolute(key, value)?),
            "connection-rate-file" => self.connection_rate_file = Some(absolute(key, value)?),
            "burstiness" => {
                let b: f64 = value.trim().parse().map_err(|_| {
                    Error::config("burstiness must be a floating point number (seconds)")
                })?;
                if !b.is_finite() || b < 0.0 {
                    return Err(Error::config(
                        "burstiness must be a non-negative number of seconds",
                    ));
                }
                self.burstiness = b;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn get_ready(&self) -> Result<()> {
        // Buckets start full when the server is ready.
        *lock(&self.shared.read) = Bucket::new(self.rate, self.burstiness);
        *lock(&self.shared.write) = Bucket::new(self.rate, self.burstiness);
        Ok(())
    }

    fn config_complete(&mut self) -> Result<()> {
        self.shared = Arc::new(Shared {
            connection_rate: self.connection_rate,
            burstiness: self.burstiness,
            rate_file: self.rate_file.clone(),
            connection_rate_file: self.connection_rate_file.clone(),
            read: Mutex::new(Bucket::new(self.rate, self.burstiness)),
            write: Mutex::new(Bucket::new(self.rate, self.burstiness)),
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
        let s = &self.shared;
        Ok(Box::new(RateContext {
            next: next.open(readonly, export, is_tls)?,
            read: Mutex::new(Bucket::new(s.connection_rate, s.burstiness)),
            write: Mutex::new(Bucket::new(s.connection_rate, s.burstiness)),
            shared: s.clone(),
        }))
    }
}

struct RateContext {
    next: Box<dyn Context>,
    read: Mutex<Bucket>,
    write: Mutex<Bucket>,
    shared: Arc<Shared>,
}

impl FilterContext for RateContext {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn pread(&self, buf: &mut [u8], offset: u64, f: u32) -> Result<()> {
        let s = &self.shared;
        adjust_from(s.rate_file.as_ref(), &s.read);
        wait(&s.read, buf.len())?;
        adjust_from(s.connection_rate_file.as_ref(), &self.read);
        wait(&self.read, buf.len())?;
        self.next.pread(buf, offset, f)
    }

    fn pwrite(&self, buf: &[u8], offset: u64, f: u32) -> Result<()> {
        let s = &self.shared;
        adjust_from(s.rate_file.as_ref(), &s.write);
        wait(&s.write, buf.len())?;
        adjust_from(s.connection_rate_file.as_ref(), &self.write);
        wait(&self.write, buf.len())?;
        self.next.pwrite(buf, offset, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bursts_then_paces() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, 2.0);
        b.last = t0;
        // Starts full: 2000 tokens.
        assert_eq!(b.run(1500, t0), (0, Duration::ZERO));
        let (left, sleep) = b.run(1000, t0);
        assert_eq!(left, 500);
        assert_eq!(sleep, Duration::from_millis(500));
        // Half a second later the missing 500 have arrived.
        assert_eq!(b.run(500, t0 + Duration::from_millis(500)).0, 0);
        // Never more than the capacity, however long the pause.
        b.run(0, t0 + Duration::from_secs(100));
        assert_eq!(b.level, 2000);
        assert_eq!(b.adjust(100), 1000);
        assert_eq!(b.level, 200);
        let mut free = Bucket::new(0, 2.0);
        assert_eq!(free.run(u64::MAX, t0).0, 0);
    }

    #[test]
    fn parameters() {
        let mut f = Rate::new();
        assert!(f.config("rate", "1M").unwrap());
        assert_eq!(f.rate, 1 << 20);
        assert!(f.config("rate", "2M").is_err());
        assert!(f.config("connection-rate", "0").is_err());
        assert!(f.config("connection-rate", "fast").is_err());
        assert!(f.config("burstiness", "x").is_err());
        assert!(f.config("burstiness", "0.5").unwrap());
        assert!(f.config("rate-file", "r").unwrap());
        assert!(f.rate_file.as_ref().unwrap().is_absolute());
        assert!(!f.config("size", "1").unwrap());
    }
}
