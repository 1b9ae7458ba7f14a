//! The ones plugin: `nbdkit ones [[size=]SIZE] [byte=N]`.  Every byte reads
//! as 0xff (or the byte given); writes, trims and write-zeroes succeed and
//! are thrown away.

use super::pattern::config_size;
use crate::error::Result;
use crate::extents::Extents;
use crate::parse::parse_unsigned;
use crate::plugin::{CacheMode, FuaMode, Handle, Plugin, ZeroFlags, ZeroMode};

/// The ones plugin.
#[derive(Debug)]
pub struct OnesPlugin {
    size: Option<u64>,
    byte: u8,
    byte_given: bool,
}

impl Default for OnesPlugin {
    fn default() -> Self {
        OnesPlugin {
            size: None,
            byte: 0xff,
            byte_given: false,
        }
    }
}

impl OnesPlugin {
    /// An unconfigured ones plugin (size 0, byte 0xff).
    pub fn new() -> Self {
        OnesPlugin::default()
    }
}

const CALLBACKS: &[&str] = &[
    "config",
    "config_help",
    "open",
    "get_size",
    "can_multi_conn",
    "can_cache",
    "can_fast_zero",
    "can_fua",
    "pread",
    "pwrite",
    "zero",
    "trim",
    "flush",
    "extents",
];

impl Plugin for OnesPlugin {
    fn name(&self) -> &'static str {
        "ones"
    }

    fn description(&self) -> &'static str {
        "ones plugin: every byte reads as 0xff (or byte=N), writes are discarded"
    }

    fn magic_config_key(&self) -> Option<&'static str> {
        Some("size")
    }

    fn config_help(&self) -> &'static str {
        "byte=<BYTE>    Repeating byte to use (default: 0xff)\n\
         [size=]<SIZE>  Size of the backing disk (default: 0)"
    }

    fn callbacks(&self) -> &'static [&'static str] {
        CALLBACKS
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        if key == "byte" {
            if self.byte_given {
                return Err(crate::error::Error::config(format!(
                    "byte given more than once (second: {value})"
                )));
            }
            self.byte = parse_unsigned("byte", value, 255)? as u8;
            self.byte_given = true;
            return Ok(());
        }
        config_size(&mut self.size, key, value)
    }

    fn open(&self, _readonly: bool, _export_name: &str, _is_tls: bool) -> Result<Box<dyn Handle>> {
        Ok(Box::new(OnesHandle {
            size: self.size.unwrap_or(0),
            byte: self.byte,
        }))
    }
}

/// A connection to the ones disk.
#[derive(Debug)]
pub struct OnesHandle {
    size: u64,
    byte: u8,
}

impl Handle for OnesHandle {
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
        buf.fill(self.byte);
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
        // All data: the disk is not sparse and does not read as zero.
        let start = extents.start();
        extents.add(start, extents.end() - start, 0)
    }

    fn cache(&self, _count: u64, _offset: u64) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_byte_and_byte_parameter() {
        let p = OnesPlugin::new();
        let h = p.open(false, "", false).unwrap();
        assert_eq!(h.get_size().unwrap(), 0);
        let mut p = OnesPlugin::new();
        p.config("size", "1K").unwrap();
        let h = p.open(false, "", false).unwrap();
        let mut buf = [0u8; 10];
        h.pread(&mut buf, 3).unwrap();
        assert_eq!(buf, [0xff; 10]);
        for (v, b) in [
            ("0x55", 0x55u8),
            ("7", 7),
            ("010", 8),
            ("255", 255),
            ("0", 0),
        ] {
            let mut p = OnesPlugin::new();
            p.config("byte", v).unwrap();
            let h = p.open(false, "", false).unwrap();
            h.pread(&mut buf, 0).unwrap();
            assert_eq!(buf, [b; 10], "byte={v}");
        }
        for bad in ["256", "-1", "x", "", "0x"] {
            assert!(OnesPlugin::new().config("byte", bad).is_err(), "byte={bad}");
        }
        let mut p = OnesPlugin::new();
        p.config("byte", "1").unwrap();
        assert!(p.config("byte", "2").is_err());
    }
}
