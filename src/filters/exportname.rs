//! The `exportname` filter: change the export names and descriptions that
//! clients see, without touching the plugin.
//!
//! - `default-export=NAME`: the export opened when a client asks for the
//!   default export `""` (empty: the plugin's choice);
//! - `exportname-list=MODE`: what `NBD_OPT_LIST` answers: `keep` (the
//!   plugin's list, default), `error` (refuse to list), `empty`,
//!   `defaultonly` (just the default export's name) or `explicit` (the
//!   `exportname=` names);
//! - `exportname=NAME` (repeatable): the explicit list;
//! - `exportname-strict=true`: clients may only open explicit names (and
//!   the default export only if `""` is one of them);
//! - `exportdesc=MODE`: descriptions: `keep` (the plugin's), `none`,
//!   `fixed:TEXT`, or `script:SCRIPT`, a shell script run with `$name` set
//!   to the export name whose output (up to 4096 bytes, one final newline
//!   dropped) is the description.

use crate::error::{Error, Result};
use crate::filter::{Filter, FilterContext, PassThrough};
use crate::layers::{Backend, Context};
use crate::parse::parse_bool;
use crate::plugin::ExportInfo;
use nix::errno::Errno;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;

/// Longest description kept (the NBD limit on strings).
const MAX_DESC: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    Keep,
    Error,
    Empty,
    DefaultOnly,
    Explicit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Desc {
    Keep,
    None,
    Fixed(String),
    Script(String),
}

/// Quote `s` for the shell (single quotes, `'` written as `'\''`).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Desc {
    /// The description of export `name`, given the plugin's `def`.
    fn get(&self, name: &str, def: Option<String>) -> Option<String> {
        match self {
            Desc::Keep => def,
            Desc::None => None,
            Desc::Fixed(s) => Some(s.clone()),
            Desc::Script(script) => run_script(script, name),
        }
    }
}

