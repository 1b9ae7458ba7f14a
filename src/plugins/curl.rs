//! The curl plugin: `nbdkit curl [url=]URL [...]` serves a remote file
//! over HTTP(S), FTP, `file://` or any protocol libcurl knows, as in
//! nbdkit-curl-plugin(1).
//!
//! Requests run in parallel over a pool of at most `connections` libcurl
//! easy handles shared by all NBD connections ([`pool`]); each handle keeps
//! its TCP/TLS connection alive between requests.  Reads are byte-range
//! GETs, checked strictly (status 206, the right `Content-Range`, exactly
//! the bytes asked for) so that a server ignoring ranges can never make us
//! serve the wrong bytes.  Writes are PUTs with a `Content-Range`, and only
//! for HTTP(S): libcurl's uploads to `file://` or FTP truncate or append to
//! the target instead of writing in place, so those exports are read-only.

mod pool;
mod scripts;

use crate::error::{Error, Result};
use crate::parse::{parse_bool, parse_unsigned};
use crate::password::read_password;
use crate::plugin::{Handle, Plugin};
use pool::Pool;
use std::sync::{Arc, OnceLock};

/// Default size of the handle pool (nbdkit 1.46's default).
pub const DEFAULT_CONNECTIONS: u32 = 16;
/// Largest pool we accept.
pub const MAX_CONNECTIONS: u32 = 1024;

/// `ssl-version=` names and their `CURLOPT_SSLVERSION` values (curl.h).
const SSL_VERSIONS: &[(&str, i64)] = &[
    ("default", 0),
    ("tlsv1", 1),
    ("sslv2", 2),
    ("sslv3", 3),
    ("tlsv1.0", 4),
    ("tlsv1.1", 5),
    ("tlsv1.2", 6),
    ("tlsv1.3", 7),
    ("max-default", 1 << 16),
    ("max-tlsv1.0", 4 << 16),
    ("max-tlsv1.1", 5 << 16),
    ("max-tlsv1.2", 6 << 16),
    ("max-tlsv1.3", 7 << 16),
];

/// `protocols=` names and their `CURLPROTO_*` bits (curl.h).
const PROTOCOLS: &[(&str, i64)] = &[
    ("http", 1 << 0),
    ("https", 1 << 1),
    ("ftp", 1 << 2),
    ("ftps", 1 << 3),
    ("scp", 1 << 4),
    ("sftp", 1 << 5),
    ("telnet", 1 << 6),
    ("ldap", 1 << 7),
    ("ldaps", 1 << 8),
    ("dict", 1 << 9),
    ("file", 1 << 10),
    ("tftp", 1 << 11),
    ("imap", 1 << 12),
    ("imaps", 1 << 13),
    ("pop3", 1 << 14),
    ("pop3s", 1 << 15),
    ("smtp", 1 << 16),
    ("smtps", 1 << 17),
    ("rtsp", 1 << 18),
    ("rtmp", 1 << 19),
    ("rtmpt", 1 << 20),
    ("rtmpe", 1 << 21),
    ("rtmpte", 1 << 22),
    ("rtmps", 1 << 23),
    ("rtmpts", 1 << 24),
    ("gopher", 1 << 25),
    ("smb", 1 << 26),
    ("smbs", 1 << 27),
    ("mqtt", 1 << 28),
    ("gophers", 1 << 29),
];

/// `http-version=` names and their `CURL_HTTP_VERSION_*` values (curl.h).
const HTTP_VERSIONS: &[(&str, i64)] = &[
    ("none", 0),
    ("1.0", 1),
    ("1.1", 2),
    ("2.0", 3),
    ("2TLS", 4),
    ("2-prior-knowledge", 5),
    ("3", 30),
    ("3only", 31),
];

/// `ipresolve=` names and their `CURL_IPRESOLVE_*` values.
const IP_RESOLVE: &[(&str, i64)] = &[("any", 0), ("v4", 1), ("v6", 2)];

