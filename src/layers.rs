//! The chain of layers the server drives: filters (outermost first) over
//! one plugin.
//!
//! - [`Chain`] holds the layers while they are configured (`key=value`
//!   parameters go to the outermost layer that claims them).
//! - [`Stack`] is the configured, shared chain; its [`Backend`] is what the
//!   server calls to list exports and open connections.
//! - [`Context`] is one layer's per-connection object (nbdkit's "next_ops"):
//!   the server calls the outermost one; a filter's context calls the next.
//!
//! With `-v` every layer's backend and contexts are wrapped in a tracer that
//! prints nbdkit's `NAME: callback args` debug lines, so the order in which
//! calls travel through the layers is visible (and costs nothing without
//! `-v`).
//!
//! The plugin adapter ([`PluginContext`]) is where nbdkit's emulations live:
//! FUA by flush, write-zeroes by writing zeroes, cache by reading, block status
//! as all-data when the plugin has no extents.  Range and flag checks are the
//! server's (see `server::export`), done once at the top of the chain.

use crate::error::{Error, Result};
use crate::extents::Extents;
use crate::filter::{Filter, FilterContext};
use crate::plugin::{
    BlockSize, CacheMode, ExportInfo, FuaMode, Handle, Plugin, ThreadModel, ZeroFlags, ZeroMode,
};
use crate::server::peer::Peer;
use nix::errno::Errno;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

/// Flags passed down the chain with data calls (nbdkit's `NBDKIT_FLAG_*`).
pub mod flags {
    /// Force unit access: the data must be durable before the call returns.
    pub const FUA: u32 = 1;
    /// Zeroing may punch holes.
    pub const MAY_TRIM: u32 = 2;
    /// Fail zeroing at once with ENOTSUP unless it is fast.
    pub const FAST_ZERO: u32 = 4;
    /// Only the first extent is wanted.
    pub const REQ_ONE: u32 = 8;
}

/// Largest buffer the server hands to one read (also the cache-emulation
/// chunk): 64 MiB, as nbdkit.
pub const MAX_REQUEST_SIZE: u64 = 64 * 1024 * 1024;

/// A layer's per-connection object.  All methods may be called from several
/// worker threads at once when the thread model is parallel.
pub trait Context: Send + Sync {
    /// Called after open, inner layers first.
    fn prepare(&self, readonly: bool) -> Result<()>;
    /// Called before close, outer layers first.
    fn finalize(&self) -> Result<()>;
    fn get_size(&self) -> Result<u64>;
    fn export_description(&self) -> Result<Option<String>>;
    fn block_size(&self) -> Result<Option<BlockSize>>;
    fn can_write(&self) -> Result<bool>;
    fn can_flush(&self) -> Result<bool>;
    fn is_rotational(&self) -> Result<bool>;
    fn can_trim(&self) -> Result<bool>;
    fn can_zero(&self) -> Result<ZeroMode>;
    fn can_fast_zero(&self) -> Result<bool>;
    fn can_extents(&self) -> Result<bool>;
    fn can_fua(&self) -> Result<FuaMode>;
    fn can_multi_conn(&self) -> Result<bool>;
    fn can_cache(&self) -> Result<CacheMode>;
    fn pread(&self, buf: &mut [u8], offset: u64, flags: u32) -> Result<()>;
    fn pwrite(&self, buf: &[u8], offset: u64, flags: u32) -> Result<()>;
    fn flush(&self, flags: u32) -> Result<()>;
    fn trim(&self, count: u64, offset: u64, flags: u32) -> Result<()>;
    fn zero(&self, count: u64, offset: u64, flags: u32) -> Result<()>;
    fn extents(&self, extents: &mut Extents, flags: u32) -> Result<()>;
    fn cache(&self, count: u64, offset: u64, flags: u32) -> Result<()>;
}

