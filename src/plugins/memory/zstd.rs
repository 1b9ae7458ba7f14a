//! The `zstd` allocator: sparse like `sparse`, but each allocated 32 KiB
//! page is kept zstd-compressed and decompressed on access.

use super::allocator::{is_zero, PAGE_SIZE};
use super::sparse::{PageRepr, SparseArray};
use crate::error::{Error, Result};
use std::cell::RefCell;
use zstd::bulk::{Compressor, Decompressor};

/// Compression level: fast, as pages are recompressed on every write.
const LEVEL: i32 = 1;

thread_local! {
    static COMPRESSOR: RefCell<Option<Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<Decompressor<'static>>> = const { RefCell::new(None) };
}

fn compress(data: &[u8]) -> Result<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(Compressor::new(LEVEL).map_err(|e| Error::io(e, "zstd"))?);
        }
        match c.as_mut() {
            Some(c) => c.compress(data).map_err(|e| Error::io(e, "zstd compress")),
            None => unreachable!("compressor was just created"),
        }
    })
}

fn decompress(data: &[u8]) -> Result<Vec<u8>> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(Decompressor::new().map_err(|e| Error::io(e, "zstd"))?);
        }
        let out = match d.as_mut() {
            Some(d) => d
                .decompress(data, PAGE_SIZE)
                .map_err(|e| Error::io(e, "zstd decompress"))?,
            None => unreachable!("decompressor was just created"),
        };
        if out.len() != PAGE_SIZE {
            return Err(Error::new(
                nix::errno::Errno::EIO,
                "zstd decompress: page has the wrong size",
            ));
        }
        Ok(out)
    })
}

/// A page kept zstd-compressed.
pub struct ZstdPage(Vec<u8>);

impl PageRepr for ZstdPage {
    fn encode(data: Vec<u8>) -> Result<Self> {
        Ok(ZstdPage(compress(&data)?))
    }
    fn read(&self, at: usize, out: &mut [u8]) -> Result<()> {
        let plain = decompress(&self.0)?;
        out.copy_from_slice(&plain[at..at + out.len()]);
        Ok(())
    }
    fn update(&mut self, f: &mut dyn FnMut(&mut [u8])) -> Result<()> {
        let mut plain = decompress(&self.0)?;
        f(&mut plain);
        self.0 = compress(&plain)?;
        Ok(())
    }
    fn is_all_zero(&self) -> Result<bool> {
        Ok(is_zero(&decompress(&self.0)?))
    }
}

/// The `zstd` allocator.
pub type Zstd = SparseArray<ZstdPage>;

/// An empty `zstd` allocator.
pub fn new_zstd() -> Zstd {
    SparseArray::with_name("zstd")
}