/// Everything the command line configured; shared read-only by the pool.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    pub cainfo: Option<String>,
    pub capath: Option<String>,
    pub connections: u32,
    pub cookie: Option<String>,
    pub cookiefile: Option<String>,
    pub cookiejar: Option<String>,
    pub cookie_script: Option<String>,
    pub cookie_script_renew: u64,
    pub followlocation: bool,
    pub headers: Vec<String>,
    pub header_script: Option<String>,
    pub header_script_renew: u64,
    pub http_version: i64,
    pub ipresolve: i64,
    pub password: Option<String>,
    pub protocols: Option<i64>,
    pub proxy: Option<String>,
    pub proxy_password: Option<String>,
    pub proxy_user: Option<String>,
    pub resolve: Vec<String>,
    pub sslverify: bool,
    pub ssl_cipher_list: Option<String>,
    pub ssl_version: i64,
    pub tls13_ciphers: Option<String>,
    pub tcp_keepalive: bool,
    pub tcp_nodelay: bool,
    pub timeout: u32,
    pub unix_socket_path: Option<String>,
    pub user: Option<String>,
    pub user_agent: Option<String>,
    /// `-D curl.verbose=1`: libcurl's own trace on stderr.
    pub debug_verbose: bool,
    /// `-D curl.scripts=1`: log what the header and cookie scripts printed.
    pub debug_scripts: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            url: String::new(),
            cainfo: None,
            capath: None,
            connections: DEFAULT_CONNECTIONS,
            cookie: None,
            cookiefile: None,
            cookiejar: None,
            cookie_script: None,
            cookie_script_renew: 0,
            followlocation: true,
            headers: Vec::new(),
            header_script: None,
            header_script_renew: 0,
            http_version: 0,
            ipresolve: 0,
            password: None,
            protocols: None,
            proxy: None,
            proxy_password: None,
            proxy_user: None,
            resolve: Vec::new(),
            sslverify: true,
            ssl_cipher_list: None,
            ssl_version: 0,
            tls13_ciphers: None,
            tcp_keepalive: false,
            tcp_nodelay: true,
            timeout: 0,
            unix_socket_path: None,
            user: None,
            user_agent: None,
            debug_verbose: false,
            debug_scripts: false,
        }
    }
}

impl Settings {
    /// Whether the URL is HTTP or HTTPS (ranges and PUT apply).
    pub fn is_http(&self) -> bool {
        let u = self.url.to_ascii_lowercase();
        u.starts_with("http://") || u.starts_with("https://")
    }
}

fn lookup(table: &[(&str, i64)], name: &str) -> Option<i64> {
    table.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
}

/// Parse `protocols=a,b,c` into a `CURLPROTO_*` mask.
pub fn parse_protocols(value: &str) -> Result<i64> {
    let mut mask = 0;
    for name in value.split(',') {
        if name.is_empty() {
            continue;
        }
        match lookup(PROTOCOLS, &name.to_ascii_lowercase()) {
            Some(bit) => mask |= bit,
            None => {
                return Err(Error::config(format!(
                    "protocols: protocol name not found: {name}"
                )))
            }
        }
    }
    if mask == 0 {
        return Err(Error::config(
            "protocols: empty list of protocols is not allowed",
        ));
    }
    Ok(mask)
}

/// Parse `http-version=`, refusing versions this libcurl cannot speak.
pub fn parse_http_version(value: &str) -> Result<i64> {
    let v = lookup(HTTP_VERSIONS, value).ok_or_else(|| {
        Error::config(format!(
            "unknown http-version: {value} (expected none, 1.0, 1.1, 2.0, 2TLS, \
             2-prior-knowledge, 3 or 3only)"
        ))
    })?;
    let info = curl::Version::get();
    if (3..=5).contains(&v) && !info.feature_http2() {
        return Err(Error::config(format!(
            "http-version={value}: this libcurl ({}) was built without HTTP/2 support",
            info.version()
        )));
    }
    if v >= 30 && !info.feature_http3() {
        return Err(Error::config(format!(
            "http-version={value}: this libcurl ({}) was built without HTTP/3 support",
            info.version()
        )));
    }
    Ok(v)
}

