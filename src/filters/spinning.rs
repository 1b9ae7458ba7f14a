//! The `spinning` filter: make a fast plugin behave like a rotating hard
//! disk, with a seek delay before each read, write or zero that lands far
//! from where the simulated head is.
//!
//! Seek time follows a quadratic curve through three points: the
//! track-to-track time (`min-seek-time`, 10 ms), half a stroke
//! (`half-seek-time`, 0.2 s) and a full stroke (`max-seek-time`, 0.5 s),
//! all in seconds.  Moves of at most one "track" (128 KiB) cost nothing.
//! `heads=N` (1 to 64) splits the disk into N equal sections, one head
//! each; with `separate-heads=false` (the default) the heads move together
//! on one arm, so requests wait for each other, while with
//! `separate-heads=true` each head moves on its own and requests on
//! different sections run in parallel.  Each connection has its own heads
//! (so the filter turns multi-conn off), and the export is always
//! advertised as rotational.

use crate::error::{Error, Result};
use crate::filter::{Filter, FilterContext};
use crate::layers::{Backend, Context};
use crate::parse::{parse_bool, parse_unsigned};
use crate::server::{lock, quit};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Seeks no longer than this are free.
const TRACK_SIZE: u64 = 128 * 1024;
const MAX_HEADS: u64 = 64;

#[derive(Debug, Clone, Copy)]
struct Config {
    heads: u64,
    separate: bool,
    min: f64,
    half: f64,
    max: f64,
    /// Seek time = a·x² + b·x + c for a stroke fraction x in [0, 1].
    a: f64,
    b: f64,
    c: f64,
    verbose: bool,
}

impl Config {
    fn seek_time(&self, x: f64) -> f64 {
        self.a * x * x + self.b * x + self.c
    }
}

pub struct Spinning {
    cfg: Config,
}

impl Spinning {
    pub fn new() -> Self {
        Spinning {
            cfg: Config {
                heads: 1,
                separate: false,
                min: 0.01,
                half: 0.2,
                max: 0.5,
                a: 0.0,
                b: 0.0,
                c: 0.0,
                verbose: false,
            },
        }
    }
}

impl Default for Spinning {
    fn default() -> Self {
        Self::new()
    }
}

fn parse_seconds(key: &str, value: &str) -> Result<f64> {
    match value.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(Error::config(format!(
            "{key} must be a number >= 0 (was: \"{value}\")"
        ))),
    }
}

impl Filter for Spinning {
    fn name(&self) -> &'static str {
        "spinning"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit spinning filter")
    }

    fn description(&self) -> &'static str {
        "Add seek delays to simulate a spinning hard disk."
    }

    fn config_help(&self) -> &'static str {
        "heads=N                 Set the number of heads (default: 1)\n\
         separate-heads=BOOL     Use separate heads (default: false)\n\
         min-seek-time=N         Set track-to-track seek time (default: 0.01)\n\
         half-seek-time=N        Set half disk seek time (default: 0.2)\n\
         max-seek-time=N         Set whole disk seek time (default: 0.5)"
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let c = &mut self.cfg;
        match key {
            "heads" => {
                let n = parse_unsigned("heads", value, u32::MAX as u64)?;
                if n == 0 || n > MAX_HEADS {
                    return Err(Error::config(format!(
                        "heads must be in the range [1..{MAX_HEADS}] (was: {n})"
                    )));
                }
                c.heads = n;
            }
            "separate-heads" => c.separate = parse_bool(value)?,
            "min-seek-time" => c.min = parse_seconds(key, value)?,
            "half-seek-time" => c.half = parse_seconds(key, value)?,
            "max-seek-time" => c.max = parse_seconds(key, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        // The quadratic through (0, min), (½, half) and (1, max).
        let c = &mut self.cfg;
        c.a = 2.0 * (c.max - 2.0 * c.half + c.min);
        c.b = 2.0 * (c.half - c.min - c.a / 4.0);
        c.c = c.min;
        crate::log::debug(format!(
            "spinning: [min, half, max] = {}, {}, {}",
            c.min, c.half, c.max
        ));
        crate::log::debug(format!(
            "spinning: quadratic curve: {} x^2 + {} x + {}",
            c.a, c.b, c.c
        ));
        let off = |x: f64, want: f64| (c.seek_time(x) - want).abs() >= 0.0005;
        if off(0.0, c.min) || off(0.5, c.half) || off(1.0, c.max) {
            return Err(Error::config(
                "in the spinning filter, seek time quadratic is not stable, \
                 try using different {min,half,max}-seek-time parameters",
            ));
        }
        Ok(())
    }

    fn debug_flag(&mut self, flag: &str, value: &str) -> Result<bool> {
        if flag != "verbose" {
            return Ok(false);
        }
        self.cfg.verbose = parse_unsigned("spinning.verbose", value, i32::MAX as u64)? != 0;
        Ok(true)
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        Ok(Box::new(SpinningContext {
            next: next.open(readonly, export, is_tls)?,
            cfg: self.cfg,
            disk: OnceLock::new(),
        }))
    }
}