/// A configured layer, as seen from the layer above it (or the server).
pub trait Backend: Send + Sync {
    /// The layer's name (for debug messages).
    fn name(&self) -> &str;
    /// A client connected: may it proceed to the handshake?  Called before
    /// any NBD byte is exchanged, outermost layer first.
    fn preconnect(&self, readonly: bool, peer: &Peer) -> Result<()>;
    fn list_exports(&self, readonly: bool, is_tls: bool) -> Result<Vec<ExportInfo>>;
    fn default_export(&self, readonly: bool, is_tls: bool) -> Result<String>;
    fn open(&self, readonly: bool, export: &str, is_tls: bool) -> Result<Box<dyn Context>>;
}

/// Is `key` a valid parameter key (starts with an ASCII letter; letters,
/// digits, `.`, `_`, `-` only)?
/// The error for a parameter value that is not UTF-8 where text is needed.
pub fn not_utf8(key: &str, value: &OsStr) -> Error {
    Error::config(format!(
        "{key}: value is not valid UTF-8: {}",
        value.to_string_lossy()
    ))
}

pub fn is_config_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The layers while they are being configured.
pub struct Chain {
    /// Outermost first.
    pub filters: Vec<Box<dyn Filter>>,
    pub plugin: Box<dyn Plugin>,
}

impl Chain {
    /// Hand one command-line parameter to the layers: `key=value` goes to
    /// the outermost layer that claims the key; a bare value is the plugin's
    /// magic parameter.
    pub fn config_param(&mut self, param: impl AsRef<OsStr>) -> Result<()> {
        let param = param.as_ref();
        let bytes = param.as_bytes();
        let split = bytes.iter().position(|&b| b == b'=').and_then(|i| {
            let key = std::str::from_utf8(&bytes[..i]).ok()?;
            is_config_key(key).then(|| (key.to_string(), OsStr::from_bytes(&bytes[i + 1..])))
        });
        let (key, value) = match split {
            Some(kv) => kv,
            None => match self.plugin.magic_config_key() {
                Some(magic) => (magic.to_string(), param),
                None => {
                    return Err(Error::config(format!(
                        "expecting key=value on the command line but got: {}",
                        param.to_string_lossy()
                    )))
                }
            },
        };
        let shown = value.to_string_lossy();
        for f in &mut self.filters {
            trace(f.name(), || format!("config key={key}, value={shown}"));
            if f.config_os(&key, value)? {
                return Ok(());
            }
        }
        trace(self.plugin.name(), || {
            format!("config key={key}, value={shown}")
        });
        self.plugin.config_os(&key, value).map_err(|e| {
            if e.message().starts_with("unknown parameter") {
                let mut layers: Vec<&str> = self.filters.iter().map(|f| f.name()).collect();
                layers.push(self.plugin.name());
                Error::config(format!(
                    "{}: {} (try 'nbdkit {} --help')",
                    layers.join(", "),
                    e.message(),
                    self.plugin.name()
                ))
            } else {
                e
            }
        })
    }

    /// `config_complete` on every layer, outermost first.
    pub fn config_complete(&mut self) -> Result<()> {
        for f in &mut self.filters {
            trace(f.name(), || "config_complete".into());
            f.config_complete()?;
        }
        trace(self.plugin.name(), || "config_complete".into());
        self.plugin.config_complete()
    }

    /// The most restrictive thread model of all layers.
    pub fn thread_model(&self) -> ThreadModel {
        self.filters
            .iter()
            .map(|f| f.thread_model())
            .fold(self.plugin.thread_model(), ThreadModel::min)
    }

    /// Freeze the configured chain for serving.
    pub fn into_stack(self) -> Stack {
        SERVER_THREAD_MODEL.store(self.thread_model() as u8, Ordering::Relaxed);
        let plugin: Arc<dyn Plugin> = Arc::from(self.plugin);
        let filters: Vec<Arc<dyn Filter>> = self.filters.into_iter().map(Arc::from).collect();
        let traced = |b: Arc<dyn Backend>| -> Arc<dyn Backend> {
            if crate::log::verbose() {
                Arc::new(Traced(b))
            } else {
                b
            }
        };
        let mut backend = traced(Arc::new(PluginBackend {
            plugin: plugin.clone(),
        }));
        for f in filters.iter().rev() {
            backend = traced(Arc::new(FilterBackend {
                transparent: f.transparent(),
                filter: f.clone(),
                next: backend,
            }));
        }
        Stack {
            filters,
            plugin,
            backend,
        }
    }
}

