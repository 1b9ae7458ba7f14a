//! The `retry-request` filter: when a single data call fails, wait and try
//! the same call again, up to a limit, without reopening anything below.
//! Opening the next layer is retried the same way unless
//! `retry-request-open=false`.  Meant for plugins whose failures are
//! passing (an overloaded web server behind `curl`); the heavier `retry`
//! filter reopens the whole connection instead.
//!
//! Only calls that are safe to repeat are retried: reads, writes, zeroes,
//! trims, flushes, extents and cache all leave the disk in the same state
//! however often they run.  The waits end early when the server shuts down.

use crate::error::Result;
use crate::extents::Extents;
use crate::filter::{Filter, FilterContext};
use crate::layers::{Backend, Context};
use crate::parse::{parse_bool, parse_delay, parse_unsigned};
use crate::server::quit;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
struct Policy {
    retries: u32,
    delay: Duration,
}

impl Policy {
    /// Run `call` until it succeeds or the retries are spent; the last
    /// error is returned.
    fn run<T>(&self, what: &str, mut call: impl FnMut() -> Result<T>) -> Result<T> {
        let mut attempt = 0;
        loop {
            match call() {
                Ok(v) => return Ok(v),
                Err(e) if attempt < self.retries && !quit::requested() => {
                    attempt += 1;
                    crate::log::debug(format!(
                        "retry-request: {what} failed ({}), retry {attempt} of {} in {:?}",
                        e.message(),
                        self.retries,
                        self.delay
                    ));
                    if !self.delay.is_zero() {
                        // Shutting down: give up with the call's own error.
                        if quit::sleep(self.delay).is_err() {
                            return Err(e);
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

pub struct RetryRequest {
    policy: Policy,
    retry_open: bool,
}

impl RetryRequest {
    pub fn new() -> Self {
        RetryRequest {
            policy: Policy {
                retries: 2,
                delay: Duration::from_secs(2),
            },
            retry_open: true,
        }
    }
}

impl Default for RetryRequest {
    fn default() -> Self {
        Self::new()
    }
}

impl Filter for RetryRequest {
    fn name(&self) -> &'static str {
        "retry-request"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit retry request filter")
    }

    fn description(&self) -> &'static str {
        "Retry single requests on error."
    }

    fn config_help(&self) -> &'static str {
        "retry-request-retries=<N>     Number of retries (default: 2).\n\
         retry-request-delay=<N>       Seconds to wait before retry (default: 2).\n\
         retry-request-open=false      Do not retry opening the plugin (default: true)."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "retry-request-retries" => {
                let n = parse_unsigned(key, value, i32::MAX as u64)?;
                self.policy.retries = n as u32;
            }
            "retry-request-delay" => {
                let d = parse_delay(key, value)?;
                if d.is_zero() {
                    return Err(crate::error::Error::config(
                        "retry-request-delay cannot be 0",
                    ));
                }
                self.policy.delay = d;
            }
            "retry-request-open" => {
                self.retry_open = parse_bool(value)
                    .map_err(|e| crate::error::Error::config(format!("{key}: {}", e.message())))?
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        let inner = if self.retry_open {
            self.policy
                .run("open", || next.open(readonly, export, is_tls))?
        } else {
            next.open(readonly, export, is_tls)?
        };
        Ok(Box::new(Retrying {
            next: inner,
            policy: self.policy,
        }))
    }
}

struct Retrying {
    next: Box<dyn Context>,
    policy: Policy,
}

impl FilterContext for Retrying {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: u32) -> Result<()> {
        self.policy
            .run("pread", || self.next.pread(buf, offset, flags))
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: u32) -> Result<()> {
        self.policy
            .run("pwrite", || self.next.pwrite(buf, offset, flags))
    }

    fn flush(&self, flags: u32) -> Result<()> {
        self.policy.run("flush", || self.next.flush(flags))
    }

    fn trim(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.policy
            .run("trim", || self.next.trim(count, offset, flags))
    }

    fn zero(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.policy
            .run("zero", || self.next.zero(count, offset, flags))
    }

    fn extents(&self, extents: &mut Extents, flags: u32) -> Result<()> {
        // A failed attempt may have added some extents: start each attempt
        // from an empty list over the same window.
        let (start, end) = (extents.start(), extents.end());
        let answer = self.policy.run("extents", || {
            let mut attempt = Extents::new(start, end);
            self.next.extents(&mut attempt, flags)?;
            Ok(attempt)
        })?;
        *extents = answer;
        Ok(())
    }

    fn cache(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.policy
            .run("cache", || self.next.cache(count, offset, flags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::layers::Chain;
    use crate::plugin::{Handle, Plugin};
    use nix::errno::Errno;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    /// A 1 MiB disk of 0xAB bytes whose opens and reads fail the first
    /// `fail` times.
    struct Flaky {
        fail: u32,
        opens: Arc<AtomicU32>,
        reads: Arc<AtomicU32>,
    }

    struct FlakyHandle {
        fail: u32,
        reads: Arc<AtomicU32>,
    }

    impl Plugin for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn open(&self, _: bool, _: &str, _: bool) -> Result<Box<dyn Handle>> {
            if self.opens.fetch_add(1, Ordering::SeqCst) < self.fail {
                return Err(Error::new(Errno::EIO, "open failed"));
            }
            Ok(Box::new(FlakyHandle {
                fail: self.fail,
                reads: self.reads.clone(),
            }))
        }
    }

    impl Handle for FlakyHandle {
        fn get_size(&self) -> Result<u64> {
            Ok(1 << 20)
        }
        fn pread(&self, buf: &mut [u8], _offset: u64) -> Result<()> {
            if self.reads.fetch_add(1, Ordering::SeqCst) < self.fail {
                return Err(Error::new(Errno::EIO, "read failed"));
            }
            buf.fill(0xAB);
            Ok(())
        }
    }

    fn stack(fail: u32, params: &[&str]) -> (crate::layers::Stack, Arc<AtomicU32>, Arc<AtomicU32>) {
        let opens = Arc::new(AtomicU32::new(0));
        let reads = Arc::new(AtomicU32::new(0));
        let mut chain = Chain {
            filters: vec![Box::new(RetryRequest::new())],
            plugin: Box::new(Flaky {
                fail,
                opens: opens.clone(),
                reads: reads.clone(),
            }),
        };
        chain.config_param("retry-request-delay=1ms").unwrap();
        for p in params {
            chain.config_param(p).unwrap();
        }
        (chain.into_stack(), opens, reads)
    }

    #[test]
    fn parameters() {
        let mut f = RetryRequest::new();
        assert_eq!(f.policy.retries, 2);
        assert_eq!(f.policy.delay, Duration::from_secs(2));
        assert!(f.retry_open);
        assert!(f.config("retry-request-retries", "5").unwrap());
        assert!(f.config("retry-request-delay", "100ms").unwrap());
        assert!(f.config("retry-request-open", "false").unwrap());
        assert_eq!(f.policy.retries, 5);
        assert_eq!(f.policy.delay, Duration::from_millis(100));
        assert!(!f.retry_open);
        assert!(!f.config("retries", "1").unwrap());
        for (k, v) in [
            ("retry-request-retries", "-1"),
            ("retry-request-retries", "many"),
            ("retry-request-delay", "soon"),
            ("retry-request-delay", "0"),
            ("retry-request-open", "maybe"),
        ] {
            assert!(f.config(k, v).is_err(), "{k}={v}");
        }
    }

    #[test]
    fn a_call_that_fails_twice_succeeds_on_the_third_try() {
        let (s, opens, reads) = stack(2, &[]);
        let c = s.backend.open(false, "", false).unwrap();
        assert_eq!(opens.load(Ordering::SeqCst), 3);
        let mut buf = [0u8; 512];
        c.pread(&mut buf, 0, 0).unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 3);
        assert!(buf.iter().all(|&b| b == 0xAB));
    }

    #[test]
    fn the_last_error_is_returned_when_retries_are_spent() {
        // Open not retried: the first failure is final.
        let (s, opens, _) = stack(1, &["retry-request-open=false"]);
        let e = s.backend.open(false, "", false).err().expect("open fails");
        assert_eq!(e.errno(), Errno::EIO);
        assert_eq!(opens.load(Ordering::SeqCst), 1);
        // Three failures against two retries: the call fails, after three
        // attempts.
        let (s, opens, _) = stack(3, &[]);
        assert!(s.backend.open(false, "", false).is_err());
        assert_eq!(opens.load(Ordering::SeqCst), 3);
        // With three retries the same failures are ridden out.
        let (s, _, reads) = stack(3, &["retry-request-retries=3"]);
        let c = s.backend.open(false, "", false).unwrap();
        let mut buf = [0u8; 16];
        c.pread(&mut buf, 0, 0).unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 4);
    }
}
