//! The `log` filter: one line per request and per reply, with connection and
//! request ids, in nbdkit's log file format (`logfile=`), and/or one run of a
//! shell script per line (`logscript=`).
//!
//! A file line is `DATE TIME.USEC [connection=N ][...]ACT[ id=N][ ARGS][ ...]`:
//! a request line ends with ` ...`, its reply line starts the action with
//! `...`.  Lines outside any connection (`Ready`, `Fork`, `Preconnect`,
//! `ListExports`) have no `connection=`.
//!
//! Cost: a line is formatted outside any lock, then appended to one shared
//! buffer under one mutex.  The buffer goes to the file when no request is in
//! flight any more (so an idle or lightly loaded server's log is always up to
//! date), when it grows past [`FLUSH_AT`], and for every line outside
//! requests (connect, disconnect...).  So under load a burst of requests costs
//! a `write(2)` per 64 KiB, not two per request.

use crate::error::{Error, Result};
use crate::extents::{self, Extents};
use crate::filter::{Filter, FilterContext};
use crate::layers::{flags, Backend, Context};
use crate::parse::parse_bool;
use crate::plugin::{BlockSize, ExportInfo, ThreadModel};
use crate::server::lock;
use crate::server::peer::Peer;
use nix::errno::Errno;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Buffered log text is written out once it reaches this size.
const FLUSH_AT: usize = 64 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Enter,
    Leave,
    Print,
}

/// Where the lines go; shared by the filter and every connection.
struct Output {
    file: OnceLock<File>,
    script: Option<String>,
    buf: Mutex<Vec<u8>>,
    /// Serializes writes to the file, so flushed buffers keep their order.
    write_lock: Mutex<()>,
    /// Requests between their request line and their reply line.
    in_flight: AtomicUsize,
    connections: AtomicU64,
    preconnects: AtomicU64,
    list_exports: AtomicU64,
}

impl Output {
    fn new(script: Option<String>) -> Self {
        Output {
            file: OnceLock::new(),
            script,
            buf: Mutex::new(Vec::with_capacity(FLUSH_AT + 4096)),
            write_lock: Mutex::new(()),
            in_flight: AtomicUsize::new(0),
            connections: AtomicU64::new(0),
            preconnects: AtomicU64::new(0),
            list_exports: AtomicU64::new(0),
        }
    }

    /// One log event: `conn` is the connection number (0: none), `id` the
    /// request id (0: none), `args` the space-separated `key=value` text.
    fn emit(&self, conn: u64, id: u64, act: &str, kind: Kind, args: &str) {
        if self.file.get().is_some() {
            let line = file_line(&timestamp(), conn, id, act, kind, args);
            self.append(line.as_bytes(), kind);
        }
        if let Some(script) = &self.script {
            run_script(script, conn, id, act, kind, args);
        }
    }

    fn append(&self, line: &[u8], kind: Kind) {
        let full = {
            let mut buf = lock(&self.buf);
            buf.extend_from_slice(line);
            buf.len()
        };
        // A request line is followed by its reply: no need to write yet.
        let now = match kind {
            Kind::Print => true,
            Kind::Enter => full >= FLUSH_AT,
            Kind::Leave => full >= FLUSH_AT || self.in_flight.load(Ordering::Acquire) == 0,
        };
        if now {
            self.flush();
        }
    }

    fn flush(&self) {
        let Some(mut file) = self.file.get() else {
            return;
        };
        let mut buf = lock(&self.buf);
        if buf.is_empty() {
            return;
        }
        let data = std::mem::replace(&mut *buf, Vec::with_capacity(FLUSH_AT + 4096));
        // Take the write lock before letting others append, so buffers reach
        // the file in the order they were filled.
        let _w = lock(&self.write_lock);
        drop(buf);
        // Logging is best effort: a full disk must not fail requests.
        let _ = file.write_all(&data);
    }
}

/// `YYYY-MM-DD HH:MM:SS.UUUUUU` in UTC, as nbdkit's log filter.
fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (y, m, d) = civil_from_days((secs / 86400) as i64);
    let t = secs % 86400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}",
        t / 3600,
        t / 60 % 60,
        t % 60,
        now.subsec_micros()
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn file_line(ts: &str, conn: u64, id: u64, act: &str, kind: Kind, args: &str) -> String {
    let mut s = String::with_capacity(64 + act.len() + args.len());
    s.push_str(ts);
    if conn != 0 {
        let _ = write!(s, " connection={conn}");
    }
    s.push(' ');
    if kind == Kind::Leave {
        s.push_str("...");
    }
    s.push_str(act);
    if id != 0 {
        let _ = write!(s, " id={id}");
    }
    if !args.is_empty() {
        s.push(' ');
        s.push_str(args);
    }
    if kind == Kind::Enter {
        s.push_str(" ...");
    }
    s.push('\n');
    s
}

