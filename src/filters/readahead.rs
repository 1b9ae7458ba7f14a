//! The `readahead` filter: make sequential reads over a slow plugin fast.
//!
//! nbdkit's readahead filter only sends `cache` requests down, which helps
//! a plugin (or a cache filter) that can prefetch and does nothing over
//! one that cannot, such as `curl`.  Ours reads ahead itself: when a read
//! continues where the previous one ended, the filter asks the layer below
//! for a whole window from there instead of just the request, keeps it,
//! and answers the following reads from it.  The window starts at 64 KiB,
//! doubles with each sequential read that misses up to 8 MiB, and falls
//! back to the start on a seek, so random reads cost no more than without
//! the filter.  Over a plugin that takes 20 ms a request, a client reading
//! 64 KiB at a time thus makes a handful of requests below per 8 MiB
//! instead of 128.
//!
//! Parallel clients (`nbdcopy`, `qemu-img convert`) keep their
//! parallelism: the lock is never held while reading below, several
//! windows can be in flight at once, and a read that falls inside a window
//! being fetched waits for it instead of asking again.
//!
//! Correctness under writes: a write, zero or trim through any connection
//! of this server drops the kept windows it overlaps, on every connection,
//! before it is answered; a window being fetched while such a write
//! completes is handed to the reads already waiting for it, then dropped.
//! Memory is bounded per connection (16 MiB of windows).

use crate::error::Result;
use crate::filter::{Filter, FilterContext};
use crate::layers::{Backend, Context};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

/// The first window, and the window after a seek.
const MIN_WINDOW: u64 = 64 * 1024;
/// The largest window.
const MAX_WINDOW: u64 = 8 * 1024 * 1024;
/// Most bytes of windows kept or in flight per connection.
const MAX_KEPT: u64 = 2 * MAX_WINDOW;

pub struct Readahead {
    conns: Arc<Registry>,
}

impl Readahead {
    pub fn new() -> Self {
        Readahead {
            conns: Arc::new(Registry::default()),
        }
    }
}

impl Default for Readahead {
    fn default() -> Self {
        Self::new()
    }
}

impl Filter for Readahead {
    fn name(&self) -> &'static str {
        "readahead"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit readahead filter")
    }

    fn description(&self) -> &'static str {
        "Read ahead of sequential reads."
    }

    fn config_help(&self) -> &'static str {
        "(The readahead filter has no parameters.)"
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        let next = next.open(readonly, export, is_tls)?;
        let windows = Arc::new(Windows::default());
        self.conns.add(&windows);
        Ok(Box::new(ReadaheadContext {
            next,
            windows,
            conns: self.conns.clone(),
        }))
    }
}

/// Every open connection's windows, so that a write on one connection can
/// drop what it overlaps on all of them.
#[derive(Default)]
struct Registry(Mutex<Vec<Weak<Windows>>>);

impl Registry {
    fn add(&self, w: &Arc<Windows>) {
        let mut list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(w));
    }

    fn invalidate(&self, offset: u64, count: u64) {
        let list: Vec<Arc<Windows>> = {
            let list = self.0.lock().unwrap_or_else(|e| e.into_inner());
            list.iter().filter_map(Weak::upgrade).collect()
        };
        for w in list {
            w.invalidate(offset, count);
        }
    }
}

#[derive(Debug, PartialEq)]
enum Fill {
    /// Being read from the layer below.
    Pending,
    Ready,
}

struct Window {
    id: u64,
    offset: u64,
    data: Vec<u8>,
    len: u64,
    fill: Fill,
    /// A write overlapped it while it was being fetched: serve the waiters,
    /// keep it for no one else.
    stale: bool,
}

impl Window {
    fn covers(&self, offset: u64, len: u64) -> bool {
        offset >= self.offset && offset + len <= self.offset + self.len
    }
    fn overlaps(&self, offset: u64, count: u64) -> bool {
        offset < self.offset + self.len && self.offset < offset + count
    }
}

#[derive(Default)]
struct State {
    windows: VecDeque<Window>,
    next_id: u64,
    /// Where the last read ended: a read starting here is sequential.
    last_end: u64,
    /// The size of the next window fetched.
    window: u64,
}

impl State {
    fn kept(&self) -> u64 {
        self.windows.iter().map(|w| w.len).sum()
    }
    fn find(&self, id: u64) -> Option<usize> {
        self.windows.iter().position(|w| w.id == id)
    }
}

#[derive(Default)]
struct Windows {
    state: Mutex<State>,
    changed: Condvar,
}

impl Windows {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn invalidate(&self, offset: u64, count: u64) {
        let mut st = self.lock();
        st.windows.retain_mut(|w| {
            if !w.overlaps(offset, count) {
                return true;
            }
            if w.fill == Fill::Pending {
                w.stale = true;
                return true;
            }
            false
        });
    }
}

