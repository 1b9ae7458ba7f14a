//! Loading nbdkit's C plugins (`.so` files) through nbdkit's stable plugin
//! ABI (nbdkit-plugin(3)), so every existing nbdkit plugin runs on our
//! server.  This module is the only place with `unsafe` for the ABI:
//!
//! - finding a plugin by short name or path ([`find`], [`plugindir`]);
//! - loading and registering it as nbdkit's `plugins.c` does ([`load`]):
//!   `plugin_init`, API version 1 or 2, copying `min(_struct_size, ours)`
//!   bytes of `struct nbdkit_plugin`, required callbacks, name syntax;
//! - the adapter: [`CPlugin`] implements our [`Plugin`] trait and its
//!   handles our [`Handle`] trait, with nbdkit's behaviour for missing
//!   callbacks, `errno_is_preserved` and `nbdkit_set_error`;
//! - the `nbdkit_*` functions plugins call ([`exports`], plus shim.c for
//!   the variadic ones), with per-call context kept in [`context`].

pub mod context;
mod exports;
mod ffi;

pub use exports::set_stdio_safe;

use crate::error::{Error, Result};
use crate::extents::Extents;
use crate::plugin::{
    BlockSize, CacheMode, ExportInfo, FuaMode, Handle, Plugin, SharedObjectInfo, ThreadModel,
    ZeroFlags, ZeroMode,
};
use context::Conn;
use ffi::NbdkitPlugin;
use nix::errno::Errno;
use std::ffi::{CStr, CString, OsString};
use std::os::raw::{c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once, OnceLock};

/// Where short plugin names are looked up: set at build time with the
/// `NBDKIT_PLUGINDIR` environment variable (see build.rs), by default
/// Debian's nbdkit plugin directory.
pub fn plugindir() -> PathBuf {
    PathBuf::from(env!("NBDKIT_BUILD_PLUGINDIR"))
}

/// A short plugin name (`data`, `S3`) as opposed to a path: none of the
/// characters nbdkit treats as making it a file name.
pub fn is_short_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| matches!(c, '/' | '.' | '\\' | ':' | ';' | ',' | '=' | ' '))
}

/// What a name that is not a built-in plugin resolves to.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// `$plugindir/nbdkit-NAME-plugin`, an executable script.
    Script(PathBuf),
    /// A shared object to dlopen (which may not exist: dlopen says so).
    SharedObject(PathBuf),
}

/// Resolve a plugin name that is not built in.
pub fn find(name: &str) -> Found {
    find_in(&plugindir(), name)
}

fn find_in(dir: &Path, name: &str) -> Found {
    if !is_short_name(name) {
        return Found::SharedObject(PathBuf::from(name));
    }
    let script = dir.join(format!("nbdkit-{name}-plugin"));
    if is_executable(&script) {
        return Found::Script(script);
    }
    Found::SharedObject(dir.join(format!("nbdkit-{name}-plugin.so")))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Run a plugin script as nbdkit does: exec it with the plugin argument
/// moved to `argv[0]` (its `#!` line names the interpreter, usually
/// `nbdkit LANGUAGE`).  Returns only on failure.
pub fn exec_script(script: &Path, name: &str, rest: &[OsString]) -> Error {
    use std::os::unix::process::CommandExt;
    let e = std::process::Command::new(script)
        .arg0(name)
        .args(rest)
        .exec();
    Error::io(e, format!("cannot run plugin script {}", script.display()))
}

/// Set in the parent of a `--run`/background fork: the plugin lives on in
/// the serving child, so the parent must not call its `.unload`.
static NO_UNLOAD: AtomicBool = AtomicBool::new(false);

/// Called by the process that forked off the server (it will not serve).
pub fn parent_after_fork() {
    NO_UNLOAD.store(true, Ordering::Relaxed);
}

/// dlerror's message for the last failed dl* call on this thread.
pub(crate) fn dlerror() -> String {
    // SAFETY: dlerror returns null or a valid C string owned by libc.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown dlopen error".into()
    } else {
        // SAFETY: non-null dlerror results are NUL-terminated.
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

/// A static string from the plugin's struct (it lives as long as the
/// library, which is never closed).
fn leak_str(p: *const c_char) -> Option<&'static str> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the plugin's string fields are NUL-terminated C strings that
    // stay valid while the library is loaded, and we never dlclose it.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy();
    Some(Box::leak(s.into_owned().into_boxed_str()))
}

fn thread_model_of(m: c_int) -> Option<ThreadModel> {
    Some(match m {
        ffi::THREAD_MODEL_SERIALIZE_CONNECTIONS => ThreadModel::SerializeConnections,
        ffi::THREAD_MODEL_SERIALIZE_ALL_REQUESTS => ThreadModel::SerializeAllRequests,
        ffi::THREAD_MODEL_SERIALIZE_REQUESTS => ThreadModel::SerializeRequests,
        ffi::THREAD_MODEL_PARALLEL => ThreadModel::Parallel,
        _ => return None,
    })
}

fn valid_plugin_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic())
        && c.all(|x| x.is_ascii_alphanumeric() || x == '-' || x == '_')
}