/// The shell text run for one event: variable assignments, then the script.
fn script_text(script: &str, conn: u64, id: u64, act: &str, kind: Kind, args: &str) -> String {
    let mut s = format!("act={act}\n");
    if conn != 0 {
        let _ = writeln!(s, "connection={conn}");
    }
    s.push_str(match kind {
        Kind::Enter => "type=ENTER\n",
        Kind::Leave => "type=LEAVE\n",
        Kind::Print => "type=PRINT\n",
    });
    if id != 0 {
        let _ = writeln!(s, "id={id}");
    }
    s.push_str(args);
    s.push('\n');
    s.push_str(script);
    s
}

fn run_script(script: &str, conn: u64, id: u64, act: &str, kind: Kind, args: &str) {
    let text = script_text(script, conn, id, act, kind, args);
    match std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&text)
        .stdin(std::process::Stdio::null())
        .status()
    {
        Ok(st) if st.success() => {}
        Ok(st) => crate::log::error(format!("logscript: script failed: {st}")),
        Err(e) => crate::log::error(format!("logscript: /bin/sh: {e}")),
    }
}

/// nbdkit's shell quoting: safe strings as they are, others in double
/// quotes with `$`, `` ` ``, `\` and `"` escaped.
fn shell_quote(s: &str, out: &mut String) {
    let safe = |c: char| c.is_ascii_alphanumeric() || "._-+/".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        out.push_str(s);
        return;
    }
    out.push('"');
    for c in s.chars() {
        if matches!(c, '$' | '`' | '\\' | '"') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// `return=0`, or `return=-1 error=NAME` with the NBD error the client sees.
fn result_text(r: &Result<()>) -> &'static str {
    match r {
        Ok(()) => "return=0",
        Err(e) => match e.errno() {
            Errno::EROFS | Errno::EPERM => "return=-1 error=EPERM",
            Errno::EIO => "return=-1 error=EIO",
            Errno::ENOMEM => "return=-1 error=ENOMEM",
            Errno::EDQUOT | Errno::EFBIG | Errno::ENOSPC => "return=-1 error=ENOSPC",
            Errno::ESHUTDOWN => "return=-1 error=ESHUTDOWN",
            Errno::EOPNOTSUPP => "return=-1 error=ENOTSUP",
            Errno::EOVERFLOW => "return=-1 error=EOVERFLOW",
            _ => "return=-1 error=EINVAL",
        },
    }
}

pub struct Log {
    file: Option<String>,
    append: bool,
    script: Option<String>,
    out: Arc<Output>,
    pid: AtomicU64,
}

impl Log {
    pub fn new() -> Self {
        Log {
            file: None,
            append: false,
            script: None,
            out: Arc::new(Output::new(None)),
            pid: AtomicU64::new(0),
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Self::new()
    }
}

impl Filter for Log {
    fn name(&self) -> &'static str {
        "log"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit log filter")
    }

