//! The allocator interface behind the memory plugin: a byte-addressed
//! virtual disk that can be read, written, zeroed and asked for extents.
//!
//! Offsets and counts reaching an allocator have been checked against the
//! export size by the server; allocators only need to be correct inside it.

use crate::error::Result;
use crate::extents::Extents;

/// Size of a page of the sparse and zstd allocators (nbdkit's 32 KiB).
pub const PAGE_SIZE: usize = 32768;

/// Storage for one virtual disk, shared by all connections.
pub trait Allocator: Send + Sync {
    /// The allocator's name (`sparse`, `malloc`, `zstd`).
    fn name(&self) -> &'static str;

    /// The preferred I/O size reported in `NBD_INFO_BLOCK_SIZE`.
    fn preferred_block_size(&self) -> u32;

    /// Fill `buf` from `offset`; unwritten bytes read as zero.
    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Store `buf` at `offset`.
    fn write(&self, buf: &[u8], offset: u64) -> Result<()>;

    /// Make `[offset, offset+count)` read as zero, releasing memory where
    /// whole pages become zero.
    fn zero(&self, count: u64, offset: u64) -> Result<()>;

    /// Describe allocation over the window of `extents`.
    fn extents(&self, extents: &mut Extents) -> Result<()>;

    /// Called once in the serving process before any connection (for work
    /// that a fork would undo, such as locking pages in RAM).
    fn after_fork(&self) -> Result<()> {
        Ok(())
    }
}

/// Split `[offset, offset+len)` into page-sized pieces:
/// `(page index, offset inside the page, length, offset inside the request)`.
pub fn page_chunks(offset: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize, usize)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let pos = offset + done as u64;
        let page = pos / PAGE_SIZE as u64;
        let in_page = (pos % PAGE_SIZE as u64) as usize;
        let n = (PAGE_SIZE - in_page).min(len - done);
        let item = (page, in_page, n, done);
        done += n;
        Some(item)
    })
}

/// Like [`page_chunks`] for a 64-bit count (zero and trim requests may
/// exceed `usize` on paper): `(page index, offset in page, length)`.
pub fn page_ranges(offset: u64, count: u64) -> impl Iterator<Item = (u64, usize, usize)> {
    let end = offset.saturating_add(count);
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let page = pos / PAGE_SIZE as u64;
        let in_page = (pos % PAGE_SIZE as u64) as usize;
        let n = ((PAGE_SIZE - in_page) as u64).min(end - pos) as usize;
        pos += n as u64;
        Some((page, in_page, n))
    })
}

/// True if every byte of `buf` is zero.
pub fn is_zero(buf: &[u8]) -> bool {
    // Compare in word-sized pieces; this vectorises well.
    let (words, rest) = buf.split_at(buf.len() / 8 * 8);
    words
        .chunks_exact(8)
        .all(|c| u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) == 0)
        && rest.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_straddle_pages() {
        let v: Vec<_> = page_chunks(PAGE_SIZE as u64 - 10, 20).collect();
        assert_eq!(v, vec![(0, PAGE_SIZE - 10, 10, 0), (1, 0, 10, 10)]);
        let v: Vec<_> = page_ranges(5, 2 * PAGE_SIZE as u64).collect();
        assert_eq!(v, vec![(0, 5, PAGE_SIZE - 5), (1, 0, PAGE_SIZE), (2, 0, 5)]);
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0; 17]));
        let mut b = [0u8; 17];
        b[16] = 1;
        assert!(!is_zero(&b));
        b[16] = 0;
        b[3] = 1;
        assert!(!is_zero(&b));
        assert!(is_zero(&[]));
    }
}
