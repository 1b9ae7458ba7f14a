//! The file plugin: serve a regular file or block device
//! (`nbdkit file [file=]FILENAME`), every file of a directory as a separate
//! export (`dir=DIRECTORY`), or an inherited file or directory descriptor
//! (`fd=N`, `dirfd=N`).
//!
//! Each connection opens its own descriptor.  All data I/O uses
//! pread/pwrite, so the shared file offset only ever moves in `lseek` calls
//! (SEEK_DATA/SEEK_HOLE for extents, SEEK_END for block device sizes) whose
//! results are taken from their return values; no locking is needed.

use crate::error::{Error, Result};
use crate::extents::{Extents, HOLE, ZERO};
use crate::parse::parse_unsigned;
use crate::plugin::{BlockSize, CacheMode, ExportInfo, Handle, Plugin, ZeroFlags, ZeroMode};
use nix::errno::Errno;
use nix::fcntl::{fallocate, posix_fadvise, FallocateFlags, PosixFadviseAdvice};
use nix::unistd::{lseek, Whence};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// `_IO(0x12, 119)`: discard a range of a block device.
const BLKDISCARD: libc::Ioctl = 0x1277;
/// `_IO(0x12, 127)`: zero a range of a block device.
const BLKZEROOUT: libc::Ioctl = 0x127f;

/// The `cache=` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PageCache {
    /// Use the page cache normally.
    #[default]
    Default,
    /// Drop pages from the page cache after each read and write.
    None,
}

/// The `fadvise=` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fadvise {
    #[default]
    Normal,
    Random,
    Sequential,
}

/// The file plugin.
#[derive(Debug, Default)]
pub struct FilePlugin {
    file: Option<PathBuf>,
    dir: Option<PathBuf>,
    fd: Option<RawFd>,
    dirfd: Option<RawFd>,
    cache: PageCache,
    fadvise: Fadvise,
}

/// Canonical absolute path of `value` (nbdkit_realpath).
fn realpath(value: &std::ffi::OsStr) -> Result<PathBuf> {
    std::fs::canonicalize(value).map_err(|e| {
        let errno = e.raw_os_error().map(Errno::from_raw).unwrap_or(Errno::EIO);
        Error::os(errno, format!("realpath: {}", value.to_string_lossy()))
    })
}

/// Parse an inherited descriptor number (must be above stderr).
fn parse_fd(key: &str, value: &str) -> Result<RawFd> {
    let n = parse_unsigned(key, value, i32::MAX as u64)? as RawFd;
    if n <= 2 {
        return Err(Error::config(format!("{key}: file descriptor must be > 2")));
    }
    Ok(n)
}

/// Path through which an inherited descriptor can be reached.
fn proc_fd_path(fd: RawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{fd}"))
}

/// Whether `meta` describes something we can serve.
fn is_servable(meta: &std::fs::Metadata) -> bool {
    let ft = meta.file_type();
    ft.is_file() || ft.is_block_device()
}

/// Open `path` read-write (unless `readonly`), falling back to read-only
/// when the file is not writable.  Returns the file and whether it is
/// writable.
pub(crate) fn open_path(path: &Path, readonly: bool) -> Result<(File, bool)> {
    let mut opts = OpenOptions::new();
    opts.read(true).custom_flags(libc::O_NOCTTY);
    if !readonly {
        match opts.clone().write(true).open(path) {
            Ok(f) => return Ok((f, true)),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EACCES) | Some(libc::EROFS) | Some(libc::EPERM)
                ) => {}
            Err(e) => return Err(Error::io(e, format!("open: {}", path.display()))),
        }
    }
    let f = opts
        .open(path)
        .map_err(|e| Error::io(e, format!("open: {}", path.display())))?;
    Ok((f, false))
}

impl FilePlugin {
    /// An unconfigured file plugin.
    pub fn new() -> Self {
        FilePlugin::default()
    }

    /// The directory served in `dir=` / `dirfd=` mode.
    fn directory(&self) -> Option<PathBuf> {
        self.dir.clone().or_else(|| self.dirfd.map(proc_fd_path))
    }

    /// Open `NAME` in the served directory.
    fn open_in_dir(&self, dir: &Path, name: &str, readonly: bool) -> Result<(File, bool)> {
        if name.is_empty() {
            return Err(Error::new(
                Errno::ENOENT,
                "file: the default export (\"\") is not served in dir= mode; \
                 give an export name (or use the exportname filter)",
            ));
        }
        if name.contains('/') {
            return Err(Error::new(
                Errno::EINVAL,
                format!("file: export name '{name}' cannot contain /"),
            ));
        }
        let path = dir.join(name);
        let meta = std::fs::metadata(&path)
            .map_err(|e| Error::io(e, format!("stat: {}", path.display())))?;
        if !is_servable(&meta) {
            return Err(Error::new(
                Errno::ENOENT,
                format!("file: export '{name}' is not a regular file or block device"),
            ));
        }
        open_path(&path, readonly)
    }