/// Check a `resolve=HOST:PORT:ADDRESS[,ADDRESS...]` entry (a leading `-`
/// removes an entry, `+` marks it temporary, as CURLOPT_RESOLVE allows).
pub fn check_resolve(value: &str) -> Result<()> {
    let body = value
        .strip_prefix('-')
        .or_else(|| value.strip_prefix('+'))
        .unwrap_or(value);
    let bad = || {
        Error::config(format!(
            "resolve: expected HOST:PORT:ADDRESS, got \"{value}\""
        ))
    };
    let mut parts = body.splitn(3, ':');
    let host = parts.next().unwrap_or("");
    let port = parts.next().ok_or_else(bad)?;
    if host.is_empty() || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if port.parse::<u16>().is_err() {
        return Err(bad());
    }
    match parts.next() {
        Some(addr) if !addr.is_empty() => Ok(()),
        None if value.starts_with('-') => Ok(()),
        _ => Err(bad()),
    }
}

/// The curl plugin.
#[derive(Default)]
pub struct CurlPlugin {
    settings: Settings,
    pool: OnceLock<Arc<Pool>>,
}

impl CurlPlugin {
    /// An unconfigured curl plugin.
    pub fn new() -> Self {
        CurlPlugin::default()
    }

    fn pool(&self) -> Arc<Pool> {
        self.pool
            .get_or_init(|| Arc::new(Pool::new(Arc::new(self.settings.clone()))))
            .clone()
    }
}

const CALLBACKS: &[&str] = &[
    "load",
    "unload",
    "config",
    "config_complete",
    "config_help",
    "open",
    "close",
    "get_size",
    "can_write",
    "can_multi_conn",
    "pread",
    "pwrite",
];

const HELP: &str = "\
cainfo=<CAINFO>            Path to Certificate Authority file.
capath=<CAPATH>            Path to directory with CA certificates.
connections=<N>            Number of libcurl connections to use (default 16).
cookie=<COOKIE>            Set HTTP/HTTPS cookies.
cookiefile=                Enable cookie processing.
cookiefile=<FILENAME>      Read cookies from file.
cookiejar=<FILENAME>       Read and write cookies to jar.
cookie-script=<SCRIPT>     Script to set HTTP/HTTPS cookies.
cookie-script-renew=<SECS> Time to renew HTTP/HTTPS cookies.
followlocation=false       Do not follow redirects.
header=<HEADER>            Set HTTP/HTTPS header.
header-script=<SCRIPT>     Script to set HTTP/HTTPS headers.
header-script-renew=<SECS> Time to renew HTTP/HTTPS headers.
http-version=none|...      Force a particular HTTP protocol.
ipresolve=any|v4|v6        Force IPv4 or IPv6.
password=<PASSWORD>        The password for the user account.
protocols=PROTO,PROTO,..   Limit protocols allowed.
proxy=<PROXY>              Set proxy URL.
proxy-password=<PASSWORD>  The proxy password.
proxy-user=<USER>          The proxy user.
resolve=<HOST>:<PORT>:<ADDR> Custom host to IP address resolution.
sslverify=false            Do not verify SSL certificate of remote host.
ssl-cipher-list=C1:C2:..   Specify TLS/SSL cipher suites to be used.
ssl-version=<VERSION>      Specify preferred TLS/SSL version.
tcp-keepalive=true         Enable TCP keepalives.
tcp-nodelay=false          Disable Nagle’s algorithm.
timeout=<TIMEOUT>          Set the timeout for requests (seconds).
tls13-ciphers=C1:C2:..     Specify TLS 1.3 cipher suites to be used.
unix-socket-path=<PATH>    Open Unix domain socket instead of TCP/IP.
url=<URL>       (required) The disk image URL to serve.
user=<USER>                The user to log in as.
user-agent=<USER-AGENT>    Send user-agent header for HTTP/HTTPS.";