/// Run the description script for `name`; failures give no description.
fn run_script(script: &str, name: &str) -> Option<String> {
    let cmd = format!("export name; name={}\n{script}\n", shell_quote(name));
    crate::log::debug(format!("exportname: {cmd}"));
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(&cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| crate::log::debug(format!("exportname: cannot run script: {e}")))
        .ok()?;
    let mut out = Vec::new();
    let stdout = child.stdout.take()?;
    let r = stdout.take(MAX_DESC as u64).read_to_end(&mut out);
    // Whatever the script prints beyond the limit is not read; it then
    // gets EPIPE, and it is reaped here either way.
    let _ = child.wait();
    if let Err(e) = r {
        crate::log::debug(format!("exportname: reading script output: {e}"));
        return None;
    }
    if out.last() == Some(&b'\n') {
        out.pop();
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

struct Config {
    default_export: Option<String>,
    list: List,
    strict: bool,
    exports: Vec<String>,
    desc: Desc,
}

pub struct ExportName {
    cfg: Arc<Config>,
}

impl ExportName {
    pub fn new() -> Self {
        ExportName {
            cfg: Arc::new(Config {
                default_export: None,
                list: List::Keep,
                strict: false,
                exports: Vec::new(),
                desc: Desc::Keep,
            }),
        }
    }

    fn cfg_mut(&mut self) -> &mut Config {
        Arc::get_mut(&mut self.cfg).expect("configured before serving")
    }
}

impl Default for ExportName {
    fn default() -> Self {
        Self::new()
    }
}

impl Filter for ExportName {
    fn name(&self) -> &'static str {
        "exportname"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit exportname filter")
    }

    fn description(&self) -> &'static str {
        "Adjust export names and descriptions between client and plugin."
    }

    fn config_help(&self) -> &'static str {
        "default-export=<NAME>     Canonical name for the \"\" default export.\n\
         exportname-list=<MODE>    Which exports to advertise: keep (default), error,\n\
         \x20                         empty, defaultonly, explicit.\n\
         exportname-strict=<BOOL>  Limit clients to explicit exports (default false).\n\
         exportname=<NAME>         Add an explicit export name, may be repeated.\n\
         exportdesc=<MODE>         Set descriptions according to mode: keep (default),\n\
         \x20                         none, fixed:STRING, script:SCRIPT."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let cfg = self.cfg_mut();
        match key {
            "default-export" | "default_export" => {
                cfg.default_export = (!value.is_empty()).then(|| value.to_string())
            }
            "exportname-list" | "exportname_list" => {
                cfg.list = match value {
                    "keep" => List::Keep,
                    "error" => List::Error,
                    "empty" => List::Empty,
                    "defaultonly" | "default-only" => List::DefaultOnly,
                    "explicit" => List::Explicit,
                    _ => {
                        return Err(Error::config(format!(
                            "exportname: unrecognized exportname-list mode: {value} \
                             (expecting keep, error, empty, defaultonly or explicit)"
                        )))
                    }
                }
            }
            "exportname-strict" | "exportname_strict" => {
                cfg.strict = parse_bool(value)
                    .map_err(|e| Error::config(format!("exportname: {key}: {}", e.message())))?
            }
            "exportname" => {
                if value.len() > MAX_DESC {
                    return Err(Error::config(format!(
                        "exportname: export name too long (more than {MAX_DESC} bytes)"
                    )));
                }
                cfg.exports.push(value.to_string())
            }
            "exportdesc" => {
                cfg.desc = if value == "keep" {
                    Desc::Keep
                } else if value == "none" {
                    Desc::None
                } else if let Some(s) = value.strip_prefix("fixed:") {
                    Desc::Fixed(s.to_string())
                } else if let Some(s) = value.strip_prefix("script:") {
                    Desc::Script(s.to_string())
                } else {
                    return Err(Error::config(format!(
                        "exportname: unrecognized exportdesc mode: {value} \
                         (expecting keep, none, fixed:STRING or script:SCRIPT)"
                    )));
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn list_exports(
        &self,
        next: &dyn Backend,
        readonly: bool,
        is_tls: bool,
    ) -> Result<Vec<ExportInfo>> {
        let cfg = &self.cfg;
        let source = match cfg.list {
            List::Keep => next.list_exports(readonly, is_tls)?,
            List::Error => {
                return Err(Error::new(Errno::EPERM, "export list restricted by policy"))
            }
            List::Empty => return Ok(Vec::new()),
            List::DefaultOnly => {
                return Ok(vec![ExportInfo::named(
                    self.default_export(next, readonly, is_tls)?,
                )])
            }
            List::Explicit => cfg
                .exports
                .iter()
                .map(|n| ExportInfo::named(n.clone()))
                .collect(),
        };
        Ok(source
            .into_iter()
            .map(|e| ExportInfo {
                description: cfg.desc.get(&e.name, e.description),
                name: e.name,
            })
            .collect())
    }

    fn default_export(&self, next: &dyn Backend, readonly: bool, is_tls: bool) -> Result<String> {
        let cfg = &self.cfg;
        if cfg.strict {
            // The default export is allowed only if "" was listed.
            if cfg.exports.iter().any(|n| n.is_empty()) {
                return Ok(cfg.default_export.clone().unwrap_or_default());
            }
            return Err(Error::new(
                Errno::ENOENT,
                "default export (\"\") not permitted",
            ));
        }
        match &cfg.default_export {
            Some(name) => Ok(name.clone()),
            None => next.default_export(readonly, is_tls),
        }
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        if self.cfg.strict && !self.cfg.exports.iter().any(|n| n == export) {
            return Err(Error::new(
                Errno::ENOENT,
                format!("export '{export}' not found"),
            ));
        }
        Ok(Box::new(Ctx {
            cfg: self.cfg.clone(),
            name: export.to_string(),
            next: PassThrough(next.open(readonly, export, is_tls)?),
        }))
    }
}

struct Ctx {
    cfg: Arc<Config>,
    name: String,
    next: PassThrough,
}

impl FilterContext for Ctx {
    fn next(&self) -> &dyn Context {
        self.next.next()
    }

    fn export_description(&self) -> Result<Option<String>> {
        let def = if self.cfg.desc == Desc::Keep {
            self.next().export_description()?
        } else {
            None
        };
        Ok(self.cfg.desc.get(&self.name, def))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn scripts_see_the_name() {
        let d = Desc::Script("echo \"<$name>\"".into());
        assert_eq!(d.get("a'b $x", None).as_deref(), Some("<a'b $x>"));
        // Only the first 4096 bytes are kept; one final newline dropped.
        let d = Desc::Script("head -c 10000 /dev/zero | tr '\\0' x".into());
        assert_eq!(d.get("", None).unwrap().len(), MAX_DESC);
        let d = Desc::Script("printf 'x\\n\\n'".into());
        assert_eq!(d.get("", None).as_deref(), Some("x\n"));
    }

    #[test]
    fn parameters() {
        let mut f = ExportName::new();
        assert!(f.config("exportname", "a").unwrap());
        assert!(f.config("exportname", "").unwrap());
        assert!(f.config("exportname-list", "default-only").unwrap());
        assert!(f.config("exportname-strict", "yes").unwrap());
        assert!(f.config("exportdesc", "fixed:hello: world").unwrap());
        assert!(f.config("default-export", "").unwrap());
        assert!(!f.config("export", "a").unwrap());
        assert_eq!(f.cfg.exports, ["a", ""]);
        assert_eq!(f.cfg.list, List::DefaultOnly);
        assert!(f.cfg.strict);
        assert_eq!(f.cfg.desc, Desc::Fixed("hello: world".into()));
        assert_eq!(f.cfg.default_export, None);
        for (k, v) in [
            ("exportname-list", "all"),
            ("exportname-strict", "maybe"),
            ("exportdesc", "fixed"),
            ("exportdesc", "shell:x"),
        ] {
            assert!(f.config(k, v).is_err(), "{k}={v}");
        }
    }
}
