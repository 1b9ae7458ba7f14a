//! The `blocksize-policy` filter: advertise block size constraints the
//! plugin does not state itself (`blocksize-minimum`, `-preferred`,
//! `-maximum`), optionally refuse requests that break them with `EINVAL`
//! (`blocksize-error-policy=error`), and drop clients that send writes
//! larger than `blocksize-write-disconnect`.
//!
//! The constraints are computed once per connection from the parameters
//! and the next layer's own, as nbdkit does: all three set wins outright;
//! none set passes the plugin's through; otherwise unset values come from
//! the plugin or from defaults (1, 4096, 0xffffffff).

use crate::error::{Error, Result};
use crate::extents::Extents;
use crate::filter::{Filter, FilterContext};
use crate::layers::{Backend, Context};
use crate::parse::parse_size;
use crate::plugin::BlockSize;
use nix::errno::Errno;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Config {
    minimum: u32,
    preferred: u32,
    maximum: u32,
    disconnect: u32,
    error: bool,
}

pub struct BlocksizePolicy {
    cfg: Config,
}

impl BlocksizePolicy {
    pub fn new() -> Self {
        BlocksizePolicy {
            cfg: Config::default(),
        }
    }
}

impl Default for BlocksizePolicy {
    fn default() -> Self {
        Self::new()
    }
}

fn parse_u32_size(key: &str, value: &str) -> Result<u32> {
    match parse_size(value) {
        Ok(v) if v <= u32::MAX as u64 => Ok(v as u32),
        _ => Err(Error::config(format!("{key}: could not parse {value}"))),
    }
}

impl Config {
    fn check(&self) -> Result<()> {
        let (min, pref, max) = (self.minimum, self.preferred, self.maximum);
        if min != 0 {
            if !min.is_power_of_two() {
                return Err(Error::config("blocksize-minimum must be a power of 2"));
            }
            if min > 65536 {
                return Err(Error::config("blocksize-minimum must be <= 64K"));
            }
        }
        if pref != 0 {
            if !pref.is_power_of_two() {
                return Err(Error::config("blocksize-preferred must be a power of 2"));
            }
            if !(512..=32 * 1024 * 1024).contains(&pref) {
                return Err(Error::config(
                    "blocksize-preferred must be between 512 and 32M",
                ));
            }
        }
        if min != 0 && max != 0 && max != u32::MAX && max % min != 0 {
            return Err(Error::config(
                "blocksize-maximum must be -1 or a multiple of blocksize-minimum",
            ));
        }
        if min != 0 && pref != 0 && min > pref {
            return Err(Error::config(
                "blocksize-minimum must be <= blocksize-preferred",
            ));
        }
        if pref != 0 && max != 0 && pref > max {
            return Err(Error::config(
                "blocksize-preferred must be <= blocksize-maximum",
            ));
        }
        if min != 0 && self.disconnect != 0 && self.disconnect <= min {
            return Err(Error::config(
                "blocksize-write-disconnect must be larger than blocksize-minimum",
            ));
        }
        Ok(())
    }

    /// The constraints to advertise, given the next layer's.
    fn block_size(
        &self,
        next: impl FnOnce() -> Result<Option<BlockSize>>,
    ) -> Result<Option<BlockSize>> {
        let (min, pref, max) = (self.minimum, self.preferred, self.maximum);
        if min != 0 && pref != 0 && max != 0 {
            return Ok(Some(BlockSize {
                minimum: min,
                preferred: pref,
                maximum: max,
            }));
        }
        let plugin = next()?;
        if min == 0 && pref == 0 && max == 0 {
            return Ok(plugin);
        }
        let b = match plugin {
            None => {
                let minimum = if min != 0 { min } else { 1 };
                BlockSize {
                    minimum,
                    preferred: if pref != 0 { pref } else { 4096 },
                    maximum: if max != 0 {
                        max
                    } else if self.disconnect != 0 {
                        self.disconnect - self.disconnect % minimum
                    } else {
                        u32::MAX
                    },
                }
            }
            Some(p) => BlockSize {
                minimum: if min != 0 { min } else { p.minimum },
                preferred: if pref != 0 { pref } else { p.preferred },
                maximum: if max != 0 { max } else { p.maximum },
            },
        };
        if b.minimum > b.preferred || b.preferred > b.maximum {
            return Err(Error::new(
                Errno::EINVAL,
                format!(
                    "computed block size values are invalid, minimum {} > preferred {} \
                     or preferred > maximum {}",
                    b.minimum, b.preferred, b.maximum
                ),
            ));
        }
        Ok(Some(b))
    }
}

impl Filter for BlocksizePolicy {
    fn name(&self) -> &'static str {
        "blocksize-policy"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit blocksize policy filter")
    }

    fn description(&self) -> &'static str {
        "Set block size constraints and the policy for requests that break them."
    }

    fn config_help(&self) -> &'static str {
        "blocksize-error-policy=allow|error  Policy for badly sized requests (default allow).\n\
         blocksize-minimum=<SIZE>            Advertised minimum block size.\n\
         blocksize-preferred=<SIZE>          Advertised preferred block size.\n\
         blocksize-maximum=<SIZE>            Advertised maximum block size.\n\
         blocksize-write-disconnect=<SIZE>   Disconnect clients writing more than this."
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "blocksize-error-policy" => {
                self.cfg.error = match value {
                    "allow" => false,
                    "error" => true,
                    _ => return Err(Error::config(format!("unknown {key}: {value}"))),
                }
            }
            "blocksize-minimum" => self.cfg.minimum = parse_u32_size(key, value)?,
            "blocksize-preferred" => self.cfg.preferred = parse_u32_size(key, value)?,
            "blocksize-maximum" => self.cfg.maximum = parse_u32_size(key, value)?,
            "blocksize-write-disconnect" => self.cfg.disconnect = parse_u32_size(key, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        self.cfg.check()
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        Ok(Box::new(Policed {
            next: next.open(readonly, export, is_tls)?,
            cfg: self.cfg,
            sizes: OnceLock::new(),
        }))
    }
}