/// dlopen `path` and register the plugin in it.
pub fn load(path: &Path) -> Result<Box<dyn Plugin>> {
    let shown = path.display().to_string();
    let fail = |msg: String| {
        Error::config(format!(
            "cannot open plugin '{}': {msg}",
            crate::log::escape(&shown)
        ))
    };
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| fail("the path contains a NUL byte".into()))?;
    // SAFETY: `cpath` is a valid C string; dlopen runs the library's
    // constructors, which is what loading a plugin means.
    let lib = unsafe { libc::dlopen(cpath.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if lib.is_null() {
        return Err(fail(dlerror()));
    }
    // SAFETY: `lib` is a live handle and the symbol name a C string.
    let init = unsafe { libc::dlsym(lib, c"plugin_init".as_ptr()) };
    if init.is_null() {
        return Err(fail(format!(
            "{shown}: not an nbdkit plugin (no plugin_init symbol)"
        )));
    }
    // SAFETY: nbdkit plugins define `struct nbdkit_plugin *plugin_init
    // (void)`; the symbol was found by that name.
    let init: unsafe extern "C" fn() -> *const NbdkitPlugin = unsafe { std::mem::transmute(init) };
    // SAFETY: calling the plugin's registration function, as nbdkit does.
    let raw = unsafe { init() };
    if raw.is_null() {
        return Err(fail(format!("{shown}: plugin_init returned NULL")));
    }
    // SAFETY: `raw` points to the plugin's struct, whose first two fields
    // (_struct_size, _api_version) exist in every version.
    let (size, api) = unsafe { ((*raw).struct_size, (*raw).api_version) };
    if api != 1 && api != 2 {
        return Err(fail(format!(
            "{shown}: plugin is incompatible with this version of nbdkit (_api_version = {api})"
        )));
    }
    let ours = std::mem::size_of::<NbdkitPlugin>();
    let n = usize::try_from(size).unwrap_or(usize::MAX).min(ours);
    if n < std::mem::offset_of!(NbdkitPlugin, name) {
        return Err(fail(format!(
            "{shown}: plugin struct is too small (_struct_size = {size})"
        )));
    }
    let mut p = std::mem::MaybeUninit::<NbdkitPlugin>::zeroed();
    // SAFETY: the plugin's struct has at least `n` bytes (its
    // _struct_size, capped at ours); `p` has `ours` >= `n` bytes.  A zeroed
    // NbdkitPlugin is valid (null pointers, `None` callbacks, zero ints).
    let p = unsafe {
        std::ptr::copy_nonoverlapping(raw.cast::<u8>(), p.as_mut_ptr().cast::<u8>(), n);
        p.assume_init()
    };
    let name =
        leak_str(p.name).ok_or_else(|| fail(format!("{shown}: plugin must have a .name field")))?;
    if !valid_plugin_name(name) {
        return Err(fail(format!(
            "{shown}: plugin.name ('{}') field must begin with an ASCII letter and contain only letters, digits, '-' and '_'",
            crate::log::escape(name)
        )));
    }
    let v1 = api == 1;
    let missing = |cb: &str| fail(format!("{shown}: plugin must have a .{cb} callback"));
    if p.open.is_none() {
        return Err(missing("open"));
    }
    if p.get_size.is_none() {
        return Err(missing("get_size"));
    }
    if (v1 && p.pread_v1.is_none()) || (!v1 && p.pread.is_none()) {
        return Err(missing("pread"));
    }
    let Some(max_thread_model) = thread_model_of(p.thread_model) else {
        return Err(fail(format!(
            "{shown}: plugin has an unknown thread model ({})",
            p.thread_model
        )));
    };
    let inner = Inner {
        p,
        lib,
        path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
        name,
        version: leak_str(p.version).unwrap_or(""),
        longname: leak_str(p.longname),
        description: leak_str(p.description).unwrap_or(""),
        config_help: leak_str(p.config_help).unwrap_or(""),
        magic: leak_str(p.magic_config_key),
        callbacks: callbacks(&p, v1),
        v1,
        errno_is_preserved: p.errno_is_preserved != 0,
        struct_size: size,
        max_thread_model,
        load_once: Once::new(),
        loaded: AtomicBool::new(false),
        unloaded: AtomicBool::new(false),
        configured: AtomicBool::new(false),
        thread_model: OnceLock::new(),
    };
    crate::log::debug(format!(
        "registered plugin {} (name {name}, api version {api})",
        inner.path.display()
    ));
    Ok(Box::new(CPlugin {
        inner: Arc::new(inner),
    }))
}

/// The `has_CALLBACK=1` lines, in nbdkit's order.
fn callbacks(p: &NbdkitPlugin, v1: bool) -> &'static [&'static str] {
    let has: [(&'static str, bool); 37] = [
        ("longname", !p.longname.is_null()),
        ("description", !p.description.is_null()),
        ("load", p.load.is_some()),
        ("unload", p.unload.is_some()),
        ("dump_plugin", p.dump_plugin.is_some()),
        ("config", p.config.is_some()),
        ("config_complete", p.config_complete.is_some()),
        ("config_help", !p.config_help.is_null()),
        ("thread_model", p.thread_model_fn.is_some()),
        ("get_ready", p.get_ready.is_some()),
        ("after_fork", p.after_fork.is_some()),
        ("cleanup", p.cleanup.is_some()),
        ("preconnect", p.preconnect.is_some()),
        ("list_exports", p.list_exports.is_some()),
        ("default_export", p.default_export.is_some()),
        ("open", p.open.is_some()),
        ("close", p.close.is_some()),
        ("get_size", p.get_size.is_some()),
        ("export_description", p.export_description.is_some()),
        ("block_size", p.block_size.is_some()),
        ("can_write", p.can_write.is_some()),
        ("can_flush", p.can_flush.is_some()),
        ("is_rotational", p.is_rotational.is_some()),
        ("can_trim", p.can_trim.is_some()),
        ("can_zero", p.can_zero.is_some()),
        ("can_fast_zero", p.can_fast_zero.is_some()),
        ("can_extents", p.can_extents.is_some()),
        ("can_fua", p.can_fua.is_some()),
        ("can_multi_conn", p.can_multi_conn.is_some()),
        ("can_cache", p.can_cache.is_some()),
        (
            "pread",
            if v1 {
                p.pread_v1.is_some()
            } else {
                p.pread.is_some()
            },
        ),
        (
            "pwrite",
            if v1 {
                p.pwrite_v1.is_some()
            } else {
                p.pwrite.is_some()
            },
        ),
        (
            "flush",
            if v1 {
                p.flush_v1.is_some()
            } else {
                p.flush.is_some()
            },
        ),
        (
            "trim",
            if v1 {
                p.trim_v1.is_some()
            } else {
                p.trim.is_some()
            },
        ),
        (
            "zero",
            if v1 {
                p.zero_v1.is_some()
            } else {
                p.zero.is_some()
            },
        ),
        ("extents", p.extents.is_some()),
        ("cache", p.cache.is_some()),
    ];
    let v: Vec<&'static str> = has.iter().filter(|(_, h)| *h).map(|(n, _)| *n).collect();
    Box::leak(v.into_boxed_slice())
}

/// The registered plugin, shared by the plugin object and its handles.
struct Inner {
    p: NbdkitPlugin,
    lib: *mut c_void,
    path: PathBuf,
    name: &'static str,
    version: &'static str,
    longname: Option<&'static str>,
    description: &'static str,
    config_help: &'static str,
    magic: Option<&'static str>,
    callbacks: &'static [&'static str],
    v1: bool,
    errno_is_preserved: bool,
    struct_size: u64,
    max_thread_model: ThreadModel,
    load_once: Once,
    loaded: AtomicBool,
    unloaded: AtomicBool,
    configured: AtomicBool,
    thread_model: OnceLock<ThreadModel>,
}

