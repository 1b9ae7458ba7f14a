//! The `blocksize` filter: let any client talk to a plugin with block size
//! limits.  Requests reach the plugin aligned to `minblock` and no larger
//! than `maxdata` (reads, writes) or `maxlen` (trims, zeroes): unaligned
//! reads are widened, unaligned writes and zeroes become read-modify-write
//! cycles of whole blocks, unaligned trim edges are dropped, and oversized
//! requests are split.  The export size is rounded down to `minblock`.
//!
//! Read-modify-write cycles take a process-wide lock exclusively; aligned
//! writes, trims and zeroes take it shared, so no write can land between
//! the read and the write of a cycle over the same block (nbdkit does the
//! same).
//!
//! The filter advertises the widest constraints (minimum 1, maximum
//! 0xffffffff), since it accepts anything; the preferred size is at least
//! 4096 and at least `minblock`.

use crate::error::{Error, Result};
use crate::extents::Extents;
use crate::filter::{Filter, FilterContext};
use crate::layers::{flags, Backend, Context, MAX_REQUEST_SIZE};
use crate::parse::parse_size;
use crate::plugin::{BlockSize, FuaMode};
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Largest `minblock`.
const MIN_LIMIT: u32 = 64 * 1024;

/// Exclusive for read-modify-write, shared for aligned writes.
static RMW: RwLock<()> = RwLock::new(());

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    RMW.write().unwrap_or_else(|e| e.into_inner())
}

fn shared() -> RwLockReadGuard<'static, ()> {
    RMW.read().unwrap_or_else(|e| e.into_inner())
}

/// The values configured on the command line (0: not set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Config {
    minblock: u32,
    maxdata: u32,
    maxlen: u32,
}

/// The limits in force on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limits {
    minblock: u64,
    maxdata: u64,
    maxlen: u64,
}

impl Config {
    /// Fill in defaults and clamp to the next layer's own constraints.
    fn limits(&self, next: Option<BlockSize>) -> Limits {
        let (min, max) = match next {
            Some(b) => (b.minimum as u64, b.maximum as u64),
            None => (0, 0),
        };
        let minblock = (self.minblock.max(1) as u64).max(min);
        let mut maxdata = match (self.maxdata, self.maxlen) {
            (0, 0) => MAX_REQUEST_SIZE,
            (0, l) => (l as u64).min(MAX_REQUEST_SIZE),
            (d, _) => d as u64,
        };
        if max != 0 {
            maxdata = maxdata.min(max);
        }
        maxdata = (maxdata - maxdata % minblock).max(minblock);
        let maxlen = match self.maxlen {
            0 => (1u64 << 32) - minblock,
            l => (l as u64 - l as u64 % minblock).max(minblock),
        };
        Limits {
            minblock,
            maxdata,
            maxlen,
        }
    }
}

pub struct Blocksize {
    cfg: Config,
}

impl Blocksize {
    pub fn new() -> Self {
        Blocksize {
            cfg: Config::default(),
        }
    }
}

impl Default for Blocksize {
    fn default() -> Self {
        Self::new()
    }
}

fn parse(key: &str, value: &str) -> Result<u32> {
    let v = parse_size(value)?;
    if v == 0 {
        return Err(Error::config(format!(
            "parameter '{key}' must be non-zero if specified"
        )));
    }
    if v > u32::MAX as u64 {
        return Err(Error::config(format!("parameter '{key}' too large")));
    }
    Ok(v as u32)
}

impl Filter for Blocksize {
    fn name(&self) -> &'static str {
        "blocksize"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit blocksize filter")
    }

    fn description(&self) -> &'static str {
        "Align and split requests to meet the plugin's block size limits."
    }

    fn config_help(&self) -> &'static str {
        "minblock=<SIZE>      Minimum block size, power of 2 <= 64k (default 1).\n\
         maxdata=<SIZE>       Maximum size for read/write (default 64M).\n\
         maxlen=<SIZE>        Maximum size for trim/zero (default 4G-minblock)."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "minblock" => self.cfg.minblock = parse(key, value)?,
            "maxdata" => self.cfg.maxdata = parse(key, value)?,
            "maxlen" => self.cfg.maxlen = parse(key, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        let Config {
            minblock,
            maxdata,
            maxlen,
        } = self.cfg;
        if minblock != 0 {
            if !minblock.is_power_of_two() {
                return Err(Error::config("minblock must be a power of 2"));
            }
            if minblock > MIN_LIMIT {
                return Err(Error::config(format!(
                    "minblock must not exceed {MIN_LIMIT}"
                )));
            }
            if maxdata % minblock != 0 {
                return Err(Error::config(format!(
                    "maxdata must be a multiple of {minblock}"
                )));
            }
            if maxlen % minblock != 0 {
                return Err(Error::config(format!(
                    "maxlen must be a multiple of {minblock}"
                )));
            }
        }
        crate::log::debug(format!(
            "blocksize: configured values minblock={minblock} maxdata={maxdata} maxlen={maxlen}"
        ));
        Ok(())
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        Ok(Box::new(Blocked {
            next: next.open(readonly, export, is_tls)?,
            cfg: self.cfg,
            limits: OnceLock::new(),
        }))
    }
}

