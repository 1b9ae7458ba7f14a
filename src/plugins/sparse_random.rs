//! The sparse-random plugin: `nbdkit sparse-random [size=]SIZE [seed=SEED]
//! [percent=N] [runlength=N] [random-content=BOOL]`.  A disk shaped like a
//! virtual machine's: runs of random data between runs of holes, the same
//! for the same seed, made of 4 KiB blocks.  Writes succeed only if they
//! write what is already there, trim and write-zeroes only over holes, so
//! one instance can be both the source and the destination of a copy.
//!
//! The map of data blocks is drawn once at startup, one bit per block, with
//! the same generator and the same draws as nbdkit's C plugin (so a seed
//! gives the same map).  A data block is one random non-zero byte repeated,
//! or with `random-content=true` 4096 random bytes.

use super::pattern::{config_size, require_size};
use super::random::{default_seed, parse_seed, Xoshiro};
use crate::error::{Error, Result};
use crate::extents::{Extents, HOLE, ZERO};
use crate::parse::{parse_bool, parse_size};
use crate::plugin::{CacheMode, Handle, Plugin, ZeroFlags, ZeroMode};
use nix::errno::Errno;
use std::sync::Arc;

/// Size of a block: the unit of the data/hole map.
pub const BLOCK: u64 = 4096;

/// The sparse-random plugin.
#[derive(Debug)]
pub struct SparseRandomPlugin {
    size: Option<u64>,
    seed: Option<u32>,
    percent: f64,
    runlength: u64,
    random_content: bool,
    seen: Vec<&'static str>,
    map: Option<Arc<BlockMap>>,
}

impl Default for SparseRandomPlugin {
    fn default() -> Self {
        Self::new()
    }
}

impl SparseRandomPlugin {
    /// An unconfigured plugin with nbdkit's defaults (10%, 16M runs).
    pub fn new() -> Self {
        SparseRandomPlugin {
            size: None,
            seed: None,
            percent: 10.0,
            runlength: 16 << 20,
            random_content: false,
            seen: Vec::new(),
            map: None,
        }
    }

    fn once(&mut self, key: &'static str, value: &str) -> Result<()> {
        if self.seen.contains(&key) {
            return Err(Error::config(format!(
                "{key} given more than once (second: {value})"
            )));
        }
        Ok(())
    }
}

/// Parse `percent=`: a decimal number from 0 to 100, optionally followed
/// by `%`.
pub fn parse_percent(value: &str) -> Result<f64> {
    let bad = || {
        Error::config(format!(
            "percent: could not parse '{value}' (expecting a number from 0 to 100)"
        ))
    };
    let num = value.strip_suffix('%').unwrap_or(value);
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad());
    }
    let p: f64 = num.parse().map_err(|_| bad())?;
    if !(0.0..=100.0).contains(&p) {
        return Err(bad());
    }
    Ok(p)
}

/// One bit per block: set for data, clear for a hole.
#[derive(Debug)]
pub struct BlockMap {
    bits: Vec<u64>,
    blocks: u64,
}

impl BlockMap {
    /// Draw the map for a disk of `size` bytes.  Walking the blocks in
    /// order, the state (hole or data) flips after each block with the
    /// probability that gives, on average, `percent` data in runs of
    /// `runlength` bytes: P(data→hole) = 1/(runlength/BLOCK) and
    /// P(hole→data) = p·P(data→hole)/(1-p).
    pub fn draw(size: u64, seed: u32, percent: f64, runlength: u64) -> Result<Self> {
        let blocks = size.div_ceil(BLOCK);
        let words = usize::try_from(blocks.div_ceil(64))
            .map_err(|_| Error::config("sparse-random: disk too large"))?;
        let mut bits = Vec::new();
        bits.try_reserve_exact(words).map_err(|_| {
            Error::new(
                Errno::ENOMEM,
                format!("sparse-random: cannot allocate the block map ({words} words)"),
            )
        })?;
        bits.resize(words, 0u64);
        let mut map = BlockMap { bits, blocks };
        if percent == 0.0 {
            return Ok(map);
        }
        if percent == 100.0 {
            for b in 0..blocks {
                map.set(b);
            }
            return Ok(map);
        }
        // The same floating point steps as nbdkit, so that the same seed
        // draws the same map.
        let p_dh = 1.0 / (runlength as f64 / BLOCK as f64);
        let p_hd = (percent / 100.0) * p_dh / (1.0 - (percent / 100.0));
        let limit_dh = p_dh * u64::MAX as f64;
        let limit_hd = p_hd * u64::MAX as f64;
        let mut rng = Xoshiro::new(seed as u64);
        let mut data = false;
        for b in 0..blocks {
            if data {
                map.set(b);
            }
            let limit = if data { limit_dh } else { limit_hd };
            if rng.next_u64() as f64 <= limit {
                data = !data;
            }
        }
        Ok(map)
    }

