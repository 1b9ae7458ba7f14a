//! The sh plugin: `nbdkit sh SCRIPT [key=value...]` (nbdkit-sh-plugin(3)).
//! Every plugin method runs `SCRIPT METHOD ARGS...`; the exit status says
//! ok (0), error (1, errno name and message on stderr), missing (2) or
//! false (3), and data travels on stdin and stdout.
//!
//! The call machinery ([`call`]) and the methods ([`methods`]) are shared
//! with the eval plugin (`super::eval`), which is the same plugin with
//! shell snippets from the command line instead of a script.

pub mod call;
pub mod methods;

use crate::error::{Error, Result};
use crate::plugin::{ExportInfo, Handle, Plugin, ThreadModel};
use call::{Status, Target};
use methods::{Core, Source};
use nix::errno::Errno;
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Which of the two plugins this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Sh,
    Eval,
}

/// The sh or eval plugin.
pub struct ScriptPlugin {
    flavour: Flavour,
    /// Created when first needed (nbdkit's `load`).
    core: Option<Arc<Core>>,
    /// The script's own magic parameter key (sh).
    magic: Option<String>,
    /// Past `get_ready`: from here on only `cleanup` removes the temporary
    /// directory (a forked parent dropping its copy must not).
    ready: AtomicBool,
    /// `after_fork` ran in this process (the one that serves).
    serving: AtomicBool,
    cleaned: AtomicBool,
}

/// Every callback nbdkit's sh and eval plugins register.
const CALLBACKS: &[&str] = &[
    "load",
    "unload",
    "dump_plugin",
    "config",
    "config_complete",
    "config_help",
    "thread_model",
    "get_ready",
    "after_fork",
    "preconnect",
    "list_exports",
    "default_export",
    "open",
    "close",
    "get_size",
    "export_description",
    "block_size",
    "can_write",
    "can_flush",
    "is_rotational",
    "can_trim",
    "can_zero",
    "can_extents",
    "can_fua",
    "can_multi_conn",
    "can_cache",
    "can_fast_zero",
    "pread",
    "pwrite",
    "flush",
    "trim",
    "zero",
    "extents",
    "cache",
];

impl ScriptPlugin {
    /// A fresh, unconfigured plugin.
    pub fn new(flavour: Flavour) -> Self {
        ScriptPlugin {
            flavour,
            core: None,
            magic: None,
            ready: AtomicBool::new(false),
            serving: AtomicBool::new(false),
            cleaned: AtomicBool::new(false),
        }
    }

    fn prefix(&self) -> &'static str {
        match self.flavour {
            Flavour::Sh => "nbdkitsh",
            Flavour::Eval => "nbdkiteval",
        }
    }

    /// The shared state, created (with its temporary directory) on first use.
    pub(crate) fn core_mut(&mut self) -> Result<&mut Core> {
        if self.core.is_none() {
            let source = match self.flavour {
                Flavour::Sh => Source::Script(None),
                Flavour::Eval => Source::Snippets {
                    methods: HashMap::new(),
                    missing: None,
                },
            };
            self.core = Some(Arc::new(Core::new(self.prefix(), source)?));
        }
        let arc = self.core.as_mut().expect("just created");
        Arc::get_mut(arc).ok_or_else(|| {
            Error::new(
                Errno::EBUSY,
                "cannot reconfigure the plugin while it serves connections",
            )
        })
    }

    fn core(&self) -> Result<&Arc<Core>> {
        self.core
            .as_ref()
            .ok_or_else(|| Error::config(format!("{}: the plugin is not configured", self.name())))
    }

    /// `sh`: the first parameter names the script.
    fn config_script(&mut self, value: &str) -> Result<()> {
        let core = self.core_mut()?;
        let path = if value == "-" {
            inline_script(core.tmpdir())?
        } else {
            check_script(value)?
        };
        let label = path.display().to_string();
        core.source = Source::Script(Some((Target::Exec(path), label)));
        let core = self.core()?;
        core.load()?;
        self.magic = match core.call_string("magic_config_key", &[])? {
            Some(k) if !k.trim().is_empty() => Some(k.trim().to_string()),
            _ => None,
        };
        Ok(())
    }

    fn config_sh(&mut self, key: &str, value: &str) -> Result<()> {
        let has_script = matches!(
            self.core.as_deref().map(|c| &c.source),
            Some(Source::Script(Some(_)))
        );
        if !has_script {
            if key != "script" {
                return Err(Error::config(
                    "the first parameter must be script=/path/to/script",
                ));
            }
            return self.config_script(value);
        }
        let core = self.core()?;
        let key = if key == "script" {
            match &self.magic {
                Some(m) => m.as_str(),
                None => {
                    return Err(Error::config(format!(
                        "{}: expecting key=value on the command line but got: {value}",
                        core.label("config")
                    )))
                }
            }
        } else {
            key
        };
        match core.call("config", &[key, value])? {
            Status::Ok(_) => Ok(()),
            Status::Missing => Err(Error::config(format!(
                "{}: this plugin does not need command line configuration",
                core.label("config")
            ))),
            Status::False => Err(core.unexpected_false("config")),
        }
    }

    /// Unload once: run `unload` and remove the temporary directory.
    fn unload_once(&self) {
        if self.cleaned.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(core) = &self.core {
            core.unload();
            core.remove_tmpdir();
        }
    }
}

