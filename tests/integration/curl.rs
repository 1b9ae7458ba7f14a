//! The curl plugin, against lighttpd (HTTP and HTTPS), `file://` URLs and
//! our own misbehaving test web server (`webserver.rs`).

use crate::cli::expect_error;
use crate::harness::*;
use crate::webserver::*;
use std::process::Stdio;

const MIB: usize = 1 << 20;

/// Read the whole export with libnbd in 1 MiB requests and return it.
fn read_all(uri: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    nbdcopy(&[uri, out.to_str().unwrap()]);
    std::fs::read(&out).unwrap()
}

#[track_caller]
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i}");
    }
}

#[test]
fn curl_lighttpd_nbdcopy_and_qemu_img_convert_match() {
    let web = Lighttpd::start();
    // A whole number of sectors: qemu-img rounds raw output up to 512.
    let data = pseudo_random(5 * MIB + 4096, 0xc0ffee);
    web.write("disk.img", &data);
    let s = Server::start(&["-r", "curl", &web.url("disk.img")]);
    assert_eq!(
        nbdinfo(&["--size", &s.uri()]).trim(),
        data.len().to_string()
    );
    assert_same(&read_all(&s.uri()), &data, "nbdcopy from curl");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.raw");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        &s.uri(),
        out.to_str().unwrap(),
    ]);
    assert_same(
        &std::fs::read(&out).unwrap(),
        &data,
        "qemu-img convert from curl",
    );
}

#[test]
fn curl_lighttpd_unaligned_reads_are_exact() {
    let web = Lighttpd::start();
    let data = pseudo_random(300_001, 7);
    web.write("d", &data);
    // The magic key: a bare URL is url=.
    let s = Server::start(&["curl", &web.url("d"), "connections=2"]);
    let script = r#"
size = h.get_size()
assert size == 300001, size
buf = open(sys.argv[2], "rb").read()
for off, n in [(0, 1), (1, 511), (4095, 3), (299999, 2), (123457, 65536), (0, 300001)]:
    got = h.pread(n, off)
    assert got == buf[off:off+n], (off, n)
assert h.is_read_only() == False or True
print("ok")
"#;
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), &data).unwrap();
    assert_eq!(
        python(&s.uri(), script, &[f.path().to_str().unwrap()]).trim(),
        "ok"
    );
}

#[test]
fn curl_lighttpd_https_needs_trust() {
    let web = Lighttpd::start_https();
    let data = pseudo_random(2 * MIB, 99);
    web.write("disk.img", &data);

    // Self-signed: refused by default, at open.
    let s = Server::start(&["-r", "curl", &web.url("disk.img")]);
    let o = python_any(&s.uri(), "print(h.get_size())", &[]);
    assert!(!o.status.success(), "untrusted certificate was accepted");
    drop(s);

    let s = Server::start(&["-r", "curl", &web.url("disk.img"), "sslverify=false"]);
    assert_same(&read_all(&s.uri()), &data, "https sslverify=false");
    drop(s);

    let cainfo = format!("cainfo={}", web.cert().display());
    let s = Server::start(&["-r", "curl", &web.url_on("localhost", "disk.img"), &cainfo]);
    assert_same(&read_all(&s.uri()), &data, "https cainfo=CERT");
}

#[test]
fn curl_file_url_reads_and_is_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(MIB + 3, 5);
    let p = write_file(dir.path(), "disk", &data);
    let url = format!("file://{}", p.display());
    let s = Server::start(&["curl", &url]);
    assert_same(&read_all(&s.uri()), &data, "file://");
    // libcurl's file:// upload truncates; we must not offer writes.
    let out = python(&s.uri(), "print(h.is_read_only())", &[]);
    assert_eq!(out.trim(), "True");
    assert_eq!(std::fs::read(&p).unwrap(), data);
}