struct ReadaheadContext {
    next: Box<dyn Context>,
    windows: Arc<Windows>,
    conns: Arc<Registry>,
}

/// What a read does after looking at the windows.
enum Plan {
    /// Copied out of a kept window.
    Done,
    /// Wait for window `id` being fetched by another read.
    Wait(u64),
    /// Fetch a new window `[offset, offset+len)` as window `id`.
    Fetch { id: u64, offset: u64, len: u64 },
    /// Read just the request.
    Direct,
}

impl ReadaheadContext {
    fn plan(&self, st: &mut State, buf: &mut [u8], offset: u64, size: u64) -> Plan {
        let len = buf.len() as u64;
        // Windows overlapped by a write (stale) are for no read that comes
        // after it.
        let usable = |w: &&Window| w.covers(offset, len) && !w.stale;
        if let Some(w) = st.windows.iter().find(usable) {
            match w.fill {
                Fill::Ready => {
                    let from = (offset - w.offset) as usize;
                    buf.copy_from_slice(&w.data[from..from + buf.len()]);
                    st.last_end = offset + len;
                    return Plan::Done;
                }
                Fill::Pending => return Plan::Wait(w.id),
            }
        }
        let sequential = offset == st.last_end;
        st.last_end = offset + len;
        if !sequential {
            st.window = MIN_WINDOW;
            return Plan::Direct;
        }
        st.window = (st.window * 2).clamp(MIN_WINDOW, MAX_WINDOW);
        let want = st.window.max(len).min(size - offset);
        if want <= len {
            return Plan::Direct;
        }
        // Make room: drop the oldest finished windows.
        while st.kept() + want > MAX_KEPT {
            match st.windows.iter().position(|w| w.fill == Fill::Ready) {
                Some(i) => {
                    st.windows.remove(i);
                }
                None => return Plan::Direct,
            }
        }
        let id = st.next_id;
        st.next_id += 1;
        st.windows.push_back(Window {
            id,
            offset,
            data: Vec::new(),
            len: want,
            fill: Fill::Pending,
            stale: false,
        });
        Plan::Fetch {
            id,
            offset,
            len: want,
        }
    }

    fn fetch(&self, buf: &mut [u8], id: u64, offset: u64, len: u64) -> Result<()> {
        let mut data = vec![0u8; len as usize];
        let r = self.next.pread(&mut data, offset, 0);
        let mut st = self.windows.lock();
        let i = st.find(id);
        match (&r, i) {
            (Ok(()), Some(i)) => {
                buf.copy_from_slice(&data[..buf.len()]);
                if st.windows[i].stale {
                    // Those waiting read for themselves.
                    st.windows.remove(i);
                } else {
                    let w = &mut st.windows[i];
                    w.data = data;
                    w.fill = Fill::Ready;
                }
            }
            // Those waiting read for themselves.
            (Err(_), Some(i)) => {
                st.windows.remove(i);
            }
            (Ok(()), None) => buf.copy_from_slice(&data[..buf.len()]),
            (Err(_), None) => {}
        }
        drop(st);
        self.windows.changed.notify_all();
        r
    }

    /// Wait until window `id` is no longer being fetched; copy the request
    /// out of it if it arrived (false: the fetch failed or a write made it
    /// stale, and the caller reads for itself).
    fn wait(&self, buf: &mut [u8], id: u64, offset: u64) -> bool {
        let mut st = self.windows.lock();
        loop {
            let Some(i) = st.find(id) else {
                return false;
            };
            let w = &st.windows[i];
            match w.fill {
                Fill::Pending => {
                    st = self
                        .windows
                        .changed
                        .wait(st)
                        .unwrap_or_else(|e| e.into_inner());
                }
                Fill::Ready => {
                    let from = (offset - w.offset) as usize;
                    buf.copy_from_slice(&w.data[from..from + buf.len()]);
                    return true;
                }
            }
        }
    }

    fn invalidate(&self, offset: u64, count: u64) {
        self.conns.invalidate(offset, count);
    }
}