/// The thread model of the whole server, set when the chain is frozen
/// (what nbdkit passes to a filter's `get_ready`).
static SERVER_THREAD_MODEL: AtomicU8 = AtomicU8::new(ThreadModel::Parallel as u8);

/// The server's final thread model (the most restrictive of all layers),
/// for filters whose `get_ready` or connections depend on it.
pub fn server_thread_model() -> ThreadModel {
    match SERVER_THREAD_MODEL.load(Ordering::Relaxed) {
        0 => ThreadModel::SerializeConnections,
        1 => ThreadModel::SerializeAllRequests,
        2 => ThreadModel::SerializeRequests,
        _ => ThreadModel::Parallel,
    }
}

/// The configured chain, shared by all connections.
pub struct Stack {
    /// Outermost first.
    pub filters: Vec<Arc<dyn Filter>>,
    pub plugin: Arc<dyn Plugin>,
    /// The outermost layer.
    pub backend: Arc<dyn Backend>,
}

impl Stack {
    /// Whether every layer answers data requests without waiting (see
    /// [`Plugin::quick_requests`]).
    pub fn quick_requests(&self) -> bool {
        self.plugin.quick_requests() && self.filters.iter().all(|f| f.quick_requests())
    }

    /// `get_ready` on every layer, innermost first.
    pub fn get_ready(&self) -> Result<()> {
        trace(self.plugin.name(), || "get_ready".into());
        self.plugin.get_ready()?;
        for f in self.filters.iter().rev() {
            trace(f.name(), || "get_ready".into());
            f.get_ready()?;
        }
        Ok(())
    }

    /// `after_fork` on every layer, innermost first.
    pub fn after_fork(&self) -> Result<()> {
        trace(self.plugin.name(), || "after_fork".into());
        self.plugin.after_fork()?;
        for f in self.filters.iter().rev() {
            trace(f.name(), || "after_fork".into());
            f.after_fork()?;
        }
        Ok(())
    }

    /// `preconnect` down the chain, outermost first (the first refusal
    /// wins).
    pub fn preconnect(&self, readonly: bool, peer: &Peer) -> Result<()> {
        self.backend.preconnect(readonly, peer)
    }

    /// `cleanup` on every layer, outermost first.
    pub fn cleanup(&self) {
        for f in &self.filters {
            trace(f.name(), || "cleanup".into());
            f.cleanup();
        }
        trace(self.plugin.name(), || "cleanup".into());
        self.plugin.cleanup();
    }
}

struct PluginBackend {
    plugin: Arc<dyn Plugin>,
}

impl Backend for PluginBackend {
    fn name(&self) -> &str {
        self.plugin.name()
    }
    fn preconnect(&self, readonly: bool, peer: &Peer) -> Result<()> {
        self.plugin.preconnect(readonly, peer)
    }
    fn list_exports(&self, readonly: bool, is_tls: bool) -> Result<Vec<ExportInfo>> {
        self.plugin.list_exports(readonly, is_tls)
    }
    fn default_export(&self, readonly: bool, is_tls: bool) -> Result<String> {
        self.plugin.default_export(readonly, is_tls)
    }
    fn open(&self, readonly: bool, export: &str, is_tls: bool) -> Result<Box<dyn Context>> {
        let handle = self.plugin.open(readonly, export, is_tls)?;
        Ok(Box::new(PluginContext {
            handle,
            fua: OnceLock::new(),
            zero: OnceLock::new(),
            extents: OnceLock::new(),
            cache: OnceLock::new(),
        }))
    }
}

/// A plugin handle seen as a [`Context`], with nbdkit's emulations.
pub struct PluginContext {
    handle: Box<dyn Handle>,
    fua: OnceLock<FuaMode>,
    zero: OnceLock<ZeroMode>,
    extents: OnceLock<bool>,
    cache: OnceLock<CacheMode>,
}

