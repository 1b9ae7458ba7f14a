//! The `stats` filter: count operations, bytes and time per kind of request,
//! with a breakdown of request sizes and offset alignments, and write them to
//! `statsfile=` when the server exits, in nbdkit's format:
//!
//! ```text
//! total: 27 ops, 0.089958 s, 90.00 KiB, 1000.47 KiB/s
//! read: 23 ops, 0.000006 s, 81.50 KiB, 12.95 GiB/s op, 905.98 KiB/s total
//!   Request size and alignment breakdown:
//!     12 bits: 87.0% (20 reqs, 80.00 KiB total)
//!          12 bit aligned: 100.0% (20)
//!          13 bit aligned:  50.0% (10)
//!      9 bits: 13.0% (3 reqs, 1.50 KiB total)
//!           9 bit aligned: 100.0% (3)
//!
//! flush: 1 ops, 0.000000 s, 0 bytes, (n/a)/s op, 0 bytes/s total
//! ```
//!
//! A size of `N bits` groups requests of 2^N up to 2^(N+1)-1 bytes; `N bit
//! aligned` counts requests whose offset is a multiple of 2^N (offset 0 counts
//! as aligned to everything).  Size groups are listed, most frequent first,
//! until `statsthreshold=` percent (default 95) of the requests are covered;
//! alignments are listed until fewer than 100-threshold percent remain.

use crate::error::{Error, Result};
use crate::extents::Extents;
use crate::filter::{Filter, FilterContext};
use crate::layers::{Backend, Context};
use crate::parse::parse_bool;
use crate::server::lock;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// Offset alignments tracked: "any" (offset 0) and 0..=63 bits.
const ALIGNS: usize = 65;

#[derive(Default)]
struct Op {
    ops: u64,
    bytes: u64,
    usecs: u64,
    /// `[size bits][alignment + 1]` request counts (index 0: offset 0),
    /// allocated on first use.
    hist: Vec<[u64; ALIGNS]>,
    /// Bytes per size group.
    group_bytes: Vec<u64>,
}

impl Op {
    fn record(&mut self, count: u64, offset: u64, usecs: u64, histogram: bool) {
        self.ops += 1;
        self.bytes += count;
        self.usecs += usecs;
        if histogram {
            if self.hist.is_empty() {
                self.hist = vec![[0; ALIGNS]; 64];
                self.group_bytes = vec![0; 64];
            }
            let bits = 63 - count.max(1).leading_zeros() as usize;
            let align = if offset == 0 {
                0
            } else {
                offset.trailing_zeros() as usize + 1
            };
            self.hist[bits][align] += 1;
            self.group_bytes[bits] += count;
        }
    }
}

const NAMES: [&str; 7] = ["read", "write", "trim", "zero", "extents", "cache", "flush"];
const READ: usize = 0;
const WRITE: usize = 1;
const TRIM: usize = 2;
const ZERO: usize = 3;
const EXTENTS: usize = 4;
const CACHE: usize = 5;
const FLUSH: usize = 6;

struct Shared {
    ops: [Mutex<Op>; 7],
    /// Fraction 0..=1 (statsthreshold / 100); 0 disables the breakdown.
    threshold: f64,
    start: OnceLock<Instant>,
    file: OnceLock<std::fs::File>,
}

impl Shared {
    fn record(&self, op: usize, count: u64, offset: u64, start: Instant) {
        let usecs = start.elapsed().as_micros() as u64;
        let histogram = self.threshold > 0.0 && op < EXTENTS;
        lock(&self.ops[op]).record(count, offset, usecs, histogram);
    }
}

const KIB: f64 = 1024.0;
const MIB: f64 = 1048576.0;
const GIB: f64 = 1073741824.0;

fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    if bytes < 1024 {
        format!("{bytes} bytes")
    } else if b < MIB {
        format!("{:.2} KiB", b / KIB)
    } else if b < GIB {
        format!("{:.2} MiB", b / MIB)
    } else {
        format!("{:.2} GiB", b / GIB)
    }
}

fn human_rate(bytes: u64, usecs: u64) -> String {
    if usecs == 0 {
        "(n/a)".to_string()
    } else {
        human_size((bytes as f64 / (usecs as f64 / 1e6)) as u64)
    }
}

/// The breakdown of one kind of request.
fn breakdown(out: &mut String, op: &Op, threshold: f64) {
    let _ = writeln!(out, "  Request size and alignment breakdown:");
    let mut groups: Vec<(usize, u64)> = op
        .hist
        .iter()
        .enumerate()
        .map(|(bits, a)| (bits, a.iter().sum::<u64>()))
        .filter(|&(_, n)| n > 0)
        .collect();
    let total: u64 = groups.iter().map(|g| g.1).sum();
    groups.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    let to_print = (threshold * total as f64) as u64;
    let mut printed = 0;
    for (bits, n) in groups {
        if printed >= to_print {
            let rest = total - printed;
            let _ = writeln!(
                out,
                "    other sizes: {:4.1}% ({rest} reqs, {} total)",
                rest as f64 / total as f64 * 100.0,
                human_size(op.bytes)
            );
            break;
        }
        let bytes = op.group_bytes[bits];
        let _ = writeln!(
            out,
            "    {bits:2} bits: {:4.1}% ({n} reqs, {} total)",
            n as f64 / total as f64 * 100.0,
            human_size(bytes)
        );
        printed += n;
        alignments(out, &op.hist[bits], threshold);
    }
    out.push('\n');
}

