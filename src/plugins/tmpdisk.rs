//! The tmpdisk plugin: `nbdkit tmpdisk [size=]SIZE [type=FS] [label=L]` or
//! `nbdkit tmpdisk [size=]SIZE command=COMMAND [VAR=VALUE ...]` gives each
//! connection a fresh disk of its own, made when it connects and gone when
//! it disconnects.
//!
//! The disk is made in a new private directory under `$TMPDIR` (default
//! `/var/tmp`); once the server has it open, the file and the directory
//! are removed, so nothing is left behind however the connection ends.

use crate::error::{Error, Result};
use crate::plugin::{Handle, Plugin};
use crate::plugins::file::{open_path, Fadvise, FileHandle, PageCache};
use crate::plugins::mkdisk::{MakeParams, PrivateDisk, HELP};
use std::path::PathBuf;

/// The tmpdisk plugin.
#[derive(Debug, Default)]
pub struct TmpdiskPlugin {
    params: MakeParams,
    tmpdir: PathBuf,
}

impl TmpdiskPlugin {
    /// An unconfigured tmpdisk plugin.
    pub fn new() -> Self {
        TmpdiskPlugin::default()
    }
}

const CALLBACKS: &[&str] = &[
    "config",
    "config_complete",
    "config_help",
    "open",
    "get_size",
    "can_multi_conn",
    "can_trim",
    "can_fua",
    "pread",
    "pwrite",
    "flush",
    "trim",
    "zero",
    "extents",
];

impl Plugin for TmpdiskPlugin {
    fn name(&self) -> &'static str {
        "tmpdisk"
    }

    fn description(&self) -> &'static str {
        "tmpdisk plugin: a fresh temporary disk for each client"
    }

    fn magic_config_key(&self) -> Option<&'static str> {
        Some("size")
    }

    fn config_help(&self) -> &'static str {
        HELP
    }

    fn callbacks(&self) -> &'static [&'static str] {
        CALLBACKS
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        self.params.config(key, value)
    }

    fn config_complete(&mut self) -> Result<()> {
        self.params.require_size()?;
        self.tmpdir = std::env::var_os("TMPDIR")
            .filter(|s| !s.is_empty())
            .map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
        Ok(())
    }

    fn open(&self, readonly: bool, _export_name: &str, _is_tls: bool) -> Result<Box<dyn Handle>> {
        // A directory only we can enter, so nobody can swap the disk
        // between the command making it and us opening it.
        let dir = nix::unistd::mkdtemp(&self.tmpdir.join("tmpdiskXXXXXX"))
            .map_err(|e| Error::os(e, format!("mkdtemp: {}", self.tmpdir.display())))?;
        let disk = dir.join("disk");
        let opened = self
            .params
            .make(&disk)
            .and_then(|()| open_path(&disk, readonly));
        // Removed whatever happened: an open descriptor keeps the data.
        let _ = std::fs::remove_dir_all(&dir);
        let (file, writable) = opened?;
        let fh = FileHandle::new(file, writable, PageCache::Default, Fadvise::Normal)?;
        Ok(Box::new(PrivateDisk(fh)))
    }
}