    fn set(&mut self, b: u64) {
        self.bits[(b / 64) as usize] |= 1 << (b % 64);
    }

    /// Whether block `b` holds data.
    #[inline]
    pub fn is_data(&self, b: u64) -> bool {
        b < self.blocks && self.bits[(b / 64) as usize] & (1 << (b % 64)) != 0
    }

    /// The first block at or after `b` (and before `end`) whose state is
    /// not `data`.
    fn run_end(&self, b: u64, end: u64, data: bool) -> u64 {
        let mut b = b;
        while b < end {
            let word = self.bits[(b / 64) as usize];
            let word = if data { !word } else { word };
            // Bits at or above b's position that differ from `data`.
            let w = word >> (b % 64);
            if w != 0 {
                return (b + w.trailing_zeros() as u64).min(end);
            }
            b = (b / 64 + 1) * 64;
        }
        end
    }

    /// How many blocks hold data.
    pub fn data_blocks(&self) -> u64 {
        self.bits.iter().map(|w| w.count_ones() as u64).sum()
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
    "flush",
    "trim",
    "zero",
    "extents",
];

impl Plugin for SparseRandomPlugin {
    fn name(&self) -> &'static str {
        "sparse-random"
    }

    fn description(&self) -> &'static str {
        "sparse-random plugin: runs of random data and holes, like a VM disk"
    }

    fn magic_config_key(&self) -> Option<&'static str> {
        Some("size")
    }

    fn config_help(&self) -> &'static str {
        "[size=]<SIZE>        (required) Size of the backing disk\n\
         seed=<SEED>          Random number generator seed\n\
         percent=<PERCENT>    Percentage of data (default 10)\n\
         runlength=<BYTES>    Expected average run length of data (default 16M)\n\
         random-content=true  Fully random content in each block"
    }

    fn callbacks(&self) -> &'static [&'static str] {
        CALLBACKS
    }

    fn quick_requests(&self) -> bool {
        !self.random_content
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        let once = match key {
            "seed" => "seed",
            "percent" => "percent",
            "runlength" => "runlength",
            "random-content" => "random-content",
            _ => return config_size(&mut self.size, key, value),
        };
        self.once(once, value)?;
        match once {
            "seed" => self.seed = Some(parse_seed(value)?),
            "percent" => self.percent = parse_percent(value)?,
            "runlength" => {
                let r = parse_size(value)
                    .map_err(|e| Error::config(format!("runlength: {}", e.message())))?;
                if r == 0 {
                    return Err(Error::config("runlength parameter must be > 0"));
                }
                self.runlength = r;
            }
            _ => {
                self.random_content = parse_bool(value)
                    .map_err(|e| Error::config(format!("random-content: {}", e.message())))?
            }
        }
        self.seen.push(once);
        Ok(())
    }

    fn config_complete(&mut self) -> Result<()> {
        require_size(self.size)?;
        if self.seed.is_none() {
            self.seed = Some(default_seed());
        }
        self.draw()
    }

    fn open(&self, _readonly: bool, _export_name: &str, _is_tls: bool) -> Result<Box<dyn Handle>> {
        let map = match &self.map {
            Some(m) => m.clone(),
            None => return Err(Error::new(Errno::EIO, "sparse-random: map not drawn")),
        };
        Ok(Box::new(SparseRandomHandle {
            size: self.size.unwrap_or(0),
            seed: self.seed.unwrap_or(0),
            random_content: self.random_content,
            map,
        }))
    }
}

impl SparseRandomPlugin {
    /// Draw the block map (done once, after configuration).
    fn draw(&mut self) -> Result<()> {
        let map = BlockMap::draw(
            self.size.unwrap_or(0),
            self.seed.unwrap_or(0),
            self.percent,
            self.runlength,
        )?;
        crate::log::debug(format!(
            "sparse-random: percent requested = {}%, actual = {:.3}%, runlength = {}",
            self.percent,
            100.0 * (map.data_blocks() * BLOCK) as f64 / self.size.unwrap_or(0).max(1) as f64,
            self.runlength
        ));
        self.map = Some(Arc::new(map));
        Ok(())
    }
}

