//! The methods shared by `sh` and `eval`: each plugin callback becomes one
//! call of the script (or snippet) with nbdkit-sh-plugin(3)'s arguments,
//! and its output is parsed here.  The two plugins differ only in how a
//! method name is resolved to something to run ([`Core::target`]) and in
//! their configuration.

use super::call::{Call, Status, Target, TEXT_LIMIT};
use crate::error::{Error, Result};
use crate::extents::{Extents, HOLE, ZERO};
use crate::parse::parse_size;
use crate::plugin::{
    BlockSize, CacheMode, ExportInfo, FuaMode, Handle, ThreadModel, ZeroFlags, ZeroMode,
};
use nix::errno::Errno;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Where the methods come from.
pub enum Source {
    /// `sh`: one script for every method (`None` until `script=` is seen).
    Script(Option<(Target, String)>),
    /// `eval`: one snippet per method, and `missing=` for the others.
    Snippets {
        methods: HashMap<String, Target>,
        missing: Option<Target>,
    },
}

/// The state shared by the plugin and its handles.
pub struct Core {
    pub tmpdir: PathBuf,
    pub source: Source,
    thread_model: OnceLock<ThreadModel>,
}

fn tf(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

impl Core {
    /// Create the private temporary directory (`$tmpdir` of every call).
    pub fn new(prefix: &str, source: Source) -> Result<Core> {
        let template = std::env::temp_dir().join(format!("{prefix}XXXXXX"));
        let tmpdir = nix::unistd::mkdtemp(&template)
            .map_err(|e| Error::os(e, format!("mkdtemp: {}", template.display())))?;
        // Before any thread exists (configuration time): every script, and
        // a --run command, sees it.
        std::env::set_var("tmpdir", &tmpdir);
        crate::log::debug(format!("{prefix}: load: tmpdir: {}", tmpdir.display()));
        Ok(Core {
            tmpdir,
            source,
            thread_model: OnceLock::new(),
        })
    }

    /// Remove the temporary directory (errors ignored).
    pub fn remove_tmpdir(&self) {
        let _ = std::fs::remove_dir_all(&self.tmpdir);
    }

    pub fn tmpdir(&self) -> &Path {
        &self.tmpdir
    }

    /// What runs `method`, and the name its errors carry; `None` when the
    /// method is missing without needing to run anything.
    fn target<'a>(&'a self, method: &'a str) -> Option<(&'a Target, &'a str)> {
        match &self.source {
            Source::Script(Some((t, label))) => Some((t, label.as_str())),
            Source::Script(None) => None,
            Source::Snippets { methods, missing } => methods
                .get(method)
                .or(missing.as_ref())
                .map(|t| (t, method)),
        }
    }

    /// The name errors about `method` carry.
    pub fn label<'a>(&'a self, method: &'a str) -> &'a str {
        match &self.source {
            Source::Script(Some((_, label))) => label,
            _ => method,
        }
    }

    /// Run `method` with `args`.
    pub fn call_with(
        &self,
        method: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
        stdout_limit: usize,
    ) -> Result<Status> {
        let Some((target, label)) = self.target(method) else {
            return Ok(Status::Missing);
        };
        Call {
            target,
            label,
            method,
            args,
            stdin,
            stdout_limit,
        }
        .run()
    }

    /// Run a method whose output (if any) is text.
    pub fn call(&self, method: &str, args: &[&str]) -> Result<Status> {
        self.call_with(method, args, None, TEXT_LIMIT)
    }

    /// The error for exit status 3 where no boolean is expected.
    pub fn unexpected_false(&self, method: &str) -> Error {
        Error::new(
            Errno::EIO,
            format!(
                "{}: {method} method returned unexpected code (3/false)",
                self.label(method)
            ),
        )
    }

    /// A method whose only result is success: missing is fine too.
    pub fn call_void(&self, method: &str, args: &[&str]) -> Result<()> {
        match self.call(method, args)? {
            Status::Ok(_) | Status::Missing => Ok(()),
            Status::False => Err(self.unexpected_false(method)),
        }
    }

    /// A method that prints a string: `None` when missing.  One trailing
    /// newline is removed.
    pub fn call_string(&self, method: &str, args: &[&str]) -> Result<Option<String>> {
        match self.call(method, args)? {
            Status::Ok(out) => Ok(Some(chomp(&out))),
            Status::Missing => Ok(None),
            Status::False => Err(self.unexpected_false(method)),
        }
    }

    pub fn load(&self) -> Result<()> {
        self.call_void("load", &[])
    }

    /// `unload`: errors are logged and otherwise ignored.
    pub fn unload(&self) {
        if let Err(e) = self.call("unload", &[]) {
            crate::log::error(e.message());
        }
    }

    pub fn dump_plugin(&self) -> Vec<String> {
        let mut lines = vec!["max_known_status=3".to_string()];
        match self.call("dump_plugin", &[]) {
            Ok(Status::Ok(out)) => {
                lines.extend(String::from_utf8_lossy(&out).lines().map(str::to_string))
            }
            Ok(Status::Missing) => {}
            Ok(Status::False) => crate::log::error(self.unexpected_false("dump_plugin").message()),
            Err(e) => crate::log::error(e.message()),
        }
        lines
    }

    pub fn config_complete(&self) -> Result<()> {
        self.call_void("config_complete", &[])?;
        let model = self.ask_thread_model()?;
        let _ = self.thread_model.set(model);
        Ok(())
    }

    fn ask_thread_model(&self) -> Result<ThreadModel> {
        if let Source::Script(None) = self.source {
            return Ok(ThreadModel::Parallel);
        }
        let Some(s) = self.call_string("thread_model", &[])? else {
            return Ok(ThreadModel::SerializeAllRequests);
        };
        let s = s.trim();
        Ok(match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "parallel" => ThreadModel::Parallel,
            "serialize_requests" => ThreadModel::SerializeRequests,
            "serialize_all_requests" => ThreadModel::SerializeAllRequests,
            "serialize_connections" => ThreadModel::SerializeConnections,
            _ => {
                crate::log::debug(format!(
                    "{}: ignoring unrecognized thread model: {s}",
                    self.label("thread_model")
                ));
                ThreadModel::SerializeAllRequests
            }
        })
    }

    /// The script's thread model (asked once, at `config_complete`; asked
    /// here if needed earlier, for `--dump-plugin`).
    pub fn thread_model(&self) -> ThreadModel {
        *self.thread_model.get_or_init(|| {
            self.ask_thread_model().unwrap_or_else(|e| {
                crate::log::error(e.message());
                ThreadModel::SerializeAllRequests
            })
        })
    }

    pub fn preconnect(&self, readonly: bool) -> Result<()> {
        self.call_void("preconnect", &[tf(readonly), ""])
    }

    fn exports_method(
        &self,
        method: &str,
        readonly: bool,
        is_tls: bool,
    ) -> Result<Option<Vec<ExportInfo>>> {
        match self.call(method, &[tf(readonly), tf(is_tls)])? {
            Status::Ok(out) => parse_exports(&String::from_utf8_lossy(&out))
                .map(Some)
                .map_err(|m| {
                    Error::new(
                        Errno::EINVAL,
                        format!("{}: {method}: {m}", self.label(method)),
                    )
                }),
            Status::Missing => Ok(None),
            Status::False => Err(self.unexpected_false(method)),
        }
    }

    pub fn list_exports(&self, readonly: bool, is_tls: bool) -> Result<Vec<ExportInfo>> {
        match self.exports_method("list_exports", readonly, is_tls)? {
            Some(list) => Ok(list),
            None => Ok(vec![ExportInfo::named(
                self.default_export(readonly, is_tls)?,
            )]),
        }
    }

    pub fn default_export(&self, readonly: bool, is_tls: bool) -> Result<String> {
        Ok(self
            .exports_method("default_export", readonly, is_tls)?
            .and_then(|l| l.into_iter().next())
            .map(|e| e.name)
            .unwrap_or_default())
    }

    pub fn open(
        self: &Arc<Self>,
        readonly: bool,
        export_name: &str,
        is_tls: bool,
    ) -> Result<Box<dyn Handle>> {
        let h = self
            .call_string("open", &[tf(readonly), export_name, tf(is_tls)])?
            .unwrap_or_default();
        if !h.is_empty() {
            crate::log::debug(format!("sh: handle: {h}"));
        }
        Ok(Box::new(ScriptHandle {
            core: self.clone(),
            h,
            can_flush: OnceLock::new(),
            can_zero: OnceLock::new(),
        }))
    }
}

