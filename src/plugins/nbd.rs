//! The nbd plugin: `nbdkit nbd [uri=]URI | socket=PATH | hostname=HOST
//! [port=PORT] | vsock=CID [port=PORT] | command=CMD [arg=ARG...] |
//! socket-fd=FD [...]` forwards every request to another NBD server, as in
//! nbdkit-nbd-plugin(1).  Filters in front of it give the remote server
//! features it lacks.
//!
//! It is a client of the remote server through libnbd ([`libnbd`], a thin
//! FFI wrapper).  Each client connection gets its own remote connection,
//! unless `shared=true` (implied by `command=` and `socket-fd=`) makes all
//! clients share one opened at startup.  Requests are issued asynchronously
//! so that parallel requests are in flight together on a remote connection
//! ([`conn`]).  Capabilities, block sizes, extents and errors (with their
//! errno) come straight from the remote server.

mod conn;
mod libnbd;

use crate::error::{Error, Result};
use crate::extents::Extents;
use crate::parse::{parse_bool, parse_unsigned};
use crate::plugin::{
    BlockSize, CacheMode, ExportInfo, FuaMode, Handle, Plugin, ZeroFlags, ZeroMode,
};
use conn::Connection;
use libnbd::{Command, Nbd, BASE_ALLOCATION};
use nix::errno::Errno;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const HELP: &str = "\
[uri=]<URI>            NBD URI of the server to forward to.
socket=<SOCKNAME>      Unix socket of the server.
hostname=<HOST>        Host name of the server (TCP).
port=<PORT>            TCP port or service name, or vsock port (default 10809).
vsock=<CID>            vsock CID of the server.
command=<COMMAND>      Run this NBD server (socket activation) and use it.
arg=<ARG>              One argument for command (repeat for more).
socket-fd=<FD>         Inherited socket already connected to a server.
export=<NAME>          Export to use on the server (default \"\").
dynamic-export=<BOOL>  Pass each client's export name on to the server.
retry=<N>              Retry the first connection N more times, 1 s apart.
shared=<BOOL>          One server connection for all clients (default false).
tls=<MODE>             TLS towards the server: off, on or require.
tls-certificates=<DIR> Directory with the X.509 client credentials.
tls-verify=<BOOL>      Verify the server's certificate (default true).
tls-username=<NAME>    User name to present to the server.
tls-psk=<FILE>         Pre-shared keys file for TLS-PSK.";

const CALLBACKS: &[&str] = &[
    "longname",
    "unload",
    "dump_plugin",
    "config",
    "config_complete",
    "config_help",
    "after_fork",
    "list_exports",
    "default_export",
    "open",
    "close",
    "export_description",
    "get_size",
    "block_size",
    "can_write",
    "can_flush",
    "is_rotational",
    "can_trim",
    "can_zero",
    "can_fast_zero",
    "can_extents",
    "can_fua",
    "can_multi_conn",
    "can_cache",
    "pread",
    "pwrite",
    "flush",
    "trim",
    "zero",
    "extents",
    "cache",
];

/// URI schemes libnbd's `nbd_connect_uri` knows.
const URI_SCHEMES: &[&str] = &[
    "nbd",
    "nbds",
    "nbd+unix",
    "nbds+unix",
    "nbd+vsock",
    "nbds+vsock",
];

/// Longest Unix socket path (`sun_path` holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Where the remote server is.
#[derive(Debug)]
enum Transport {
    Uri(String),
    Unix(String),
    Tcp {
        host: String,
        port: String,
    },
    Vsock {
        cid: u32,
        port: u32,
    },
    Command(Vec<String>),
    /// The inherited socket, taken (once) by the shared connection.
    SocketFd(Mutex<Option<OwnedFd>>),
}

/// The nbd plugin.
#[derive(Debug, Default)]
pub struct NbdPlugin {
    // As given on the command line.
    uri: Option<String>,
    socket: Option<String>,
    hostname: Option<String>,
    port: Option<String>,
    vsock: Option<String>,
    command: Option<String>,
    args: Vec<String>,
    socket_fd: Option<i32>,
    export: Option<String>,
    dynamic_export: bool,
    retry: u32,
    shared_param: Option<bool>,
    tls_param: Option<i32>,
    tls_certificates: Option<String>,
    tls_verify: Option<bool>,
    tls_username: Option<String>,
    tls_psk: Option<String>,

    // Settled by config_complete.
    transport: Option<Transport>,
    shared: bool,
    tls: i32,
    /// The shared connection (made in after_fork, dropped in cleanup).
    shared_conn: Mutex<Option<Arc<Connection>>>,
}

impl NbdPlugin {
    /// An unconfigured nbd plugin.
    pub fn new() -> Self {
        NbdPlugin::default()
    }

    fn set_once(slot: &mut Option<String>, key: &str, value: &str) -> Result<()> {
        if slot.is_some() {
            return Err(Error::config(format!(
                "{key} given more than once (second: {value})"
            )));
        }
        *slot = Some(value.to_string());
        Ok(())
    }

    /// Make a path absolute against the current directory (nbdkit may
    /// change directory before connecting).
    fn absolute(key: &str, value: &str) -> Result<String> {
        if value.is_empty() {
            return Err(Error::config(format!("{key}: the path must not be empty")));
        }
        let p = Path::new(value);
        if p.is_absolute() {
            return Ok(value.to_string());
        }
        let cwd = std::env::current_dir()
            .map_err(|e| Error::io(e, format!("{key}: cannot resolve {value}")))?;
        Ok(cwd.join(p).display().to_string())
    }

    /// The transport, once configured.
    fn transport(&self) -> &Transport {
        self.transport
            .as_ref()
            .expect("config_complete settles the transport")
    }

    /// Set up a fresh handle for `export` (`None`: leave it to the URI)
    /// and connect it.  In `opt_mode` the handle stops in the negotiation
    /// phase.  Retries as `retry=` asks.
    fn connect(&self, export: Option<&str>, opt_mode: bool, full_info: bool) -> Result<Nbd> {
        let mut tries_left = self.retry;
        loop {
            match self.connect_once(export, opt_mode, full_info) {
                Ok(nbd) => return Ok(nbd),
                Err(e) if tries_left > 0 && !matches!(self.transport(), Transport::SocketFd(_)) => {
                    crate::log::debug(format!(
                        "nbd: connection failed, trying again in 1 s ({tries_left} left): {}",
                        e.message()
                    ));
                    tries_left -= 1;
                    crate::server::quit::sleep(Duration::from_secs(1))?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn connect_once(&self, export: Option<&str>, opt_mode: bool, full_info: bool) -> Result<Nbd> {
        let nbd = Nbd::create()?;
        nbd.set_handle_name("nbd")?;
        if let Some(name) = export {
            nbd.set_export_name(name)?;
        }
        nbd.add_meta_context(BASE_ALLOCATION)?;
        nbd.set_full_info(full_info)?;
        // Our read buffers are always initialised Rust memory, and a
        // failed read's buffer is never used: libnbd may skip zeroing it.
        nbd.set_pread_initialize(false)?;
        if opt_mode {
            nbd.set_opt_mode(true)?;
        }
        nbd.set_tls(self.tls)?;
        if let Some(dir) = &self.tls_certificates {
            nbd.set_tls_certificates(dir)?;
        }
        if let Some(v) = self.tls_verify {
            nbd.set_tls_verify_peer(v)?;
        }
        if let Some(u) = &self.tls_username {
            nbd.set_tls_username(u)?;
        }
        if let Some(f) = &self.tls_psk {
            nbd.set_tls_psk_file(f)?;
        }
        let what = |e: Error| {
            Error::new(
                e.errno(),
                format!("cannot connect to the remote server: {}", e.message()),
            )
        };
        match self.transport() {
            Transport::Uri(uri) => {
                // The URI is the administrator's own: its tls-certificates
                // and tls-psk-file queries may name local files.
                nbd.set_uri_allow_local_file(true)?;
                nbd.connect_uri(uri)
            }
            Transport::Unix(path) => nbd.connect_unix(path),
            Transport::Tcp { host, port } => nbd.connect_tcp(host, port),
            Transport::Vsock { cid, port } => nbd.connect_vsock(*cid, *port),
            Transport::Command(argv) => nbd.connect_systemd_socket_activation(argv),
            Transport::SocketFd(fd) => {
                let fd = fd.lock().unwrap_or_else(|e| e.into_inner()).take();
                match fd {
                    Some(fd) => nbd.connect_socket(fd),
                    None => Err(Error::new(
                        Errno::ENOTCONN,
                        "socket-fd: the inherited socket was already used",
                    )),
                }
            }
        }
        .map_err(what)?;
        Ok(nbd)
    }

    /// A handle in the transmission phase for a client asking for
    /// `client_export`.
    fn open_connection(&self, client_export: &str) -> Result<Connection> {
        let nbd = if !self.dynamic_export {
            let export = self.export.as_deref().unwrap_or("");
            let export = match self.transport() {
                Transport::Uri(_) => None,
                _ => Some(export),
            };
            self.connect(export, false, true)?
        } else if matches!(self.transport(), Transport::Uri(_)) {
            // The URI names an export: replace it during negotiation.
            let nbd = self.connect(None, true, true)?;
            if nbd.is_negotiating() {
                nbd.set_export_name(client_export)?;
                nbd.opt_go()?;
            }
            nbd
        } else {
            self.connect(Some(client_export), false, true)?
        };
        Connection::start(nbd)
    }

    /// Leave a negotiating or ready handle politely.
    fn finish(nbd: &Nbd) {
        if nbd.is_negotiating() {
            let _ = nbd.opt_abort();
        } else if nbd.is_ready() {
            let _ = nbd.shutdown();
        }
    }
}

/// Parse `tls=`: off/on/require, with nbdkit's synonyms.
fn parse_tls(value: &str) -> Result<i32> {
    match value.to_ascii_lowercase().as_str() {
        "require" | "required" | "force" => Ok(libnbd::TLS_REQUIRE),
        _ => match parse_bool(value) {
            Ok(true) => Ok(libnbd::TLS_ALLOW),
            Ok(false) => Ok(libnbd::TLS_DISABLE),
            Err(_) => Err(Error::config(format!(
                "tls: expected off, on or require, got \"{value}\""
            ))),
        },
    }
}

/// Check the scheme and, for Unix sockets, the `socket=` query of a URI, so
/// that a typo is a startup error rather than a failure per connection.
fn check_uri(uri: &str) -> Result<()> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(Error::config(format!(
            "uri: \"{uri}\" is not an NBD URI (expected nbd://, nbds://, nbd+unix://, ...)"
        )));
    };
    let scheme = scheme.to_ascii_lowercase();
    if !URI_SCHEMES.contains(&scheme.as_str()) {
        return Err(Error::config(format!(
            "uri: unknown scheme \"{scheme}\" (expected one of {})",
            URI_SCHEMES.join(", ")
        )));
    }
    if scheme.ends_with("+unix") {
        let query = rest.split_once('?').map(|(_, q)| q).unwrap_or("");
        if !query.split('&').any(|kv| kv.starts_with("socket=")) {
            return Err(Error::config(format!(
                "uri: \"{uri}\" needs a socket=PATH query for a Unix socket"
            )));
        }
    }
    Ok(())
}

impl Plugin for NbdPlugin {
    fn name(&self) -> &'static str {
        "nbd"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit nbd plugin")
    }

    fn description(&self) -> &'static str {
        "nbd plugin: forward to another NBD server, using libnbd"
    }

    fn magic_config_key(&self) -> Option<&'static str> {
        Some("uri")
    }

    fn config_help(&self) -> &'static str {
        HELP
    }

    fn callbacks(&self) -> &'static [&'static str] {
        CALLBACKS
    }

    fn dump_plugin(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Ok(nbd) = Nbd::create() {
            lines.push(format!("libnbd_version={}", nbd.version()));
            lines.push(format!("libnbd_tls={}", u8::from(nbd.supports_tls())));
            lines.push(format!("libnbd_uri={}", u8::from(nbd.supports_uri())));
        }
        lines.push("libnbd_vsock=1".into());
        lines.push("libnbd_dynamic_list=1".into());
        lines
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "uri" => Self::set_once(&mut self.uri, key, value),
            "socket" => {
                let p = Self::absolute(key, value)?;
                Self::set_once(&mut self.socket, key, &p)
            }
            "hostname" => {
                if value.is_empty() {
                    return Err(Error::config("hostname: must not be empty"));
                }
                Self::set_once(&mut self.hostname, key, value)
            }
            "port" => {
                if value.is_empty() {
                    return Err(Error::config("port: must not be empty"));
                }
                Self::set_once(&mut self.port, key, value)
            }
            "vsock" | "cid" => Self::set_once(&mut self.vsock, "vsock", value),
            "command" => Self::set_once(&mut self.command, key, value),
            "arg" => {
                self.args.push(value.to_string());
                Ok(())
            }
            "socket-fd" => {
                if self.socket_fd.is_some() {
                    return Err(Error::config(format!(
                        "socket-fd given more than once (second: {value})"
                    )));
                }
                let fd = parse_unsigned("socket-fd", value, i32::MAX as u64)?;
                self.socket_fd = Some(fd as i32);
                Ok(())
            }
            "export" => Self::set_once(&mut self.export, key, value),
            "dynamic-export" => {
                self.dynamic_export = parse_bool(value)
                    .map_err(|e| Error::config(format!("dynamic-export: {}", e.message())))?;
                Ok(())
            }
            "retry" => {
                self.retry = parse_unsigned("retry", value, u32::MAX as u64)? as u32;
                Ok(())
            }
            "shared" => {
                self.shared_param = Some(
                    parse_bool(value)
                        .map_err(|e| Error::config(format!("shared: {}", e.message())))?,
                );
                Ok(())
            }
            "tls" => {
                self.tls_param = Some(parse_tls(value)?);
                Ok(())
            }
            "tls-certificates" => {
                let p = Self::absolute(key, value)?;
                Self::set_once(&mut self.tls_certificates, key, &p)
            }
            "tls-verify" => {
                self.tls_verify = Some(
                    parse_bool(value)
                        .map_err(|e| Error::config(format!("tls-verify: {}", e.message())))?,
                );
                Ok(())
            }
            "tls-username" => Self::set_once(&mut self.tls_username, key, value),
            "tls-psk" => {
                let p = Self::absolute(key, value)?;
                Self::set_once(&mut self.tls_psk, key, &p)
            }
            _ => Err(Error::config(format!("unknown parameter '{key}'"))),
        }
    }

    fn config_complete(&mut self) -> Result<()> {
        let given = [
            self.uri.is_some(),
            self.socket.is_some(),
            self.hostname.is_some(),
            self.vsock.is_some(),
            self.command.is_some(),
            self.socket_fd.is_some(),
        ]
        .iter()
        .filter(|&&b| b)
        .count();
        if given == 0 {
            return Err(Error::config(
                "exactly one of uri, socket, hostname, vsock, command and socket-fd must be given \
                 to say which NBD server to forward to",
            ));
        }
        if given > 1 {
            return Err(Error::config(
                "only one of uri, socket, hostname, vsock, command and socket-fd may be given",
            ));
        }
        if self.port.is_some() && self.hostname.is_none() && self.vsock.is_none() {
            return Err(Error::config(
                "port can only be used with hostname or vsock",
            ));
        }
        if !self.args.is_empty() && self.command.is_none() {
            return Err(Error::config("arg can only be used with command"));
        }
        let probe = Nbd::create()?;
        let transport = if let Some(uri) = &self.uri {
            if !probe.supports_uri() {
                return Err(Error::config(
                    "uri: this libnbd was built without URI support",
                ));
            }
            check_uri(uri)?;
            if self.export.is_some() {
                return Err(Error::config(
                    "export cannot be used with uri: put the export name in the URI",
                ));
            }
            Transport::Uri(uri.clone())
        } else if let Some(path) = &self.socket {
            if path.len() > MAX_SOCKET_PATH {
                return Err(Error::config(format!(
                    "socket: path is too long for a Unix socket ({} bytes, at most {MAX_SOCKET_PATH}): {path}",
                    path.len()
                )));
            }
            Transport::Unix(path.clone())
        } else if let Some(host) = &self.hostname {
            Transport::Tcp {
                host: host.clone(),
                port: self.port.clone().unwrap_or_else(|| "10809".into()),
            }
        } else if let Some(cid) = &self.vsock {
            let cid = parse_unsigned("vsock", cid, u32::MAX as u64)? as u32;
            let port = match &self.port {
                Some(p) => parse_unsigned("port", p, u32::MAX as u64)? as u32,
                None => 10809,
            };
            Transport::Vsock { cid, port }
        } else if let Some(cmd) = &self.command {
            if cmd.is_empty() {
                return Err(Error::config("command: must not be empty"));
            }
            let mut argv = vec![cmd.clone()];
            argv.extend(self.args.iter().cloned());
            Transport::Command(argv)
        } else {
            let fd = self.socket_fd.expect("counted above");
            Transport::SocketFd(Mutex::new(Some(libnbd::inherited_socket(fd)?)))
        };
        let implied_shared = matches!(transport, Transport::Command(_) | Transport::SocketFd(_));
        if implied_shared && self.shared_param == Some(false) {
            return Err(Error::config(
                "shared=false cannot be used with command or socket-fd (one server connection \
                 serves all clients)",
            ));
        }
        self.shared = implied_shared || self.shared_param.unwrap_or(false);
        if self.dynamic_export {
            if self.export.is_some() {
                return Err(Error::config(
                    "dynamic-export cannot be used with an explicit export name",
                ));
            }
            if self.shared {
                return Err(Error::config(
                    "dynamic-export cannot be used with a shared connection (shared=true, \
                     command or socket-fd)",
                ));
            }
        }

        let tls_options = self.tls_certificates.is_some()
            || self.tls_verify.is_some()
            || self.tls_username.is_some()
            || self.tls_psk.is_some();
        self.tls = self.tls_param.unwrap_or(if tls_options {
            libnbd::TLS_ALLOW
        } else {
            libnbd::TLS_DISABLE
        });
        let uri_wants_tls = self
            .uri
            .as_deref()
            .is_some_and(|u| u.to_ascii_lowercase().starts_with("nbds"));
        if (self.tls != libnbd::TLS_DISABLE || uri_wants_tls) && !probe.supports_tls() {
            return Err(Error::config(
                "tls: this libnbd was built without TLS support",
            ));
        }
        if let Some(dir) = &self.tls_certificates {
            if !Path::new(dir).is_dir() {
                return Err(Error::config(format!(
                    "tls-certificates: {dir}: not a directory"
                )));
            }
        }
        if let Some(f) = &self.tls_psk {
            std::fs::File::open(f).map_err(|e| Error::io(e, format!("tls-psk: {f}")))?;
        }
        self.transport = Some(transport);
        Ok(())
    }

    fn after_fork(&self) -> Result<()> {
        if self.shared {
            let conn = self.open_connection("")?;
            *self.shared_conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(conn));
        }
        Ok(())
    }

    fn cleanup(&self) {
        let conn = self
            .shared_conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(conn);
    }

    fn list_exports(&self, readonly: bool, is_tls: bool) -> Result<Vec<ExportInfo>> {
        if !self.dynamic_export {
            return Ok(vec![ExportInfo::named(
                self.default_export(readonly, is_tls)?,
            )]);
        }
        let nbd = self.connect(None, true, false)?;
        let list = nbd.opt_list();
        Self::finish(&nbd);
        Ok(list?
            .into_iter()
            .map(|(name, desc)| ExportInfo {
                name,
                description: (!desc.is_empty()).then_some(desc),
            })
            .collect())
    }

    fn default_export(&self, _readonly: bool, _is_tls: bool) -> Result<String> {
        if !self.dynamic_export {
            return Ok(self.export.clone().unwrap_or_default());
        }
        // Best effort: ask the server for the canonical name of "".
        let name = (|| {
            let nbd = self.connect(None, true, true).ok()?;
            let name = nbd
                .set_export_name("")
                .and_then(|()| nbd.opt_info())
                .ok()
                .and_then(|()| nbd.canonical_export_name());
            Self::finish(&nbd);
            name
        })();
        Ok(name.unwrap_or_default())
    }

    fn open(&self, readonly: bool, export_name: &str, _is_tls: bool) -> Result<Box<dyn Handle>> {
        let conn = if self.shared {
            self.shared_conn
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .ok_or_else(|| Error::new(Errno::ENOTCONN, "the shared connection is closed"))?
        } else {
            Arc::new(self.open_connection(export_name)?)
        };
        Ok(Box::new(NbdHandle { conn, readonly }))
    }
}

