//! A next layer for unit tests of filters: fixed capabilities, no data.

use crate::error::Result;
use crate::extents::Extents;
use crate::layers::Context;
use crate::plugin::{BlockSize, CacheMode, FuaMode, ZeroMode};

/// Answers the capability questions as configured; data calls succeed.
pub struct Fake {
    pub flush: bool,
    pub fua: FuaMode,
    pub zero: ZeroMode,
}

impl Context for Fake {
    fn prepare(&self, _readonly: bool) -> Result<()> {
        Ok(())
    }
    fn finalize(&self) -> Result<()> {
        Ok(())
    }
    fn get_size(&self) -> Result<u64> {
        Ok(1 << 20)
    }
    fn export_description(&self) -> Result<Option<String>> {
        Ok(None)
    }
    fn block_size(&self) -> Result<Option<BlockSize>> {
        Ok(None)
    }
    fn can_write(&self) -> Result<bool> {
        Ok(true)
    }
    fn can_flush(&self) -> Result<bool> {
        Ok(self.flush)
    }
    fn is_rotational(&self) -> Result<bool> {
        Ok(false)
    }
    fn can_trim(&self) -> Result<bool> {
        Ok(true)
    }
    fn can_zero(&self) -> Result<ZeroMode> {
        Ok(self.zero)
    }
    fn can_fast_zero(&self) -> Result<bool> {
        Ok(false)
    }
    fn can_extents(&self) -> Result<bool> {
        Ok(false)
    }
    fn can_fua(&self) -> Result<FuaMode> {
        Ok(self.fua)
    }
    fn can_multi_conn(&self) -> Result<bool> {
        Ok(false)
    }
    fn can_cache(&self) -> Result<CacheMode> {
        Ok(CacheMode::None)
    }
    fn pread(&self, buf: &mut [u8], _offset: u64, _flags: u32) -> Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn pwrite(&self, _buf: &[u8], _offset: u64, _flags: u32) -> Result<()> {
        Ok(())
    }
    fn flush(&self, _flags: u32) -> Result<()> {
        Ok(())
    }
    fn trim(&self, _count: u64, _offset: u64, _flags: u32) -> Result<()> {
        Ok(())
    }
    fn zero(&self, _count: u64, _offset: u64, _flags: u32) -> Result<()> {
        Ok(())
    }
    fn extents(&self, extents: &mut Extents, _flags: u32) -> Result<()> {
        let (s, e) = (extents.start(), extents.end());
        extents.add(s, e - s, 0)
    }
    fn cache(&self, _count: u64, _offset: u64, _flags: u32) -> Result<()> {
        Ok(())
    }
}
