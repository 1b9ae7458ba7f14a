//! The zero plugin: `nbdkit zero`.  An empty, read-only disk of size 0, for
//! testing clients' corner cases.  It takes no parameters.

use crate::error::{Error, Result};
use crate::plugin::{CacheMode, Handle, Plugin};

/// The zero plugin.
#[derive(Debug, Default)]
pub struct ZeroPlugin;

impl ZeroPlugin {
    /// The zero plugin (it has nothing to configure).
    pub fn new() -> Self {
        ZeroPlugin
    }
}

const CALLBACKS: &[&str] = &["open", "get_size", "can_multi_conn", "can_cache", "pread"];

impl Plugin for ZeroPlugin {
    fn name(&self) -> &'static str {
        "zero"
    }

    fn description(&self) -> &'static str {
        "zero plugin: a read-only disk of size 0"
    }

    fn config_help(&self) -> &'static str {
        "This plugin takes no parameters."
    }

    fn callbacks(&self) -> &'static [&'static str] {
        CALLBACKS
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn config(&mut self, key: &str, _value: &str) -> Result<()> {
        Err(Error::config(format!(
            "unknown parameter '{key}': this plugin takes no parameters (its disk is always empty)"
        )))
    }

    fn open(&self, _readonly: bool, _export_name: &str, _is_tls: bool) -> Result<Box<dyn Handle>> {
        Ok(Box::new(ZeroHandle))
    }
}

/// A connection to the empty disk.
#[derive(Debug)]
pub struct ZeroHandle;

impl Handle for ZeroHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(0)
    }

    fn can_multi_conn(&self) -> Result<bool> {
        Ok(true)
    }

    fn can_cache(&self) -> Result<CacheMode> {
        Ok(CacheMode::Native)
    }

    fn pread(&self, buf: &mut [u8], _offset: u64) -> Result<()> {
        // The server never asks for bytes of a 0-byte disk; be safe anyway.
        buf.fill(0);
        Ok(())
    }

    fn cache(&self, _count: u64, _offset: u64) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_read_only_and_no_parameters() {
        let mut p = ZeroPlugin::new();
        assert!(p.config("size", "1M").is_err());
        p.config_complete().unwrap();
        let h = p.open(false, "", false).unwrap();
        assert_eq!(h.get_size().unwrap(), 0);
        assert!(!h.can_write().unwrap());
        assert!(h.can_multi_conn().unwrap());
    }
}
