//! The `nozero` filter: change how write-zeroes requests are handled, to
//! test clients and plugins.  `zeromode=none` (default) hides write-zeroes;
//! `emulate` advertises it and answers with writes of zeroes; `notrim`
//! passes zero requests on but never lets the plugin punch holes;
//! `plugin` leaves zeroing to the plugin and only applies `fastzeromode`.
//!
//! `fastzeromode` decides fast-zero requests: `default` (fail at once when
//! emulating, else the plugin decides), `slow` (advertised, always failed
//! with ENOTSUP), `ignore` (advertised, done slowly anyway) or `none` (not
//! advertised).

use crate::error::{Error, Result};
use crate::filter::{Filter, FilterContext};
use crate::layers::{flags, Backend, Context, ZEROES};
use crate::plugin::{FuaMode, ZeroMode};
use nix::errno::Errno;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    None,
    Emulate,
    NoTrim,
    Plugin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FastMode {
    Default,
    Slow,
    Ignore,
    NoFast,
}

pub struct NoZero {
    mode: Mode,
    fast: FastMode,
}

impl NoZero {
    pub fn new() -> Self {
        NoZero {
            mode: Mode::None,
            fast: FastMode::Default,
        }
    }
}

impl Default for NoZero {
    fn default() -> Self {
        Self::new()
    }
}

impl Filter for NoZero {
    fn name(&self) -> &'static str {
        "nozero"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit nozero filter")
    }

    fn description(&self) -> &'static str {
        "Disable, emulate or restrict write-zeroes requests."
    }

    fn config_help(&self) -> &'static str {
        "zeromode=<MODE>      One of 'none' (default), 'emulate', 'notrim', 'plugin'.\n\
         fastzeromode=<MODE>  One of 'default', 'none', 'slow', 'ignore'."
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "zeromode" => {
                self.mode = match value {
                    "none" => Mode::None,
                    "emulate" => Mode::Emulate,
                    "notrim" => Mode::NoTrim,
                    "plugin" => Mode::Plugin,
                    _ => {
                        return Err(Error::config(format!(
                            "nozero: unknown zeromode '{value}' \
                             (expecting none, emulate, notrim or plugin)"
                        )))
                    }
                }
            }
            "fastzeromode" => {
                self.fast = match value {
                    "default" => FastMode::Default,
                    "none" => FastMode::NoFast,
                    "slow" => FastMode::Slow,
                    "ignore" => FastMode::Ignore,
                    _ => {
                        return Err(Error::config(format!(
                            "nozero: unknown fastzeromode '{value}' \
                             (expecting default, none, slow or ignore)"
                        )))
                    }
                }
            }
            _ => return Ok(false),
        }
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
            fast: self.fast,
            next: next.open(readonly, export, is_tls)?,
        }))
    }
}

struct Ctx {
    mode: Mode,
    fast: FastMode,
    next: Box<dyn Context>,
}

impl FilterContext for Ctx {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn prepare(&self, readonly: bool) -> Result<()> {
        if !readonly
            && matches!(self.mode, Mode::NoTrim | Mode::Plugin)
            && self.next.can_zero()? == ZeroMode::None
        {
            let name = if self.mode == Mode::NoTrim {
                "notrim"
            } else {
                "plugin"
            };
            return Err(Error::new(
                Errno::EINVAL,
                format!("nozero: zeromode '{name}' requires plugin zero support"),
            ));
        }
        Ok(())
    }

    fn can_zero(&self) -> Result<ZeroMode> {
        match self.mode {
            Mode::None => Ok(ZeroMode::None),
            Mode::Emulate => Ok(ZeroMode::Emulate),
            Mode::NoTrim | Mode::Plugin => self.next.can_zero(),
        }
    }

    fn can_fast_zero(&self) -> Result<bool> {
        if self.mode == Mode::None {
            return Ok(false);
        }
        if self.mode != Mode::Emulate && self.fast == FastMode::Default {
            return self.next.can_fast_zero();
        }
        Ok(self.fast != FastMode::NoFast)
    }

    fn zero(&self, mut count: u64, mut offset: u64, mut f: u32) -> Result<()> {
        if f & flags::FAST_ZERO != 0 {
            match self.fast {
                FastMode::Slow => {
                    return Err(Error::new(Errno::ENOTSUP, "nozero: fast zero refused"))
                }
                FastMode::Default if self.mode == Mode::Emulate => {
                    return Err(Error::new(
                        Errno::ENOTSUP,
                        "nozero: fast zero refused while emulating",
                    ))
                }
                FastMode::Ignore => f &= !flags::FAST_ZERO,
                _ => {}
            }
        }
        match self.mode {
            Mode::None => {
                // Not advertised: the server refuses it before it gets here.
                return Err(Error::new(Errno::EINVAL, "write zeroes is not supported"));
            }
            Mode::NoTrim => return self.next.zero(count, offset, f & !flags::MAY_TRIM),
            Mode::Plugin => return self.next.zero(count, offset, f),
            Mode::Emulate => {}
        }
        // Emulate: write zeroes.  FUA goes on every write, or only on the
        // last one when the layer below makes FUA a flush anyway.
        let fua = f & flags::FUA != 0;
        let last_only = fua && self.next.can_fua()? == FuaMode::Emulate;
        while count > 0 {
            let n = count.min(ZEROES.len() as u64);
            let wf = if fua && (!last_only || n == count) {
                flags::FUA
            } else {
                0
            };
            self.next.pwrite(&ZEROES[..n as usize], offset, wf)?;
            count -= n;
            offset += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let mut f = NoZero::new();
        assert_eq!((f.mode, f.fast), (Mode::None, FastMode::Default));
        for (v, m) in [
            ("emulate", Mode::Emulate),
            ("notrim", Mode::NoTrim),
            ("plugin", Mode::Plugin),
            ("none", Mode::None),
        ] {
            assert!(f.config("zeromode", v).unwrap());
            assert_eq!(f.mode, m);
        }
        for (v, m) in [
            ("none", FastMode::NoFast),
            ("slow", FastMode::Slow),
            ("ignore", FastMode::Ignore),
            ("default", FastMode::Default),
        ] {
            assert!(f.config("fastzeromode", v).unwrap());
            assert_eq!(f.fast, m);
        }
        assert!(!f.config("zero", "none").unwrap());
        assert!(f.config("zeromode", "trim").is_err());
        assert!(f.config("fastzeromode", "fast").is_err());
    }

    #[test]
    fn prepare_needs_plugin_zero_for_notrim_and_plugin() {
        let ctx = |mode, zero| Ctx {
            mode,
            fast: FastMode::Default,
            next: Box::new(crate::filters::fake::Fake {
                flush: true,
                fua: FuaMode::Native,
                zero,
            }),
        };
        for m in [Mode::NoTrim, Mode::Plugin] {
            let e = ctx(m, ZeroMode::None).prepare(false).unwrap_err();
            assert!(e.message().contains("requires plugin zero support"), "{e}");
            ctx(m, ZeroMode::None).prepare(true).unwrap();
            ctx(m, ZeroMode::Emulate).prepare(false).unwrap();
        }
        for m in [Mode::None, Mode::Emulate] {
            ctx(m, ZeroMode::None).prepare(false).unwrap();
        }
        assert_eq!(
            ctx(Mode::Emulate, ZeroMode::None).can_zero().unwrap(),
            ZeroMode::Emulate
        );
    }
}