/// Ask once, remember the answer (errors are not remembered).
fn cached<T: Copy>(cell: &OnceLock<T>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if let Some(v) = cell.get() {
        return Ok(*v);
    }
    let v = f()?;
    Ok(*cell.get_or_init(|| v))
}

/// A buffer of zeroes for write-zeroes emulation (in .bss: costs nothing
/// until touched, and is only ever read).
pub(crate) static ZEROES: [u8; 1 << 20] = [0; 1 << 20];

impl PluginContext {
    fn fua_mode(&self) -> Result<FuaMode> {
        cached(&self.fua, || self.handle.can_fua())
    }

    /// After a write-like call: emulate FUA with a flush when needed.
    fn finish_fua(&self, flags: u32) -> Result<()> {
        if flags & flags::FUA != 0 && self.fua_mode()? == FuaMode::Emulate {
            self.handle.flush()?;
        }
        Ok(())
    }

    fn native_fua(&self, flags: u32) -> Result<bool> {
        Ok(flags & flags::FUA != 0 && self.fua_mode()? == FuaMode::Native)
    }

    fn write_zeroes(&self, mut count: u64, mut offset: u64) -> Result<()> {
        while count > 0 {
            let n = count.min(ZEROES.len() as u64) as usize;
            self.handle.pwrite(&ZEROES[..n], offset, false)?;
            count -= n as u64;
            offset += n as u64;
        }
        Ok(())
    }
}

impl Context for PluginContext {
    fn prepare(&self, _readonly: bool) -> Result<()> {
        Ok(())
    }
    fn finalize(&self) -> Result<()> {
        Ok(())
    }
    fn get_size(&self) -> Result<u64> {
        self.handle.get_size()
    }
    fn export_description(&self) -> Result<Option<String>> {
        self.handle.export_description()
    }
    fn block_size(&self) -> Result<Option<BlockSize>> {
        self.handle.block_size()
    }
    fn can_write(&self) -> Result<bool> {
        self.handle.can_write()
    }
    fn can_flush(&self) -> Result<bool> {
        self.handle.can_flush()
    }
    fn is_rotational(&self) -> Result<bool> {
        self.handle.is_rotational()
    }
    fn can_trim(&self) -> Result<bool> {
        self.handle.can_trim()
    }
    fn can_zero(&self) -> Result<ZeroMode> {
        cached(&self.zero, || self.handle.can_zero())
    }
    fn can_fast_zero(&self) -> Result<bool> {
        self.handle.can_fast_zero()
    }
    fn can_extents(&self) -> Result<bool> {
        cached(&self.extents, || self.handle.can_extents())
    }
    fn can_fua(&self) -> Result<FuaMode> {
        self.fua_mode()
    }
    fn can_multi_conn(&self) -> Result<bool> {
        self.handle.can_multi_conn()
    }
    fn can_cache(&self) -> Result<CacheMode> {
        cached(&self.cache, || self.handle.can_cache())
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: u32) -> Result<()> {
        self.handle.pread(buf, offset)
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: u32) -> Result<()> {
        self.handle.pwrite(buf, offset, self.native_fua(flags)?)?;
        self.finish_fua(flags)
    }

    fn flush(&self, _flags: u32) -> Result<()> {
        self.handle.flush()
    }

    fn trim(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.handle.trim(count, offset, self.native_fua(flags)?)?;
        self.finish_fua(flags)
    }

    fn zero(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        let fast = flags & flags::FAST_ZERO != 0;
        if self.can_zero()? == ZeroMode::Native {
            let zf = ZeroFlags {
                may_trim: flags & flags::MAY_TRIM != 0,
                fua: self.native_fua(flags)?,
                fast,
            };
            match self.handle.zero(count, offset, zf) {
                Ok(()) => return self.finish_fua(flags),
                // ENOTSUP and EOPNOTSUPP are the same value on Linux.
                Err(e) if e.errno() == Errno::EOPNOTSUPP => {
                    if fast {
                        return Err(Error::new(Errno::ENOTSUP, e.message()));
                    }
                }
                Err(e) => return Err(e),
            }
        } else if fast {
            return Err(Error::new(
                Errno::ENOTSUP,
                "fast zero requested but zeroing is emulated",
            ));
        }
        self.write_zeroes(count, offset)?;
        if flags & flags::FUA != 0 && self.fua_mode()? != FuaMode::None {
            self.handle.flush()?;
        }
        Ok(())
    }

