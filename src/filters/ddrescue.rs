//! The `ddrescue` filter: serve a disk image made by GNU ddrescue,
//! failing reads of the parts ddrescue could not rescue.
//!
//! `ddrescue-mapfile=FILE` names ddrescue's map file.  Its first line that
//! is not a comment is the status line (ignored); every other line is
//! `POS SIZE STATUS`.  Only blocks whose status is `+` (finished) hold
//! rescued data: a read that lies entirely inside them is passed on, any
//! other read fails with EIO, as reading the damaged disk would.  Unlike
//! nbdkit, neighbouring finished blocks count as one, so a read across
//! their boundary succeeds.  The export is read-only and does not offer
//! cache requests.

use crate::error::{Error, Result};
use crate::filter::{Filter, FilterContext};
use crate::layers::{Backend, Context};
use crate::plugin::CacheMode;
use nix::errno::Errno;
use std::sync::Arc;

pub struct Ddrescue {
    /// Rescued ranges `[start, end)`, sorted, merged where they touch.
    good: Arc<Vec<(u64, u64)>>,
    mapfile: Option<String>,
}

impl Ddrescue {
    pub fn new() -> Self {
        Ddrescue {
            good: Arc::new(Vec::new()),
            mapfile: None,
        }
    }
}

impl Default for Ddrescue {
    fn default() -> Self {
        Self::new()
    }
}

/// A number as ddrescue writes them (`0x` hex, leading-`0` octal or
/// decimal).
fn parse_num(s: &str) -> Option<u64> {
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u64::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse().ok()
    }
}

/// The finished (`+`) ranges of a mapfile's text, merged.
fn parse_mapfile(name: &str, text: &str) -> Result<Vec<(u64, u64)>> {
    let mut good = Vec::new();
    let mut status_seen = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !status_seen {
            status_seen = true;
            continue;
        }
        let bad = |why: &str| {
            Error::config(format!(
                "{name}: ddrescue: line {}: {why}: \"{line}\"",
                n + 1
            ))
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        let [pos, size, status, ..] = f[..] else {
            return Err(bad("expected position, size and status"));
        };
        let pos = parse_num(pos).ok_or_else(|| bad("could not parse block position"))?;
        let size = parse_num(size).ok_or_else(|| bad("could not parse block size"))?;
        let end = pos
            .checked_add(size)
            .ok_or_else(|| bad("block extends past the largest offset"))?;
        match status {
            "+" => {
                if size > 0 {
                    good.push((pos, end));
                }
            }
            "?" | "*" | "/" | "-" => {}
            _ => return Err(bad("unknown block status")),
        }
    }
    good.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(good.len());
    for (s, e) in good {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    Ok(merged)
}

/// Does `[offset, offset + len)` lie inside one of `good`?
fn rescued(good: &[(u64, u64)], offset: u64, len: u64) -> bool {
    let i = good.partition_point(|&(_, e)| e <= offset);
    match good.get(i) {
        Some(&(s, e)) => s <= offset && offset.saturating_add(len) <= e,
        None => false,
    }
}

impl Filter for Ddrescue {
    fn name(&self) -> &'static str {
        "ddrescue"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit ddrescue mapfile filter")
    }

    fn description(&self) -> &'static str {
        "Serve a ddrescue image, failing reads of unrescued areas."
    }

    fn config_help(&self) -> &'static str {
        "ddrescue-mapfile=...     Specify ddrescue mapfile to use"
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "ddrescue-mapfile" {
            return Ok(false);
        }
        let text = std::fs::read(value).map_err(|e| {
            let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
            Error::os(errno, format!("{value}: ddrescue: open"))
        })?;
        let text = String::from_utf8_lossy(&text);
        self.good = Arc::new(parse_mapfile(value, &text)?);
        self.mapfile = Some(value.to_string());
        crate::log::debug(format!(
            "{value}: ddrescue: {} rescued ranges",
            self.good.len()
        ));
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.mapfile.is_none() {
            return Err(Error::config("ddrescue-mapfile parameter is required"));
        }
        Ok(())
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn open(
        &self,
        next: &dyn Backend,
        _readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        Ok(Box::new(DdrescueContext {
            next: next.open(true, export, is_tls)?,
            good: self.good.clone(),
        }))
    }
}

struct DdrescueContext {
    next: Box<dyn Context>,
    good: Arc<Vec<(u64, u64)>>,
}

impl FilterContext for DdrescueContext {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn can_write(&self) -> Result<bool> {
        Ok(false)
    }

    fn can_cache(&self) -> Result<CacheMode> {
        Ok(CacheMode::None)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, f: u32) -> Result<()> {
        if !rescued(&self.good, offset, buf.len() as u64) {
            crate::log::debug(format!(
                "ddrescue: pread: range: {offset:#x} {:#x} failing with EIO",
                buf.len()
            ));
            return Err(Error::new(Errno::EIO, "ddrescue: area was not rescued"));
        }
        self.next.pread(buf, offset, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "# Mapfile. Created by GNU ddrescue version 1.27\n\
        # current_pos  current_status  current_pass\n\
        0x00100000     +               1\n\
        #      pos        size  status\n\
        0x00000000  0x00010000  +\n\
        0x00010000  0x00000200  -\n\
        0x00010200  0x0000FE00  +\n\
        0x00020000  0x00010000  +\n\
        0x00030000  0x00001000  ?\n\
        0x00031000  0x00001000  /\n";

    #[test]
    fn finished_blocks_are_merged_and_the_rest_is_bad() {
        let good = parse_mapfile("m", MAP).unwrap();
        assert_eq!(good, [(0, 0x10000), (0x10200, 0x30000)]);
        assert!(rescued(&good, 0, 512));
        assert!(rescued(&good, 0xfe00, 0x200));
        assert!(!rescued(&good, 0xfe00, 0x400), "runs into the bad sector");
        assert!(!rescued(&good, 0x10000, 1));
        // Across two neighbouring finished blocks.
        assert!(rescued(&good, 0x1fe00, 0x400));
        assert!(!rescued(&good, 0x2ff00, 0x200));
        assert!(!rescued(&good, 0x30000, 1));
        assert!(!rescued(&[], 0, 1));
    }

    #[test]
    fn malformed_lines_are_errors() {
        for bad in [
            "0 + 1\n0x0 0x10\n",
            "0 + 1\nzero 0x10 +\n",
            "0 + 1\n0 0x10 !\n",
            "0 + 1\n0xffffffffffffffff 2 +\n",
        ] {
            let e = parse_mapfile("m", bad).unwrap_err();
            assert!(
                e.message().starts_with("m: ddrescue: line 2: "),
                "{}",
                e.message()
            );
        }
    }

    #[test]
    fn the_mapfile_is_required() {
        let mut f = Ddrescue::new();
        assert!(f.config_complete().is_err());
        assert!(f.config("ddrescue-mapfile", "/nonexistent/map").is_err());
        assert!(!f.config("file", "x").unwrap());
    }
}
