//! The `retry` filter: when a data call fails, wait, close the layers
//! below, open them again and repeat the call, as nbdkit's retry filter.
//! Meant for plugins whose connection to a remote source breaks now and then
//! (`curl`, `ssh`): a long copy rides out the break instead of failing.
//!
//! Each call gets `retries` more attempts; the wait before the first is
//! `retry-delay` and doubles after each (unless `retry-exponential=no`).
//! With the defaults that is 2 + 4 + 8 + 16 + 32 s, about a minute, before
//! the call fails for good.  With `retry-readonly=yes` the layers are opened
//! again read-only, and writes after the first reopen fail with `EROFS`.
//!
//! Unlike nbdkit, which limits the connection to one request at a time
//! because its reopen is not safe against concurrent requests, the layers
//! below sit behind a read-write lock: requests share them, a reopen has
//! them alone, and requests that failed together on the same lower
//! connection cause one reopen, not one each.

use crate::error::{Error, Result};
use crate::extents::Extents;
use crate::filter::{Filter, FilterContext};
use crate::layers::{flags, Backend, Context};
use crate::parse::{parse_bool, parse_delay, parse_unsigned};
use crate::plugin::{BlockSize, CacheMode, FuaMode, ZeroMode};
use crate::server::quit;
use nix::errno::Errno;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
struct Policy {
    retries: u32,
    delay: Duration,
    exponential: bool,
    force_readonly: bool,
}

pub struct Retry {
    policy: Policy,
}

impl Retry {
    pub fn new() -> Self {
        Retry {
            policy: Policy {
                retries: 5,
                delay: Duration::from_secs(2),
                exponential: true,
                force_readonly: false,
            },
        }
    }
}

impl Default for Retry {
    fn default() -> Self {
        Self::new()
    }
}

fn bool_param(key: &str, value: &str) -> Result<bool> {
    parse_bool(value).map_err(|e| Error::config(format!("{key}: {}", e.message())))
}

impl Filter for Retry {
    fn name(&self) -> &'static str {
        "retry"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit retry filter")
    }

    fn description(&self) -> &'static str {
        "Reopen the plugin and retry requests on error."
    }

    fn config_help(&self) -> &'static str {
        "retries=<N>              Number of retries (default: 5).\n\
         retry-delay=<N>          Seconds to wait before retry (default: 2).\n\
         retry-exponential=yes|no Exponential back-off (default: yes).\n\
         retry-readonly=yes|no    Force read-only on failure (default: no)."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "retries" => self.policy.retries = parse_unsigned(key, value, i32::MAX as u64)? as u32,
            "retry-delay" => {
                let d = parse_delay(key, value)?;
                if d.is_zero() {
                    return Err(Error::config("retry-delay cannot be 0"));
                }
                self.policy.delay = d;
            }
            "retry-exponential" => self.policy.exponential = bool_param(key, value)?,
            "retry-readonly" => self.policy.force_readonly = bool_param(key, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn open(&self, _: &dyn Backend, _: bool, _: &str, _: bool) -> Result<Box<dyn FilterContext>> {
        // The server always comes through `open_shared`.
        Err(Error::new(
            Errno::EINVAL,
            "retry: the next layer is needed to open",
        ))
    }

    fn open_shared(
        &self,
        next: &Arc<dyn Backend>,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        let ctx = next.open(readonly, export, is_tls)?;
        Ok(Box::new(Retrying {
            lower: Lower {
                backend: next.clone(),
                readonly,
                export: export.to_string(),
                is_tls,
                slot: RwLock::new(Slot {
                    ctx: Some(ctx),
                    generation: 0,
                }),
            },
            policy: self.policy,
            reopens: AtomicU64::new(0),
            reopened: AtomicBool::new(false),
        }))
    }
}

/// The current connection to the layers below; `ctx` is `None` after a
/// reopen failed (the next attempt tries again).
struct Slot {
    ctx: Option<Box<dyn Context>>,
    /// Bumped by each reopen, so that a request knows whether the
    /// connection it failed on is still the current one.
    generation: u64,
}

