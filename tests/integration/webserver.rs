//! Web servers for tests of HTTP clients (the curl plugin, and filters
//! stacked on it such as readahead, retry and retry-request).
//!
//! [`WebServer`] is our own small HTTP/1.1 server (std `TcpListener`, one
//! thread per TCP connection, keep-alive) serving one in-memory file at
//! every path.  [`WebOptions`] turns on misbehaviours to test against:
//! required basic auth, header or cookie; no range support; a 200 with the
//! whole body to a range request; 403 to HEAD; a delay per request; failing
//! every Nth request with a status or a dropped connection.  It counts
//! requests and accepted TCP connections, records each request's headers,
//! and accepts `PUT` with `Content-Range` into its file when allowed.
//!
//! [`Lighttpd`] runs the real lighttpd (HTTP, or HTTPS with a self-signed
//! certificate made on the spot) on a temporary document root.
//!
//! ```ignore
//! let web = WebServer::start(data.clone(), WebOptions { delay_ms: 20, ..Default::default() });
//! let s = Server::start(&["-r", "curl", &web.url()]);
//! assert!(web.requests() > 0);
//! ```

#![allow(dead_code)] // helpers for several test modules

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How a request chosen by [`WebOptions::fail_every`] fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Answer with this HTTP status (e.g. 503) and a short body.
    Status(u16),
    /// Close the TCP connection without answering.
    Drop,
}

/// Behaviour of a [`WebServer`]; the default is a well-behaved server.
#[derive(Debug, Clone, Default)]
pub struct WebOptions {
    /// Require `Authorization: Basic` with this user and password (401
    /// otherwise).
    pub basic_auth: Option<(String, String)>,
    /// Require this header (name, exact value); 403 otherwise.
    pub required_header: Option<(String, String)>,
    /// Require this `name=value` among the request's cookies; 403 otherwise.
    pub required_cookie: Option<String>,
    /// No `Accept-Ranges` header, and `Range` is ignored (200 + whole body).
    pub no_ranges: bool,
    /// Advertise `Accept-Ranges: bytes` but answer range requests with 200
    /// and the whole body (a broken server or proxy).
    pub ignore_range: bool,
    /// Answer HEAD with 403 (as S3 presigned GET URLs do).
    pub head_forbidden: bool,
    /// Accept `PUT` with `Content-Range: bytes A-B/TOTAL` into the file.
    pub allow_put: bool,
    /// Sleep this long before answering each request.
    pub delay_ms: u64,
    /// Fail every Nth request (counting from 1: requests N, 2N, ...).
    pub fail_every: Option<(u64, Failure)>,
    /// Send `Set-Cookie: VALUE` with every successful answer.
    pub set_cookie: Option<String>,
    /// Answer every request with `302 Found` and `Location: URL`.
    pub redirect_to: Option<String>,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
}

struct Shared {
    opts: WebOptions,
    data: Mutex<Vec<u8>>,
    requests: AtomicU64,
    connections: AtomicU64,
    seen: Mutex<Vec<SeenRequest>>,
    stop: AtomicBool,
}

/// Our own test web server on 127.0.0.1; stopped on drop.
pub struct WebServer {
    port: u16,
    shared: Arc<Shared>,
    accept: Option<thread::JoinHandle<()>>,
}

