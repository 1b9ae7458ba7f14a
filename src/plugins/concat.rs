//! A disk made of consecutive regions, each backed by a file, by bytes held
//! in memory (a generated partition table) or by zeroes (padding).  Shared
//! by the `split` plugin (files only) and the `partitioning` plugin (files
//! between generated tables and padding).
//!
//! Requests that cross region boundaries are cut at each boundary.  File
//! regions are served by the file plugin's [`FileHandle`], so they get its
//! extents, trim and zeroing.  Memory and padding regions are read-only:
//! a write there succeeds only if it would not change a byte (so a client
//! copying the whole disk back onto itself works) and otherwise fails with
//! `EIO`, as nbdkit's partitioning plugin does.

use crate::error::{Error, Result};
use crate::extents::{Extents, HOLE, ZERO};
use crate::plugin::{CacheMode, FuaMode, Handle, ZeroFlags, ZeroMode};
use crate::plugins::file::{open_path, Fadvise, FileHandle, PageCache};
use nix::errno::Errno;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What backs a region.
#[derive(Debug)]
pub enum Source {
    /// The file with this index in the disk's file list.
    File(usize),
    /// Bytes in memory: the region is `data[..len]`.
    Data(Arc<[u8]>),
    /// Zeroes.
    Zero,
}

/// One region of the virtual disk: `[start, start + len)`.
#[derive(Debug)]
pub struct Region {
    pub start: u64,
    pub len: u64,
    pub source: Source,
}

impl Region {
    fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// The layout: contiguous, non-empty regions starting at 0.
#[derive(Debug, Default)]
pub struct Layout {
    pub regions: Vec<Region>,
}

impl Layout {
    /// Total size in bytes.
    pub fn size(&self) -> u64 {
        self.regions.last().map_or(0, Region::end)
    }

    /// Append a region of `len` bytes (nothing if `len` is 0).
    pub fn push(&mut self, len: u64, source: Source) {
        if len > 0 {
            let start = self.size();
            self.regions.push(Region { start, len, source });
        }
    }

    /// Index of the region holding `offset` (which must be < size).
    fn find(&self, offset: u64) -> usize {
        self.regions.partition_point(|r| r.end() <= offset)
    }
}

/// Size of a file to be served (a regular file; nbdkit's split and
/// partitioning plugins take no block devices).
pub fn file_size(path: &Path) -> Result<u64> {
    let meta =
        std::fs::metadata(path).map_err(|e| Error::io(e, format!("stat: {}", path.display())))?;
    if !meta.is_file() {
        return Err(Error::config(format!(
            "{}: is not a regular file",
            path.display()
        )));
    }
    Ok(meta.len())
}

/// One connection to a concatenated disk.
pub struct ConcatHandle {
    layout: Arc<Layout>,
    files: Vec<FileHandle>,
    writable: bool,
}

impl ConcatHandle {
    /// Open every file of `paths` (read-only when `readonly`, or when a
    /// file cannot be opened for writing) and check that each still has
    /// the size it had at startup.
    pub fn open(
        layout: Arc<Layout>,
        paths: &[(PathBuf, u64)],
        readonly: bool,
    ) -> Result<ConcatHandle> {
        let mut files = Vec::with_capacity(paths.len());
        let mut writable = !readonly;
        for (path, size) in paths {
            let (f, w) = open_path(path, readonly)?;
            let now = f
                .metadata()
                .map_err(|e| Error::io(e, format!("fstat: {}", path.display())))?
                .len();
            if now != *size {
                return Err(Error::new(
                    Errno::EIO,
                    format!(
                        "{}: size changed from {size} to {now} bytes since the server started",
                        path.display()
                    ),
                ));
            }
            writable &= w;
            files.push(FileHandle::new(f, w, PageCache::Default, Fadvise::Normal)?);
        }
        Ok(ConcatHandle {
            layout,
            files,
            writable,
        })
    }

    /// Call `f(region, offset within region, range of the request)` for
    /// each region that `[offset, offset + count)` touches.
    fn each(
        &self,
        offset: u64,
        count: u64,
        mut f: impl FnMut(&Region, u64, std::ops::Range<usize>) -> Result<()>,
    ) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let end = offset
            .checked_add(count)
            .filter(|&e| e <= self.layout.size())
            .ok_or_else(|| Error::new(Errno::EIO, "request beyond the end of the disk"))?;
        let mut i = self.layout.find(offset);
        let mut pos = offset;
        while pos < end {
            let r = &self.layout.regions[i];
            let stop = end.min(r.end());
            let lo = (pos - offset) as usize;
            let hi = (stop - offset) as usize;
            f(r, pos - r.start, lo..hi)?;
            pos = stop;
            i += 1;
        }
        Ok(())
    }
}

/// The error for a write that would change a generated region.
fn read_only_region(source: &Source) -> Error {
    match source {
        Source::Data(_) => Error::new(
            Errno::EIO,
            "attempt to change the virtual partition table (it is read-only)",
        ),
        _ => Error::new(
            Errno::EIO,
            "attempt to write non-zero data to padding between partitions",
        ),
    }
}

