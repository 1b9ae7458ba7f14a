//! The `cow` filter: a private, temporary, writable overlay over a plugin
//! that is only ever read (copy-on-write).
//!
//! The plugin is opened read-only; nothing written through this filter
//! reaches it.  Writes land in an unlinked temporary file (in `$TMPDIR`,
//! default `/var/tmp`) in blocks of `cow-block-size` bytes (default 64K), and
//! a bitmap with two bits per block says where each block's data is:
//!
//! - not in the overlay: the plugin's data;
//! - data: the overlay file's copy of the block;
//! - zero: zeroes (written with write-zeroes), allocated;
//! - trimmed: zeroes (trimmed, or zeroed with `may_trim`), a hole.
//!
//! As nbdkit (since 1.44), every export has its own overlay, shared by all
//! connections to that export, so all clients see the same data and
//! multi-conn is safe; everything is thrown away when the server exits.
//!
//! Concurrency: the bitmap is made of atomics, so a read takes no lock at
//! all, and reads only what it was asked for (from the plugin, the overlay
//! or a fill of zeroes, split at block boundaries where the source changes).
//! Every change to a block (a write, a read-modify-write of a partial block,
//! a trim, a save by `cow-on-read` or `cow-on-cache`) holds that block's
//! lock (one of a fixed set of striped mutexes) from reading the old
//! contents to publishing the new state, so concurrent partial writes to one
//! block never lose each other's bytes and a save of the plugin's data never
//! overwrites a write that finished in the meantime.

use super::tmpfile;
use crate::error::{Error, Result};
use crate::extents::{self, Extents};
use crate::filter::{Filter, FilterContext};
use crate::layers::{flags, Backend, Context};
use crate::parse::{parse_bool, parse_size};
use crate::plugin::{BlockSize, CacheMode, FuaMode, ZeroMode};
use nix::errno::Errno;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Default `cow-block-size`.
const DEFAULT_BLKSIZE: u64 = 64 * 1024;

/// Block states (two bits each in the bitmap).
const NOT_ALLOCATED: u8 = 0;
const DATA: u8 = 1;
const ZERO: u8 = 2;
const TRIMMED: u8 = 3;

/// Number of striped block locks.
const LOCKS: usize = 64;

/// A `BOOL|/PATH` switch (`cow-on-read`, `cache-on-read`): off, on, or on
/// while a file exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OnRead {
    Off,
    On,
    /// On while this file exists (checked on every read).
    Path(PathBuf),
}

impl OnRead {
    /// `true`, `false` (any boolean word) or an absolute path.
    pub(crate) fn parse(value: &str) -> Result<Self> {
        Ok(if value.starts_with('/') {
            OnRead::Path(PathBuf::from(value))
        } else if parse_bool(value)? {
            OnRead::On
        } else {
            OnRead::Off
        })
    }

    pub(crate) fn now(&self) -> bool {
        match self {
            OnRead::Off => false,
            OnRead::On => true,
            OnRead::Path(p) => p.exists(),
        }
    }
}

#[derive(Debug, Clone)]
struct Config {
    blksize: u64,
    on_cache: bool,
    on_read: OnRead,
}

pub struct Cow {
    config: Arc<Config>,
    /// One overlay per export name, made by the export's first connection.
    overlays: Arc<Mutex<HashMap<String, Arc<Overlay>>>>,
}

impl Cow {
    pub fn new() -> Self {
        Cow {
            config: Arc::new(Config {
                blksize: DEFAULT_BLKSIZE,
                on_cache: false,
                on_read: OnRead::Off,
            }),
            overlays: Arc::default(),
        }
    }
}

impl Default for Cow {
    fn default() -> Self {
        Self::new()
    }
}

/// Parse `cow-block-size`: a power of two from 4096 to 2G.
fn parse_blksize(value: &str) -> Result<u64> {
    let v = parse_size(value)?;
    if !(4096..=1 << 31).contains(&v) || !v.is_power_of_two() {
        return Err(Error::config(format!(
            "cow: cow-block-size is out of range (4096..2G) or not a power of 2: {value}"
        )));
    }
    Ok(v)
}

