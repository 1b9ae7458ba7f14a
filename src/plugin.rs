//! The plugin interface: what a plugin (memory, null, file, ...) implements.
//!
//! It follows nbdkit's plugin callbacks (nbdkit-plugin(3)): a [`Plugin`] is the
//! global, configured object; [`Plugin::open`] returns a per-connection
//! [`Handle`] on which data callbacks run.  Every capability has a default that
//! matches nbdkit's default when a plugin leaves the callback out, so a plugin
//! overrides only what differs.  Emulation (FUA by flush, zero by writes,
//! cache by reads) is not done here: the server's plugin adapter does it,
//! driven by the answers of the `can_*` methods.
//!
//! Handles are shared between the connection's worker threads: methods take
//! `&self`, and a plugin whose handle is not safe to use concurrently declares
//! a stricter [`ThreadModel`] instead of locking internally.

use crate::error::{Error, Result};
use crate::extents::Extents;
use nix::errno::Errno;

/// How much concurrency a plugin (or filter) tolerates, from the most to the
/// least restrictive.  The server uses the most restrictive model of all
/// layers.  Order matters: `min()` of two models is the stricter one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ThreadModel {
    /// One connection at a time.
    SerializeConnections,
    /// Many connections, but one request at a time across all of them.
    SerializeAllRequests,
    /// One request at a time per connection.
    SerializeRequests,
    /// Requests run concurrently, even on one connection.
    Parallel,
}

impl ThreadModel {
    /// nbdkit's name for the model, as printed by `--dump-plugin`.
    pub fn name(self) -> &'static str {
        match self {
            ThreadModel::SerializeConnections => "serialize_connections",
            ThreadModel::SerializeAllRequests => "serialize_all_requests",
            ThreadModel::SerializeRequests => "serialize_requests",
            ThreadModel::Parallel => "parallel",
        }
    }
}

/// Answer of `can_fua`: how FUA (force unit access) writes are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FuaMode {
    /// FUA is not supported (not advertised to clients).
    None,
    /// The server emulates FUA by calling `flush` after the write.
    Emulate,
    /// The plugin honours the `fua` argument itself.
    Native,
}

/// Answer of `can_zero`: how write-zeroes requests are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ZeroMode {
    /// Write-zeroes is not advertised.
    None,
    /// The server writes buffers of zeroes with `pwrite`.
    Emulate,
    /// The plugin's `zero` is called (and may still fall back, see [`Handle::zero`]).
    Native,
}

/// Answer of `can_cache`: how cache (prefetch) requests are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CacheMode {
    /// Cache requests are not advertised.
    None,
    /// The server reads the range and discards the data.
    Emulate,
    /// The plugin's `cache` is called.
    Native,
}

/// One entry of an export list (`NBD_OPT_LIST`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub name: String,
    pub description: Option<String>,
}

impl ExportInfo {
    /// An export with a name and no description.
    pub fn named(name: impl Into<String>) -> Self {
        ExportInfo {
            name: name.into(),
            description: None,
        }
    }
}

/// Block size constraints (`NBD_INFO_BLOCK_SIZE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize {
    pub minimum: u32,
    pub preferred: u32,
    pub maximum: u32,
}

/// Flags passed to [`Handle::zero`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ZeroFlags {
    /// The plugin may punch a hole instead of writing zeroes.
    pub may_trim: bool,
    /// The data must be durable before returning.
    pub fua: bool,
    /// Fail at once with `ENOTSUP` unless zeroing is faster than writing.
    pub fast: bool,
}

/// What `--dump-plugin` shows about a plugin loaded from a shared object
/// (nbdkit's C plugin ABI, see `plugins::cabi`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedObjectInfo {
    pub path: String,
    pub api_version: i32,
    pub struct_size: u64,
    pub errno_is_preserved: bool,
    /// The thread model the plugin declared at compile time.
    pub max_thread_model: ThreadModel,
}

/// A plugin: the global, configured object (nbdkit's `struct nbdkit_plugin`).
pub trait Plugin: Send + Sync {
    /// Short name (`memory`, `file`, ...).
    fn name(&self) -> &'static str;

