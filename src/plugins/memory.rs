//! The memory plugin: one RAM disk shared by all connections, initially
//! zero and discarded at exit (`nbdkit memory [size=]SIZE
//! [allocator=sparse|malloc|zstd]`).  Storage is provided by one of the
//! allocators in the `memory/` folder.

pub mod allocator;
pub mod malloc;
pub mod sparse;
pub mod zstd;

use crate::error::{Error, Result};
use crate::extents::Extents;
use crate::parse::{parse_bool, parse_size};
use crate::plugin::{BlockSize, CacheMode, FuaMode, Handle, Plugin, ZeroFlags, ZeroMode};
use allocator::Allocator;
use std::sync::{Arc, Mutex};

/// Which allocator the user asked for, with its sub-options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocatorKind {
    Sparse,
    Malloc { mlock: bool },
    Zstd,
}

impl AllocatorKind {
    /// Parse an `allocator=` value such as `malloc,mlock=true`.
    pub fn parse(value: &str) -> Result<Self> {
        let mut parts = value.split(',');
        let name = parts.next().unwrap_or("");
        let mut kind = match name {
            "sparse" => AllocatorKind::Sparse,
            "malloc" => AllocatorKind::Malloc { mlock: false },
            "zstd" => AllocatorKind::Zstd,
            _ => {
                return Err(Error::config(format!(
                    "allocator: unknown allocator type '{name}' \
                     (expecting sparse, malloc or zstd)"
                )))
            }
        };
        for opt in parts {
            let (k, v) = opt.split_once('=').unwrap_or((opt, ""));
            match (&mut kind, k) {
                (AllocatorKind::Malloc { mlock }, "mlock") => *mlock = parse_bool(v)?,
                _ => {
                    return Err(Error::config(format!(
                        "allocator={name}: unknown parameter '{k}'"
                    )))
                }
            }
        }
        Ok(kind)
    }

    /// Create the allocator for a disk of `size` bytes.
    pub fn create(self, size: u64) -> Result<Arc<dyn Allocator>> {
        Ok(match self {
            AllocatorKind::Sparse => Arc::new(sparse::Sparse::new()),
            AllocatorKind::Malloc { mlock } => Arc::new(malloc::Malloc::new(size, mlock)?),
            AllocatorKind::Zstd => Arc::new(zstd::new_zstd()),
        })
    }
}

/// The memory plugin.
pub struct MemoryPlugin {
    size: Option<u64>,
    kind: AllocatorKind,
    storage: Mutex<Option<Arc<dyn Allocator>>>,
}

impl Default for MemoryPlugin {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryPlugin {
    /// An unconfigured memory plugin.
    pub fn new() -> Self {
        MemoryPlugin {
            size: None,
            kind: AllocatorKind::Sparse,
            storage: Mutex::new(None),
        }
    }

    /// The shared storage, created on first use.
    fn storage(&self) -> Result<Arc<dyn Allocator>> {
        let mut s = self.storage.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = s.as_ref() {
            return Ok(a.clone());
        }
        let a = self.kind.create(self.size.unwrap_or(0))?;
        *s = Some(a.clone());
        Ok(a)
    }
}

const CALLBACKS: &[&str] = &[
    "config",
    "config_complete",
    "config_help",
    "dump_plugin",
    "get_ready",
    "get_size",
    "block_size",
    "can_fua",
    "can_multi_conn",
    "can_cache",
    "can_fast_zero",
    "pread",
    "pwrite",
    "flush",
    "trim",
    "zero",
    "extents",
];

impl Plugin for MemoryPlugin {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn description(&self) -> &'static str {
        "virtual memory (RAM disk) plugin"
    }

    fn magic_config_key(&self) -> Option<&'static str> {
        Some("size")
    }

    fn config_help(&self) -> &'static str {
        "size=<SIZE>  (required) Size of the backing disk\n\
         allocator=sparse|malloc|zstd  Backend allocation strategy"
    }

    fn callbacks(&self) -> &'static [&'static str] {
        CALLBACKS
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "size" if self.size.is_some() => {
                return Err(Error::config(format!(
                    "size given more than once (second: {value})"
                )))
            }
            "size" => self.size = Some(parse_size(value)?),
            "allocator" => self.kind = AllocatorKind::parse(value)?,
            _ => return Err(Error::config(format!("unknown parameter '{key}'"))),
        }
        Ok(())
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.size.is_none() {
            return Err(Error::config(
                "you must specify size=<SIZE> on the command line",
            ));
        }
        Ok(())
    }

    fn dump_plugin(&self) -> Vec<String> {
        vec!["mlock=yes".into(), "zstd=yes".into()]
    }

    fn get_ready(&self) -> Result<()> {
        self.storage().map(drop)
    }

    fn after_fork(&self) -> Result<()> {
        self.storage()?.after_fork()
    }

    fn open(&self, _readonly: bool, _export_name: &str, _is_tls: bool) -> Result<Box<dyn Handle>> {
        Ok(Box::new(MemoryHandle {
            size: self.size.unwrap_or(0),
            storage: self.storage()?,
        }))
    }
}

/// A connection to the memory disk (all handles share the storage).
pub struct MemoryHandle {
    size: u64,
    storage: Arc<dyn Allocator>,
}

impl MemoryHandle {
    /// A handle on `storage` for a disk of `size` bytes (the data plugin
    /// serves its disk through the same handle).
    pub fn new(size: u64, storage: Arc<dyn Allocator>) -> Self {
        MemoryHandle { size, storage }
    }
}

impl Handle for MemoryHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        Ok(Some(BlockSize {
            minimum: 1,
            preferred: self.storage.preferred_block_size(),
            maximum: 0xffff_ffff,
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
        Ok(true)
    }

    fn can_extents(&self) -> Result<bool> {
        Ok(true)
    }

    fn can_fua(&self) -> Result<FuaMode> {
        Ok(FuaMode::Native)
    }

    fn can_multi_conn(&self) -> Result<bool> {
        Ok(true)
    }

    fn can_cache(&self) -> Result<CacheMode> {
        Ok(CacheMode::Native)
    }

    fn pread(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.storage.read(buf, offset)
    }

    fn pwrite(&self, buf: &[u8], offset: u64, _fua: bool) -> Result<()> {
        self.storage.write(buf, offset)
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn trim(&self, count: u64, offset: u64, _fua: bool) -> Result<()> {
        self.storage.zero(count, offset)
    }

    fn zero(&self, count: u64, offset: u64, _flags: ZeroFlags) -> Result<()> {
        self.storage.zero(count, offset)
    }

    fn extents(&self, extents: &mut Extents, _req_one: bool) -> Result<()> {
        self.storage.extents(extents)
    }

    fn cache(&self, _count: u64, _offset: u64) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