/// Remove one trailing newline.
fn chomp(out: &[u8]) -> String {
    let out = out.strip_suffix(b"\n").unwrap_or(out);
    String::from_utf8_lossy(out).into_owned()
}

/// Parse `list_exports` output: a first line `NAMES`, `INTERLEAVED` or
/// `NAMES+DESCRIPTIONS` says how the rest reads; any other first line is
/// the first of a list of names.
pub fn parse_exports(out: &str) -> std::result::Result<Vec<ExportInfo>, String> {
    let mut lines: Vec<&str> = out.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    let names = |l: &[&str]| l.iter().map(|n| ExportInfo::named(*n)).collect();
    match lines.first() {
        None => Ok(Vec::new()),
        Some(&"NAMES") => Ok(names(&lines[1..])),
        Some(&"INTERLEAVED") => {
            let rest = &lines[1..];
            if !rest.len().is_multiple_of(2) {
                return Err(format!(
                    "INTERLEAVED list has an odd number of lines ({}): \
                     every name needs a description line",
                    rest.len()
                ));
            }
            Ok(rest
                .chunks(2)
                .map(|p| ExportInfo {
                    name: p[0].to_string(),
                    description: Some(p[1].to_string()),
                })
                .collect())
        }
        Some(&"NAMES+DESCRIPTIONS") => {
            let rest = &lines[1..];
            if !rest.len().is_multiple_of(2) {
                return Err(format!(
                    "NAMES+DESCRIPTIONS list has an odd number of lines ({})",
                    rest.len()
                ));
            }
            let (n, d) = rest.split_at(rest.len() / 2);
            Ok(n.iter()
                .zip(d)
                .map(|(n, d)| ExportInfo {
                    name: n.to_string(),
                    description: Some(d.to_string()),
                })
                .collect())
        }
        Some(_) => Ok(names(&lines)),
    }
}

