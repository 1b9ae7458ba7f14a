//! The `malloc` allocator: the whole disk allocated up front as a list of
//! fixed-size chunks, each behind its own `RwLock` (so requests on different
//! chunks never contend).  No sparseness: extents report everything as data.
//! With `mlock=true` every chunk is locked into RAM with mlock(2).

use super::allocator::Allocator;
use super::sparse::{rd, wr};
use crate::error::{Error, Result};
use crate::extents::Extents;
use nix::errno::Errno;
use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::RwLock;

/// Bytes per chunk.
const CHUNK: u64 = 1 << 20;

/// The `malloc` allocator.
pub struct Malloc {
    size: u64,
    chunks: Vec<RwLock<Vec<u8>>>,
    mlock: bool,
}

fn enomem(what: &str) -> Error {
    Error::os(Errno::ENOMEM, format!("malloc: {what}"))
}

impl Malloc {
    /// Allocate (and zero) a disk of `size` bytes; with `mlock` it is
    /// locked in RAM by [`Allocator::after_fork`], in the serving process
    /// (memory locks are not inherited across fork).
    pub fn new(size: u64, mlock: bool) -> Result<Self> {
        let n = usize::try_from(size.div_ceil(CHUNK)).map_err(|_| enomem("disk too large"))?;
        let mut chunks = Vec::new();
        chunks
            .try_reserve_exact(n)
            .map_err(|_| enomem("cannot allocate chunk table"))?;
        for i in 0..n as u64 {
            let len = (size - i * CHUNK).min(CHUNK) as usize;
            let mut v: Vec<u8> = Vec::new();
            v.try_reserve_exact(len)
                .map_err(|_| enomem("cannot allocate disk"))?;
            v.resize(len, 0);
            chunks.push(RwLock::new(v));
        }
        Ok(Malloc {
            size,
            chunks,
            mlock,
        })
    }

    /// Visit `[offset, offset+len)` chunk by chunk:
    /// `f(chunk index, offset in chunk, length, offset in request)`.
    fn for_chunks(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(usize, usize, usize, usize) -> Result<()>,
    ) -> Result<()> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| Error::new(Errno::EIO, "malloc: request beyond end of disk"))?;
        let mut pos = offset;
        while pos < end {
            let idx = (pos / CHUNK) as usize;
            let at = (pos % CHUNK) as usize;
            let n = (CHUNK - at as u64).min(end - pos) as usize;
            f(idx, at, n, (pos - offset) as usize)?;
            pos += n as u64;
        }
        Ok(())
    }
}

impl Allocator for Malloc {
    fn name(&self) -> &'static str {
        "malloc"
    }

    fn after_fork(&self) -> Result<()> {
        if !self.mlock {
            return Ok(());
        }
        for chunk in &self.chunks {
            let v = rd(chunk);
            let Some(ptr) = NonNull::new(v.as_ptr().cast_mut().cast::<c_void>()) else {
                continue;
            };
            // SAFETY: `ptr` points to `v.len()` initialised bytes owned by the
            // chunk, which is never resized; mlock only changes the residency
            // of those pages, it reads and writes nothing.
            unsafe { nix::sys::mman::mlock(ptr, v.len()) }.map_err(|e| Error::os(e, "mlock"))?;
        }
        Ok(())
    }

    fn preferred_block_size(&self) -> u32 {
        512
    }

    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.for_chunks(offset, buf.len() as u64, |i, at, n, pos| {
            buf[pos..pos + n].copy_from_slice(&rd(&self.chunks[i])[at..at + n]);
            Ok(())
        })
    }

    fn write(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.for_chunks(offset, buf.len() as u64, |i, at, n, pos| {
            wr(&self.chunks[i])[at..at + n].copy_from_slice(&buf[pos..pos + n]);
            Ok(())
        })
    }

    fn zero(&self, count: u64, offset: u64) -> Result<()> {
        self.for_chunks(offset, count, |i, at, n, _| {
            wr(&self.chunks[i])[at..at + n].fill(0);
            Ok(())
        })
    }

    fn extents(&self, extents: &mut Extents) -> Result<()> {
        let start = extents.start();
        extents.add(start, extents.end() - start, 0)
    }
}
