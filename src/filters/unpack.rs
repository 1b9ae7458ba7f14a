//! What the `gzip` and `bzip2` filters share: formats that cannot be
//! entered in the middle are decompressed whole, once, into a hidden
//! temporary file, which then serves every read of every connection.
//!
//! The first connection to prepare does the work (others wait for it);
//! if it fails, that connection gets the error and the next one tries
//! again.  The temporary file is created under `$TMPDIR` (default
//! `/var/tmp`, as nbdkit: the file may be big) and unlinked at once, so
//! nothing is left behind however the server ends.  Connections are
//! read-only whatever the client asks, and the next layer is only read.

use crate::error::{Error, Result};
use crate::extents::Extents;
use crate::filter::{Filter, FilterContext};
use crate::filters::source::{NextSource, Source, SourceReader};
use crate::layers::{Backend, Context};
use crate::plugin::CacheMode;
use crate::server::lock;
use nix::errno::Errno;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

/// Read buffer for the compressed data.
const READ_CHUNK: usize = 1 << 20;

/// A whole-file compression format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Gzip,
    Bzip2,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Gzip => "gzip",
            Format::Bzip2 => "bzip2",
        }
    }

    fn magic(self) -> &'static [u8] {
        match self {
            Format::Gzip => &[0x1f, 0x8b],
            Format::Bzip2 => b"BZh",
        }
    }

    /// A decoder reading the compressed bytes from `r`.  Both decoders go
    /// on past the end of the first member (`cat a.gz b.gz` is one valid
    /// file, as gunzip and bunzip2 read it).
    fn decoder<'a, R: io::BufRead + 'a>(self, r: R) -> Box<dyn Read + 'a> {
        match self {
            Format::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
            Format::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(r)),
        }
    }
}

/// The decompressed file.
#[derive(Debug)]
struct Unpacked {
    file: File,
    size: u64,
}

/// The filter; [`Format`] says which one.
pub struct Unpack {
    format: Format,
    unpacked: Arc<Mutex<Option<Arc<Unpacked>>>>,
}

impl Unpack {
    pub fn new(format: Format) -> Self {
        Unpack {
            format,
            unpacked: Arc::default(),
        }
    }
}

impl Filter for Unpack {
    fn name(&self) -> &'static str {
        self.format.name()
    }

    fn longname(&self) -> Option<&'static str> {
        Some(match self.format {
            Format::Gzip => "nbdkit gzip filter",
            Format::Bzip2 => "nbdkit bzip2 filter",
        })
    }

    fn description(&self) -> &'static str {
        match self.format {
            Format::Gzip => "Decompress a .gz file (read-only).",
            Format::Bzip2 => "Decompress a .bz2 file (read-only).",
        }
    }

    fn open(
        &self,
        next: &dyn Backend,
        _readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        Ok(Box::new(UnpackContext {
            next: next.open(true, export, is_tls)?,
            format: self.format,
            shared: self.unpacked.clone(),
            unpacked: OnceLock::new(),
        }))
    }
}

/// Where temporary files go: `$TMPDIR`, else `/var/tmp`.
fn tmpdir() -> PathBuf {
    match std::env::var_os("TMPDIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from("/var/tmp"),
    }
}

/// A new, already unlinked, temporary file in `dir`.
fn hidden_tempfile(dir: &std::path::Path, name: &str) -> Result<File> {
    let template = dir.join(format!("nbdkit-{name}-XXXXXX"));
    let (fd, path) = nix::unistd::mkstemp(&template).map_err(|e| {
        Error::os(
            e,
            format!(
                "{name}: cannot create a temporary file in {} (set TMPDIR to a writable directory)",
                dir.display()
            ),
        )
    })?;
    // The open descriptor keeps the data; the name is not needed.
    nix::unistd::unlink(&path).map_err(|e| Error::os(e, format!("{name}: unlink {path:?}")))?;
    Ok(File::from(fd))
}

