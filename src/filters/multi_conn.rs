//! The `multi-conn` filter: make a plugin safe to use over several
//! connections at once (`NBD_FLAG_CAN_MULTI_CONN`), or change what is
//! advertised.
//!
//! - `multi-conn-mode=auto` (default): `plugin` if the plugin advertises
//!   multi-conn, else `emulate`;
//! - `emulate`: advertise multi-conn and make it true: a flush (or FUA
//!   write) on one connection flushes every connection of the same group;
//! - `plugin`: advertise what the plugin says; `disable`: never advertise;
//!   `unsafe`: always advertise, without emulating (for testing clients).
//!
//! `multi-conn-track-dirty` decides which flushes can be skipped:
//! `connection` (default) remembers per connection whether it wrote or
//! read since the last flush, `fast` only whether anything was written,
//! `off` flushes every time.  With `multi-conn-exportname=true`,
//! connections are grouped by export name, so a flush only reaches
//! connections to the same export.
//!
//! Unlike nbdkit, `auto` is not turned into `disable` when the server
//! serializes connections (the server then never advertises multi-conn
//! anyway, and with one connection at a time emulation flushes only that
//! one).

use crate::error::{Error, Result};
use crate::filter::{Filter, FilterContext};
use crate::layers::{flags, Backend, Context};
use crate::parse::parse_bool;
use crate::plugin::FuaMode;
use nix::errno::Errno;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Auto,
    Emulate,
    Plugin,
    Disable,
    Unsafe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Track {
    Conn,
    Fast,
    Off,
}

/// Per-connection dirty bits.
const WRITE: u8 = 1;
const READ: u8 = 2;

/// One client connection, as the other connections of its group see it.
struct Conn {
    next: Box<dyn Context>,
    dirty: AtomicU8,
    group: Arc<GroupFlag>,
}

/// Whether anything in a group was written since the last flush.
#[derive(Default)]
struct GroupFlag {
    dirty: AtomicBool,
}

struct Group {
    /// The export name when grouping by name.
    name: Option<String>,
    flag: Arc<GroupFlag>,
    conns: Vec<Arc<Conn>>,
}

/// Shared by the filter and all its connections; the lock is held while
/// a flush goes round a group, and while connections join or leave.
#[derive(Default)]
struct Groups(Mutex<Vec<Group>>);

pub struct MultiConn {
    mode: Mode,
    track: Track,
    byname: bool,
    groups: Arc<Groups>,
}

impl MultiConn {
    pub fn new() -> Self {
        MultiConn {
            mode: Mode::Auto,
            track: Track::Conn,
            byname: false,
            groups: Arc::default(),
        }
    }
}

impl Default for MultiConn {
    fn default() -> Self {
        Self::new()
    }
}

impl Filter for MultiConn {
    fn name(&self) -> &'static str {
        "multi-conn"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit multi-conn filter")
    }

    fn description(&self) -> &'static str {
        "Enable, emulate or disable multi-conn consistency."
    }

    fn config_help(&self) -> &'static str {
        "multi-conn-mode=<MODE>          'auto' (default), 'emulate', 'plugin',\n\
         \x20                               'disable', or 'unsafe'.\n\
         multi-conn-track-dirty=<LEVEL>  'conn' (default), 'fast', or 'off'.\n\
         multi-conn-exportname=<BOOL>    true to limit emulation by export name."
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "multi-conn-mode" => {
                self.mode = match value {
                    "auto" => Mode::Auto,
                    "emulate" => Mode::Emulate,
                    "plugin" => Mode::Plugin,
                    "disable" => Mode::Disable,
                    "unsafe" => Mode::Unsafe,
                    _ => {
                        return Err(Error::config(format!(
                            "multi-conn: unknown multi-conn mode '{value}' \
                             (expecting auto, emulate, plugin, disable or unsafe)"
                        )))
                    }
                }
            }
            "multi-conn-track-dirty" => {
                self.track = match value {
                    "connection" | "conn" => Track::Conn,
                    "fast" => Track::Fast,
                    "off" => Track::Off,
                    _ => {
                        return Err(Error::config(format!(
                            "multi-conn: unknown multi-conn track-dirty setting '{value}' \
                             (expecting connection, fast or off)"
                        )))
                    }
                }
            }
            "multi-conn-exportname" | "multi-conn-export-name" => {
                self.byname = parse_bool(value)
                    .map_err(|e| Error::config(format!("multi-conn: {key}: {}", e.message())))?
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        let next = next.open(readonly, export, is_tls)?;
        let name = self.byname.then(|| export.to_string());
        // Join the connection's group (by export name, or the only one).
        let mut groups = self.groups.0.lock().unwrap_or_else(|e| e.into_inner());
        let i = match groups.iter().position(|g| !self.byname || g.name == name) {
            Some(i) => i,
            None => {
                groups.push(Group {
                    name,
                    flag: Arc::default(),
                    conns: Vec::new(),
                });
                groups.len() - 1
            }
        };
        let conn = Arc::new(Conn {
            next,
            dirty: AtomicU8::new(0),
            group: groups[i].flag.clone(),
        });
        groups[i].conns.push(conn.clone());
        drop(groups);
        Ok(Box::new(Ctx {
            mode: OnceLock::new(),
            configured: self.mode,
            track: self.track,
            groups: self.groups.clone(),
            conn,
            joined: AtomicBool::new(true),
        }))
    }
}

struct Ctx {
    /// The mode in force (`auto` resolved at prepare).
    mode: OnceLock<Mode>,
    configured: Mode,
    track: Track,
    groups: Arc<Groups>,
    conn: Arc<Conn>,
    joined: AtomicBool,
}

