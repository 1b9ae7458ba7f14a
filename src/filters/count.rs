//! The `count` filter: count the bytes read, written, zeroed and trimmed,
//! and report the totals when the server exits, as nbdkit's does: one
//! debug line (seen with `-v`),
//! `count bytes: read N, written N, zeroed N, trimmed N`.
//!
//! Only successful requests count.  The counters are atomics, so the filter
//! adds no lock to the request path.

use crate::error::Result;
use crate::filter::{Filter, FilterContext};
use crate::layers::{Backend, Context};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Default)]
struct Counters {
    read: AtomicU64,
    written: AtomicU64,
    zeroed: AtomicU64,
    trimmed: AtomicU64,
}

impl Counters {
    fn summary(&self) -> String {
        format!(
            "count bytes: read {}, written {}, zeroed {}, trimmed {}",
            self.read.load(Ordering::Relaxed),
            self.written.load(Ordering::Relaxed),
            self.zeroed.load(Ordering::Relaxed),
            self.trimmed.load(Ordering::Relaxed)
        )
    }
}

#[derive(Default)]
pub struct Count {
    counters: Arc<Counters>,
}

impl Count {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Filter for Count {
    fn name(&self) -> &'static str {
        "count"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit count filter")
    }

    fn description(&self) -> &'static str {
        "Count bytes read, written, zeroed and trimmed."
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn cleanup(&self) {
        crate::log::debug(self.counters.summary());
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        Ok(Box::new(CountContext {
            next: next.open(readonly, export, is_tls)?,
            counters: self.counters.clone(),
        }))
    }
}

struct CountContext {
    next: Box<dyn Context>,
    counters: Arc<Counters>,
}

fn add(r: Result<()>, counter: &AtomicU64, n: u64) -> Result<()> {
    if r.is_ok() {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    r
}

impl FilterContext for CountContext {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn pread(&self, buf: &mut [u8], offset: u64, f: u32) -> Result<()> {
        let n = buf.len() as u64;
        add(self.next.pread(buf, offset, f), &self.counters.read, n)
    }

    fn pwrite(&self, buf: &[u8], offset: u64, f: u32) -> Result<()> {
        let r = self.next.pwrite(buf, offset, f);
        add(r, &self.counters.written, buf.len() as u64)
    }

    fn zero(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        add(
            self.next.zero(count, offset, f),
            &self.counters.zeroed,
            count,
        )
    }

    fn trim(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        add(
            self.next.trim(count, offset, f),
            &self.counters.trimmed,
            count,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line() {
        let c = Counters::default();
        c.read.fetch_add(4096, Ordering::Relaxed);
        c.trimmed.fetch_add(1, Ordering::Relaxed);
        assert_eq!(
            c.summary(),
            "count bytes: read 4096, written 0, zeroed 0, trimmed 1"
        );
    }
}