#[test]
fn curl_startup_errors() {
    let u = "http://127.0.0.1:9/x";
    for (args, want) in [
        (vec!["curl"], "url=<URL>"),
        (vec!["curl", u, "sslverify=maybe"], "boolean"),
        (vec!["curl", u, "followlocation=2"], "boolean"),
        (vec!["curl", u, "tcp-nodelay=x"], "boolean"),
        (vec!["curl", u, "connections=0"], "connections"),
        (vec!["curl", u, "connections=1025"], "connections"),
        (vec!["curl", u, "connections=lots"], "connections"),
        (vec!["curl", u, "protocols=http,nosuch"], "nosuch"),
        (vec!["curl", u, "http-version=1.2"], "http-version"),
        (vec!["curl", u, "http-version=3"], "HTTP/3"),
        (vec!["curl", u, "ipresolve=v5"], "ipresolve"),
        (vec!["curl", u, "resolve=example.com:80"], "resolve"),
        (vec!["curl", u, "ssl-version=tlsv9"], "ssl-version"),
        (vec!["curl", u, "timeout=soon"], "timeout"),
        (vec!["curl", u, "cookiefile=-"], "cookiefile"),
        (vec!["curl", u, "cookiejar=-"], "cookiejar"),
        (
            vec!["curl", u, "header=A: b", "header-script=true"],
            "header-script",
        ),
        (
            vec!["curl", u, "cookie=a=b", "cookie-script=true"],
            "cookie-script",
        ),
        (
            vec!["curl", u, "header-script-renew=5"],
            "header-script-renew",
        ),
        (
            vec!["curl", u, "password=+/nonexistent/pw"],
            "/nonexistent/pw",
        ),
        (vec!["curl", u, "nosuchkey=1"], "nosuchkey"),
        (vec!["curl", u, "password=-"], "not a tty"),
        (vec!["curl", u, "password=-1"], "stdin, stdout or stderr"),
    ] {
        if want == "HTTP/3" && curl_has_http3() {
            continue;
        }
        let err = expect_error(&args, true);
        assert!(err.contains(want), "{args:?}: expected {want:?} in:\n{err}");
    }
}

fn curl_has_http3() -> bool {
    let o = run_cmd(client("curl").arg("-V").stdout(Stdio::piped()), TIMEOUT);
    stdout_str(&o).contains("HTTP3")
}

#[test]
fn curl_basic_auth_literal_and_from_file() {
    let data = pseudo_random(256 * 1024, 11);
    let web = WebServer::start(
        data.clone(),
        WebOptions {
            basic_auth: Some(("alice".into(), "s3cret".into())),
            ..Default::default()
        },
    );
    // Without credentials the open fails with the status in the log.
    let s = Server::start(&["-r", "curl", &web.url()]);
    let o = python_any(&s.uri(), "print(h.get_size())", &[]);
    assert!(!o.status.success());
    drop(s);

    let s = Server::start(&["-r", "curl", &web.url(), "user=alice", "password=s3cret"]);
    assert_same(&read_all(&s.uri()), &data, "user/password");
    drop(s);

    let dir = tempfile::tempdir().unwrap();
    let pw = write_file(dir.path(), "pw", b"s3cret\n");
    let arg = format!("password=+{}", pw.display());
    let s = Server::start(&["-r", "curl", &web.url(), "user=alice", &arg]);
    assert_same(&read_all(&s.uri()), &data, "password=+FILE");
    drop(s);

    let s = Server::start(&["-r", "curl", &web.url(), "user=alice", "password=wrong"]);
    let o = python_any(&s.uri(), "print(h.get_size())", &[]);
    assert!(!o.status.success(), "a wrong password was accepted");
}

#[test]
fn curl_required_header_and_user_agent() {
    let data = pseudo_random(100_000, 12);
    let web = WebServer::start(
        data.clone(),
        WebOptions {
            required_header: Some(("X-Token".into(), "abc 123".into())),
            ..Default::default()
        },
    );
    let s = Server::start(&[
        "-r",
        "curl",
        &web.url(),
        "header=X-Token: abc 123",
        "header=X-Other: 1",
        "user-agent=nbdkit-test/1",
    ]);
    assert_same(&read_all(&s.uri()), &data, "header=");
    let seen = web.seen();
    assert!(seen.len() >= 2);
    for r in &seen {
        assert_eq!(r.headers.get("x-other").map(String::as_str), Some("1"));
        assert_eq!(
            r.headers.get("user-agent").map(String::as_str),
            Some("nbdkit-test/1")
        );
    }
    drop(s);
    let s = Server::start(&["-r", "curl", &web.url(), "header=X-Token: wrong"]);
    let o = python_any(&s.uri(), "print(h.get_size())", &[]);
    assert!(!o.status.success(), "wrong header accepted");
}