struct Blocked {
    next: Box<dyn Context>,
    cfg: Config,
    limits: OnceLock<Limits>,
}

/// `x` rounded down to a multiple of `m`.
fn down(x: u64, m: u64) -> u64 {
    x - x % m
}

impl Blocked {
    fn limits(&self) -> Result<Limits> {
        match self.limits.get() {
            Some(l) => Ok(*l),
            None => {
                let l = self.cfg.limits(self.next.block_size()?);
                Ok(*self.limits.get_or_init(|| l))
            }
        }
    }

    /// FUA the next layer emulates is done once at the end (one flush)
    /// instead of after every piece: returns the flags for the pieces and
    /// whether to flush.
    fn split_fua(&self, flags: u32) -> Result<(u32, bool)> {
        if flags & flags::FUA != 0 && self.next.can_fua()? == FuaMode::Emulate {
            Ok((flags & !flags::FUA, true))
        } else {
            Ok((flags, false))
        }
    }

    /// Read-modify-write the block at `block`: `edit` changes the bytes
    /// `[drop, drop + n)` of it.
    fn rmw(&self, l: &Limits, block: u64, flags: u32, edit: impl FnOnce(&mut [u8])) -> Result<()> {
        let _g = exclusive();
        let mut bounce = vec![0u8; l.minblock as usize];
        self.next.pread(&mut bounce, block, 0)?;
        edit(&mut bounce);
        self.next.pwrite(&bounce, block, flags & !flags::MAY_TRIM)
    }

    /// Write `data` or (when `None`) zeroes over `count` bytes at `offset`.
    fn write_like(&self, data: Option<&[u8]>, count: u64, offset: u64, flags: u32) -> Result<()> {
        let l = self.limits()?;
        let mb = l.minblock;
        let (flags, flush) = self.split_fua(flags)?;
        let (mut offset, mut count, mut done) = (offset, count, 0usize);
        // Unaligned head.
        if offset % mb != 0 {
            let drop = offset % mb;
            let keep = (mb - drop).min(count);
            let (d, k) = (drop as usize, keep as usize);
            self.rmw(&l, offset - drop, flags, |b| match data {
                Some(src) => b[d..d + k].copy_from_slice(&src[..k]),
                None => b[d..d + k].fill(0),
            })?;
            offset += keep;
            count -= keep;
            done += k;
        }
        // Aligned body.
        while count >= mb {
            let max = if data.is_some() { l.maxdata } else { l.maxlen };
            let n = max.min(down(count, mb));
            {
                let _g = shared();
                match data {
                    Some(src) => self
                        .next
                        .pwrite(&src[done..done + n as usize], offset, flags)?,
                    None => self.next.zero(n, offset, flags)?,
                }
            }
            offset += n;
            count -= n;
            done += n as usize;
        }
        // Unaligned tail.
        if count > 0 {
            let k = count as usize;
            self.rmw(&l, offset, flags, |b| match data {
                Some(src) => b[..k].copy_from_slice(&src[done..done + k]),
                None => b[..k].fill(0),
            })?;
        }
        if flush {
            self.next.flush(0)?;
        }
        Ok(())
    }

    /// The `base:allocation` flags of the whole block at `pos`: those every
    /// part of it has.
    fn block_flags(&self, pos: u64, mb: u64, flags: u32) -> Result<u32> {
        let mut all = u32::MAX;
        let mut at = pos;
        while at < pos + mb {
            let mut e = Extents::new(at, pos + mb);
            self.next.extents(&mut e, flags & !flags::REQ_ONE)?;
            let Some(last) = e.list().last().copied() else {
                return Ok(0);
            };
            for x in e.list() {
                all &= x.flags;
            }
            at = last.offset + last.length;
        }
        Ok(all)
    }
}

impl FilterContext for Blocked {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn prepare(&self, _readonly: bool) -> Result<()> {
        let l = self.limits()?;
        crate::log::debug(format!(
            "blocksize: handle values minblock={} maxdata={} maxlen={}",
            l.minblock, l.maxdata, l.maxlen
        ));
        Ok(())
    }

