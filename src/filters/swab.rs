//! The `swab` filter: swap the bytes of every 2-, 4- or 8-byte word
//! (`swab-bits=16` default, `32`, `64`; `8` turns it off).  Reads disks
//! written by byte-swapped controllers (the Atari Falcon's IDE), or turns a
//! big-endian pattern little-endian.
//!
//! As nbdkit, requests must be aligned to the word size (misaligned ones
//! fail with EINVAL; stack the `blocksize` filter above for byte access),
//! the size is rounded down to whole words, the minimum block size
//! advertised is the word size, and block status is hidden (the plugin's
//! extents need not be word-aligned).

use crate::error::{Error, Result};
use crate::extents::Extents;
use crate::filter::{Filter, FilterContext, PassThrough};
use crate::layers::{Backend, Context};
use crate::parse::parse_unsigned;
use crate::plugin::BlockSize;
use nix::errno::Errno;

pub struct Swab {
    /// Word size in bytes: 1 (off), 2, 4 or 8.
    bytes: u64,
}

impl Swab {
    pub fn new() -> Self {
        Swab { bytes: 2 }
    }
}

impl Default for Swab {
    fn default() -> Self {
        Self::new()
    }
}

/// Swap the bytes of each `n`-byte word of `buf` in place.
fn swap_words(buf: &mut [u8], n: usize) {
    if n > 1 {
        for w in buf.chunks_exact_mut(n) {
            w.reverse();
        }
    }
}

impl Filter for Swab {
    fn name(&self) -> &'static str {
        "swab"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit byte-swapping filter")
    }

    fn description(&self) -> &'static str {
        "Swap the byte order of 16, 32 or 64 bit words."
    }

    fn config_help(&self) -> &'static str {
        "swab-bits=8|16|32|64  Size of the words to swap (default 16)."
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "swab-bits" {
            return Ok(false);
        }
        self.bytes = match parse_unsigned("swab-bits", value, u64::MAX)? {
            8 => 1,
            16 => 2,
            32 => 4,
            64 => 8,
            _ => {
                return Err(Error::config(format!(
                    "swab: invalid swab-bits '{value}', must be 8, 16, 32 or 64"
                )))
            }
        };
        Ok(true)
    }

    fn transparent(&self) -> bool {
        self.bytes == 1
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        Ok(Box::new(Ctx {
            bytes: self.bytes,
            next: PassThrough(next.open(readonly, export, is_tls)?),
        }))
    }
}

struct Ctx {
    bytes: u64,
    next: PassThrough,
}

impl Ctx {
    fn check(&self, count: u64, offset: u64) -> Result<()> {
        if !count.is_multiple_of(self.bytes) || !offset.is_multiple_of(self.bytes) {
            return Err(Error::new(
                Errno::EINVAL,
                "swab: requests to this filter must be aligned",
            ));
        }
        Ok(())
    }
}

impl FilterContext for Ctx {
    fn next(&self) -> &dyn Context {
        self.next.next()
    }

    fn get_size(&self) -> Result<u64> {
        let size = self.next().get_size()?;
        Ok(size - size % self.bytes)
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        let n = self.bytes as u32;
        Ok(Some(match self.next().block_size()? {
            None => BlockSize {
                minimum: n,
                preferred: 512,
                maximum: u32::MAX,
            },
            Some(b) => BlockSize {
                minimum: b.minimum.max(n),
                preferred: b.preferred.max(n),
                maximum: b.maximum - b.maximum % n,
            },
        }))
    }

    fn can_extents(&self) -> Result<bool> {
        Ok(false)
    }

    fn extents(&self, extents: &mut Extents, _flags: u32) -> Result<()> {
        // Not advertised; if asked anyway, everything is data.
        let (start, end) = (extents.start(), extents.end());
        extents.add(start, end - start, 0)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: u32) -> Result<()> {
        self.check(buf.len() as u64, offset)?;
        self.next().pread(buf, offset, flags)?;
        swap_words(buf, self.bytes as usize);
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: u32) -> Result<()> {
        self.check(buf.len() as u64, offset)?;
        let mut swapped = buf.to_vec();
        swap_words(&mut swapped, self.bytes as usize);
        self.next().pwrite(&swapped, offset, flags)
    }

    fn trim(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.check(count, offset)?;
        self.next().trim(count, offset, flags)
    }

    fn zero(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.check(count, offset)?;
        self.next().zero(count, offset, flags)
    }

    fn cache(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.check(count, offset)?;
        self.next().cache(count, offset, flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_words() {
        let mut b: Vec<u8> = (0..16).collect();
        swap_words(&mut b, 2);
        assert_eq!(&b[..6], &[1, 0, 3, 2, 5, 4]);
        let mut b: Vec<u8> = (0..16).collect();
        swap_words(&mut b, 4);
        assert_eq!(&b[..8], &[3, 2, 1, 0, 7, 6, 5, 4]);
        let mut b: Vec<u8> = (0..16).collect();
        swap_words(&mut b, 8);
        assert_eq!(&b[..9], &[7, 6, 5, 4, 3, 2, 1, 0, 15]);
        let mut b: Vec<u8> = (0..4).collect();
        swap_words(&mut b, 1);
        assert_eq!(b, [0, 1, 2, 3]);
    }

    #[test]
    fn parameters() {
        let mut f = Swab::new();
        assert_eq!(f.bytes, 2);
        for (v, n) in [("8", 1), ("32", 4), ("64", 8), ("16", 2)] {
            assert!(f.config("swab-bits", v).unwrap());
            assert_eq!(f.bytes, n);
        }
        assert!(!f.transparent());
        f.config("swab-bits", "8").unwrap();
        assert!(f.transparent());
        assert!(!f.config("bits", "8").unwrap());
        for bad in ["12", "0", "x", "", "-16", "128"] {
            assert!(f.config("swab-bits", bad).is_err(), "{bad:?}");
        }
    }
}