/// The layers below, as a context that can be replaced.
struct Lower {
    backend: Arc<dyn Backend>,
    readonly: bool,
    export: String,
    is_tls: bool,
    slot: RwLock<Slot>,
}

fn closed() -> Error {
    Error::new(Errno::ESHUTDOWN, "retry: the plugin could not be reopened")
}

impl Lower {
    fn read(&self) -> RwLockReadGuard<'_, Slot> {
        self.slot.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `f` on the current context; the generation it ran on is
    /// returned with its answer.
    fn with<T>(&self, f: impl FnOnce(&dyn Context) -> Result<T>) -> (u64, Result<T>) {
        let slot = self.read();
        let r = match &slot.ctx {
            Some(ctx) => f(&**ctx),
            None => Err(closed()),
        };
        (slot.generation, r)
    }

    /// Close the context of `generation` and open a new one, unless another
    /// request already did.
    fn reopen(&self, generation: u64, readonly: bool) -> Result<bool> {
        let mut slot = self.slot.write().unwrap_or_else(|e| e.into_inner());
        if slot.generation != generation {
            return Ok(false);
        }
        slot.generation += 1;
        if let Some(old) = slot.ctx.take() {
            if let Err(e) = old.finalize() {
                crate::log::debug(format!("retry: finalize before reopen: {}", e.message()));
            }
            drop(old);
        }
        let ctx = self.backend.open(readonly, &self.export, self.is_tls)?;
        ctx.prepare(readonly)?;
        slot.ctx = Some(ctx);
        Ok(true)
    }
}

impl Context for Lower {
    fn prepare(&self, readonly: bool) -> Result<()> {
        self.with(|c| c.prepare(readonly)).1
    }
    fn finalize(&self) -> Result<()> {
        self.with(|c| c.finalize()).1
    }
    fn get_size(&self) -> Result<u64> {
        self.with(|c| c.get_size()).1
    }
    fn export_description(&self) -> Result<Option<String>> {
        self.with(|c| c.export_description()).1
    }
    fn block_size(&self) -> Result<Option<BlockSize>> {
        self.with(|c| c.block_size()).1
    }
    fn can_write(&self) -> Result<bool> {
        self.with(|c| c.can_write()).1
    }
    fn can_flush(&self) -> Result<bool> {
        self.with(|c| c.can_flush()).1
    }
    fn is_rotational(&self) -> Result<bool> {
        self.with(|c| c.is_rotational()).1
    }
    fn can_trim(&self) -> Result<bool> {
        self.with(|c| c.can_trim()).1
    }
    fn can_zero(&self) -> Result<ZeroMode> {
        self.with(|c| c.can_zero()).1
    }
    fn can_fast_zero(&self) -> Result<bool> {
        self.with(|c| c.can_fast_zero()).1
    }
    fn can_extents(&self) -> Result<bool> {
        self.with(|c| c.can_extents()).1
    }
    fn can_fua(&self) -> Result<FuaMode> {
        self.with(|c| c.can_fua()).1
    }
    fn can_multi_conn(&self) -> Result<bool> {
        self.with(|c| c.can_multi_conn()).1
    }
    fn can_cache(&self) -> Result<CacheMode> {
        self.with(|c| c.can_cache()).1
    }
    fn pread(&self, buf: &mut [u8], offset: u64, flags: u32) -> Result<()> {
        self.with(|c| c.pread(buf, offset, flags)).1
    }
    fn pwrite(&self, buf: &[u8], offset: u64, flags: u32) -> Result<()> {
        self.with(|c| c.pwrite(buf, offset, flags)).1
    }
    fn flush(&self, flags: u32) -> Result<()> {
        self.with(|c| c.flush(flags)).1
    }
    fn trim(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.with(|c| c.trim(count, offset, flags)).1
    }
    fn zero(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.with(|c| c.zero(count, offset, flags)).1
    }
    fn extents(&self, extents: &mut Extents, flags: u32) -> Result<()> {
        self.with(|c| c.extents(extents, flags)).1
    }
    fn cache(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.with(|c| c.cache(count, offset, flags)).1
    }
}

