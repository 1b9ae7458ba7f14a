//! The `delay` filter: sleep before passing requests on, to simulate a slow
//! disk or network (and to make concurrency observable in tests).  Delays
//! end early when the server shuts down.

use crate::error::Result;
use crate::extents::Extents;
use crate::filter::{Filter, FilterContext};
use crate::layers::{flags, Backend, Context};
use crate::parse::{parse_bool, parse_delay};
use crate::server::quit;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Default)]
struct Delays {
    read: Duration,
    write: Duration,
    zero: Duration,
    trim: Duration,
    extents: Duration,
    cache: Duration,
    open: Duration,
    close: Duration,
    /// Whether fast-zero requests are delayed too.
    fast_zero: bool,
}

pub struct Delay {
    delays: Arc<Delays>,
}

impl Delay {
    pub fn new() -> Self {
        Delay {
            delays: Arc::new(Delays {
                fast_zero: true,
                ..Delays::default()
            }),
        }
    }
}

impl Default for Delay {
    fn default() -> Self {
        Self::new()
    }
}

fn wait(d: Duration) -> Result<()> {
    if d.is_zero() {
        Ok(())
    } else {
        quit::sleep(d)
    }
}

impl Filter for Delay {
    fn name(&self) -> &'static str {
        "delay"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit delay filter")
    }

    fn description(&self) -> &'static str {
        "Inject delays into requests."
    }

    fn config_help(&self) -> &'static str {
        "rdelay=<NN>[ms]                Read delay in seconds/milliseconds.\n\
         delay-read=<NN>[ms]            Read delay in seconds/milliseconds.\n\
         delay-write=<NN>[ms]           Write delay in seconds/milliseconds.\n\
         delay-zero=<NN>[ms]            Zero delay in seconds/milliseconds.\n\
         delay-trim=<NN>[ms]            Trim delay in seconds/milliseconds.\n\
         delay-extents=<NN>[ms]         Extents delay in seconds/milliseconds.\n\
         delay-cache=<NN>[ms]           Cache delay in seconds/milliseconds.\n\
         wdelay=<NN>[ms]                Write, zero and trim delay in secs/msecs.\n\
         delay-fast-zero=<BOOL>         Delay fast zero requests (default true).\n\
         delay-open=<NN>[ms]            Open delay in seconds/milliseconds.\n\
         delay-close=<NN>[ms]           Close delay in seconds/milliseconds."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let d = Arc::make_mut(&mut self.delays);
        match key {
            "rdelay" | "delay-read" => d.read = parse_delay(key, value)?,
            "delay-write" => d.write = parse_delay(key, value)?,
            "delay-zero" => d.zero = parse_delay(key, value)?,
            "delay-trim" => d.trim = parse_delay(key, value)?,
            "delay-extents" => d.extents = parse_delay(key, value)?,
            "delay-cache" => d.cache = parse_delay(key, value)?,
            "delay-open" => d.open = parse_delay(key, value)?,
            "delay-close" => d.close = parse_delay(key, value)?,
            "wdelay" => {
                let v = parse_delay(key, value)?;
                (d.write, d.zero, d.trim) = (v, v, v);
            }
            "delay-fast-zero" => d.fast_zero = parse_bool(value)?,
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
        wait(self.delays.open)?;
        Ok(Box::new(DelayContext {
            next: next.open(readonly, export, is_tls)?,
            delays: self.delays.clone(),
        }))
    }
}

struct DelayContext {
    next: Box<dyn Context>,
    delays: Arc<Delays>,
}

impl Drop for DelayContext {
    fn drop(&mut self) {
        let _ = wait(self.delays.close);
    }
}

impl FilterContext for DelayContext {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn pread(&self, buf: &mut [u8], offset: u64, f: u32) -> Result<()> {
        wait(self.delays.read)?;
        self.next.pread(buf, offset, f)
    }

    fn pwrite(&self, buf: &[u8], offset: u64, f: u32) -> Result<()> {
        wait(self.delays.write)?;
        self.next.pwrite(buf, offset, f)
    }

    fn zero(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        if f & flags::FAST_ZERO == 0 || self.delays.fast_zero {
            wait(self.delays.zero)?;
        }
        self.next.zero(count, offset, f)
    }

    fn trim(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        wait(self.delays.trim)?;
        self.next.trim(count, offset, f)
    }

    fn extents(&self, extents: &mut Extents, f: u32) -> Result<()> {
        wait(self.delays.extents)?;
        self.next.extents(extents, f)
    }

    fn cache(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        wait(self.delays.cache)?;
        self.next.cache(count, offset, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let mut f = Delay::new();
        assert!(f.config("rdelay", "2").unwrap());
        assert!(f.config("wdelay", "100ms").unwrap());
        assert!(f.config("delay-fast-zero", "false").unwrap());
        assert!(!f.config("size", "1M").unwrap());
        assert!(f.config("rdelay", "soon").is_err());
        assert_eq!(f.delays.read, Duration::from_secs(2));
        assert_eq!(f.delays.trim, Duration::from_millis(100));
        assert!(!f.delays.fast_zero);
    }
}