/// Parse `extents` output into `extents`: lines `OFFSET LENGTH [TYPE]`,
/// where TYPE is a number or a comma-separated list of `hole`, `zero`
/// (and `data`, meaning neither).
pub fn parse_extents(out: &str, extents: &mut Extents) -> std::result::Result<(), String> {
    let mut any = false;
    for line in out.lines() {
        let mut f = line.split_whitespace();
        let Some(off) = f.next() else { continue };
        let Some(len) = f.next() else {
            return Err(format!("cannot parse extent line '{line}': missing length"));
        };
        let offset = parse_size(off)
            .map_err(|e| format!("extent line '{line}': offset: {}", e.message()))?;
        let length = parse_size(len)
            .map_err(|e| format!("extent line '{line}': length: {}", e.message()))?;
        let flags = match f.next() {
            None => 0,
            Some(t) if t.bytes().all(|b| b.is_ascii_digit()) => t
                .parse::<u32>()
                .map_err(|_| format!("extent line '{line}': type {t} is too large"))?,
            Some(t) => {
                let mut flags = 0;
                for w in t.split(',') {
                    flags |= match w.to_ascii_lowercase().as_str() {
                        "hole" => HOLE,
                        "zero" => ZERO,
                        "data" | "" => 0,
                        _ => {
                            return Err(format!(
                                "extent line '{line}': unknown type '{w}' \
                                 (expecting a number or hole, zero)"
                            ))
                        }
                    };
                }
                flags
            }
        };
        extents
            .add(offset, length, flags)
            .map_err(|e| format!("extent line '{line}': {}", e.message()))?;
        any = true;
    }
    if !any {
        return Err("the script printed no extents".into());
    }
    Ok(())
}