    fn get_size(&self) -> Result<u64> {
        Ok(down(self.next.get_size()?, self.limits()?.minblock))
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        let l = self.limits()?;
        let preferred = self.next.block_size()?.map_or(0, |b| b.preferred);
        Ok(Some(BlockSize {
            minimum: 1,
            preferred: preferred.max(4096).max(l.minblock as u32),
            maximum: u32::MAX,
        }))
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: u32) -> Result<()> {
        let l = self.limits()?;
        let mb = l.minblock;
        let mut offset = offset;
        let mut rest: &mut [u8] = buf;
        if !offset.is_multiple_of(mb) {
            let drop = offset % mb;
            let keep = (mb - drop).min(rest.len() as u64) as usize;
            let _g = exclusive();
            let mut bounce = vec![0u8; mb as usize];
            self.next.pread(&mut bounce, offset - drop, flags)?;
            rest[..keep].copy_from_slice(&bounce[drop as usize..drop as usize + keep]);
            rest = &mut rest[keep..];
            offset += keep as u64;
        }
        while rest.len() as u64 >= mb {
            let n = l.maxdata.min(down(rest.len() as u64, mb)) as usize;
            let (piece, after) = rest.split_at_mut(n);
            self.next.pread(piece, offset, flags)?;
            rest = after;
            offset += n as u64;
        }
        if !rest.is_empty() {
            let _g = exclusive();
            let mut bounce = vec![0u8; mb as usize];
            self.next.pread(&mut bounce, offset, flags)?;
            let n = rest.len();
            rest.copy_from_slice(&bounce[..n]);
        }
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: u32) -> Result<()> {
        self.write_like(Some(buf), buf.len() as u64, offset, flags)
    }

    fn zero(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        let l = self.limits()?;
        if flags & flags::FAST_ZERO != 0
            && (!(offset | count).is_multiple_of(l.minblock) || count > l.maxlen)
        {
            // A request done in several pieces is not fast.
            return Err(Error::new(
                nix::errno::Errno::EOPNOTSUPP,
                "blocksize: fast zero of an unaligned or oversized range",
            ));
        }
        self.write_like(None, count, offset, flags)
    }

    fn trim(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        let l = self.limits()?;
        let mb = l.minblock;
        let (flags, flush) = self.split_fua(flags)?;
        let (mut offset, mut count) = (offset, count);
        if offset % mb != 0 {
            let keep = (mb - offset % mb).min(count);
            offset += keep;
            count -= keep;
        }
        count = down(count, mb);
        while count > 0 {
            let n = l.maxlen.min(count);
            {
                let _g = shared();
                self.next.trim(n, offset, flags)?;
            }
            offset += n;
            count -= n;
        }
        if flush {
            self.next.flush(0)?;
        }
        Ok(())
    }

    fn cache(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        let l = self.limits()?;
        let mb = l.minblock;
        let head = offset % mb;
        let mut offset = offset - head;
        let mut remaining = (count + head).next_multiple_of(mb);
        while remaining > 0 {
            let n = l.maxdata.min(remaining);
            self.next.cache(n, offset, flags)?;
            offset += n;
            remaining -= n;
        }
        Ok(())
    }

    fn extents(&self, extents: &mut Extents, flags: u32) -> Result<()> {
        // Ask for whole blocks and answer in whole blocks: a block whose
        // parts differ gets only the flags all its parts share.
        let l = self.limits()?;
        let mb = l.minblock;
        let start = down(extents.start(), mb);
        let end = extents.end().next_multiple_of(mb).min(start + l.maxlen);
        let mut inner = Extents::new(start, end);
        self.next.extents(&mut inner, flags)?;
        let list = inner.list();
        let covered = list.last().map_or(start, |e| e.offset + e.length);
        let mut pos = start;
        let mut i = 0;
        while pos < covered {
            while list[i].offset + list[i].length <= pos {
                i += 1;
            }
            let e = list[i];
            let e_end = e.offset + e.length;
            if e_end - pos >= mb {
                let n = down(e_end - pos, mb);
                extents.add(pos, n, e.flags)?;
                pos += n;
            } else if pos + mb <= covered {
                let mut all = u32::MAX;
                for x in &list[i..] {
                    if x.offset >= pos + mb {
                        break;
                    }
                    all &= x.flags;
                }
                extents.add(pos, mb, all)?;
                pos += mb;
            } else {
                break;
            }
        }
        if pos == start {
            // Less than one block came back: ask again until it is whole.
            let f = self.block_flags(start, mb, flags)?;
            extents.add(start, mb, f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extents::{HOLE, ZERO};
    use crate::layers::Chain;
    use crate::plugin::{Handle, Plugin};

    /// A 16k disk with fixed extents, reading as its offsets' low bytes.
    struct Fixed(Vec<(u64, u64, u32)>);
    struct FixedHandle(Vec<(u64, u64, u32)>);

    impl Plugin for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }
        fn open(&self, _: bool, _: &str, _: bool) -> Result<Box<dyn Handle>> {
            Ok(Box::new(FixedHandle(self.0.clone())))
        }
    }

    impl Handle for FixedHandle {
        fn get_size(&self) -> Result<u64> {
            Ok(16384)
        }
        fn pread(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (offset as usize + i) as u8;
            }
            Ok(())
        }
        fn can_extents(&self) -> Result<bool> {
            Ok(true)
        }
        fn extents(&self, extents: &mut Extents, _req_one: bool) -> Result<()> {
            for &(o, l, f) in &self.0 {
                if o + l > extents.start() && o < extents.end() {
                    extents.add(o, l, f)?;
                }
            }
            Ok(())
        }
    }