#[test]
fn curl_cookie_literal_and_from_file() {
    let data = pseudo_random(70_000, 13);
    let web = WebServer::start(
        data.clone(),
        WebOptions {
            required_cookie: Some("session=xyz".into()),
            ..Default::default()
        },
    );
    let s = Server::start(&["-r", "curl", &web.url(), "cookie=a=1; session=xyz"]);
    assert_same(&read_all(&s.uri()), &data, "cookie=");
    drop(s);
    let dir = tempfile::tempdir().unwrap();
    let c = write_file(dir.path(), "c", b"session=xyz\n");
    let arg = format!("cookie=+{}", c.display());
    let s = Server::start(&["-r", "curl", &web.url(), &arg]);
    assert_same(&read_all(&s.uri()), &data, "cookie=+FILE");
    drop(s);
    let s = Server::start(&["-r", "curl", &web.url()]);
    let o = python_any(&s.uri(), "print(h.get_size())", &[]);
    assert!(!o.status.success(), "missing cookie accepted");
}

#[test]
fn curl_header_and_cookie_scripts() {
    let data = pseudo_random(200_000, 14);
    let web = WebServer::start(
        data.clone(),
        WebOptions {
            required_header: Some(("Authorization".into(), "Bearer tok".into())),
            required_cookie: Some("sid=fromscript".into()),
            ..Default::default()
        },
    );
    let s = Server::start(&[
        "-r",
        "curl",
        &web.url(),
        "header-script=printf 'Authorization: Bearer tok\\n'; echo \"X-Iteration: $iteration\"; echo \"X-Url: $url\"",
        "cookie-script=echo sid=fromscript",
    ]);
    assert_same(&read_all(&s.uri()), &data, "scripts");
    for r in web.seen() {
        assert_eq!(r.headers.get("x-iteration").map(String::as_str), Some("0"));
        assert_eq!(r.headers.get("x-url"), Some(&web.url()));
    }
    drop(s);

    // With renew=1 the script runs again once a second has passed.
    let web2 = WebServer::start(data.clone(), WebOptions::default());
    let s = Server::start(&[
        "-r",
        "curl",
        &web2.url(),
        "connections=1",
        "header-script=echo \"X-Iteration: $iteration\"",
        "header-script-renew=1",
    ]);
    let script = r#"
import time
h.pread(512, 0)
time.sleep(1.3)
h.pread(512, 512)
print("ok")
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "ok");
    let iters: Vec<String> = web2
        .seen()
        .iter()
        .filter_map(|r| r.headers.get("x-iteration").cloned())
        .collect();
    assert_eq!(iters.first().map(String::as_str), Some("0"), "{iters:?}");
    assert_eq!(iters.last().map(String::as_str), Some("1"), "{iters:?}");
}

#[test]
fn curl_server_without_ranges_is_refused_at_open() {
    let web = WebServer::start(
        pseudo_random(4096, 1),
        WebOptions {
            no_ranges: true,
            ..Default::default()
        },
    );
    let mut s = Server::start(&["-r", "curl", &web.url()]);
    let o = python_any(&s.uri(), "print(h.get_size())", &[]);
    assert!(!o.status.success(), "a server without ranges was accepted");
    s.stop();
    let err = s.stderr();
    assert!(err.contains("range"), "stderr:\n{err}");
}

#[test]
fn curl_200_to_a_range_request_is_an_error_not_data() {
    let data = pseudo_random(1 << 20, 2);
    let web = WebServer::start(
        data,
        WebOptions {
            ignore_range: true,
            ..Default::default()
        },
    );
    let mut s = Server::start(&["-r", "curl", &web.url()]);
    let script = r#"
try:
    h.pread(4096, 8192)
    print("read succeeded")
except nbd.Error as e:
    print("EIO" if e.errno == "EIO" or "Input/output" in str(e) else str(e))
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "EIO");
    s.stop();
    let err = s.stderr();
    assert!(err.contains("HTTP status 200"), "stderr:\n{err}");
}