struct Policed {
    next: Box<dyn Context>,
    cfg: Config,
    /// The advertised constraints, computed once.
    sizes: OnceLock<Option<BlockSize>>,
}

impl Policed {
    fn sizes(&self) -> Result<Option<BlockSize>> {
        if let Some(s) = self.sizes.get() {
            return Ok(*s);
        }
        let s = self.cfg.block_size(|| self.next.block_size())?;
        Ok(*self.sizes.get_or_init(|| s))
    }

    /// Apply the error policy to a request (`data`: a read or write,
    /// whose maximum is also checked).
    fn check(&self, what: &str, data: bool, count: u64, offset: u64) -> Result<()> {
        if !self.cfg.error {
            return Ok(());
        }
        let b = match self.sizes() {
            Ok(Some(b)) if b.minimum != 0 => b,
            Ok(_) => return Ok(()),
            Err(e) => return Err(Error::new(Errno::EINVAL, e.message())),
        };
        let min = b.minimum as u64;
        let refuse = |why: String| {
            Err(Error::new(
                Errno::EINVAL,
                format!("client {what} request rejected: {why}"),
            ))
        };
        if count < min {
            return refuse(format!("count {count} is smaller than minimum size {min}"));
        }
        if data && count > b.maximum as u64 {
            return refuse(format!(
                "count {count} is larger than maximum size {}",
                b.maximum
            ));
        }
        if !count.is_multiple_of(min) {
            return refuse(format!(
                "count {count} is not a multiple of minimum size {min}"
            ));
        }
        if !offset.is_multiple_of(min) {
            return refuse(format!(
                "offset {offset} is not aligned to a multiple of minimum size {min}"
            ));
        }
        Ok(())
    }
}

impl FilterContext for Policed {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        self.sizes()
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: u32) -> Result<()> {
        self.check("pread", true, buf.len() as u64, offset)?;
        self.next.pread(buf, offset, flags)
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: u32) -> Result<()> {
        if self.cfg.disconnect != 0 && buf.len() as u64 > self.cfg.disconnect as u64 {
            crate::log::error("disconnecting client due to oversize write request");
            crate::server::transmission::disconnect_now();
            return Err(Error::new(Errno::ESHUTDOWN, "oversize write request"));
        }
        self.check("pwrite", true, buf.len() as u64, offset)?;
        self.next.pwrite(buf, offset, flags)
    }

    fn zero(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.check("zero", false, count, offset)?;
        self.next.zero(count, offset, flags)
    }

    fn trim(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.check("trim", false, count, offset)?;
        self.next.trim(count, offset, flags)
    }

    fn cache(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.check("cache", false, count, offset)?;
        self.next.cache(count, offset, flags)
    }

    fn extents(&self, extents: &mut Extents, flags: u32) -> Result<()> {
        let count = extents.end() - extents.start();
        self.check("extents", false, count, extents.start())?;
        self.next.extents(extents, flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured(params: &[(&str, &str)]) -> Result<Config> {
        let mut f = BlocksizePolicy::new();
        for (k, v) in params {
            assert!(f.config(k, v)?);
        }
        f.config_complete()?;
        Ok(f.cfg)
    }

    #[test]
    fn bad_parameters() {
        for p in [
            &[("blocksize-error-policy", "strict")][..],
            &[("blocksize-minimum", "3")],
            &[("blocksize-minimum", "128k")],
            &[("blocksize-minimum", "x")],
            &[("blocksize-preferred", "256")],
            &[("blocksize-preferred", "64M")],
            &[("blocksize-preferred", "3000")],
            &[("blocksize-maximum", "5G")],
            &[("blocksize-minimum", "4096"), ("blocksize-maximum", "6144")],
            &[
                ("blocksize-minimum", "8192"),
                ("blocksize-preferred", "4096"),
            ],
            &[
                ("blocksize-preferred", "8192"),
                ("blocksize-maximum", "4096"),
            ],
            &[
                ("blocksize-minimum", "512"),
                ("blocksize-write-disconnect", "512"),
            ],
        ] {
            assert!(configured(p).is_err(), "{p:?}");
        }
    }

    #[test]
    fn advertised_sizes() {
        let none = || Ok(None);
        let plugin = || {
            Ok(Some(BlockSize {
                minimum: 512,
                preferred: 8192,
                maximum: 1 << 20,
            }))
        };
        let c = configured(&[]).unwrap();
        assert_eq!(c.block_size(none).unwrap(), None);
        assert_eq!(c.block_size(plugin).unwrap(), plugin().unwrap());
        let c = configured(&[("blocksize-preferred", "32k")]).unwrap();
        assert_eq!(
            c.block_size(none).unwrap(),
            Some(BlockSize {
                minimum: 1,
                preferred: 32768,
                maximum: u32::MAX
            })
        );
        assert_eq!(
            c.block_size(plugin).unwrap(),
            Some(BlockSize {
                minimum: 512,
                preferred: 32768,
                maximum: 1 << 20
            })
        );
        let c = configured(&[
            ("blocksize-minimum", "4k"),
            ("blocksize-write-disconnect", "10000"),
        ])
        .unwrap();
        assert_eq!(
            c.block_size(none).unwrap(),
            Some(BlockSize {
                minimum: 4096,
                preferred: 4096,
                maximum: 8192
            })
        );
        let c = configured(&[("blocksize-preferred", "2M")]).unwrap();
        assert!(c.block_size(plugin).is_err());
    }
}