/// A connection's handle: the string `open` printed.
pub struct ScriptHandle {
    core: Arc<Core>,
    h: String,
    can_flush: OnceLock<bool>,
    can_zero: OnceLock<bool>,
}

impl ScriptHandle {
    fn boolean(&self, method: &str) -> Result<Option<bool>> {
        match self.core.call(method, &[&self.h])? {
            Status::Ok(_) => Ok(Some(true)),
            Status::False => Ok(Some(false)),
            Status::Missing => Ok(None),
        }
    }

    fn boolean_cached(&self, cell: &OnceLock<bool>, method: &str) -> Result<bool> {
        if let Some(b) = cell.get() {
            return Ok(*b);
        }
        let b = self.boolean(method)?.unwrap_or(false);
        Ok(*cell.get_or_init(|| b))
    }

    /// `can_fua` and `can_cache` print none, emulate or native.
    fn mode(&self, method: &str) -> Result<Option<u8>> {
        let Some(s) = self.core.call_string(method, &[&self.h])? else {
            return Ok(None);
        };
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Some(0)),
            "emulate" => Ok(Some(1)),
            "native" => Ok(Some(2)),
            _ => Err(Error::new(
                Errno::EINVAL,
                format!(
                    "{}: could not parse output from {method} method: {s} \
                     (expecting none, emulate or native)",
                    self.core.label(method)
                ),
            )),
        }
    }

    fn missing(&self, method: &str, why: &str) -> Error {
        Error::new(
            Errno::EIO,
            format!("{}: the {method} method is {why}", self.core.label(method)),
        )
    }

    fn range_call(&self, method: &str, count: u64, offset: u64, flags: &str) -> Result<Status> {
        let (c, o) = (count.to_string(), offset.to_string());
        self.core.call(method, &[&self.h, &c, &o, flags])
    }
}

fn flags_string(fua: bool, may_trim: bool, req_one: bool, fast: bool) -> String {
    let mut v = Vec::new();
    for (on, name) in [
        (fua, "fua"),
        (may_trim, "may_trim"),
        (req_one, "req_one"),
        (fast, "fast"),
    ] {
        if on {
            v.push(name);
        }
    }
    v.join(",")
}

impl Drop for ScriptHandle {
    fn drop(&mut self) {
        if let Err(e) = self.core.call("close", &[&self.h]) {
            crate::log::error(e.message());
        }
    }
}

impl Handle for ScriptHandle {
    fn get_size(&self) -> Result<u64> {
        let m = "get_size";
        let Some(s) = self.core.call_string(m, &[&self.h])? else {
            return Err(self.missing(m, "required"));
        };
        parse_size(s.trim()).map_err(|e| {
            Error::new(
                Errno::EINVAL,
                format!(
                    "{}: could not parse output from get_size method: '{s}': {}",
                    self.core.label(m),
                    e.message()
                ),
            )
        })
    }

    fn export_description(&self) -> Result<Option<String>> {
        self.core.call_string("export_description", &[&self.h])
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        let m = "block_size";
        let Some(s) = self.core.call_string(m, &[&self.h])? else {
            return Ok(None);
        };
        let bad = |why: String| {
            Error::new(
                Errno::EINVAL,
                format!(
                    "{}: could not parse output from block_size method: '{s}': {why}",
                    self.core.label(m)
                ),
            )
        };
        let words: Vec<&str> = s.split_whitespace().collect();
        if words.len() != 3 {
            return Err(bad(format!(
                "expecting 3 sizes (minimum preferred maximum), got {}",
                words.len()
            )));
        }
        let mut v = [0u32; 3];
        for (slot, w) in v.iter_mut().zip(&words) {
            let n = parse_size(w).map_err(|e| bad(e.message().to_string()))?;
            *slot = u32::try_from(n).map_err(|_| bad(format!("{w} is larger than 4294967295")))?;
        }
        Ok(Some(BlockSize {
            minimum: v[0],
            preferred: v[1],
            maximum: v[2],
        }))
    }

