//! The `time-limit` filter: limit how long a client may stay connected
//! (`time-limit=`, 60 seconds by default, 0 for no limit).
//!
//! The clock starts when the connection is opened.  As with nbdkit, the
//! limit is enforced when the client sends a request: once it has passed,
//! the request gets no reply and the connection is dropped at once.  A
//! client that sends nothing can stay connected longer (the server's
//! `--timeout` option covers idle clients).

use crate::error::{Error, Result};
use crate::extents::Extents;
use crate::filter::{Filter, FilterContext};
use crate::layers::{Backend, Context};
use crate::parse::parse_delay;
use nix::errno::Errno;
use std::time::{Duration, Instant};

pub struct TimeLimit {
    /// `None`: no limit.
    limit: Option<Duration>,
}

impl TimeLimit {
    pub fn new() -> Self {
        TimeLimit {
            limit: Some(Duration::from_secs(60)),
        }
    }
}

impl Default for TimeLimit {
    fn default() -> Self {
        Self::new()
    }
}

impl Filter for TimeLimit {
    fn name(&self) -> &'static str {
        "time-limit"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit time limit filter")
    }

    fn description(&self) -> &'static str {
        "Set an overall time limit for each connection."
    }

    fn config_help(&self) -> &'static str {
        "time-limit=<NN>[ms]        Limit each connection to this long (default 60s)."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        // nbdkit accepts the two spellings without a dash too.
        if !matches!(key, "time-limit" | "time_limit" | "timelimit") {
            return Ok(false);
        }
        let d = parse_delay(key, value)?;
        self.limit = (!d.is_zero()).then_some(d);
        Ok(true)
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        let start = Instant::now();
        Ok(Box::new(TimeLimitContext {
            next: next.open(readonly, export, is_tls)?,
            deadline: self.limit.and_then(|l| start.checked_add(l)),
        }))
    }
}

struct TimeLimitContext {
    next: Box<dyn Context>,
    /// `None`: no limit.
    deadline: Option<Instant>,
}

impl TimeLimitContext {
    fn check(&self) -> Result<()> {
        match self.deadline {
            Some(d) if Instant::now() > d => {
                crate::log::debug("time-limit: time limit exceeded, connection closed");
                crate::server::transmission::disconnect_now();
                Err(Error::new(Errno::ESHUTDOWN, "time limit exceeded"))
            }
            _ => Ok(()),
        }
    }
}

impl FilterContext for TimeLimitContext {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn pread(&self, buf: &mut [u8], offset: u64, f: u32) -> Result<()> {
        self.check()?;
        self.next.pread(buf, offset, f)
    }

    fn pwrite(&self, buf: &[u8], offset: u64, f: u32) -> Result<()> {
        self.check()?;
        self.next.pwrite(buf, offset, f)
    }

    fn flush(&self, f: u32) -> Result<()> {
        self.check()?;
        self.next.flush(f)
    }

    fn trim(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        self.check()?;
        self.next.trim(count, offset, f)
    }

    fn zero(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        self.check()?;
        self.next.zero(count, offset, f)
    }

    fn extents(&self, extents: &mut Extents, f: u32) -> Result<()> {
        self.check()?;
        self.next.extents(extents, f)
    }

    fn cache(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        self.check()?;
        self.next.cache(count, offset, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let mut f = TimeLimit::new();
        assert_eq!(f.limit, Some(Duration::from_secs(60)));
        assert!(f.config("time-limit", "1.5").unwrap());
        assert_eq!(f.limit, Some(Duration::from_millis(1500)));
        assert!(f.config("timelimit", "200ms").unwrap());
        assert_eq!(f.limit, Some(Duration::from_millis(200)));
        assert!(f.config("time_limit", "0").unwrap());
        assert_eq!(f.limit, None);
        assert!(f.config("time-limit", "-1").is_err());
        assert!(f.config("time-limit", "soon").is_err());
        assert!(!f.config("size", "1M").unwrap());
    }
}
