//! The `xz` filter: serve the uncompressed contents of an xz file, read
//! only, decompressing on the fly one block at a time.
//!
//! The first connection reads the file's layout from its end (see
//! [`index`]): where every block lies, compressed and uncompressed.  The
//! layout is kept for later connections.  A read then finds the blocks that
//! hold the bytes asked for, decompresses each of them whole (handing
//! liblzma the block preceded by its stream's header, so the block's check
//! is verified too), and keeps the last `xz-max-depth` decompressed blocks
//! in a small most-recently-used cache shared by all connections (see
//! [`cache`]).  Files whose
//! largest block is bigger than `xz-max-block` are refused, since a block
//! is held in memory whole: recompress them with `xz --block-size=`.

mod cache;
pub mod index;

use crate::error::{Error, Result};
use crate::extents::Extents;
use crate::filter::{Filter, FilterContext};
use crate::filters::source::{NextSource, Source};
use crate::layers::{Backend, Context};
use crate::parse::{parse_size, parse_unsigned};
use crate::plugin::CacheMode;
use crate::server::lock;
use cache::BlockCache;
use index::{Block, Layout};
use nix::errno::Errno;
use std::sync::{Arc, Mutex};
use xz2::stream::{Action, Status, Stream};

pub struct Xz {
    max_block: u64,
    max_depth: usize,
    /// The file's layout, once a connection has read it.
    layout: Arc<Mutex<Option<Arc<Layout>>>>,
    /// Decompressed blocks (made at `config_complete`, when the depth is
    /// known).
    cache: Arc<BlockCache>,
}

impl Xz {
    pub fn new() -> Self {
        Xz {
            max_block: 512 << 20,
            max_depth: 8,
            layout: Arc::default(),
            cache: Arc::new(BlockCache::new(8)),
        }
    }
}

impl Default for Xz {
    fn default() -> Self {
        Self::new()
    }
}

impl Filter for Xz {
    fn name(&self) -> &'static str {
        "xz"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit XZ filter")
    }

    fn description(&self) -> &'static str {
        "Uncompress an xz file on the fly (read-only)."
    }

    fn config_help(&self) -> &'static str {
        "xz-max-block=<SIZE> (optional) Maximum block size allowed (default: 512M)\n\
         xz-max-depth=<N>    (optional) Maximum blocks in cache (default: 8)"
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "xz-max-block" => {
                self.max_block = parse_size(value)
                    .map_err(|e| Error::config(format!("{key}: {}", e.message())))?
            }
            "xz-max-depth" => {
                let n = parse_unsigned(key, value, i32::MAX as u64)?;
                if n == 0 {
                    return Err(Error::config("'xz-max-depth' parameter must be >= 1"));
                }
                self.max_depth = n as usize;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        self.cache = Arc::new(BlockCache::new(self.max_depth));
        Ok(())
    }

    fn open(
        &self,
        next: &dyn Backend,
        _readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        // Whatever the client asked for, the compressed file is only read.
        Ok(Box::new(XzContext {
            next: next.open(true, export, is_tls)?,
            max_block: self.max_block,
            shared: self.layout.clone(),
            layout: std::sync::OnceLock::new(),
            cache: self.cache.clone(),
        }))
    }
}

struct XzContext {
    next: Box<dyn Context>,
    max_block: u64,
    shared: Arc<Mutex<Option<Arc<Layout>>>>,
    layout: std::sync::OnceLock<Arc<Layout>>,
    cache: Arc<BlockCache>,
}

impl XzContext {
    fn layout(&self) -> Result<&Layout> {
        self.layout
            .get()
            .map(|l| &**l)
            .ok_or_else(|| Error::new(Errno::EIO, "xz: the xz file has not been opened"))
    }

    /// Block `n` decompressed, from the cache or the file.
    fn block(&self, layout: &Layout, n: usize) -> Result<Arc<Vec<u8>>> {
        self.cache.get(n, || {
            let b = &layout.blocks[n];
            decode_block(&NextSource(&*self.next), &layout.streams[b.stream], b)
        })
    }
}