    /// Duplicate the inherited descriptor `n`.
    fn open_fd(n: RawFd, readonly: bool) -> Result<(File, bool)> {
        // SAFETY: `n` was checked in config_complete to be an open
        // descriptor inherited by the process.  The plugin never closes it,
        // so it stays open for as long as the borrow (used only to dup it).
        let borrowed = unsafe { BorrowedFd::borrow_raw(n) };
        let owned = borrowed
            .try_clone_to_owned()
            .map_err(|e| Error::io(e, format!("dup: fd={n}")))?;
        let flags = nix::fcntl::fcntl(&owned, nix::fcntl::FcntlArg::F_GETFL)
            .map_err(|e| Error::os(e, "fcntl: F_GETFL"))?;
        let writable = !readonly && (flags & libc::O_ACCMODE) != libc::O_RDONLY;
        Ok((File::from(owned), writable))
    }
}

const CALLBACKS: &[&str] = &[
    "config",
    "config_complete",
    "config_help",
    "dump_plugin",
    "list_exports",
    "default_export",
    "open",
    "close",
    "get_size",
    "block_size",
    "can_write",
    "can_flush",
    "is_rotational",
    "can_trim",
    "can_zero",
    "can_fast_zero",
    "can_extents",
    "can_multi_conn",
    "can_cache",
    "pread",
    "pwrite",
    "flush",
    "trim",
    "zero",
    "extents",
    "cache",
];