#[test]
fn curl_503_is_eio_with_status_in_log() {
    let data = pseudo_random(64 * 1024, 3);
    let web = WebServer::start(
        data.clone(),
        WebOptions {
            fail_every: Some((3, Failure::Status(503))),
            ..Default::default()
        },
    );
    // Request 1 is the HEAD; 2 succeeds; 3 fails.
    let mut s = Server::start(&["-r", "curl", &web.url(), "connections=1"]);
    let script = r#"
buf = open(sys.argv[2], "rb").read()
assert h.pread(1024, 0) == buf[0:1024]
try:
    h.pread(1024, 1024)
    print("no error")
except nbd.Error as e:
    print("EIO" if e.errno == "EIO" else str(e))
assert h.pread(1024, 2048) == buf[2048:3072]
"#;
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), &data).unwrap();
    assert_eq!(
        python(&s.uri(), script, &[f.path().to_str().unwrap()]).trim(),
        "EIO"
    );
    s.stop();
    let err = s.stderr();
    assert!(err.contains("HTTP status 503"), "stderr:\n{err}");
}

#[test]
fn curl_dropped_connection_is_eio_and_recovers() {
    let data = pseudo_random(64 * 1024, 4);
    let web = WebServer::start(
        data.clone(),
        WebOptions {
            fail_every: Some((3, Failure::Drop)),
            ..Default::default()
        },
    );
    let s = Server::start(&["-r", "curl", &web.url(), "connections=1"]);
    let script = r#"
buf = open(sys.argv[2], "rb").read()
ok = 0
errs = 0
for i in range(6):
    try:
        assert h.pread(1024, i * 1024) == buf[i*1024:(i+1)*1024]
        ok += 1
    except nbd.Error as e:
        errs += 1
print(ok, errs)
"#;
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), &data).unwrap();
    let out = python(&s.uri(), script, &[f.path().to_str().unwrap()]);
    let v: Vec<u32> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    // libcurl may retry a request whose reused connection died, so a
    // drop is either hidden or EIO; never wrong data (the script asserts).
    assert_eq!(v[0] + v[1], 6, "{out}");
    assert!(v[0] >= 3, "did not recover: {out}");
}

#[test]
fn curl_head_forbidden_falls_back_to_get() {
    let data = pseudo_random(3 * 65536 + 5, 6);
    let web = WebServer::start(
        data.clone(),
        WebOptions {
            head_forbidden: true,
            delay_ms: 0,
            ..Default::default()
        },
    );
    let s = Server::start(&["-r", "curl", &web.url()]);
    assert_same(&read_all(&s.uri()), &data, "HEAD 403 fallback");
    assert!(web.seen().iter().any(|r| r.method == "HEAD"));
}

#[test]
fn curl_connections_are_pooled_and_reused() {
    let data = pseudo_random(4 * MIB, 8);
    let web = WebServer::start(
        data.clone(),
        WebOptions {
            delay_ms: 2,
            ..Default::default()
        },
    );
    let s = Server::start(&["-r", "curl", &web.url(), "connections=3"]);
    // nbdcopy with several connections and many requests in flight.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    nbdcopy(&[
        "--request-size=65536",
        "--requests=16",
        &s.uri(),
        out.to_str().unwrap(),
    ]);
    assert_same(&std::fs::read(&out).unwrap(), &data, "pooled copy");
    let reqs = web.requests();
    let conns = web.connections();
    assert!(reqs >= 64, "only {reqs} requests");
    assert!(conns <= 3, "{conns} TCP connections for connections=3");
}