    fn extents(&self, extents: &mut Extents, flags: u32) -> Result<()> {
        if !self.can_extents()? {
            let (start, end) = (extents.start(), extents.end());
            return extents.add(start, end - start, 0);
        }
        self.handle.extents(extents, flags & flags::REQ_ONE != 0)?;
        match extents.next_offset() {
            Some(next) if next > extents.start() => Ok(()),
            _ => Err(Error::new(
                Errno::EINVAL,
                "extents: plugin must return at least one extent covering the start",
            )),
        }
    }

    fn cache(&self, count: u64, offset: u64, _flags: u32) -> Result<()> {
        match self.can_cache()? {
            CacheMode::Native => self.handle.cache(count, offset),
            CacheMode::Emulate => {
                emulate_cache(count, offset, |buf, off| self.handle.pread(buf, off))
            }
            CacheMode::None => Err(Error::new(Errno::EINVAL, "cache is not supported")),
        }
    }
}

struct FilterBackend {
    /// [`Filter::transparent`], asked once.
    transparent: bool,
    filter: Arc<dyn Filter>,
    next: Arc<dyn Backend>,
}

impl Backend for FilterBackend {
    fn name(&self) -> &str {
        self.filter.name()
    }
    fn preconnect(&self, readonly: bool, peer: &Peer) -> Result<()> {
        self.filter.preconnect(&*self.next, readonly, peer)
    }
    fn list_exports(&self, readonly: bool, is_tls: bool) -> Result<Vec<ExportInfo>> {
        self.filter.list_exports(&*self.next, readonly, is_tls)
    }
    fn default_export(&self, readonly: bool, is_tls: bool) -> Result<String> {
        self.filter.default_export(&*self.next, readonly, is_tls)
    }
    fn open(&self, readonly: bool, export: &str, is_tls: bool) -> Result<Box<dyn Context>> {
        if self.transparent {
            // The next layer's context serves as this layer's: no wrapper,
            // so no call is added to any request.
            return self.next.open(readonly, export, is_tls);
        }
        let ctx = self
            .filter
            .open_shared(&self.next, readonly, export, is_tls)?;
        Ok(Box::new(Filtered(ctx, OnceLock::new(), OnceLock::new())))
    }
}

/// A filter's per-connection object seen as a [`Context`], with its
/// answers to `can_extents` and `can_cache`: as for plugins, a layer that
/// has no extents is answered "all data" here, and a layer that asks for
/// cache emulation gets it with its own reads (at its own offsets), as
/// nbdkit's backend does for every layer.
struct Filtered(Box<dyn FilterContext>, OnceLock<bool>, OnceLock<CacheMode>);

