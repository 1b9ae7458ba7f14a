//! The decompressed-block cache, shared by every connection: the
//! `xz-max-depth` most recently used blocks, and, so that parallel reads
//! of one block (nbdcopy sends dozens at once) decompress it only once,
//! the blocks being decompressed right now, which other readers wait for.

use crate::error::Result;
use crate::server::lock;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex};

pub struct BlockCache {
    depth: usize,
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Default)]
struct State {
    /// Most recently used first.
    ready: VecDeque<(usize, Arc<Vec<u8>>)>,
    /// Blocks some thread is decompressing.
    busy: HashSet<usize>,
}

/// Takes a block off the busy list however its decoding ends.
struct Busy<'a> {
    cache: &'a BlockCache,
    n: usize,
    data: Option<Arc<Vec<u8>>>,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.cache.state);
        st.busy.remove(&self.n);
        if let Some(d) = self.data.take() {
            st.ready.retain(|(k, _)| *k != self.n);
            st.ready.push_front((self.n, d));
            st.ready.truncate(self.cache.depth);
        }
        self.cache.done.notify_all();
    }
}

impl BlockCache {
    pub fn new(depth: usize) -> Self {
        BlockCache {
            depth: depth.max(1),
            state: Mutex::default(),
            done: Condvar::new(),
        }
    }

    /// Block `n`: from the cache, from another thread decoding it, or
    /// from `decode`.  A failed decode is not remembered (a thread that
    /// waited for it tries itself).
    pub fn get(&self, n: usize, decode: impl FnOnce() -> Result<Vec<u8>>) -> Result<Arc<Vec<u8>>> {
        let mut st = lock(&self.state);
        loop {
            if let Some(i) = st.ready.iter().position(|(k, _)| *k == n) {
                let hit = st.ready.remove(i).expect("position is in range");
                let data = hit.1.clone();
                st.ready.push_front(hit);
                return Ok(data);
            }
            if !st.busy.contains(&n) {
                break;
            }
            st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.busy.insert(n);
        drop(st);
        let mut busy = Busy {
            cache: self,
            n,
            data: None,
        };
        let data = Arc::new(decode()?);
        busy.data = Some(data.clone());
        Ok(data)
    }

    /// Block numbers cached, most recent first (for tests).
    #[cfg(test)]
    fn cached(&self) -> Vec<usize> {
        lock(&self.state).ready.iter().map(|(k, _)| *k).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use nix::errno::Errno;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn most_recently_used() {
        let c = BlockCache::new(2);
        let decodes = AtomicUsize::new(0);
        let get = |n: usize| {
            c.get(n, || {
                decodes.fetch_add(1, Ordering::SeqCst);
                Ok(vec![n as u8; 3])
            })
            .unwrap()
        };
        assert_eq!(*get(1), vec![1; 3]);
        get(2);
        get(1);
        assert_eq!(c.cached(), vec![1, 2]);
        get(3); // evicts 2
        assert_eq!(c.cached(), vec![3, 1]);
        assert_eq!(decodes.load(Ordering::SeqCst), 3);
        get(2);
        assert_eq!(decodes.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn errors_are_not_cached() {
        let c = BlockCache::new(4);
        let e = c.get(7, || Err(Error::new(Errno::EIO, "bad"))).unwrap_err();
        assert_eq!(e.message(), "bad");
        assert!(c.cached().is_empty());
        assert_eq!(*c.get(7, || Ok(vec![1])).unwrap(), vec![1]);
    }

    #[test]
    fn parallel_readers_decode_once() {
        let c = Arc::new(BlockCache::new(1));
        let decodes = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (c, decodes) = (c.clone(), decodes.clone());
                std::thread::spawn(move || {
                    c.get(5, || {
                        decodes.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        Ok(vec![5; 10])
                    })
                    .unwrap()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(*t.join().unwrap(), vec![5; 10]);
        }
        assert_eq!(decodes.load(Ordering::SeqCst), 1);
    }
}
