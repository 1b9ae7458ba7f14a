//! A process-wide budget for the threads clients cause us to start.
//!
//! Every connection thread and every request worker takes a [`Permit`]
//! before it is spawned and gives it back when it ends.  Linux keeps a few
//! memory mappings per thread (stack, guard page, signal stack), and once
//! `vm.max_map_count` is reached the Rust runtime aborts the whole process
//! while starting a thread.  Capping the total well below that (and below
//! `RLIMIT_NPROC`) means a client opening thousands of connections, or
//! `-t 100000`, meets a refused connection or fewer workers instead.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Never more than this many client threads, whatever the limits allow.
const MAX_THREADS: usize = 16384;
/// Mappings each thread may cost, with room left for the heap, read
/// buffers and plugins.  A thread costs 4 (its stack and guard page, its
/// signal stack and guard page; measured with 1,000 idle connections), so
/// with the default `vm.max_map_count` of 65,530 the budget is 10,921
/// threads, about 44,000 mappings: 10,000 idle connections fit, each with
/// its one thread.
const MAPS_PER_THREAD: usize = 6;
/// Stack size of request workers: plugins run on them, so not tiny, but
/// far less address space than the 2 MiB default.
pub const WORKER_STACK: usize = 512 * 1024;

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// How many client threads may exist at once.
pub fn limit() -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let maps = std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(65530);
        let mut n = MAX_THREADS.min(maps / MAPS_PER_THREAD);
        if let Ok((soft, _)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NPROC)
        {
            if soft != nix::sys::resource::RLIM_INFINITY {
                n = n.min(usize::try_from(soft / 2).unwrap_or(usize::MAX));
            }
        }
        n.max(16)
    })
}

/// One thread's share of the budget, returned when dropped.
#[derive(Debug)]
pub struct Permit(&'static AtomicUsize);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Take a share of `live` unless `max` are taken.
fn reserve_from(live: &'static AtomicUsize, max: usize) -> Option<Permit> {
    live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        (n < max).then_some(n + 1)
    })
    .ok()
    .map(|_| Permit(live))
}

/// Take a share for a new thread; `None` when the budget is spent.
pub fn reserve() -> Option<Permit> {
    reserve_from(&LIVE, limit())
}

/// Threads currently holding a permit.
pub fn live() -> usize {
    LIVE.load(Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_counted_and_returned() {
        assert!(limit() >= 16 && limit() <= MAX_THREADS);
        static BUDGET: AtomicUsize = AtomicUsize::new(0);
        let a = reserve_from(&BUDGET, 2).expect("first");
        let b = reserve_from(&BUDGET, 2).expect("second");
        assert_eq!(BUDGET.load(Ordering::Acquire), 2);
        assert!(reserve_from(&BUDGET, 2).is_none(), "over budget");
        drop(a);
        assert_eq!(BUDGET.load(Ordering::Acquire), 1);
        let c = reserve_from(&BUDGET, 2).expect("returned share is reusable");
        drop((b, c));
        assert_eq!(BUDGET.load(Ordering::Acquire), 0);
    }
}