/// A connection to the sparse-random disk.
#[derive(Debug)]
pub struct SparseRandomHandle {
    size: u64,
    seed: u32,
    random_content: bool,
    map: Arc<BlockMap>,
}

impl SparseRandomHandle {
    /// Fill `out` with bytes `[from, from+out.len())` of block `b` (the
    /// range lies inside the block).
    fn block_bytes(&self, b: u64, from: usize, out: &mut [u8]) {
        if !self.map.is_data(b) {
            out.fill(0);
            return;
        }
        // Seeded from the block's offset, so every read of the block agrees.
        let mut rng = Xoshiro::new((self.seed as u64).wrapping_add(b * BLOCK));
        if !self.random_content {
            let v = rng.next_u64() as u8;
            out.fill(if v == 0 { 1 } else { v });
        } else {
            for _ in 0..from {
                rng.next_u64();
            }
            for x in out.iter_mut() {
                *x = rng.next_u64() as u8;
            }
        }
    }

    /// Walk `[offset, offset+len)` block piece by block piece:
    /// `f(block, offset in block, offset in request, length)`.
    fn pieces(
        offset: u64,
        len: usize,
        mut f: impl FnMut(u64, usize, usize, usize) -> Result<()>,
    ) -> Result<()> {
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let b = pos / BLOCK;
            let inb = (pos % BLOCK) as usize;
            let n = (BLOCK as usize - inb).min(len - done);
            f(b, inb, done, n)?;
            done += n;
        }
        Ok(())
    }
}

fn mismatch() -> Error {
    Error::new(Errno::EIO, "data written does not match expected")
}

impl Handle for SparseRandomHandle {
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

    fn can_extents(&self) -> Result<bool> {
        Ok(true)
    }

    fn can_multi_conn(&self) -> Result<bool> {
        Ok(true)
    }

    fn can_cache(&self) -> Result<CacheMode> {
        Ok(CacheMode::Native)
    }

    fn pread(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        Self::pieces(offset, buf.len(), |b, inb, at, n| {
            self.block_bytes(b, inb, &mut buf[at..at + n]);
            Ok(())
        })
    }

    fn pwrite(&self, buf: &[u8], offset: u64, _fua: bool) -> Result<()> {
        let mut expect = [0u8; BLOCK as usize];
        Self::pieces(offset, buf.len(), |b, inb, at, n| {
            let got = &buf[at..at + n];
            if !self.map.is_data(b) {
                if !super::memory::allocator::is_zero(got) {
                    return Err(mismatch());
                }
                return Ok(());
            }
            self.block_bytes(b, inb, &mut expect[..n]);
            if got != &expect[..n] {
                return Err(mismatch());
            }
            Ok(())
        })
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn trim(&self, count: u64, offset: u64, _fua: bool) -> Result<()> {
        self.only_holes(count, offset)
    }

    fn zero(&self, count: u64, offset: u64, _flags: ZeroFlags) -> Result<()> {
        self.only_holes(count, offset)
    }

    fn extents(&self, extents: &mut Extents, req_one: bool) -> Result<()> {
        let end = extents.end().min(self.size);
        let mut b = extents.start() / BLOCK;
        let last = end.div_ceil(BLOCK);
        while b < last {
            let data = self.map.is_data(b);
            let next = self.map.run_end(b, last, data);
            let from = (b * BLOCK).max(extents.start());
            let to = (next * BLOCK).min(end);
            let flags = if data { 0 } else { HOLE | ZERO };
            extents.add(from, to - from, flags)?;
            if req_one {
                break;
            }
            b = next;
        }
        Ok(())
    }

    fn cache(&self, _count: u64, _offset: u64) -> Result<()> {
        Ok(())
    }
}

impl SparseRandomHandle {
    fn only_holes(&self, count: u64, offset: u64) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let first = offset / BLOCK;
        let last = (offset + count).div_ceil(BLOCK);
        if self.map.run_end(first, last, false) < last {
            return Err(Error::new(
                Errno::EIO,
                "trying to trim or zero non-hole in disk",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
