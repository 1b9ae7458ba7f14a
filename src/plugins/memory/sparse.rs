//! The `sparse` allocator (default) and the page store shared with `zstd`:
//! a virtual disk of up to 2^63-1 bytes made of 32 KiB pages that are
//! allocated on first write and freed when they become entirely zero.
//!
//! Layout: like nbdkit's sparse array, two levels.  A directory (an ordered
//! map) holds chunks, each a fixed array of [`CHUNK_PAGES`] page slots
//! covering 32 MiB of the disk; a slot holds a page or nothing.  Finding a
//! page is one lookup in a small, cache-hot map plus an array index, instead
//! of a walk down a tree with one node per page.
//!
//! Locking: the directory has an `RwLock`, each slot its own `Mutex` (16
//! bytes a page with the pointer, half what an `RwLock` slot took; requests
//! hold it only to copy at most one page).  Reads, writes, zeroes and extents
//! hold the directory shared and lock only the slots they touch, so requests
//! on different pages run in parallel.  The directory is taken exclusively only
//! to add a chunk or to drop chunks left empty.  The lock order is always
//! directory, then slot.  Unallocated chunks are never visited page by page.

use super::allocator::{is_zero, page_chunks, Allocator, PAGE_SIZE};
use crate::error::Result;
use crate::extents::{Extents, HOLE, ZERO};
use crate::server::lock;
use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Pages per chunk: a chunk maps 32 MiB of the disk with 1024 slots.
pub const CHUNK_PAGES: u64 = 1024;

/// How one page is stored (plain bytes, or compressed).
pub trait PageRepr: Send + Sync + Sized + 'static {
    /// Build a page from its full plain contents (`PAGE_SIZE` bytes).
    fn encode(data: Vec<u8>) -> Result<Self>;
    /// Copy bytes `[at, at + out.len())` of the page into `out`.
    fn read(&self, at: usize, out: &mut [u8]) -> Result<()>;
    /// Change the page: `f` gets the full plain contents.
    fn update(&mut self, f: &mut dyn FnMut(&mut [u8])) -> Result<()>;
    /// Whether the page is entirely zero.
    fn is_all_zero(&self) -> Result<bool>;
}

/// A page kept as plain bytes (a thin pointer: 8 bytes a slot).
pub struct PlainPage(Box<[u8; PAGE_SIZE]>);

impl PageRepr for PlainPage {
    fn encode(data: Vec<u8>) -> Result<Self> {
        let page = data.into_boxed_slice().try_into().map_err(|_| {
            crate::error::Error::new(nix::errno::Errno::EIO, "sparse: page of the wrong size")
        })?;
        Ok(PlainPage(page))
    }
    fn read(&self, at: usize, out: &mut [u8]) -> Result<()> {
        out.copy_from_slice(&self.0[at..at + out.len()]);
        Ok(())
    }
    fn update(&mut self, f: &mut dyn FnMut(&mut [u8])) -> Result<()> {
        f(&mut self.0[..]);
        Ok(())
    }
    fn is_all_zero(&self) -> Result<bool> {
        Ok(is_zero(&self.0[..]))
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

/// [`CHUNK_PAGES`] consecutive page slots.
struct Chunk<P> {
    slots: Box<[Mutex<Option<P>>]>,
    /// Pages present in `slots`.  Changes only under the directory's shared
    /// lock, so it is stable while the directory is held exclusively.
    used: AtomicUsize,
}

impl<P> Chunk<P> {
    fn new() -> Self {
        Chunk {
            slots: (0..CHUNK_PAGES).map(|_| Mutex::new(None)).collect(),
            used: AtomicUsize::new(0),
        }
    }

    /// The slot of page `page` (which must belong to this chunk).
    fn slot(&self, page: u64) -> &Mutex<Option<P>> {
        &self.slots[locate(page).1]
    }
}

type Directory<P> = BTreeMap<u64, Chunk<P>>;

/// Chunk lookups for the pages of one request, in order: consecutive pages
/// of the same chunk cost one directory search.
struct Lookup<'a, P> {
    dir: &'a Directory<P>,
    last: Option<(u64, Option<&'a Chunk<P>>)>,
}

impl<'a, P> Lookup<'a, P> {
    fn new(dir: &'a Directory<P>) -> Self {
        Lookup { dir, last: None }
    }

    /// The chunk holding `page`, if it exists.
    fn chunk(&mut self, page: u64) -> Option<&'a Chunk<P>> {
        let ci = locate(page).0;
        match self.last {
            Some((c, chunk)) if c == ci => chunk,
            _ => {
                let chunk = self.dir.get(&ci);
                self.last = Some((ci, chunk));
                chunk
            }
        }
    }
}

/// The chunks that exist among pages `first..=last`, each with its index
/// and the pages of the range it holds.
fn chunks_in<P>(
    dir: &Directory<P>,
    first: u64,
    last: u64,
) -> impl Iterator<Item = (u64, &Chunk<P>, RangeInclusive<u64>)> {
    dir.range(first / CHUNK_PAGES..=last / CHUNK_PAGES)
        .map(move |(&ci, chunk)| {
            let base = ci * CHUNK_PAGES;
            (
                ci,
                chunk,
                first.max(base)..=last.min(base + CHUNK_PAGES - 1),
            )
        })
}

/// Where page `page` lives: (chunk index, slot in the chunk).
fn locate(page: u64) -> (u64, usize) {
    (page / CHUNK_PAGES, (page % CHUNK_PAGES) as usize)
}

/// A sparse array of pages stored as `P`.
pub struct SparseArray<P: PageRepr> {
    name: &'static str,
    dir: RwLock<Directory<P>>,
}

/// The `sparse` allocator.
pub type Sparse = SparseArray<PlainPage>;

impl<P: PageRepr> SparseArray<P> {
    /// An empty (all-zero) array; `name` is the allocator name.
    pub fn with_name(name: &'static str) -> Self {
        SparseArray {
            name,
            dir: RwLock::new(BTreeMap::new()),
        }
    }

