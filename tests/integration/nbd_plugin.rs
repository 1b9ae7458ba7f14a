//! The nbd plugin: a proxy in front of our own server, qemu-nbd and the C
//! nbdkit (for its error filter and info plugin), over Unix sockets and
//! TCP, with TLS; `shared=`, `retry=`, `command=`, `socket-fd=`,
//! `dynamic-export=`; errno and extents passed through; filters in front
//! of the proxy; concurrency; and every bad parameter a startup error.

use crate::harness::*;
use crate::tls::Pki;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Another NBD server run by a test (qemu-nbd, the C nbdkit), killed with
/// its process group on drop.
struct Remote {
    child: Option<Child>,
    sock: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Remote {
    fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.sock.display())
    }

    fn socket_param(&self) -> String {
        format!("socket={}", self.sock.display())
    }

    /// Spawn `prog args`, wait for `ready` to exist.
    fn spawn(
        prog: &str,
        args: &[String],
        sock: PathBuf,
        ready: &Path,
        dir: Option<tempfile::TempDir>,
    ) -> Remote {
        let mut c = client(prog);
        c.args(args).stdout(Stdio::null()).stderr(Stdio::null());
        let child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
        let mut r = Remote {
            child: Some(child),
            sock,
            _dir: dir,
        };
        let start = Instant::now();
        while !ready.exists() {
            if let Some(st) = r.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{prog} {args:?} exited early: {st:?}");
            }
            assert!(start.elapsed() < TIMEOUT, "{prog} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    /// `qemu-nbd -t -e 16 -k SOCK ARGS` (persistent, 16 clients).
    fn qemu_nbd(args: &[&str]) -> Remote {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qemu.sock");
        let mut full: Vec<String> = vec!["-t".into(), "-e".into(), "16".into(), "-k".into()];
        full.push(sock.display().to_string());
        full.extend(args.iter().map(|s| s.to_string()));
        Remote::spawn("/usr/bin/qemu-nbd", &full, sock.clone(), &sock, Some(dir))
    }

    /// The C nbdkit 1.32 (`nbdkit -f -U SOCK ARGS`), for its error filter
    /// and info plugin, which we do not have.
    fn c_nbdkit(args: &[&str]) -> Remote {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("c.sock");
        let pid = dir.path().join("c.pid");
        let mut full: Vec<String> = vec!["-f".into(), "-U".into(), sock.display().to_string()];
        full.extend(["-P".into(), pid.display().to_string()]);
        full.extend(args.iter().map(|s| s.to_string()));
        Remote::spawn("/usr/bin/nbdkit", &full, sock, &pid, Some(dir))
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(c.id(), libc::SIGTERM);
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() {
                if start.elapsed() > TIMEOUT {
                    kill_group(c.id(), libc::SIGKILL);
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Make the child see `fd` as descriptor 3 (without close-on-exec).
fn pass_as_fd3(cmd: &mut std::process::Command, fd: i32) {
    // SAFETY: runs in the child between fork and exec and only calls
    // dup2(2) and fcntl(2), which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let r = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn socket_param(s: &Server) -> String {
    format!("socket={}", s.sock.display())
}

/// `nbdinfo --json` of an export without its URI (which names the server).
fn info_without_uri(uri: &str) -> String {
    let out = nbdinfo(&["--json", uri]);
    // "content" is what file(1) makes of the first sector, and nbdinfo
    // 1.14 prints garbage there when file(1) is missing: compare the rest.
    jq(
        ".exports[0] | del(.uri) | del(.\"export-name\") | del(.content)",
        &out,
    )
}

fn map(uri: &str) -> String {
    nbdinfo(&["--map", uri])
}

/// Run `nbdkit ARGS` that must fail at startup; return its stderr.
#[track_caller]
fn startup_error(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock").display().to_string();
    let mut full = vec!["-f", "-U", &sock];
    full.extend_from_slice(args);
    let o = run(&full);
    assert_no_panic(&o);
    let err = stderr_str(&o);
    assert_eq!(o.status.code(), Some(1), "{args:?} must exit 1: {err}");
    assert!(err.contains("error"), "{args:?}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
    err
}

#[test]
fn nbd_is_built_in_and_dumps_libnbd_facts() {
    let out = run_ok(&["--dump-plugin", "nbd"]);
    let path = binary().display().to_string();
    assert!(out.contains(&format!("path={path}\n")), "{out}");
    for line in [
        "name=nbd\n",
        "thread_model=parallel\n",
        "magic_config_key=uri\n",
        "libnbd_tls=1\n",
        "libnbd_uri=1\n",
        "has_extents=1\n",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    assert!(out.contains("libnbd_version=1."), "{out}");
    let help = run_ok(&["nbd", "--help"]);
    assert!(help.contains("socket-fd=<FD>"), "{help}");
}

#[test]
fn proxy_to_our_server_over_unix_shows_the_same_export_and_data() {
    let back = Server::start(&["memory", "8M"]);
    let proxy = Server::start(&["nbd", &socket_param(&back)]);
    assert_eq!(
        info_without_uri(&proxy.uri()),
        info_without_uri(&back.uri())
    );

    nbdsh(
        &proxy.uri(),
        "h.pwrite(b'proxy' * 1000, 65536, nbd.CMD_FLAG_FUA); h.flush()",
    );
    let direct = nbdsh(
        &back.uri(),
        "print(h.pread(5000, 65536) == b'proxy' * 1000)",
    );
    assert_eq!(direct.trim(), "True");
    // Zero (with and without holes), trim and cache reach the remote.
    let out = nbdsh(
        &proxy.uri(),
        "h.zero(4096, 65536, nbd.CMD_FLAG_NO_HOLE)\n\
         h.zero(4096, 69632)\n\
         h.trim(8192, 1048576)\n\
         h.cache(4096, 0)\n\
         print(h.pread(8192, 65536) == bytes(8192))",
    );
    assert_eq!(out.trim(), "True");
}

#[test]
fn proxy_over_tcp_by_hostname_port_and_uri() {
    let back = Server::start_tcp(&["memory", "1M"]);
    let port = back.port.unwrap().to_string();
    // The proxy itself on TCP too.
    let by_host = Server::start_tcp(&["nbd", "hostname=127.0.0.1", &format!("port={port}")]);
    let by_uri = Server::start(&["nbd", &format!("nbd://127.0.0.1:{port}")]);
    nbdsh(&by_host.uri(), "h.pwrite(b'tcp!' * 128, 4096)");
    let out = nbdsh(&by_uri.uri(), "print(h.pread(512, 4096) == b'tcp!' * 128)");
    assert_eq!(out.trim(), "True");
    assert!(nbdinfo(&[by_uri.uri()]).contains("export-size: 1048576"));
}

#[test]
fn extents_pass_through_whole_and_req_one() {
    let back = Server::start(&["memory", "8M"]);
    nbdsh(
        &back.uri(),
        "h.pwrite(b'x' * 65536, 1 << 20); h.pwrite(b'y' * 4096, 5 << 20)",
    );
    let proxy = Server::start(&["nbd", &socket_param(&back)]);
    let m = map(&proxy.uri());
    assert_eq!(m, map(&back.uri()));
    assert!(m.contains("1048576       65536    0  data"), "{m}");
    let script = "\
import nbd, sys
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(sys.argv[1])
seen = []
def cb(ctx, off, entries, err):
    seen.append((off, list(entries)))
h.block_status(8 << 20, 0, cb, nbd.CMD_FLAG_REQ_ONE)
print(len(seen[0][1]) // 2, seen[0][1][0], seen[0][1][1])
";
    let o = client_ok("/usr/bin/python3", &["-c", script, &proxy.uri()]);
    assert_eq!(stdout_str(&o).trim(), "1 1048576 3");
}

#[test]
fn qemu_nbd_qcow2_by_socket_and_by_command() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.qcow2").display().to_string();
    qemu_img(&["create", "-q", "-f", "qcow2", &img, "4M"]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 0xab 1M 64k", &img]);

    {
        let q = Remote::qemu_nbd(&["-f", "qcow2", &img]);
        let proxy = Server::start(&["nbd", &q.socket_param()]);
        assert_eq!(info_without_uri(&proxy.uri()), info_without_uri(&q.uri()));
        assert_eq!(map(&proxy.uri()), map(&q.uri()));
        let out = nbdsh(
            &proxy.uri(),
            "print(h.pread(4096, 1 << 20) == b'\\xab' * 4096)",
        );
        assert_eq!(out.trim(), "True");
    }

    // command= runs qemu-nbd itself (socket activation), with arg= each.
    let mut proxy = Server::start(&[
        "nbd",
        "command=qemu-nbd",
        "arg=-f",
        "arg=qcow2",
        &format!("arg={img}"),
    ]);
    let m = map(&proxy.uri());
    assert!(m.contains("1048576       65536    0  data"), "{m}");
    nbdsh(
        &proxy.uri(),
        "h.pwrite(b'\\xcd' * 4096, 3 << 20); h.flush()",
    );
    // A second client shares the same qemu-nbd.
    let out = nbdsh(
        &proxy.uri(),
        "print(h.pread(4096, 3 << 20) == b'\\xcd' * 4096)",
    );
    assert_eq!(out.trim(), "True");
    proxy.stop_ok();
    // qemu-nbd has gone with nbdkit: the image is no longer locked.
    let out = qemu_io(&["-f", "qcow2", "-c", "read -P 0xcd 3M 4k", &img]);
    assert!(out.contains("read 4096/4096"), "{out}");
}

#[test]
fn filters_give_a_read_only_qemu_nbd_what_it_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let raw = write_file(dir.path(), "disk.raw", &vec![0x5a; 1 << 20]);
    let raw = raw.display().to_string();
    let q = Remote::qemu_nbd(&["-r", "-f", "raw", &raw]);

    let plain = Server::start(&["nbd", &q.socket_param()]);
    assert!(nbdinfo(&[plain.uri()]).contains("is_read_only: true"));
    let o = python_any(&plain.uri(), "h.pwrite(b'w' * 512, 0)", &[]);
    assert!(!o.status.success(), "a read-only remote refuses writes");

    let cow = Server::start(&["--filter=cow", "nbd", &q.socket_param()]);
    let out = nbdsh(
        &cow.uri(),
        "h.pwrite(b'w' * 512, 0)\nprint(h.pread(1024, 0) == b'w' * 512 + b'\\x5a' * 512)",
    );
    assert_eq!(out.trim(), "True");
    assert_eq!(std::fs::read(&raw).unwrap(), vec![0x5a; 1 << 20]);

    // And the other way: a writable remote made read-only by -r.
    let back = Server::start(&["memory", "1M"]);
    let ro = Server::start(&["-r", "nbd", &socket_param(&back)]);
    assert!(nbdinfo(&[ro.uri()]).contains("is_read_only: true"));
    let ro2 = Server::start(&["--filter=readonly", "nbd", &socket_param(&back)]);
    assert!(nbdinfo(&[ro2.uri()]).contains("is_read_only: true"));
}

#[test]
fn tls_to_a_remote_that_requires_it() {
    let pki = Pki::new();
    // X.509 over a Unix socket.
    let back = pki.x509_server(&["memory", "1M"]);
    let certs = format!("tls-certificates={}", pki.path("client"));
    let proxy = Server::start(&["nbd", &socket_param(&back), "tls=require", &certs]);
    let info = nbdinfo(&[proxy.uri()]);
    assert!(info.contains("export-size: 1048576"), "{info}");
    nbdsh(&proxy.uri(), "h.pwrite(b'secret' * 10, 0)");

    // Without TLS the remote refuses the proxy: the client gets an error,
    // the proxy says why and carries on.
    let mut plain = Server::start(&["nbd", &socket_param(&back)]);
    let o = client_any("/usr/bin/nbdinfo", &[plain.uri()]);
    assert!(!o.status.success());
    assert!(plain.is_running());
    assert!(
        plain
            .stderr()
            .contains("cannot connect to the remote server"),
        "{}",
        plain.stderr()
    );

    // PSK (tls= defaults to on once a TLS option is given).
    let back = pki.psk_server(&["memory", "1M"]);
    let psk = format!("tls-psk={}", pki.path("keys.psk"));
    let proxy = Server::start(&["nbd", &socket_param(&back), &psk, "tls-username=alice"]);
    assert!(nbdinfo(&[proxy.uri()]).contains("export-size: 1048576"));
    let wrong = format!("tls-psk={}", pki.path("wrong.psk"));
    let bad = Server::start(&["nbd", &socket_param(&back), &wrong, "tls-username=alice"]);
    assert!(!client_any("/usr/bin/nbdinfo", &[bad.uri()])
        .status
        .success());

    // X.509 over TCP, by host name, with an nbds:// URI as well.
    let back = Server::start_tcp(&[
        "--tls=require",
        &format!("--tls-certificates={}", pki.path("pki")),
        "memory",
        "2M",
    ]);
    let port = back.port.unwrap();
    let by_host = Server::start(&[
        "nbd",
        "hostname=localhost",
        &format!("port={port}"),
        "tls=require",
        &certs,
    ]);
    assert!(nbdinfo(&[by_host.uri()]).contains("export-size: 2097152"));
    let by_uri = Server::start(&[
        "nbd",
        &format!(
            "nbds://localhost:{port}/?tls-certificates={}",
            pki.path("client")
        ),
    ]);
    assert!(nbdinfo(&[by_uri.uri()]).contains("export-size: 2097152"));
}

/// A Python script holding two connections at once to `argv[1]`.
const TWO_CLIENTS: &str = "\
import nbd, sys
a = nbd.NBD(); a.connect_uri(sys.argv[1])
try:
    b = nbd.NBD(); b.connect_uri(sys.argv[1])
    a.pwrite(b'A' * 512, 0)
    print(b.pread(512, 0) == b'A' * 512)
except nbd.Error as e:
    print('second client refused')
";

#[test]
fn shared_serves_every_client_over_one_remote_connection() {
    // The remote admits one connection at a time.
    let back = Server::start(&["--filter=limit", "memory", "1M", "limit=1"]);
    let shared = Server::start(&["nbd", &socket_param(&back), "shared=true"]);
    let o = client_ok("/usr/bin/python3", &["-c", TWO_CLIENTS, &shared.uri()]);
    assert_eq!(stdout_str(&o).trim(), "True");
    drop(shared);

    let back = Server::start(&["--filter=limit", "memory", "1M", "limit=1"]);
    let own = Server::start(&["nbd", &socket_param(&back)]);
    let o = client_ok("/usr/bin/python3", &["-c", TWO_CLIENTS, &own.uri()]);
    assert_eq!(stdout_str(&o).trim(), "second client refused");
}

#[test]
fn retry_waits_for_a_remote_that_starts_late() {
    let back_dir = tempfile::tempdir().unwrap();
    let sock = back_dir.path().join("sock");
    let late = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        Server::start_in(back_dir, &["memory", "3M"])
    });
    // shared=true connects at startup, so startup waits for the retries.
    let proxy = Server::start(&[
        "nbd",
        &format!("socket={}", sock.display()),
        "shared=true",
        "retry=20",
    ]);
    let back = late.join().unwrap();
    assert!(nbdinfo(&[proxy.uri()]).contains("export-size: 3145728"));
    drop(back);

    // Without retries a missing remote is a startup error (shared) ...
    let err = startup_error(&["nbd", "socket=/nonexistent/nbd.sock", "shared=true"]);
    assert!(err.contains("cannot connect to the remote server"), "{err}");
    // ... or a failed client connection (not shared), the server living on.
    let mut s = Server::start(&["nbd", "socket=/nonexistent/nbd.sock"]);
    assert!(!client_any("/usr/bin/nbdinfo", &[s.uri()]).status.success());
    assert!(s.is_running());
    s.stop_ok();
}

#[test]
fn socket_fd_uses_an_inherited_connection() {
    let back = Server::start(&["memory", "1M"]);
    nbdsh(&back.uri(), "h.pwrite(b'fd' * 256, 0)");
    let stream = std::os::unix::net::UnixStream::connect(&back.sock).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let dir = tempfile::tempdir().unwrap();
    let proxy = Server::start_with(dir, &["nbd", "socket-fd=3"], move |cmd| {
        pass_as_fd3(cmd, fd)
    });
    drop(stream);
    // Two clients in turn, both over the one inherited connection.
    for _ in 0..2 {
        let out = nbdsh(&proxy.uri(), "print(h.pread(512, 0) == b'fd' * 256)");
        assert_eq!(out.trim(), "True");
    }
}

#[test]
fn remote_errors_reach_the_client_with_their_errno() {
    let c = Remote::c_nbdkit(&[
        "--filter=error",
        "memory",
        "1M",
        "error-pwrite=ENOSPC",
        "error-pwrite-rate=1",
        "error-pread=EIO",
        "error-pread-rate=1",
        "error-trim=EPERM",
        "error-trim-rate=1",
        "error-zero=EINVAL",
        "error-zero-rate=1",
    ]);
    let proxy = Server::start(&["nbd", &c.socket_param()]);
    let script = "\
import errno
for name, op in [('pwrite', lambda: h.pwrite(b'x' * 512, 0)),
                 ('pread', lambda: h.pread(512, 0)),
                 ('trim', lambda: h.trim(512, 0)),
                 ('zero', lambda: h.zero(512, 0))]:
    try:
        op()
        print(name, 'ok')
    except nbd.Error as e:
        print(name, e.errno)
";
    let out = python(&proxy.uri(), script, &[]);
    assert_eq!(out, "pwrite ENOSPC\npread EIO\ntrim EPERM\nzero EINVAL\n");
    // The proxy logged each, and is fine.
    let log = proxy.stderr();
    assert!(
        log.contains("remote server: No space left on device"),
        "{log}"
    );
}

#[test]
fn dynamic_export_passes_the_client_export_name() {
    let c = Remote::c_nbdkit(&[
        "--filter=exportname",
        "info",
        "mode=exportname",
        "exportname=alpha",
        "exportname=beta",
        "exportname-list=explicit",
    ]);
    let dynamic = Server::start(&["nbd", &c.socket_param(), "dynamic-export=true"]);
    let sock = dynamic.sock.display().to_string();
    for name in ["alpha", "gamma"] {
        let uri = format!("nbd+unix:///{name}?socket={sock}");
        let out = nbdsh(&uri, &format!("print(h.pread({}, 0))", name.len()));
        assert_eq!(out.trim(), format!("bytearray(b'{name}')"));
    }
    let list = nbdinfo(&["--list", "--json", &dynamic.uri()]);
    let names = jq("[.exports[].\"export-name\"] | join(\",\")", &list);
    assert_eq!(names.trim(), "\"alpha,beta\"", "{list}");

    // Through a URI the client's name replaces the URI's.
    let via_uri = Server::start(&["nbd", &c.uri(), "dynamic-export=true"]);
    let uri = format!("nbd+unix:///beta?socket={}", via_uri.sock.display());
    assert_eq!(
        nbdsh(&uri, "print(h.pread(4, 0))").trim(),
        "bytearray(b'beta')"
    );

    // Without it, export= is used whatever the client asks for.
    let fixed = Server::start(&["nbd", &c.socket_param(), "export=beta"]);
    let uri = format!("nbd+unix:///alpha?socket={}", fixed.sock.display());
    assert_eq!(
        nbdsh(&uri, "print(h.pread(4, 0))").trim(),
        "bytearray(b'beta')"
    );
}

/// Run `requests` against `uri`, printing the completion order.
fn completion_order(uri: &str, requests: &str) -> String {
    let script = format!(
        "order = []\n\
         def done(name):\n    def cb(err):\n        order.append(name)\n        return 0\n    return cb\n\
         {requests}\n\
         while h.aio_in_flight() > 0:\n    h.poll(-1)\n\
         print(' '.join(order))\n"
    );
    python(uri, &script, &[]).trim().to_string()
}

#[test]
fn parallel_requests_overlap_on_the_remote_connection() {
    // A slow write (3 s) then a quicker read (1 s): the read finishes
    // first only if both are in flight at the remote at once.
    let back = Server::start(&["--filter=delay", "memory", "1M", "wdelay=3", "rdelay=1"]);
    let requests = "h.aio_pwrite(b'x' * 512, 512, completion=done('write'))\n\
                    h.aio_pread(nbd.Buffer(512), 0, completion=done('read'))";
    for extra in [None, Some("shared=true")] {
        let mut args = vec!["nbd".to_string(), socket_param(&back)];
        args.extend(extra.map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proxy = Server::start(&args);
        assert_eq!(
            completion_order(&proxy.uri(), requests),
            "read write",
            "{extra:?}"
        );
    }
}

#[test]
fn nbdcopy_round_trip_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(24 << 20, 17);
    let src = write_file(dir.path(), "src", &data);
    let back = Server::start(&["memory", "24M"]);
    let proxy = Server::start(&["nbd", &socket_param(&back)]);
    nbdcopy(&[src.display().to_string(), proxy.uri()]);
    let dst = dir.path().join("dst");
    nbdcopy(&[back.uri(), dst.display().to_string()]);
    assert!(std::fs::read(&dst).unwrap() == data, "copy differs");
    let dst2 = dir.path().join("dst2");
    nbdcopy(&[
        "--requests=32".to_string(),
        proxy.uri(),
        dst2.display().to_string(),
    ]);
    assert!(std::fs::read(&dst2).unwrap() == data, "copy back differs");
}

#[test]
fn a_remote_that_dies_fails_requests_and_the_proxy_lives() {
    let mut back = Server::start(&["memory", "1M"]);
    let mut proxy = Server::start(&["nbd", &socket_param(&back), "shared=true"]);
    nbdsh(&proxy.uri(), "h.pread(512, 0)");
    back.stop_ok();
    let o = python_any(&proxy.uri(), "h.pread(512, 0)", &[]);
    assert!(!o.status.success(), "reads after the remote died must fail");
    assert!(proxy.is_running());
    assert_no_panic_text(&proxy.stderr());
    proxy.stop_ok();
}

fn assert_no_panic_text(s: &str) {
    assert!(!s.contains("panicked"), "{s}");
}

#[test]
fn stopping_cuts_a_request_waiting_for_a_slow_remote() {
    let back = Server::start(&["--filter=delay", "memory", "1M", "rdelay=600"]);
    let mut proxy = Server::start(&["nbd", &socket_param(&back)]);
    let uri = proxy.uri();
    let reader = std::thread::spawn(move || python_any(&uri, "h.pread(512, 0)", &[]));
    std::thread::sleep(Duration::from_millis(500));
    // stop() gives it 30 s, far less than the remote's 600.
    proxy.stop_ok();
    assert!(!reader.join().unwrap().status.success());
}

#[test]
fn bad_parameters_are_startup_errors() {
    let dir = tempfile::tempdir().unwrap();
    let long = format!("socket=/{}", "x".repeat(120));
    let file = write_file(dir.path(), "plain", b"x").display().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["nbd"], "exactly one of"),
        (&["nbd", "socket=/s", "hostname=h"], "only one of"),
        (&["nbd", "socket=/s", "port=1"], "port can only"),
        (&["nbd", "socket=/s", "arg=x"], "arg can only"),
        (&["nbd", "http://example.com/"], "unknown scheme"),
        (&["nbd", "uri=localhost"], "not an NBD URI"),
        (&["nbd", "nbd+unix:///e"], "socket=PATH"),
        (
            &["nbd", "nbd://h/e", "export=x"],
            "put the export name in the URI",
        ),
        (&["nbd", "socket=/s", "retry=many"], "retry"),
        (&["nbd", "socket=/s", "shared=perhaps"], "shared"),
        (
            &["nbd", "socket=/s", "tls=sometimes"],
            "tls: expected off, on or require",
        ),
        (&["nbd", "socket=/s", "tls-verify=perhaps"], "tls-verify"),
        (
            &["nbd", "socket=/s", "tls-certificates=/nonexistent"],
            "not a directory",
        ),
        (&["nbd", "socket=/s", "tls-psk=/nonexistent.psk"], "tls-psk"),
        (&["nbd", "socket-fd=99"], "socket-fd: 99"),
        (&["nbd", "socket-fd=-1"], "socket-fd"),
        (&["nbd", "vsock=host"], "vsock"),
        (&["nbd", "command=qemu-nbd", "shared=false"], "shared=false"),
        (
            &["nbd", "socket=/s", "dynamic-export=1", "shared=1"],
            "shared connection",
        ),
        (
            &["nbd", "socket=/s", "dynamic-export=1", "export=a"],
            "explicit export",
        ),
        (
            &["nbd", "socket=/s", "nosuch=1"],
            "unknown parameter 'nosuch'",
        ),
        (&["nbd", "socket=/a", "socket=/b"], "more than once"),
        (&["nbd", &long], "too long"),
    ];
    for (args, want) in cases {
        let err = startup_error(args);
        assert!(err.contains(want), "{args:?}: want {want:?} in {err}");
    }
    // A descriptor that is open but not a socket.
    let f = std::fs::File::open(&file).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    let mut cmd = nbdkit();
    cmd.args([
        "-f",
        "-U",
        &dir.path().join("s").display().to_string(),
        "nbd",
        "socket-fd=3",
    ]);
    pass_as_fd3(&mut cmd, fd);
    let o = run_cmd(&mut cmd, TIMEOUT);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr_str(&o).contains("socket-fd: 3 is not a socket"),
        "{}",
        stderr_str(&o)
    );
}

/// libnbd (and GnuTLS, libxml2 and ICU behind it) is loaded by the nbd
/// plugin when it starts, not linked: a server of any other plugin never
/// maps it, and the nbd plugin still finds it (the rest of this file).
#[test]
fn libnbd_is_loaded_only_by_the_nbd_plugin() {
    let out = run_cmd(
        std::process::Command::new("readelf")
            .arg("-d")
            .arg(binary()),
        TIMEOUT,
    );
    let dynamic = stdout_str(&out);
    assert!(dynamic.contains("(NEEDED)"), "readelf -d: {dynamic}");
    assert!(!dynamic.contains("libnbd"), "linked: {dynamic}");
    let dir = tempfile::tempdir().unwrap();
    let pid = dir.path().join("pid");
    let maps = |plugin: &[&str]| {
        let mut args = vec!["-P", pid.to_str().unwrap()];
        args.extend_from_slice(plugin);
        captive(&args, &format!("cat /proc/$(cat '{}')/maps", pid.display()))
    };
    let served = maps(&["memory", "1M"]);
    assert!(served.contains("libc.so"), "maps: {served}");
    assert!(
        !served.contains("libnbd"),
        "memory plugin mapped libnbd:\n{served}"
    );
    let remote = Server::start(&["memory", "1M"]);
    let proxied = maps(&["nbd", &format!("socket={}", remote.sock.display())]);
    assert!(
        proxied.contains("libnbd.so"),
        "nbd plugin without libnbd:\n{proxied}"
    );
}

/// Where libnbd cannot be loaded (here: an empty file bound over it in a
/// private mount namespace, so this test needs root), the nbd plugin fails
/// to start with dlopen's reason and exit status 1, and other plugins serve
/// as before.
#[test]
fn without_libnbd_the_plugin_fails_to_start_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.so");
    std::fs::write(&empty, b"").unwrap();
    let o = run_cmd(
        std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(concat!(
                r#"lib=$(readlink -f /usr/lib/$(uname -m)-linux-gnu/libnbd.so.0) && "#,
                r#"mount --bind "$2" "$lib" || exit 99; "#,
                r#""$1" -U - memory 1M --run 'echo memory served' || exit 98; "#,
                r#"exec "$1" -U - nbd socket=/nonexistent --run 'echo proxy served'"#
            ))
            .arg("sh")
            .arg(binary())
            .arg(&empty),
        TIMEOUT,
    );
    let (out, err) = (stdout_str(&o), String::from_utf8_lossy(&o.stderr));
    assert_ne!(
        o.status.code(),
        Some(99),
        "could not hide libnbd (this test needs root: unshare --mount): {err}"
    );
    assert_eq!(out, "memory served\n", "stderr: {err}");
    assert_eq!(o.status.code(), Some(1), "stdout: {out} stderr: {err}");
    assert!(
        err.starts_with("nbdkit: error: ")
            && err.contains("libnbd.so.0")
            && err.lines().count() == 1,
        "stderr: {err}"
    );
}