impl Plugin for CurlPlugin {
    fn name(&self) -> &'static str {
        "curl"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit curl plugin")
    }

    fn description(&self) -> &'static str {
        "curl plugin: serve a remote file over HTTP(S), FTP and more, using libcurl"
    }

    fn magic_config_key(&self) -> Option<&'static str> {
        Some("url")
    }

    fn config_help(&self) -> &'static str {
        HELP
    }

    fn callbacks(&self) -> &'static [&'static str] {
        CALLBACKS
    }

    fn debug_flag(&mut self, flag: &str, value: &str) -> Result<bool> {
        let on = || -> Result<bool> {
            Ok(parse_unsigned(&format!("-D curl.{flag}"), value, u64::from(u32::MAX))? > 0)
        };
        match flag {
            "verbose" => self.settings.debug_verbose = on()?,
            "scripts" => self.settings.debug_scripts = on()?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        let s = &mut self.settings;
        let opt = || Some(value.to_string());
        match key {
            "url" => s.url = value.to_string(),
            "cainfo" => s.cainfo = opt(),
            "capath" => s.capath = opt(),
            "connections" => {
                let n = parse_unsigned("connections", value, u64::from(u32::MAX))?;
                if n == 0 || n > u64::from(MAX_CONNECTIONS) {
                    return Err(Error::config(format!(
                        "connections parameter must be between 1 and {MAX_CONNECTIONS} \
                         (got {value})"
                    )));
                }
                s.connections = n as u32;
            }
            "cookie" => s.cookie = Some(read_password(value)?),
            "cookiefile" => {
                // "-" would make libcurl read cookies from our stdin.
                if value == "-" {
                    return Err(Error::config("cookiefile parameter cannot be \"-\""));
                }
                s.cookiefile = opt();
            }
            "cookiejar" => {
                // "-" would make libcurl write cookies to our stdout.
                if value == "-" {
                    return Err(Error::config("cookiejar parameter cannot be \"-\""));
                }
                s.cookiejar = opt();
            }
            "cookie-script" => s.cookie_script = opt(),
            "cookie-script-renew" => {
                s.cookie_script_renew =
                    parse_unsigned("cookie-script-renew", value, u64::from(u32::MAX))?
            }
            "followlocation" => s.followlocation = parse_bool(value)?,
            "header" => s.headers.push(value.to_string()),
            "header-script" => s.header_script = opt(),
            "header-script-renew" => {
                s.header_script_renew =
                    parse_unsigned("header-script-renew", value, u64::from(u32::MAX))?
            }
            "http-version" => s.http_version = parse_http_version(value)?,
            "ipresolve" => {
                s.ipresolve = lookup(IP_RESOLVE, value).ok_or_else(|| {
                    Error::config(format!(
                        "unknown ipresolve: {value} (expected any, v4 or v6)"
                    ))
                })?
            }
            "password" => s.password = Some(read_password(value)?),
            "protocols" => s.protocols = Some(parse_protocols(value)?),
            "proxy" => s.proxy = opt(),
            "proxy-password" => s.proxy_password = Some(read_password(value)?),
            "proxy-user" => s.proxy_user = opt(),
            "resolve" => {
                check_resolve(value)?;
                s.resolve.push(value.to_string());
            }
            "sslverify" => s.sslverify = parse_bool(value)?,
            "ssl-cipher-list" => s.ssl_cipher_list = opt(),
            "ssl-version" => {
                s.ssl_version = lookup(SSL_VERSIONS, value)
                    .ok_or_else(|| Error::config(format!("unknown ssl-version: {value}")))?
            }
            "tls13-ciphers" => s.tls13_ciphers = opt(),
            "tcp-keepalive" => s.tcp_keepalive = parse_bool(value)?,
            "tcp-nodelay" => s.tcp_nodelay = parse_bool(value)?,
            "timeout" => s.timeout = parse_unsigned("timeout", value, u64::from(u32::MAX))? as u32,
            "unix-socket-path" | "unix_socket_path" => s.unix_socket_path = opt(),
            "user" => s.user = opt(),
            "user-agent" => s.user_agent = opt(),
            _ => return Err(Error::config(format!("unknown parameter '{key}'"))),
        }
        Ok(())
    }

    fn config_complete(&mut self) -> Result<()> {
        let s = &self.settings;
        if s.url.is_empty() {
            return Err(Error::config(
                "you must supply the url=<URL> parameter after the plugin name on the command line",
            ));
        }
        if !s.headers.is_empty() && s.header_script.is_some() {
            return Err(Error::config(
                "header and header-script cannot be used at the same time",
            ));
        }
        if s.header_script.is_none() && s.header_script_renew > 0 {
            return Err(Error::config(
                "header-script-renew cannot be used without header-script",
            ));
        }
        if s.cookie.is_some() && s.cookie_script.is_some() {
            return Err(Error::config(
                "cookie and cookie-script cannot be used at the same time",
            ));
        }
        if s.cookie_script.is_none() && s.cookie_script_renew > 0 {
            return Err(Error::config(
                "cookie-script-renew cannot be used without cookie-script",
            ));
        }
        if s.url.contains('\0') || s.headers.iter().any(|h| h.contains(['\r', '\n'])) {
            return Err(Error::config(
                "url and header values must not contain NUL, CR or LF",
            ));
        }
        Ok(())
    }

    fn cleanup(&self) {
        if let Some(pool) = self.pool.get() {
            pool.close_all();
        }
    }

    fn open(&self, readonly: bool, _export_name: &str, _is_tls: bool) -> Result<Box<dyn Handle>> {
        let pool = self.pool();
        let size = pool.probe_size()?;
        Ok(Box::new(CurlHandle {
            pool,
            size,
            writable: !readonly && self.settings.is_http(),
            readonly,
        }))
    }
}