/// The script's absolute path, after checking that it is an executable
/// regular file.
fn check_script(value: &str) -> Result<std::path::PathBuf> {
    let path = std::fs::canonicalize(value)
        .map_err(|e| Error::io(e, format!("sh: cannot find script '{value}'")))?;
    let md = std::fs::metadata(&path).map_err(|e| Error::io(e, format!("sh: {value}")))?;
    if !md.is_file() {
        return Err(Error::config(format!(
            "sh: {}: the script is not a regular file",
            path.display()
        )));
    }
    if nix::unistd::access(&path, nix::unistd::AccessFlags::X_OK).is_err() {
        return Err(Error::config(format!(
            "sh: {}: the script is not executable (chmod +x)",
            path.display()
        )));
    }
    Ok(path)
}

/// `script=-`: read the script from stdin into the temporary directory.
fn inline_script(tmpdir: &Path) -> Result<std::path::PathBuf> {
    let mut text = Vec::new();
    std::io::stdin()
        .read_to_end(&mut text)
        .map_err(|e| Error::io(e, "sh: reading the inline script from stdin"))?;
    let path = tmpdir.join("inline-script.sh");
    std::fs::write(&path, &text).map_err(|e| Error::io(e, path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o500))
        .map_err(|e| Error::io(e, format!("chmod: {}", path.display())))?;
    Ok(path)
}

impl Drop for ScriptPlugin {
    fn drop(&mut self) {
        // Exits before serving (--dump-plugin, --help, configuration
        // errors) and a serving process that fails before `cleanup`
        // unload here.  A parent that forked the server off never called
        // `after_fork`, and leaves the directory to the server.
        if !self.ready.load(Ordering::SeqCst) || self.serving.load(Ordering::SeqCst) {
            self.unload_once();
        }
    }
}

impl Plugin for ScriptPlugin {
    fn name(&self) -> &'static str {
        match self.flavour {
            Flavour::Sh => "sh",
            Flavour::Eval => "eval",
        }
    }

    fn description(&self) -> &'static str {
        match self.flavour {
            Flavour::Sh => "nbdkit shell, script or executable plugin",
            Flavour::Eval => "nbdkit plugin written as shell snippets on the command line",
        }
    }

    fn magic_config_key(&self) -> Option<&'static str> {
        match self.flavour {
            Flavour::Sh => Some("script"),
            Flavour::Eval => None,
        }
    }

    fn config_help(&self) -> &'static str {
        match self.flavour {
            Flavour::Sh => {
                "script=<FILENAME>     (required) The script or executable to run\n\
                 \x20                     (- reads a script from stdin).\n\
                 [other parameters are passed to the script's config method]"
            }
            Flavour::Eval => super::eval::CONFIG_HELP,
        }
    }

    fn callbacks(&self) -> &'static [&'static str] {
        CALLBACKS
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match self.flavour {
            Flavour::Sh => self.config_sh(key, value),
            Flavour::Eval => super::eval::config(self, key, value),
        }
    }

    fn config_complete(&mut self) -> Result<()> {
        match self.flavour {
            Flavour::Sh => {
                if !matches!(
                    self.core.as_deref().map(|c| &c.source),
                    Some(Source::Script(Some(_)))
                ) {
                    return Err(Error::config(
                        "sh: missing script parameter (nbdkit sh /path/to/script)",
                    ));
                }
            }
            Flavour::Eval => super::eval::synthesize_can_methods(self.core_mut()?)?,
        }
        self.core()?.config_complete()
    }

    fn dump_plugin(&self) -> Vec<String> {
        match &self.core {
            Some(core) => core.dump_plugin(),
            None => vec!["max_known_status=3".to_string()],
        }
    }

    fn thread_model(&self) -> ThreadModel {
        match &self.core {
            Some(core) => core.thread_model(),
            None if self.flavour == Flavour::Sh => ThreadModel::Parallel,
            None => ThreadModel::SerializeAllRequests,
        }
    }

    fn get_ready(&self) -> Result<()> {
        self.core()?.call_void("get_ready", &[])?;
        self.ready.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn after_fork(&self) -> Result<()> {
        // This process serves: it owns the temporary directory now.
        self.serving.store(true, Ordering::SeqCst);
        self.core()?.call_void("after_fork", &[])
    }

    fn cleanup(&self) {
        self.unload_once();
    }

    fn preconnect(&self, readonly: bool, _peer: &crate::server::peer::Peer) -> Result<()> {
        self.core()?.preconnect(readonly)
    }

    fn list_exports(&self, readonly: bool, is_tls: bool) -> Result<Vec<ExportInfo>> {
        self.core()?.list_exports(readonly, is_tls)
    }

    fn default_export(&self, readonly: bool, is_tls: bool) -> Result<String> {
        self.core()?.default_export(readonly, is_tls)
    }

    fn open(&self, readonly: bool, export_name: &str, is_tls: bool) -> Result<Box<dyn Handle>> {
        self.core()?.open(readonly, export_name, is_tls)
    }
}
