//! The `tls-fallback` filter: serve clients that did not negotiate TLS a
//! harmless read-only export holding a short message, and TLS clients the
//! real plugin.  Used with `--tls=on`, so that plaintext clients get
//! something to read that says why instead of being refused.
//!
//! A plaintext client is never passed to the layers below (not even
//! opened there): it sees one export, the default `""`, 512 bytes long,
//! holding the `tlsreadme=` message (truncated to 512 bytes, padded with
//! zeroes), read-only, with no flush, trim, zero, extents, cache or
//! multi-conn.  The filter needs a thread model that allows parallel
//! connections.

use crate::error::{Error, Result};
use crate::filter::{Filter, FilterContext, PassThrough};
use crate::layers::{Backend, Context};
use crate::plugin::{BlockSize, CacheMode, ExportInfo, FuaMode, ThreadModel, ZeroMode};
use nix::errno::Errno;
use std::sync::Arc;

/// The size of the plaintext export.
const SIZE: usize = 512;
const DEFAULT_MESSAGE: &str =
    "This NBD server requires TLS authentication before it will serve useful data.\n";

pub struct TlsFallback {
    message: Arc<[u8; SIZE]>,
}

fn padded(msg: &str) -> [u8; SIZE] {
    let mut buf = [0u8; SIZE];
    let b = msg.as_bytes();
    let n = b.len().min(SIZE);
    buf[..n].copy_from_slice(&b[..n]);
    buf
}

impl TlsFallback {
    pub fn new() -> Self {
        TlsFallback {
            message: Arc::new(padded(DEFAULT_MESSAGE)),
        }
    }
}

impl Default for TlsFallback {
    fn default() -> Self {
        Self::new()
    }
}

impl Filter for TlsFallback {
    fn name(&self) -> &'static str {
        "tls-fallback"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit tls-fallback filter")
    }

    fn description(&self) -> &'static str {
        "Serve a message to plaintext clients and the plugin to TLS clients."
    }

    fn config_help(&self) -> &'static str {
        "tlsreadme=<MESSAGE>  Alternative contents for the plaintext dummy export."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "tlsreadme" {
            return Ok(false);
        }
        self.message = Arc::new(padded(value));
        Ok(true)
    }

    fn get_ready(&self) -> Result<()> {
        if crate::layers::server_thread_model() == ThreadModel::SerializeConnections {
            return Err(Error::config(
                "the tls-fallback filter requires parallel connection support",
            ));
        }
        Ok(())
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn list_exports(
        &self,
        next: &dyn Backend,
        readonly: bool,
        is_tls: bool,
    ) -> Result<Vec<ExportInfo>> {
        if is_tls {
            next.list_exports(readonly, is_tls)
        } else {
            // Nothing about the real exports leaks to a plaintext client.
            Ok(vec![ExportInfo::named("")])
        }
    }

    fn default_export(&self, next: &dyn Backend, readonly: bool, is_tls: bool) -> Result<String> {
        if is_tls {
            next.default_export(readonly, is_tls)
        } else {
            Ok(String::new())
        }
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        if is_tls {
            Ok(Box::new(PassThrough(next.open(readonly, export, is_tls)?)))
        } else {
            Ok(Box::new(Readme {
                message: self.message.clone(),
            }))
        }
    }
}

/// The plaintext connection: answers everything itself.
struct Readme {
    message: Arc<[u8; SIZE]>,
}