    fn can_write(&self) -> Result<bool> {
        Ok(self.boolean("can_write")?.unwrap_or(false))
    }

    fn can_flush(&self) -> Result<bool> {
        self.boolean_cached(&self.can_flush, "can_flush")
    }

    fn is_rotational(&self) -> Result<bool> {
        Ok(self.boolean("is_rotational")?.unwrap_or(false))
    }

    fn can_trim(&self) -> Result<bool> {
        Ok(self.boolean("can_trim")?.unwrap_or(false))
    }

    fn can_zero(&self) -> Result<ZeroMode> {
        Ok(if self.boolean_cached(&self.can_zero, "can_zero")? {
            ZeroMode::Native
        } else {
            ZeroMode::Emulate
        })
    }

    fn can_fast_zero(&self) -> Result<bool> {
        match self.boolean("can_fast_zero")? {
            Some(b) => Ok(b),
            None => Ok(self.can_zero()? == ZeroMode::Emulate),
        }
    }

    fn can_extents(&self) -> Result<bool> {
        Ok(self.boolean("can_extents")?.unwrap_or(false))
    }

    fn can_fua(&self) -> Result<FuaMode> {
        Ok(match self.mode("can_fua")? {
            Some(0) => FuaMode::None,
            Some(1) => FuaMode::Emulate,
            Some(_) => FuaMode::Native,
            None if self.can_flush()? => FuaMode::Emulate,
            None => FuaMode::None,
        })
    }

    fn can_multi_conn(&self) -> Result<bool> {
        Ok(self.boolean("can_multi_conn")?.unwrap_or(false))
    }

    fn can_cache(&self) -> Result<CacheMode> {
        Ok(match self.mode("can_cache")? {
            Some(1) => CacheMode::Emulate,
            Some(2) => CacheMode::Native,
            _ => CacheMode::None,
        })
    }

    fn pread(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let m = "pread";
        let (c, o) = (buf.len().to_string(), offset.to_string());
        match self
            .core
            .call_with(m, &[&self.h, &c, &o], None, buf.len())?
        {
            Status::Ok(data) if data.len() == buf.len() => {
                buf.copy_from_slice(&data);
                Ok(())
            }
            Status::Ok(data) => Err(Error::new(
                Errno::EIO,
                format!(
                    "{}: incorrect amount of data read: expecting {} bytes but \
                     received {} bytes from the script",
                    self.core.label(m),
                    buf.len(),
                    data.len()
                ),
            )),
            Status::Missing => Err(self.missing(m, "required")),
            Status::False => Err(self.core.unexpected_false(m)),
        }
    }

    fn pwrite(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        let m = "pwrite";
        let (c, o) = (buf.len().to_string(), offset.to_string());
        let f = flags_string(fua, false, false, false);
        match self
            .core
            .call_with(m, &[&self.h, &c, &o, &f], Some(buf), TEXT_LIMIT)?
        {
            Status::Ok(_) => Ok(()),
            Status::Missing => Err(self.missing(m, "not implemented (but can_write said true)")),
            Status::False => Err(self.core.unexpected_false(m)),
        }
    }

    fn flush(&self) -> Result<()> {
        self.core.call_void("flush", &[&self.h])
    }

