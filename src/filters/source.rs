//! The compressed file as the decompressing filters (`xz`, `gzip`,
//! `bzip2`) read it: random reads through [`Source`], so that the format
//! code can be tested on bytes in memory and run on the next layer.

use crate::error::{Error, Result};
use crate::layers::Context;
use nix::errno::Errno;
use std::io::{self, Read};

/// Largest single read sent to the next layer.
const READ_CHUNK: usize = 8 << 20;

/// Where compressed bytes come from.
pub trait Source {
    fn size(&self) -> Result<u64>;
    /// Fill `buf` from `offset`; reading past the end is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
}

impl Source for Vec<u8> {
    fn size(&self) -> Result<u64> {
        Ok(self.len() as u64)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(buf.len())?))
            .ok_or_else(past_end)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

fn past_end() -> Error {
    Error::new(
        Errno::EIO,
        "read beyond the end of the compressed file (truncated file?)",
    )
}

/// The next layer as a [`Source`].
pub struct NextSource<'a>(pub &'a dyn Context);

impl Source for NextSource<'_> {
    fn size(&self) -> Result<u64> {
        self.0.get_size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let size = self.0.get_size()?;
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > size)
        {
            return Err(past_end());
        }
        let mut off = offset;
        for chunk in buf.chunks_mut(READ_CHUNK) {
            self.0.pread(chunk, off, 0)?;
            off += chunk.len() as u64;
        }
        Ok(())
    }
}

/// A [`Source`] read from start to end as a stream.
pub struct SourceReader<'a> {
    src: &'a dyn Source,
    pos: u64,
    end: u64,
    /// The source's own error, kept whole (an `io::Error` passed through a
    /// decoder only keeps its errno).
    pub error: Option<Error>,
}

impl<'a> SourceReader<'a> {
    pub fn new(src: &'a dyn Source) -> Result<Self> {
        Ok(SourceReader {
            src,
            pos: 0,
            end: src.size()?,
            error: None,
        })
    }
}

impl Read for SourceReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64)
            .min(self.end - self.pos)
            .min(READ_CHUNK as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        if let Err(e) = self.src.read_at(&mut buf[..n], self.pos) {
            let io = io::Error::from_raw_os_error(e.errno() as i32);
            self.error = Some(e);
            return Err(io);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vec_source_bounds() {
        let v = b"abcdef".to_vec();
        let mut b = [0u8; 3];
        v.read_at(&mut b, 3).unwrap();
        assert_eq!(&b, b"def");
        assert!(v.read_at(&mut b, 4).is_err());
        assert!(v.read_at(&mut b, u64::MAX).is_err());
        let mut r = SourceReader::new(&v).unwrap();
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all, v);
    }
}