    /// Number of allocated pages (for tests and debugging).
    pub fn allocated_pages(&self) -> usize {
        rd(&self.dir)
            .values()
            .map(|c| c.used.load(Ordering::Relaxed))
            .sum()
    }

    /// Number of chunks in the directory (for tests).
    pub fn chunks(&self) -> usize {
        rd(&self.dir).len()
    }

    /// Write `buf[from..]` (at `offset + from`) for as long as the chunks it
    /// needs exist.  Returns how far it got: the end of `buf`, or the
    /// position in `buf` of the first page whose chunk is missing.
    fn write_present(&self, buf: &[u8], offset: u64, from: usize) -> Result<usize> {
        let dir = rd(&self.dir);
        let mut lookup = Lookup::new(&dir);
        for (page, at, n, pos) in page_chunks(offset + from as u64, buf.len() - from) {
            let pos = from + pos;
            let Some(chunk) = lookup.chunk(page) else {
                return Ok(pos);
            };
            let data = &buf[pos..pos + n];
            let mut slot = lock(chunk.slot(page));
            match slot.as_mut() {
                Some(p) => p.update(&mut |d: &mut [u8]| d[at..at + n].copy_from_slice(data))?,
                None => {
                    let mut plain = vec![0u8; PAGE_SIZE];
                    plain[at..at + n].copy_from_slice(data);
                    *slot = Some(P::encode(plain)?);
                    chunk.used.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(buf.len())
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
        let dir = rd(&self.dir);
        let mut lookup = Lookup::new(&dir);
        for (page, at, n, pos) in page_chunks(offset, buf.len()) {
            let out = &mut buf[pos..pos + n];
            match lookup.chunk(page) {
                Some(chunk) => match &*lock(chunk.slot(page)) {
                    Some(p) => p.read(at, out)?,
                    None => out.fill(0),
                },
                None => out.fill(0),
            }
        }
        Ok(())
    }

    fn write(&self, buf: &[u8], offset: u64) -> Result<()> {
        let mut done = 0;
        loop {
            done = self.write_present(buf, offset, done)?;
            if done == buf.len() {
                return Ok(());
            }
            // The chunk for the page at `done` is missing: add it, then go
            // on (it may be gone again by then; the loop copes).
            let (ci, _) = locate((offset + done as u64) / PAGE_SIZE as u64);
            wr(&self.dir).entry(ci).or_insert_with(Chunk::new);
        }
    }

    fn zero(&self, count: u64, offset: u64) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let ps = PAGE_SIZE as u64;
        let end = offset.saturating_add(count);
        let (first, last) = (offset / ps, (end - 1) / ps);
        let mut emptied = Vec::new();
        {
            let dir = rd(&self.dir);
            for (ci, chunk, pages) in chunks_in(&dir, first, last) {
                for page in pages {
                    let mut slot = lock(chunk.slot(page));
                    let Some(p) = slot.as_mut() else { continue };
                    let lo = offset.max(page * ps);
                    let hi = end.min((page + 1) * ps);
                    let free = if hi - lo == ps {
                        true
                    } else {
                        let at = (lo - page * ps) as usize;
                        let n = (hi - lo) as usize;
                        p.update(&mut |d: &mut [u8]| d[at..at + n].fill(0))?;
                        p.is_all_zero()?
                    };
                    if free {
                        *slot = None;
                        chunk.used.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                if chunk.used.load(Ordering::Relaxed) == 0 {
                    emptied.push(ci);
                }
            }
        }
        if !emptied.is_empty() {
            let mut dir = wr(&self.dir);
            for ci in emptied {
                // A write may have filled it again meanwhile; under the
                // exclusive lock the count cannot change.
                if dir
                    .get(&ci)
                    .is_some_and(|c| c.used.load(Ordering::Relaxed) == 0)
                {
                    dir.remove(&ci);
                }
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
        let dir = rd(&self.dir);
        for (_, chunk, pages) in chunks_in(&dir, first, last) {
            for page in pages {
                let flags = if lock(chunk.slot(page)).is_some() {
                    0
                } else {
                    HOLE | ZERO
                };
                let page_start = page * ps;
                if page_start > cursor {
                    extents.add(cursor, page_start - cursor, HOLE | ZERO)?;
                }
                extents.add(page_start, ps, flags)?;
                cursor = page_start + ps;
            }
        }
        if cursor < end {
            extents.add(cursor, end - cursor, HOLE | ZERO)?;
        }
        Ok(())
    }
}