impl Context for Filtered {
    fn prepare(&self, readonly: bool) -> Result<()> {
        self.0.next().prepare(readonly)?;
        self.0.prepare(readonly)
    }
    fn finalize(&self) -> Result<()> {
        self.0.finalize()?;
        self.0.next().finalize()
    }
    fn get_size(&self) -> Result<u64> {
        self.0.get_size()
    }
    fn export_description(&self) -> Result<Option<String>> {
        self.0.export_description()
    }
    fn block_size(&self) -> Result<Option<BlockSize>> {
        self.0.block_size()
    }
    fn can_write(&self) -> Result<bool> {
        self.0.can_write()
    }
    fn can_flush(&self) -> Result<bool> {
        self.0.can_flush()
    }
    fn is_rotational(&self) -> Result<bool> {
        self.0.is_rotational()
    }
    fn can_trim(&self) -> Result<bool> {
        self.0.can_trim()
    }
    fn can_zero(&self) -> Result<ZeroMode> {
        self.0.can_zero()
    }
    fn can_fast_zero(&self) -> Result<bool> {
        self.0.can_fast_zero()
    }
    fn can_extents(&self) -> Result<bool> {
        cached(&self.1, || self.0.can_extents())
    }
    fn can_fua(&self) -> Result<FuaMode> {
        self.0.can_fua()
    }
    fn can_multi_conn(&self) -> Result<bool> {
        self.0.can_multi_conn()
    }
    fn can_cache(&self) -> Result<CacheMode> {
        cached(&self.2, || self.0.can_cache())
    }
    fn pread(&self, buf: &mut [u8], offset: u64, flags: u32) -> Result<()> {
        self.0.pread(buf, offset, flags)
    }
    fn pwrite(&self, buf: &[u8], offset: u64, flags: u32) -> Result<()> {
        self.0.pwrite(buf, offset, flags)
    }
    fn flush(&self, flags: u32) -> Result<()> {
        self.0.flush(flags)
    }
    fn trim(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.0.trim(count, offset, flags)
    }
    fn zero(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.0.zero(count, offset, flags)
    }
    fn extents(&self, extents: &mut Extents, flags: u32) -> Result<()> {
        if !self.can_extents()? {
            return extents.add(extents.start(), extents.end() - extents.start(), 0);
        }
        self.0.extents(extents, flags)
    }
    fn cache(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        match self.can_cache()? {
            CacheMode::Native => self.0.cache(count, offset, flags),
            CacheMode::Emulate => {
                emulate_cache(count, offset, |buf, off| self.0.pread(buf, off, 0))
            }
            CacheMode::None => Err(Error::new(Errno::EINVAL, "cache is not supported")),
        }
    }
}

/// Cache emulation (nbdkit's for a layer that answers `can_cache` with
/// emulate): read `[offset, offset+count)` with `read`, in chunks of at
/// most [`MAX_REQUEST_SIZE`], and drop the data.
fn emulate_cache(
    count: u64,
    offset: u64,
    mut read: impl FnMut(&mut [u8], u64) -> Result<()>,
) -> Result<()> {
    let chunk = count.min(MAX_REQUEST_SIZE) as usize;
    let mut buf = vec![0u8; chunk];
    let (mut count, mut offset) = (count, offset);
    while count > 0 {
        let n = count.min(chunk as u64) as usize;
        read(&mut buf[..n], offset)?;
        count -= n as u64;
        offset += n as u64;
    }
    Ok(())
}

/// Print `NAME: what` when debugging (`-v`); `what` is only built then.
fn trace(name: &str, what: impl FnOnce() -> String) {
    if crate::log::verbose() {
        crate::log::debug(format!("{name}: {}", what()));
    }
}

fn bit(flags: u32, flag: u32) -> u8 {
    u8::from(flags & flag != 0)
}

/// A layer's backend seen through the `-v` tracer.
struct Traced(Arc<dyn Backend>);

impl Backend for Traced {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn preconnect(&self, readonly: bool, peer: &Peer) -> Result<()> {
        trace(self.name(), || "preconnect".into());
        self.0.preconnect(readonly, peer)
    }
    fn list_exports(&self, readonly: bool, is_tls: bool) -> Result<Vec<ExportInfo>> {
        trace(self.name(), || {
            format!(
                "list_exports readonly={} tls={}",
                u8::from(readonly),
                u8::from(is_tls)
            )
        });
        self.0.list_exports(readonly, is_tls)
    }
    fn default_export(&self, readonly: bool, is_tls: bool) -> Result<String> {
        trace(self.name(), || {
            format!(
                "default_export readonly={} tls={}",
                u8::from(readonly),
                u8::from(is_tls)
            )
        });
        self.0.default_export(readonly, is_tls)
    }
    fn open(&self, readonly: bool, export: &str, is_tls: bool) -> Result<Box<dyn Context>> {
        let name = self.name().to_string();
        trace(&name, || {
            format!(
                "open readonly={} exportname=\"{}\" tls={}",
                u8::from(readonly),
                export,
                u8::from(is_tls)
            )
        });
        let ctx = self.0.open(readonly, export, is_tls)?;
        trace(&name, || "open succeeded".into());
        Ok(Box::new(TracedContext(name, ctx)))
    }
}

