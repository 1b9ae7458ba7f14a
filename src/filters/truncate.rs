//! The `truncate` filter: change the size the plugin appears to have, to
//! `truncate=SIZE` and/or rounded up or down to a multiple of a power of
//! two.  Past the plugin's real end the disk reads as zeroes (a hole),
//! writing zeroes there succeeds and writing anything else fails with
//! `ENOSPC`; trims and zeroes there do nothing.  Requests straddling the
//! real end are cut at it.

use crate::error::{Error, Result};
use crate::extents::{self, Extents};
use crate::filter::{Filter, FilterContext};
use crate::layers::{flags, Backend, Context};
use crate::parse::parse_size;
use nix::errno::Errno;
use std::sync::OnceLock;

pub struct Truncate {
    size: Option<u64>,
    round_up: u64,
    round_down: u64,
}

impl Truncate {
    pub fn new() -> Self {
        Truncate {
            size: None,
            round_up: 0,
            round_down: 0,
        }
    }
}

impl Default for Truncate {
    fn default() -> Self {
        Self::new()
    }
}

fn parse_round(key: &str, value: &str) -> Result<u64> {
    let n = parse_size(value)?;
    if n == 0 {
        return Err(Error::config(format!(
            "if set, the {key} parameter must be > 0"
        )));
    }
    if n > u32::MAX as u64 {
        return Err(Error::config(format!("the {key} parameter is too large")));
    }
    if !n.is_power_of_two() {
        return Err(Error::config(format!(
            "the {key} parameter must be a power of 2"
        )));
    }
    Ok(n)
}

impl Filter for Truncate {
    fn name(&self) -> &'static str {
        "truncate"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit truncate filter")
    }

    fn description(&self) -> &'static str {
        "Truncate, extend or round the size of the plugin."
    }

    fn config_help(&self) -> &'static str {
        "truncate=<SIZE>                The new size.\n\
         round-up=<N>                   Round up to next multiple of N.\n\
         round-down=<N>                 Round down to multiple of N."
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "truncate" => self.size = Some(parse_size(value)?),
            "round-up" => self.round_up = parse_round(key, value)?,
            "round-down" => self.round_down = parse_round(key, value)?,
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
        Ok(Box::new(Truncated {
            next: next.open(readonly, export, is_tls)?,
            size: self.size,
            round_up: self.round_up,
            round_down: self.round_down,
            sizes: OnceLock::new(),
        }))
    }
}

struct Truncated {
    next: Box<dyn Context>,
    size: Option<u64>,
    round_up: u64,
    round_down: u64,
    /// (real size of the plugin, size served), fixed at prepare.
    sizes: OnceLock<(u64, u64)>,
}

impl Truncated {
    fn real_size(&self) -> Result<u64> {
        self.sizes
            .get()
            .map(|s| s.0)
            .ok_or_else(|| Error::new(Errno::EIO, "truncate: connection not prepared"))
    }

    /// How much of `[offset, offset + count)` lies inside the plugin.
    fn inside(&self, count: u64, offset: u64) -> Result<u64> {
        let real = self.real_size()?;
        Ok(if offset >= real {
            0
        } else {
            count.min(real - offset)
        })
    }
}

impl FilterContext for Truncated {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn prepare(&self, _readonly: bool) -> Result<()> {
        let real = self.next.get_size()?;
        let mut size = self.size.unwrap_or(real);
        if self.round_up > 0 {
            size = match size.checked_next_multiple_of(self.round_up) {
                Some(s) if s <= i64::MAX as u64 => s,
                _ => {
                    return Err(Error::new(
                        Errno::EINVAL,
                        format!(
                            "cannot round size {size} up to next boundary of {}",
                            self.round_up
                        ),
                    ))
                }
            };
        }
        if self.round_down > 0 {
            size -= size % self.round_down;
        }
        let _ = self.sizes.set((real, size));
        Ok(())
    }

    fn get_size(&self) -> Result<u64> {
        self.sizes
            .get()
            .map(|s| s.1)
            .ok_or_else(|| Error::new(Errno::EIO, "truncate: connection not prepared"))
    }

    fn can_extents(&self) -> Result<bool> {
        // The tail is always known; still ask so that later calls do not
        // fail.
        self.next.can_extents()?;
        Ok(true)
    }

    fn can_fast_zero(&self) -> Result<bool> {
        // Zeroing the tail is fast; the part inside the plugin is checked
        // per request.
        self.next.can_fast_zero()?;
        Ok(true)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: u32) -> Result<()> {
        let n = self.inside(buf.len() as u64, offset)? as usize;
        if n > 0 {
            self.next.pread(&mut buf[..n], offset, flags)?;
        }
        buf[n..].fill(0);
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: u32) -> Result<()> {
        let n = self.inside(buf.len() as u64, offset)? as usize;
        if n > 0 {
            self.next.pwrite(&buf[..n], offset, flags)?;
        }
        if buf[n..].iter().any(|&b| b != 0) {
            return Err(Error::new(
                Errno::ENOSPC,
                "truncate: write beyond end of underlying device",
            ));
        }
        Ok(())
    }

    fn trim(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        match self.inside(count, offset)? {
            0 => Ok(()),
            n => self.next.trim(n, offset, flags),
        }
    }

    fn zero(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        match self.inside(count, offset)? {
            0 => Ok(()),
            n => {
                if flags & flags::FAST_ZERO != 0 && !self.next.can_fast_zero()? {
                    return Err(Error::new(Errno::EOPNOTSUPP, "fast zero not supported"));
                }
                self.next.zero(n, offset, flags)
            }
        }
    }

    fn cache(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        match self.inside(count, offset)? {
            0 => Ok(()),
            n => self.next.cache(n, offset, flags),
        }
    }

    fn extents(&self, extents: &mut Extents, flags: u32) -> Result<()> {
        let real = self.real_size()?;
        let (start, end) = (extents.start(), extents.end());
        if start >= real {
            return extents.add(start, end - start, extents::HOLE | extents::ZERO);
        }
        let mut inner = Extents::new(start, end.min(real));
        if self.next.can_extents()? {
            self.next.extents(&mut inner, flags)?;
        } else {
            inner.add(start, end.min(real) - start, 0)?;
        }
        for e in inner.list() {
            extents.add(e.offset, e.length, e.flags)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let mut f = Truncate::new();
        assert!(f.config("truncate", "1M").unwrap());
        assert!(f.config("round-up", "4k").unwrap());
        assert!(f.config("round-down", "512").unwrap());
        assert_eq!(
            (f.size, f.round_up, f.round_down),
            (Some(1 << 20), 4096, 512)
        );
        assert!(!f.config("size", "1").unwrap());
        for (k, v) in [
            ("truncate", "-1"),
            ("truncate", "big"),
            ("round-up", "0"),
            ("round-up", "3"),
            ("round-down", "8G"),
            ("round-down", "x"),
        ] {
            assert!(f.config(k, v).is_err(), "{k}={v}");
        }
    }
}