/// One client's view of a remote connection.
struct NbdHandle {
    conn: Arc<Connection>,
    readonly: bool,
}

impl NbdHandle {
    fn nbd(&self) -> &Nbd {
        self.conn.nbd()
    }

    fn run(&self, cmd: Command<'_>) -> Result<()> {
        self.conn.execute(cmd).map(drop)
    }
}

impl Handle for NbdHandle {
    fn get_size(&self) -> Result<u64> {
        self.nbd().size()
    }

    fn export_description(&self) -> Result<Option<String>> {
        Ok(self.nbd().export_description())
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        Ok(self
            .nbd()
            .block_size()?
            .map(|(minimum, preferred, maximum)| BlockSize {
                minimum,
                preferred,
                maximum,
            }))
    }

    fn can_write(&self) -> Result<bool> {
        Ok(!self.readonly && !self.nbd().is_read_only()?)
    }

    fn can_flush(&self) -> Result<bool> {
        self.nbd().can_flush()
    }

    fn is_rotational(&self) -> Result<bool> {
        self.nbd().is_rotational()
    }

    fn can_trim(&self) -> Result<bool> {
        self.nbd().can_trim()
    }

    fn can_zero(&self) -> Result<ZeroMode> {
        // Without the remote's zero, writing zeroes is still offered, done
        // with pwrite, as nbdkit does.
        Ok(if self.nbd().can_zero()? {
            ZeroMode::Native
        } else {
            ZeroMode::Emulate
        })
    }

