//! Reading the layout of an xz file from its end: stream footers, indexes
//! and stream headers, giving where every block lies, compressed and
//! uncompressed.  Nothing here decompresses.
//!
//! An xz file is one or more streams, each optionally followed by stream
//! padding (groups of four zero bytes).  A stream is a 12-byte header, its
//! blocks (each padded to a multiple of four bytes), an index listing every
//! block's unpadded and uncompressed size, and a 12-byte footer whose
//! "backward size" says how long the index is.  So the file is walked from
//! the end: skip padding, read a footer, read the index just before it,
//! add up the block sizes to find the stream header, and repeat before
//! that header until the start of the file.

use crate::error::{Error, Result};
pub use crate::filters::source::Source;
use nix::errno::Errno;

/// Stream header magic.
pub const HEADER_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0];
/// Stream footer magic.
const FOOTER_MAGIC: [u8; 2] = [b'Y', b'Z'];
/// Size of a stream header and of a stream footer.
pub const HEADER_SIZE: u64 = 12;
/// Largest value of an xz variable-length integer.
const VLI_MAX: u64 = i64::MAX as u64;
/// Largest index this reader loads (a real one is about six bytes a
/// block: this is tens of millions of blocks).
const INDEX_MAX: u64 = 1 << 30;
/// How much is read at a time when skipping stream padding.
const PAD_CHUNK: u64 = 64 * 1024;

/// One block of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Offset of the block's data in the uncompressed file.
    pub uoffset: u64,
    /// Uncompressed size.
    pub usize: u64,
    /// Offset of the block header in the xz file.
    pub coffset: u64,
    /// Compressed size with the block padding (a multiple of 4).
    pub csize: u64,
    /// Which stream (index into [`Layout::streams`]) the block is in.
    pub stream: usize,
}

/// The whole file's layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Every stream's 12-byte header, in file order (a block is decoded
    /// by giving the decoder its stream's header followed by the block).
    pub streams: Vec<[u8; 12]>,
    /// Every block in file order; `uoffset` increases.
    pub blocks: Vec<Block>,
    /// Uncompressed size of the whole file.
    pub size: u64,
}

impl Layout {
    /// The largest uncompressed block (0 if there are none).
    pub fn max_block(&self) -> u64 {
        self.blocks.iter().map(|b| b.usize).max().unwrap_or(0)
    }

    /// The block holding uncompressed byte `offset`, if any.
    pub fn find(&self, offset: u64) -> Option<usize> {
        // Empty blocks hold no bytes: the first block whose end is past
        // `offset` is the one.
        let i = self
            .blocks
            .partition_point(|b| b.uoffset + b.usize <= offset);
        (i < self.blocks.len()).then_some(i)
    }
}

fn corrupt(msg: impl std::fmt::Display) -> Error {
    Error::new(Errno::EINVAL, format!("xz: {msg}"))
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(data);
    c.sum()
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Decode one variable-length integer from `buf` at `*pos`.
fn vli(buf: &[u8], pos: &mut usize) -> Result<u64> {
    let mut v: u64 = 0;
    for i in 0..9 {
        let b = *buf.get(*pos).ok_or_else(|| corrupt("index is truncated"))?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            // A multi-byte integer may not end in a zero byte.
            if i > 0 && b == 0 {
                return Err(corrupt("index has a badly encoded number"));
            }
            return Ok(v);
        }
    }
    Err(corrupt("index has a number that is too large"))
}

/// Check stream flags (2 bytes); returns the check type.
fn stream_flags(f: &[u8]) -> Result<u8> {
    if f[0] != 0 || f[1] & 0xf0 != 0 {
        return Err(corrupt(
            "unsupported stream flags (the file may come from a newer xz, or be corrupt)",
        ));
    }
    Ok(f[1])
}

/// The blocks' (unpadded size, uncompressed size) listed in an index.
fn parse_index(index: &[u8]) -> Result<Vec<(u64, u64)>> {
    if index.len() < 8 || !index.len().is_multiple_of(4) {
        return Err(corrupt("index has an impossible size"));
    }
    let (body, crc) = index.split_at(index.len() - 4);
    if crc32(body) != le32(crc) {
        return Err(corrupt("index is corrupt (CRC mismatch)"));
    }
    if body[0] != 0 {
        return Err(corrupt("index is corrupt (bad indicator byte)"));
    }
    let mut pos = 1;
    let count = vli(body, &mut pos)?;
    // Each record takes at least two bytes.
    if count > (body.len() as u64) / 2 {
        return Err(corrupt("index is corrupt (too many records)"));
    }
    let mut records = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let unpadded = vli(body, &mut pos)?;
        let uncompressed = vli(body, &mut pos)?;
        // The format's own bounds.
        if !(5..=(VLI_MAX & !3)).contains(&unpadded) {
            return Err(corrupt("index is corrupt (impossible block size)"));
        }
        records.push((unpadded, uncompressed));
    }
    // `body` is a multiple of 4 long, so at most 3 bytes left over is
    // exactly the padding the format asks for.
    let rest = &body[pos..];
    if rest.len() > 3 || rest.iter().any(|&b| b != 0) {
        return Err(corrupt("index is corrupt (bad padding)"));
    }
    Ok(records)
}

