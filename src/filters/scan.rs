//! The `scan` filter: prefetch the whole disk in the background while a
//! client is connected, by sending `cache` requests down from the start
//! of the disk to the end, `scan-size` (2M) at a time.
//!
//! By default the scan skips ahead past a client read that is beyond it
//! (`scan-ahead=false` scans strictly in order), resumes where the last
//! connection left it (`scan-clock=false` starts at zero each time) and
//! stops at the end of the disk (`scan-forever=true` starts over).  As
//! with nbdkit it only scans the default export, only with a parallel
//! thread model, and only if the layer below caches natively (put
//! `--filter=cache` after it otherwise); in other cases it warns and does
//! nothing.  The background thread stops when the connection closes and
//! when the server shuts down.

use crate::error::{Error, Result};
use crate::filter::{Filter, FilterContext};
use crate::layers::{Backend, Context};
use crate::parse::{parse_bool, parse_size};
use crate::plugin::{CacheMode, ThreadModel};
use crate::server::{lock, quit};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

#[derive(Clone, Copy)]
struct Config {
    ahead: bool,
    clock: bool,
    forever: bool,
    size: u64,
}

pub struct Scan {
    cfg: Config,
    /// Where the last scan got to (shared by connections: the clock).
    clock: Arc<AtomicU64>,
}

impl Scan {
    pub fn new() -> Self {
        Scan {
            cfg: Config {
                ahead: true,
                clock: true,
                forever: false,
                size: 2 * 1024 * 1024,
            },
            clock: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Default for Scan {
    fn default() -> Self {
        Self::new()
    }
}

impl Filter for Scan {
    fn name(&self) -> &'static str {
        "scan"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit scan filter")
    }

    fn description(&self) -> &'static str {
        "Prefetch the whole disk in the background."
    }

    fn config_help(&self) -> &'static str {
        "scan-ahead=false         Skip ahead when client reads faster.\n\
         scan-clock=false         Always start prefetching from beginning.\n\
         scan-forever=true        Scan in a loop while clients connected.\n\
         scan-size=NN             Set scan block size."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "scan-ahead" => self.cfg.ahead = parse_bool(value)?,
            "scan-clock" => self.cfg.clock = parse_bool(value)?,
            "scan-forever" => self.cfg.forever = parse_bool(value)?,
            "scan-size" => self.cfg.size = parse_size(value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        let s = self.cfg.size;
        if !(512..=32 * 1024 * 1024).contains(&s) || !s.is_power_of_two() {
            return Err(Error::config(
                "scan-size parameter should be [512..32M] and a power of two",
            ));
        }
        Ok(())
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        Ok(Box::new(ScanContext {
            next: Arc::from(next.open(readonly, export, is_tls)?),
            default_export: export.is_empty(),
            cfg: self.cfg,
            clock: self.clock.clone(),
            shared: Arc::new(Shared::default()),
            thread: Mutex::new(None),
        }))
    }
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Highest end of a client read (for scan-ahead).
    read_end: AtomicU64,
}

struct ScanContext {
    next: Arc<dyn Context>,
    default_export: bool,
    cfg: Config,
    clock: Arc<AtomicU64>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ScanContext {
    fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

fn scan_thread(next: Arc<dyn Context>, cfg: Config, clock: Arc<AtomicU64>, shared: Arc<Shared>) {
    let Ok(size) = next.get_size() else {
        return;
    };
    loop {
        let mut offset = if cfg.clock {
            clock.load(Ordering::Relaxed)
        } else {
            0
        };
        while offset < size {
            if shared.stop.load(Ordering::Acquire) || quit::requested() {
                crate::log::debug("scan: exiting background thread on connection close");
                return;
            }
            if cfg.ahead {
                offset = offset.max(shared.read_end.load(Ordering::Relaxed));
            }
            clock.fetch_max(offset, Ordering::Relaxed);
            if offset >= size {
                break;
            }
            let n = cfg.size.min(size - offset);
            // Errors only mean this block is not prefetched.
            let _ = next.cache(n, offset, 0);
            offset += n;
        }
        if !cfg.forever {
            break;
        }
        clock.store(0, Ordering::Relaxed);
    }
    crate::log::debug("scan: finished scanning the plugin");
}

impl Drop for ScanContext {
    fn drop(&mut self) {
        self.stop();
    }
}

impl FilterContext for ScanContext {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn prepare(&self, _readonly: bool) -> Result<()> {
        if !self.default_export {
            crate::log::error("scan: warning: not the default export, not scanning");
            return Ok(());
        }
        if crate::layers::server_thread_model() != ThreadModel::Parallel {
            crate::log::error(
                "scan: warning: underlying plugin does not support \
                 the PARALLEL thread model, not scanning",
            );
            return Ok(());
        }
        if self.next.can_cache()? != CacheMode::Native {
            crate::log::error(
                "scan: warning: underlying plugin does not support NBD_CMD_CACHE, \
                 not scanning; try adding --filter=cache after this filter",
            );
            return Ok(());
        }
        let (next, cfg, clock, shared) = (
            self.next.clone(),
            self.cfg,
            self.clock.clone(),
            self.shared.clone(),
        );
        let t = std::thread::Builder::new()
            .name("scan".into())
            .spawn(move || scan_thread(next, cfg, clock, shared))
            .map_err(|e| Error::io(e, "scan: cannot start the background thread"))?;
        *lock(&self.thread) = Some(t);
        Ok(())
    }

    fn finalize(&self) -> Result<()> {
        self.stop();
        Ok(())
    }

    fn pread(&self, buf: &mut [u8], offset: u64, f: u32) -> Result<()> {
        if self.cfg.ahead {
            self.shared
                .read_end
                .fetch_max(offset + buf.len() as u64, Ordering::Relaxed);
        }
        self.next.pread(buf, offset, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let mut f = Scan::new();
        assert!(f.config("scan-ahead", "false").unwrap());
        assert!(f.config("scan-size", "1M").unwrap());
        assert!(f.config_complete().is_ok());
        assert!(!f.cfg.ahead);
        for bad in ["256", "3000", "64M"] {
            let mut f = Scan::new();
            f.config("scan-size", bad).unwrap();
            assert!(f.config_complete().is_err(), "{bad}");
        }
        assert!(Scan::new().config("scan-forever", "x").is_err());
        assert!(!Scan::new().config("size", "1M").unwrap());
    }
}