/// Decompress the whole of `next` into a temporary file in `dir`.
fn unpack(format: Format, src: &dyn Source, dir: &std::path::Path) -> Result<Unpacked> {
    let name = format.name();
    let size = src.size()?;
    let magic = format.magic();
    let mut head = vec![0u8; magic.len()];
    if size < magic.len() as u64 {
        return Err(Error::new(
            Errno::EINVAL,
            format!("{name}: not a {name} file (too short)"),
        ));
    }
    src.read_at(&mut head, 0)?;
    if head != magic {
        return Err(Error::new(
            Errno::EINVAL,
            format!("{name}: not a {name} file (no {name} magic number at the start)"),
        ));
    }

    let mut file = hidden_tempfile(dir, name)?;
    let mut reader = SourceReader::new(src)?;
    let mut total: u64 = 0;
    let result = (|| -> std::result::Result<(), (bool, io::Error)> {
        let mut decoder = format.decoder(BufReader::with_capacity(READ_CHUNK, &mut reader));
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match decoder.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err((false, e)),
            };
            file.write_all(&buf[..n]).map_err(|e| (true, e))?;
            total += n as u64;
        }
    })();
    match result {
        Ok(()) => {}
        Err((true, e)) => {
            return Err(Error::io(
                e,
                format!(
                    "{name}: writing the decompressed data to a temporary file in {}",
                    dir.display()
                ),
            ))
        }
        Err((false, e)) => {
            return Err(match reader.error.take() {
                Some(inner) => Error::new(
                    inner.errno(),
                    format!("{name}: reading the compressed file: {}", inner.message()),
                ),
                None => {
                    let what = if e.kind() == io::ErrorKind::UnexpectedEof {
                        "truncated".to_string()
                    } else {
                        format!("corrupt: {e}")
                    };
                    Error::new(
                        Errno::EIO,
                        format!(
                            "{name}: the {name} data is {what} (after {total} decompressed bytes)"
                        ),
                    )
                }
            })
        }
    }
    Ok(Unpacked { file, size: total })
}

struct UnpackContext {
    next: Box<dyn Context>,
    format: Format,
    shared: Arc<Mutex<Option<Arc<Unpacked>>>>,
    unpacked: OnceLock<Arc<Unpacked>>,
}

impl UnpackContext {
    fn unpacked(&self) -> Result<&Unpacked> {
        self.unpacked.get().map(|u| &**u).ok_or_else(|| {
            Error::new(
                Errno::EIO,
                format!("{}: the file has not been decompressed", self.format.name()),
            )
        })
    }

    fn read_only(&self) -> Error {
        Error::new(
            Errno::EROFS,
            format!("{}: the {0} filter is read-only", self.format.name()),
        )
    }
}

impl FilterContext for UnpackContext {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn prepare(&self, _readonly: bool) -> Result<()> {
        let unpacked = {
            let mut shared = lock(&self.shared);
            match &*shared {
                Some(u) => u.clone(),
                None => {
                    let dir = tmpdir();
                    crate::log::debug(format!(
                        "{}: decompressing into a temporary file in {}",
                        self.format.name(),
                        dir.display()
                    ));
                    let u = Arc::new(unpack(self.format, &NextSource(&*self.next), &dir)?);
                    crate::log::debug(format!(
                        "{}: uncompressed size {}",
                        self.format.name(),
                        u.size
                    ));
                    *shared = Some(u.clone());
                    u
                }
            }
        };
        let _ = self.unpacked.set(unpacked);
        Ok(())
    }

    fn get_size(&self) -> Result<u64> {
        Ok(self.unpacked()?.size)
    }

    fn can_write(&self) -> Result<bool> {
        Ok(false)
    }

    fn can_extents(&self) -> Result<bool> {
        Ok(false)
    }

    fn can_cache(&self) -> Result<CacheMode> {
        Ok(CacheMode::Emulate)
    }