/// A layer's context seen through the `-v` tracer.
struct TracedContext(String, Box<dyn Context>);

impl Drop for TracedContext {
    fn drop(&mut self) {
        trace(&self.0, || "close".into());
    }
}

/// Trace a call without arguments and forward it.
macro_rules! traced {
    ($($m:ident -> $t:ty),* $(,)?) => {
        $(fn $m(&self) -> Result<$t> {
            trace(&self.0, || stringify!($m).into());
            self.1.$m()
        })*
    };
}

impl Context for TracedContext {
    fn prepare(&self, readonly: bool) -> Result<()> {
        // Inner layers prepare first: trace on the way back out.
        let r = self.1.prepare(readonly);
        trace(&self.0, || {
            format!("prepare readonly={}", u8::from(readonly))
        });
        r
    }
    traced!(
        finalize -> (),
        get_size -> u64,
        export_description -> Option<String>,
        block_size -> Option<BlockSize>,
        can_write -> bool,
        can_flush -> bool,
        is_rotational -> bool,
        can_trim -> bool,
        can_zero -> ZeroMode,
        can_fast_zero -> bool,
        can_extents -> bool,
        can_fua -> FuaMode,
        can_multi_conn -> bool,
        can_cache -> CacheMode,
    );
    fn pread(&self, buf: &mut [u8], offset: u64, flags: u32) -> Result<()> {
        trace(&self.0, || {
            format!("pread count={} offset={offset}", buf.len())
        });
        self.1.pread(buf, offset, flags)
    }
    fn pwrite(&self, buf: &[u8], offset: u64, f: u32) -> Result<()> {
        trace(&self.0, || {
            format!(
                "pwrite count={} offset={offset} fua={}",
                buf.len(),
                bit(f, flags::FUA)
            )
        });
        self.1.pwrite(buf, offset, f)
    }
    fn flush(&self, f: u32) -> Result<()> {
        trace(&self.0, || "flush".into());
        self.1.flush(f)
    }
    fn trim(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        trace(&self.0, || {
            format!(
                "trim count={count} offset={offset} fua={}",
                bit(f, flags::FUA)
            )
        });
        self.1.trim(count, offset, f)
    }
    fn zero(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        trace(&self.0, || {
            format!(
                "zero count={count} offset={offset} may_trim={} fua={} fast={}",
                bit(f, flags::MAY_TRIM),
                bit(f, flags::FUA),
                bit(f, flags::FAST_ZERO)
            )
        });
        self.1.zero(count, offset, f)
    }
    fn extents(&self, extents: &mut Extents, f: u32) -> Result<()> {
        trace(&self.0, || {
            format!(
                "extents count={} offset={} req_one={}",
                extents.end() - extents.start(),
                extents.start(),
                bit(f, flags::REQ_ONE)
            )
        });
        self.1.extents(extents, f)
    }
    fn cache(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        trace(&self.0, || format!("cache count={count} offset={offset}"));
        self.1.cache(count, offset, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(plugin: &str, filters: &[&str]) -> Stack {
        Chain {
            filters: filters
                .iter()
                .map(|f| crate::filters::new_filter(f).expect("known filter"))
                .collect(),
            plugin: crate::plugins::new_plugin(plugin).expect("known plugin"),
        }
        .into_stack()
    }

    #[test]
    fn a_stack_is_quick_only_if_every_layer_is() {
        assert!(stack("memory", &[]).quick_requests());
        assert!(stack(
            "null",
            &["ip", "limit", "exitlast", "exitwhen", "noparallel"]
        )
        .quick_requests());
        // A filter that sleeps, or a plugin that waits for a disk.
        assert!(!stack("memory", &["ip", "delay"]).quick_requests());
        assert!(!stack("file", &[]).quick_requests());
        assert!(!stack("file", &["limit"]).quick_requests());
    }
}