impl WebServer {
    /// Serve `data` at every path with the given behaviour.
    pub fn start(data: Vec<u8>, opts: WebOptions) -> WebServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            opts,
            data: Mutex::new(data),
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            seen: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let sh = shared.clone();
        let accept = thread::spawn(move || {
            for stream in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                sh.connections.fetch_add(1, Ordering::SeqCst);
                let sh = sh.clone();
                thread::spawn(move || serve_connection(stream, &sh));
            }
        });
        WebServer {
            port,
            shared,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT/disk.img`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/disk.img", self.port)
    }

    /// Requests received so far (all methods, including failed ones).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The requests seen so far, oldest first.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The file as it is now (after any PUTs).
    pub fn data(&self) -> Vec<u8> {
        self.shared.data.lock().unwrap().clone()
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn write_response(
    s: &mut TcpStream,
    status: u16,
    reason: &str,
    headers: &[(String, String)],
    body: &[u8],
    send_body: bool,
    len: usize,
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nContent-Length: {len}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    if send_body {
        s.write_all(body)?;
    }
    s.flush()
}

fn simple(
    s: &mut TcpStream,
    status: u16,
    reason: &str,
    extra: &[(String, String)],
    head: bool,
) -> std::io::Result<()> {
    let body = format!("{status} {reason}\n");
    write_response(s, status, reason, extra, body.as_bytes(), !head, body.len())
}

/// Parse `bytes=A-B` (also `A-` and `-N`) against a file of `len` bytes.
fn parse_range(v: &str, len: u64) -> Option<(u64, u64)> {
    let r = v.trim().strip_prefix("bytes=")?;
    if r.contains(',') {
        return None;
    }
    let (a, b) = r.split_once('-')?;
    let (first, last) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        (len.checked_sub(n)?, len.checked_sub(1)?)
    } else {
        let first: u64 = a.parse().ok()?;
        let last = if b.is_empty() {
            len.checked_sub(1)?
        } else {
            b.parse::<u64>().ok()?.min(len.checked_sub(1)?)
        };
        (first, last)
    };
    (first <= last && last < len).then_some((first, last))
}

fn base64(input: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn serve_connection(stream: TcpStream, sh: &Shared) {
    let _ = stream.set_nodelay(true);
    let mut out = match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut rd = BufReader::with_capacity(64 * 1024, stream);
    loop {
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        // Request line.
        let mut line = String::new();
        match rd.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("/").to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            match rd.read_line(&mut h) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let n = sh.requests.fetch_add(1, Ordering::SeqCst) + 1;
        sh.seen.lock().unwrap().push(SeenRequest {
            method: method.clone(),
            path,
            headers: headers.clone(),
        });
        // Read any request body now, so a keep-alive stream stays in step.
        let mut body = Vec::new();
        if let Some(len) = headers
            .get("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            if headers
                .get("expect")
                .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
            {
                let _ = out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            body.resize(len, 0);
            if rd.read_exact(&mut body).is_err() {
                return;
            }
        }
        if sh.opts.delay_ms > 0 {
            thread::sleep(Duration::from_millis(sh.opts.delay_ms));
        }
        let close = headers
            .get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let ok = answer(&mut out, sh, n, &method, &headers, &body);
        match ok {
            Ok(true) if !close => continue,
            _ => {
                let _ = out.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// Answer one request; `Ok(false)` means close the connection.
fn answer(
    out: &mut TcpStream,
    sh: &Shared,
    n: u64,
    method: &str,
    headers: &HashMap<String, String>,
    body: &[u8],
) -> std::io::Result<bool> {
    let o = &sh.opts;
    let head = method == "HEAD";
    if let Some((every, how)) = o.fail_every {
        if every > 0 && n.is_multiple_of(every) {
            match how {
                Failure::Drop => return Ok(false),
                Failure::Status(code) => {
                    simple(out, code, "Injected Failure", &[], head)?;
                    return Ok(true);
                }
            }
        }
    }
    if let Some((u, p)) = &o.basic_auth {
        let want = format!("Basic {}", base64(format!("{u}:{p}").as_bytes()));
        if headers.get("authorization") != Some(&want) {
            let h = [(
                "WWW-Authenticate".to_string(),
                "Basic realm=\"test\"".to_string(),
            )];
            simple(out, 401, "Unauthorized", &h, head)?;
            return Ok(true);
        }
    }
    if let Some((k, v)) = &o.required_header {
        if headers.get(&k.to_ascii_lowercase()) != Some(v) {
            simple(out, 403, "Forbidden (missing header)", &[], head)?;
            return Ok(true);
        }
    }
    if let Some(c) = &o.required_cookie {
        let has = headers
            .get("cookie")
            .is_some_and(|v| v.split(';').any(|x| x.trim() == c));
        if !has {
            simple(out, 403, "Forbidden (missing cookie)", &[], head)?;
            return Ok(true);
        }
    }
    if let Some(to) = &o.redirect_to {
        simple(
            out,
            302,
            "Found",
            &[("Location".to_string(), to.clone())],
            head,
        )?;
        return Ok(true);
    }
    let mut extra = Vec::new();
    if let Some(c) = &o.set_cookie {
        extra.push(("Set-Cookie".to_string(), c.clone()));
    }
    if !o.no_ranges {
        extra.push(("Accept-Ranges".to_string(), "bytes".to_string()));
    }
    match method {
        "HEAD" if o.head_forbidden => {
            simple(out, 403, "Forbidden", &[], true)?;
        }
        "GET" | "HEAD" => {
            let data = sh.data.lock().unwrap();
            let len = data.len() as u64;
            let range = headers
                .get("range")
                .filter(|_| !o.no_ranges && !o.ignore_range);
            match range {
                Some(r) => match parse_range(r, len) {
                    Some((a, b)) => {
                        extra.push(("Content-Range".to_string(), format!("bytes {a}-{b}/{len}")));
                        let slice = &data[a as usize..=b as usize];
                        write_response(
                            out,
                            206,
                            "Partial Content",
                            &extra,
                            slice,
                            !head,
                            slice.len(),
                        )?;
                    }
                    None => {
                        extra.push(("Content-Range".to_string(), format!("bytes */{len}")));
                        simple(out, 416, "Range Not Satisfiable", &extra, head)?;
                    }
                },
                None => {
                    write_response(out, 200, "OK", &extra, &data, !head, data.len())?;
                }
            }
        }
        "PUT" if o.allow_put => {
            let cr = headers.get("content-range").cloned().unwrap_or_default();
            let parsed = cr
                .strip_prefix("bytes ")
                .and_then(|r| r.split_once('/'))
                .and_then(|(r, _)| r.split_once('-'))
                .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
            let mut data = sh.data.lock().unwrap();
            match parsed {
                Some((a, b)) if b >= a && b - a + 1 == body.len() && b < data.len() => {
                    data[a..=b].copy_from_slice(body);
                    drop(data);
                    simple(out, 204, "No Content", &[], true)?;
                }
                _ => {
                    drop(data);
                    simple(out, 400, "Bad Content-Range", &[], false)?;
                }
            }
        }
        _ => {
            simple(out, 405, "Method Not Allowed", &[], head)?;
        }
    }
    Ok(true)
}

/// A real lighttpd serving a temporary document root; killed on drop.
pub struct Lighttpd {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    https: bool,
}

impl Lighttpd {
    /// lighttpd over HTTP.
    pub fn start() -> Lighttpd {
        Self::spawn(false)
    }

    /// lighttpd over HTTPS with a fresh self-signed certificate for
    /// `localhost` and 127.0.0.1 (see [`Lighttpd::cert`]).
    pub fn start_https() -> Lighttpd {
        Self::spawn(true)
    }

    /// lighttpd over HTTP on a Unix socket (see [`Lighttpd::socket`]).
    pub fn start_unix() -> Lighttpd {
        Self::spawn_on(false, true)
    }

    fn spawn(https: bool) -> Lighttpd {
        Self::spawn_on(https, false)
    }

    fn spawn_on(https: bool, unix: bool) -> Lighttpd {
        let bin = Path::new("/usr/sbin/lighttpd");
        assert!(
            bin.exists(),
            "lighttpd is required for these tests (Debian package lighttpd)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let mut conf = format!(
            "server.document-root = \"{}\"\n\
             BIND\n\
             server.errorlog = \"{}\"\n\
             server.max-keep-alive-requests = 10000\n\
             mimetype.assign = ( \"\" => \"application/octet-stream\" )\n",
            root.display(),
            dir.path().join("error.log").display()
        );
        if https {
            let cert = dir.path().join("cert.pem");
            let key = dir.path().join("key.pem");
            let o = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .args([
                    "-subj",
                    "/CN=localhost",
                    "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1",
                ])
                .stdin(Stdio::null())
                .output()
                .expect("openssl is required to make a test certificate");
            assert!(
                o.status.success(),
                "openssl req failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            conf.push_str(&format!(
                "server.modules += ( \"mod_openssl\" )\n\
                 ssl.engine = \"enable\"\n\
                 ssl.pemfile = \"{}\"\n\
                 ssl.privkey = \"{}\"\n",
                cert.display(),
                key.display()
            ));
        }
        // A free port can be taken by someone else before lighttpd binds
        // it: try a few.
        for _ in 0..10 {
            let port = crate::harness::free_port();
            let path = dir.path().join("lighttpd.conf");
            let sock = dir.path().join("sock");
            let bind = if unix {
                format!("server.bind = \"{}\"", sock.display())
            } else {
                format!("server.bind = \"127.0.0.1\"\nserver.port = {port}")
            };
            std::fs::write(&path, conf.replace("BIND", &bind)).unwrap();
            let mut child = Command::new(bin)
                .arg("-D")
                .arg("-f")
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn lighttpd");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let up = if unix {
                    std::os::unix::net::UnixStream::connect(&sock).is_ok()
                } else {
                    TcpStream::connect(("127.0.0.1", port)).is_ok()
                };
                if up {
                    return Lighttpd {
                        child,
                        dir,
                        port,
                        https,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken? try another
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("lighttpd did not start listening on port {port}");
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
        panic!("lighttpd failed to start: {log}");
    }

    /// The document root: files written here are served.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The Unix socket ([`Lighttpd::start_unix`] only).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// The self-signed certificate (HTTPS only).
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of `name` in the document root, using `host` (`127.0.0.1`
    /// or `localhost`).
    pub fn url_on(&self, host: &str, name: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{host}:{}/{name}", self.port)
    }

    pub fn url(&self, name: &str) -> String {
        self.url_on("127.0.0.1", name)
    }

    /// Put a file in the document root.
    pub fn write(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.root().join(name);
        std::fs::write(&p, data).unwrap();
        p
    }
}

impl Drop for Lighttpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_parsing() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=95-200", 100), Some((95, 99)));
        assert_eq!(parse_range("bytes=100-101", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"ab"), "YWI=");
    }
}
