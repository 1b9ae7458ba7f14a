//! The random plugin: `nbdkit random [size=]SIZE [seed=SEED]`.  A disk of
//! pseudo-random bytes that are the same for the same seed, the same bytes
//! nbdkit's C plugin serves.  Writes succeed only if they write what is
//! already there (so `nbdcopy "$uri" "$uri"` checks a copy); trim and
//! write-zeroes fail with `EIO`.
//!
//! Also home of the generator both random plugins use: xoshiro256** seeded
//! by splitmix64 (Blackman and Vigna's public algorithms, as nbdkit uses
//! them).  It is not cryptographically secure.

use super::pattern::{config_size, require_size};
use crate::error::{Error, Result};
use crate::parse::parse_unsigned;
use crate::plugin::{CacheMode, Handle, Plugin, ZeroFlags, ZeroMode};
use nix::errno::Errno;

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64's output function for the state value `z`.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// xoshiro256** state.
#[derive(Debug, Clone)]
pub struct Xoshiro {
    s: [u64; 4],
}

impl Xoshiro {
    /// Seed the state from 64 bits through splitmix64.
    pub fn new(seed: u64) -> Self {
        let mut s = [0u64; 4];
        for (k, w) in s.iter_mut().enumerate() {
            *w = mix(seed.wrapping_add(GOLDEN.wrapping_mul(k as u64 + 1)));
        }
        Xoshiro { s }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }
}

/// Byte `pos` of the random disk for `seed`: the low byte of the third
/// output of a generator seeded with `seed + pos` (so any byte can be
/// computed on its own).  The third output only depends on three words of
/// the seeded state, which is what this computes.
#[inline]
pub fn random_byte(seed: u32, pos: u64) -> u8 {
    let x = (seed as u64).wrapping_add(pos);
    let s0 = mix(x.wrapping_add(GOLDEN));
    let s1 = mix(x.wrapping_add(GOLDEN.wrapping_mul(2)));
    let s3 = mix(x.wrapping_add(GOLDEN.wrapping_mul(4)));
    // After two steps, word 1 of the state is s0 ^ s3 ^ (s1 << 17).
    let w = s0 ^ s3 ^ (s1 << 17);
    w.wrapping_mul(5).rotate_left(7).wrapping_mul(9) as u8
}

/// A seed that differs from run to run (seconds since the epoch, as
/// nbdkit uses when `seed=` is not given).
pub fn default_seed() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

/// Parse `seed=` (a 32-bit unsigned integer, as nbdkit).
pub fn parse_seed(value: &str) -> Result<u32> {
    Ok(parse_unsigned("seed", value, u32::MAX as u64)? as u32)
}

/// The random plugin.
#[derive(Debug)]
pub struct RandomPlugin {
    size: Option<u64>,
    seed: Option<u32>,
}

impl Default for RandomPlugin {
    fn default() -> Self {
        Self::new()
    }
}

impl RandomPlugin {
    /// An unconfigured random plugin.
    pub fn new() -> Self {
        RandomPlugin {
            size: None,
            seed: None,
        }
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
    "zero",
];

impl Plugin for RandomPlugin {
    fn name(&self) -> &'static str {
        "random"
    }

    fn description(&self) -> &'static str {
        "random plugin: a disk of repeatable pseudo-random data"
    }

    fn magic_config_key(&self) -> Option<&'static str> {
        Some("size")
    }

    fn config_help(&self) -> &'static str {
        "[size=]<SIZE>  (required) Size of the backing disk\n\
         seed=<SEED>    Random number generator seed"
    }

    fn callbacks(&self) -> &'static [&'static str] {
        CALLBACKS
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "seed" if self.seed.is_some() => Err(Error::config(format!(
                "seed given more than once (second: {value})"
            ))),
            "seed" => {
                self.seed = Some(parse_seed(value)?);
                Ok(())
            }
            _ => config_size(&mut self.size, key, value),
        }
    }

    fn config_complete(&mut self) -> Result<()> {
        require_size(self.size)?;
        if self.seed.is_none() {
            self.seed = Some(default_seed());
        }
        Ok(())
    }

    fn open(&self, _readonly: bool, _export_name: &str, _is_tls: bool) -> Result<Box<dyn Handle>> {
        Ok(Box::new(RandomHandle {
            size: self.size.unwrap_or(0),
            seed: self.seed.unwrap_or(0),
        }))
    }
}