impl FilterContext for ReadaheadContext {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: u32) -> Result<()> {
        let size = self.next.get_size()?;
        let plan = {
            let mut st = self.windows.lock();
            self.plan(&mut st, buf, offset, size)
        };
        match plan {
            Plan::Done => Ok(()),
            Plan::Fetch { id, offset, len } => self.fetch(buf, id, offset, len),
            Plan::Wait(id) => {
                if self.wait(buf, id, offset) {
                    Ok(())
                } else {
                    self.next.pread(buf, offset, flags)
                }
            }
            Plan::Direct => self.next.pread(buf, offset, flags),
        }
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: u32) -> Result<()> {
        let r = self.next.pwrite(buf, offset, flags);
        self.invalidate(offset, buf.len() as u64);
        r
    }

    fn zero(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        let r = self.next.zero(count, offset, flags);
        self.invalidate(offset, count);
        r
    }

    fn trim(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        let r = self.next.trim(count, offset, flags);
        self.invalidate(offset, count);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Chain;
    use crate::plugin::{Handle, Plugin};
    use std::sync::atomic::{AtomicU64, Ordering};

    const SIZE: u64 = 32 << 20;

    /// A writable disk that counts the reads that reach it.
    struct Counted {
        disk: Arc<Mutex<Vec<u8>>>,
        reads: Arc<AtomicU64>,
    }

    struct CountedHandle {
        disk: Arc<Mutex<Vec<u8>>>,
        reads: Arc<AtomicU64>,
    }

    impl Plugin for Counted {
        fn name(&self) -> &'static str {
            "counted"
        }
        fn open(&self, _: bool, _: &str, _: bool) -> Result<Box<dyn Handle>> {
            Ok(Box::new(CountedHandle {
                disk: self.disk.clone(),
                reads: self.reads.clone(),
            }))
        }
    }

    impl Handle for CountedHandle {
        fn get_size(&self) -> Result<u64> {
            Ok(SIZE)
        }
        fn can_write(&self) -> Result<bool> {
            Ok(true)
        }
        fn pread(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let d = self.disk.lock().unwrap();
            buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn pwrite(&self, buf: &[u8], offset: u64, _: bool) -> Result<()> {
            let mut d = self.disk.lock().unwrap();
            d[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
            Ok(())
        }
    }

    fn rig() -> (crate::layers::Stack, Arc<AtomicU64>) {
        let disk = (0..SIZE).map(|i| (i * 7 % 253) as u8).collect();
        let reads = Arc::new(AtomicU64::new(0));
        let chain = Chain {
            filters: vec![Box::new(Readahead::new())],
            plugin: Box::new(Counted {
                disk: Arc::new(Mutex::new(disk)),
                reads: reads.clone(),
            }),
        };
        (chain.into_stack(), reads)
    }

    fn expect(offset: u64, len: usize) -> Vec<u8> {
        (offset..offset + len as u64)
            .map(|i| (i * 7 % 253) as u8)
            .collect()
    }

    #[test]
    fn sequential_reads_reach_the_plugin_in_growing_windows() {
        let (s, reads) = rig();
        let c = s.backend.open(false, "", false).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        for i in 0..128u64 {
            c.pread(&mut buf, i * 65536, 0).unwrap();
            assert_eq!(buf, expect(i * 65536, 65536), "read {i}");
        }
        // 8 MiB in windows of 128K, 256K, ... 8M: far fewer than 128.
        let n = reads.load(Ordering::SeqCst);
        assert!(n <= 8, "{n} reads reached the plugin");
    }

    #[test]
    fn a_seek_resets_the_window_and_random_reads_go_straight_down() {
        let (s, reads) = rig();
        let c = s.backend.open(false, "", false).unwrap();
        let mut buf = vec![0u8; 4096];
        for (i, off) in [5u64 << 20, 1 << 20, 17 << 20, 3 << 20].iter().enumerate() {
            c.pread(&mut buf, *off, 0).unwrap();
            assert_eq!(buf, expect(*off, 4096));
            assert_eq!(reads.load(Ordering::SeqCst), i as u64 + 1);
        }
    }

    #[test]
    fn writes_drop_what_they_overlap_on_every_connection() {
        let (s, _) = rig();
        let a = s.backend.open(false, "", false).unwrap();
        let b = s.backend.open(false, "", false).unwrap();
        let mut buf = vec![0u8; 4096];
        // Both connections read ahead over the start of the disk.
        a.pread(&mut buf, 0, 0).unwrap();
        b.pread(&mut buf, 0, 0).unwrap();
        // A write through a overlaps what both have kept.
        a.pwrite(&[0xEE; 100], 5000, 0).unwrap();
        for c in [&a, &b] {
            c.pread(&mut buf, 4096, 0).unwrap();
            let mut want = expect(4096, 4096);
            want[904..1004].fill(0xEE);
            assert_eq!(buf, want);
        }
    }

    #[test]
    fn parallel_sequential_readers_get_the_right_data() {
        let (s, _) = rig();
        let c: Arc<dyn Context> = Arc::from(s.backend.open(false, "", false).unwrap());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 256 * 1024];
                    for i in (t..64).step_by(4) {
                        c.pread(&mut buf, i * 262144, 0).unwrap();
                        assert_eq!(buf, expect(i * 262144, 262144), "read {i}");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn reads_near_the_end_are_clipped_to_the_disk() {
        let (s, _) = rig();
        let c = s.backend.open(false, "", false).unwrap();
        let mut buf = vec![0u8; 65536];
        let last = SIZE - 65536;
        c.pread(&mut buf, last - 65536, 0).unwrap();
        c.pread(&mut buf, last, 0).unwrap();
        assert_eq!(buf, expect(last, 65536));
    }
}