#[test]
fn curl_pwrite_is_a_ranged_put() {
    let data = pseudo_random(256 * 1024, 9);
    let web = WebServer::start(
        data.clone(),
        WebOptions {
            allow_put: true,
            ..Default::default()
        },
    );
    let s = Server::start(&["curl", &web.url()]);
    let script = r#"
assert not h.is_read_only()
h.pwrite(b"\xab" * 5000, 1000)
assert h.pread(5000, 1000) == b"\xab" * 5000
print("ok")
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "ok");
    let mut want = data.clone();
    want[1000..6000].fill(0xab);
    assert_same(&web.data(), &want, "after PUT");
    let put = web.seen().into_iter().find(|r| r.method == "PUT").unwrap();
    assert_eq!(
        put.headers.get("content-range").map(String::as_str),
        Some("bytes 1000-5999/262144")
    );
    drop(s);

    // -r: no writes offered.
    let s = Server::start(&["-r", "curl", &web.url()]);
    assert_eq!(
        python(&s.uri(), "print(h.is_read_only())", &[]).trim(),
        "True"
    );
}

#[test]
fn curl_protocols_limit_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_file(dir.path(), "disk", &pseudo_random(4096, 1));
    let url = format!("file://{}", p.display());
    let s = Server::start(&["curl", &url, "protocols=http,https"]);
    let o = python_any(&s.uri(), "print(h.get_size())", &[]);
    assert!(
        !o.status.success(),
        "file:// allowed by protocols=http,https"
    );
    drop(s);
    let s = Server::start(&["curl", &url, "protocols=file"]);
    assert_eq!(python(&s.uri(), "print(h.get_size())", &[]).trim(), "4096");
}