    fn can_fast_zero(&self) -> Result<bool> {
        self.nbd().can_fast_zero()
    }

    fn can_extents(&self) -> Result<bool> {
        self.nbd().can_meta_context(BASE_ALLOCATION)
    }

    fn can_fua(&self) -> Result<FuaMode> {
        Ok(if self.nbd().can_fua()? {
            FuaMode::Native
        } else {
            FuaMode::None
        })
    }

    fn can_multi_conn(&self) -> Result<bool> {
        self.nbd().can_multi_conn()
    }

    fn can_cache(&self) -> Result<CacheMode> {
        Ok(if self.nbd().can_cache()? {
            CacheMode::Native
        } else {
            CacheMode::None
        })
    }

    fn pread(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.run(Command::Pread(buf, offset))
    }

    fn pwrite(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        let flags = if fua { libnbd::CMD_FLAG_FUA } else { 0 };
        self.run(Command::Pwrite(buf, offset, flags))
    }

    fn flush(&self) -> Result<()> {
        self.run(Command::Flush)
    }

    fn trim(&self, count: u64, offset: u64, fua: bool) -> Result<()> {
        let flags = if fua { libnbd::CMD_FLAG_FUA } else { 0 };
        self.run(Command::Trim(count, offset, flags))
    }

    fn zero(&self, count: u64, offset: u64, f: ZeroFlags) -> Result<()> {
        let mut flags = 0;
        if !f.may_trim {
            flags |= libnbd::CMD_FLAG_NO_HOLE;
        }
        if f.fua {
            flags |= libnbd::CMD_FLAG_FUA;
        }
        if f.fast {
            flags |= libnbd::CMD_FLAG_FAST_ZERO;
        }
        self.run(Command::Zero(count, offset, flags))
    }