    fn trim(&self, count: u64, offset: u64, fua: bool) -> Result<()> {
        let m = "trim";
        match self.range_call(m, count, offset, &flags_string(fua, false, false, false))? {
            Status::Ok(_) | Status::Missing => Ok(()),
            Status::False => Err(self.core.unexpected_false(m)),
        }
    }

    fn zero(&self, count: u64, offset: u64, flags: ZeroFlags) -> Result<()> {
        let m = "zero";
        let f = flags_string(flags.fua, flags.may_trim, false, flags.fast);
        match self.range_call(m, count, offset, &f)? {
            Status::Ok(_) => Ok(()),
            Status::Missing => {
                crate::log::debug("zero falling back to pwrite");
                Err(Error::new(Errno::EOPNOTSUPP, "zero method is missing"))
            }
            Status::False => Err(self.core.unexpected_false(m)),
        }
    }

    fn extents(&self, extents: &mut Extents, req_one: bool) -> Result<()> {
        let m = "extents";
        let count = extents.end() - extents.start();
        let f = flags_string(false, false, req_one, false);
        match self.range_call(m, count, extents.start(), &f)? {
            Status::Ok(out) => {
                parse_extents(&String::from_utf8_lossy(&out), extents).map_err(|why| {
                    Error::new(
                        Errno::EINVAL,
                        format!("{}: extents: {why}", self.core.label(m)),
                    )
                })
            }
            Status::Missing => Err(self.missing(m, "not implemented (but can_extents said true)")),
            Status::False => Err(self.core.unexpected_false(m)),
        }
    }

    fn cache(&self, count: u64, offset: u64) -> Result<()> {
        let m = "cache";
        let (c, o) = (count.to_string(), offset.to_string());
        match self.core.call(m, &[&self.h, &c, &o])? {
            Status::Ok(_) | Status::Missing => Ok(()),
            Status::False => Err(self.core.unexpected_false(m)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_list_forms() {
        let n = |v: &[&str]| v.iter().map(|s| ExportInfo::named(*s)).collect::<Vec<_>>();
        assert_eq!(parse_exports("").unwrap(), vec![]);
        assert_eq!(parse_exports("a\nb\n").unwrap(), n(&["a", "b"]));
        assert_eq!(parse_exports("NAMES\na\n\nb").unwrap(), n(&["a", "", "b"]));
        let d = |a: &str, b: &str| ExportInfo {
            name: a.into(),
            description: Some(b.into()),
        };
        assert_eq!(
            parse_exports("INTERLEAVED\na\nda\nb\ndb\n").unwrap(),
            vec![d("a", "da"), d("b", "db")]
        );
        assert_eq!(
            parse_exports("NAMES+DESCRIPTIONS\na\nb\nda\ndb\n").unwrap(),
            vec![d("a", "da"), d("b", "db")]
        );
        assert!(parse_exports("INTERLEAVED\na\n").is_err());
        assert!(parse_exports("NAMES+DESCRIPTIONS\na\n").is_err());
    }

    #[test]
    fn extent_lines() {
        let mut e = Extents::new(0, 10 << 20);
        parse_extents("0  1M\n1M 9M  hole,zero\n", &mut e).unwrap();
        let l = e.list();
        assert_eq!((l[0].offset, l[0].length, l[0].flags), (0, 1 << 20, 0));
        assert_eq!(
            (l[1].offset, l[1].length, l[1].flags),
            (1 << 20, 9 << 20, 3)
        );
        let mut e = Extents::new(0, 100);
        parse_extents("0 50 1\n50 50 2\n", &mut e).unwrap();
        assert_eq!(e.list()[1].flags, 2);
        for bad in ["0", "x 1", "0 1 bogus", "", "10 5"] {
            let mut e = Extents::new(0, 100);
            assert!(parse_extents(bad, &mut e).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flag_strings() {
        assert_eq!(flags_string(false, false, false, false), "");
        assert_eq!(flags_string(true, true, false, true), "fua,may_trim,fast");
        assert_eq!(flags_string(false, false, true, false), "req_one");
    }
}
