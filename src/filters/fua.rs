//! The `fua` filter: change how FUA (force unit access) writes are handled,
//! to test clients and to measure what FUA costs.
//!
//! - `none` (default): FUA is not advertised;
//! - `emulate`: advertised, done by a flush after the write (the layer
//!   below must support flush);
//! - `native`: advertised, the FUA flag is passed on (the layer below must
//!   support FUA);
//! - `force`: every write is done with FUA and flushes are ignored;
//! - `pass`: FUA handling is left to the layer below;
//! - `discard`: FUA flags and flushes are dropped (unsafe: data may be
//!   lost on a crash).

use crate::error::{Error, Result};
use crate::filter::{Filter, FilterContext};
use crate::layers::{flags, Backend, Context};
use crate::plugin::FuaMode;
#[cfg(test)]
use crate::plugin::ZeroMode;
use nix::errno::Errno;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    None,
    Emulate,
    Native,
    Force,
    Pass,
    Discard,
}

pub struct Fua {
    mode: Mode,
}

impl Fua {
    pub fn new() -> Self {
        Fua { mode: Mode::None }
    }
}

impl Default for Fua {
    fn default() -> Self {
        Self::new()
    }
}

impl Filter for Fua {
    fn name(&self) -> &'static str {
        "fua"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit fua filter")
    }

    fn description(&self) -> &'static str {
        "Change how FUA (force unit access) and flush are handled."
    }

    fn config_help(&self) -> &'static str {
        "fuamode=<MODE>       One of 'none' (default), 'emulate', 'native',\n\
         \x20                      'force', 'pass', 'discard'."
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "fuamode" {
            return Ok(false);
        }
        self.mode = match value {
            "none" => Mode::None,
            "emulate" => Mode::Emulate,
            "native" => Mode::Native,
            "force" => Mode::Force,
            "pass" => Mode::Pass,
            "discard" => Mode::Discard,
            _ => {
                return Err(Error::config(format!(
                    "fua: unknown fuamode '{value}' \
                     (expecting none, emulate, native, force, pass or discard)"
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

impl Ctx {
    /// The flags to pass on, and whether a flush must follow.
    fn adjust(&self, f: u32) -> (u32, bool) {
        match self.mode {
            Mode::Emulate if f & flags::FUA != 0 => (f & !flags::FUA, true),
            Mode::Force => (f | flags::FUA, false),
            Mode::Discard => (f & !flags::FUA, false),
            _ => (f, false),
        }
    }

    fn write_like(&self, f: u32, call: impl FnOnce(u32) -> Result<()>) -> Result<()> {
        let (f, flush) = self.adjust(f);
        call(f)?;
        if flush {
            self.next.flush(0)?;
        }
        Ok(())
    }
}

impl FilterContext for Ctx {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn prepare(&self, readonly: bool) -> Result<()> {
        if readonly {
            return Ok(());
        }
        match self.mode {
            Mode::Emulate if !self.next.can_flush()? => Err(Error::new(
                Errno::EINVAL,
                "fua: fuamode 'emulate' requires plugin flush support",
            )),
            Mode::Native | Mode::Force if self.next.can_fua()? == FuaMode::None => {
                let name = if self.mode == Mode::Native {
                    "native"
                } else {
                    "force"
                };
                Err(Error::new(
                    Errno::EINVAL,
                    format!("fua: fuamode '{name}' requires plugin fua support"),
                ))
            }
            _ => Ok(()),
        }
    }

    fn can_flush(&self) -> Result<bool> {
        match self.mode {
            // Our flush does nothing, so it always works.
            Mode::Force | Mode::Discard => Ok(true),
            _ => self.next.can_flush(),
        }
    }

    fn can_fua(&self) -> Result<FuaMode> {
        Ok(match self.mode {
            Mode::None => FuaMode::None,
            Mode::Emulate => FuaMode::Emulate,
            Mode::Native | Mode::Force | Mode::Discard => FuaMode::Native,
            Mode::Pass => return self.next.can_fua(),
        })
    }

    fn pwrite(&self, buf: &[u8], offset: u64, f: u32) -> Result<()> {
        self.write_like(f, |f| self.next.pwrite(buf, offset, f))
    }

    fn trim(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        self.write_like(f, |f| self.next.trim(count, offset, f))
    }

    fn zero(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        self.write_like(f, |f| self.next.zero(count, offset, f))
    }

    fn flush(&self, f: u32) -> Result<()> {
        match self.mode {
            // Force: every write was already durable.  Discard: dropped.
            Mode::Force | Mode::Discard => Ok(()),
            _ => self.next.flush(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let mut f = Fua::new();
        assert_eq!(f.mode, Mode::None);
        for (v, m) in [
            ("emulate", Mode::Emulate),
            ("native", Mode::Native),
            ("force", Mode::Force),
            ("pass", Mode::Pass),
            ("discard", Mode::Discard),
            ("none", Mode::None),
        ] {
            assert!(f.config("fuamode", v).unwrap());
            assert_eq!(f.mode, m);
        }
        assert!(!f.config("fua", "none").unwrap());
        let e = f.config("fuamode", "always").unwrap_err();
        assert!(e.message().contains("unknown fuamode 'always'"), "{e}");
    }

    fn ctx(mode: Mode, flush: bool, fua: FuaMode) -> Ctx {
        let next = crate::filters::fake::Fake {
            flush,
            fua,
            zero: ZeroMode::Native,
        };
        Ctx {
            mode,
            next: Box::new(next),
        }
    }

    #[test]
    fn prepare_checks_what_the_mode_needs() {
        let e = ctx(Mode::Emulate, false, FuaMode::None)
            .prepare(false)
            .unwrap_err();
        assert!(
            e.message().contains("'emulate' requires plugin flush"),
            "{e}"
        );
        for m in [Mode::Native, Mode::Force] {
            let e = ctx(m, true, FuaMode::None).prepare(false).unwrap_err();
            assert!(e.message().contains("requires plugin fua support"), "{e}");
            ctx(m, true, FuaMode::Emulate).prepare(false).unwrap();
        }
        // Read-only connections are never refused.
        ctx(Mode::Emulate, false, FuaMode::None)
            .prepare(true)
            .unwrap();
        for m in [Mode::None, Mode::Pass, Mode::Discard] {
            ctx(m, false, FuaMode::None).prepare(false).unwrap();
        }
        ctx(Mode::Emulate, true, FuaMode::None)
            .prepare(false)
            .unwrap();
        // force and discard answer flush themselves.
        assert!(ctx(Mode::Force, false, FuaMode::Native)
            .can_flush()
            .unwrap());
        assert!(!ctx(Mode::Pass, false, FuaMode::Native).can_flush().unwrap());
    }
}