/// A connection to the random disk.
#[derive(Debug)]
pub struct RandomHandle {
    size: u64,
    seed: u32,
}

/// Fill `buf` with the random disk's bytes from `offset`.
pub fn fill(buf: &mut [u8], seed: u32, offset: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = random_byte(seed, offset + i as u64);
    }
}

impl Handle for RandomHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn can_write(&self) -> Result<bool> {
        Ok(true)
    }

    fn can_trim(&self) -> Result<bool> {
        Ok(true)
    }

    fn can_zero(&self) -> Result<ZeroMode> {
        Ok(ZeroMode::Native)
    }

    fn can_multi_conn(&self) -> Result<bool> {
        Ok(true)
    }

    fn can_cache(&self) -> Result<CacheMode> {
        Ok(CacheMode::Native)
    }

    fn pread(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        fill(buf, self.seed, offset);
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, _fua: bool) -> Result<()> {
        let same = buf
            .iter()
            .enumerate()
            .all(|(i, &b)| b == random_byte(self.seed, offset + i as u64));
        if same {
            Ok(())
        } else {
            Err(Error::new(
                Errno::EIO,
                "data written does not match expected",
            ))
        }
    }

    fn trim(&self, _count: u64, _offset: u64, _fua: bool) -> Result<()> {
        Err(trim_zero_error())
    }

    fn zero(&self, _count: u64, _offset: u64, _flags: ZeroFlags) -> Result<()> {
        Err(trim_zero_error())
    }

    fn cache(&self, _count: u64, _offset: u64) -> Result<()> {
        Ok(())
    }
}

fn trim_zero_error() -> Error {
    Error::new(Errno::EIO, "attempt to trim or zero non-sparse random disk")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte by the book: seed, step three times, keep the low byte.
    fn by_the_book(seed: u32, pos: u64) -> u8 {
        let mut g = Xoshiro::new((seed as u64).wrapping_add(pos));
        g.next_u64();
        g.next_u64();
        g.next_u64() as u8
    }

    #[test]
    fn shortcut_equals_three_steps() {
        for seed in [0u32, 1, 12345, u32::MAX] {
            for pos in [0u64, 1, 2, 1000, 1 << 40, u64::MAX - 3] {
                assert_eq!(random_byte(seed, pos), by_the_book(seed, pos));
            }
        }
    }

    #[test]
    fn splitmix_reference_values() {
        // splitmix64 from seed 0: the first output, a published test value.
        assert_eq!(mix(GOLDEN), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn writes_must_match_trim_zero_fail() {
        let mut p = RandomPlugin::new();
        assert!(p.config_complete().is_err());
        p.config("size", "1M").unwrap();
        p.config("seed", "42").unwrap();
        assert!(p.config("seed", "43").is_err());
        p.config_complete().unwrap();
        let h = p.open(false, "", false).unwrap();
        let mut buf = vec![0u8; 4096];
        h.pread(&mut buf, 1000).unwrap();
        h.pwrite(&buf, 1000, false).unwrap();
        buf[17] ^= 1;
        assert_eq!(h.pwrite(&buf, 1000, false).unwrap_err().errno(), Errno::EIO);
        assert_eq!(h.trim(1, 0, false).unwrap_err().errno(), Errno::EIO);
        assert_eq!(
            h.zero(1, 0, ZeroFlags::default()).unwrap_err().errno(),
            Errno::EIO
        );
    }

    #[test]
    fn seed_parsing() {
        assert_eq!(parse_seed("0x10").unwrap(), 16);
        assert_eq!(parse_seed("4294967295").unwrap(), u32::MAX);
        assert!(parse_seed("4294967296").is_err());
        assert!(parse_seed("-1").is_err());
        assert!(parse_seed("abc").is_err());
    }
}