fn alignments(out: &mut String, counts: &[u64; ALIGNS], threshold: f64) {
    let any = counts[0];
    let total: u64 = counts.iter().sum();
    // Requests aligned to at least N bits, for each N some request has
    // exactly (offset 0 is aligned to all).
    let exact: Vec<(usize, u64)> = (1..ALIGNS)
        .filter(|&i| counts[i] > 0)
        .map(|i| (i - 1, counts[i]))
        .collect();
    let at_least: Vec<(usize, u64)> = exact
        .iter()
        .map(|&(bits, _)| {
            let n: u64 = exact.iter().filter(|e| e.0 >= bits).map(|e| e.1).sum();
            (bits, n + any)
        })
        .collect();
    let cutoff = ((1.0 - threshold) * total as f64) as u64;
    for (i, &(bits, n)) in at_least.iter().enumerate() {
        if n < cutoff {
            let _ = writeln!(
                out,
                "         {bits:2}+ bit-aligned: {:4.1}% ({n})",
                n as f64 / total as f64 * 100.0
            );
            break;
        }
        if at_least.get(i + 1).is_none_or(|next| next.1 != n) {
            let _ = writeln!(
                out,
                "         {bits:2} bit aligned: {:5.1}% ({n})",
                (n * 100) as f64 / total as f64
            );
        }
    }
}

fn report(ops: &[Op; 7], usecs: u64, threshold: f64) -> String {
    let mut out = String::new();
    let total_ops: u64 = [READ, WRITE, TRIM, ZERO, EXTENTS, FLUSH]
        .iter()
        .map(|&i| ops[i].ops)
        .sum();
    let total_bytes: u64 = [READ, WRITE, TRIM, ZERO]
        .iter()
        .map(|&i| ops[i].bytes)
        .sum();
    let _ = writeln!(
        out,
        "total: {total_ops} ops, {:.6} s, {}, {}/s",
        usecs as f64 / 1e6,
        human_size(total_bytes),
        human_rate(total_bytes, usecs)
    );
    for (i, op) in ops.iter().enumerate() {
        if op.ops == 0 {
            continue;
        }
        let _ = writeln!(
            out,
            "{}: {} ops, {:.6} s, {}, {}/s op, {}/s total",
            NAMES[i],
            op.ops,
            op.usecs as f64 / 1e6,
            human_size(op.bytes),
            human_rate(op.bytes, op.usecs),
            human_rate(op.bytes, usecs)
        );
        if threshold > 0.0 && i < EXTENTS {
            breakdown(&mut out, op, threshold);
        }
    }
    out
}

pub struct Stats {
    file: Option<String>,
    append: bool,
    threshold: f64,
    shared: Arc<Shared>,
}

fn new_shared(threshold: f64) -> Arc<Shared> {
    Arc::new(Shared {
        ops: Default::default(),
        threshold,
        start: OnceLock::new(),
        file: OnceLock::new(),
    })
}