    fn description(&self) -> &'static str {
        "Log all transactions to a file or script."
    }

    fn config_help(&self) -> &'static str {
        "logfile=<FILE>               The file to place the log in.\n\
         logappend=<BOOL>             True to append to the log (default false).\n\
         logscript=<SCRIPT>           Script to run for logging."
    }

    fn quick_requests(&self) -> bool {
        // File lines are buffered (see the module comment); a script runs a
        // process per line.
        self.script.is_none()
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "logfile" => {
                if value.is_empty() {
                    return Err(Error::config("log: logfile must not be empty"));
                }
                self.file = Some(value.to_string());
            }
            "logappend" => {
                self.append = parse_bool(value)
                    .map_err(|e| Error::config(format!("log: logappend: {}", e.message())))?
            }
            "logscript" => self.script = Some(value.to_string()),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        self.out = Arc::new(Output::new(self.script.clone()));
        Ok(())
    }

    fn get_ready(&self) -> Result<()> {
        if let Some(path) = &self.file {
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create(true);
            if self.append {
                o.append(true);
            } else {
                o.truncate(true);
            }
            let f = o
                .open(path)
                .map_err(|e| Error::io(e, format!("log: open: {path}")))?;
            let _ = self.out.file.set(f);
        }
        self.pid
            .store(u64::from(std::process::id()), Ordering::Relaxed);
        let model = crate::layers::server_thread_model();
        let n = match model {
            ThreadModel::SerializeConnections => 0,
            ThreadModel::SerializeAllRequests => 1,
            ThreadModel::SerializeRequests => 2,
            ThreadModel::Parallel => 3,
        };
        self.out
            .emit(0, 0, "Ready", Kind::Print, &format!("thread_model={n}"));
        Ok(())
    }

    fn after_fork(&self) -> Result<()> {
        if self.pid.load(Ordering::Relaxed) != u64::from(std::process::id()) {
            self.out.emit(0, 0, "Fork", Kind::Print, "");
        }
        Ok(())
    }

    fn cleanup(&self) {
        self.out.flush();
    }

    fn preconnect(&self, next: &dyn Backend, readonly: bool, peer: &Peer) -> Result<()> {
        let id = self.out.preconnects.fetch_add(1, Ordering::Relaxed) + 1;
        let args = format!("readonly={}", u8::from(readonly));
        self.out.emit(0, id, "Preconnect", Kind::Enter, &args);
        let r = next.preconnect(readonly, peer);
        self.out
            .emit(0, id, "Preconnect", Kind::Leave, result_text(&r));
        r
    }

    fn list_exports(
        &self,
        next: &dyn Backend,
        readonly: bool,
        is_tls: bool,
    ) -> Result<Vec<ExportInfo>> {
        let id = self.out.list_exports.fetch_add(1, Ordering::Relaxed) + 1;
        let args = format!("readonly={} tls={}", u8::from(readonly), u8::from(is_tls));
        self.out.emit(0, id, "ListExports", Kind::Enter, &args);
        let r = next.list_exports(readonly, is_tls);
        let text = match &r {
            Ok(list) => {
                let mut s = String::from("exports=(");
                for (i, e) in list.iter().enumerate() {
                    if i > 0 {
                        s.push(' ');
                    }
                    shell_quote(&e.name, &mut s);
                }
                s.push_str(") return=0");
                s
            }
            Err(e) => result_text(&Err(e.clone())).to_string(),
        };
        self.out.emit(0, id, "ListExports", Kind::Leave, &text);
        r
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        let ctx = next.open(readonly, export, is_tls)?;
        let conn = self.out.connections.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Box::new(LogContext {
            next: ctx,
            out: self.out.clone(),
            conn,
            ids: AtomicU64::new(0),
            export: export.to_string(),
            tls: is_tls,
        }))
    }
}

struct LogContext {
    next: Box<dyn Context>,
    out: Arc<Output>,
    conn: u64,
    ids: AtomicU64,
    export: String,
    tls: bool,
}

impl LogContext {
    /// Log the request line; returns its id.
    fn enter(&self, act: &str, args: &str) -> u64 {
        let id = self.ids.fetch_add(1, Ordering::Relaxed) + 1;
        self.out.in_flight.fetch_add(1, Ordering::AcqRel);
        self.out.emit(self.conn, id, act, Kind::Enter, args);
        id
    }

    fn leave_text(&self, id: u64, act: &str, text: &str) {
        self.out.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.out.emit(self.conn, id, act, Kind::Leave, text);
    }

    fn leave(&self, id: u64, act: &str, r: &Result<()>) {
        self.leave_text(id, act, result_text(r));
    }

    fn simple(&self, act: &str, args: &str, call: impl FnOnce() -> Result<()>) -> Result<()> {
        let id = self.enter(act, args);
        let r = call();
        self.leave(id, act, &r);
        r
    }
}

impl FilterContext for LogContext {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn prepare(&self, _readonly: bool) -> Result<()> {
        let n = &self.next;
        let size = n.get_size()?;
        let bs = n.block_size()?.unwrap_or(BlockSize {
            minimum: 0,
            preferred: 0,
            maximum: 0,
        });
        let (w, f, r, t) = (
            n.can_write()?,
            n.can_flush()?,
            n.is_rotational()?,
            n.can_trim()?,
        );
        let (z, fua, e, c, fz) = (
            n.can_zero()? as u8,
            n.can_fua()? as u8,
            n.can_extents()?,
            n.can_cache()? as u8,
            n.can_fast_zero()?,
        );
        let mut s = String::from("export=");
        shell_quote(&self.export, &mut s);
        let _ = write!(
            s,
            " tls={} size={size:#x} minsize={:#x} prefsize={:#x} maxsize={:#x} write={} \
             flush={} rotational={} trim={} zero={z} fua={fua} extents={} cache={c} fast_zero={}",
            u8::from(self.tls),
            bs.minimum,
            bs.preferred,
            bs.maximum,
            u8::from(w),
            u8::from(f),
            u8::from(r),
            u8::from(t),
            u8::from(e),
            u8::from(fz),
        );
        self.out.emit(self.conn, 0, "Connect", Kind::Print, &s);
        Ok(())
    }

    fn finalize(&self) -> Result<()> {
        let n = self.ids.load(Ordering::Relaxed);
        self.out.emit(
            self.conn,
            0,
            "Disconnect",
            Kind::Print,
            &format!("transactions={n}"),
        );
        Ok(())
    }

