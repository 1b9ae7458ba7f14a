//! The `protect` filter: write-protect byte ranges of the plugin
//! (`protect=START-END`, inclusive, repeatable; `START-` runs to the end,
//! `-END` starts at 0, and `~START-END` protects everything outside the
//! range).  A write, trim or zero that would change a protected byte fails
//! with `EPERM`; one that leaves the protected bytes as they are (writing
//! the same data, zeroing what is already zero) goes through.

use crate::error::{Error, Result};
use crate::filter::{Filter, FilterContext};
use crate::layers::{Backend, Context};
use crate::parse::parse_unsigned;
use nix::errno::Errno;
use std::sync::Arc;

/// End of an open range (`START-`): nbdkit's `INT64_MAX`.
const OPEN_END: u64 = i64::MAX as u64;

/// A protected range, both ends inclusive, with the parameter that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Range {
    start: u64,
    end: u64,
    description: String,
}

pub struct Protect {
    ranges: Vec<Range>,
    debug_write: bool,
}

impl Protect {
    pub fn new() -> Self {
        Protect {
            ranges: Vec::new(),
            debug_write: false,
        }
    }
}

impl Default for Protect {
    fn default() -> Self {
        Self::new()
    }
}

/// Parse `START-END` or `~START-END` into the ranges it protects.
fn parse_range(value: &str) -> Result<Vec<Range>> {
    let (negate, body) = match value.strip_prefix('~') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let Some((s, e)) = body.split_once('-') else {
        return Err(Error::config(format!(
            "cannot parse range, missing '-': {value}"
        )));
    };
    let start = if s.is_empty() {
        0
    } else {
        parse_unsigned("range", s, u64::MAX)?
    };
    let end = if e.is_empty() {
        OPEN_END
    } else {
        parse_unsigned("range", e, u64::MAX)?
    };
    if end < start {
        return Err(Error::config(format!(
            "invalid range, end < start: {value}"
        )));
    }
    let r = |start, end| Range {
        start,
        end,
        description: value.to_string(),
    };
    if !negate {
        return Ok(vec![r(start, end)]);
    }
    let mut out = Vec::new();
    if start > 0 {
        out.push(r(0, start - 1));
    }
    if end < OPEN_END {
        out.push(r(end + 1, OPEN_END));
    }
    Ok(out)
}

/// Sort and merge overlapping or adjacent ranges.
fn merge(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if last.end.saturating_add(1) >= r.start => {
                last.end = last.end.max(r.end);
            }
            _ => out.push(r),
        }
    }
    out
}

impl Filter for Protect {
    fn name(&self) -> &'static str {
        "protect"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit protect filter")
    }

    fn description(&self) -> &'static str {
        "Write-protect ranges of the plugin."
    }

    fn config_help(&self) -> &'static str {
        "protect=<START>-<END>      Protect range of bytes START-END (inclusive)."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "protect" {
            return Ok(false);
        }
        self.ranges.extend(parse_range(value)?);
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        self.ranges = merge(std::mem::take(&mut self.ranges));
        Ok(())
    }

    fn debug_flag(&mut self, flag: &str, value: &str) -> Result<bool> {
        if flag != "write" {
            return Ok(false);
        }
        self.debug_write = parse_unsigned("protect.write", value, i32::MAX as u64)? != 0;
        Ok(true)
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        Ok(Box::new(Protected {
            next: next.open(readonly, export, is_tls)?,
            ranges: Arc::new(self.ranges.clone()),
            debug_write: self.debug_write,
        }))
    }
}

struct Protected {
    next: Box<dyn Context>,
    ranges: Arc<Vec<Range>>,
    debug_write: bool,
}

impl Protected {
    /// Check that writing `data` (or zeroes when `None`) at `offset` for
    /// `count` bytes changes no protected byte.
    fn check(&self, count: u64, offset: u64, data: Option<&[u8]>) -> Result<()> {
        let end = offset + count; // exclusive; the server checked the range
        for r in self.ranges.iter() {
            if r.start >= end {
                break;
            }
            let lo = r.start.max(offset);
            let hi = end.min(r.end.saturating_add(1));
            if lo >= hi {
                continue;
            }
            if self.debug_write {
                crate::log::debug(format!(
                    "protect: checking protected region offset {lo} length {}",
                    hi - lo
                ));
            }
            let mut have = vec![0u8; (hi - lo) as usize];
            self.next.pread(&mut have, lo, 0)?;
            let same = match data {
                Some(d) => have[..] == d[(lo - offset) as usize..(hi - offset) as usize],
                None => have.iter().all(|&b| b == 0),
            };
            if !same {
                return Err(Error::new(
                    Errno::EPERM,
                    format!(
                        "protect filter prevented write to protected range {}",
                        r.description
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl FilterContext for Protected {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: u32) -> Result<()> {
        self.check(buf.len() as u64, offset, Some(buf))?;
        self.next.pwrite(buf, offset, flags)
    }

    fn trim(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.check(count, offset, None)?;
        self.next.trim(count, offset, flags)
    }

    fn zero(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.check(count, offset, None)?;
        self.next.zero(count, offset, flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(v: &[Range]) -> Vec<(u64, u64)> {
        v.iter().map(|r| (r.start, r.end)).collect()
    }

    #[test]
    fn range_forms() {
        assert_eq!(ends(&parse_range("0-511").unwrap()), [(0, 511)]);
        assert_eq!(ends(&parse_range("1024-").unwrap()), [(1024, OPEN_END)]);
        assert_eq!(ends(&parse_range("-0x1ff").unwrap()), [(0, 511)]);
        assert_eq!(ends(&parse_range("-").unwrap()), [(0, OPEN_END)]);
        assert_eq!(
            ends(&parse_range("~512-1023").unwrap()),
            [(0, 511), (1024, OPEN_END)]
        );
        assert_eq!(ends(&parse_range("~0-").unwrap()), []);
        for bad in ["", "512", "10-5", "a-b", "1-2-3", "~x-", "1k-2k"] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges_are_merged() {
        let v: Vec<Range> = ["100-199", "0-49", "50-60", "300-400", "350-360"]
            .iter()
            .flat_map(|s| parse_range(s).unwrap())
            .collect();
        assert_eq!(ends(&merge(v)), [(0, 60), (100, 199), (300, 400)]);
    }
}