// SAFETY: the raw pointers are the library handle and the plugin's static
// strings, valid for the life of the process.  Whether the plugin's
// callbacks may run on several threads at once is what its thread model
// says, and the server honours it (it serialises connections or requests
// as asked).
unsafe impl Send for Inner {}
// SAFETY: as above.
unsafe impl Sync for Inner {}

impl Inner {
    fn ensure_loaded(&self) {
        self.load_once.call_once(|| {
            if let Some(load) = self.p.load {
                // SAFETY: `.load` takes no arguments; nbdkit calls it once,
                // after debug flags are set and before any other callback.
                let o = context::call(None, || unsafe { load() });
                o.ok();
            }
            self.loaded.store(true, Ordering::Release);
        });
    }

    /// Map a callback's int result: -1 is an error, reported nbdkit's way.
    fn check(&self, conn: Option<&Conn>, what: &str, f: impl FnOnce() -> c_int) -> Result<c_int> {
        let o = context::call(conn, f);
        if o.value == -1 {
            let name = self.name;
            return Err(o.error(self.errno_is_preserved, || {
                if conn.is_some() {
                    String::new()
                } else {
                    format!("{name}: {what} failed")
                }
            }))
            .map_err(|e| {
                if e.message().is_empty() {
                    Error::new(e.errno(), e.errno().desc())
                } else {
                    e
                }
            });
        }
        Ok(o.ok())
    }
}

impl Inner {
    /// `.unload`, once, if `.load` ran, and never in the parent of the
    /// serving process.
    fn unload(&self) {
        if !self.loaded.load(Ordering::Acquire)
            || NO_UNLOAD.load(Ordering::Relaxed)
            || self.unloaded.swap(true, Ordering::AcqRel)
        {
            return;
        }
        if let Some(unload) = self.p.unload {
            // SAFETY: `.unload` takes no arguments and is called once, last.
            context::call(None, || unsafe { unload() }).ok();
        }
    }
}

