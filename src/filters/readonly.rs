//! The `readonly` filter: without parameters it makes the plugin read-only
//! (like `-r`, but the plugin still sees a writable open).  With
//! `readonly-file=PATH` the plugin stays writable while PATH does not exist
//! and refuses writes, trims and zeroes with `EPERM` while it does, so
//! write protection can be switched on and off at run time.

use crate::error::{Error, Result};
use crate::filter::{Filter, FilterContext};
use crate::layers::{Backend, Context};
use nix::errno::Errno;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct ReadOnly {
    file: Option<Arc<PathBuf>>,
}

impl ReadOnly {
    pub fn new() -> Self {
        ReadOnly { file: None }
    }
}

impl Default for ReadOnly {
    fn default() -> Self {
        Self::new()
    }
}

impl Filter for ReadOnly {
    fn name(&self) -> &'static str {
        "readonly"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit readonly filter")
    }

    fn description(&self) -> &'static str {
        "Switch the plugin between read-only and writable."
    }

    fn config_help(&self) -> &'static str {
        "readonly-file=<FILENAME>     Set read-only if file exists."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "readonly-file" {
            return Ok(false);
        }
        if value.is_empty() {
            return Err(Error::config("readonly-file parameter cannot be empty"));
        }
        // Absolute, so that it keeps meaning the same file after the
        // server changes directory (daemonising does).
        let path = std::path::absolute(value)
            .map_err(|e| Error::config(format!("readonly-file: {value}: {e}")))?;
        self.file = Some(Arc::new(path));
        Ok(true)
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        Ok(Box::new(Switched {
            next: next.open(readonly, export, is_tls)?,
            file: self.file.clone(),
        }))
    }
}

struct Switched {
    next: Box<dyn Context>,
    /// `None`: always read-only.
    file: Option<Arc<PathBuf>>,
}

impl Switched {
    fn check(&self) -> Result<()> {
        match &self.file {
            Some(f) if !Path::new(&**f).exists() => Ok(()),
            _ => Err(Error::new(
                Errno::EPERM,
                "readonly: write operations are not permitted",
            )),
        }
    }
}

impl FilterContext for Switched {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn can_write(&self) -> Result<bool> {
        match self.file {
            None => Ok(false),
            Some(_) => self.next.can_write(),
        }
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: u32) -> Result<()> {
        self.check()?;
        self.next.pwrite(buf, offset, flags)
    }

    fn trim(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.check()?;
        self.next.trim(count, offset, flags)
    }

    fn zero(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.check()?;
        self.next.zero(count, offset, flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let mut f = ReadOnly::new();
        assert!(f.config("readonly-file", "ro").unwrap());
        assert!(f.file.as_ref().unwrap().is_absolute());
        assert!(!f.config("file", "x").unwrap());
        assert!(f.config("readonly-file", "").is_err());
    }
}