/// What one stream contributes, read backwards from its footer.
struct Stream {
    header: [u8; 12],
    start: u64,
    records: Vec<(u64, u64)>,
}

/// Read the stream whose footer ends at `end`.
fn read_stream(src: &dyn Source, end: u64) -> Result<Stream> {
    if end < 2 * HEADER_SIZE {
        return Err(corrupt("file is truncated (no room for a stream)"));
    }
    let mut footer = [0u8; 12];
    src.read_at(&mut footer, end - HEADER_SIZE)?;
    if footer[10..] != FOOTER_MAGIC {
        return Err(corrupt(
            "file is truncated or corrupt (no stream footer at the end)",
        ));
    }
    if crc32(&footer[4..10]) != le32(&footer[..4]) {
        return Err(corrupt("stream footer is corrupt (CRC mismatch)"));
    }
    stream_flags(&footer[8..10])?;
    let index_size = (u64::from(le32(&footer[4..8])) + 1) * 4;
    let index_end = end - HEADER_SIZE;
    if index_size > index_end - HEADER_SIZE {
        return Err(corrupt(
            "stream footer is corrupt (index larger than the file)",
        ));
    }
    if index_size > INDEX_MAX {
        return Err(corrupt(format!(
            "index is {index_size} bytes, more than this filter loads ({INDEX_MAX})"
        )));
    }
    let index_start = index_end - index_size;
    let mut index = vec![0u8; index_size as usize];
    src.read_at(&mut index, index_start)?;
    let records = parse_index(&index)?;

    let mut blocks_size: u64 = 0;
    for &(unpadded, _) in &records {
        blocks_size = blocks_size
            .checked_add((unpadded + 3) & !3)
            .ok_or_else(|| corrupt("index is corrupt (sizes overflow)"))?;
    }
    let start = index_start
        .checked_sub(blocks_size)
        .and_then(|s| s.checked_sub(HEADER_SIZE))
        .ok_or_else(|| corrupt("index is corrupt (blocks larger than the file)"))?;
    let mut header = [0u8; 12];
    src.read_at(&mut header, start)?;
    if header[..6] != HEADER_MAGIC {
        return Err(corrupt(
            "stream header not where the index says (corrupt or truncated file)",
        ));
    }
    if crc32(&header[6..8]) != le32(&header[8..]) {
        return Err(corrupt("stream header is corrupt (CRC mismatch)"));
    }
    if header[6..8] != footer[8..10] {
        return Err(corrupt("stream header and footer disagree (corrupt file)"));
    }
    Ok(Stream {
        header,
        start,
        records,
    })
}

/// Where the last stream before `end` ends, skipping stream padding.
fn skip_padding(src: &dyn Source, mut end: u64) -> Result<u64> {
    let mut buf = vec![0u8; PAD_CHUNK as usize];
    while end > 0 {
        let n = end.min(PAD_CHUNK);
        let chunk = &mut buf[..n as usize];
        src.read_at(chunk, end - n)?;
        match chunk.iter().rposition(|&b| b != 0) {
            Some(i) => {
                // Padding comes in groups of four; the footer ends with
                // non-zero magic, so the zeros after it must be whole groups.
                let zeros = n - 1 - i as u64;
                if !zeros.is_multiple_of(4) {
                    return Err(corrupt("file is corrupt (bad stream padding)"));
                }
                return Ok(end - zeros);
            }
            None => end -= n,
        }
    }
    Ok(0)
}

