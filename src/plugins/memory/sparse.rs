//! The `sparse` allocator (default) and the page map shared with `zstd`:
//! a virtual disk of up to 2^63-1 bytes made of 32 KiB pages that are
//! allocated on first write and freed when they become entirely zero.
//!
//! Locking: an `RwLock` over an ordered map from page index to a per-page
//! `RwLock`.  Reads and writes of already-allocated pages hold the map lock
//! shared and only lock their page (shared for reads, exclusive for writes),
//! so they run in parallel.  The map lock is taken exclusively only to insert
//! a page (the new page is built before taking the lock) or to remove pages
//! that zero/trim made entirely zero.  The lock order is always map, then
//! page, so there is no deadlock.  Unallocated pages read as zero and are
//! never visited one by one: zero and extents use range queries on the map.

use super::allocator::{is_zero, page_chunks, Allocator, PAGE_SIZE};
use crate::error::Result;
use crate::extents::{Extents, HOLE, ZERO};
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// How one page is stored (plain bytes, or compressed).
pub trait PageRepr: Send + Sync + Sized + 'static {
    /// Build a page from its full plain contents (`PAGE_SIZE` bytes).
    fn encode(data: Vec<u8>) -> Result<Self>;
    /// Copy bytes `[at, at + out.len())` of the page into `out`.
    fn read(&self, at: usize, out: &mut [u8]) -> Result<()>;
    /// Change the page: `f` gets the full plain contents.  Returns whether
    /// the page is entirely zero afterwards.
    fn update(&mut self, f: &mut dyn FnMut(&mut [u8])) -> Result<bool>;
    /// Whether the page is entirely zero.
    fn is_all_zero(&self) -> Result<bool>;
}

/// A page kept as plain bytes.
pub struct PlainPage(Box<[u8]>);

impl PageRepr for PlainPage {
    fn encode(data: Vec<u8>) -> Result<Self> {
        Ok(PlainPage(data.into_boxed_slice()))
    }
    fn read(&self, at: usize, out: &mut [u8]) -> Result<()> {
        out.copy_from_slice(&self.0[at..at + out.len()]);
        Ok(())
    }
    fn update(&mut self, f: &mut dyn FnMut(&mut [u8])) -> Result<bool> {
        f(&mut self.0);
        Ok(is_zero(&self.0))
    }
    fn is_all_zero(&self) -> Result<bool> {
        Ok(is_zero(&self.0))
    }
}

/// Shared read access, ignoring poisoning (a panicking request must not
/// take the whole disk down).
pub(crate) fn rd<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// Exclusive access, ignoring poisoning.
pub(crate) fn wr<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// A sparse array of pages stored as `P`.
pub struct SparseArray<P: PageRepr> {
    name: &'static str,
    pages: RwLock<BTreeMap<u64, RwLock<P>>>,
    _repr: PhantomData<fn() -> P>,
}

/// The `sparse` allocator.
pub type Sparse = SparseArray<PlainPage>;

impl<P: PageRepr> SparseArray<P> {
    /// An empty (all-zero) array; `name` is the allocator name.
    pub fn with_name(name: &'static str) -> Self {
        SparseArray {
            name,
            pages: RwLock::new(BTreeMap::new()),
            _repr: PhantomData,
        }
    }

    /// Number of allocated pages (for tests and debugging).
    pub fn allocated_pages(&self) -> usize {
        rd(&self.pages).len()
    }
}

impl Sparse {
    /// An empty `sparse` allocator.
    pub fn new() -> Self {
        Self::with_name("sparse")
    }
}

impl Default for Sparse {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: PageRepr> Allocator for SparseArray<P> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn preferred_block_size(&self) -> u32 {
        PAGE_SIZE as u32
    }

    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let map = rd(&self.pages);
        for (page, at, n, pos) in page_chunks(offset, buf.len()) {
            let out = &mut buf[pos..pos + n];
            match map.get(&page) {
                Some(p) => rd(p).read(at, out)?,
                None => out.fill(0),
            }
        }
        Ok(())
    }

    fn write(&self, buf: &[u8], offset: u64) -> Result<()> {
        for (page, at, n, pos) in page_chunks(offset, buf.len()) {
            let data = &buf[pos..pos + n];
            let mut copy_in = |p: &mut [u8]| p[at..at + n].copy_from_slice(data);
            {
                let map = rd(&self.pages);
                if let Some(p) = map.get(&page) {
                    wr(p).update(&mut copy_in)?;
                    continue;
                }
            }
            // Build the new page outside the exclusive lock.
            let mut plain = vec![0u8; PAGE_SIZE];
            plain[at..at + n].copy_from_slice(data);
            let new_page = P::encode(plain)?;
            let mut map = wr(&self.pages);
            match map.entry(page) {
                Entry::Vacant(v) => {
                    v.insert(RwLock::new(new_page));
                }
                // Another writer allocated it meanwhile.
                Entry::Occupied(o) => {
                    wr(o.get()).update(&mut copy_in)?;
                }
            }
        }
        Ok(())
    }

    fn zero(&self, count: u64, offset: u64) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let ps = PAGE_SIZE as u64;
        let end = offset + count;
        let (first, last) = (offset / ps, (end - 1) / ps);
        // Pages wholly inside the range, and pages that became zero.
        let mut whole = Vec::new();
        let mut maybe_empty = Vec::new();
        {
            let map = rd(&self.pages);
            for (&page, p) in map.range(first..=last) {
                let lo = offset.max(page * ps);
                let hi = end.min((page + 1) * ps);
                if hi - lo == ps {
                    whole.push(page);
                } else {
                    let at = (lo - page * ps) as usize;
                    let n = (hi - lo) as usize;
                    if wr(p).update(&mut |d: &mut [u8]| d[at..at + n].fill(0))? {
                        maybe_empty.push(page);
                    }
                }
            }
        }
        if whole.is_empty() && maybe_empty.is_empty() {
            return Ok(());
        }
        let mut map = wr(&self.pages);
        for page in whole {
            map.remove(&page);
        }
        for page in maybe_empty {
            // A concurrent write may have filled it again: check once more
            // now that no one else can touch it.
            let empty = match map.get(&page) {
                Some(p) => rd(p).is_all_zero()?,
                None => false,
            };
            if empty {
                map.remove(&page);
            }
        }
        Ok(())
    }

    fn extents(&self, extents: &mut Extents) -> Result<()> {
        let (start, end) = (extents.start(), extents.end());
        if start >= end {
            return extents.add(start, 0, HOLE | ZERO);
        }
        let ps = PAGE_SIZE as u64;
        let (first, last) = (start / ps, (end - 1) / ps);
        let mut cursor = first * ps;
        let map = rd(&self.pages);
        for (&page, _) in map.range(first..=last) {
            let page_start = page * ps;
            if page_start > cursor {
                extents.add(cursor, page_start - cursor, HOLE | ZERO)?;
            }
            extents.add(page_start, ps, 0)?;
            cursor = page_start + ps;
        }
        if cursor < end {
            extents.add(cursor, end - cursor, HOLE | ZERO)?;
        }
        Ok(())
    }
}