/// Decompress one block: its stream's header followed by the block's bytes
/// make a stream that liblzma decodes (checking the block's integrity
/// check) up to where the index would come.
fn decode_block(src: &dyn Source, header: &[u8; 12], b: &Block) -> Result<Vec<u8>> {
    let at = |what: &str| {
        format!(
            "xz: block at offset {} of the xz file (uncompressed offset {}): {what}",
            b.coffset, b.uoffset
        )
    };
    // A block never grows much when compressed; a compressed size far
    // beyond its uncompressed one is a damaged index, not a real block.
    let plausible = b
        .usize
        .saturating_add(b.usize / 16)
        .saturating_add(64 * 1024);
    if b.csize > plausible {
        return Err(Error::new(
            Errno::EINVAL,
            at(&format!(
                "compressed size {} is impossible for {} uncompressed bytes (corrupt index)",
                b.csize, b.usize
            )),
        ));
    }
    let usize = usize::try_from(b.usize)
        .map_err(|_| Error::new(Errno::ENOMEM, at("block too large for memory")))?;
    let mut input = vec![0u8; index::HEADER_SIZE as usize + b.csize as usize];
    input[..header.len()].copy_from_slice(header);
    src.read_at(&mut input[header.len()..], b.coffset)?;

    // One byte more than the index promises, to notice a block that holds
    // more.
    let mut out = vec![0u8; usize + 1];
    let mut s = Stream::new_stream_decoder(u64::MAX, 0)
        .map_err(|e| Error::new(Errno::ENOMEM, at(&format!("liblzma: {e}"))))?;
    loop {
        let (in_before, out_before) = (s.total_in(), s.total_out());
        let status = s.process(
            &input[s.total_in() as usize..],
            &mut out[s.total_out() as usize..],
            Action::Run,
        );
        match status {
            Ok(Status::Ok) | Ok(Status::StreamEnd) => {}
            Ok(_) => {}
            Err(e) => return Err(Error::new(Errno::EIO, at(&format!("corrupt data ({e})")))),
        }
        let (i, o) = (s.total_in() as usize, s.total_out() as usize);
        if o > usize {
            return Err(Error::new(
                Errno::EIO,
                at("holds more data than the index says (corrupt file)"),
            ));
        }
        if i == input.len() {
            break;
        }
        if (i as u64, o as u64) == (in_before, out_before) {
            return Err(Error::new(
                Errno::EIO,
                at("decoder stopped early (corrupt file)"),
            ));
        }
    }
    if s.total_out() != b.usize {
        return Err(Error::new(
            Errno::EIO,
            at(&format!(
                "holds {} bytes, not the {} the index says (corrupt file)",
                s.total_out(),
                b.usize
            )),
        ));
    }
    out.truncate(usize);
    Ok(out)
}

impl FilterContext for XzContext {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn prepare(&self, _readonly: bool) -> Result<()> {
        let layout = {
            let mut shared = lock(&self.shared);
            match &*shared {
                Some(l) => l.clone(),
                None => {
                    let l = Arc::new(index::read_layout(&NextSource(&*self.next))?);
                    crate::log::debug(format!(
                        "xz: {} streams, {} blocks, uncompressed size {}, largest block {}",
                        l.streams.len(),
                        l.blocks.len(),
                        l.size,
                        l.max_block()
                    ));
                    *shared = Some(l.clone());
                    l
                }
            }
        };
        let largest = layout.max_block();
        if largest > self.max_block {
            return Err(Error::new(
                Errno::EINVAL,
                format!(
                    "xz: the xz file's largest block ({largest} bytes) is bigger than \
                     xz-max-block ({} bytes): recompress it with smaller blocks \
                     (xz --block-size=16M) or raise xz-max-block",
                    self.max_block
                ),
            ));
        }
        let _ = self.layout.set(layout);
        Ok(())
    }

    fn get_size(&self) -> Result<u64> {
        Ok(self.layout()?.size)
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
        let layout = self.layout()?;
        let mut done = 0;
        while done < buf.len() {
            let pos = offset + done as u64;
            let n = layout.find(pos).ok_or_else(|| {
                Error::new(Errno::EIO, format!("xz: read beyond the end ({pos})"))
            })?;
            let data = self.block(layout, n)?;
            let start = (pos - layout.blocks[n].uoffset) as usize;
            let len = (buf.len() - done).min(data.len() - start);
            buf[done..done + len].copy_from_slice(&data[start..start + len]);
            done += len;
        }
        Ok(())
    }