    fn extents_through(plugin: Vec<(u64, u64, u32)>, start: u64, end: u64) -> Vec<(u64, u64, u32)> {
        let mut chain = Chain {
            filters: vec![Box::new(Blocksize::new())],
            plugin: Box::new(Fixed(plugin)),
        };
        chain.config_param("minblock=4096").unwrap();
        chain.config_complete().unwrap();
        let stack = chain.into_stack();
        let c = stack.backend.open(true, "", false).unwrap();
        c.prepare(true).unwrap();
        let mut e = Extents::new(start, end);
        c.extents(&mut e, 0).unwrap();
        e.list()
            .iter()
            .map(|x| (x.offset, x.length, x.flags))
            .collect()
    }

    #[test]
    fn extents_come_back_in_whole_blocks() {
        let hz = HOLE | ZERO;
        // Aligned extents pass through, clipped to the request.
        let aligned = vec![(0, 4096, 0), (4096, 8192, hz), (12288, 4096, 0)];
        assert_eq!(
            extents_through(aligned.clone(), 0, 16384),
            [(0, 4096, 0), (4096, 8192, hz), (12288, 4096, 0)]
        );
        assert_eq!(
            extents_through(aligned, 5000, 13000),
            [(5000, 7288, hz), (12288, 712, 0)]
        );
        // A block partly data, partly hole, is data; a block that is hole
        // and zero in two pieces stays hole and zero.
        let ragged = vec![
            (0, 1000, 0),
            (1000, 4000, hz),
            (5000, 3192, HOLE),
            (8192, 1000, hz),
            (9192, 7192, ZERO),
        ];
        assert_eq!(
            extents_through(ragged, 0, 16384),
            [(0, 4096, 0), (4096, 4096, HOLE), (8192, 8192, ZERO)]
        );
    }

    #[test]
    fn unaligned_reads_are_widened() {
        let mut chain = Chain {
            filters: vec![Box::new(Blocksize::new())],
            plugin: Box::new(Fixed(vec![])),
        };
        chain.config_param("minblock=512").unwrap();
        chain.config_complete().unwrap();
        let stack = chain.into_stack();
        let c = stack.backend.open(true, "", false).unwrap();
        c.prepare(true).unwrap();
        for (off, len) in [
            (1u64, 1usize),
            (511, 2),
            (100, 5000),
            (4096, 512),
            (7, 0x1000),
        ] {
            let mut buf = vec![0u8; len];
            c.pread(&mut buf, off, 0).unwrap();
            let want: Vec<u8> = (0..len).map(|i| (off as usize + i) as u8).collect();
            assert_eq!(buf, want, "{off}+{len}");
        }
    }

    fn configured(params: &[(&str, &str)]) -> Result<Config> {
        let mut f = Blocksize::new();
        for (k, v) in params {
            assert!(f.config(k, v)?);
        }
        f.config_complete()?;
        Ok(f.cfg)
    }

    #[test]
    fn bad_parameters() {
        for p in [
            &[("minblock", "0")][..],
            &[("minblock", "3")],
            &[("minblock", "128k")],
            &[("minblock", "x")],
            &[("maxdata", "5G")],
            &[("maxlen", "-1")],
            &[("minblock", "4k"), ("maxdata", "6k")],
            &[("minblock", "4k"), ("maxlen", "1000")],
        ] {
            assert!(configured(p).is_err(), "{p:?}");
        }
    }

    #[test]
    fn limits_follow_nbdkit() {
        let c = configured(&[]).unwrap();
        assert_eq!(
            c.limits(None),
            Limits {
                minblock: 1,
                maxdata: 64 << 20,
                maxlen: (1 << 32) - 1
            }
        );
        let c = configured(&[("minblock", "4k"), ("maxlen", "1M")]).unwrap();
        assert_eq!(
            c.limits(None),
            Limits {
                minblock: 4096,
                maxdata: 1 << 20,
                maxlen: 1 << 20
            }
        );
        // The plugin's own constraints tighten the defaults.
        let plugin = BlockSize {
            minimum: 512,
            preferred: 4096,
            maximum: 65536,
        };
        let c = configured(&[("maxdata", "1M")]).unwrap();
        assert_eq!(
            c.limits(Some(plugin)),
            Limits {
                minblock: 512,
                maxdata: 65536,
                maxlen: (1 << 32) - 512
            }
        );
    }
}
