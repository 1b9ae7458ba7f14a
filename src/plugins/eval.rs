//! The eval plugin: `nbdkit eval get_size='echo 1M' pread='...' ...`
//! (nbdkit-eval-plugin(1)).  The sh plugin with each method given as a
//! `/bin/sh` snippet on the command line; methods not given run
//! `missing=` (default: exit 2, "missing").  Unlike sh, a `can_*` method
//! left out is true when its data method is given (`pwrite` makes
//! `can_write` true, and so on).

use super::sh::call::{Status, Target};
use super::sh::methods::{Core, Source};
use super::sh::{Flavour, ScriptPlugin};
use crate::error::{Error, Result};

/// A fresh eval plugin.
pub fn new_plugin() -> ScriptPlugin {
    ScriptPlugin::new(Flavour::Eval)
}

/// Keys that define a method rather than reach the `config` snippet.
pub const METHODS: &[&str] = &[
    "after_fork",
    "block_size",
    "cache",
    "can_cache",
    "can_extents",
    "can_fast_zero",
    "can_flush",
    "can_fua",
    "can_multi_conn",
    "can_trim",
    "can_write",
    "can_zero",
    "close",
    "config",
    "config_complete",
    "default_export",
    "dump_plugin",
    "export_description",
    "extents",
    "flush",
    "get_ready",
    "get_size",
    "is_rotational",
    "list_exports",
    "missing",
    "open",
    "pread",
    "preconnect",
    "pwrite",
    "thread_model",
    "trim",
    "unload",
    "zero",
];

pub const CONFIG_HELP: &str = "get_size=' SCRIPT '     Shell snippet for a method: any of\n\
     pread=' SCRIPT '        the sh plugin's methods (see nbdkit-sh-plugin),\n\
     [etc]                   plus missing=' SCRIPT ' for all others.\n\
     Other key=value parameters go to the config=' SCRIPT '.";

/// One `key=value` parameter of the eval plugin.
pub fn config(p: &mut ScriptPlugin, key: &str, value: &str) -> Result<()> {
    let core = p.core_mut()?;
    if METHODS.contains(&key) {
        let Source::Snippets { methods, missing } = &mut core.source else {
            return Err(Error::config("eval: internal error: not an eval plugin"));
        };
        let target = Target::Snippet(value.to_string());
        if key == "missing" {
            if missing.is_some() {
                return Err(Error::config(
                    "eval: method missing defined more than once on the command line",
                ));
            }
            *missing = Some(target);
        } else {
            if methods.contains_key(key) {
                return Err(Error::config(format!(
                    "eval: method {key} defined more than once on the command line"
                )));
            }
            methods.insert(key.to_string(), target);
        }
        return Ok(());
    }
    // A parameter for the script itself.
    let core: &Core = core;
    match core.call("config", &[key, value])? {
        Status::Ok(_) => Ok(()),
        Status::Missing => Err(Error::config(format!(
            "eval: callback '{key}' is unknown, and there is no 'config' callback to handle it"
        ))),
        Status::False => Err(core.unexpected_false("config")),
    }
}

/// As nbdkit does for plugins with callbacks: a data method given without
/// its `can_*` method makes that `can_*` true.
pub fn synthesize_can_methods(core: &mut Core) -> Result<()> {
    let Source::Snippets { methods, .. } = &mut core.source else {
        return Ok(());
    };
    for (data, can) in [
        ("pwrite", "can_write"),
        ("flush", "can_flush"),
        ("trim", "can_trim"),
        ("zero", "can_zero"),
        ("extents", "can_extents"),
    ] {
        if methods.contains_key(data) && !methods.contains_key(can) {
            methods.insert(can.to_string(), Target::Snippet("exit 0".into()));
        }
    }
    Ok(())
}
