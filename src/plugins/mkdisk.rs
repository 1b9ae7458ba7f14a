//! What the `tmpdisk` and `ondemand` plugins share: the `size=`,
//! `command=` and `VAR=VALUE` parameters, running the command that makes a
//! disk (by default `mkfs` with `type=` and `label=`), and a handle on the
//! disk it made.
//!
//! The command runs under `/bin/sh -c` with stdin and stdout on
//! `/dev/null` and stderr on the server's stderr.  `$disk`, `$size` and
//! every extra parameter reach it as environment variables, so no value is
//! ever pasted into shell text and none needs quoting.

use crate::error::{Error, Result};
use crate::extents::Extents;
use crate::parse::parse_size;
use crate::plugin::{BlockSize, CacheMode, FuaMode, Handle, ZeroFlags, ZeroMode};
use crate::plugins::file::FileHandle;
use nix::errno::Errno;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// The default command: make a `$size` byte file and format it with
/// `mkfs -t $type` (ext4 unless `type=` says otherwise), labelled
/// `$label` if given.
pub const DEFAULT_COMMAND: &str = r#"
fstype="${type:-ext4}"
case "$fstype" in
    ext[234]) force=-F labelflag=-L ;;
    xfs|btrfs) force=-f labelflag=-L ;;
    vfat|fat|msdos) force=-I labelflag=-n ;;
    ntfs) force="-Q -F" labelflag=-L ;;
    *) force= labelflag=-L ;;
esac
truncate -s "$size" "$disk" || exit 1
if [ -n "$label" ]; then
    exec mkfs -t "$fstype" $force "$labelflag" "$label" "$disk"
else
    exec mkfs -t "$fstype" $force "$disk"
fi
"#;

/// The parameters shared by both plugins.
#[derive(Debug, Default)]
pub struct MakeParams {
    pub size: Option<u64>,
    pub command: Option<String>,
    pub vars: Vec<(String, String)>,
}

fn is_shell_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c == b'_' || c.is_ascii_alphabetic())
        && b.all(|c| c == b'_' || c.is_ascii_alphanumeric())
}

impl MakeParams {
    /// Take `size`, `command` and any other key as a variable for the
    /// command.  `disk` is refused (it is set for each disk).
    pub fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "size" if self.size.is_some() => Err(Error::config(format!(
                "size given more than once (second: {value})"
            ))),
            "size" => {
                self.size = Some(parse_size(value)?);
                Ok(())
            }
            "command" if self.command.is_some() => {
                Err(Error::config("command given more than once"))
            }
            "command" => {
                self.command = Some(value.to_owned());
                Ok(())
            }
            "disk" => Err(Error::config(
                "'disk' parameter cannot be set on the command line",
            )),
            _ if !is_shell_name(key) => Err(Error::config(format!(
                "parameter '{key}' cannot be passed to the command: \
                 it is not a valid shell variable name"
            ))),
            _ if self.vars.iter().any(|(k, _)| k == key) => Err(Error::config(format!(
                "{key} given more than once (second: {value})"
            ))),
            _ => {
                self.vars.push((key.to_owned(), value.to_owned()));
                Ok(())
            }
        }
    }

    /// The requested size (required).
    pub fn require_size(&self) -> Result<u64> {
        self.size
            .ok_or_else(|| Error::config("the size parameter is required"))
    }

    /// Run the command to make `disk`.
    pub fn make(&self, disk: &Path) -> Result<()> {
        let script = self.command.as_deref().unwrap_or(DEFAULT_COMMAND);
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(script);
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        cmd.env("disk", disk)
            .env("size", self.size.unwrap_or(0).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let status = cmd
            .status()
            .map_err(|e| Error::io(e, "failed to execute command"))?;
        if let Some(code) = status.code() {
            if code != 0 {
                return Err(Error::new(
                    Errno::EIO,
                    format!("command exited with code {code}"),
                ));
            }
        } else if let Some(sig) = status.signal() {
            return Err(Error::new(
                Errno::EIO,
                format!("command killed by signal {sig}"),
            ));
        }
        Ok(())
    }
}

/// A disk one client owns: the file plugin's handle, except that
/// multi-conn is never advertised (another connection sees a different
/// disk, or is locked out of this one).
pub struct PrivateDisk(pub FileHandle);

impl Handle for PrivateDisk {
    fn get_size(&self) -> Result<u64> {
        self.0.get_size()
    }
    fn block_size(&self) -> Result<Option<BlockSize>> {
        self.0.block_size()
    }
    fn can_write(&self) -> Result<bool> {
        self.0.can_write()
    }
    fn can_flush(&self) -> Result<bool> {
        self.0.can_flush()
    }
    fn is_rotational(&self) -> Result<bool> {
        self.0.is_rotational()
    }
    fn can_trim(&self) -> Result<bool> {
        self.0.can_trim()
    }
    fn can_zero(&self) -> Result<ZeroMode> {
        self.0.can_zero()
    }
    fn can_fast_zero(&self) -> Result<bool> {
        self.0.can_fast_zero()
    }
    fn can_extents(&self) -> Result<bool> {
        self.0.can_extents()
    }
    fn can_fua(&self) -> Result<FuaMode> {
        self.0.can_fua()
    }
    fn can_multi_conn(&self) -> Result<bool> {
        Ok(false)
    }
    fn can_cache(&self) -> Result<CacheMode> {
        self.0.can_cache()
    }
    fn pread(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.0.pread(buf, offset)
    }
    fn pwrite(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        self.0.pwrite(buf, offset, fua)
    }
    fn flush(&self) -> Result<()> {
        self.0.flush()
    }
    fn trim(&self, count: u64, offset: u64, fua: bool) -> Result<()> {
        self.0.trim(count, offset, fua)
    }
    fn zero(&self, count: u64, offset: u64, flags: ZeroFlags) -> Result<()> {
        self.0.zero(count, offset, flags)
    }
    fn extents(&self, extents: &mut Extents, req_one: bool) -> Result<()> {
        self.0.extents(extents, req_one)
    }
    fn cache(&self, count: u64, offset: u64) -> Result<()> {
        self.0.cache(count, offset)
    }
}

/// The config help lines both plugins share.
pub const HELP: &str = "size=<SIZE>      (required) Virtual filesystem size.\n\
label=<LABEL>               The filesystem label.\n\
type=ext4|...               The filesystem type.\n\
command=<COMMAND>           Alternate command instead of mkfs.\n\
VAR=VALUE                   Variables for the command.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let mut m = MakeParams::default();
        assert!(m.require_size().is_err());
        m.config("size", "1M").unwrap();
        assert!(m.config("size", "2M").is_err());
        assert!(m.config("disk", "x").is_err());
        assert!(m.config("9lives", "x").is_err());
        assert!(m.config("a-b", "x").is_err());
        m.config("os", "fedora").unwrap();
        assert!(m.config("os", "debian").is_err());
        m.config("command", "exit 3").unwrap();
        assert!(m.config("command", "true").is_err());
        let e = m.make(Path::new("/nonexistent")).unwrap_err();
        assert_eq!(e.message(), "command exited with code 3");
    }

    #[test]
    fn variables_reach_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = MakeParams::default();
        m.config("size", "4k").unwrap();
        m.config("greeting", "it's \"$HOME\"").unwrap();
        m.config("command", r#"printf '%s %s' "$greeting" "$size" > "$disk""#)
            .unwrap();
        let disk = dir.path().join("d");
        m.make(&disk).unwrap();
        assert_eq!(
            std::fs::read_to_string(&disk).unwrap(),
            "it's \"$HOME\" 4096"
        );
    }
}