impl Stats {
    pub fn new() -> Self {
        Stats {
            file: None,
            append: false,
            threshold: 0.95,
            shared: new_shared(0.95),
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Filter for Stats {
    fn name(&self) -> &'static str {
        "stats"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit stats filter")
    }

    fn description(&self) -> &'static str {
        "Display statistics about operations."
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn config_help(&self) -> &'static str {
        "statsfile=<FILE>    (required) The file to place the log in.\n\
         statsappend=<BOOL>  True to append to the log (default false).\n\
         statsthreshold=<PERCENT>  Share of requests in the size breakdown (default 95)."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "statsfile" => {
                if value.is_empty() {
                    return Err(Error::config("stats: statsfile must not be empty"));
                }
                self.file = Some(value.to_string());
            }
            "statsappend" => {
                self.append = parse_bool(value)
                    .map_err(|e| Error::config(format!("stats: statsappend: {}", e.message())))?
            }
            "statsthreshold" => {
                let n: i64 = value.trim().parse().map_err(|_| {
                    Error::config(format!(
                        "stats: statsthreshold: could not parse number: \"{value}\""
                    ))
                })?;
                if !(0..=100).contains(&n) {
                    return Err(Error::config(
                        "statsthreshold must be between 0 and 100 (percent)",
                    ));
                }
                self.threshold = n as f64 / 100.0;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.file.is_none() {
            return Err(Error::config("stats filter requires statsfile parameter"));
        }
        self.shared = new_shared(self.threshold);
        Ok(())
    }

    fn get_ready(&self) -> Result<()> {
        let path = self.file.as_deref().unwrap_or_default();
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true);
        if self.append {
            o.append(true);
        } else {
            o.truncate(true);
        }
        let f = o
            .open(path)
            .map_err(|e| Error::io(e, format!("stats: open: {path}")))?;
        let _ = self.shared.file.set(f);
        let _ = self.shared.start.set(Instant::now());
        Ok(())
    }

    fn cleanup(&self) {
        let (Some(mut file), Some(start)) = (self.shared.file.get(), self.shared.start.get())
        else {
            return;
        };
        let usecs = start.elapsed().as_micros() as u64;
        if usecs == 0 {
            return;
        }
        let ops: [Op; 7] = std::array::from_fn(|i| std::mem::take(&mut *lock(&self.shared.ops[i])));
        let text = report(&ops, usecs, self.shared.threshold);
        if let Err(e) = file.write_all(text.as_bytes()) {
            crate::log::error(format!(
                "stats: {}: {e}",
                self.file.as_deref().unwrap_or("")
            ));
        }
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        Ok(Box::new(StatsContext {
            next: next.open(readonly, export, is_tls)?,
            shared: self.shared.clone(),
        }))
    }
}

struct StatsContext {
    next: Box<dyn Context>,
    shared: Arc<Shared>,
}

impl StatsContext {
    fn timed(
        &self,
        op: usize,
        count: u64,
        offset: u64,
        call: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let start = Instant::now();
        call()?;
        self.shared.record(op, count, offset, start);
        Ok(())
    }
}

impl FilterContext for StatsContext {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn pread(&self, buf: &mut [u8], offset: u64, f: u32) -> Result<()> {
        let n = buf.len() as u64;
        self.timed(READ, n, offset, || self.next.pread(buf, offset, f))
    }

    fn pwrite(&self, buf: &[u8], offset: u64, f: u32) -> Result<()> {
        let n = buf.len() as u64;
        self.timed(WRITE, n, offset, || self.next.pwrite(buf, offset, f))
    }

    fn trim(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        self.timed(TRIM, count, offset, || self.next.trim(count, offset, f))
    }

    fn zero(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        self.timed(ZERO, count, offset, || self.next.zero(count, offset, f))
    }

    fn flush(&self, f: u32) -> Result<()> {
        self.timed(FLUSH, 0, 0, || self.next.flush(f))
    }

    fn extents(&self, extents: &mut Extents, f: u32) -> Result<()> {
        let (offset, count) = (extents.start(), extents.end() - extents.start());
        self.timed(EXTENTS, count, offset, || self.next.extents(extents, f))
    }

    fn cache(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        self.timed(CACHE, count, offset, || self.next.cache(count, offset, f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_size(512), "512 bytes");
        assert_eq!(human_size(1536), "1.50 KiB");
        assert_eq!(human_size(3 << 20), "3.00 MiB");
        assert_eq!(human_size(5 << 30), "5.00 GiB");
        assert_eq!(human_rate(1, 0), "(n/a)");
    }

    #[test]
    fn breakdown_as_nbdkit_prints_it() {
        let mut op = Op::default();
        for i in 0..20u64 {
            op.record(4096, i * 4096, 0, true);
        }
        for i in 0..3u64 {
            op.record(512, 512 * i + 512, 0, true);
        }
        let mut s = String::new();
        breakdown(&mut s, &op, 0.95);
        assert_eq!(
            s,
            "  Request size and alignment breakdown:\n\
             \x20   12 bits: 87.0% (20 reqs, 80.00 KiB total)\n\
             \x20        12 bit aligned: 100.0% (20)\n\
             \x20        13 bit aligned:  50.0% (10)\n\
             \x20        14 bit aligned:  25.0% (5)\n\
             \x20        15 bit aligned:  15.0% (3)\n\
             \x20        16 bit aligned:  10.0% (2)\n\
             \x20    9 bits: 13.0% (3 reqs, 1.50 KiB total)\n\
             \x20         9 bit aligned: 100.0% (3)\n\
             \x20        10 bit aligned:  33.3% (1)\n\n"
        );
        let mut one = Op::default();
        one.record(512, 1024, 0, true);
        one.bytes = 512;
        let mut s = String::new();
        breakdown(&mut s, &one, 0.95);
        assert_eq!(
            s,
            "  Request size and alignment breakdown:\n    other sizes: 100.0% (1 reqs, 512 bytes total)\n\n"
        );
    }

    #[test]
    fn parameters() {
        let mut f = Stats::new();
        assert!(f.config_complete().is_err());
        assert!(f.config("statsthreshold", "101").is_err());
        assert!(f.config("statsthreshold", "x").is_err());
        assert!(f.config("statsappend", "maybe").is_err());
        assert!(f.config("statsthreshold", "0").unwrap());
        assert!(f.config("statsfile", "/tmp/s").unwrap());
        assert!(f.config_complete().is_ok());
    }
}
