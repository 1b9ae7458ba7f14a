//! Budgets for the memory that large requests hold while in flight.
//!
//! A read or write of N bytes needs an N-byte buffer from the moment its
//! header is read until its reply is sent.  A client that pipelines large
//! requests, or stops reading replies, could otherwise make the server hold
//! up to `-t` x 64 MiB per connection, and many connections many times
//! that.  Each large request therefore takes its size from its connection's
//! budget ([`PER_CONNECTION`]) and from the process's ([`global`], a quarter
//! of RAM) before its payload is read; when either is spent, the worker
//! holding the connection's read side waits, so the server stops reading
//! that client's socket until earlier replies have gone out (back-pressure).
//! A request always runs when nothing else holds the budget, so one larger
//! than the budget still works, alone.  Requests up to [`SMALL`] bytes do
//! not count: they cost no more than the worker thread that runs them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

/// Requests this small are not counted.
pub const SMALL: u64 = 128 * 1024;
/// Bytes of large requests one connection may have in flight.
pub const PER_CONNECTION: u64 = 256 * 1024 * 1024;

pub struct Budget {
    limit: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

impl Budget {
    pub fn new(limit: u64) -> Self {
        Budget {
            limit,
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Take `n` bytes, waiting while the budget is spent (unless nothing is
    /// taken).  `None` if `stop` is set or the server is stopping first.
    pub fn take(&self, n: u64, stop: &AtomicBool) -> Option<Grant<'_>> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used > 0 && used.saturating_add(n) > self.limit {
            if stop.load(Ordering::Acquire) || crate::server::quit::requested() {
                return None;
            }
            used = self
                .freed
                .wait_timeout(used, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *used += n;
        Some(Grant { budget: self, n })
    }

    pub fn used(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Bytes taken from a budget, given back when dropped.
pub struct Grant<'a> {
    budget: &'a Budget,
    n: u64,
}

impl Drop for Grant<'_> {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
        *used -= self.n;
        drop(used);
        self.budget.freed.notify_all();
    }
}

/// The process's budget: a quarter of RAM (at least 1 GiB).
pub fn global() -> &'static Budget {
    static GLOBAL: OnceLock<Budget> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        let ram = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map(|kb| kb * 1024)
            .unwrap_or(4 << 30);
        Budget::new((ram / 4).max(1 << 30))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn takes_wait_for_room_and_one_oversized_take_runs_alone() {
        let b = Arc::new(Budget::new(100));
        let stop = AtomicBool::new(false);
        let a = b.take(60, &stop).unwrap();
        let c = b.take(40, &stop).unwrap();
        assert_eq!(b.used(), 100);
        // A third must wait until one is given back.
        let b2 = b.clone();
        let t = std::thread::spawn(move || {
            let stop = AtomicBool::new(false);
            let g = b2.take(50, &stop).map(|g| g.n);
            g
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished());
        drop(a);
        assert_eq!(t.join().unwrap(), Some(50));
        drop(c);
        assert_eq!(b.used(), 0);
        // Larger than the whole budget: runs when nothing else holds it.
        let big = b.take(1000, &stop).unwrap();
        assert_eq!(b.used(), 1000);
        drop(big);
        // A waiter gives up when told to stop.
        let _hold = b.take(100, &stop).unwrap();
        stop.store(true, Ordering::Release);
        assert!(b.take(1, &stop).is_none());
    }

    #[test]
    fn the_global_budget_is_a_quarter_of_ram() {
        assert!(global().limit >= 1 << 30);
    }
}