struct Retrying {
    lower: Lower,
    policy: Policy,
    reopens: AtomicU64,
    /// Set by the first reopen: with `retry-readonly`, writes fail from then on.
    reopened: AtomicBool,
}

impl Drop for Retrying {
    fn drop(&mut self) {
        crate::log::debug(format!(
            "retry: reopens needed: {}",
            self.reopens.load(Ordering::Relaxed)
        ));
    }
}

/// The checks a request needs against a (possibly reopened) context before
/// it is sent: the range still fits, and the capability it needs is still
/// there.
fn check_range(c: &dyn Context, count: u64, offset: u64, is_write: bool) -> Result<()> {
    let size = c.get_size()?;
    if offset.checked_add(count).is_none_or(|end| end > size) {
        let errno = if is_write { Errno::ENOSPC } else { Errno::EIO };
        return Err(Error::new(
            errno,
            "retry: request out of range of the reopened plugin",
        ));
    }
    Ok(())
}

fn check_fua(c: &dyn Context, flags: u32) -> Result<()> {
    if flags & flags::FUA != 0 && c.can_fua()? == FuaMode::None {
        return Err(Error::new(
            Errno::EIO,
            "retry: the reopened plugin cannot do FUA",
        ));
    }
    Ok(())
}

impl Retrying {
    /// Run `call` on the layers below until it succeeds or the retries are
    /// spent, reopening them before each retry.
    fn run<T>(&self, what: &str, mut call: impl FnMut(&dyn Context) -> Result<T>) -> Result<T> {
        let p = &self.policy;
        let mut attempt = 0u32;
        let mut delay = p.delay;
        let (mut generation, mut result) = self.lower.with(&mut call);
        loop {
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if attempt >= p.retries || quit::requested() {
                if attempt > 0 {
                    crate::log::debug(format!(
                        "retry: {what}: could not recover after {attempt} retries"
                    ));
                }
                return Err(err);
            }
            attempt += 1;
            crate::log::debug(format!(
                "retry: {what} failed ({}), retry {attempt} of {}: waiting {:?}",
                err.message(),
                p.retries,
                delay
            ));
            if quit::sleep(delay).is_err() {
                return Err(err);
            }
            if p.exponential {
                delay = delay.saturating_mul(2);
            }
            self.reopens.fetch_add(1, Ordering::Relaxed);
            self.reopened.store(true, Ordering::Relaxed);
            let readonly = self.lower.readonly || p.force_readonly;
            match self.lower.reopen(generation, readonly) {
                Ok(_) => {
                    let (g, r) = self.lower.with(&mut call);
                    generation = g;
                    result = r;
                }
                Err(e) => {
                    // Counts as a failed attempt: wait and reopen again.
                    crate::log::debug(format!("retry: reopen failed: {}", e.message()));
                    generation = self.lower.read().generation;
                    result = Err(Error::new(Errno::ESHUTDOWN, e.message().to_string()));
                }
            }
        }
    }

    fn refuse_after_readonly_reopen(&self) -> Result<()> {
        if self.policy.force_readonly && self.reopened.load(Ordering::Relaxed) {
            return Err(Error::new(
                Errno::EROFS,
                "retry: reopened read-only after a failure",
            ));
        }
        Ok(())
    }
}

