//! The `checkwrite` filter: turn any plugin into a checker for copies.
//! The plugin is opened read-only and holds the expected data; every write
//! is compared with it instead of being stored, and fails with EIO if it
//! differs.  Zero and trim requests check that the range reads as zeroes
//! (using the plugin's block status when it has it, to skip known holes).
//! Flushes succeed and do nothing.  So
//! `nbdcopy SOURCE nbd://checkwrite-of-SOURCE` succeeds only if the copy
//! is exact.

use crate::error::{Error, Result};
use crate::extents::{Extents, ZERO};
use crate::filter::{Filter, FilterContext};
use crate::layers::{flags, Backend, Context};
use crate::plugin::{FuaMode, ZeroMode};
use nix::errno::Errno;

/// Largest buffer read at a time to check zeroes.
const CHUNK: u64 = 4 << 20;

#[derive(Default)]
pub struct CheckWrite;

impl CheckWrite {
    pub fn new() -> Self {
        CheckWrite
    }
}

impl Filter for CheckWrite {
    fn name(&self) -> &'static str {
        "checkwrite"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit checkwrite filter")
    }

    fn description(&self) -> &'static str {
        "Check that data written matches the plugin's data."
    }

    fn open(
        &self,
        next: &dyn Backend,
        _readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        // The plugin only ever supplies the expected data.
        Ok(Box::new(Ctx(next.open(true, export, is_tls)?)))
    }
}

struct Ctx(Box<dyn Context>);

fn mismatch() -> Error {
    Error::new(Errno::EIO, "data written does not match expected")
}

impl Ctx {
    /// Does `[offset, offset+count)` read as zeroes in the plugin?
    fn check_zero(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        let end = offset + count;
        let fast = f & flags::FAST_ZERO != 0;
        let mut pos = offset;
        if self.0.can_extents()? {
            while pos < end {
                let mut ext = Extents::new(pos, end);
                self.0.extents(&mut ext, 0)?;
                let list = ext.into_vec();
                if list.is_empty() {
                    return Err(Error::new(Errno::EIO, "checkwrite: no extents returned"));
                }
                for e in list {
                    let (lo, hi) = (e.offset.max(pos), (e.offset + e.length).min(end));
                    if lo >= hi {
                        continue;
                    }
                    if e.flags & ZERO == 0 {
                        if fast {
                            return Err(Error::new(
                                Errno::ENOTSUP,
                                "checkwrite: fast zero needs reading data",
                            ));
                        }
                        self.read_zeroes(hi - lo, lo)?;
                    }
                    pos = hi;
                }
            }
            return Ok(());
        }
        if fast {
            return Err(Error::new(
                Errno::ENOTSUP,
                "checkwrite: fast zero needs reading data",
            ));
        }
        self.read_zeroes(count, offset)
    }

    fn read_zeroes(&self, mut count: u64, mut offset: u64) -> Result<()> {
        let mut buf = vec![0u8; count.min(CHUNK) as usize];
        while count > 0 {
            let n = count.min(buf.len() as u64) as usize;
            self.0.pread(&mut buf[..n], offset, 0)?;
            if buf[..n].iter().any(|&b| b != 0) {
                return Err(mismatch());
            }
            count -= n as u64;
            offset += n as u64;
        }
        Ok(())
    }
}

impl FilterContext for Ctx {
    fn next(&self) -> &dyn Context {
        &*self.0
    }

    // Whatever the plugin can do, every write-like request is accepted.
    fn can_write(&self) -> Result<bool> {
        Ok(true)
    }
    fn can_flush(&self) -> Result<bool> {
        Ok(true)
    }
    fn can_fua(&self) -> Result<FuaMode> {
        Ok(FuaMode::Native)
    }
    fn can_trim(&self) -> Result<bool> {
        Ok(true)
    }
    fn can_zero(&self) -> Result<ZeroMode> {
        Ok(ZeroMode::Native)
    }
    fn can_fast_zero(&self) -> Result<bool> {
        // Better to advertise it and refuse fast zeroes that need reading.
        Ok(true)
    }
    fn can_multi_conn(&self) -> Result<bool> {
        Ok(true)
    }

    fn pwrite(&self, buf: &[u8], offset: u64, _flags: u32) -> Result<()> {
        let mut expected = vec![0u8; buf.len()];
        self.0.pread(&mut expected, offset, 0)?;
        if expected != buf {
            return Err(mismatch());
        }
        Ok(())
    }

    fn flush(&self, _flags: u32) -> Result<()> {
        Ok(())
    }

    fn trim(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        self.check_zero(count, offset, f)
    }

    fn zero(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        self.check_zero(count, offset, f)
    }
}
