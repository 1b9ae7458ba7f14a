//! The `tar` filter: serve one member of an uncompressed tar file, reading
//! and writing its data in place.
//!
//! The member (`tar-entry=NAME`, matched exactly) is looked up the first
//! time a connection prepares, by walking the archive's headers through the
//! next layer's reads (the `tar` crate parses ustar, GNU long names and pax
//! headers).  The member's data offset and size are then kept for every
//! later connection.  Every data call is shifted by the data offset, and the
//! export size is the member's size.  `tar-limit=SIZE` stops the search that
//! many bytes into the tar file (0, the default, means no limit).

use crate::error::{Error, Result};
use crate::extents::Extents;
use crate::filter::{Filter, FilterContext};
use crate::layers::{Backend, Context};
use crate::parse::parse_size;
use crate::server::lock;
use nix::errno::Errno;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex, OnceLock};

/// Where the member's data lies in the tar file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Member {
    offset: u64,
    size: u64,
}

pub struct Tar {
    entry: Option<String>,
    limit: u64,
    /// The member, once a connection has found it.
    found: Arc<Mutex<Option<Member>>>,
}

impl Tar {
    pub fn new() -> Self {
        Tar {
            entry: None,
            limit: 0,
            found: Arc::default(),
        }
    }
}

impl Default for Tar {
    fn default() -> Self {
        Self::new()
    }
}

impl Filter for Tar {
    fn name(&self) -> &'static str {
        "tar"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit tar filter")
    }

    fn description(&self) -> &'static str {
        "Read and write files inside tar files without unpacking."
    }

    fn config_help(&self) -> &'static str {
        "tar-entry=<PATH>               (required) The path inside the tar file to serve.\n\
         tar-limit=SIZE                 Limit on reading to find entry."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "tar-entry" => {
                if value.is_empty() {
                    return Err(Error::config("tar: tar-entry must not be empty"));
                }
                self.entry = Some(value.to_string());
            }
            "tar-limit" => self.limit = parse_size(value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.entry.is_none() {
            return Err(Error::config(
                "tar: you must supply the tar-entry=<PATH> parameter",
            ));
        }
        Ok(())
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        Ok(Box::new(TarContext {
            next: next.open(readonly, export, is_tls)?,
            entry: self.entry.clone().unwrap_or_default(),
            limit: self.limit,
            found: self.found.clone(),
            member: OnceLock::new(),
        }))
    }
}

struct TarContext {
    next: Box<dyn Context>,
    entry: String,
    limit: u64,
    found: Arc<Mutex<Option<Member>>>,
    member: OnceLock<Member>,
}

impl TarContext {
    fn member(&self) -> Result<Member> {
        self.member
            .get()
            .copied()
            .ok_or_else(|| Error::new(Errno::EIO, "tar: the tar entry has not been located"))
    }
}

/// A `Read + Seek` view of the next layer, ending at `end` (the tar file's
/// size, or `tar-limit` if smaller).
struct NextReader<'a> {
    next: &'a dyn Context,
    pos: u64,
    end: u64,
    /// The last error from the next layer, kept so that its message is not
    /// lost inside the tar crate's `io::Error`.
    error: Option<Error>,
}

impl Read for NextReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = self.end.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(avail).min(1 << 20) as usize;
        if n == 0 {
            return Ok(0);
        }
        if let Err(e) = self.next.pread(&mut buf[..n], self.pos, 0) {
            let io = io::Error::from_raw_os_error(e.errno() as i32);
            self.error = Some(e);
            return Err(io);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for NextReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let base = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.end.checked_add_signed(d),
        };
        match base {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::from(io::ErrorKind::InvalidInput)),
        }
    }
}

/// The compression format whose magic number starts `head`, if any.
fn compression(head: &[u8]) -> Option<&'static str> {
    const MAGIC: &[(&[u8], &str)] = &[
        (&[0x1f, 0x8b], "gzip"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0], "xz"),
        (b"BZh", "bzip2"),
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
        (b"LZIP", "lzip"),
    ];
    MAGIC
        .iter()
        .find(|(m, _)| head.starts_with(m))
        .map(|(_, name)| *name)
}