    fn can_multi_conn(&self) -> Result<bool> {
        // Read only, and the same bytes for every connection.
        Ok(true)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: u32) -> Result<()> {
        let u = self.unpacked()?;
        u.file.read_exact_at(buf, offset).map_err(|e| {
            Error::io(
                e,
                format!(
                    "{}: reading the temporary file at {offset}",
                    self.format.name()
                ),
            )
        })
    }

    fn extents(&self, extents: &mut Extents, _flags: u32) -> Result<()> {
        // The compressed file's extents say nothing about these offsets:
        // everything is data.
        let (start, end) = (extents.start(), extents.end());
        extents.add(start, end - start, 0)
    }

    fn cache(&self, _count: u64, _offset: u64, _flags: u32) -> Result<()> {
        // Everything is already decompressed into a local file.
        self.unpacked().map(|_| ())
    }

    fn pwrite(&self, _buf: &[u8], _offset: u64, _flags: u32) -> Result<()> {
        Err(self.read_only())
    }

    fn trim(&self, _count: u64, _offset: u64, _flags: u32) -> Result<()> {
        Err(self.read_only())
    }

    fn zero(&self, _count: u64, _offset: u64, _flags: u32) -> Result<()> {
        Err(self.read_only())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| ((i * 31) ^ (i / 777)) as u8).collect()
    }

    fn gz(d: &[u8]) -> Vec<u8> {
        let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        w.write_all(d).unwrap();
        w.finish().unwrap()
    }

    fn bz(d: &[u8]) -> Vec<u8> {
        let mut w = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        w.write_all(d).unwrap();
        w.finish().unwrap()
    }

    fn run(format: Format, bytes: Vec<u8>) -> Result<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let u = unpack(format, &bytes, dir.path())?;
        // Nothing is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut out = vec![0u8; u.size as usize];
        u.file.read_exact_at(&mut out, 0).unwrap();
        Ok(out)
    }

    #[test]
    fn round_trips() {
        for n in [0, 1, 100_000, 3_000_001] {
            let d = data(n);
            assert_eq!(run(Format::Gzip, gz(&d)).unwrap(), d);
            assert_eq!(run(Format::Bzip2, bz(&d)).unwrap(), d);
        }
    }

    #[test]
    fn concatenated_members() {
        let (a, b) = (data(5000), data(7001));
        let mut both = a.clone();
        both.extend(&b);
        let mut g = gz(&a);
        g.extend(gz(&b));
        assert_eq!(run(Format::Gzip, g).unwrap(), both);
        let mut z = bz(&a);
        z.extend(bz(&b));
        assert_eq!(run(Format::Bzip2, z).unwrap(), both);
    }

    #[test]
    fn damage_is_an_error() {
        let d = data(200_000);
        for (format, c) in [(Format::Gzip, gz(&d)), (Format::Bzip2, bz(&d))] {
            let name = format.name();
            // Wrong format, empty.
            let e = run(format, b"hello, world".to_vec()).unwrap_err();
            assert!(e.message().contains("not a"), "{}", e.message());
            assert!(run(format, Vec::new()).is_err());
            // Truncated.
            for cut in [1, 10, c.len() / 2] {
                let e = run(format, c[..c.len() - cut].to_vec()).unwrap_err();
                assert!(e.message().starts_with(name), "{}", e.message());
            }
            // A flipped byte in the middle (both formats check a CRC).
            let mut y = c.clone();
            let mid = y.len() / 2;
            y[mid] ^= 0x55;
            assert!(run(format, y).is_err(), "{name}");
        }
    }

    #[test]
    fn unwritable_tmpdir() {
        let e = unpack(
            Format::Gzip,
            &gz(b"x"),
            std::path::Path::new("/nonexistent/dir"),
        )
        .unwrap_err();
        assert!(e.message().contains("TMPDIR"), "{}", e.message());
    }
}
