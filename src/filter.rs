//! The filter interface: what a filter (`--filter=NAME`) implements.
//!
//! A filter sits between the client and the next layer (another filter or
//! the plugin).  Like nbdkit's filters (nbdkit-filter(3)) it sees every call
//! on its way down and may change, answer or refuse it.  Everything has a
//! pass-through default, so a filter is one file overriding only what it
//! changes:
//!
//! - [`Filter`] is the global object: configuration, lifecycle, export
//!   listing, and `open`, which opens the next layer and returns the
//!   filter's per-connection object;
//! - [`FilterContext`] is that per-connection object; its only required
//!   method returns the next layer's context, and every data call defaults to
//!   forwarding there.
//!
//! nbdkit's filter hooks map as follows: `config`, `config_complete`,
//! `thread_model`, `get_ready`, `after_fork`, `cleanup`, `preconnect`,
//! `list_exports`, `default_export` and `open` are [`Filter`] methods;
//! `prepare`, `finalize`, `get_size`, every `can_*` and every data call are
//! [`FilterContext`] methods; `close` is dropping the context.  The order
//! follows nbdkit: `config*`, `preconnect`, `list_exports`,
//! `default_export`, `open`, `finalize` and `close` travel outermost first;
//! `get_ready`, `after_fork` and `prepare` innermost first.

use crate::error::Result;
use crate::extents::Extents;
use crate::layers::{Backend, Context};
use crate::plugin::{BlockSize, CacheMode, ExportInfo, FuaMode, ThreadModel, ZeroMode};
use crate::server::peer::Peer;
use std::sync::Arc;

/// A filter: the global, configured object.
pub trait Filter: Send + Sync {
    /// Short name (`--filter=NAME`).
    fn name(&self) -> &'static str;

    fn version(&self) -> &'static str {
        crate::VERSION
    }

    fn longname(&self) -> Option<&'static str> {
        None
    }

    fn description(&self) -> &'static str {
        ""
    }

    /// Lines describing the filter's parameters (`--help`).
    fn config_help(&self) -> &'static str {
        ""
    }

    /// Offered every `key=value` parameter before the layers below it.
    /// Return `Ok(true)` to consume it, `Ok(false)` to pass it on.
    fn config(&mut self, _key: &str, _value: &str) -> Result<bool> {
        Ok(false)
    }

    /// [`Filter::config`] for a value that may be any bytes.  The default
    /// offers UTF-8 values to `config` and passes the rest on (a filter that
    /// takes paths overrides it).
    fn config_os(&mut self, key: &str, value: &std::ffi::OsStr) -> Result<bool> {
        match value.to_str() {
            Some(v) => self.config(key, v),
            None => Ok(false),
        }
    }

    fn config_complete(&mut self) -> Result<()> {
        Ok(())
    }

    /// `-D NAME.FLAG=VALUE` for this filter: return `Ok(true)` if `flag` is
    /// one of its debug flags (nbdkit's `NAME_debug_FLAG` variables).
    fn debug_flag(&mut self, _flag: &str, _value: &str) -> Result<bool> {
        Ok(false)
    }

    /// Extra `key=value` lines for `--dump-plugin` (printed after
    /// `NAME_path=` and `NAME_name=`).
    fn dump_plugin(&self) -> Vec<String> {
        Vec::new()
    }

    fn thread_model(&self) -> ThreadModel {
        ThreadModel::Parallel
    }

    /// Whether this filter's own work on a data request never waits (no
    /// I/O, no sleeping), so that a stack over a quick plugin stays quick
    /// (see [`crate::plugin::Plugin::quick_requests`]).  A filter that does
    /// not say is taken to wait.
    fn quick_requests(&self) -> bool {
        false
    }

    fn get_ready(&self) -> Result<()> {
        Ok(())
    }

    fn after_fork(&self) -> Result<()> {
        Ok(())
    }

    fn cleanup(&self) {}

    /// A client has connected; nothing has been exchanged with it yet.
    /// Refuse it by returning an error (the connection is then closed), or
    /// let it proceed by passing the call on.  `peer` is who connected (also
    /// available later on the connection thread as
    /// [`crate::server::peer::current`]).
    fn preconnect(&self, next: &dyn Backend, readonly: bool, peer: &Peer) -> Result<()> {
        next.preconnect(readonly, peer)
    }

    fn list_exports(
        &self,
        next: &dyn Backend,
        readonly: bool,
        is_tls: bool,
    ) -> Result<Vec<ExportInfo>> {
        next.list_exports(readonly, is_tls)
    }

    fn default_export(&self, next: &dyn Backend, readonly: bool, is_tls: bool) -> Result<String> {
        next.default_export(readonly, is_tls)
    }

    /// Whether this filter leaves every connection exactly as the layer
    /// below would have it (nothing to prepare, finalize, change or
    /// watch).  Then [`Filter::open`] is not called: the layer's backend
    /// hands out the next layer's context as its own, so a request through
    /// the filter costs no call at all.  Only `nofilter` says so.
    fn transparent(&self) -> bool {
        false
    }

    /// Open the next layer (possibly with other arguments) and wrap it.
    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        Ok(Box::new(PassThrough(next.open(readonly, export, is_tls)?)))
    }

    /// What the server calls to open a connection.  The default calls
    /// [`Filter::open`]; a filter that must keep the next layer to open it
    /// again later (the `retry` filter reopens it after a failure, as
    /// nbdkit's `next->reopen`) overrides this instead.
    fn open_shared(
        &self,
        next: &Arc<dyn Backend>,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        self.open(&**next, readonly, export, is_tls)
    }
}