/// One NBD connection: the size found at open and the shared pool.
pub struct CurlHandle {
    pool: Arc<Pool>,
    size: u64,
    writable: bool,
    readonly: bool,
}

impl Handle for CurlHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn can_write(&self) -> Result<bool> {
        Ok(self.writable)
    }

    fn can_multi_conn(&self) -> Result<bool> {
        // Read-only data looks the same from every connection.
        Ok(self.readonly)
    }

    fn pread(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.pool.pread(buf, offset)
    }

    fn pwrite(&self, buf: &[u8], offset: u64, _fua: bool) -> Result<()> {
        self.pool.pwrite(buf, offset, self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured(args: &[(&str, &str)]) -> Result<CurlPlugin> {
        let mut p = CurlPlugin::new();
        for (k, v) in args {
            p.config(k, v)?;
        }
        p.config_complete()?;
        Ok(p)
    }

    #[test]
    fn url_is_required_and_magic() {
        let mut p = CurlPlugin::new();
        assert_eq!(p.magic_config_key(), Some("url"));
        let e = p.config_complete().unwrap_err();
        assert!(e.message().contains("url=<URL>"), "{}", e.message());
        configured(&[("url", "http://example.com/x")]).unwrap();
    }

    #[test]
    fn bad_values_are_refused() {
        let u = ("url", "http://h/x");
        for bad in [
            vec![u, ("connections", "0")],
            vec![u, ("connections", "1025")],
            vec![u, ("connections", "x")],
            vec![u, ("sslverify", "maybe")],
            vec![u, ("protocols", "http,gopher3")],
            vec![u, ("protocols", ",")],
            vec![u, ("http-version", "1.2")],
            vec![u, ("ipresolve", "v5")],
            vec![u, ("ssl-version", "tlsv9")],
            vec![u, ("resolve", "host:80")],
            vec![u, ("resolve", "host:http:1.2.3.4")],
            vec![u, ("timeout", "-1")],
            vec![u, ("cookiefile", "-")],
            vec![u, ("cookiejar", "-")],
            vec![u, ("header", "A: b"), ("header-script", "true")],
            vec![u, ("cookie", "a=b"), ("cookie-script", "true")],
            vec![u, ("header-script-renew", "5")],
            vec![u, ("cookie-script-renew", "5")],
            vec![u, ("nosuch", "1")],
        ] {
            assert!(configured(&bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn good_values() {
        let p = configured(&[
            ("url", "http://h/x"),
            ("connections", "1024"),
            ("protocols", "http,https,FILE"),
            ("http-version", "1.1"),
            ("ipresolve", "v4"),
            ("resolve", "h:80:127.0.0.1"),
            ("resolve", "-h:80"),
            ("ssl-version", "max-tlsv1.3"),
            ("tcp-nodelay", "false"),
            ("header", "X-A: b"),
            ("header", "X-B: c"),
        ])
        .unwrap();
        let s = &p.settings;
        assert_eq!(s.connections, 1024);
        assert_eq!(s.protocols, Some(1 | 2 | 1 << 10));
        assert_eq!(s.http_version, 2);
        assert_eq!(s.ipresolve, 1);
        assert_eq!(s.resolve.len(), 2);
        assert!(!s.tcp_nodelay);
        assert_eq!(s.headers.len(), 2);
        assert!(s.is_http());
        let d = CurlPlugin::new();
        assert_eq!(d.settings.connections, DEFAULT_CONNECTIONS);
        assert!(d.settings.tcp_nodelay && d.settings.followlocation && d.settings.sslverify);
    }
}