impl Drop for Inner {
    /// Exits on configuration errors reach here: unload as nbdkit does.
    fn drop(&mut self) {
        self.unload();
    }
}

/// A C plugin as one of ours.
pub struct CPlugin {
    inner: Arc<Inner>,
}

fn cstring(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::new(Errno::EINVAL, format!("{what} contains a NUL byte")))
}

/// Run `.dump_plugin` with stdout going to a temporary file, so its lines
/// come after ours.
fn capture_stdout(f: impl FnOnce()) -> String {
    use std::io::{Read, Seek};
    use std::os::fd::AsRawFd;
    let Ok(mut tmp) = tempfile_in_tmp() else {
        f();
        return String::new();
    };
    let _ = std::io::Write::flush(&mut std::io::stdout());
    // SAFETY: plain fd calls on stdout and our temporary file; fflush(NULL)
    // flushes C stdio buffers.
    let saved = unsafe {
        libc::fflush(std::ptr::null_mut());
        let saved = libc::dup(1);
        libc::dup2(tmp.as_raw_fd(), 1);
        saved
    };
    f();
    // SAFETY: as above; `saved` is our duplicate of the original stdout.
    unsafe {
        libc::fflush(std::ptr::null_mut());
        if saved >= 0 {
            libc::dup2(saved, 1);
            libc::close(saved);
        }
    }
    let mut s = String::new();
    let _ = tmp.rewind();
    let _ = tmp.read_to_string(&mut s);
    s
}