/// One head: the section of the disk it covers, and where it is
/// (relative to the section's start).  With one arm only head 0's
/// position is used, for all heads.
#[derive(Debug)]
struct Head {
    start: u64,
    end: u64,
    pos: Mutex<u64>,
}

#[derive(Debug)]
struct Disk {
    heads: Vec<Head>,
}

impl Disk {
    /// Split `size` bytes between up to `n` heads (fewer on a tiny disk,
    /// none on an empty one).
    fn new(size: u64, n: u64) -> Disk {
        let n = n.min(size);
        let mut heads = Vec::new();
        if let Some(step) = size.checked_div(n) {
            for i in 0..n {
                let start = i * step;
                let end = if i == n - 1 { size } else { start + step };
                heads.push(Head {
                    start,
                    end,
                    pos: Mutex::new(0),
                });
            }
        }
        Disk { heads }
    }

    /// The head covering `offset`.
    fn head_for(&self, offset: u64) -> Option<&Head> {
        let i = self.heads.partition_point(|h| h.end <= offset);
        self.heads.get(i)
    }

    /// Move the head (or the arm) to `offset`, sleeping for the seek.
    /// The head's lock is held while it moves, so requests for it wait.
    fn seek(&self, cfg: &Config, offset: u64) -> Result<()> {
        let Some(head) = self.head_for(offset) else {
            return Ok(());
        };
        let rel = offset - head.start;
        let arm = if cfg.separate { head } else { &self.heads[0] };
        let mut pos = lock(&arm.pos);
        let delta = pos.abs_diff(rel);
        *pos = rel;
        if cfg.verbose {
            crate::log::debug(format!("spinning: do_seek: delta={delta}"));
        }
        if delta > TRACK_SIZE {
            let stroke = delta as f64 / (head.end - head.start) as f64;
            let t = cfg.seek_time(stroke);
            if cfg.verbose {
                crate::log::debug(format!("spinning: do_seek: stroke {stroke} => delay {t}"));
            }
            if t > 0.0 && t.is_finite() {
                quit::sleep(Duration::from_secs_f64(t.min(1e6)))?;
            }
        }
        drop(pos);
        Ok(())
    }
}

struct SpinningContext {
    next: Box<dyn Context>,
    cfg: Config,
    /// Set up in `prepare`, once the size is known.
    disk: OnceLock<Disk>,
}

impl SpinningContext {
    fn seek(&self, offset: u64) -> Result<()> {
        match self.disk.get() {
            Some(d) => d.seek(&self.cfg, offset),
            None => Ok(()),
        }
    }
}

impl FilterContext for SpinningContext {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn prepare(&self, _readonly: bool) -> Result<()> {
        let size = self.next.get_size()?;
        let disk = Disk::new(size, self.cfg.heads);
        crate::log::debug(format!("spinning: heads {}", disk.heads.len()));
        let _ = self.disk.set(disk);
        Ok(())
    }

