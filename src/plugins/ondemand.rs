//! The ondemand plugin: `nbdkit ondemand dir=DIR [size=]SIZE [wait=true]
//! [share=true] {[type=FS] [label=L] | command=COMMAND [VAR=VALUE ...]}`
//! serves one persistent disk per export name, kept as the file `DIR/NAME`
//! and made (by mkfs or the command) the first time a client asks for it.
//!
//! Export `""` is the file `default`.  Names longer than 255 bytes or
//! containing `.`, `/` or `:` are refused.  While a client has a disk open
//! it holds an open-file-description lock on it (shared for read-only
//! clients, exclusive otherwise), so two writers never share a file
//! system; `wait=true` makes a second client wait for the lock instead of
//! being refused, `share=true` takes no lock at all.

use crate::error::{Error, Result};
use crate::parse::parse_bool;
use crate::plugin::{ExportInfo, Handle, Plugin};
use crate::plugins::file::{open_path, Fadvise, FileHandle, PageCache};
use crate::plugins::mkdisk::{MakeParams, PrivateDisk};
use nix::errno::Errno;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Mutex;

/// The ondemand plugin.
#[derive(Debug, Default)]
pub struct OndemandPlugin {
    params: MakeParams,
    dir: Option<PathBuf>,
    wait: bool,
    share: bool,
    /// Held while a disk is being made, so two clients asking for the same
    /// new name do not both run the command.
    making: Mutex<()>,
}

impl OndemandPlugin {
    /// An unconfigured ondemand plugin.
    pub fn new() -> Self {
        OndemandPlugin::default()
    }

    fn dir(&self) -> &PathBuf {
        self.dir.as_ref().expect("dir checked in config_complete")
    }
}

/// The file name for export `name`, or why the name is refused.
fn file_name(name: &str) -> Result<&str> {
    let f = if name.is_empty() { "default" } else { name };
    if f.len() > 255 || f.contains(['.', '/', ':']) {
        return Err(Error::new(
            Errno::EINVAL,
            format!("invalid exportname ‘{name}’ rejected"),
        ));
    }
    Ok(f)
}

/// Take the OFD lock on `file`: shared when `readonly`, else exclusive;
/// blocking when `wait`.
fn lock(file: &File, readonly: bool, wait: bool, name: &str) -> Result<()> {
    // SAFETY: flock is a plain C struct for which all-zero bytes are valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if readonly {
        libc::F_RDLCK
    } else {
        libc::F_WRLCK
    } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    let cmd = if wait {
        libc::F_OFD_SETLKW
    } else {
        libc::F_OFD_SETLK
    };
    loop {
        // SAFETY: the descriptor is open for the duration of the call and
        // `fl` is a valid, initialised flock the kernel reads and may write.
        let r = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl) };
        if r == 0 {
            return Ok(());
        }
        match Errno::last() {
            Errno::EINTR => continue,
            Errno::EACCES | Errno::EAGAIN => {
                return Err(Error::new(
                    Errno::EINVAL,
                    format!("{name}: filesystem is locked by another client"),
                ))
            }
            e => return Err(Error::os(e, format!("fcntl: lock {name}"))),
        }
    }
}

const ONDEMAND_HELP: &str = "dir=<EXPORTSDIR> (required) Directory containing filesystems.\n\
size=<SIZE>      (required) Virtual filesystem size.\n\
label=<LABEL>               The filesystem label.\n\
type=ext4|...               The filesystem type.\n\
command=<COMMAND>           Alternate command instead of mkfs.\n\
wait=true                   Wait for a locked export instead of failing.\n\
share=true                  Let clients share an export (no locking).\n\
VAR=VALUE                   Variables for the command.";

const CALLBACKS: &[&str] = &[
    "config",
    "config_complete",
    "config_help",
    "list_exports",
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

impl Plugin for OndemandPlugin {
    fn name(&self) -> &'static str {
        "ondemand"
    }

    fn description(&self) -> &'static str {
        "ondemand plugin: create filesystems on demand"
    }

    fn magic_config_key(&self) -> Option<&'static str> {
        Some("size")
    }

    fn config_help(&self) -> &'static str {
        ONDEMAND_HELP
    }

    fn callbacks(&self) -> &'static [&'static str] {
        CALLBACKS
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "dir" => {
                let d = std::fs::canonicalize(value)
                    .map_err(|e| Error::io(e, format!("realpath: {value}")))?;
                if !d.is_dir() {
                    return Err(Error::config(format!("dir: {value}: is not a directory")));
                }
                self.dir = Some(d);
                Ok(())
            }
            "wait" => {
                self.wait = parse_bool(value)?;
                Ok(())
            }
            "share" => {
                self.share = parse_bool(value)?;
                Ok(())
            }
            _ => self.params.config(key, value),
        }
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.dir.is_none() || self.params.size.is_none() {
            return Err(Error::config("dir and size parameters are required"));
        }
        Ok(())
    }

    fn list_exports(&self, _readonly: bool, _is_tls: bool) -> Result<Vec<ExportInfo>> {
        let rd = std::fs::read_dir(self.dir())
            .map_err(|e| Error::io(e, format!("opendir: {}", self.dir().display())))?;
        let mut names = Vec::new();
        for entry in rd {
            let entry =
                entry.map_err(|e| Error::io(e, format!("readdir: {}", self.dir().display())))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            // Dot-files (a command's own state) and refused names are skipped.
            if name != "default" && file_name(&name).is_ok() {
                names.push(name);
            }
        }
        names.sort();
        let mut list = vec![ExportInfo::named("")];
        list.extend(names.into_iter().map(ExportInfo::named));
        Ok(list)
    }

    fn open(&self, readonly: bool, export_name: &str, _is_tls: bool) -> Result<Box<dyn Handle>> {
        let name = file_name(export_name)?;
        let path = self.dir().join(name);
        let (file, writable) = {
            let _making = self.making.lock().unwrap_or_else(|e| e.into_inner());
            match std::fs::symlink_metadata(&path) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if let Err(e) = self.params.make(&path) {
                        // Leave no half-made disk to be served next time.
                        let _ = std::fs::remove_file(&path);
                        return Err(e);
                    }
                }
                Err(e) => return Err(Error::io(e, format!("stat: {}", path.display()))),
            }
            open_path(&path, readonly)?
        };
        if !self.share {
            lock(&file, readonly || !writable, self.wait, name)?;
        }
        let fh = FileHandle::new(file, writable, PageCache::Default, Fadvise::Normal)?;
        Ok(Box::new(PrivateDisk(fh)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(file_name("").unwrap(), "default");
        assert_eq!(file_name("disk1").unwrap(), "disk1");
        for bad in ["a.b", "a/b", "a:b", "..", &"x".repeat(256)] {
            assert!(file_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parameters() {
        let mut p = OndemandPlugin::new();
        assert!(p.config_complete().is_err());
        assert!(p.config("dir", "/nonexistent").is_err());
        assert!(p.config("dir", "/etc/hostname").is_err());
        assert!(p.config("wait", "maybe").is_err());
        p.config("dir", "/tmp").unwrap();
        assert!(p.config_complete().is_err());
        p.config("size", "1M").unwrap();
        p.config_complete().unwrap();
    }
}