/// Find `entry` in the tar file read through `next`.
fn locate(next: &dyn Context, entry: &str, limit: u64) -> Result<Member> {
    let size = next.get_size()?;
    let end = if limit > 0 { size.min(limit) } else { size };

    let mut head = [0u8; 6];
    let n = head.len().min(end as usize);
    next.pread(&mut head[..n], 0, 0)?;
    if let Some(kind) = compression(&head[..n]) {
        return Err(Error::new(
            Errno::EINVAL,
            format!(
                "tar: looking for '{entry}': the tar file is {kind}-compressed; \
                 this filter needs an uncompressed tar file \
                 (decompress it first, or put a decompressing filter below this one)"
            ),
        ));
    }

    let mut reader = NextReader {
        next,
        pos: 0,
        end,
        error: None,
    };
    let result = search(&mut reader, entry);
    match (result, reader.error.take()) {
        (Ok(Some(m)), _) => Ok(m),
        (Ok(None), _) if limit > 0 && end < size => Err(Error::new(
            Errno::EINVAL,
            format!(
                "tar: entry '{entry}' not found in the first {limit} bytes of the tar file \
                 (raise tar-limit)"
            ),
        )),
        (Ok(None), _) => Err(Error::new(
            Errno::ENOENT,
            format!("tar: entry '{entry}' not found in the tar file"),
        )),
        (Err(_), Some(e)) => Err(Error::new(
            e.errno(),
            format!("tar: reading the tar file: {}", e.message()),
        )),
        (Err(e), None) => Err(e),
    }
}

/// Walk the headers; `Ok(None)` if the archive ends without `entry`.
fn search(reader: &mut NextReader<'_>, entry: &str) -> Result<Option<Member>> {
    let bad = |e: io::Error| {
        Error::new(
            Errno::EINVAL,
            format!("tar: looking for '{entry}': cannot parse the tar file: {e}"),
        )
    };
    let mut archive = tar::Archive::new(reader);
    for e in archive.entries_with_seek().map_err(bad)? {
        let e = e.map_err(bad)?;
        if *e.path_bytes() != *entry.as_bytes() {
            continue;
        }
        let kind = e.header().entry_type();
        if kind.is_gnu_sparse() {
            return Err(Error::new(
                Errno::EINVAL,
                format!(
                    "tar: entry '{entry}' is a sparse file, which this filter cannot serve \
                     (recreate the tar file without --sparse)"
                ),
            ));
        }
        if !(kind.is_file() || kind.is_contiguous()) {
            return Err(Error::new(
                Errno::EINVAL,
                format!("tar: entry '{entry}' is not a regular file"),
            ));
        }
        return Ok(Some(Member {
            offset: e.raw_file_position(),
            size: e.size(),
        }));
    }
    Ok(None)
}

impl FilterContext for TarContext {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn prepare(&self, _readonly: bool) -> Result<()> {
        let mut found = lock(&self.found);
        let member = match *found {
            Some(m) => m,
            None => {
                let m = locate(&*self.next, &self.entry, self.limit)?;
                crate::log::debug(format!(
                    "tar: entry '{}' found at offset {}, size {}",
                    self.entry, m.offset, m.size
                ));
                *found = Some(m);
                m
            }
        };
        let _ = self.member.set(member);
        Ok(())
    }

    fn get_size(&self) -> Result<u64> {
        Ok(self.member()?.size)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: u32) -> Result<()> {
        self.next.pread(buf, self.member()?.offset + offset, flags)
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: u32) -> Result<()> {
        self.next.pwrite(buf, self.member()?.offset + offset, flags)
    }

    fn trim(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.next.trim(count, self.member()?.offset + offset, flags)
    }

    fn zero(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.next.zero(count, self.member()?.offset + offset, flags)
    }

    fn cache(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.next
            .cache(count, self.member()?.offset + offset, flags)
    }

    fn extents(&self, extents: &mut Extents, flags: u32) -> Result<()> {
        let base = self.member()?.offset;
        let mut inner = Extents::new(extents.start() + base, extents.end() + base);
        self.next.extents(&mut inner, flags)?;
        for x in inner.list() {
            extents.add(x.offset - base, x.length, x.flags)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_magic() {
        assert_eq!(compression(&[0x1f, 0x8b, 8, 0]), Some("gzip"));
        assert_eq!(compression(b"\xfd7zXZ\0"), Some("xz"));
        assert_eq!(compression(b"BZh91A"), Some("bzip2"));
        assert_eq!(compression(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Some("zstd"));
        assert_eq!(compression(b"disk.img"), None);
        assert_eq!(compression(b""), None);
    }

    #[test]
    fn needs_entry() {
        let mut t = Tar::new();
        assert!(t.config_complete().is_err());
        assert!(t.config("tar-entry", "a").unwrap());
        assert!(t.config("tar-limit", "1M").unwrap());
        assert_eq!(t.limit, 1 << 20);
        assert!(!t.config("file", "x").unwrap());
        assert!(t.config_complete().is_ok());
    }
}