/// Read the layout of the xz file in `src`.
pub fn read_layout(src: &dyn Source) -> Result<Layout> {
    let size = src.size()?;
    let mut magic = [0u8; 6];
    if size < magic.len() as u64 {
        return Err(corrupt("not an xz file (too short)"));
    }
    src.read_at(&mut magic, 0)?;
    if magic != HEADER_MAGIC {
        // The older .lzma ("lzma_alone") format starts with its properties
        // byte, 0x5d for every file xz and lzma-utils write.
        let hint = if magic[0] == 0x5d {
            ": this looks like an old .lzma file; recompress it with xz"
        } else {
            ""
        };
        return Err(corrupt(format!(
            "not an xz file (no xz magic number at the start){hint}"
        )));
    }
    if !size.is_multiple_of(4) {
        return Err(corrupt(
            "file is truncated or corrupt (its size is not a multiple of 4)",
        ));
    }

    let mut streams = Vec::new();
    let mut end = size;
    loop {
        end = skip_padding(src, end)?;
        if end == 0 {
            break;
        }
        let s = read_stream(src, end)?;
        end = s.start;
        streams.push(s);
    }
    if streams.is_empty() {
        return Err(corrupt("not an xz file (no streams)"));
    }
    streams.reverse();

    let mut layout = Layout {
        streams: Vec::with_capacity(streams.len()),
        blocks: Vec::new(),
        size: 0,
    };
    let overflow = || corrupt("index is corrupt (uncompressed size too large)");
    for (n, s) in streams.into_iter().enumerate() {
        layout.streams.push(s.header);
        let mut coffset = s.start + HEADER_SIZE;
        for (unpadded, usize) in s.records {
            let csize = (unpadded + 3) & !3;
            layout.blocks.push(Block {
                uoffset: layout.size,
                usize,
                coffset,
                csize,
                stream: n,
            });
            coffset += csize;
            layout.size = layout
                .size
                .checked_add(usize)
                .filter(|&t| t <= VLI_MAX)
                .ok_or_else(overflow)?;
        }
    }
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// `data` compressed as one xz stream, in blocks of `block` bytes
    /// (0: one block).
    fn compress(data: &[u8], block: u64) -> Vec<u8> {
        let stream = if block == 0 {
            xz2::stream::Stream::new_easy_encoder(1, xz2::stream::Check::Crc64).unwrap()
        } else {
            xz2::stream::MtStreamBuilder::new()
                .preset(1)
                .threads(1)
                .block_size(block)
                .check(xz2::stream::Check::Crc32)
                .encoder()
                .unwrap()
        };
        let mut w = xz2::write::XzEncoder::new_stream(Vec::new(), stream);
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 1000) as u8).collect()
    }

    #[test]
    fn vli_round_trip() {
        let mut pos = 0;
        assert_eq!(vli(&[0x00], &mut pos).unwrap(), 0);
        pos = 0;
        assert_eq!(vli(&[0xff, 0x01], &mut pos).unwrap(), 255);
        assert_eq!(pos, 2);
        pos = 0;
        assert!(vli(&[0x80, 0x00], &mut pos).is_err());
        pos = 0;
        assert!(vli(&[0x80], &mut pos).is_err());
        pos = 0;
        assert!(vli(&[0xff; 10], &mut pos).is_err());
    }

    #[test]
    fn one_block() {
        let d = data(100_000);
        let x = compress(&d, 0);
        let l = read_layout(&x).unwrap();
        assert_eq!(l.size, d.len() as u64);
        assert_eq!(l.blocks.len(), 1);
        assert_eq!(l.blocks[0].coffset, HEADER_SIZE);
        assert_eq!(l.max_block(), d.len() as u64);
        assert_eq!(l.find(0), Some(0));
        assert_eq!(l.find(99_999), Some(0));
        assert_eq!(l.find(100_000), None);
    }

    #[test]
    fn many_blocks_and_streams_with_padding() {
        let d1 = data(50_000);
        let d2 = data(30_001);
        let mut x = compress(&d1, 16384);
        x.extend_from_slice(&[0; 8]);
        x.extend_from_slice(&compress(&d2, 10_000));
        x.extend_from_slice(&[0; 4]);
        let l = read_layout(&x).unwrap();
        assert_eq!(l.streams.len(), 2);
        assert_eq!(l.blocks.len(), 4 + 4);
        assert_eq!(l.size, 80_001);
        assert_eq!(l.max_block(), 16384);
        assert_eq!(l.blocks[4].uoffset, 50_000);
        assert_eq!(l.blocks[4].stream, 1);
        assert_eq!(l.find(50_000), Some(4));
        assert_eq!(l.find(49_999), Some(3));
        assert_eq!(l.find(16384), Some(1));
        // Blocks are contiguous within a stream.
        for w in l.blocks[..4].windows(2) {
            assert_eq!(w[0].coffset + w[0].csize, w[1].coffset);
        }
    }

    #[test]
    fn empty_input() {
        let x = compress(&[], 0);
        let l = read_layout(&x).unwrap();
        assert_eq!(l.size, 0);
        assert_eq!(l.find(0), None);
    }

    #[test]
    fn refuses_damage() {
        let d = data(40_000);
        let x = compress(&d, 8192);
        // Not xz.
        assert!(read_layout(&b"hello world!".to_vec()).is_err());
        assert!(read_layout(&Vec::new()).is_err());
        // Truncated anywhere.
        for cut in [1, 4, 8, 12, 13, 100, x.len() / 2] {
            let e = read_layout(&x[..x.len() - cut].to_vec()).unwrap_err();
            assert!(e.message().starts_with("xz: "), "{}", e.message());
        }
        // Any single flipped byte in the footer, index or headers.
        let len = x.len();
        for i in (0..12).chain(len - 64..len) {
            let mut y = x.clone();
            y[i] ^= 0x41;
            if let Ok(l) = read_layout(&y) {
                // Only a block's own bytes may change without notice here
                // (the decoder catches those).
                assert_eq!(l, read_layout(&x).unwrap(), "byte {i}");
            }
        }
        // The older .lzma format gets a hint.
        let mut w = xz2::write::XzEncoder::new_stream(
            Vec::new(),
            xz2::stream::Stream::new_lzma_encoder(
                &xz2::stream::LzmaOptions::new_preset(1).unwrap(),
            )
            .unwrap(),
        );
        w.write_all(&d).unwrap();
        let e = read_layout(&w.finish().unwrap()).unwrap_err();
        assert!(e.message().contains(".lzma"), "{}", e.message());
        // Only padding at all.
        assert!(read_layout(&vec![0u8; 64]).is_err());
    }
}
