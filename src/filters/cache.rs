//! The `cache` filter: keep the plugin's blocks in a local temporary file
//! (in `$TMPDIR`, default `/var/tmp`, unlinked at once), so that repeated
//! reads and writes do not go to a slow plugin.
//!
//! Modes (`cache=`):
//! - `writeback` (default): writes go to the cache and are written to the
//!   plugin on flush, on FUA, or when reclaim evicts them;
//! - `writethrough`: writes go to the cache and to the plugin at once;
//! - `unsafe`: like writeback, but flush and FUA do nothing.
//!
//! Reads fill the cache only with `cache-on-read=true` (or while the file
//! `cache-on-read=/PATH` exists); cache (`NBD_CMD_CACHE`) requests always
//! do, natively, so that prefetching clients and filters above (such as
//! readahead) warm it.
//!
//! `cache-max-size=SIZE` bounds the cache: once more than
//! `cache-high-threshold` percent of it is used, blocks are evicted until
//! usage falls under `cache-low-threshold` percent, least recently used
//! first by the clock (second-chance) algorithm.  Unlike nbdkit, which
//! cannot evict dirty blocks, a dirty block is written to the plugin
//! first, so the bound holds in writeback mode too.  Evicted blocks are
//! punched out of the temporary file.
//!
//! Concurrency: each block is handled under one of a fixed set of striped
//! mutexes (from reading its state to publishing the new one, plugin I/O
//! included), the per-block states live under a short-held metadata lock,
//! and at most one thread reclaims at a time.  Block status reports dirty
//! blocks as data, whatever the plugin says of them.

use super::cow::OnRead;
use super::tmpfile;
use crate::error::{Error, Result};
use crate::extents::Extents;
use crate::filter::{Filter, FilterContext};
use crate::layers::{flags, Backend, Context};
use crate::parse::{parse_bool, parse_size, parse_unsigned};
use crate::plugin::{BlockSize, CacheMode, FuaMode};
use nix::errno::Errno;
use nix::fcntl::{fallocate, FallocateFlags};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Block states.
const NOT_CACHED: u8 = 0;
const CLEAN: u8 = 1;
const DIRTY: u8 = 2;
/// Added to a state: accessed since the clock hand last passed.
const ACCESSED: u8 = 4;

/// Number of striped block locks.
const LOCKS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Writeback,
    Writethrough,
    Unsafe,
}

#[derive(Debug, Clone)]
struct Config {
    mode: Mode,
    min_block_size: u64,
    max_size: Option<u64>,
    high: u64,
    low: u64,
    on_read: OnRead,
    verbose: bool,
}

pub struct Cache {
    config: Arc<Config>,
    caches: Arc<Mutex<HashMap<String, Arc<Store>>>>,
}

impl Cache {
    pub fn new() -> Self {
        Cache {
            config: Arc::new(Config {
                mode: Mode::Writeback,
                min_block_size: 65536,
                max_size: None,
                high: 95,
                low: 80,
                on_read: OnRead::Off,
                verbose: false,
            }),
            caches: Arc::default(),
        }
    }
}

impl Default for Cache {
    fn default() -> Self {
        Self::new()
    }
}

