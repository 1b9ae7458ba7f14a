//! The full plugin: `nbdkit full [size=]SIZE`.  A disk that has run out of
//! space: reads return zeroes, and every write, trim and write-zeroes
//! request fails with `ENOSPC`.

use super::pattern::{config_size, require_size};
use crate::error::{Error, Result};
use crate::extents::{Extents, HOLE, ZERO};
use crate::plugin::{CacheMode, Handle, Plugin};
use nix::errno::Errno;

/// The full plugin.
#[derive(Debug, Default)]
pub struct FullPlugin {
    size: Option<u64>,
}

impl FullPlugin {
    /// An unconfigured full plugin.
    pub fn new() -> Self {
        FullPlugin::default()
    }
}

const CALLBACKS: &[&str] = &[
    "config",
    "config_complete",
    "config_help",
    "open",
    "get_size",
    "can_multi_conn",
    "can_cache",
    "pread",
    "pwrite",
    "trim",
    "extents",
];

impl Plugin for FullPlugin {
    fn name(&self) -> &'static str {
        "full"
    }

    fn description(&self) -> &'static str {
        "full plugin: reads return zeroes, writes fail with ENOSPC"
    }

    fn magic_config_key(&self) -> Option<&'static str> {
        Some("size")
    }

    fn config_help(&self) -> &'static str {
        "[size=]<SIZE>  (required) Size of the backing disk"
    }

    fn callbacks(&self) -> &'static [&'static str] {
        CALLBACKS
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        config_size(&mut self.size, key, value)
    }

    fn config_complete(&mut self) -> Result<()> {
        require_size(self.size)
    }

    fn open(&self, _readonly: bool, _export_name: &str, _is_tls: bool) -> Result<Box<dyn Handle>> {
        Ok(Box::new(FullHandle {
            size: self.size.unwrap_or(0),
        }))
    }
}

fn no_space() -> Error {
    Error::os(Errno::ENOSPC, "full")
}

/// A connection to the full disk.
#[derive(Debug)]
pub struct FullHandle {
    size: u64,
}

impl Handle for FullHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn can_write(&self) -> Result<bool> {
        Ok(true)
    }

    fn can_trim(&self) -> Result<bool> {
        Ok(true)
    }

    fn can_extents(&self) -> Result<bool> {
        Ok(true)
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

    // Write-zeroes is left to the server's emulation, which calls pwrite
    // and so fails with ENOSPC too (and fails fast zero requests at once).
    fn pwrite(&self, _buf: &[u8], _offset: u64, _fua: bool) -> Result<()> {
        Err(no_space())
    }

    fn trim(&self, _count: u64, _offset: u64, _fua: bool) -> Result<()> {
        Err(no_space())
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

    #[test]
    fn reads_zero_writes_fail_enospc() {
        let mut p = FullPlugin::new();
        assert!(p.config_complete().is_err());
        p.config("size", "64K").unwrap();
        p.config_complete().unwrap();
        let h = p.open(false, "", false).unwrap();
        let mut buf = [1u8; 100];
        h.pread(&mut buf, 10).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        assert_eq!(h.pwrite(&buf, 0, false).unwrap_err().errno(), Errno::ENOSPC);
        assert_eq!(h.trim(10, 0, false).unwrap_err().errno(), Errno::ENOSPC);
        let mut e = Extents::new(0, 65536);
        h.extents(&mut e, false).unwrap();
        assert_eq!(e.list()[0].flags, HOLE | ZERO);
    }
}