#[test]
fn curl_password_from_inherited_fd() {
    use std::os::fd::AsRawFd;
    let data = pseudo_random(50_000, 21);
    let web = WebServer::start(
        data.clone(),
        WebOptions {
            basic_auth: Some(("bob".into(), "fdpass".into())),
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let p = write_file(dir.path(), "pw", b"fdpass\n");
    let f = std::fs::File::open(&p).unwrap();
    let fd = f.as_raw_fd();
    let arg = format!("password=-{fd}");
    let s = Server::start_with(
        tempfile::tempdir().unwrap(),
        &["-r", "curl", &web.url(), "user=bob", &arg],
        |cmd| {
            // SAFETY: runs in the child between fork and exec; fcntl is
            // async-signal-safe and only clears close-on-exec on `fd`.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(cmd, move || {
                    if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        },
    );
    assert_same(&read_all(&s.uri()), &data, "password=-FD");
}

#[test]
fn curl_timeout_fails_a_slow_request() {
    let web = WebServer::start(
        pseudo_random(4096, 22),
        WebOptions {
            delay_ms: 3000,
            ..Default::default()
        },
    );
    let mut s = Server::start(&["-r", "curl", &web.url(), "timeout=1"]);
    let o = python_any(&s.uri(), "print(h.get_size())", &[]);
    assert!(!o.status.success(), "a 3 s answer beat timeout=1");
    s.stop();
    let err = s.stderr();
    assert!(
        err.to_lowercase().contains("timeout") || err.contains("timed out"),
        "stderr:\n{err}"
    );
}

#[test]
fn curl_resolve_and_ipresolve() {
    let data = pseudo_random(20_000, 23);
    let web = WebServer::start(data.clone(), WebOptions::default());
    let port = web.port();
    let url = format!("http://disk.invalid:{port}/disk.img");
    let res = format!("resolve=disk.invalid:{port}:127.0.0.1");
    let s = Server::start(&["-r", "curl", &url, &res, "ipresolve=v4"]);
    assert_same(&read_all(&s.uri()), &data, "resolve=");
    assert_eq!(
        web.seen()[0].headers.get("host").map(String::as_str),
        Some(&*format!("disk.invalid:{port}"))
    );
}

#[test]
fn curl_cookiejar_is_written_at_exit() {
    let data = pseudo_random(8192, 24);
    let web = WebServer::start(
        data.clone(),
        WebOptions {
            set_cookie: Some("jarred=yes; Path=/".into()),
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let jar = dir.path().join("jar.txt");
    let arg = format!("cookiejar={}", jar.display());
    let mut s = Server::start(&["-r", "curl", &web.url(), &arg]);
    assert_same(&read_all(&s.uri()), &data, "cookiejar");
    // The cookie the server set is sent back on later requests.
    assert!(
        web.seen().iter().skip(1).any(|r| r
            .headers
            .get("cookie")
            .is_some_and(|c| c.contains("jarred=yes"))),
        "cookie engine did not send the cookie back"
    );
    s.stop();
    let text = std::fs::read_to_string(&jar).unwrap_or_default();
    assert!(text.contains("jarred"), "cookie jar:\n{text}");
}

#[test]
fn curl_followlocation() {
    let data = pseudo_random(30_000, 25);
    let target = WebServer::start(data.clone(), WebOptions::default());
    let redirector = WebServer::start(
        Vec::new(),
        WebOptions {
            redirect_to: Some(target.url()),
            ..Default::default()
        },
    );
    let s = Server::start(&["-r", "curl", &redirector.url()]);
    assert_same(&read_all(&s.uri()), &data, "followed redirect");
    drop(s);
    let mut s = Server::start(&["-r", "curl", &redirector.url(), "followlocation=false"]);
    let o = python_any(&s.uri(), "print(h.get_size())", &[]);
    assert!(!o.status.success(), "a 302 was served as the file");
    s.stop();
    assert!(s.stderr().contains("HTTP status 302"), "{}", s.stderr());
}

#[test]
fn curl_unix_socket_path() {
    let web = Lighttpd::start_unix();
    let data = pseudo_random(MIB, 26);
    web.write("disk.img", &data);
    let arg = format!("unix-socket-path={}", web.socket().display());
    let s = Server::start(&["-r", "curl", "http://localhost/disk.img", &arg]);
    assert_same(&read_all(&s.uri()), &data, "unix-socket-path");
}

#[test]
fn curl_debug_flags() {
    let web = WebServer::start(pseudo_random(4096, 27), WebOptions::default());
    let mut s = Server::start(&[
        "-v",
        "-D",
        "curl.scripts=1",
        "-D",
        "curl.verbose=1",
        "-r",
        "curl",
        &web.url(),
        "header-script=echo 'X-Debug-Me: 42'",
    ]);
    assert_eq!(nbdinfo(&["--size", &s.uri()]).trim(), "4096");
    s.stop();
    let err = s.stderr();
    assert!(
        err.contains("header-script: X-Debug-Me: 42"),
        "stderr:\n{err}"
    );
    // libcurl's own trace shows the request it sent.
    assert!(err.contains("> HEAD /disk.img"), "stderr:\n{err}");
}

#[test]
fn curl_proxy_with_credentials() {
    // Our web server answers any path, so it can stand in for an HTTP
    // proxy: the request line then carries the full URL.
    let data = pseudo_random(40_000, 28);
    let proxy = WebServer::start(data.clone(), WebOptions::default());
    let s = Server::start(&[
        "-r",
        "curl",
        "http://far.invalid/disk.img",
        &format!("proxy=http://127.0.0.1:{}", proxy.port()),
        "proxy-user=pu",
        "proxy-password=pp",
        "tcp-keepalive=true",
        "tcp-nodelay=false",
    ]);
    assert_same(&read_all(&s.uri()), &data, "through a proxy");
    let seen = proxy.seen();
    assert_eq!(seen[0].path, "http://far.invalid/disk.img");
    assert_eq!(
        seen[0]
            .headers
            .get("proxy-authorization")
            .map(String::as_str),
        Some("Basic cHU6cHA=")
    );
}

#[test]
fn curl_tls_options() {
    let web = Lighttpd::start_https();
    let data = pseudo_random(300_000, 29);
    web.write("disk.img", &data);
    let cainfo = format!("cainfo={}", web.cert().display());
    let url = web.url_on("localhost", "disk.img");
    for extra in [
        "ssl-version=tlsv1.2",
        "tls13-ciphers=TLS_AES_128_GCM_SHA256",
        "ssl-cipher-list=ECDHE-RSA-AES128-GCM-SHA256",
        "http-version=2TLS",
        "http-version=1.1",
    ] {
        let s = Server::start(&["-r", "curl", &url, &cainfo, extra]);
        assert_same(&read_all(&s.uri()), &data, extra);
    }
    // A cipher list nobody offers fails at open, not later.
    let s = Server::start(&["-r", "curl", &url, &cainfo, "ssl-cipher-list=NOSUCHCIPHER"]);
    let o = python_any(&s.uri(), "print(h.get_size())", &[]);
    assert!(!o.status.success(), "a bogus cipher list worked");
}