fn tempfile_in_tmp() -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::var_os("TMPDIR").unwrap_or_else(|| "/tmp".into());
    let path = PathBuf::from(dir).join(format!(".nbdkit-dump-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    let _ = std::fs::remove_file(&path);
    Ok(f)
}

impl CPlugin {
    fn pre_open_conn(&self, is_tls: bool, peer: Option<crate::server::peer::Peer>) -> Conn {
        Conn {
            export_name: CString::default(),
            is_tls,
            peer: peer.or_else(crate::server::peer::current),
            arena: context::pending_arena(),
        }
    }
}

impl Plugin for CPlugin {
    fn name(&self) -> &'static str {
        self.inner.name
    }

    fn version(&self) -> &'static str {
        self.inner.version
    }

    fn longname(&self) -> Option<&'static str> {
        self.inner.longname
    }

    fn description(&self) -> &'static str {
        self.inner.description
    }

    fn magic_config_key(&self) -> Option<&'static str> {
        self.inner.magic
    }

    fn config_help(&self) -> &'static str {
        self.inner.config_help
    }

    fn callbacks(&self) -> &'static [&'static str] {
        self.inner.callbacks
    }

    fn shared_object(&self) -> Option<SharedObjectInfo> {
        Some(SharedObjectInfo {
            path: self.inner.path.display().to_string(),
            api_version: if self.inner.v1 { 1 } else { 2 },
            struct_size: self.inner.struct_size,
            errno_is_preserved: self.inner.errno_is_preserved,
            max_thread_model: self.inner.max_thread_model,
        })
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        self.config_os(key, std::ffi::OsStr::new(value))
    }

    /// C plugins get the bytes as given (paths need not be UTF-8).
    fn config_os(&mut self, key: &str, value: &std::ffi::OsStr) -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        self.inner.ensure_loaded();
        let Some(config) = self.inner.p.config else {
            return Err(Error::config(format!(
                "{}: this plugin does not need command line configuration",
                self.inner.name
            )));
        };
        // Plugins may keep these pointers (in nbdkit they point into
        // argv), so the strings live until exit.
        let k: &'static CStr = Box::leak(cstring(key, "key")?.into_boxed_c_str());
        let v = CString::new(value.as_bytes())
            .map_err(|_| Error::new(Errno::EINVAL, "value contains a NUL byte"))?;
        let v: &'static CStr = Box::leak(v.into_boxed_c_str());
        // SAFETY: `.config` takes two C strings, valid for the process.
        self.inner
            .check(None, "config", || unsafe { config(k.as_ptr(), v.as_ptr()) })
            .map(drop)
    }

    fn config_complete(&mut self) -> Result<()> {
        self.inner.ensure_loaded();
        if let Some(cc) = self.inner.p.config_complete {
            let f = || {
                // SAFETY: `.config_complete` takes no arguments.
                unsafe { cc() }
            };
            self.inner.check(None, "config_complete", f)?;
        }
        self.inner.configured.store(true, Ordering::Release);
        Ok(())
    }

    fn debug_flag(&mut self, flag: &str, value: &str) -> Result<bool> {
        let sym = format!("{}_debug_{}", self.inner.name, flag.replace('.', "_"));
        let Ok(csym) = CString::new(sym) else {
            return Ok(false);
        };
        // SAFETY: `lib` is a live handle and `csym` a C string.
        let var = unsafe { libc::dlsym(self.inner.lib, csym.as_ptr()) };
        if var.is_null() {
            return Ok(false);
        }
        let v = crate::parse::parse_signed(
            &format!("-D {}.{flag}", self.inner.name),
            value,
            i64::from(i32::MIN),
            i64::from(i32::MAX),
        )?;
        // SAFETY: nbdkit's convention: NAME_debug_FLAG is a global `int` in
        // the plugin; set before `.load`, while no plugin code runs.
        unsafe { *var.cast::<c_int>() = v as c_int };
        Ok(true)
    }

    fn dump_plugin(&self) -> Vec<String> {
        self.inner.ensure_loaded();
        let Some(dump) = self.inner.p.dump_plugin else {
            return Vec::new();
        };
        // SAFETY: `.dump_plugin` takes no arguments and prints to stdout.
        let out = capture_stdout(|| context::call(None, || unsafe { dump() }).ok());
        out.lines().map(str::to_string).collect()
    }

    fn thread_model(&self) -> ThreadModel {
        let max = self.inner.max_thread_model;
        let Some(f) = self.inner.p.thread_model_fn else {
            return max;
        };
        if !self.inner.configured.load(Ordering::Acquire) {
            return max;
        }
        *self.inner.thread_model.get_or_init(|| {
            // SAFETY: `.thread_model` takes no arguments.
            let o = context::call(None, || unsafe { f() });
            match thread_model_of(o.value) {
                Some(m) => {
                    o.ok();
                    m.min(max)
                }
                None => {
                    let e = o.error(false, || {
                        format!("{}: thread_model failed", self.inner.name)
                    });
                    crate::log::error(e.message());
                    ThreadModel::SerializeConnections
                }
            }
        })
    }

    fn get_ready(&self) -> Result<()> {
        self.inner.ensure_loaded();
        match self.inner.p.get_ready {
            // SAFETY: `.get_ready` takes no arguments.
            Some(f) => self
                .inner
                .check(None, "get_ready", || unsafe { f() })
                .map(drop),
            None => Ok(()),
        }
    }

    fn after_fork(&self) -> Result<()> {
        match self.inner.p.after_fork {
            // SAFETY: `.after_fork` takes no arguments.
            Some(f) => self
                .inner
                .check(None, "after_fork", || unsafe { f() })
                .map(drop),
            None => Ok(()),
        }
    }

    /// `.cleanup` then `.unload`, as nbdkit does at exit (not left to the
    /// last reference going away, which a closing connection may hold).
    fn cleanup(&self) {
        if let Some(f) = self.inner.p.cleanup {
            // SAFETY: `.cleanup` takes no arguments; called once at exit.
            context::call(None, || unsafe { f() }).ok();
        }
        self.inner.unload();
    }

    fn preconnect(&self, readonly: bool, peer: &crate::server::peer::Peer) -> Result<()> {
        let Some(f) = self.inner.p.preconnect else {
            return Ok(());
        };
        let conn = self.pre_open_conn(false, Some(peer.clone()));
        // SAFETY: `.preconnect` takes the read-only flag.
        self.inner
            .check(Some(&conn), "preconnect", || unsafe {
                f(c_int::from(readonly))
            })
            .map(drop)
    }

    fn list_exports(&self, readonly: bool, is_tls: bool) -> Result<Vec<ExportInfo>> {
        let Some(f) = self.inner.p.list_exports else {
            return Ok(vec![ExportInfo::named(
                self.default_export(readonly, is_tls)?,
            )]);
        };
        let conn = self.pre_open_conn(is_tls, None);
        let mut exps = exports::Exports::default();
        let ptr: *mut exports::Exports = &mut exps;
        // SAFETY: `.list_exports` fills the list through nbdkit_add_export
        // during the call; `ptr` points to `exps`, alive until after it.
        self.inner.check(Some(&conn), "list_exports", || unsafe {
            f(c_int::from(readonly), c_int::from(is_tls), ptr.cast())
        })?;
        let default = if exps.default_at.is_empty() {
            None
        } else {
            Some(self.default_export(readonly, is_tls)?)
        };
        Ok(exps
            .list
            .into_iter()
            .enumerate()
            .map(|(i, (n, d))| ExportInfo {
                name: match (&default, exps.default_at.contains(&i)) {
                    (Some(def), true) => def.clone(),
                    _ => n.to_string_lossy().into_owned(),
                },
                description: d.map(|d| d.to_string_lossy().into_owned()),
            })
            .collect())
    }

    fn default_export(&self, readonly: bool, is_tls: bool) -> Result<String> {
        let Some(f) = self.inner.p.default_export else {
            return Ok(String::new());
        };
        let conn = self.pre_open_conn(is_tls, None);
        // SAFETY: `.default_export` takes two flags and returns a C string
        // valid at least until the connection closes (or NULL).
        let o = context::call(Some(&conn), || unsafe {
            f(c_int::from(readonly), c_int::from(is_tls))
        });
        if o.value.is_null() {
            return Err(o.error(self.inner.errno_is_preserved, || {
                "default_export failed".into()
            }));
        }
        let p = o.ok();
        // SAFETY: non-null results are C strings (interned or static).
        Ok(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    fn open(&self, readonly: bool, export_name: &str, is_tls: bool) -> Result<Box<dyn Handle>> {
        self.inner.ensure_loaded();
        let open = self.inner.p.open.expect("registration requires .open");
        let conn = Arc::new(Conn {
            export_name: cstring(export_name, "export name")?,
            is_tls,
            peer: crate::server::peer::current(),
            arena: context::take_pending_arena(),
        });
        // SAFETY: `.open` takes the read-only flag and returns a handle
        // (NULL on error).
        let o = context::call(Some(&conn), || unsafe { open(c_int::from(readonly)) });
        if o.value.is_null() {
            return Err(o.error(self.inner.errno_is_preserved, || "open failed".into()));
        }
        let h = o.ok();
        Ok(Box::new(CHandle {
            inner: self.inner.clone(),
            h,
            conn,
        }))
    }
}

/// One connection's plugin handle.
struct CHandle {
    inner: Arc<Inner>,
    h: ffi::Handle,
    conn: Arc<Conn>,
}

// SAFETY: the handle pointer is the plugin's; the plugin's thread model
// (honoured by the server) says whether it may be used from several
// threads, and nbdkit hands handles between threads the same way.
unsafe impl Send for CHandle {}
// SAFETY: as above.
unsafe impl Sync for CHandle {}

impl Drop for CHandle {
    fn drop(&mut self) {
        if let Some(close) = self.inner.p.close {
            let h = self.h;
            // SAFETY: `.close` is called once with the handle `.open` gave.
            context::call(Some(&self.conn), || unsafe { close(h) }).ok();
        }
    }
}

fn count32(n: u64) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::new(Errno::EINVAL, "request too large for the plugin ABI"))
}