impl Ctx {
    fn mode(&self) -> Mode {
        *self.mode.get().unwrap_or(&self.configured)
    }

    fn group_flag(&self) -> &GroupFlag {
        &self.conn.group
    }

    fn mark_dirty(&self, write: bool) {
        match self.track {
            Track::Conn => {
                self.conn
                    .dirty
                    .fetch_or(if write { WRITE } else { READ }, Relaxed);
                if write {
                    self.group_flag().dirty.store(true, Relaxed);
                }
            }
            Track::Fast => {
                if write {
                    self.group_flag().dirty.store(true, Relaxed);
                }
            }
            Track::Off => {}
        }
    }

    /// Common to the write-like calls: dirty tracking, and FUA done as a
    /// group flush when emulating.
    fn write_like(&self, f: u32, call: impl FnOnce(u32) -> Result<()>) -> Result<()> {
        let emulate_fua = f & flags::FUA != 0 && self.mode() == Mode::Emulate;
        if emulate_fua || f & flags::FUA == 0 {
            self.mark_dirty(true);
        }
        call(if emulate_fua { f & !flags::FUA } else { f })?;
        if emulate_fua {
            self.flush_all(0)?;
        }
        Ok(())
    }

    /// Flush as the mode says.
    fn flush_all(&self, f: u32) -> Result<()> {
        if self.mode() == Mode::Emulate {
            let groups = self.groups.0.lock().unwrap_or_else(|e| e.into_inner());
            let flag = &self.conn.group;
            let Some(g) = groups.iter().find(|g| Arc::ptr_eq(&g.flag, flag)) else {
                return self.conn.next.flush(f);
            };
            let group_dirty = flag.dirty.load(Relaxed);
            for c in &g.conns {
                let d = c.dirty.load(Relaxed);
                if self.track == Track::Off
                    || (group_dirty && (self.track == Track::Fast || d & READ != 0))
                    || d & WRITE != 0
                {
                    c.next.flush(f)?;
                    c.dirty.store(0, Relaxed);
                }
            }
            flag.dirty.store(false, Relaxed);
            return Ok(());
        }
        // Not emulating: skip the flush when nothing was written.
        if self.track != Track::Off && !self.group_flag().dirty.load(Relaxed) {
            return Ok(());
        }
        self.conn.next.flush(f)?;
        match self.track {
            Track::Conn => {
                if self.conn.next.can_multi_conn()? {
                    let groups = self.groups.0.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(g) = groups
                        .iter()
                        .find(|g| Arc::ptr_eq(&g.flag, &self.conn.group))
                    {
                        for c in &g.conns {
                            c.dirty.store(0, Relaxed);
                        }
                    }
                    self.group_flag().dirty.store(false, Relaxed);
                } else {
                    self.conn.dirty.store(0, Relaxed);
                }
            }
            Track::Fast => self.group_flag().dirty.store(false, Relaxed),
            Track::Off => {}
        }
        Ok(())
    }

    fn leave(&self) {
        if !self.joined.swap(false, Relaxed) {
            return;
        }
        let mut groups = self.groups.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = groups
            .iter()
            .position(|g| Arc::ptr_eq(&g.flag, &self.conn.group))
        {
            groups[i].conns.retain(|c| !Arc::ptr_eq(c, &self.conn));
            if groups[i].conns.is_empty() {
                groups.remove(i);
            }
        }
    }
}

impl FilterContext for Ctx {
    fn next(&self) -> &dyn Context {
        &*self.conn.next
    }

    fn prepare(&self, _readonly: bool) -> Result<()> {
        let mode = match self.configured {
            Mode::Auto if self.conn.next.can_multi_conn()? => Mode::Plugin,
            Mode::Auto => Mode::Emulate,
            m => m,
        };
        if mode == Mode::Emulate && !self.conn.next.can_flush()? {
            return Err(Error::new(
                Errno::EINVAL,
                "multi-conn: emulating multi-conn requires working flush",
            ));
        }
        let _ = self.mode.set(mode);
        Ok(())
    }

    fn finalize(&self) -> Result<()> {
        self.leave();
        Ok(())
    }

    fn can_fua(&self) -> Result<FuaMode> {
        // Native FUA on one connection would not reach the others: emulate
        // it with a group flush instead.
        let fua = self.conn.next.can_fua()?;
        if fua == FuaMode::Native && self.mode() == Mode::Emulate {
            return Ok(FuaMode::Emulate);
        }
        Ok(fua)
    }

    fn can_multi_conn(&self) -> Result<bool> {
        match self.mode() {
            Mode::Emulate | Mode::Unsafe => Ok(true),
            Mode::Disable => Ok(false),
            Mode::Plugin | Mode::Auto => self.conn.next.can_multi_conn(),
        }
    }

    fn pread(&self, buf: &mut [u8], offset: u64, f: u32) -> Result<()> {
        self.mark_dirty(false);
        self.conn.next.pread(buf, offset, f)
    }

    fn pwrite(&self, buf: &[u8], offset: u64, f: u32) -> Result<()> {
        self.write_like(f, |f| self.conn.next.pwrite(buf, offset, f))
    }

    fn trim(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        self.write_like(f, |f| self.conn.next.trim(count, offset, f))
    }

    fn zero(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        self.write_like(f, |f| self.conn.next.zero(count, offset, f))
    }

    fn cache(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        self.mark_dirty(false);
        self.conn.next.cache(count, offset, f)
    }

    fn flush(&self, f: u32) -> Result<()> {
        self.flush_all(f)
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        self.leave();
    }
}
