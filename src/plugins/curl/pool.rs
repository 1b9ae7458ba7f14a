//! The pool of libcurl easy handles and the requests made with them.
//!
//! At most `connections` handles exist; they are created on demand and
//! kept, so each keeps its TCP (and TLS) connection to the server alive
//! between requests.  A request takes an idle handle, or creates one while
//! under the limit, or sleeps on a condition variable until one is given
//! back.  Handles are shared by every NBD connection.

use super::scripts::{Extra, Scripts};
use super::Settings;
use crate::error::{Error, Result};
use curl::easy::{Easy, List, SeekResult};
use nix::errno::Errno;
use std::cell::{Cell, RefCell};
use std::ffi::CString;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// `CURLOPT_TLS13_CIPHERS` (a string option, curl.h: OBJECTPOINT + 276).
const CURLOPT_TLS13_CIPHERS: curl_sys::CURLoption = curl_sys::CURLOPTTYPE_OBJECTPOINT + 276;
/// Receive buffer per handle: larger than libcurl's 16 KiB default, so a
/// big range arrives in fewer callbacks.
const BUFFER_SIZE: usize = 512 * 1024;
/// Generation of a handle whose headers must be (re)applied.
const STALE: u64 = u64::MAX;

struct Conn {
    easy: Easy,
    generation: u64,
}

struct State {
    idle: Vec<Conn>,
    created: usize,
}

/// The shared pool.
pub struct Pool {
    settings: Arc<Settings>,
    scripts: Scripts,
    state: Mutex<State>,
    freed: Condvar,
}

/// A handle borrowed from the pool; given back on drop.
struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
}

impl Lease<'_> {
    fn conn(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("lease holds a handle until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            let mut st = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
            st.idle.push(c);
            drop(st);
            self.pool.freed.notify_one();
        }
    }
}

/// What the header callback saw of the last response.
#[derive(Debug, Default, Clone)]
pub struct Response {
    /// A `HTTP/x status` line was seen.
    pub http: bool,
    pub status: u32,
    pub content_length: Option<u64>,
    pub content_range: Option<String>,
    pub accept_ranges: bool,
}

impl Response {
    /// Feed one header line (with its CRLF).  A status line starts a new
    /// response (after a redirect or `100 Continue`), forgetting the old.
    pub fn header(&mut self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end();
        if line.starts_with("HTTP/") {
            *self = Response {
                http: true,
                status: line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                ..Default::default()
            };
            return;
        }
        let Some((k, v)) = line.split_once(':') else {
            return;
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => self.content_length = v.parse().ok(),
            "content-range" => self.content_range = Some(v.to_string()),
            "accept-ranges" => {
                self.accept_ranges = v.split(',').any(|t| t.trim().eq_ignore_ascii_case("bytes"))
            }
            _ => {}
        }
    }
}

/// Parse `bytes FIRST-LAST/TOTAL` (TOTAL may be `*`).
pub fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let rest = v.strip_prefix("bytes")?.trim_start();
    let (range, _total) = rest.split_once('/')?;
    let (a, b) = range.trim().split_once('-')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

fn eio(msg: String) -> Error {
    Error::new(Errno::EIO, msg)
}

fn setopt_err(what: &str, e: curl::Error) -> Error {
    Error::config(format!("curl: {what}: {e}"))
}

fn check_rc(what: &str, rc: curl_sys::CURLcode) -> Result<()> {
    if rc == curl_sys::CURLE_OK {
        Ok(())
    } else {
        Err(setopt_err(what, curl::Error::new(rc)))
    }
}

/// Set a `long` option the crate has no method for.
fn setopt_long(easy: &Easy, what: &str, opt: curl_sys::CURLoption, v: i64) -> Result<()> {
    // SAFETY: `easy.raw()` is a live easy handle owned by `easy`, and `opt`
    // is an option whose argument type is `long`.
    let rc = unsafe { curl_sys::curl_easy_setopt(easy.raw(), opt, v as libc::c_long) };
    check_rc(what, rc)
}