impl Context for Readme {
    fn prepare(&self, _readonly: bool) -> Result<()> {
        Ok(())
    }
    fn finalize(&self) -> Result<()> {
        Ok(())
    }
    fn get_size(&self) -> Result<u64> {
        Ok(SIZE as u64)
    }
    fn export_description(&self) -> Result<Option<String>> {
        Ok(None)
    }
    fn block_size(&self) -> Result<Option<BlockSize>> {
        Ok(None)
    }
    fn can_write(&self) -> Result<bool> {
        Ok(false)
    }
    fn can_flush(&self) -> Result<bool> {
        Ok(false)
    }
    fn is_rotational(&self) -> Result<bool> {
        Ok(false)
    }
    fn can_trim(&self) -> Result<bool> {
        Ok(false)
    }
    fn can_zero(&self) -> Result<ZeroMode> {
        Ok(ZeroMode::None)
    }
    fn can_fast_zero(&self) -> Result<bool> {
        Ok(false)
    }
    fn can_extents(&self) -> Result<bool> {
        Ok(false)
    }
    fn can_fua(&self) -> Result<FuaMode> {
        Ok(FuaMode::None)
    }
    fn can_multi_conn(&self) -> Result<bool> {
        Ok(false)
    }
    fn can_cache(&self) -> Result<CacheMode> {
        Ok(CacheMode::None)
    }
    fn pread(&self, buf: &mut [u8], offset: u64, _flags: u32) -> Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start.checked_add(buf.len()) {
            Some(end) if end <= SIZE => {
                buf.copy_from_slice(&self.message[start..end]);
                Ok(())
            }
            _ => Err(Error::new(Errno::EIO, "read beyond the end of the readme")),
        }
    }
    fn pwrite(&self, _buf: &[u8], _offset: u64, _flags: u32) -> Result<()> {
        Err(Error::new(Errno::EPERM, "the readme export is read-only"))
    }
    fn flush(&self, _flags: u32) -> Result<()> {
        Err(Error::new(Errno::EINVAL, "flush is not supported"))
    }
    fn trim(&self, _count: u64, _offset: u64, _flags: u32) -> Result<()> {
        Err(Error::new(Errno::EPERM, "the readme export is read-only"))
    }
    fn zero(&self, _count: u64, _offset: u64, _flags: u32) -> Result<()> {
        Err(Error::new(Errno::EPERM, "the readme export is read-only"))
    }
    fn extents(&self, _extents: &mut crate::extents::Extents, _flags: u32) -> Result<()> {
        Err(Error::new(Errno::EINVAL, "extents are not supported"))
    }
    fn cache(&self, _count: u64, _offset: u64, _flags: u32) -> Result<()> {
        Err(Error::new(Errno::EINVAL, "cache is not supported"))
    }
}

impl FilterContext for Readme {
    fn next(&self) -> &dyn Context {
        self
    }
    fn get_size(&self) -> Result<u64> {
        Context::get_size(self)
    }
    fn export_description(&self) -> Result<Option<String>> {
        Ok(None)
    }
    fn block_size(&self) -> Result<Option<BlockSize>> {
        Ok(None)
    }
    fn can_write(&self) -> Result<bool> {
        Ok(false)
    }
    fn can_flush(&self) -> Result<bool> {
        Ok(false)
    }
    fn is_rotational(&self) -> Result<bool> {
        Ok(false)
    }
    fn can_trim(&self) -> Result<bool> {
        Ok(false)
    }
    fn can_zero(&self) -> Result<ZeroMode> {
        Ok(ZeroMode::None)
    }
    fn can_fast_zero(&self) -> Result<bool> {
        Ok(false)
    }
    fn can_extents(&self) -> Result<bool> {
        Ok(false)
    }
    fn can_fua(&self) -> Result<FuaMode> {
        Ok(FuaMode::None)
    }
    fn can_multi_conn(&self) -> Result<bool> {
        Ok(false)
    }
    fn can_cache(&self) -> Result<CacheMode> {
        Ok(CacheMode::None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_is_padded_and_truncated() {
        let r = Readme {
            message: Arc::new(padded("hello")),
        };
        let mut buf = [1u8; 8];
        Context::pread(&r, &mut buf, 0, 0).unwrap();
        assert_eq!(&buf, b"hello\0\0\0");
        assert!(Context::pread(&r, &mut buf, 508, 0).is_err());
        let long = "y".repeat(600);
        assert_eq!(padded(&long), [b'y'; SIZE]);
        assert!(padded(DEFAULT_MESSAGE).starts_with(b"This NBD server requires TLS"));
    }
}