    fn is_rotational(&self) -> Result<bool> {
        Ok(true)
    }

    fn can_multi_conn(&self) -> Result<bool> {
        // Each connection has its own heads.
        Ok(false)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, f: u32) -> Result<()> {
        self.seek(offset)?;
        self.next.pread(buf, offset, f)
    }

    fn pwrite(&self, buf: &[u8], offset: u64, f: u32) -> Result<()> {
        self.seek(offset)?;
        self.next.pwrite(buf, offset, f)
    }

    fn zero(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        self.seek(offset)?;
        self.next.zero(count, offset, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured(params: &[(&str, &str)]) -> Result<Spinning> {
        let mut f = Spinning::new();
        for (k, v) in params {
            assert!(f.config(k, v)?, "{k} is the filter's");
        }
        f.config_complete()?;
        Ok(f)
    }

    #[test]
    fn seek_curve_goes_through_the_three_points() {
        let f = configured(&[]).unwrap();
        let c = f.cfg;
        assert!((c.seek_time(0.0) - 0.01).abs() < 1e-9);
        assert!((c.seek_time(0.5) - 0.2).abs() < 1e-9);
        assert!((c.seek_time(1.0) - 0.5).abs() < 1e-9);
        let f = configured(&[("half-seek-time", "0.5"), ("max-seek-time", "1.0")]).unwrap();
        assert!((f.cfg.seek_time(0.25) - 0.25375).abs() < 1e-9);
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(configured(&[("heads", "0")]).is_err());
        assert!(configured(&[("heads", "65")]).is_err());
        assert!(configured(&[("heads", "two")]).is_err());
        assert!(configured(&[("separate-heads", "maybe")]).is_err());
        assert!(configured(&[("min-seek-time", "-1")]).is_err());
        assert!(configured(&[("max-seek-time", "fast")]).is_err());
        assert!(configured(&[("half-seek-time", "inf")]).is_err());
        let e = configured(&[("heads", "65")]).err().unwrap();
        assert_eq!(e.message(), "heads must be in the range [1..64] (was: 65)");
        assert!(configured(&[("heads", "64"), ("separate-heads", "true")]).is_ok());
        assert!(!Spinning::new().config("size", "1M").unwrap());
    }

    #[test]
    fn heads_split_the_disk() {
        let d = Disk::new(1000, 4);
        let ranges: Vec<_> = d.heads.iter().map(|h| (h.start, h.end)).collect();
        assert_eq!(ranges, [(0, 250), (250, 500), (500, 750), (750, 1000)]);
        assert_eq!(d.head_for(0).unwrap().start, 0);
        assert_eq!(d.head_for(499).unwrap().start, 250);
        assert_eq!(d.head_for(999).unwrap().start, 750);
        assert!(d.head_for(1000).is_none());
        // Uneven: the last head takes the remainder; a tiny disk has fewer.
        let d = Disk::new(10, 3);
        assert_eq!(d.heads.last().map(|h| (h.start, h.end)), Some((6, 10)));
        assert_eq!(Disk::new(2, 64).heads.len(), 2);
        assert!(Disk::new(0, 4).heads.is_empty());
    }

    #[test]
    fn short_seeks_are_free_and_move_the_arm() {
        let f = configured(&[
            ("min-seek-time", "100"),
            ("half-seek-time", "100"),
            ("max-seek-time", "100"),
        ])
        .unwrap();
        let d = Disk::new(1 << 30, 2);
        // Within a track of the start: no sleep (100 s would hang the test).
        d.seek(&f.cfg, 4096).unwrap();
        d.seek(&f.cfg, TRACK_SIZE).unwrap();
        // One arm: a seek on the second half moves head 0 as well.
        d.seek(&f.cfg, (1 << 29) + TRACK_SIZE + 10).unwrap();
        assert_eq!(*lock(&d.heads[0].pos), TRACK_SIZE + 10);
    }
}