impl CHandle {
    fn call(&self, what: &str, f: impl FnOnce() -> c_int) -> Result<c_int> {
        self.inner.check(Some(&self.conn), what, f)
    }

    fn flag(
        &self,
        what: &str,
        cb: Option<unsafe extern "C" fn(ffi::Handle) -> c_int>,
    ) -> Result<Option<c_int>> {
        let h = self.h;
        match cb {
            // SAFETY: `can_*` callbacks take the handle.
            Some(f) => self.call(what, || unsafe { f(h) }).map(Some),
            None => Ok(None),
        }
    }

    fn has_flush(&self) -> bool {
        self.inner.p.flush.is_some() || self.inner.p.flush_v1.is_some()
    }

    fn has_zero(&self) -> bool {
        self.inner.p.zero.is_some() || self.inner.p.zero_v1.is_some()
    }
}

impl Handle for CHandle {
    fn get_size(&self) -> Result<u64> {
        let f = self
            .inner
            .p
            .get_size
            .expect("registration requires .get_size");
        let h = self.h;
        let o = context::call(Some(&self.conn), || {
            // SAFETY: `.get_size` takes the handle.
            unsafe { f(h) }
        });
        if o.value < 0 {
            return Err(o.error(self.inner.errno_is_preserved, || "get_size failed".into()));
        }
        Ok(o.ok() as u64)
    }

    fn export_description(&self) -> Result<Option<String>> {
        let Some(f) = self.inner.p.export_description else {
            return Ok(None);
        };
        let h = self.h;
        // SAFETY: `.export_description` takes the handle and returns a C
        // string (or NULL for none).
        let o = context::call(Some(&self.conn), || unsafe { f(h) });
        let p = o.ok();
        if p.is_null() {
            return Ok(None);
        }
        // SAFETY: non-null results are C strings valid during this call.
        Ok(Some(
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned(),
        ))
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        let Some(f) = self.inner.p.block_size else {
            return Ok(None);
        };
        let h = self.h;
        let (mut min, mut pref, mut max) = (0u32, 0u32, 0u32);
        let (a, b, c): (*mut u32, *mut u32, *mut u32) = (&mut min, &mut pref, &mut max);
        // SAFETY: `.block_size` writes three u32 through the pointers,
        // which point to our locals.
        self.call("block_size", || unsafe { f(h, a, b, c) })?;
        if min == 0 && pref == 0 && max == 0 {
            return Ok(None);
        }
        Ok(Some(BlockSize {
            minimum: min,
            preferred: pref,
            maximum: max,
        }))
    }

    fn can_write(&self) -> Result<bool> {
        let p = &self.inner.p;
        Ok(match self.flag("can_write", p.can_write)? {
            Some(r) => r != 0,
            None => p.pwrite.is_some() || p.pwrite_v1.is_some(),
        })
    }

    fn can_flush(&self) -> Result<bool> {
        Ok(match self.flag("can_flush", self.inner.p.can_flush)? {
            Some(r) => r != 0,
            None => self.has_flush(),
        })
    }