impl Filter for Cow {
    fn name(&self) -> &'static str {
        "cow"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit copy-on-write (COW) filter")
    }

    fn description(&self) -> &'static str {
        "Make a temporary writable overlay on top of a plugin."
    }

    fn config_help(&self) -> &'static str {
        "cow-block-size=<N>       Set COW block size.\n\
         cow-on-cache=<BOOL>      Copy cache (prefetch) requests to the overlay.\n\
         cow-on-read=<BOOL>|/PATH Copy read requests to the overlay."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let c = Arc::make_mut(&mut self.config);
        match key {
            "cow-block-size" => c.blksize = parse_blksize(value)?,
            "cow-on-cache" => c.on_cache = parse_bool(value)?,
            "cow-on-read" => c.on_read = OnRead::parse(value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn quick_requests(&self) -> bool {
        // Reads of the plugin's blocks add no waiting at all, and the
        // overlay is a temporary file that lives in the page cache; the
        // server's own pacing notices if its requests turn slow.
        true
    }

    fn get_ready(&self) -> Result<()> {
        // Fail at startup, not on the first connection, if the temporary
        // directory is unusable.
        tmpfile::create("cow", 0)
            .map(drop)
            .map_err(|e| Error::config(format!("cow: {}", e.message())))
    }

    fn open(
        &self,
        next: &dyn Backend,
        _readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        // The plugin is never written: always open it read-only.
        Ok(Box::new(CowContext {
            next: next.open(true, export, is_tls)?,
            export: export.to_string(),
            config: self.config.clone(),
            overlays: self.overlays.clone(),
            overlay: OnceLock::new(),
        }))
    }
}

/// Two bits per block, 32 blocks per word.
struct Bitmap {
    words: Vec<AtomicU64>,
}

impl Bitmap {
    fn new(blocks: u64) -> Result<Self> {
        let n = usize::try_from(blocks.div_ceil(32))
            .map_err(|_| Error::new(Errno::ENOMEM, "cow: bitmap too large"))?;
        let mut words = Vec::new();
        words
            .try_reserve_exact(n)
            .map_err(|_| Error::new(Errno::ENOMEM, "cow: cannot allocate the bitmap"))?;
        words.resize_with(n, || AtomicU64::new(0));
        Ok(Bitmap { words })
    }

    fn get(&self, blk: u64) -> u8 {
        let w = self.words[(blk / 32) as usize].load(Ordering::Acquire);
        ((w >> ((blk % 32) * 2)) & 3) as u8
    }

    /// Change one block's state in one atomic step (a reader never sees a
    /// state in between).
    fn set(&self, blk: u64, state: u8) {
        let shift = (blk % 32) * 2;
        let _ = self.words[(blk / 32) as usize].fetch_update(
            Ordering::Release,
            Ordering::Relaxed,
            |w| Some((w & !(3 << shift)) | (u64::from(state) << shift)),
        );
    }
}

/// One export's overlay.
struct Overlay {
    file: File,
    /// The plugin's size.
    size: u64,
    blksize: u64,
    shift: u32,
    bitmap: Bitmap,
    locks: Vec<Mutex<()>>,
}

impl Overlay {
    fn new(size: u64, blksize: u64) -> Result<Self> {
        let blocks = size.div_ceil(blksize);
        Ok(Overlay {
            file: tmpfile::create("cow", blocks * blksize)?,
            size,
            blksize,
            shift: blksize.trailing_zeros(),
            bitmap: Bitmap::new(blocks)?,
            locks: (0..LOCKS).map(|_| Mutex::new(())).collect(),
        })
    }

    fn lock(&self, blk: u64) -> MutexGuard<'_, ()> {
        self.locks[(blk % LOCKS as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn blk_offset(&self, blk: u64) -> u64 {
        blk << self.shift
    }

    fn read_file(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(e, "cow: reading the overlay"))
    }

    fn write_file(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| Error::io(e, "cow: writing the overlay"))
    }

    /// Read the plugin's copy of block `blk` into `buf` (one block long),
    /// zero-filling past the end of the plugin.
    fn read_plugin_block(&self, next: &dyn Context, blk: u64, buf: &mut [u8]) -> Result<()> {
        let off = self.blk_offset(blk);
        let n = (self.size - off).min(self.blksize) as usize;
        next.pread(&mut buf[..n], off, 0)?;
        buf[n..].fill(0);
        Ok(())
    }

    /// The current contents of block `blk`; the caller holds its lock.
    fn read_block(&self, next: &dyn Context, blk: u64, buf: &mut [u8]) -> Result<()> {
        match self.bitmap.get(blk) {
            NOT_ALLOCATED => self.read_plugin_block(next, blk, buf),
            DATA => self.read_file(buf, self.blk_offset(blk)),
            _ => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    /// Save the plugin's copy of `blk` (already read into `block`) unless
    /// the block has entered the overlay meanwhile.
    fn save_if_absent(&self, blk: u64, block: &[u8]) -> Result<()> {
        let _g = self.lock(blk);
        if self.bitmap.get(blk) == NOT_ALLOCATED {
            self.write_file(block, self.blk_offset(blk))?;
            self.bitmap.set(blk, DATA);
        }
        Ok(())
    }

    /// Read `buf.len()` bytes at `offset`.  Without `save`, nothing but
    /// the bytes asked for is read, and no lock is taken.
    fn pread(&self, next: &dyn Context, buf: &mut [u8], offset: u64, save: bool) -> Result<()> {
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        let mut block: Vec<u8> = Vec::new();
        while pos < end {
            let blk = pos >> self.shift;
            let state = self.bitmap.get(blk);
            // Extend over following blocks in the same state.
            let mut run_end = self.blk_offset(blk + 1);
            while run_end < end && self.bitmap.get(run_end >> self.shift) == state {
                run_end += self.blksize;
            }
            let run_end = run_end.min(end);
            let part = &mut buf[(pos - offset) as usize..(run_end - offset) as usize];
            match state {
                NOT_ALLOCATED if save => {
                    // Whole blocks, so that they can be kept.
                    if block.is_empty() {
                        block = vec![0; self.blksize as usize];
                    }
                    let mut p = pos;
                    while p < run_end {
                        let b = p >> self.shift;
                        self.read_plugin_block(next, b, &mut block)?;
                        self.save_if_absent(b, &block)?;
                        let in_blk = (p - self.blk_offset(b)) as usize;
                        let n = ((self.blk_offset(b + 1)).min(run_end) - p) as usize;
                        let at = (p - pos) as usize;
                        part[at..at + n].copy_from_slice(&block[in_blk..in_blk + n]);
                        p += n as u64;
                    }
                }
                NOT_ALLOCATED => next.pread(part, pos, 0)?,
                DATA => self.read_file(part, pos)?,
                _ => part.fill(0),
            }
            pos = run_end;
        }
        Ok(())
    }

    /// Change the bytes `[at, at+len)` of block `blk` to `data` (zeroes if
    /// `None`), keeping the rest of the block.
    fn rmw(
        &self,
        next: &dyn Context,
        blk: u64,
        at: usize,
        len: usize,
        data: Option<&[u8]>,
    ) -> Result<()> {
        let mut block = vec![0u8; self.blksize as usize];
        let _g = self.lock(blk);
        self.read_block(next, blk, &mut block)?;
        match data {
            Some(d) => block[at..at + len].copy_from_slice(d),
            None => block[at..at + len].fill(0),
        }
        self.write_file(&block, self.blk_offset(blk))?;
        self.bitmap.set(blk, DATA);
        Ok(())
    }

    /// Apply a write (`data` = `Some`) or a zeroing (`None`, whole blocks
    /// then get state `whole`) of `count` bytes at `offset`.
    fn modify(
        &self,
        next: &dyn Context,
        data: Option<&[u8]>,
        count: u64,
        offset: u64,
        whole: u8,
    ) -> Result<()> {
        let end = offset + count;
        let mut pos = offset;
        while pos < end {
            let blk = pos >> self.shift;
            let start = self.blk_offset(blk);
            let blk_end = start + self.blksize;
            let n = blk_end.min(end) - pos;
            let slice = data.map(|d| &d[(pos - offset) as usize..(pos - offset + n) as usize]);
            if n == self.blksize {
                let _g = self.lock(blk);
                if let Some(s) = slice {
                    self.write_file(s, start)?;
                    self.bitmap.set(blk, DATA);
                } else {
                    self.bitmap.set(blk, whole);
                }
            } else {
                self.rmw(next, blk, (pos - start) as usize, n as usize, slice)?;
            }
            pos += n;
        }
        Ok(())
    }

    /// Block status of `[extents.start(), extents.end())`.
    fn extents(&self, next: &dyn Context, extents: &mut Extents, f: u32) -> Result<()> {
        let req_one = f & flags::REQ_ONE != 0;
        let end = extents.end();
        let mut pos = extents.start();
        let mut plugin_extents: Option<bool> = None;
        while pos < end {
            let blk = pos >> self.shift;
            let state = self.bitmap.get(blk);
            let mut run_end = self.blk_offset(blk + 1);
            while run_end < end && self.bitmap.get(run_end >> self.shift) == state {
                run_end += self.blksize;
            }
            let run_end = run_end.min(end);
            match state {
                NOT_ALLOCATED => {
                    let can = match plugin_extents {
                        Some(c) => c,
                        None => *plugin_extents.insert(next.can_extents()?),
                    };
                    if can {
                        // Ask the plugin for the whole run at once.
                        let hi = run_end.min(self.size);
                        while pos < hi {
                            let mut sub = Extents::new(pos, hi);
                            next.extents(&mut sub, f)?;
                            let before = pos;
                            for e in sub.list() {
                                extents.add(e.offset, e.length, e.flags)?;
                                pos = e.offset + e.length;
                            }
                            if pos == before || req_one {
                                break;
                            }
                        }
                        if pos < run_end && (!req_one || extents.list().is_empty()) {
                            // The plugin said nothing about the rest.
                            extents.add(pos, run_end - pos, 0)?;
                        }
                    } else {
                        extents.add(pos, run_end - pos, 0)?;
                    }
                }
                DATA => extents.add(pos, run_end - pos, 0)?,
                ZERO => extents.add(pos, run_end - pos, extents::ZERO)?,
                _ => extents.add(pos, run_end - pos, extents::HOLE | extents::ZERO)?,
            }
            if req_one && !extents.list().is_empty() {
                break;
            }
            pos = run_end;
        }
        Ok(())
    }

    /// A cache (prefetch) request: `save` copies the plugin's blocks into
    /// the overlay; otherwise the plugin's own cache is asked (when it has
    /// one) for the blocks not in the overlay.
    fn cache(
        &self,
        next: &dyn Context,
        count: u64,
        offset: u64,
        save: bool,
        next_cache: CacheMode,
    ) -> Result<()> {
        let first = offset >> self.shift;
        let last = (offset + count).div_ceil(self.blksize);
        let mut block: Vec<u8> = Vec::new();
        let mut blk = first;
        while blk < last {
            if self.bitmap.get(blk) != NOT_ALLOCATED {
                blk += 1;
                continue;
            }
            if save {
                if block.is_empty() {
                    block = vec![0; self.blksize as usize];
                }
                self.read_plugin_block(next, blk, &mut block)?;
                self.save_if_absent(blk, &block)?;
                blk += 1;
            } else {
                let mut run = blk + 1;
                while run < last && self.bitmap.get(run) == NOT_ALLOCATED {
                    run += 1;
                }
                if next_cache != CacheMode::None {
                    let lo = self.blk_offset(blk);
                    let hi = self.blk_offset(run).min(self.size);
                    next.cache(hi - lo, lo, 0)?;
                }
                blk = run;
            }
        }
        Ok(())
    }
}

struct CowContext {
    next: Box<dyn Context>,
    export: String,
    config: Arc<Config>,
    overlays: Arc<Mutex<HashMap<String, Arc<Overlay>>>>,
    overlay: OnceLock<Arc<Overlay>>,
}

impl CowContext {
    fn overlay(&self) -> Result<&Overlay> {
        self.overlay
            .get()
            .map(|o| &**o)
            .ok_or_else(|| Error::new(Errno::EIO, "cow: the overlay has not been created"))
    }
}

impl FilterContext for CowContext {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn prepare(&self, _readonly: bool) -> Result<()> {
        let size = self.next.get_size()?;
        crate::log::debug(format!("cow: underlying file size: {size}"));
        let mut map = self.overlays.lock().unwrap_or_else(|e| e.into_inner());
        let overlay = match map.get(&self.export) {
            Some(o) if o.size == size => o.clone(),
            Some(o) => {
                return Err(Error::new(
                    Errno::EIO,
                    format!(
                        "cow: the plugin's size changed from {} to {size}; \
                         the underlying disk must not be resized",
                        o.size
                    ),
                ))
            }
            None => {
                let o = Arc::new(Overlay::new(size, self.config.blksize)?);
                map.insert(self.export.clone(), o.clone());
                o
            }
        };
        let _ = self.overlay.set(overlay);
        Ok(())
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        let bs = self.config.blksize;
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
        // Advertised, though every fast zero is refused (as nbdkit): better
        // than leaving clients to guess.
        Ok(true)
    }
    fn can_extents(&self) -> Result<bool> {
        Ok(true)
    }
    fn can_fua(&self) -> Result<FuaMode> {
        // Nothing is durable anyway: FUA is accepted and ignored.
        Ok(FuaMode::Native)
    }
    fn can_multi_conn(&self) -> Result<bool> {
        // One overlay per export, shared by every connection.
        Ok(true)
    }
    fn can_cache(&self) -> Result<CacheMode> {
        // Ask now so that the answer is known below.
        self.next.can_cache()?;
        Ok(CacheMode::Native)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _f: u32) -> Result<()> {
        let save = self.config.on_read.now();
        self.overlay()?.pread(&*self.next, buf, offset, save)
    }

    fn pwrite(&self, buf: &[u8], offset: u64, _f: u32) -> Result<()> {
        self.overlay()?
            .modify(&*self.next, Some(buf), buf.len() as u64, offset, DATA)
    }

    fn flush(&self, _f: u32) -> Result<()> {
        Ok(())
    }

    fn trim(&self, count: u64, offset: u64, _f: u32) -> Result<()> {
        self.overlay()?
            .modify(&*self.next, None, count, offset, TRIMMED)
    }

    fn zero(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        if f & flags::FAST_ZERO != 0 {
            return Err(Error::new(
                Errno::ENOTSUP,
                "cow: fast zero is not supported",
            ));
        }
        let whole = if f & flags::MAY_TRIM != 0 {
            TRIMMED
        } else {
            ZERO
        };
        self.overlay()?
            .modify(&*self.next, None, count, offset, whole)
    }

    fn extents(&self, extents: &mut Extents, f: u32) -> Result<()> {
        self.overlay()?.extents(&*self.next, extents, f)
    }

    fn cache(&self, count: u64, offset: u64, _f: u32) -> Result<()> {
        let next_cache = self.next.can_cache()?;
        self.overlay()?
            .cache(&*self.next, count, offset, self.config.on_cache, next_cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let mut f = Cow::new();
        assert!(f.config("cow-block-size", "4k").unwrap());
        assert_eq!(f.config.blksize, 4096);
        assert!(f.config("cow-block-size", "2G").unwrap());
        for bad in ["2048", "3000", "4097", "4G", "x", "-4096", ""] {
            assert!(f.config("cow-block-size", bad).is_err(), "{bad}");
        }
        assert!(f.config("cow-on-cache", "true").unwrap());
        assert!(f.config.on_cache);
        assert!(f.config("cow-on-cache", "maybe").is_err());
        assert!(f.config("cow-on-read", "/tmp/x").unwrap());
        assert_eq!(f.config.on_read, OnRead::Path("/tmp/x".into()));
        assert!(f.config("cow-on-read", "on").unwrap());
        assert_eq!(f.config.on_read, OnRead::On);
        assert!(f.config("cow-on-read", "relative/path").is_err());
        assert!(!f.config("size", "1M").unwrap());
    }

    #[test]
    fn bitmap_states() {
        let b = Bitmap::new(100).unwrap();
        for blk in 0..100 {
            assert_eq!(b.get(blk), NOT_ALLOCATED);
        }
        b.set(31, TRIMMED);
        b.set(32, DATA);
        b.set(33, ZERO);
        b.set(31, DATA);
        assert_eq!(b.get(30), NOT_ALLOCATED);
        assert_eq!(b.get(31), DATA);
        assert_eq!(b.get(32), DATA);
        assert_eq!(b.get(33), ZERO);
        assert_eq!(b.get(34), NOT_ALLOCATED);
    }
}