    fn pread(&self, buf: &mut [u8], offset: u64, f: u32) -> Result<()> {
        let args = format!("offset={offset:#x} count={:#x}", buf.len());
        self.simple("Read", &args, || self.next.pread(buf, offset, f))
    }

    fn pwrite(&self, buf: &[u8], offset: u64, f: u32) -> Result<()> {
        let args = format!(
            "offset={offset:#x} count={:#x} fua={}",
            buf.len(),
            u8::from(f & flags::FUA != 0)
        );
        self.simple("Write", &args, || self.next.pwrite(buf, offset, f))
    }

    fn flush(&self, f: u32) -> Result<()> {
        self.simple("Flush", "", || self.next.flush(f))
    }

    fn trim(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        let args = format!(
            "offset={offset:#x} count={count:#x} fua={}",
            u8::from(f & flags::FUA != 0)
        );
        self.simple("Trim", &args, || self.next.trim(count, offset, f))
    }

    fn zero(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        let args = format!(
            "offset={offset:#x} count={count:#x} trim={} fua={} fast={}",
            u8::from(f & flags::MAY_TRIM != 0),
            u8::from(f & flags::FUA != 0),
            u8::from(f & flags::FAST_ZERO != 0)
        );
        self.simple("Zero", &args, || self.next.zero(count, offset, f))
    }

    fn cache(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        let args = format!("offset={offset:#x} count={count:#x}");
        self.simple("Cache", &args, || self.next.cache(count, offset, f))
    }

    fn extents(&self, ext: &mut Extents, f: u32) -> Result<()> {
        let args = format!(
            "offset={:#x} count={:#x} req_one={}",
            ext.start(),
            ext.end() - ext.start(),
            u8::from(f & flags::REQ_ONE != 0)
        );
        let id = self.enter("Extents", &args);
        let r = self.next.extents(ext, f);
        match &r {
            Ok(()) => {
                let mut s = String::from("extents=(");
                for (i, e) in ext.list().iter().enumerate() {
                    if i > 0 {
                        s.push(' ');
                    }
                    let hole = e.flags & extents::HOLE != 0;
                    let zero = e.flags & extents::ZERO != 0;
                    let kind = match (hole, zero) {
                        (true, true) => "hole,zero",
                        (true, false) => "hole",
                        (false, true) => "zero",
                        (false, false) => "",
                    };
                    let _ = write!(s, "{:#x} {:#x} \"{kind}\"", e.offset, e.length);
                }
                s.push_str(") return=0");
                self.leave_text(id, "Extents", &s);
            }
            Err(_) => self.leave(id, "Extents", &r),
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shapes() {
        let ts = "2020-01-01 00:00:00.000000";
        assert_eq!(
            file_line(ts, 1, 2, "Read", Kind::Enter, "offset=0x0 count=0x200"),
            "2020-01-01 00:00:00.000000 connection=1 Read id=2 offset=0x0 count=0x200 ...\n"
        );
        assert_eq!(
            file_line(ts, 1, 2, "Read", Kind::Leave, "return=0"),
            "2020-01-01 00:00:00.000000 connection=1 ...Read id=2 return=0\n"
        );
        assert_eq!(
            file_line(ts, 0, 0, "Fork", Kind::Print, ""),
            "2020-01-01 00:00:00.000000 Fork\n"
        );
        assert_eq!(
            file_line(ts, 3, 1, "Flush", Kind::Enter, ""),
            "2020-01-01 00:00:00.000000 connection=3 Flush id=1 ...\n"
        );
    }

    #[test]
    fn quoting() {
        let q = |s: &str| {
            let mut o = String::new();
            shell_quote(s, &mut o);
            o
        };
        assert_eq!(q(""), "\"\"");
        assert_eq!(q("disk.img"), "disk.img");
        assert_eq!(q("a b$\"c"), "\"a b\\$\\\"c\"");
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn errors_as_the_client_sees_them() {
        let e = |n| result_text(&Err(Error::new(n, "x")));
        assert_eq!(result_text(&Ok(())), "return=0");
        assert_eq!(e(Errno::EROFS), "return=-1 error=EPERM");
        assert_eq!(e(Errno::EDQUOT), "return=-1 error=ENOSPC");
        assert_eq!(e(Errno::ENOENT), "return=-1 error=EINVAL");
    }

    #[test]
    fn parameters() {
        let mut f = Log::new();
        assert!(f.config("logfile", "/tmp/x").unwrap());
        assert!(f.config("logappend", "true").unwrap());
        assert!(f.config("logappend", "perhaps").is_err());
        assert!(f.config("logfile", "").is_err());
        assert!(!f.config("size", "1M").unwrap());
    }
}