impl FilterContext for Retrying {
    fn next(&self) -> &dyn Context {
        &self.lower
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: u32) -> Result<()> {
        let count = buf.len() as u64;
        self.run("pread", |c| {
            check_range(c, count, offset, false)?;
            c.pread(buf, offset, flags)
        })
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: u32) -> Result<()> {
        self.refuse_after_readonly_reopen()?;
        self.run("pwrite", |c| {
            self.refuse_after_readonly_reopen()?;
            check_range(c, buf.len() as u64, offset, true)?;
            if !c.can_write()? {
                return Err(Error::new(Errno::EROFS, "retry: the plugin is read-only"));
            }
            check_fua(c, flags)?;
            c.pwrite(buf, offset, flags)
        })
    }

    fn flush(&self, flags: u32) -> Result<()> {
        self.run("flush", |c| {
            if !c.can_flush()? {
                return Err(Error::new(Errno::EIO, "retry: the plugin cannot flush"));
            }
            c.flush(flags)
        })
    }

    fn trim(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.refuse_after_readonly_reopen()?;
        self.run("trim", |c| {
            self.refuse_after_readonly_reopen()?;
            check_range(c, count, offset, true)?;
            if !c.can_trim()? {
                return Err(Error::new(Errno::EROFS, "retry: the plugin cannot trim"));
            }
            check_fua(c, flags)?;
            c.trim(count, offset, flags)
        })
    }

    fn zero(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.refuse_after_readonly_reopen()?;
        if flags & flags::FAST_ZERO != 0 {
            let fast = self.lower.with(|c| c.can_fast_zero()).1.unwrap_or(false);
            if !fast {
                return Err(Error::new(Errno::EOPNOTSUPP, "fast zero is not supported"));
            }
        }
        self.run("zero", |c| {
            self.refuse_after_readonly_reopen()?;
            check_range(c, count, offset, true)?;
            if c.can_zero()? == ZeroMode::None {
                return Err(Error::new(Errno::EROFS, "retry: the plugin cannot zero"));
            }
            check_fua(c, flags)?;
            c.zero(count, offset, flags)
        })
    }

    fn extents(&self, extents: &mut Extents, flags: u32) -> Result<()> {
        // Each attempt starts from an empty list over the same window.
        let (start, end) = (extents.start(), extents.end());
        *extents = self.run("extents", |c| {
            check_range(c, end - start, start, false)?;
            if !c.can_extents()? {
                return Err(Error::new(Errno::EIO, "retry: the plugin lost extents"));
            }
            let mut attempt = Extents::new(start, end);
            c.extents(&mut attempt, flags)?;
            Ok(attempt)
        })?;
        Ok(())
    }