    fn is_rotational(&self) -> Result<bool> {
        Ok(self
            .flag("is_rotational", self.inner.p.is_rotational)?
            .is_some_and(|r| r != 0))
    }

    fn can_trim(&self) -> Result<bool> {
        let p = &self.inner.p;
        Ok(match self.flag("can_trim", p.can_trim)? {
            Some(r) => r != 0,
            None => p.trim.is_some() || p.trim_v1.is_some(),
        })
    }

    fn can_zero(&self) -> Result<ZeroMode> {
        // The plugin's .can_zero only says whether to call .zero.
        Ok(match self.flag("can_zero", self.inner.p.can_zero)? {
            Some(0) => ZeroMode::Emulate,
            Some(_) => ZeroMode::Native,
            None if self.has_zero() => ZeroMode::Native,
            None => ZeroMode::Emulate,
        })
    }

    fn can_fast_zero(&self) -> Result<bool> {
        if let Some(r) = self.flag("can_fast_zero", self.inner.p.can_fast_zero)? {
            return Ok(r != 0);
        }
        // Without a v2 .zero, fast zeroes fail fast instead of writing.
        if self.inner.p.zero.is_none() {
            return Ok(true);
        }
        Ok(self.can_zero()? == ZeroMode::Emulate)
    }

    fn can_extents(&self) -> Result<bool> {
        Ok(match self.flag("can_extents", self.inner.p.can_extents)? {
            Some(r) => r != 0,
            None => self.inner.p.extents.is_some(),
        })
    }

    fn can_fua(&self) -> Result<FuaMode> {
        Ok(match self.flag("can_fua", self.inner.p.can_fua)? {
            Some(ffi::FUA_NONE) => FuaMode::None,
            Some(ffi::FUA_EMULATE) => FuaMode::Emulate,
            Some(_) if self.inner.v1 => FuaMode::Emulate,
            Some(_) => FuaMode::Native,
            None if self.has_flush() => FuaMode::Emulate,
            None => FuaMode::None,
        })
    }

    fn can_multi_conn(&self) -> Result<bool> {
        Ok(self
            .flag("can_multi_conn", self.inner.p.can_multi_conn)?
            .is_some_and(|r| r != 0))
    }

    fn can_cache(&self) -> Result<CacheMode> {
        Ok(match self.flag("can_cache", self.inner.p.can_cache)? {
            Some(ffi::CACHE_NONE) => CacheMode::None,
            Some(ffi::CACHE_EMULATE) => CacheMode::Emulate,
            Some(_) => CacheMode::Native,
            None if self.inner.p.cache.is_some() => CacheMode::Native,
            None => CacheMode::None,
        })
    }

