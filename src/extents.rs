//! The extents list a plugin fills in to answer a block-status query
//! (nbdkit's `struct nbdkit_extents`).
//!
//! A list is created for a request window `[start, end)`.  Plugins add
//! extents in ascending, contiguous order; the list clips them to the window,
//! drops empty ones and merges neighbours of the same type.  The first extent
//! added may begin before `start` (plugins often answer in whole pages).

use crate::error::{Error, Result};
use nix::errno::Errno;

/// The extent is a hole (unallocated): `NBD_STATE_HOLE`.
pub const HOLE: u32 = 1;
/// The extent reads as zeroes: `NBD_STATE_ZERO`.
pub const ZERO: u32 = 2;

/// Most extents kept in one list (the NBD limit on descriptors per reply).
pub const MAX_EXTENTS: usize = 1 << 20;

/// One extent: a byte range and its `base:allocation` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    pub flags: u32,
}

/// The extents found for one request window.
#[derive(Debug, Clone)]
pub struct Extents {
    start: u64,
    end: u64,
    next: Option<u64>,
    list: Vec<Extent>,
}

impl Extents {
    /// An empty list for the window `[start, end)`.
    pub fn new(start: u64, end: u64) -> Self {
        Extents {
            start,
            end,
            next: None,
            list: Vec::new(),
        }
    }

    /// Start of the window.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// End of the window (exclusive).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Where the next extent must begin, once one has been added.
    pub fn next_offset(&self) -> Option<u64> {
        self.next
    }

    /// The extents kept so far, clipped to the window.
    pub fn list(&self) -> &[Extent] {
        &self.list
    }

    /// Consume the list.
    pub fn into_vec(self) -> Vec<Extent> {
        self.list
    }

    /// Add the extent `[offset, offset+length)` with `flags`.
    pub fn add(&mut self, offset: u64, length: u64, flags: u32) -> Result<()> {
        match self.next {
            Some(next) if next != offset => {
                return Err(Error::new(
                    Errno::EINVAL,
                    "extents must be added in ascending order and must be contiguous",
                ))
            }
            None if offset > self.start => {
                return Err(Error::new(
                    Errno::EINVAL,
                    format!(
                        "first extent must not be > start ({offset} > {})",
                        self.start
                    ),
                ))
            }
            _ => {}
        }
        let end = offset
            .checked_add(length)
            .ok_or_else(|| Error::new(Errno::EINVAL, "extent offset + length overflows"))?;
        self.next = Some(end);
        // Clip to the window.
        let lo = offset.max(self.start);
        let hi = end.min(self.end);
        if lo >= hi || self.list.len() >= MAX_EXTENTS {
            return Ok(());
        }
        if let Some(last) = self.list.last_mut() {
            if last.flags == flags && last.offset + last.length == lo {
                last.length += hi - lo;
                return Ok(());
            }
        }
        self.list.push(Extent {
            offset: lo,
            length: hi - lo,
            flags,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_and_merges() {
        let mut e = Extents::new(100, 300);
        e.add(0, 150, 0).unwrap();
        e.add(150, 50, 0).unwrap();
        e.add(200, 1000, HOLE | ZERO).unwrap();
        e.add(1200, 10, 0).unwrap();
        assert_eq!(
            e.list(),
            &[
                Extent {
                    offset: 100,
                    length: 100,
                    flags: 0
                },
                Extent {
                    offset: 200,
                    length: 100,
                    flags: 3
                },
            ]
        );
    }

    #[test]
    fn rejects_gaps_and_late_first_extent() {
        let mut e = Extents::new(100, 300);
        assert!(e.add(101, 10, 0).is_err());
        e.add(100, 10, 0).unwrap();
        assert!(e.add(111, 10, 0).is_err());
    }

    #[test]
    fn zero_length_extents_are_ignored() {
        let mut e = Extents::new(0, 10);
        e.add(0, 0, 0).unwrap();
        e.add(0, 10, 0).unwrap();
        assert_eq!(e.list().len(), 1);
    }
}