/// Set (or with `None` clear) a string option the crate has no method for.
fn setopt_str(easy: &Easy, what: &str, opt: curl_sys::CURLoption, v: Option<&str>) -> Result<()> {
    let c = match v {
        Some(s) => Some(
            CString::new(s).map_err(|_| Error::config(format!("{what}: contains a NUL byte")))?,
        ),
        None => None,
    };
    let ptr = c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: `easy.raw()` is a live handle and `opt` takes a `char *`;
    // libcurl copies string options (since 7.17), so `c` may be freed
    // after the call; NULL resets the option.
    let rc = unsafe { curl_sys::curl_easy_setopt(easy.raw(), opt, ptr) };
    check_rc(what, rc)
}

impl Pool {
    pub fn new(settings: Arc<Settings>) -> Pool {
        let scripts = Scripts::new(&settings);
        Pool {
            settings,
            scripts,
            state: Mutex::new(State {
                idle: Vec::new(),
                created: 0,
            }),
            freed: Condvar::new(),
        }
    }

    /// Free the idle handles (libcurl then writes any `cookiejar`).
    pub fn close_all(&self) {
        let idle = std::mem::take(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()).idle);
        drop(idle);
    }

    /// Borrow a handle, waiting for one if all `connections` are busy.
    fn lease(&self) -> Result<Lease<'_>> {
        let extra = self.scripts.current()?;
        let max = self.settings.connections.max(1) as usize;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let conn = loop {
            if let Some(c) = st.idle.pop() {
                break c;
            }
            if st.created < max {
                st.created += 1;
                drop(st);
                match self.new_conn() {
                    Ok(c) => break c,
                    Err(e) => {
                        self.state.lock().unwrap_or_else(|p| p.into_inner()).created -= 1;
                        self.freed.notify_one();
                        return Err(e);
                    }
                }
            }
            st = self.freed.wait(st).unwrap_or_else(|p| p.into_inner());
        };
        let mut lease = Lease {
            pool: self,
            conn: Some(conn),
        };
        if lease.conn().generation != extra.generation {
            apply_extra(&mut lease.conn().easy, &extra)?;
            lease.conn().generation = extra.generation;
        }
        Ok(lease)
    }

    /// A new easy handle with every configured option set.
    fn new_conn(&self) -> Result<Conn> {
        let s = &*self.settings;
        let mut e = Easy::new();
        let w = |what: &'static str| move |err: curl::Error| setopt_err(what, err);
        e.signal(false).map_err(w("nosignal"))?;
        if s.debug_verbose {
            e.verbose(true).map_err(w("verbose"))?;
        }
        e.url(&s.url).map_err(w("url"))?;
        e.fail_on_error(true).map_err(w("failonerror"))?;
        e.follow_location(s.followlocation)
            .map_err(w("followlocation"))?;
        e.buffer_size(BUFFER_SIZE).map_err(w("buffersize"))?;
        if let Some(v) = &s.cainfo {
            e.cainfo(v).map_err(w("cainfo"))?;
        }
        if let Some(v) = &s.capath {
            e.capath(v).map_err(w("capath"))?;
        }
        if let Some(v) = &s.cookiefile {
            e.cookie_file(v).map_err(w("cookiefile"))?;
        }
        if let Some(v) = &s.cookiejar {
            e.cookie_jar(v).map_err(w("cookiejar"))?;
        }
        if s.http_version != 0 {
            setopt_long(
                &e,
                "http-version",
                curl_sys::CURLOPT_HTTP_VERSION,
                s.http_version,
            )?;
        }
        if s.ipresolve != 0 {
            setopt_long(&e, "ipresolve", curl_sys::CURLOPT_IPRESOLVE, s.ipresolve)?;
        }
        if !s.resolve.is_empty() {
            let mut l = List::new();
            for r in &s.resolve {
                l.append(r).map_err(w("resolve"))?;
            }
            e.resolve(l).map_err(w("resolve"))?;
        }
        if let Some(mask) = s.protocols {
            setopt_long(&e, "protocols", curl_sys::CURLOPT_PROTOCOLS, mask)?;
            setopt_long(&e, "protocols", curl_sys::CURLOPT_REDIR_PROTOCOLS, mask)?;
        }
        if let Some(v) = &s.proxy {
            e.proxy(v).map_err(w("proxy"))?;
        }
        if let Some(v) = &s.proxy_user {
            e.proxy_username(v).map_err(w("proxy-user"))?;
        }
        if let Some(v) = &s.proxy_password {
            e.proxy_password(v).map_err(w("proxy-password"))?;
        }
        if !s.sslverify {
            e.ssl_verify_peer(false).map_err(w("sslverify"))?;
            e.ssl_verify_host(false).map_err(w("sslverify"))?;
        }
        if s.ssl_version != 0 {
            setopt_long(
                &e,
                "ssl-version",
                curl_sys::CURLOPT_SSLVERSION,
                s.ssl_version,
            )?;
        }
        if let Some(v) = &s.ssl_cipher_list {
            e.ssl_cipher_list(v).map_err(w("ssl-cipher-list"))?;
        }
        if let Some(v) = &s.tls13_ciphers {
            setopt_str(&e, "tls13-ciphers", CURLOPT_TLS13_CIPHERS, Some(v))?;
        }
        e.tcp_keepalive(s.tcp_keepalive)
            .map_err(w("tcp-keepalive"))?;
        e.tcp_nodelay(s.tcp_nodelay).map_err(w("tcp-nodelay"))?;
        if s.timeout > 0 {
            e.timeout(Duration::from_secs(u64::from(s.timeout)))
                .map_err(w("timeout"))?;
        }
        if let Some(v) = &s.unix_socket_path {
            e.unix_socket(v).map_err(w("unix-socket-path"))?;
        }
        if let Some(v) = &s.user {
            e.username(v).map_err(w("user"))?;
        }
        if let Some(v) = &s.password {
            e.password(v).map_err(w("password"))?;
        }
        if let Some(v) = &s.user_agent {
            e.useragent(v).map_err(w("user-agent"))?;
        }
        Ok(Conn {
            easy: e,
            generation: STALE,
        })
    }

    fn fail(&self, what: &str, easy: &mut Easy, e: &curl::Error) -> Error {
        let url = &self.settings.url;
        if e.is_http_returned_error() {
            let code = easy.response_code().unwrap_or(0);
            return eio(format!("curl: {what} {url}: HTTP status {code}"));
        }
        let extra = e.extra_description().unwrap_or("");
        eio(format!("curl: {what} {url}: {}: {extra}", e.description()))
    }

    /// Find the size of the remote file (HEAD, or a GET cut short after
    /// the headers when HEAD is forbidden, as S3 presigned URLs do), and
    /// check that an HTTP server accepts byte ranges.
    pub fn probe_size(&self) -> Result<u64> {
        let mut lease = self.lease()?;
        let easy = &mut lease.conn().easy;
        setopt_str(easy, "range", curl_sys::CURLOPT_RANGE, None)?;
        easy.nobody(true).map_err(|e| setopt_err("nobody", e))?;
        let resp = RefCell::new(Response::default());
        let r = {
            let mut t = easy.transfer();
            t.header_function(|l| {
                resp.borrow_mut().header(l);
                true
            })
            .and_then(|_| t.perform())
        };
        let mut resp = resp.into_inner();
        if let Err(e) = r {
            let code = easy.response_code().unwrap_or(0);
            if !(e.is_http_returned_error() && code == 403) {
                return Err(self.fail("HEAD", easy, &e));
            }
            crate::log::debug("curl: HEAD forbidden (403), finding the size with GET");
            resp = self.size_by_get(easy)?;
        }
        if resp.http && !(200..300).contains(&resp.status) {
            // A redirect not followed (followlocation=false) or some other
            // non-error answer: its headers say nothing about the file.
            return Err(eio(format!(
                "curl: HEAD {}: HTTP status {} (not a 2xx answer)",
                self.settings.url, resp.status
            )));
        }
        let len = match resp.content_length {
            Some(n) => n,
            None => {
                let d = easy.content_length_download().unwrap_or(-1.0);
                if d < 0.0 {
                    return Err(eio(format!(
                        "curl: could not get length of remote file {} [is the URL correct?]",
                        self.settings.url
                    )));
                }
                d as u64
            }
        };
        if resp.http && !resp.accept_ranges {
            return Err(eio(format!(
                "curl: server does not support 'range' (byte range) requests: {} \
                 (no \"Accept-Ranges: bytes\" header)",
                self.settings.url
            )));
        }
        crate::log::debug(format!("curl: content length: {len}"));
        Ok(len)
    }

    /// GET without a range, aborted at the first byte of the body.
    fn size_by_get(&self, easy: &mut Easy) -> Result<Response> {
        easy.get(true).map_err(|e| setopt_err("httpget", e))?;
        let resp = RefCell::new(Response::default());
        let cut = Cell::new(false);
        let r = {
            let mut t = easy.transfer();
            t.header_function(|l| {
                resp.borrow_mut().header(l);
                true
            })
            .and_then(|_| {
                t.write_function(|_| {
                    cut.set(true);
                    Ok(0)
                })
            })
            .and_then(|_| t.perform())
        };
        match r {
            Ok(()) => {}
            Err(e) if e.is_write_error() && cut.get() => {}
            Err(e) => return Err(self.fail("GET", easy, &e)),
        }
        Ok(resp.into_inner())
    }

    /// Read `buf.len()` bytes at `offset` with a checked range request.
    pub fn pread(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let want = buf.len();
        let last = offset + want as u64 - 1;
        let mut lease = self.lease()?;
        let easy = &mut lease.conn().easy;
        easy.get(true).map_err(|e| setopt_err("httpget", e))?;
        easy.range(&format!("{offset}-{last}"))
            .map_err(|e| setopt_err("range", e))?;
        let resp = RefCell::new(Response::default());
        let overflow = Cell::new(false);
        let wrong_status = Cell::new(false);
        let mut pos = 0usize;
        let r = {
            let mut t = easy.transfer();
            t.header_function(|l| {
                resp.borrow_mut().header(l);
                true
            })
            .and_then(|_| {
                t.write_function(|data| {
                    let r = resp.borrow();
                    if r.http && r.status != 206 {
                        // Never take the whole file (200) for the range.
                        wrong_status.set(true);
                        return Ok(0);
                    }
                    let end = pos + data.len();
                    if end > want {
                        overflow.set(true);
                        return Ok(0);
                    }
                    buf[pos..end].copy_from_slice(data);
                    pos = end;
                    Ok(data.len())
                })
            })
            .and_then(|_| t.perform())
        };
        let resp = resp.into_inner();
        let url = &self.settings.url;
        let range = format!("bytes={offset}-{last}");
        if wrong_status.get() || (resp.http && resp.status != 206 && r.is_ok()) {
            return Err(eio(format!(
                "curl: GET {url} ({range}): server answered HTTP status {} instead of \
                 206 Partial Content; not serving it as the range",
                resp.status
            )));
        }
        if overflow.get() {
            return Err(eio(format!(
                "curl: GET {url} ({range}): server sent more than the {want} bytes asked for"
            )));
        }
        if let Err(e) = r {
            return Err(self.fail(&format!("GET ({range})"), easy, &e));
        }
        if let Some(cr) = &resp.content_range {
            if parse_content_range(cr) != Some((offset, last)) {
                return Err(eio(format!(
                    "curl: GET {url} ({range}): server answered with Content-Range \
                     \"{cr}\", not the range asked for"
                )));
            }
        }
        if pos != want {
            return Err(eio(format!(
                "curl: GET {url} ({range}): short read: got {pos} of {want} bytes"
            )));
        }
        Ok(())
    }

    /// Write `buf` at `offset` as an HTTP PUT with a `Content-Range`.
    pub fn pwrite(&self, buf: &[u8], offset: u64, total: u64) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let last = offset + buf.len() as u64 - 1;
        let extra = self.scripts.current()?;
        let mut lease = self.lease()?;
        let conn = lease.conn();
        // This request's headers differ: re-apply the usual ones next time.
        conn.generation = STALE;
        let easy = &mut conn.easy;
        let mut l = List::new();
        let range = format!("bytes {offset}-{last}/{total}");
        for h in extra
            .headers
            .iter()
            .map(String::as_str)
            .chain([&*format!("Content-Range: {range}"), "Expect:"])
        {
            l.append(h).map_err(|e| setopt_err("header", e))?;
        }
        easy.http_headers(l).map_err(|e| setopt_err("header", e))?;
        setopt_str(easy, "range", curl_sys::CURLOPT_RANGE, None)?;
        easy.upload(true).map_err(|e| setopt_err("upload", e))?;
        easy.in_filesize(buf.len() as u64)
            .map_err(|e| setopt_err("infilesize", e))?;
        let resp = RefCell::new(Response::default());
        let pos = Cell::new(0usize);
        let r = {
            let mut t = easy.transfer();
            t.header_function(|l| {
                resp.borrow_mut().header(l);
                true
            })
            .and_then(|_| {
                t.read_function(|into| {
                    let p = pos.get();
                    let n = into.len().min(buf.len() - p);
                    into[..n].copy_from_slice(&buf[p..p + n]);
                    pos.set(p + n);
                    Ok(n)
                })
            })
            .and_then(|_| {
                // libcurl rewinds to resend the body (after a redirect or
                // an authentication round trip).
                t.seek_function(|to| match to {
                    std::io::SeekFrom::Start(n) if n <= buf.len() as u64 => {
                        pos.set(n as usize);
                        SeekResult::Ok
                    }
                    _ => SeekResult::CantSeek,
                })
            })
            .and_then(|_| t.perform())
        };
        let pos = pos.get();
        let _ = easy.upload(false);
        if let Err(e) = r {
            return Err(self.fail(&format!("PUT ({range})"), easy, &e));
        }
        let resp = resp.into_inner();
        if resp.http && !(200..300).contains(&resp.status) {
            return Err(eio(format!(
                "curl: PUT {} ({range}): HTTP status {}",
                self.settings.url, resp.status
            )));
        }
        if pos != buf.len() {
            return Err(eio(format!(
                "curl: PUT {} ({range}): only {pos} of {} bytes were sent",
                self.settings.url,
                buf.len()
            )));
        }
        Ok(())
    }
}