    fn pread(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let n = count32(buf.len() as u64)?;
        let (h, b) = (self.h, buf.as_mut_ptr().cast::<c_void>());
        let p = &self.inner.p;
        if self.inner.v1 {
            let f = p.pread_v1.expect("registration requires .pread");
            // SAFETY: `b` is valid for writes of `n` bytes during the call.
            self.call("pread", || unsafe { f(h, b, n, offset) })?;
        } else {
            let f = p.pread.expect("registration requires .pread");
            // SAFETY: as above.
            self.call("pread", || unsafe { f(h, b, n, offset, 0) })?;
        }
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        let n = count32(buf.len() as u64)?;
        let (h, b) = (self.h, buf.as_ptr().cast::<c_void>());
        let p = &self.inner.p;
        if let (true, Some(f)) = (self.inner.v1, p.pwrite_v1) {
            // SAFETY: `b` is valid for reads of `n` bytes during the call.
            self.call("pwrite", || unsafe { f(h, b, n, offset) })?;
        } else if let (false, Some(f)) = (self.inner.v1, p.pwrite) {
            let flags = if fua { ffi::FLAG_FUA } else { 0 };
            // SAFETY: as above.
            self.call("pwrite", || unsafe { f(h, b, n, offset, flags) })?;
        } else {
            return Err(Error::new(
                Errno::EROFS,
                "pwrite: plugin has no .pwrite callback",
            ));
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        let h = self.h;
        let p = &self.inner.p;
        if let (true, Some(f)) = (self.inner.v1, p.flush_v1) {
            // SAFETY: `.flush` takes the handle.
            self.call("flush", || unsafe { f(h) })?;
        } else if let (false, Some(f)) = (self.inner.v1, p.flush) {
            // SAFETY: `.flush` takes the handle and flags.
            self.call("flush", || unsafe { f(h, 0) })?;
        } else {
            return Err(Error::new(
                Errno::EINVAL,
                "flush: plugin has no .flush callback",
            ));
        }
        Ok(())
    }

    fn trim(&self, count: u64, offset: u64, fua: bool) -> Result<()> {
        let n = count32(count)?;
        let h = self.h;
        let p = &self.inner.p;
        if let (true, Some(f)) = (self.inner.v1, p.trim_v1) {
            // SAFETY: `.trim` takes the handle, count and offset.
            self.call("trim", || unsafe { f(h, n, offset) })?;
        } else if let (false, Some(f)) = (self.inner.v1, p.trim) {
            let flags = if fua { ffi::FLAG_FUA } else { 0 };
            // SAFETY: as above, plus flags.
            self.call("trim", || unsafe { f(h, n, offset, flags) })?;
        } else {
            return Err(Error::new(
                Errno::EINVAL,
                "trim: plugin has no .trim callback",
            ));
        }
        Ok(())
    }

    fn zero(&self, count: u64, offset: u64, flags: ZeroFlags) -> Result<()> {
        let n = count32(count)?;
        let h = self.h;
        let p = &self.inner.p;
        if let (false, Some(f)) = (self.inner.v1, p.zero) {
            let mut fl = 0;
            if flags.may_trim {
                fl |= ffi::FLAG_MAY_TRIM;
            }
            if flags.fua {
                fl |= ffi::FLAG_FUA;
            }
            if flags.fast {
                fl |= ffi::FLAG_FAST_ZERO;
            }
            // SAFETY: `.zero` takes the handle, count, offset and flags.
            self.call("zero", || unsafe { f(h, n, offset, fl) })?;
            return Ok(());
        }
        if let (true, Some(f)) = (self.inner.v1, p.zero_v1) {
            if flags.fast {
                return Err(Error::new(Errno::ENOTSUP, "fast zero is not supported"));
            }
            let may_trim = c_int::from(flags.may_trim);
            // SAFETY: the v1 `.zero` takes the handle, count, offset and
            // the may_trim flag.
            self.call("zero", || unsafe { f(h, n, offset, may_trim) })?;
            return Ok(());
        }
        Err(Error::new(Errno::EOPNOTSUPP, "zero is not supported"))
    }

    fn extents(&self, extents: &mut Extents, req_one: bool) -> Result<()> {
        let Some(f) = self.inner.p.extents else {
            return extents.add(extents.start(), extents.end() - extents.start(), 0);
        };
        let n = count32(extents.end() - extents.start())?;
        let offset = extents.start();
        let flags = if req_one { ffi::FLAG_REQ_ONE } else { 0 };
        let h = self.h;
        let e: *mut Extents = extents;
        // SAFETY: the plugin adds extents through nbdkit_add_extent with
        // the pointer we pass, only during this call, on this thread.
        self.call("extents", || unsafe { f(h, n, offset, flags, e.cast()) })?;
        Ok(())
    }

    fn cache(&self, count: u64, offset: u64) -> Result<()> {
        let n = count32(count)?;
        let h = self.h;
        match self.inner.p.cache {
            Some(f) => {
                // SAFETY: `.cache` takes the handle, count, offset, flags.
                self.call("cache", || unsafe { f(h, n, offset, 0) })?;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// Keep the exported functions in the binary.
pub fn keep_exports() -> usize {
    exports::keep()
}

/// The arguments to give a plugin script: the command line without the
/// plugin argument (found as the first positional argument).
pub fn script_args(args: &[OsString]) -> Vec<OsString> {
    for i in 0..args.len() {
        let prefix = &args[..=i];
        if let Ok(o) = crate::cli::parse(prefix.iter().cloned()) {
            if o.plugin.is_some() {
                let mut rest = args.to_vec();
                rest.remove(i);
                return rest;
            }
        }
    }
    args.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_and_paths() {
        assert!(is_short_name("data"));
        assert!(is_short_name("sparse-random"));
        for p in [
            "./x.so", "x.so", "/a", "a:b", "a,b", "a=b", "a b", "a;b", "a\\b", "",
        ] {
            assert!(!is_short_name(p), "{p:?}");
        }
    }

    #[test]
    fn lookup_prefers_a_script_then_the_so() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            find_in(d.path(), "foo"),
            Found::SharedObject(d.path().join("nbdkit-foo-plugin.so"))
        );
        let script = d.path().join("nbdkit-foo-plugin");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        // Not executable: still the .so.
        assert!(matches!(find_in(d.path(), "foo"), Found::SharedObject(_)));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_in(d.path(), "foo"), Found::Script(script));
        assert_eq!(
            find_in(d.path(), "./foo.so"),
            Found::SharedObject(PathBuf::from("./foo.so"))
        );
    }

    #[test]
    fn script_args_drop_the_plugin_argument() {
        let a: Vec<OsString> = ["-f", "-e", "S3", "S3", "x=1", "-v"]
            .iter()
            .map(OsString::from)
            .collect();
        let r: Vec<OsString> = ["-f", "-e", "S3", "x=1", "-v"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(script_args(&a), r);
    }

    #[test]
    fn plugin_names() {
        assert!(valid_plugin_name("sparse-random"));
        assert!(!valid_plugin_name("1abc"));
        assert!(!valid_plugin_name("a.b"));
    }
}
