//! The `nocache` filter: change how `NBD_CMD_CACHE` (prefetch) requests are
//! handled, to measure what they are worth.  `cachemode=none` (default)
//! hides cache support; `emulate` advertises it and answers by reading the
//! range through the layers below (whatever the plugin can do); `nop`
//! advertises it and ignores every request.

use crate::error::{Error, Result};
use crate::filter::{Filter, FilterContext};
use crate::layers::{Backend, Context};
use crate::plugin::CacheMode;

/// Largest buffer one emulated cache request reads at a time.
const CHUNK: u64 = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    None,
    Emulate,
    Nop,
}

pub struct NoCache {
    mode: Mode,
}

impl NoCache {
    pub fn new() -> Self {
        NoCache { mode: Mode::None }
    }
}

impl Default for NoCache {
    fn default() -> Self {
        Self::new()
    }
}

impl Filter for NoCache {
    fn name(&self) -> &'static str {
        "nocache"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit nocache filter")
    }

    fn description(&self) -> &'static str {
        "Disable, emulate or ignore cache (prefetch) requests."
    }

    fn config_help(&self) -> &'static str {
        "cachemode=<MODE>     Either 'none' (default), 'emulate', or 'nop'."
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "cachemode" && key != "cache-mode" {
            return Ok(false);
        }
        self.mode = match value {
            "none" => Mode::None,
            "emulate" => Mode::Emulate,
            "nop" | "no-op" => Mode::Nop,
            _ => {
                return Err(Error::config(format!(
                    "nocache: unknown cachemode '{value}' (expecting none, emulate or nop)"
                )))
            }
        };
        Ok(true)
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        Ok(Box::new(Ctx {
            mode: self.mode,
            next: next.open(readonly, export, is_tls)?,
        }))
    }
}

struct Ctx {
    mode: Mode,
    next: Box<dyn Context>,
}

impl FilterContext for Ctx {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn can_cache(&self) -> Result<CacheMode> {
        Ok(match self.mode {
            Mode::None => CacheMode::None,
            Mode::Emulate => CacheMode::Emulate,
            Mode::Nop => CacheMode::Native,
        })
    }

    fn cache(&self, count: u64, offset: u64, _flags: u32) -> Result<()> {
        match self.mode {
            Mode::Nop => Ok(()),
            // Not advertised, so the server refuses it before it gets here.
            Mode::None => Err(Error::new(
                nix::errno::Errno::EINVAL,
                "cache is not supported",
            )),
            Mode::Emulate => {
                let mut buf = vec![0u8; count.min(CHUNK) as usize];
                let (mut count, mut offset) = (count, offset);
                while count > 0 {
                    let n = count.min(buf.len() as u64) as usize;
                    self.next.pread(&mut buf[..n], offset, 0)?;
                    count -= n as u64;
                    offset += n as u64;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        let mut f = NoCache::new();
        assert_eq!(f.mode, Mode::None);
        assert!(f.config("cachemode", "emulate").unwrap());
        assert_eq!(f.mode, Mode::Emulate);
        assert!(f.config("cachemode", "no-op").unwrap());
        assert_eq!(f.mode, Mode::Nop);
        assert!(f.config("cachemode", "none").unwrap());
        assert_eq!(f.mode, Mode::None);
        assert!(!f.config("cache", "nop").unwrap());
        let e = f.config("cachemode", "sometimes").unwrap_err();
        assert!(e.message().contains("unknown cachemode 'sometimes'"), "{e}");
    }
}