impl Plugin for FilePlugin {
    fn name(&self) -> &'static str {
        "file"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit file plugin")
    }

    fn description(&self) -> &'static str {
        "serve a file, block device or directory of files"
    }

    fn magic_config_key(&self) -> Option<&'static str> {
        Some("file")
    }

    fn config_help(&self) -> &'static str {
        "[file=]<FILENAME>     The filename to serve.\n\
         dir=<DIRNAME>         A directory containing files to serve.\n\
         fd=<FILE_DESCRIPTOR>  Serve an inherited open file descriptor.\n\
         dirfd=<FILE_DESCRIPTOR>  Serve the files of an inherited directory descriptor.\n\
         cache=default|none    Set use of caching (default: default).\n\
         fadvise=normal|random|sequential\n\
         \x20                     Set fadvise hint (default: normal)."
    }

    fn callbacks(&self) -> &'static [&'static str] {
        CALLBACKS
    }

    fn config_os(&mut self, key: &str, value: &std::ffi::OsStr) -> Result<()> {
        // Paths may be any bytes, as in C nbdkit.
        match key {
            "file" => self.file = Some(realpath(value)?),
            "dir" | "directory" => self.dir = Some(realpath(value)?),
            _ => match value.to_str() {
                Some(v) => self.config(key, v)?,
                None => return Err(crate::layers::not_utf8(key, value)),
            },
        }
        Ok(())
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "file" => self.file = Some(realpath(value.as_ref())?),
            "dir" | "directory" => self.dir = Some(realpath(value.as_ref())?),
            "fd" => self.fd = Some(parse_fd(key, value)?),
            "dirfd" => self.dirfd = Some(parse_fd(key, value)?),
            "cache" => {
                self.cache = match value {
                    "default" => PageCache::Default,
                    "none" => PageCache::None,
                    _ => return Err(Error::config("cache: unknown mode, must be default|none")),
                }
            }
            "fadvise" => {
                self.fadvise = match value {
                    "normal" => Fadvise::Normal,
                    "random" => Fadvise::Random,
                    "sequential" => Fadvise::Sequential,
                    _ => {
                        return Err(Error::config(
                            "unknown fadvise mode, must be normal|random|sequential",
                        ))
                    }
                }
            }
            "rdelay" | "wdelay" => {
                return Err(Error::config("add --filter=delay on the command line"))
            }
            _ => return Err(Error::config(format!("unknown parameter '{key}'"))),
        }
        Ok(())
    }

    fn config_complete(&mut self) -> Result<()> {
        let given = usize::from(self.file.is_some())
            + usize::from(self.dir.is_some())
            + usize::from(self.fd.is_some())
            + usize::from(self.dirfd.is_some());
        if given != 1 {
            return Err(Error::config(
                "exactly one of file=, dir=, fd= or dirfd= must be given",
            ));
        }
        if let Some(file) = &self.file {
            let meta = std::fs::metadata(file)
                .map_err(|e| Error::io(e, format!("stat: {}", file.display())))?;
            if !is_servable(&meta) {
                return Err(Error::config(format!(
                    "{}: file is not a regular file or block device",
                    file.display()
                )));
            }
        }
        if let Some(dir) = &self.dir {
            let meta = std::fs::metadata(dir)
                .map_err(|e| Error::io(e, format!("stat: {}", dir.display())))?;
            if !meta.is_dir() {
                return Err(Error::config(format!("{}: not a directory", dir.display())));
            }
        }
        if let Some(n) = self.fd.or(self.dirfd) {
            let meta =
                std::fs::metadata(proc_fd_path(n)).map_err(|e| Error::io(e, format!("fd {n}")))?;
            if self.dirfd.is_some() && !meta.is_dir() {
                return Err(Error::config(format!("dirfd={n}: not a directory")));
            }
            if self.fd.is_some() && !is_servable(&meta) {
                return Err(Error::config(format!(
                    "fd={n}: not a regular file or block device"
                )));
            }
        }
        Ok(())
    }

    fn dump_plugin(&self) -> Vec<String> {
        [
            "file_blksszget=yes",
            "file_blkzeroout=yes",
            "file_blkdiscard=yes",
            "file_extents=yes",
            "file_falloc_fl_punch_hole=yes",
            "file_falloc_fl_zero_range=yes",
            "winfile=no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn list_exports(&self, readonly: bool, is_tls: bool) -> Result<Vec<ExportInfo>> {
        let Some(dir) = self.directory() else {
            return Ok(vec![ExportInfo::named(
                self.default_export(readonly, is_tls)?,
            )]);
        };
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(e, format!("opendir: {}", dir.display())))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(e, format!("readdir: {}", dir.display())))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            // Follow symlinks; dangling ones fail and are skipped.
            match std::fs::metadata(entry.path()) {
                Ok(meta) if is_servable(&meta) => out.push(ExportInfo::named(name)),
                _ => {}
            }
        }
        Ok(out)
    }

    fn open(&self, readonly: bool, export_name: &str, _is_tls: bool) -> Result<Box<dyn Handle>> {
        let (file, writable) = if let Some(path) = &self.file {
            open_path(path, readonly)?
        } else if let Some(n) = self.fd {
            Self::open_fd(n, readonly)?
        } else if let Some(dir) = self.directory() {
            self.open_in_dir(&dir, export_name, readonly)?
        } else {
            return Err(Error::new(Errno::EINVAL, "file: plugin is not configured"));
        };
        Ok(Box::new(FileHandle::new(
            file,
            writable,
            self.cache,
            self.fadvise,
        )?))
    }
}

/// One connection's open file.
#[derive(Debug)]
pub struct FileHandle {
    file: File,
    writable: bool,
    is_block: bool,
    cache: PageCache,
    rotational: bool,
    sector_size: Option<u32>,
    can_extents: bool,
    can_punch_hole: AtomicBool,
    can_zero_range: AtomicBool,
    can_fallocate: AtomicBool,
    can_discard: AtomicBool,
    can_zeroout: AtomicBool,
}

/// Whether the device `dev` (major:minor) is rotational, per sysfs.
fn sysfs_rotational(dev: u64) -> bool {
    let (maj, min) = (libc::major(dev), libc::minor(dev));
    let base = format!("/sys/dev/block/{maj}:{min}");
    // Whole disks have queue/ themselves, partitions in their parent.
    for p in [
        format!("{base}/queue/rotational"),
        format!("{base}/../queue/rotational"),
    ] {
        if let Ok(s) = std::fs::read_to_string(&p) {
            return s.trim() == "1";
        }
    }
    false
}

/// Offset or length as `off_t`.
fn off(v: u64) -> Result<libc::off_t> {
    libc::off_t::try_from(v).map_err(|_| Error::new(Errno::EINVAL, "offset too large"))
}

/// Whether an errno from fallocate/ioctl means "not supported here".
fn unsupported(e: Errno) -> bool {
    matches!(
        e,
        Errno::EOPNOTSUPP | Errno::ENODEV | Errno::ENOTTY | Errno::ENOSYS
    )
}