    /// Version printed by `--version` and `--dump-plugin`.
    fn version(&self) -> &'static str {
        crate::VERSION
    }

    /// Longer name shown by `--help`.
    fn longname(&self) -> Option<&'static str> {
        None
    }

    /// One-line description shown by `--help`.
    fn description(&self) -> &'static str {
        ""
    }

    /// The key a bare `VALUE` on the command line stands for (`memory 1G` =
    /// `memory size=1G`).
    fn magic_config_key(&self) -> Option<&'static str> {
        None
    }

    /// Lines describing the parameters, shown by `PLUGIN --help`.
    fn config_help(&self) -> &'static str {
        ""
    }

    /// Names of the nbdkit callbacks this plugin implements, for the
    /// `has_CALLBACK=1` lines of `--dump-plugin` (for example `"pwrite"`).
    fn callbacks(&self) -> &'static [&'static str] {
        &[]
    }

    /// Accept one `key=value` parameter.  Unknown keys must be refused with
    /// [`Error::config`] (the default refuses every key).
    fn config(&mut self, key: &str, _value: &str) -> Result<()> {
        Err(Error::config(format!("unknown parameter '{key}'")))
    }

    /// Accept one parameter whose value may be any bytes (as a path may be).
    /// The default hands UTF-8 values to [`Plugin::config`] and refuses the
    /// rest; plugins taking paths override it.
    fn config_os(&mut self, key: &str, value: &std::ffi::OsStr) -> Result<()> {
        match value.to_str() {
            Some(v) => self.config(key, v),
            None => Err(crate::layers::not_utf8(key, value)),
        }
    }

    /// Called once all parameters are in: check that the configuration is
    /// complete and consistent (required parameters present, files exist).
    fn config_complete(&mut self) -> Result<()> {
        Ok(())
    }

    /// `-D NAME.FLAG=VALUE` for this plugin: return `Ok(true)` if `flag` is
    /// one of its debug flags (nbdkit's `NAME_debug_FLAG` variables).
    fn debug_flag(&mut self, _flag: &str, _value: &str) -> Result<bool> {
        Ok(false)
    }

    /// For a plugin loaded from a `.so`: its path and ABI details.
    fn shared_object(&self) -> Option<SharedObjectInfo> {
        None
    }

    /// Extra `key=value` lines for `--dump-plugin`.
    fn dump_plugin(&self) -> Vec<String> {
        Vec::new()
    }

    /// The concurrency this plugin tolerates (after `config_complete`).
    fn thread_model(&self) -> ThreadModel {
        ThreadModel::Parallel
    }

    /// Whether every data request is answered from memory in microseconds,
    /// never waiting for a disk, the network or a timer.  The server may
    /// then run a request on the worker that read it instead of handing it
    /// on (see `server::transmission`).  Our own hint; nbdkit has none.
    fn quick_requests(&self) -> bool {
        false
    }

    /// Last check before serving; errors here are still shown to the user.
    fn get_ready(&self) -> Result<()> {
        Ok(())
    }

    /// Called once in the serving process, before any connection; start
    /// background threads here, not earlier.
    fn after_fork(&self) -> Result<()> {
        Ok(())
    }

    /// Called once at exit, after the last connection has closed.
    fn cleanup(&self) {}

    /// A client connected (nothing exchanged yet); an error refuses it.
    fn preconnect(&self, _readonly: bool, _peer: &crate::server::peer::Peer) -> Result<()> {
        Ok(())
    }

    /// The exports to advertise for `NBD_OPT_LIST`.  The default is one
    /// export, the default export.
    fn list_exports(&self, readonly: bool, is_tls: bool) -> Result<Vec<ExportInfo>> {
        Ok(vec![ExportInfo::named(
            self.default_export(readonly, is_tls)?,
        )])
    }

    /// The canonical name of the default export `""`.
    fn default_export(&self, _readonly: bool, _is_tls: bool) -> Result<String> {
        Ok(String::new())
    }

    /// Open a connection to `export_name`.  `readonly` is true when the
    /// client or the command line asked for a read-only export; a plugin may
    /// then open its backing store read-only.
    fn open(&self, readonly: bool, export_name: &str, is_tls: bool) -> Result<Box<dyn Handle>>;
}