    fn extents(&self, extents: &mut Extents, _flags: u32) -> Result<()> {
        // The compressed file's extents say nothing about these offsets:
        // everything is data.
        let (start, end) = (extents.start(), extents.end());
        extents.add(start, end - start, 0)
    }

    fn cache(&self, count: u64, offset: u64, _flags: u32) -> Result<()> {
        // Decompress the blocks now, into the block cache.
        let layout = self.layout()?;
        let end = offset.saturating_add(count).min(layout.size);
        let mut pos = offset;
        while pos < end {
            let Some(n) = layout.find(pos) else { break };
            self.block(layout, n)?;
            let b = &layout.blocks[n];
            pos = b.uoffset + b.usize;
        }
        Ok(())
    }

    fn pwrite(&self, _buf: &[u8], _offset: u64, _flags: u32) -> Result<()> {
        Err(Error::new(Errno::EROFS, "xz: the xz filter is read-only"))
    }

    fn trim(&self, _count: u64, _offset: u64, _flags: u32) -> Result<()> {
        Err(Error::new(Errno::EROFS, "xz: the xz filter is read-only"))
    }

    fn zero(&self, _count: u64, _offset: u64, _flags: u32) -> Result<()> {
        Err(Error::new(Errno::EROFS, "xz: the xz filter is read-only"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn compress(data: &[u8], block: u64) -> Vec<u8> {
        let stream = if block == 0 {
            Stream::new_easy_encoder(1, xz2::stream::Check::Sha256).unwrap()
        } else {
            xz2::stream::MtStreamBuilder::new()
                .preset(1)
                .threads(1)
                .block_size(block)
                .check(xz2::stream::Check::Crc64)
                .encoder()
                .unwrap()
        };
        let mut w = xz2::write::XzEncoder::new_stream(Vec::new(), stream);
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn data(n: usize) -> Vec<u8> {
        let mut x: u32 = 12345;
        (0..n)
            .map(|i| {
                x = x.wrapping_mul(1103515245).wrapping_add(12345);
                if i % 3 == 0 {
                    (x >> 16) as u8
                } else {
                    (i / 100) as u8
                }
            })
            .collect()
    }

    fn decode_all(x: &Vec<u8>) -> Result<Vec<u8>> {
        let l = index::read_layout(x)?;
        let mut out = Vec::new();
        for b in &l.blocks {
            out.extend(decode_block(x, &l.streams[b.stream], b)?);
        }
        Ok(out)
    }

    #[test]
    fn decodes_every_block() {
        for block in [0, 1000, 4096, 65536] {
            let d = data(200_003);
            let x = compress(&d, block);
            assert_eq!(decode_all(&x).unwrap(), d, "block size {block}");
        }
    }

    #[test]
    fn corrupt_block_is_an_error() {
        let d = data(100_000);
        let x = compress(&d, 10_000);
        let l = index::read_layout(&x).unwrap();
        // Flip bytes inside every block, one at a time: header, data or
        // check, each must be refused (CRC64 covers the data).
        for b in &l.blocks {
            for at in [1, b.csize / 2, b.csize - 5] {
                let mut y = x.clone();
                y[(b.coffset + at) as usize] ^= 0x10;
                assert!(
                    decode_block(&y, &l.streams[b.stream], b).is_err(),
                    "block {b:?} byte {at}"
                );
            }
        }
    }

    #[test]
    fn index_that_lies_about_size() {
        let d = data(50_000);
        let x = compress(&d, 0);
        let l = index::read_layout(&x).unwrap();
        let mut b = l.blocks[0];
        b.usize -= 1;
        assert!(decode_block(&x, &l.streams[0], &b).is_err());
        b.usize += 2;
        assert!(decode_block(&x, &l.streams[0], &b).is_err());
    }

    #[test]
    fn parameters() {
        let mut f = Xz::new();
        assert!(f.config("xz-max-block", "1M").unwrap());
        assert_eq!(f.max_block, 1 << 20);
        assert!(f.config("xz-max-block", "foo").is_err());
        assert!(f.config("xz-max-depth", "0").is_err());
        assert!(f.config("xz-max-depth", "-1").is_err());
        assert!(f.config("xz-max-depth", "").is_err());
        assert!(f.config("xz-max-depth", "3").unwrap());
        assert_eq!(f.max_depth, 3);
        assert!(!f.config("file", "x").unwrap());
    }
}