    fn extents(&self, extents: &mut Extents, req_one: bool) -> Result<()> {
        let start = extents.start();
        // One block-status request covers at most 4 GiB - 4 KiB (the NBD
        // length is 32 bits); the server asks again for the rest.
        let count = (extents.end() - start).min(0xffff_f000);
        let flags = if req_one { libnbd::CMD_FLAG_REQ_ONE } else { 0 };
        let list = self
            .conn
            .execute(Command::BlockStatus(count, start, flags))?;
        if list.is_empty() {
            return Err(Error::new(
                Errno::EIO,
                "remote server answered block status with no extents",
            ));
        }
        for (off, len, fl) in list {
            extents.add(off, len, fl & (crate::extents::HOLE | crate::extents::ZERO))?;
        }
        Ok(())
    }

    fn cache(&self, count: u64, offset: u64) -> Result<()> {
        self.run(Command::Cache(count, offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured(params: &[(&str, &str)]) -> Result<NbdPlugin> {
        let mut p = NbdPlugin::new();
        for (k, v) in params {
            p.config(k, v)?;
        }
        p.config_complete()?;
        Ok(p)
    }

    fn err(params: &[(&str, &str)]) -> String {
        configured(params).unwrap_err().message().to_string()
    }

    #[test]
    fn tls_modes() {
        assert_eq!(parse_tls("require").unwrap(), libnbd::TLS_REQUIRE);
        assert_eq!(parse_tls("Force").unwrap(), libnbd::TLS_REQUIRE);
        assert_eq!(parse_tls("on").unwrap(), libnbd::TLS_ALLOW);
        assert_eq!(parse_tls("off").unwrap(), libnbd::TLS_DISABLE);
        assert!(parse_tls("maybe").is_err());
    }

    #[test]
    fn uri_checks() {
        assert!(check_uri("nbd://localhost").is_ok());
        assert!(check_uri("NBDS://h:1/x").is_ok());
        assert!(check_uri("nbd+unix:///e?socket=/s").is_ok());
        assert!(check_uri("nbd+unix:///e").is_err());
        assert!(check_uri("http://x").is_err());
        assert!(check_uri("localhost").is_err());
    }

    #[test]
    fn exactly_one_server() {
        assert!(err(&[]).contains("exactly one of"));
        assert!(err(&[("socket", "/s"), ("hostname", "h")]).contains("only one of"));
        assert!(err(&[("socket", "/s"), ("port", "1")]).contains("port can only"));
        assert!(err(&[("socket", "/s"), ("arg", "x")]).contains("arg can only"));
    }

    #[test]
    fn conflicting_options() {
        assert!(err(&[("uri", "nbd://h"), ("export", "x")]).contains("put the export"));
        assert!(
            err(&[("socket", "/s"), ("dynamic-export", "1"), ("export", "x")])
                .contains("explicit export")
        );
        assert!(
            err(&[("socket", "/s"), ("dynamic-export", "1"), ("shared", "1")])
                .contains("shared connection")
        );
        assert!(err(&[("command", "qemu-nbd"), ("shared", "false")]).contains("shared=false"));
        assert!(err(&[("vsock", "x")]).contains("vsock"));
        assert!(err(&[("vsock", "2"), ("port", "http")]).contains("port"));
    }

    #[test]
    fn settled_defaults() {
        let p = configured(&[("socket", "rel.sock")]).unwrap();
        assert!(!p.shared);
        assert_eq!(p.tls, libnbd::TLS_DISABLE);
        match p.transport() {
            Transport::Unix(path) => assert!(Path::new(path).is_absolute()),
            t => panic!("{t:?}"),
        }
        let p = configured(&[("hostname", "h"), ("tls-username", "u")]).unwrap();
        assert_eq!(p.tls, libnbd::TLS_ALLOW);
        match p.transport() {
            Transport::Tcp { port, .. } => assert_eq!(port, "10809"),
            t => panic!("{t:?}"),
        }
        let p = configured(&[("command", "x"), ("arg", "a"), ("arg", "b")]).unwrap();
        assert!(p.shared);
        match p.transport() {
            Transport::Command(argv) => assert_eq!(argv, &["x", "a", "b"]),
            t => panic!("{t:?}"),
        }
    }

    #[test]
    fn repeated_and_bad_values() {
        let mut p = NbdPlugin::new();
        p.config("socket", "/a").unwrap();
        assert!(p.config("socket", "/b").is_err());
        assert!(p.config("retry", "-1").is_err());
        assert!(p.config("shared", "perhaps").is_err());
        assert!(p.config("socket-fd", "-3").is_err());
        assert!(p.config("nosuch", "1").is_err());
        assert!(err(&[("socket", &"/x".repeat(60))]).contains("too long"));
        assert!(
            err(&[("socket", "/s"), ("tls-certificates", "/nonexistent-dir")])
                .contains("not a directory")
        );
        assert!(err(&[("socket", "/s"), ("tls-psk", "/nonexistent.psk")]).contains("tls-psk"));
    }
}