/// A plugin's per-connection state (nbdkit's handle and data callbacks).
///
/// Offsets and counts passed to data methods have already been checked by
/// the server against the export size, and flags against the capabilities.
pub trait Handle: Send + Sync {
    /// Size of the export in bytes.
    fn get_size(&self) -> Result<u64>;

    /// Description for `NBD_INFO_DESCRIPTION`.
    fn export_description(&self) -> Result<Option<String>> {
        Ok(None)
    }

    /// Block size constraints, if the plugin has any.
    fn block_size(&self) -> Result<Option<BlockSize>> {
        Ok(None)
    }

    /// Whether writes are possible (default: no).
    fn can_write(&self) -> Result<bool> {
        Ok(false)
    }

    /// Whether `flush` does anything useful (default: no).
    fn can_flush(&self) -> Result<bool> {
        Ok(false)
    }

    /// Whether the backing store is rotational media.
    fn is_rotational(&self) -> Result<bool> {
        Ok(false)
    }

    /// Whether `trim` is supported (default: no).
    fn can_trim(&self) -> Result<bool> {
        Ok(false)
    }

    /// How write-zeroes is done (default: emulated with `pwrite`).
    fn can_zero(&self) -> Result<ZeroMode> {
        Ok(ZeroMode::Emulate)
    }

    /// Whether fast zero requests can be honoured.  The default follows
    /// nbdkit: true when zeroing is emulated (emulation fails fast), false
    /// when the plugin zeroes natively.
    fn can_fast_zero(&self) -> Result<bool> {
        Ok(self.can_zero()? == ZeroMode::Emulate)
    }

    /// Whether `extents` answers block-status queries (default: no, and the
    /// server reports the whole disk as allocated data).
    fn can_extents(&self) -> Result<bool> {
        Ok(false)
    }

    /// How FUA is handled (default: emulated by flush when flush works).
    fn can_fua(&self) -> Result<FuaMode> {
        Ok(if self.can_flush()? {
            FuaMode::Emulate
        } else {
            FuaMode::None
        })
    }

    /// Whether every connection sees the same data and a flush on one makes
    /// writes on all durable (`NBD_FLAG_CAN_MULTI_CONN`).
    fn can_multi_conn(&self) -> Result<bool> {
        Ok(false)
    }

    /// How cache requests are handled (default: not advertised).
    fn can_cache(&self) -> Result<CacheMode> {
        Ok(CacheMode::None)
    }

    /// Read `buf.len()` bytes at `offset`.
    fn pread(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Write `buf` at `offset`; `fua` is only ever set when `can_fua` is
    /// [`FuaMode::Native`].
    fn pwrite(&self, _buf: &[u8], _offset: u64, _fua: bool) -> Result<()> {
        Err(Error::new(Errno::EROFS, "writes are not supported"))
    }

    /// Make all completed writes durable.
    fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// Discard `[offset, offset+count)` (a hint: reading back may give old
    /// data or zeroes).
    fn trim(&self, _count: u64, _offset: u64, _fua: bool) -> Result<()> {
        Err(Error::new(Errno::EINVAL, "trim is not supported"))
    }

    /// Make `[offset, offset+count)` read as zeroes.  Returning `ENOTSUP` or
    /// `EOPNOTSUPP` makes the server fall back to writing zeroes (unless the
    /// request was a fast zero, which then fails with `ENOTSUP`).
    fn zero(&self, _count: u64, _offset: u64, _flags: ZeroFlags) -> Result<()> {
        Err(Error::new(Errno::EOPNOTSUPP, "zero is not supported"))
    }

    /// Describe allocation in `extents`' window, adding at least one extent
    /// that begins at or before its start.  `req_one` means the client only
    /// needs the first extent.
    fn extents(&self, extents: &mut Extents, _req_one: bool) -> Result<()> {
        extents.add(extents.start(), extents.end() - extents.start(), 0)
    }

    /// Prefetch `[offset, offset+count)` (called when `can_cache` is Native).
    fn cache(&self, _count: u64, _offset: u64) -> Result<()> {
        Ok(())
    }
}