impl FileHandle {
    pub(crate) fn new(
        file: File,
        writable: bool,
        cache: PageCache,
        fadvise: Fadvise,
    ) -> Result<Self> {
        let meta = file.metadata().map_err(|e| Error::io(e, "fstat"))?;
        let is_block = meta.file_type().is_block_device();
        let advice = match fadvise {
            Fadvise::Normal => PosixFadviseAdvice::POSIX_FADV_NORMAL,
            Fadvise::Random => PosixFadviseAdvice::POSIX_FADV_RANDOM,
            Fadvise::Sequential => PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
        };
        // Only a hint: failures (for example on odd file systems) are ignored.
        let _ = posix_fadvise(file.as_fd(), 0, 0, advice);
        let rotational = sysfs_rotational(if is_block { meta.rdev() } else { meta.dev() });
        let sector_size = if is_block {
            let mut size: libc::c_int = 0;
            // SAFETY: BLKSSZGET writes one int through the pointer, which
            // points to a live, properly aligned c_int; the descriptor is open.
            let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut size) };
            (r == 0 && size > 0).then_some(size as u32)
        } else {
            None
        };
        // SEEK_DATA works if it finds data or reports "no data" (ENXIO).
        let can_extents = !is_block
            && matches!(
                lseek(file.as_fd(), 0, Whence::SeekData),
                Ok(_) | Err(Errno::ENXIO)
            );
        Ok(FileHandle {
            file,
            writable,
            is_block,
            cache,
            rotational,
            sector_size,
            can_extents,
            can_punch_hole: AtomicBool::new(true),
            can_zero_range: AtomicBool::new(true),
            can_fallocate: AtomicBool::new(true),
            can_discard: AtomicBool::new(is_block),
            can_zeroout: AtomicBool::new(is_block),
        })
    }

    /// fallocate with `flags`; Ok(false) if the operation is unsupported.
    fn try_fallocate(&self, flags: FallocateFlags, count: u64, offset: u64) -> Result<bool> {
        match fallocate(self.file.as_fd(), flags, off(offset)?, off(count)?) {
            Ok(()) => Ok(true),
            Err(e) if unsupported(e) => Ok(false),
            Err(e) => Err(Error::os(e, "fallocate")),
        }
    }

    /// A block device ioctl taking a `[offset, length]` range; Ok(false) if
    /// unsupported.
    fn try_range_ioctl(&self, req: libc::Ioctl, count: u64, offset: u64) -> Result<bool> {
        let range: [u64; 2] = [offset, count];
        // SAFETY: BLKDISCARD and BLKZEROOUT only read two u64s through the
        // pointer, which points to a live array of two u64s; the descriptor
        // is open for the life of `self`.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), req, range.as_ptr()) };
        if r == 0 {
            return Ok(true);
        }
        match Errno::last() {
            e if unsupported(e) => Ok(false),
            e => Err(Error::os(e, "ioctl")),
        }
    }

    /// Drop `[offset, offset+count)` from the page cache (`cache=none`).
    fn evict(&self, count: u64, offset: u64) {
        if let (Ok(o), Ok(c)) = (off(offset), off(count)) {
            let _ = posix_fadvise(
                self.file.as_fd(),
                o,
                c,
                PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
        }
    }
}

impl Handle for FileHandle {
    fn get_size(&self) -> Result<u64> {
        if self.is_block {
            (&self.file)
                .seek(SeekFrom::End(0))
                .map_err(|e| Error::io(e, "lseek (to find device size)"))
        } else {
            Ok(self
                .file
                .metadata()
                .map_err(|e| Error::io(e, "fstat"))?
                .len())
        }
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        Ok(self.sector_size.map(|s| BlockSize {
            minimum: s,
            preferred: s.max(4096),
            maximum: 0xffff_ffff,
        }))
    }

    fn can_write(&self) -> Result<bool> {
        Ok(self.writable)
    }

    fn can_flush(&self) -> Result<bool> {
        Ok(true)
    }

    fn is_rotational(&self) -> Result<bool> {
        Ok(self.rotational)
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
        Ok(self.can_extents)
    }

    fn can_multi_conn(&self) -> Result<bool> {
        Ok(true)
    }

    fn can_cache(&self) -> Result<CacheMode> {
        Ok(CacheMode::Native)
    }