/// A context that forwards everything to the next layer.
pub struct PassThrough(pub Box<dyn Context>);

impl FilterContext for PassThrough {
    fn next(&self) -> &dyn Context {
        &*self.0
    }
}

/// A context for filters that only want to run code when a connection
/// closes: `Guarded(guard, next)` forwards everything and, when dropped,
/// drops the guard (the filter's `close`) before the next layer's context.
pub struct Guarded<G: Send + Sync>(pub G, pub Box<dyn Context>);

impl<G: Send + Sync> FilterContext for Guarded<G> {
    fn next(&self) -> &dyn Context {
        &*self.1
    }
}

/// A filter's per-connection object.  Dropping it closes the filter's
/// connection, then the next layer's (outermost first, as nbdkit): a
/// filter's `close` hook is its context's `Drop`.
pub trait FilterContext: Send + Sync {
    /// The next layer's context.
    fn next(&self) -> &dyn Context;

    /// After the next layer has prepared.
    fn prepare(&self, _readonly: bool) -> Result<()> {
        Ok(())
    }
    /// Before the next layer finalizes.
    fn finalize(&self) -> Result<()> {
        Ok(())
    }
    fn get_size(&self) -> Result<u64> {
        self.next().get_size()
    }
    fn export_description(&self) -> Result<Option<String>> {
        self.next().export_description()
    }
    fn block_size(&self) -> Result<Option<BlockSize>> {
        self.next().block_size()
    }
    fn can_write(&self) -> Result<bool> {
        self.next().can_write()
    }
    fn can_flush(&self) -> Result<bool> {
        self.next().can_flush()
    }
    fn is_rotational(&self) -> Result<bool> {
        self.next().is_rotational()
    }
    fn can_trim(&self) -> Result<bool> {
        self.next().can_trim()
    }
    fn can_zero(&self) -> Result<ZeroMode> {
        self.next().can_zero()
    }
    fn can_fast_zero(&self) -> Result<bool> {
        self.next().can_fast_zero()
    }
    fn can_extents(&self) -> Result<bool> {
        self.next().can_extents()
    }
    fn can_fua(&self) -> Result<FuaMode> {
        self.next().can_fua()
    }
    fn can_multi_conn(&self) -> Result<bool> {
        self.next().can_multi_conn()
    }
    fn can_cache(&self) -> Result<CacheMode> {
        self.next().can_cache()
    }
    fn pread(&self, buf: &mut [u8], offset: u64, flags: u32) -> Result<()> {
        self.next().pread(buf, offset, flags)
    }
    fn pwrite(&self, buf: &[u8], offset: u64, flags: u32) -> Result<()> {
        self.next().pwrite(buf, offset, flags)
    }
    fn flush(&self, flags: u32) -> Result<()> {
        self.next().flush(flags)
    }
    fn trim(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.next().trim(count, offset, flags)
    }
    fn zero(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.next().zero(count, offset, flags)
    }
    fn extents(&self, extents: &mut Extents, flags: u32) -> Result<()> {
        self.next().extents(extents, flags)
    }
    fn cache(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.next().cache(count, offset, flags)
    }
}
