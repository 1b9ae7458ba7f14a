//! The split plugin: `nbdkit split [file=]FILE1 [file=]FILE2 ...` serves
//! several regular files, in command-line order, as one disk.
//!
//! The files must keep their sizes while the server runs (each connection
//! checks this when it opens them).  Unlike nbdkit's C plugin, trim, zero
//! and extents are passed through to the files (see [`super::concat`]).

use crate::error::{Error, Result};
use crate::plugin::{Handle, Plugin};
use crate::plugins::concat::{file_size, ConcatHandle, Layout, Source};
use std::path::PathBuf;
use std::sync::Arc;

/// The split plugin.
#[derive(Debug, Default)]
pub struct SplitPlugin {
    /// Files as given, then (after `config_complete`) with their sizes.
    names: Vec<String>,
    files: Vec<(PathBuf, u64)>,
    layout: Arc<Layout>,
}

impl SplitPlugin {
    /// An unconfigured split plugin.
    pub fn new() -> Self {
        SplitPlugin::default()
    }
}

const CALLBACKS: &[&str] = &[
    "config",
    "config_complete",
    "config_help",
    "open",
    "get_size",
    "can_write",
    "can_flush",
    "can_trim",
    "can_zero",
    "can_fast_zero",
    "can_extents",
    "can_fua",
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

impl Plugin for SplitPlugin {
    fn name(&self) -> &'static str {
        "split"
    }

    fn description(&self) -> &'static str {
        "split plugin: concatenate files into one disk"
    }

    fn magic_config_key(&self) -> Option<&'static str> {
        Some("file")
    }

    fn config_help(&self) -> &'static str {
        "[file=]<FILENAME> (required) File(s) to serve, concatenated in order."
    }

    fn callbacks(&self) -> &'static [&'static str] {
        CALLBACKS
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "file" if value.is_empty() => Err(Error::config("file: the file name is empty")),
            "file" => {
                self.names.push(value.to_owned());
                Ok(())
            }
            _ => Err(Error::config(format!("unknown parameter '{key}'"))),
        }
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.names.is_empty() {
            return Err(Error::config(
                "you must supply one or more file=<FILENAME> parameters",
            ));
        }
        let mut layout = Layout::default();
        for (i, name) in self.names.iter().enumerate() {
            let path = std::fs::canonicalize(name)
                .map_err(|e| Error::io(e, format!("realpath: {name}")))?;
            let size = file_size(&path)?;
            layout.push(size, Source::File(i));
            self.files.push((path, size));
        }
        self.layout = Arc::new(layout);
        Ok(())
    }

    fn open(&self, readonly: bool, _export_name: &str, _is_tls: bool) -> Result<Box<dyn Handle>> {
        Ok(Box::new(ConcatHandle::open(
            self.layout.clone(),
            &self.files,
            readonly,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let mut p = SplitPlugin::new();
        assert_eq!(
            p.config_complete().unwrap_err().message(),
            "you must supply one or more file=<FILENAME> parameters"
        );
        assert!(p.config("size", "1").is_err());
        assert!(p.config("file", "").is_err());
        p.config("file", "/nonexistent/x").unwrap();
        let e = p.config_complete().unwrap_err();
        assert!(e.message().starts_with("realpath: /nonexistent/x"), "{e}");
        let mut p = SplitPlugin::new();
        p.config("file", "/dev/null").unwrap();
        let e = p.config_complete().unwrap_err();
        assert!(e.message().contains("not a regular file"), "{e}");
    }

    #[test]
    fn concatenates_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = SplitPlugin::new();
        for (n, d) in [("a", &b"hello "[..]), ("b", b""), ("c", b"world")] {
            let path = dir.path().join(n);
            std::fs::write(&path, d).unwrap();
            p.config("file", path.to_str().unwrap()).unwrap();
        }
        p.config_complete().unwrap();
        let h = p.open(true, "", false).unwrap();
        assert_eq!(h.get_size().unwrap(), 11);
        assert!(!h.can_write().unwrap());
        let mut buf = [0u8; 11];
        h.pread(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello world");
    }
}