    fn pread(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::new(Errno::EIO, "pread: unexpected end of file")
            } else {
                Error::io(e, "pread")
            }
        })?;
        if self.cache == PageCache::None {
            self.evict(buf.len() as u64, offset);
        }
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| Error::io(e, "pwrite"))?;
        if fua || self.cache == PageCache::None {
            self.flush()?;
        }
        if self.cache == PageCache::None {
            self.evict(buf.len() as u64, offset);
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io(e, "fdatasync"))
    }

    fn trim(&self, count: u64, offset: u64, fua: bool) -> Result<()> {
        let mut done = false;
        if self.can_punch_hole.load(Ordering::Relaxed) {
            let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
            done = self.try_fallocate(flags, count, offset)?;
            if !done {
                self.can_punch_hole.store(false, Ordering::Relaxed);
            }
        }
        if !done && self.can_discard.load(Ordering::Relaxed) {
            done = self.try_range_ioctl(BLKDISCARD, count, offset)?;
            if !done {
                self.can_discard.store(false, Ordering::Relaxed);
            }
        }
        // Trim is advisory: if nothing worked, succeed anyway.
        if done && fua {
            self.flush()?;
        }
        Ok(())
    }

    fn zero(&self, count: u64, offset: u64, flags: ZeroFlags) -> Result<()> {
        let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        let done = (|| -> Result<bool> {
            if flags.may_trim && self.can_punch_hole.load(Ordering::Relaxed) {
                if self.try_fallocate(punch, count, offset)? {
                    return Ok(true);
                }
                self.can_punch_hole.store(false, Ordering::Relaxed);
            }
            if self.can_zero_range.load(Ordering::Relaxed) {
                let zr = FallocateFlags::FALLOC_FL_ZERO_RANGE;
                if self.try_fallocate(zr, count, offset)? {
                    return Ok(true);
                }
                self.can_zero_range.store(false, Ordering::Relaxed);
            }
            // Punch a hole, then allocate it again: zeroes without trimming.
            if !self.is_block
                && self.can_punch_hole.load(Ordering::Relaxed)
                && self.can_fallocate.load(Ordering::Relaxed)
            {
                if !self.try_fallocate(punch, count, offset)? {
                    self.can_punch_hole.store(false, Ordering::Relaxed);
                } else if self.try_fallocate(FallocateFlags::empty(), count, offset)? {
                    return Ok(true);
                } else {
                    // The range now reads as zero even though it could not
                    // be reallocated.
                    self.can_fallocate.store(false, Ordering::Relaxed);
                    return Ok(true);
                }
            }
            // BLKZEROOUT may fall back to writing zeroes in the kernel, so
            // it is not used for fast zero requests.
            if !flags.fast && self.can_zeroout.load(Ordering::Relaxed) {
                let sector = u64::from(self.sector_size.unwrap_or(512));
                if (offset | count).is_multiple_of(sector) {
                    if self.try_range_ioctl(BLKZEROOUT, count, offset)? {
                        return Ok(true);
                    }
                    self.can_zeroout.store(false, Ordering::Relaxed);
                }
            }
            Ok(false)
        })()?;
        if !done {
            return Err(Error::new(
                Errno::EOPNOTSUPP,
                "zero: no native method, fall back to writing zeroes",
            ));
        }
        if flags.fua {
            self.flush()?;
        }
        Ok(())
    }

    fn extents(&self, extents: &mut Extents, req_one: bool) -> Result<()> {
        let (start, end) = (extents.start(), extents.end());
        if !self.can_extents {
            return extents.add(start, end - start, 0);
        }
        let fd = self.file.as_fd();
        let mut pos = start;
        while pos < end {
            let data = match lseek(fd, off(pos)?, Whence::SeekData) {
                Ok(d) => d as u64,
                // No more data: the rest is a hole.
                Err(Errno::ENXIO) => {
                    extents.add(pos, end - pos, HOLE | ZERO)?;
                    break;
                }
                Err(e) => return Err(Error::os(e, "lseek: SEEK_DATA")),
            };
            if data > pos {
                extents.add(pos, data - pos, HOLE | ZERO)?;
                if req_one {
                    break;
                }
                pos = data;
                if pos >= end {
                    break;
                }
            }
            let hole = match lseek(fd, off(pos)?, Whence::SeekHole) {
                Ok(h) if (h as u64) > pos => h as u64,
                // Racing with truncation or a strange file system: call the
                // rest data, which is always safe.
                Ok(_) | Err(Errno::ENXIO) => end,
                Err(e) => return Err(Error::os(e, "lseek: SEEK_HOLE")),
            };
            extents.add(pos, hole - pos, 0)?;
            if req_one {
                break;
            }
            pos = hole;
        }
        Ok(())
    }

    fn cache(&self, count: u64, offset: u64) -> Result<()> {
        posix_fadvise(
            self.file.as_fd(),
            off(offset)?,
            off(count)?,
            PosixFadviseAdvice::POSIX_FADV_WILLNEED,
        )
        .map_err(|e| Error::os(e, "posix_fadvise"))
    }
}

#[cfg(test)]
mod tests;