impl Filter for Cache {
    fn name(&self) -> &'static str {
        "cache"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit caching filter")
    }

    fn description(&self) -> &'static str {
        "Cache the plugin's blocks in a local temporary file."
    }

    fn config_help(&self) -> &'static str {
        "cache=MODE                Set cache MODE, one of writeback (default),\n\
         \x20                         writethrough, or unsafe.\n\
         cache-on-read=BOOL|/PATH  Set to true to cache on reads (default false).\n\
         cache-min-block-size=SIZE Minimum block size (default 64K).\n\
         cache-max-size=SIZE       Set maximum space used by cache.\n\
         cache-high-threshold=PCT  Percentage of max size where reclaim begins.\n\
         cache-low-threshold=PCT   Percentage of max size where reclaim ends."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let c = Arc::make_mut(&mut self.config);
        match key {
            "cache" => {
                c.mode = match value {
                    "writeback" => Mode::Writeback,
                    "writethrough" => Mode::Writethrough,
                    "unsafe" => Mode::Unsafe,
                    _ => {
                        return Err(Error::config(format!(
                            "cache: invalid cache parameter '{value}', \
                             should be writeback|writethrough|unsafe"
                        )))
                    }
                }
            }
            "cache-min-block-size" => {
                let v = parse_size(value)?;
                if !(4096..=1 << 31).contains(&v) || !v.is_power_of_two() {
                    return Err(Error::config(format!(
                        "cache: cache-min-block-size is not a power of 2, \
                         or is too small or too large: {value}"
                    )));
                }
                c.min_block_size = v;
            }
            "cache-max-size" => {
                let v = parse_size(value)?;
                if v < 1024 * 1024 {
                    return Err(Error::config(format!(
                        "cache: cache-max-size is too small (minimum 1M): {value}"
                    )));
                }
                c.max_size = Some(v);
            }
            "cache-high-threshold" | "cache-low-threshold" => {
                let v = parse_unsigned(key, value, u64::from(u32::MAX))?;
                if v == 0 {
                    return Err(Error::config(format!(
                        "cache: {key} must be greater than zero"
                    )));
                }
                if key == "cache-high-threshold" {
                    c.high = v;
                } else {
                    c.low = v;
                }
            }
            "cache-on-read" => c.on_read = OnRead::parse(value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.config.max_size.is_some() && self.config.low >= self.config.high {
            return Err(Error::config(
                "cache: cache-low-threshold must be less than cache-high-threshold",
            ));
        }
        Ok(())
    }

    fn debug_flag(&mut self, flag: &str, value: &str) -> Result<bool> {
        if flag == "verbose" {
            Arc::make_mut(&mut self.config).verbose = parse_bool(value)?;
            return Ok(true);
        }
        Ok(false)
    }

    fn get_ready(&self) -> Result<()> {
        tmpfile::create("cache", 0)
            .map(drop)
            .map_err(|e| Error::config(format!("cache: {}", e.message())))
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        Ok(Box::new(CacheContext {
            next: next.open(readonly, export, is_tls)?,
            export: export.to_string(),
            config: self.config.clone(),
            caches: self.caches.clone(),
            store: OnceLock::new(),
        }))
    }
}

/// Per-block states and the clock hand.
struct Meta {
    states: Vec<u8>,
    hand: usize,
    /// Blocks in the cache (clean or dirty).
    cached: u64,
}

/// One export's cache.
struct Store {
    file: File,
    size: u64,
    blksize: u64,
    shift: u32,
    meta: Mutex<Meta>,
    locks: Vec<Mutex<()>>,
    reclaiming: Mutex<()>,
    config: Arc<Config>,
}

impl Store {
    fn new(size: u64, config: Arc<Config>) -> Result<Self> {
        let file = tmpfile::create("cache", 0)?;
        // Holes can only be punched in whole filesystem blocks.
        let fs_block = nix::sys::statvfs::fstatvfs(&file)
            .map(|s| s.block_size())
            .unwrap_or(4096);
        let blksize = config
            .min_block_size
            .max(fs_block.next_power_of_two())
            .min(1 << 31);
        let blocks = size.div_ceil(blksize);
        file.set_len(blocks * blksize)
            .map_err(|e| Error::io(e, "cache: ftruncate"))?;
        let n = usize::try_from(blocks)
            .map_err(|_| Error::new(Errno::ENOMEM, "cache: too many blocks"))?;
        let mut states = Vec::new();
        states
            .try_reserve_exact(n)
            .map_err(|_| Error::new(Errno::ENOMEM, "cache: cannot allocate the bitmap"))?;
        states.resize(n, NOT_CACHED);
        crate::log::debug(format!("cache: block size: {blksize}"));
        Ok(Store {
            file,
            size,
            blksize,
            shift: blksize.trailing_zeros(),
            meta: Mutex::new(Meta {
                states,
                hand: 0,
                cached: 0,
            }),
            locks: (0..LOCKS).map(|_| Mutex::new(())).collect(),
            reclaiming: Mutex::new(()),
            config,
        })
    }

