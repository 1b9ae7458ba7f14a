//! The example1 plugin: `nbdkit example1`.  A fixed 100 MiB read-only disk
//! whose first sector is an MBR with one empty Linux partition; everything
//! else reads as zero.  It exists to show the smallest useful plugin.

use crate::error::{Error, Result};
use crate::extents::{Extents, HOLE, ZERO};
use crate::plugin::{Handle, Plugin, ThreadModel};

/// Size of the disk: 100 MiB.
pub const SIZE: u64 = 100 * 1024 * 1024;

const SECTOR: u64 = 512;

/// First sector of the single partition.
const PART_START: u32 = 128;

/// The MBR in sector 0: one partition of type 0x83 from LBA 128 to the end
/// of the disk, and the 0x55AA boot signature.
fn mbr() -> [u8; SECTOR as usize] {
    let mut s = [0u8; SECTOR as usize];
    let sectors = (SIZE / SECTOR) as u32 - PART_START;
    let e = &mut s[446..462];
    e[0] = 0x00; // not bootable
    e[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]); // CHS start: use LBA
    e[4] = 0x83; // Linux
    e[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]); // CHS end: use LBA
    e[8..12].copy_from_slice(&PART_START.to_le_bytes());
    e[12..16].copy_from_slice(&sectors.to_le_bytes());
    s[510] = 0x55;
    s[511] = 0xaa;
    s
}

/// The example1 plugin.
#[derive(Debug, Default)]
pub struct Example1Plugin;

impl Example1Plugin {
    /// The example1 plugin (it has nothing to configure).
    pub fn new() -> Self {
        Example1Plugin
    }
}

const CALLBACKS: &[&str] = &["open", "get_size", "can_multi_conn", "pread", "extents"];

impl Plugin for Example1Plugin {
    fn name(&self) -> &'static str {
        "example1"
    }

    fn description(&self) -> &'static str {
        "example1 plugin: a 100M read-only disk with one empty partition"
    }

    fn config_help(&self) -> &'static str {
        "This plugin takes no parameters."
    }

    fn callbacks(&self) -> &'static [&'static str] {
        CALLBACKS
    }

    fn thread_model(&self) -> ThreadModel {
        ThreadModel::Parallel
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn config(&mut self, key: &str, _value: &str) -> Result<()> {
        Err(Error::config(format!("unknown parameter '{key}'")))
    }

    fn open(&self, _readonly: bool, _export_name: &str, _is_tls: bool) -> Result<Box<dyn Handle>> {
        Ok(Box::new(Example1Handle { mbr: mbr() }))
    }
}

/// A connection to the example1 disk.
#[derive(Debug)]
pub struct Example1Handle {
    mbr: [u8; SECTOR as usize],
}

impl Handle for Example1Handle {
    fn get_size(&self) -> Result<u64> {
        Ok(SIZE)
    }

    fn can_write(&self) -> Result<bool> {
        Ok(false)
    }

    fn can_extents(&self) -> Result<bool> {
        Ok(true)
    }

    fn can_multi_conn(&self) -> Result<bool> {
        Ok(true)
    }

    fn pread(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        buf.fill(0);
        if offset < SECTOR {
            let from = offset as usize;
            let n = buf.len().min(SECTOR as usize - from);
            buf[..n].copy_from_slice(&self.mbr[from..from + n]);
        }
        Ok(())
    }

    fn extents(&self, extents: &mut Extents, _req_one: bool) -> Result<()> {
        let start = extents.start();
        let end = extents.end();
        let mut pos = start;
        if pos < SECTOR {
            let n = SECTOR.min(end) - pos;
            extents.add(pos, n, 0)?;
            pos += n;
        }
        if pos < end {
            extents.add(pos, end - pos, HOLE | ZERO)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sector_zero_is_an_mbr_and_the_rest_is_zero() {
        let p = Example1Plugin::new();
        let h = p.open(true, "", false).unwrap();
        assert_eq!(h.get_size().unwrap(), 104857600);
        assert!(!h.can_write().unwrap() && h.can_multi_conn().unwrap());
        let mut buf = vec![0xffu8; 1024];
        h.pread(&mut buf, 0).unwrap();
        assert_eq!(&buf[510..512], &[0x55, 0xaa]);
        assert_eq!(buf[446 + 4], 0x83);
        assert_eq!(u32::from_le_bytes(buf[454..458].try_into().unwrap()), 128);
        assert_eq!(
            u32::from_le_bytes(buf[458..462].try_into().unwrap()),
            204800 - 128
        );
        assert!(buf[512..].iter().all(|&b| b == 0));
        // A read starting inside sector 0.
        let mut part = vec![0u8; 4];
        h.pread(&mut part, 509).unwrap();
        assert_eq!(part, [0, 0x55, 0xaa, 0]);
        let mut tail = vec![0xffu8; 512];
        h.pread(&mut tail, SIZE - 512).unwrap();
        assert!(tail.iter().all(|&b| b == 0));
    }

    #[test]
    fn extents_data_then_hole() {
        let h = Example1Plugin::new().open(true, "", false).unwrap();
        let mut e = Extents::new(0, 65536);
        h.extents(&mut e, false).unwrap();
        assert_eq!(e.list()[0].length, 512);
        assert_eq!(e.list()[0].flags, 0);
        assert_eq!(e.list()[1].flags, HOLE | ZERO);
        let mut e = Extents::new(4096, 8192);
        h.extents(&mut e, false).unwrap();
        assert_eq!(e.list().len(), 1);
        assert_eq!(e.list()[0].flags, HOLE | ZERO);
    }

    #[test]
    fn takes_no_parameters() {
        let mut p = Example1Plugin::new();
        let e = p.config("foo", "bar").unwrap_err();
        assert_eq!(e.message(), "unknown parameter 'foo'");
        assert_eq!(p.magic_config_key(), None);
        assert_eq!(p.thread_model(), ThreadModel::Parallel);
        assert!(p.quick_requests());
    }
}
