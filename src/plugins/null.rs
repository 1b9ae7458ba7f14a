//! The null plugin: `nbdkit null [[size=]SIZE]`.  Reads return zeroes,
//! writes are discarded; the whole disk is one hole that reads as zero.

use crate::error::{Error, Result};
use crate::extents::{Extents, HOLE, ZERO};
use crate::parse::parse_size;
use crate::plugin::{CacheMode, FuaMode, Handle, Plugin, ZeroFlags, ZeroMode};

/// The null plugin.
#[derive(Debug, Default)]
pub struct NullPlugin {
    size: u64,
    size_given: bool,
}

impl NullPlugin {
    /// An unconfigured null plugin (size 0).
    pub fn new() -> Self {
        NullPlugin::default()
    }
}

const CALLBACKS: &[&str] = &[
    "config",
    "config_help",
    "open",
    "get_size",
    "can_fua",
    "can_multi_conn",
    "can_cache",
    "can_fast_zero",
    "pread",
    "pwrite",
    "flush",
    "trim",
    "zero",
    "extents",
    "cache",
];

impl Plugin for NullPlugin {
    fn name(&self) -> &'static str {
        "null"
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn description(&self) -> &'static str {
        "null plugin: reads return zeroes, writes are discarded"
    }

    fn magic_config_key(&self) -> Option<&'static str> {
        Some("size")
    }

    fn config_help(&self) -> &'static str {
        "[size=]<SIZE>  Size of the backing disk"
    }

    fn callbacks(&self) -> &'static [&'static str] {
        CALLBACKS
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "size" if self.size_given => Err(Error::config(format!(
                "size given more than once (second: {value})"
            ))),
            "size" => {
                self.size = parse_size(value)?;
                self.size_given = true;
                Ok(())
            }
            _ => Err(Error::config(format!("unknown parameter '{key}'"))),
        }
    }

    fn open(&self, _readonly: bool, _export_name: &str, _is_tls: bool) -> Result<Box<dyn Handle>> {
        Ok(Box::new(NullHandle { size: self.size }))
    }
}

/// A connection to the null disk.
#[derive(Debug)]
pub struct NullHandle {
    size: u64,
}

impl Handle for NullHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn can_write(&self) -> Result<bool> {
        Ok(true)
    }

    fn can_flush(&self) -> Result<bool> {
        Ok(true)
    }

    fn can_trim(&self) -> Result<bool> {
        Ok(true)
    }

    fn can_zero(&self) -> Result<ZeroMode> {
        Ok(ZeroMode::Native)
    }

    fn can_fast_zero(&self) -> Result<bool> {
        Ok(true)
    }

    fn can_extents(&self) -> Result<bool> {
        Ok(true)
    }

    fn can_fua(&self) -> Result<FuaMode> {
        Ok(FuaMode::Native)
    }

    fn can_multi_conn(&self) -> Result<bool> {
        Ok(true)
    }

    fn can_cache(&self) -> Result<CacheMode> {
        Ok(CacheMode::Native)
    }

    fn pread(&self, buf: &mut [u8], _offset: u64) -> Result<()> {
        buf.fill(0);
        Ok(())
    }

    fn pwrite(&self, _buf: &[u8], _offset: u64, _fua: bool) -> Result<()> {
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn trim(&self, _count: u64, _offset: u64, _fua: bool) -> Result<()> {
        Ok(())
    }

    fn zero(&self, _count: u64, _offset: u64, _flags: ZeroFlags) -> Result<()> {
        Ok(())
    }

    fn extents(&self, extents: &mut Extents, _req_one: bool) -> Result<()> {
        let start = extents.start();
        extents.add(start, extents.end() - start, HOLE | ZERO)
    }

    fn cache(&self, _count: u64, _offset: u64) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(size: &str) -> Box<dyn Handle> {
        let mut p = NullPlugin::new();
        p.config("size", size).unwrap();
        p.config_complete().unwrap();
        p.open(false, "", false).unwrap()
    }

    #[test]
    fn reads_zero_and_discards_writes() {
        let h = open("100M");
        assert_eq!(h.get_size().unwrap(), 100 << 20);
        h.pwrite(&[1u8; 256], 1024, false).unwrap();
        let mut buf = vec![0xffu8; 2048];
        h.pread(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        h.zero(10, 0, ZeroFlags::default()).unwrap();
        h.trim(10, 0, false).unwrap();
        h.flush().unwrap();
    }

    #[test]
    fn one_hole_extent() {
        let h = open("64K");
        let mut e = Extents::new(0, 65536);
        h.extents(&mut e, false).unwrap();
        assert_eq!(e.list().len(), 1);
        assert_eq!(e.list()[0].length, 65536);
        assert_eq!(e.list()[0].flags, HOLE | ZERO);
    }

    #[test]
    fn capabilities_and_config() {
        let h = open("0");
        assert_eq!(h.get_size().unwrap(), 0);
        assert!(h.can_write().unwrap() && h.can_multi_conn().unwrap());
        assert_eq!(h.can_fua().unwrap(), FuaMode::Native);
        assert_eq!(h.can_cache().unwrap(), CacheMode::Native);
        assert!(h.can_fast_zero().unwrap());
        let mut p = NullPlugin::new();
        let e = p.config("foo", "1").unwrap_err();
        assert_eq!(e.message(), "unknown parameter 'foo'");
        assert!(p.config("size", "x").is_err());
        assert_eq!(p.magic_config_key(), Some("size"));
        // Size is optional.
        p.config_complete().unwrap();
    }
}