/// Send the current headers and cookie with this handle's requests.
fn apply_extra(easy: &mut Easy, extra: &Extra) -> Result<()> {
    let mut l = List::new();
    for h in &extra.headers {
        l.append(h).map_err(|e| setopt_err("header", e))?;
    }
    easy.http_headers(l).map_err(|e| setopt_err("header", e))?;
    setopt_str(
        easy,
        "cookie",
        curl_sys::CURLOPT_COOKIE,
        extra.cookie.as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        assert_eq!(parse_content_range("bytes 0-511/1024"), Some((0, 511)));
        assert_eq!(parse_content_range("bytes 10-20/*"), Some((10, 20)));
        assert_eq!(parse_content_range("bytes */1024"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }

    #[test]
    fn response_headers_reset_on_status_line() {
        let mut r = Response::default();
        for l in [
            "HTTP/1.1 301 Moved\r\n",
            "Content-Length: 5\r\n",
            "HTTP/1.1 200 OK\r\n",
            "accept-ranges: none, Bytes\r\n",
            "Content-Length: 1234\r\n",
            "\r\n",
        ] {
            r.header(l.as_bytes());
        }
        assert!(r.http && r.accept_ranges);
        assert_eq!(r.status, 200);
        assert_eq!(r.content_length, Some(1234));
        let mut f = Response::default();
        f.header(b"Content-Length: 7\r\n");
        assert!(!f.http);
        assert_eq!(f.content_length, Some(7));
    }
}
