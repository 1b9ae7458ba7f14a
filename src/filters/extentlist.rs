//! The `extentlist` filter: answer block-status queries from a file
//! instead of the plugin (`extentlist=FILE`, required).  Each line of the
//! file is `OFFSET LENGTH [TYPE]`: sizes as nbdkit parses them (`1M`,
//! `512s`), and a type that is a number (`0` data, `1` hole, `2` zero, `3`
//! hole and zero) or words containing `hole` and/or `zero`; no type means
//! allocated data.  Lines may come in any order but must not overlap;
//! ranges the file leaves out are holes that read as zeroes.  The file is
//! read once, at startup.

use crate::error::{Error, Result};
use crate::extents::{Extents, HOLE, ZERO};
use crate::filter::{Filter, FilterContext, PassThrough};
use crate::layers::{Backend, Context};
use crate::parse::parse_size;
use std::sync::Arc;

/// One extent of the list: `[offset, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ext {
    offset: u64,
    end: u64,
    flags: u32,
}

pub struct ExtentList {
    path: Option<String>,
    /// Sorted, contiguous from 0 to `u64::MAX`.
    list: Arc<Vec<Ext>>,
}

impl ExtentList {
    pub fn new() -> Self {
        ExtentList {
            path: None,
            list: Arc::new(Vec::new()),
        }
    }
}

impl Default for ExtentList {
    fn default() -> Self {
        Self::new()
    }
}

/// Parse the extent file's text into a complete, gap-free list.
fn parse_list(path: &str, text: &str) -> Result<Vec<Ext>> {
    let mut v = Vec::new();
    for line in text.lines() {
        let bad = || Error::config(format!("extentlist: {path}: cannot parse {line}"));
        let mut fields = line.split([' ', '\t']).filter(|f| !f.is_empty());
        let offset = fields.next().ok_or_else(bad)?;
        let length = fields.next().ok_or_else(bad)?;
        let offset = parse_size(offset)
            .map_err(|e| Error::config(format!("extentlist: {path}: {}", e.message())))?;
        let length = parse_size(length)
            .map_err(|e| Error::config(format!("extentlist: {path}: {}", e.message())))?;
        if length == 0 {
            continue;
        }
        let flags = match fields.next() {
            None => 0,
            Some(t) => match t.parse::<u32>() {
                Ok(n) => n,
                Err(_) => {
                    let mut f = 0;
                    if t.contains("hole") {
                        f |= HOLE;
                    }
                    if t.contains("zero") {
                        f |= ZERO;
                    }
                    f
                }
            },
        };
        // Both are at most 2^63 - 1, so this cannot overflow.
        v.push(Ext {
            offset,
            end: offset + length,
            flags,
        });
    }
    v.sort_by_key(|e| e.offset);
    if v.windows(2).any(|w| w[1].offset < w[0].end) {
        return Err(Error::config(format!(
            "extentlist: {path}: extents in the extent list are overlapping"
        )));
    }
    // Fill the gaps (and both ends) with holes.
    let mut full = Vec::with_capacity(v.len() * 2 + 1);
    let mut pos = 0;
    for e in v {
        if e.offset > pos {
            full.push(Ext {
                offset: pos,
                end: e.offset,
                flags: HOLE | ZERO,
            });
        }
        pos = e.end;
        full.push(e);
    }
    full.push(Ext {
        offset: pos,
        end: u64::MAX,
        flags: HOLE | ZERO,
    });
    Ok(full)
}

impl Filter for ExtentList {
    fn name(&self) -> &'static str {
        "extentlist"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit extentlist filter")
    }

    fn description(&self) -> &'static str {
        "Serve block status from a list of extents in a file."
    }

    fn config_help(&self) -> &'static str {
        "extentlist=<FILENAME>  (required) File containing the list of extents."
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "extentlist" {
            return Ok(false);
        }
        if self.path.is_some() {
            return Err(Error::config("extentlist: extentlist cannot appear twice"));
        }
        self.path = Some(value.to_string());
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        let Some(path) = &self.path else {
            return Err(Error::config(
                "extentlist: you must supply the extentlist parameter on the command line",
            ));
        };
        let text = std::fs::read(path)
            .map_err(|e| Error::config(format!("extentlist: open: {path}: {e}")))?;
        let list = parse_list(path, &String::from_utf8_lossy(&text))?;
        for (i, e) in list.iter().enumerate() {
            crate::log::debug(format!(
                "extentlist: extent[{i}] = {}-{} (length {}) type {}",
                e.offset,
                e.end - 1,
                e.end - e.offset,
                e.flags
            ));
        }
        self.list = Arc::new(list);
        Ok(())
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        Ok(Box::new(Ctx {
            list: self.list.clone(),
            next: PassThrough(next.open(readonly, export, is_tls)?),
        }))
    }
}

struct Ctx {
    list: Arc<Vec<Ext>>,
    next: PassThrough,
}

/// Add the list's extents covering the window of `extents`.
fn lookup(list: &[Ext], extents: &mut Extents) -> Result<()> {
    let (start, end) = (extents.start(), extents.end());
    // The first extent ending after start (the list covers every offset).
    let first = list.partition_point(|e| e.end <= start);
    for e in &list[first..] {
        if e.offset >= end {
            break;
        }
        let lo = e.offset.max(start);
        extents.add(lo, e.end - lo, e.flags)?;
    }
    Ok(())
}

impl FilterContext for Ctx {
    fn next(&self) -> &dyn Context {
        self.next.next()
    }

    fn can_extents(&self) -> Result<bool> {
        Ok(true)
    }

    fn extents(&self, extents: &mut Extents, _flags: u32) -> Result<()> {
        lookup(&self.list, extents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(offset: u64, end: u64, flags: u32) -> Ext {
        Ext { offset, end, flags }
    }

    #[test]
    fn parses_and_fills_gaps() {
        let l = parse_list("f", "4096 4096 hole,zero\n0 1k\n16k\t1k 2\n20k 0 3\n").unwrap();
        assert_eq!(
            l,
            vec![
                ext(0, 1024, 0),
                ext(1024, 4096, 3),
                ext(4096, 8192, 3),
                ext(8192, 16384, 3),
                ext(16384, 17408, 2),
                ext(17408, u64::MAX, 3),
            ]
        );
        assert_eq!(parse_list("f", "").unwrap(), vec![ext(0, u64::MAX, 3)]);
        assert_eq!(parse_list("f", "0 1 zero").unwrap()[0].flags, ZERO);
        assert_eq!(parse_list("f", "0 1 data").unwrap()[0].flags, 0);
    }

    #[test]
    fn refuses_bad_lines() {
        for bad in ["0", "x 1", "0 1Q", "0 4096\n1024 1", "", "0 -1"] {
            if bad.is_empty() {
                continue;
            }
            assert!(parse_list("f", bad).is_err(), "{bad:?}");
        }
        let e = parse_list("f", "0 4096\n1024 1").unwrap_err();
        assert!(e.message().contains("overlapping"), "{e}");
        let e = parse_list("f", "\n").unwrap_err();
        assert!(e.message().contains("cannot parse"), "{e}");
    }

    #[test]
    fn lookup_clips_to_the_window() {
        let l = parse_list("f", "0 1k\n2k 1k").unwrap();
        let mut e = Extents::new(512, 2560);
        lookup(&l, &mut e).unwrap();
        let got: Vec<_> = e
            .into_vec()
            .into_iter()
            .map(|e| (e.offset, e.length, e.flags))
            .collect();
        assert_eq!(got, vec![(512, 512, 0), (1024, 1024, 3), (2048, 512, 0)]);
    }
}