    fn cache(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.run("cache", |c| {
            check_range(c, count, offset, false)?;
            if c.can_cache()? == CacheMode::None {
                return Err(Error::new(Errno::EIO, "retry: the plugin cannot cache"));
            }
            c.cache(count, offset, flags)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Chain;
    use crate::plugin::{Handle, Plugin};
    use std::sync::atomic::AtomicU32;
    use std::sync::Mutex;

    /// A 1 MiB writable disk shared by its connections.  Each connection
    /// fails every read after its first `reads_ok` reads (a broken network
    /// link); opens fail while `failing_opens` is above zero.
    struct Flaky {
        disk: Arc<Mutex<Vec<u8>>>,
        reads_ok: u32,
        opens: Arc<AtomicU32>,
        readonly_opens: Arc<AtomicU32>,
        failing_opens: Arc<AtomicU32>,
    }

    struct FlakyHandle {
        disk: Arc<Mutex<Vec<u8>>>,
        reads_left: AtomicU32,
        readonly: bool,
    }

    impl Plugin for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn open(&self, readonly: bool, _: &str, _: bool) -> Result<Box<dyn Handle>> {
            self.opens.fetch_add(1, Ordering::SeqCst);
            if readonly {
                self.readonly_opens.fetch_add(1, Ordering::SeqCst);
            }
            let failing = self.failing_opens.load(Ordering::SeqCst);
            if failing > 0 {
                self.failing_opens.store(failing - 1, Ordering::SeqCst);
                return Err(Error::new(Errno::ECONNREFUSED, "open failed"));
            }
            Ok(Box::new(FlakyHandle {
                disk: self.disk.clone(),
                reads_left: AtomicU32::new(self.reads_ok),
                readonly,
            }))
        }
    }

    impl Handle for FlakyHandle {
        fn get_size(&self) -> Result<u64> {
            Ok(1 << 20)
        }
        fn can_write(&self) -> Result<bool> {
            Ok(!self.readonly)
        }
        fn pread(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            let left = self.reads_left.load(Ordering::SeqCst);
            if left == 0 {
                return Err(Error::new(Errno::EIO, "link down"));
            }
            self.reads_left.store(left - 1, Ordering::SeqCst);
            let disk = self.disk.lock().unwrap();
            buf.copy_from_slice(&disk[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn pwrite(&self, buf: &[u8], offset: u64, _fua: bool) -> Result<()> {
            let mut disk = self.disk.lock().unwrap();
            disk[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
            Ok(())
        }
    }

    struct Rig {
        stack: crate::layers::Stack,
        opens: Arc<AtomicU32>,
        readonly_opens: Arc<AtomicU32>,
        failing_opens: Arc<AtomicU32>,
    }

    fn rig(reads_ok: u32, params: &[&str]) -> Rig {
        let disk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        let opens = Arc::new(AtomicU32::new(0));
        let readonly_opens = Arc::new(AtomicU32::new(0));
        let failing_opens = Arc::new(AtomicU32::new(0));
        let mut chain = Chain {
            filters: vec![Box::new(Retry::new())],
            plugin: Box::new(Flaky {
                disk: Arc::new(Mutex::new(disk)),
                reads_ok,
                opens: opens.clone(),
                readonly_opens: readonly_opens.clone(),
                failing_opens: failing_opens.clone(),
            }),
        };
        chain.config_param("retry-delay=1ms").unwrap();
        for p in params {
            chain.config_param(p).unwrap();
        }
        Rig {
            stack: chain.into_stack(),
            opens,
            readonly_opens,
            failing_opens,
        }
    }

    fn expected(offset: usize, len: usize) -> Vec<u8> {
        (offset..offset + len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn parameters() {
        let mut f = Retry::new();
        assert_eq!(f.policy.retries, 5);
        assert_eq!(f.policy.delay, Duration::from_secs(2));
        assert!(f.policy.exponential && !f.policy.force_readonly);
        for (k, v) in [
            ("retries", "3"),
            ("retry-delay", "100ms"),
            ("retry-exponential", "no"),
            ("retry-readonly", "yes"),
        ] {
            assert!(f.config(k, v).unwrap(), "{k}");
        }
        assert_eq!(f.policy.retries, 3);
        assert_eq!(f.policy.delay, Duration::from_millis(100));
        assert!(!f.policy.exponential && f.policy.force_readonly);
        assert!(f.config("retry-delay", "0.5").unwrap());
        assert_eq!(f.policy.delay, Duration::from_millis(500));
        assert!(!f.config("retry-request-retries", "1").unwrap());
        for (k, v) in [
            ("retries", "-1"),
            ("retries", "lots"),
            ("retry-delay", "0"),
            ("retry-delay", "soon"),
            ("retry-exponential", "perhaps"),
            ("retry-readonly", ""),
        ] {
            assert!(f.config(k, v).is_err(), "{k}={v}");
        }
    }

    #[test]
    fn a_broken_connection_is_reopened_and_the_read_repeated() {
        // Every connection to the plugin serves two reads, then breaks.
        let r = rig(2, &[]);
        let c = r.stack.backend.open(false, "", false).unwrap();
        c.prepare(false).unwrap();
        for i in 0..7usize {
            let mut buf = vec![0u8; 4096];
            c.pread(&mut buf, (i * 4096) as u64, 0).unwrap();
            assert_eq!(buf, expected(i * 4096, 4096), "read {i}");
        }
        // 7 reads at 2 per connection: the first open and 3 reopens.
        assert_eq!(r.opens.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn the_error_is_returned_when_retries_are_spent() {
        // A connection that never reads: 1 + 2 attempts, 2 reopens.
        let r = rig(0, &["retries=2"]);
        let c = r.stack.backend.open(false, "", false).unwrap();
        let mut buf = [0u8; 512];
        let e = c.pread(&mut buf, 0, 0).unwrap_err();
        assert_eq!(e.errno(), Errno::EIO);
        assert_eq!(r.opens.load(Ordering::SeqCst), 3);
        // retries=0 turns the filter off.
        let r = rig(0, &["retries=0"]);
        let c = r.stack.backend.open(false, "", false).unwrap();
        assert!(c.pread(&mut buf, 0, 0).is_err());
        assert_eq!(r.opens.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_failed_reopen_counts_as_an_attempt() {
        let r = rig(1, &["retries=3"]);
        let c = r.stack.backend.open(false, "", false).unwrap();
        let mut buf = vec![0u8; 100];
        c.pread(&mut buf, 0, 0).unwrap();
        // The link breaks and the next two reopens are refused: the third
        // reopen works and the read succeeds on the last attempt.
        r.failing_opens.store(2, Ordering::SeqCst);
        c.pread(&mut buf, 1000, 0).unwrap();
        assert_eq!(buf, expected(1000, 100));
        assert_eq!(r.opens.load(Ordering::SeqCst), 4);
        // One more refusal than there are retries: the call fails, with
        // the reopen's error.
        r.failing_opens.store(4, Ordering::SeqCst);
        let e = c.pread(&mut buf, 0, 0).unwrap_err();
        assert_eq!(e.errno(), Errno::ESHUTDOWN);
    }

    #[test]
    fn retry_readonly_reopens_read_only_and_then_refuses_writes() {
        let r = rig(1, &["retry-readonly=yes"]);
        let c = r.stack.backend.open(false, "", false).unwrap();
        c.pwrite(&[9; 16], 0, 0).unwrap();
        let mut buf = [0u8; 16];
        c.pread(&mut buf, 0, 0).unwrap();
        assert_eq!(buf, [9; 16]);
        c.pread(&mut buf, 0, 0).unwrap(); // breaks, reopened read-only
        assert_eq!(buf, [9; 16]);
        assert_eq!(r.readonly_opens.load(Ordering::SeqCst), 1);
        let e = c.pwrite(&[1; 16], 0, 0).unwrap_err();
        assert_eq!(e.errno(), Errno::EROFS);
    }

    #[test]
    fn a_reopen_for_a_connection_already_replaced_is_skipped() {
        // Two requests fail on generation 0: the first reopens, the second
        // finds generation 1 in place and retries on it without reopening.
        let r = rig(5, &[]);
        let plugin_only = Chain {
            filters: vec![],
            plugin: Box::new(Flaky {
                disk: Arc::new(Mutex::new(vec![0; 1 << 20])),
                reads_ok: 5,
                opens: r.opens.clone(),
                readonly_opens: r.readonly_opens.clone(),
                failing_opens: r.failing_opens.clone(),
            }),
        }
        .into_stack();
        let backend = plugin_only.backend.clone();
        let lower = Lower {
            slot: RwLock::new(Slot {
                ctx: Some(backend.open(false, "", false).unwrap()),
                generation: 0,
            }),
            backend,
            readonly: false,
            export: String::new(),
            is_tls: false,
        };
        assert_eq!(r.opens.load(Ordering::SeqCst), 1);
        assert!(lower.reopen(0, false).unwrap());
        assert!(!lower.reopen(0, false).unwrap());
        assert_eq!(r.opens.load(Ordering::SeqCst), 2);
        assert_eq!(lower.read().generation, 1);
        assert!(lower.reopen(1, false).unwrap());
        assert_eq!(r.opens.load(Ordering::SeqCst), 3);
    }
}