impl Handle for ConcatHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.layout.size())
    }

    fn can_write(&self) -> Result<bool> {
        Ok(self.writable)
    }

    fn can_flush(&self) -> Result<bool> {
        Ok(true)
    }

    fn can_trim(&self) -> Result<bool> {
        Ok(self.writable)
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
        // Every connection opens the same files; flush syncs them all.
        Ok(true)
    }

    fn can_cache(&self) -> Result<CacheMode> {
        Ok(CacheMode::Native)
    }

    fn pread(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.each(offset, buf.len() as u64, |r, at, range| {
            let part = &mut buf[range];
            match &r.source {
                Source::File(i) => self.files[*i].pread(part, at),
                Source::Data(d) => {
                    part.copy_from_slice(&d[at as usize..at as usize + part.len()]);
                    Ok(())
                }
                Source::Zero => {
                    part.fill(0);
                    Ok(())
                }
            }
        })
    }

    fn pwrite(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        self.each(offset, buf.len() as u64, |r, at, range| {
            let part = &buf[range];
            match &r.source {
                Source::File(i) => self.files[*i].pwrite(part, at, fua),
                Source::Data(d) if d[at as usize..at as usize + part.len()] == *part => Ok(()),
                Source::Zero if part.iter().all(|&b| b == 0) => Ok(()),
                other => Err(read_only_region(other)),
            }
        })
    }

    fn flush(&self) -> Result<()> {
        self.files.iter().try_for_each(|f| f.flush())
    }

    fn trim(&self, count: u64, offset: u64, fua: bool) -> Result<()> {
        // Trim is advisory: nothing to do outside the files.
        self.each(offset, count, |r, at, range| match r.source {
            Source::File(i) => self.files[i].trim(range.len() as u64, at, fua),
            _ => Ok(()),
        })
    }

    fn zero(&self, count: u64, offset: u64, flags: ZeroFlags) -> Result<()> {
        self.each(offset, count, |r, at, range| {
            let len = range.len() as u64;
            match &r.source {
                Source::File(i) => self.files[*i].zero(len, at, flags),
                Source::Data(d) if d[at as usize..(at + len) as usize].iter().all(|&b| b == 0) => {
                    Ok(())
                }
                Source::Zero => Ok(()),
                other => Err(read_only_region(other)),
            }
        })
    }

    fn extents(&self, extents: &mut Extents, req_one: bool) -> Result<()> {
        let (start, end) = (extents.start(), extents.end());
        let mut i = self.layout.find(start);
        let mut pos = start;
        while pos < end && i < self.layout.regions.len() {
            let r = &self.layout.regions[i];
            let stop = end.min(r.end());
            match r.source {
                Source::File(n) => {
                    let mut sub = Extents::new(pos - r.start, stop - r.start);
                    self.files[n].extents(&mut sub, req_one)?;
                    let mut covered = pos;
                    for e in sub.list() {
                        let at = r.start + e.offset;
                        if at != covered {
                            break;
                        }
                        extents.add(at, e.length, e.flags)?;
                        covered = at + e.length;
                    }
                    if covered < stop {
                        // The file described less than asked: stop here.
                        return Ok(());
                    }
                }
                Source::Data(_) => extents.add(pos, stop - pos, 0)?,
                Source::Zero => extents.add(pos, stop - pos, HOLE | ZERO)?,
            }
            if req_one {
                return Ok(());
            }
            pos = stop;
            i += 1;
        }
        Ok(())
    }

    fn cache(&self, count: u64, offset: u64) -> Result<()> {
        self.each(offset, count, |r, at, range| match r.source {
            Source::File(i) => self.files[i].cache(range.len() as u64, at),
            _ => Ok(()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_file(dir: &Path, name: &str, data: &[u8]) -> (PathBuf, u64) {
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().write_all(data).unwrap();
        (p, data.len() as u64)
    }

    #[test]
    fn reads_and_writes_cross_regions() {
        let dir = tempfile::tempdir().unwrap();
        let a = temp_file(dir.path(), "a", &[1u8; 100]);
        let b = temp_file(dir.path(), "b", &[2u8; 50]);
        let mut layout = Layout::default();
        layout.push(4, Source::Data(Arc::from(&b"ABCD"[..])));
        layout.push(100, Source::File(0));
        layout.push(6, Source::Zero);
        layout.push(50, Source::File(1));
        let layout = Arc::new(layout);
        let h = ConcatHandle::open(layout, &[a, b], false).unwrap();
        assert_eq!(h.get_size().unwrap(), 160);
        let mut buf = vec![9u8; 160];
        h.pread(&mut buf, 0).unwrap();
        assert_eq!(&buf[..4], b"ABCD");
        assert!(buf[4..104].iter().all(|&b| b == 1));
        assert!(buf[104..110].iter().all(|&b| b == 0));
        assert!(buf[110..].iter().all(|&b| b == 2));
        // Same bytes back over everything: accepted.
        h.pwrite(&buf, 0, false).unwrap();
        // Changing the table or the padding: EIO.
        assert_eq!(h.pwrite(b"X", 1, false).unwrap_err().errno(), Errno::EIO);
        assert_eq!(h.pwrite(b"X", 105, false).unwrap_err().errno(), Errno::EIO);
        // A write across file, padding (zeroes) and the next file.
        let mut w = vec![7u8; 20];
        w[6..16].fill(0);
        h.pwrite(&w, 98, false).unwrap();
        let mut r = vec![0u8; 20];
        h.pread(&mut r, 98).unwrap();
        assert_eq!(&r[..6], &[7u8; 6]);
        assert_eq!(&r[12..], &[0, 0, 0, 0, 7, 7, 7, 7]);
        assert!(h.pread(&mut r, 150).is_err());
        let mut e = Extents::new(0, 160);
        h.extents(&mut e, false).unwrap();
        assert_eq!(e.list()[0].offset, 0);
        let last = e.list().last().unwrap();
        assert_eq!(last.offset + last.length, 160);
    }

    #[test]
    fn size_change_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = temp_file(dir.path(), "a", &[1u8; 10]);
        let mut layout = Layout::default();
        layout.push(10, Source::File(0));
        let e = ConcatHandle::open(Arc::new(layout), &[(p, 11)], true)
            .err()
            .unwrap();
        assert!(e.message().contains("size changed"), "{}", e.message());
    }
}
