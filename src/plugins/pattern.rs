//! The pattern plugin: `nbdkit pattern [size=]SIZE`.  A read-only disk in
//! which every 8-byte word holds its own offset, big-endian, so any byte
//! read shows where it came from.  Reads are computed, never stored.

use crate::error::{Error, Result};
use crate::parse::parse_size;
use crate::plugin::{CacheMode, Handle, Plugin};

/// The pattern plugin.
#[derive(Debug, Default)]
pub struct PatternPlugin {
    size: Option<u64>,
}

impl PatternPlugin {
    /// An unconfigured pattern plugin.
    pub fn new() -> Self {
        PatternPlugin::default()
    }
}

/// Fill `buf` with the pattern as read from `offset`: byte `o` of the disk
/// is byte `o % 8` of the big-endian encoding of `o & !7`.
pub fn fill(buf: &mut [u8], offset: u64) {
    let mut off = offset;
    let mut rest = buf;
    // An unaligned head: the tail end of one word.
    let skip = (off % 8) as usize;
    if skip != 0 {
        let word = (off - skip as u64).to_be_bytes();
        let n = (8 - skip).min(rest.len());
        rest[..n].copy_from_slice(&word[skip..skip + n]);
        rest = &mut rest[n..];
        off += n as u64;
    }
    let mut words = rest.chunks_exact_mut(8);
    for w in &mut words {
        w.copy_from_slice(&off.to_be_bytes());
        off += 8;
    }
    let tail = words.into_remainder();
    let n = tail.len();
    tail.copy_from_slice(&off.to_be_bytes()[..n]);
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
];

impl Plugin for PatternPlugin {
    fn name(&self) -> &'static str {
        "pattern"
    }

    fn description(&self) -> &'static str {
        "pattern plugin: each 8-byte word holds its offset, big-endian (read-only)"
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
        Ok(Box::new(PatternHandle {
            size: self.size.unwrap_or(0),
        }))
    }
}

/// Accept `size=` once (shared by the synthetic plugins); any other key is
/// an unknown parameter.
pub(crate) fn config_size(slot: &mut Option<u64>, key: &str, value: &str) -> Result<()> {
    match key {
        "size" if slot.is_some() => Err(Error::config(format!(
            "size given more than once (second: {value})"
        ))),
        "size" => {
            *slot = Some(parse_size(value)?);
            Ok(())
        }
        _ => Err(Error::config(format!("unknown parameter '{key}'"))),
    }
}

/// The error for a missing required `size=`.
pub(crate) fn require_size(size: Option<u64>) -> Result<()> {
    match size {
        Some(_) => Ok(()),
        None => Err(Error::config(
            "you must specify size=<SIZE> on the command line",
        )),
    }
}

/// A connection to the pattern disk.
#[derive(Debug)]
pub struct PatternHandle {
    size: u64,
}

impl Handle for PatternHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn can_multi_conn(&self) -> Result<bool> {
        Ok(true)
    }

    fn can_cache(&self) -> Result<CacheMode> {
        Ok(CacheMode::Native)
    }

    fn pread(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        fill(buf, offset);
        Ok(())
    }

    fn cache(&self, _count: u64, _offset: u64) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pattern, one byte at a time, the slow obvious way.
    fn slow(len: usize, offset: u64) -> Vec<u8> {
        (0..len as u64)
            .map(|i| {
                let o = offset + i;
                (o & !7).to_be_bytes()[(o % 8) as usize]
            })
            .collect()
    }

    #[test]
    fn matches_definition_at_every_alignment() {
        for offset in [0u64, 1, 5, 7, 8, 9, 4095, 1 << 40, (1 << 63) - 20] {
            for len in [0usize, 1, 3, 7, 8, 9, 15, 16, 17, 100] {
                let mut buf = vec![0xaa; len];
                fill(&mut buf, offset);
                assert_eq!(buf, slow(len, offset), "offset {offset} len {len}");
            }
        }
    }

    #[test]
    fn first_words() {
        let mut buf = [0u8; 24];
        fill(&mut buf, 0);
        assert_eq!(&buf[8..16], &[0, 0, 0, 0, 0, 0, 0, 8]);
        assert_eq!(&buf[16..24], &[0, 0, 0, 0, 0, 0, 0, 0x10]);
    }

    #[test]
    fn size_is_required_and_given_once() {
        let mut p = PatternPlugin::new();
        assert!(p.config_complete().is_err());
        p.config("size", "1M").unwrap();
        assert!(p.config("size", "2M").is_err());
        assert!(p.config("seed", "1").is_err());
        p.config_complete().unwrap();
        let h = p.open(false, "", false).unwrap();
        assert_eq!(h.get_size().unwrap(), 1 << 20);
        assert!(!h.can_write().unwrap());
    }
}