    fn lock(&self, blk: u64) -> MutexGuard<'_, ()> {
        self.locks[(blk % LOCKS as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn meta(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The block's state (without the accessed bit), marking it accessed.
    fn touch(&self, blk: u64) -> u8 {
        let mut m = self.meta();
        let s = &mut m.states[blk as usize];
        if *s != NOT_CACHED {
            *s |= ACCESSED;
        }
        *s & 3
    }

    fn state(&self, blk: u64) -> u8 {
        self.meta().states[blk as usize] & 3
    }

    fn set_state(&self, blk: u64, state: u8) {
        let mut m = self.meta();
        let old = m.states[blk as usize] & 3;
        if old == NOT_CACHED && state != NOT_CACHED {
            m.cached += 1;
        } else if old != NOT_CACHED && state == NOT_CACHED {
            m.cached -= 1;
        }
        m.states[blk as usize] = if state == NOT_CACHED {
            NOT_CACHED
        } else {
            state | ACCESSED
        };
    }

    fn debug(&self, what: impl FnOnce() -> String) {
        if self.config.verbose {
            crate::log::debug(format!("cache: {}", what()));
        }
    }

    fn off(&self, blk: u64) -> u64 {
        blk << self.shift
    }

    /// Bytes of block `blk` that lie inside the plugin.
    fn len_in_plugin(&self, blk: u64) -> usize {
        (self.size - self.off(blk)).min(self.blksize) as usize
    }

    fn read_file(&self, buf: &mut [u8], blk: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, self.off(blk))
            .map_err(|e| Error::io(e, "cache: reading the cache"))
    }

    fn write_file(&self, buf: &[u8], blk: u64) -> Result<()> {
        self.file
            .write_all_at(buf, self.off(blk))
            .map_err(|e| Error::io(e, "cache: writing the cache"))
    }

    fn read_plugin(&self, next: &dyn Context, blk: u64, buf: &mut [u8]) -> Result<()> {
        let n = self.len_in_plugin(blk);
        next.pread(&mut buf[..n], self.off(blk), 0)?;
        buf[n..].fill(0);
        Ok(())
    }

    fn write_plugin(&self, next: &dyn Context, blk: u64, buf: &[u8], f: u32) -> Result<()> {
        let n = self.len_in_plugin(blk);
        next.pwrite(&buf[..n], self.off(blk), f)
    }

    /// Read whole block `blk` into `buf`; the caller holds its lock.
    /// Returns whether the cache grew.
    fn read_block(&self, next: &dyn Context, blk: u64, buf: &mut [u8], save: bool) -> Result<bool> {
        if self.touch(blk) != NOT_CACHED {
            self.read_file(buf, blk)?;
            return Ok(false);
        }
        self.read_plugin(next, blk, buf)?;
        if save {
            self.debug(|| format!("cache-on-read block {blk}"));
            self.write_file(buf, blk)?;
            self.set_state(blk, CLEAN);
            return Ok(true);
        }
        Ok(false)
    }

    /// Store whole block `blk`; the caller holds its lock.  `f` carries
    /// FUA when the write must reach the plugin now.
    fn write_block(&self, next: &dyn Context, blk: u64, buf: &[u8], f: u32) -> Result<()> {
        self.write_file(buf, blk)?;
        let through = self.config.mode == Mode::Writethrough
            || (self.config.mode == Mode::Writeback && f & flags::FUA != 0);
        if through {
            self.debug(|| format!("writethrough block {blk}"));
            self.write_plugin(next, blk, buf, f & flags::FUA)?;
            self.set_state(blk, CLEAN);
        } else {
            self.debug(|| format!("writeback block {blk}"));
            self.set_state(blk, DIRTY);
        }
        Ok(())
    }

    fn pread(&self, next: &dyn Context, buf: &mut [u8], offset: u64) -> Result<()> {
        let save = self.config.on_read.now();
        let end = offset + buf.len() as u64;
        let mut block = vec![0u8; self.blksize as usize];
        let mut pos = offset;
        let mut grew = false;
        while pos < end {
            let blk = pos >> self.shift;
            let start = self.off(blk);
            let n = ((start + self.blksize).min(end) - pos) as usize;
            let at = (pos - offset) as usize;
            {
                let _g = self.lock(blk);
                if n as u64 == self.blksize {
                    grew |= self.read_block(next, blk, &mut buf[at..at + n], save)?;
                } else {
                    grew |= self.read_block(next, blk, &mut block, save)?;
                    let i = (pos - start) as usize;
                    buf[at..at + n].copy_from_slice(&block[i..i + n]);
                }
            }
            pos += n as u64;
        }
        if grew {
            self.reclaim(next);
        }
        Ok(())
    }

    /// Write `data` (zeroes if `None`) at `offset`.
    fn modify(
        &self,
        next: &dyn Context,
        data: Option<&[u8]>,
        count: u64,
        offset: u64,
        f: u32,
    ) -> Result<()> {
        let end = offset + count;
        let mut block = vec![0u8; self.blksize as usize];
        let zeroes = vec![
            0u8;
            if data.is_none() {
                self.blksize as usize
            } else {
                0
            }
        ];
        let mut pos = offset;
        while pos < end {
            let blk = pos >> self.shift;
            let start = self.off(blk);
            let n = ((start + self.blksize).min(end) - pos) as usize;
            let at = (pos - offset) as usize;
            {
                let _g = self.lock(blk);
                if n as u64 == self.blksize {
                    let src = match data {
                        Some(d) => &d[at..at + n],
                        None => &zeroes[..],
                    };
                    self.write_block(next, blk, src, f)?;
                } else {
                    self.read_block(next, blk, &mut block, false)?;
                    let i = (pos - start) as usize;
                    match data {
                        Some(d) => block[i..i + n].copy_from_slice(&d[at..at + n]),
                        None => block[i..i + n].fill(0),
                    }
                    self.write_block(next, blk, &block, f)?;
                }
            }
            pos += n as u64;
        }
        self.reclaim(next);
        Ok(())
    }

    /// Write every dirty block to the plugin (not flushing it).
    fn write_back_all(&self, next: &dyn Context) -> Result<()> {
        let dirty: Vec<u64> = {
            let m = self.meta();
            m.states
                .iter()
                .enumerate()
                .filter(|(_, s)| **s & 3 == DIRTY)
                .map(|(i, _)| i as u64)
                .collect()
        };
        let mut block = vec![0u8; self.blksize as usize];
        let mut first: Option<Error> = None;
        for blk in dirty {
            let _g = self.lock(blk);
            if self.state(blk) != DIRTY {
                continue;
            }
            let r = self
                .read_file(&mut block, blk)
                .and_then(|()| self.write_plugin(next, blk, &block, 0));
            match r {
                Ok(()) => {
                    let mut m = self.meta();
                    let s = &mut m.states[blk as usize];
                    *s = CLEAN | (*s & ACCESSED);
                }
                Err(e) => {
                    crate::log::error(format!(
                        "cache: flush of block {blk} failed: {}",
                        e.message()
                    ));
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn cache(&self, next: &dyn Context, count: u64, offset: u64) -> Result<()> {
        let first = offset >> self.shift;
        let last = (offset + count).div_ceil(self.blksize);
        let mut block = vec![0u8; self.blksize as usize];
        for blk in first..last {
            {
                let _g = self.lock(blk);
                if self.touch(blk) == NOT_CACHED {
                    self.read_plugin(next, blk, &mut block)?;
                    self.debug(|| format!("cache block {blk}"));
                    self.write_file(&block, blk)?;
                    self.set_state(blk, CLEAN);
                }
            }
            self.reclaim(next);
        }
        Ok(())
    }

    /// Evict blocks while the cache is over its high threshold, down to the
    /// low threshold.  Errors writing a dirty block back stop the reclaim
    /// and are logged (the block stays cached and dirty).
    fn reclaim(&self, next: &dyn Context) {
        let Some(max) = self.config.max_size else {
            return;
        };
        let max_blocks = max / self.blksize;
        let high = (max_blocks * self.config.high / 100).max(1);
        let low = max_blocks * self.config.low / 100;
        if self.meta().cached <= high {
            return;
        }
        let Ok(_only_one) = self.reclaiming.try_lock() else {
            return;
        };
        self.debug(|| "reclaiming".into());
        let mut block = vec![0u8; self.blksize as usize];
        loop {
            // Pick a victim: the clock hand's next cached block not
            // accessed since the hand last passed it.
            let victim = {
                let mut m = self.meta();
                if m.cached <= low || m.cached == 0 {
                    return;
                }
                let n = m.states.len();
                let mut found = None;
                for _ in 0..2 * n {
                    let h = m.hand;
                    m.hand = (h + 1) % n;
                    let s = m.states[h];
                    if s == NOT_CACHED {
                        continue;
                    }
                    if s & ACCESSED != 0 {
                        m.states[h] = s & 3;
                        continue;
                    }
                    found = Some(h as u64);
                    break;
                }
                match found {
                    Some(v) => v,
                    None => return,
                }
            };
            let _g = self.lock(victim);
            match self.state(victim) {
                NOT_CACHED => continue,
                DIRTY => {
                    let r = self
                        .read_file(&mut block, victim)
                        .and_then(|()| self.write_plugin(next, victim, &block, 0));
                    if let Err(e) = r {
                        crate::log::error(format!(
                            "cache: writing back block {victim} to reclaim it failed: {}",
                            e.message()
                        ));
                        return;
                    }
                }
                _ => {}
            }
            self.debug(|| format!("reclaiming block {victim}"));
            let _ = fallocate(
                &self.file,
                FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                self.off(victim) as libc::off_t,
                self.blksize as libc::off_t,
            );
            self.set_state(victim, NOT_CACHED);
        }
    }

    /// Block status: dirty blocks are data; the rest is the plugin's.
    fn extents(&self, next: &dyn Context, extents: &mut Extents, f: u32) -> Result<()> {
        let req_one = f & flags::REQ_ONE != 0;
        let end = extents.end();
        let mut pos = extents.start();
        while pos < end {
            let blk = pos >> self.shift;
            let dirty = self.state(blk) == DIRTY;
            let mut run_end = self.off(blk + 1);
            while run_end < end && (self.state(run_end >> self.shift) == DIRTY) == dirty {
                run_end += self.blksize;
            }
            let run_end = run_end.min(end);
            if dirty {
                extents.add(pos, run_end - pos, 0)?;
            } else {
                let mut sub = Extents::new(pos, run_end);
                next.extents(&mut sub, f)?;
                let before = pos;
                for e in sub.list() {
                    extents.add(e.offset, e.length, e.flags)?;
                    pos = e.offset + e.length;
                }
                if pos < run_end {
                    // A short answer from the plugin: stop there.
                    if pos == before {
                        extents.add(pos, run_end - pos, 0)?;
                    }
                    return Ok(());
                }
            }
            if req_one && !extents.list().is_empty() {
                break;
            }
            pos = run_end;
        }
        Ok(())
    }
}

struct CacheContext {
    next: Box<dyn Context>,
    export: String,
    config: Arc<Config>,
    caches: Arc<Mutex<HashMap<String, Arc<Store>>>>,
    store: OnceLock<Arc<Store>>,
}

impl CacheContext {
    fn store(&self) -> Result<&Store> {
        self.store
            .get()
            .map(|s| &**s)
            .ok_or_else(|| Error::new(Errno::EIO, "cache: the cache has not been created"))
    }

    /// FUA that the cache handles with a flush after the write (unsafe
    /// mode, or a plugin that emulates FUA): the write goes without FUA.
    fn split_fua(&self, f: u32) -> Result<(u32, bool)> {
        if f & flags::FUA != 0
            && (self.config.mode == Mode::Unsafe || self.next.can_fua()? == FuaMode::Emulate)
        {
            return Ok((f & !flags::FUA, true));
        }
        Ok((f, false))
    }

    fn do_flush(&self) -> Result<()> {
        if self.config.mode == Mode::Unsafe {
            return Ok(());
        }
        let r = self.store()?.write_back_all(&*self.next);
        let f = self.next.flush(0);
        r.and(f)
    }
}

impl FilterContext for CacheContext {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn prepare(&self, _readonly: bool) -> Result<()> {
        let size = self.next.get_size()?;
        crate::log::debug(format!("cache: underlying file size: {size}"));
        let mut map = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        let store = match map.get(&self.export) {
            Some(s) if s.size == size => s.clone(),
            Some(s) => {
                return Err(Error::new(
                    Errno::EIO,
                    format!("cache: the plugin's size changed from {} to {size}", s.size),
                ))
            }
            None => {
                let s = Arc::new(Store::new(size, self.config.clone())?);
                map.insert(self.export.clone(), s.clone());
                s
            }
        };
        let _ = self.store.set(store);
        Ok(())
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        let bs = self.store()?.blksize;
        Ok(Some(match self.next.block_size()? {
            Some(b) if b.minimum != 0 => {
                let mut b = b;
                if u64::from(b.maximum) >= bs {
                    b.preferred = b.preferred.max(bs as u32);
                }
                b
            }
            _ => BlockSize {
                minimum: 1,
                preferred: bs.min(u64::from(u32::MAX)) as u32,
                maximum: u32::MAX,
            },
        }))
    }

    fn can_cache(&self) -> Result<CacheMode> {
        Ok(CacheMode::Native)
    }
    fn can_fast_zero(&self) -> Result<bool> {
        Ok(true)
    }
    fn can_flush(&self) -> Result<bool> {
        if self.config.mode == Mode::Unsafe {
            return Ok(true);
        }
        self.next.can_flush()
    }
    fn can_fua(&self) -> Result<FuaMode> {
        if self.config.mode == Mode::Unsafe {
            return Ok(FuaMode::Native);
        }
        self.next.can_fua()
    }
    fn can_multi_conn(&self) -> Result<bool> {
        // Writeback: a flush on any connection writes back every dirty
        // block; unsafe: flush is a no-op over a shared cache.
        if self.config.mode != Mode::Writethrough {
            return Ok(true);
        }
        self.next.can_multi_conn()
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _f: u32) -> Result<()> {
        self.store()?.pread(&*self.next, buf, offset)
    }

    fn pwrite(&self, buf: &[u8], offset: u64, f: u32) -> Result<()> {
        let (f, flush) = self.split_fua(f)?;
        self.store()?
            .modify(&*self.next, Some(buf), buf.len() as u64, offset, f)?;
        if flush {
            self.do_flush()?;
        }
        Ok(())
    }

    fn zero(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        if f & flags::FAST_ZERO != 0 {
            return Err(Error::new(
                Errno::ENOTSUP,
                "cache: fast zero is not supported",
            ));
        }
        let (f, flush) = self.split_fua(f & !flags::MAY_TRIM)?;
        self.store()?.modify(&*self.next, None, count, offset, f)?;
        if flush {
            self.do_flush()?;
        }
        Ok(())
    }

    fn flush(&self, _f: u32) -> Result<()> {
        self.do_flush()
    }

    fn extents(&self, extents: &mut Extents, f: u32) -> Result<()> {
        self.store()?.extents(&*self.next, extents, f)
    }

    fn cache(&self, count: u64, offset: u64, _f: u32) -> Result<()> {
        self.store()?.cache(&*self.next, count, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let mut f = Cache::new();
        assert!(f.config("cache", "writethrough").unwrap());
        assert_eq!(f.config.mode, Mode::Writethrough);
        assert!(f.config("cache", "sometimes").is_err());
        assert!(f.config("cache-max-size", "4M").unwrap());
        assert_eq!(f.config.max_size, Some(4 << 20));
        assert!(f.config("cache-max-size", "1000K").is_err());
        assert!(f.config("cache-min-block-size", "4K").unwrap());
        for bad in ["2K", "5000", "4G", "x"] {
            assert!(f.config("cache-min-block-size", bad).is_err(), "{bad}");
        }
        assert!(f.config("cache-high-threshold", "0").is_err());
        assert!(f.config("cache-low-threshold", "-1").is_err());
        assert!(f.config("cache-low-threshold", "90").unwrap());
        assert!(f.config("cache-high-threshold", "90").unwrap());
        assert!(f.config_complete().is_err());
        assert!(f.config("cache-on-read", "/x").unwrap());
        assert!(!f.config("size", "1M").unwrap());
    }
}
