//! Filters driven by real clients: layering (order of calls through the
//! layers, data unchanged through a stack), and the lifecycle and access
//! filters exitlast, exitwhen, ip and limit.

use crate::cli::expect_error;
use crate::harness::*;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Output;

#[track_caller]
fn assert_exits_ok(s: &mut Server) {
    let st = s.wait_exit();
    assert!(st.success(), "exit status {st:?}\n{}", s.stderr());
}

#[track_caller]
fn assert_refused(o: &Output, what: &str) {
    assert!(
        !o.status.success(),
        "{what}: the client should have been refused\n{}",
        stdout_str(o)
    );
}

// ---------------------------------------------------------------- layering

#[test]
fn three_filter_stack_serves_data_unchanged() {
    let s = Server::start(&[
        "--filter=ip",
        "--filter=limit",
        "--filter=delay",
        "memory",
        "size=1M",
        "allow=anyunix",
        "deny=all",
        "limit=0",
        "rdelay=1ms",
    ]);
    let out = python(
        &s.uri(),
        "data = bytes((i * 7 + 3) % 256 for i in range(65536))\n\
         h.pwrite(data, 4096)\n\
         h.flush()\n\
         assert h.pread(65536, 4096) == data\n\
         assert h.pread(4096, 0) == bytes(4096)\n\
         assert h.get_size() == 1048576\n\
         print('same')\n",
        &[],
    );
    assert_eq!(out.trim(), "same");
    // And a second client sees the first one's writes through the stack.
    let out = python(&s.uri(), "print(h.pread(3, 4096).hex())", &[]);
    assert_eq!(out.trim(), "030a11");
}

/// Positions of the `LAYER: CALL` debug lines, in the order given.
#[track_caller]
fn order(log: &str, layers: &[&str], call: &str) -> Vec<usize> {
    layers
        .iter()
        .map(|l| {
            let needle = format!("debug: {l}: {call}");
            log.find(&needle)
                .unwrap_or_else(|| panic!("no {needle:?} in:\n{log}"))
        })
        .collect()
}

#[track_caller]
fn assert_increasing(v: &[usize], what: &str) {
    assert!(v.windows(2).all(|w| w[0] < w[1]), "{what}: order {v:?}");
}

#[test]
fn layer_order_in_debug_lines() {
    let mut s = Server::start(&[
        "-v",
        "--filter=limit",
        "--filter=ip",
        "--filter=exitlast",
        "memory",
        "size=1M",
        "limit=0",
    ]);
    nbdinfo(&["--size", &s.uri()]);
    assert_exits_ok(&mut s); // exitlast
    let log = s.stderr();
    let outer_in = ["limit", "ip", "exitlast", "memory"];
    let inner_out = ["memory", "exitlast", "ip", "limit"];
    for call in [
        "config key=size",
        "config_complete",
        "preconnect",
        "open readonly=0",
        "get_size",
        "can_write",
        "finalize",
        "close",
        "cleanup",
    ] {
        assert_increasing(&order(&log, &outer_in, call), call);
    }
    for call in ["get_ready", "after_fork", "prepare", "open succeeded"] {
        assert_increasing(&order(&log, &inner_out, call), call);
    }
    // limit=0 was claimed by the outermost layer and went no further.
    assert!(log.contains("limit: config key=limit, value=0"));
    assert!(!log.contains("ip: config key=limit"));
}

#[test]
fn version_help_and_dump_plugin_per_layer() {
    let v = run_ok(&["--filter=exitwhen", "--filter", "ip", "null", "--version"]);
    for l in ["exitwhen 1.", "ip 1.", "null 1."] {
        assert!(v.lines().any(|x| x.starts_with(l)), "{l} in {v}");
    }
    let h = run_ok(&["--filter=limit", "--filter=exitwhen", "null", "--help"]);
    assert!(h.contains("limit=N"), "{h}");
    assert!(h.contains("exit-when-file-created="), "{h}");
    let d = run_ok(&[
        "--filter=exitwhen",
        "--filter=ip",
        "--filter=limit",
        "--filter=exitlast",
        "null",
        "--dump-plugin",
    ]);
    for l in [
        "name=null",
        "exitwhen_name=exitwhen",
        "exitwhen_file_created=yes",
        "exitwhen_script=yes",
        "ip_name=ip",
        "limit_name=limit",
        "exitlast_name=exitlast",
    ] {
        assert!(d.lines().any(|x| x == l), "{l} in {d}");
    }
}

#[test]
fn bad_filter_parameters_are_startup_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["--filter=limit", "null", "limit=-1"], "limit"),
        (&["--filter=limit", "null", "limit=many"], "limit"),
        (&["--filter=ip", "null", "allow=nonsense"], "nonsense"),
        (&["--filter=ip", "null", "deny=10.0.0.0/33"], "prefix"),
        (&["--filter=ip", "null", "deny=uid:x"], "uid"),
        (
            &["--filter=ip", "null", "allow=anyunix,,anyipv4"],
            "empty entry",
        ),
        (
            &["--filter=exitwhen", "null", "exit-when-file-created="],
            "exit-when-file-created",
        ),
        (
            &["--filter=exitwhen", "null", "exit-when-pipe-closed=x"],
            "exit-when-pipe-closed",
        ),
        (
            &[
                "--filter=exitwhen",
                "null",
                "exit-when-process-exits=999999999",
            ],
            "exit-when-process-exits",
        ),
        (
            &["--filter=exitwhen", "null", "exit-when-poll=-5"],
            "exit-when-poll",
        ),
    ];
    for (args, word) in cases {
        let err = expect_error(args, true);
        assert!(err.contains(word), "{args:?}: {err}");
    }
}

// ---------------------------------------------------------------- exitlast

#[test]
fn exitlast_exits_after_the_last_client() {
    let mut s = Server::start(&["--filter=exitlast", "memory", "1M"]);
    // Not before the first connection.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(s.is_running(), "exited before any client:\n{}", s.stderr());
    assert_eq!(nbdinfo(&["--size", &s.uri()]).trim(), "1048576");
    assert_exits_ok(&mut s);
}

// ---------------------------------------------------------------- exitwhen

/// Run a foreground exitwhen server with `param` whose event has already
/// happened: it must exit 0 by itself (nbdkit's
/// test-exitwhen-file-already-created.sh, for every kind of event).
#[track_caller]
fn exits_at_once(param: &str, setup: impl FnOnce(&mut std::process::Command)) {
    let mut cmd = nbdkit();
    cmd.args(["-f", "-U", "-", "--filter=exitwhen", "null", param]);
    setup(&mut cmd);
    let o = run_cmd(&mut cmd, TIMEOUT);
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(0), "{param}: {}", stderr_str(&o));
}

/// Let the child inherit `fd` (clear its close-on-exec flag after fork).
fn inherit_fd(cmd: &mut std::process::Command, fd: i32) {
    // SAFETY: runs in the child between fork and exec and only calls
    // fcntl(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn exitwhen_event_already_happened_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(dir.path(), "stop", b"");
    exits_at_once(&format!("exit-when-file-created={}", f.display()), |_| {});
    let gone = dir.path().join("never-created");
    exits_at_once(
        &format!("exit-when-file-deleted={}", gone.display()),
        |_| {},
    );
    exits_at_once("exit-when-script=exit 88", |_| {});
    // A pipe whose write end is already closed.
    let (r, w): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe2");
    drop(w);
    let fd = r.as_raw_fd();
    exits_at_once(&format!("exit-when-pipe-closed={fd}"), |cmd| {
        inherit_fd(cmd, fd)
    });
}

/// `exit-when-script`: only status 88 is the event.  Any other non-zero
/// status is logged as an error and the server goes on serving.
#[test]
fn exitwhen_script_failure_is_not_the_event() {
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let script = format!("echo x >> {}; exit 3", ran.display());
    let mut s = Server::start(&[
        "--filter=exitwhen",
        "memory",
        "1M",
        &format!("exit-when-script={script}"),
        "exit-when-poll=1",
    ]);
    // Wait until the idle poll has run the script a few times.
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&ran)
        .map(|t| t.lines().count())
        .unwrap_or(0)
        < 3
    {
        assert!(s.is_running(), "exited:\n{}", s.stderr());
        assert!(start.elapsed() < TIMEOUT, "script not run:\n{}", s.stderr());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        s.is_running(),
        "exit 3 was taken as the event\n{}",
        s.stderr()
    );
    assert_eq!(nbdinfo(&["--size", &s.uri()]).trim(), "1048576");
    assert!(
        s.stderr().contains("command failed with exit code 3"),
        "{}",
        s.stderr()
    );
    s.stop_ok();
}

/// A backgrounded server (forked before any thread existed) still runs
/// exitwhen's polling thread, and exits by itself on the event.
#[test]
fn exitwhen_in_a_background_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    let pidfile = dir.path().join("pid");
    let f = dir.path().join("stop");
    let o = run(&[
        "-U",
        sock.to_str().unwrap(),
        "-P",
        pidfile.to_str().unwrap(),
        "--filter=exitwhen",
        "memory",
        "1M",
        &format!("exit-when-file-created={}", f.display()),
        "exit-when-poll=1",
    ]);
    assert_success(&o, "nbdkit in the background");
    let pid = read_pid(&pidfile);
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    assert_eq!(nbdinfo(&["--size", &uri]).trim(), "1048576");
    assert!(alive(pid), "daemon {pid} exited before the event");
    std::fs::write(&f, b"").unwrap();
    let start = std::time::Instant::now();
    while alive(pid) {
        if start.elapsed() > TIMEOUT {
            terminate(pid);
            panic!("daemon {pid} did not exit on the event");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Serve with exitwhen watching `event` (polling every second while idle),
/// check that a client is served and the server stays up, `cause` the
/// event, and expect a clean exit.
fn exitwhen_idle_event(event: &str, cause: impl FnOnce()) {
    let mut s = Server::start(&[
        "--filter=exitwhen",
        "memory",
        "1M",
        event,
        "exit-when-poll=1",
    ]);
    nbdinfo(&["--size", &s.uri()]);
    assert!(s.is_running(), "{event}: exited early\n{}", s.stderr());
    cause();
    assert_exits_ok(&mut s);
}

#[test]
fn exitwhen_file_created_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("stop");
    exitwhen_idle_event(&format!("exit-when-file-created={}", f.display()), || {
        std::fs::write(&f, b"").unwrap()
    });
}

#[test]
fn exitwhen_file_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(dir.path(), "keep", b"");
    exitwhen_idle_event(&format!("exit-when-file-deleted={}", f.display()), || {
        std::fs::remove_file(&f).unwrap()
    });
}

#[test]
fn exitwhen_process_exits() {
    let mut sleeper = std::process::Command::new("/bin/sleep")
        .arg("3600")
        .spawn()
        .unwrap();
    exitwhen_idle_event(&format!("exit-when-process-exits={}", sleeper.id()), || {
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
    });
}

#[test]
fn exitwhen_script() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("flag");
    let script = format!("test -e {} && exit 88; exit 0", f.display());
    exitwhen_idle_event(&format!("exit-when-script={script}"), || {
        std::fs::write(&f, b"").unwrap()
    });
}

/// The event happens while a client is connected: that client keeps
/// working, a new client is refused, and the server exits once the first
/// client leaves.
#[test]
fn exitwhen_during_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("stop");
    let mut s = Server::start(&[
        "--filter=exitwhen",
        "memory",
        "1M",
        &format!("exit-when-file-created={}", f.display()),
        "exit-when-poll=1",
    ]);
    let out = python(
        &s.uri(),
        "h.pwrite(b'x' * 512, 0)\n\
         open(sys.argv[2], 'w').close()\n\
         h2 = nbd.NBD()\n\
         try:\n\
         \x20   h2.connect_uri(sys.argv[1])\n\
         \x20   print('second connection admitted')\n\
         except nbd.Error:\n\
         \x20   print('refused')\n\
         # The open connection still works after the event and the refusal.\n\
         h.pwrite(b'y' * 512, 512)\n\
         assert h.pread(1024, 0) == b'x' * 512 + b'y' * 512\n\
         h.flush()\n\
         print('still working')\n\
         h.shutdown()\n",
        &[&f.display().to_string()],
    );
    assert_eq!(out, "refused\nstill working\n");
    assert_exits_ok(&mut s);
    assert!(
        s.stderr().contains("rejecting new connection"),
        "{}",
        s.stderr()
    );
}

/// `exit-when-pipe-closed=FD`: we hold the write end; the server inherits
/// the read end.  Closing our copy of the read end changes nothing;
/// closing the write end makes the server exit.
#[test]
fn exitwhen_pipe_closed() {
    let (r, w): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe2");
    let fd = r.as_raw_fd();
    let dir = tempfile::tempdir().unwrap();
    let param = format!("exit-when-pipe-closed={fd}");
    let mut s = Server::start_with(
        dir,
        &[
            "--filter=exitwhen",
            "null",
            "1M",
            &param,
            "exit-when-poll=1",
        ],
        |cmd| inherit_fd(cmd, fd),
    );
    drop(r);
    nbdinfo(&["--size", &s.uri()]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(s.is_running(), "exited too early:\n{}", s.stderr());
    nbdinfo(&["--size", &s.uri()]);
    drop(w);
    assert_exits_ok(&mut s);
}

// ---------------------------------------------------------------- ip

/// Run `nbdinfo --size` against the server; did it get in?
fn admitted(uri: &str) -> bool {
    client_any("/usr/bin/nbdinfo", &["--size", uri])
        .status
        .success()
}

#[test]
fn ip_unix_rules() {
    let uid = nix::unistd::getuid().as_raw().to_string();
    let gid = nix::unistd::getgid().as_raw().to_string();
    let me = std::process::id().to_string(); // not the client's pid
    let cases: &[(&[String], bool)] = &[
        (&["allow=anyunix".into(), "deny=all".into()], true),
        (&["deny=anyunix".into()], false),
        (&["deny=allunix".into(), "allow=allipv4".into()], false),
        (&[format!("allow=uid:{uid}"), "deny=all".into()], true),
        (&[format!("deny=uid:{uid}")], false),
        (&[format!("allow=gid:{gid}"), "deny=all".into()], true),
        (&[format!("deny=gid:{gid}")], false),
        (&[format!("allow=pid:{me}"), "deny=all".into()], false),
        (&[format!("deny=pid:{me}")], true),
        (&["allow=anyipv4,anyipv6".into(), "deny=all".into()], false),
        (&["allow=10.0.0.1".into()], true),
    ];
    for (params, want) in cases {
        let mut args = vec!["--filter=ip", "null", "1M"];
        args.extend(params.iter().map(String::as_str));
        let mut s = Server::start(&args);
        assert_eq!(admitted(&s.uri()), *want, "{params:?}\n{}", s.stderr());
        assert!(s.is_running(), "{params:?}: server died");
        if !want {
            assert!(
                s.stderr().contains("not permitted"),
                "{params:?}: {}",
                s.stderr()
            );
        }
    }
}

/// A refused client sees its connection closed before any NBD byte.
#[test]
fn ip_refuses_before_the_handshake() {
    let script = "import socket, sys\n\
                  s = socket.socket(socket.AF_UNIX)\n\
                  s.connect(sys.argv[1])\n\
                  print(repr(s.recv(8)))\n";
    for (rule, greeting) in [
        ("deny=all", "b''"),
        // With a dn: rule checking waits for open, after the greeting.
        ("allow=dn:123", "b'NBDMAGIC'"),
    ] {
        let s = Server::start(&["--filter=ip", "null", rule, "deny=anyunix"]);
        let sock = s.sock.display().to_string();
        let o = client_ok("/usr/bin/python3", &["-c", script, &sock]);
        assert_eq!(stdout_str(&o).trim(), greeting, "{rule}");
        // Late filtering still refuses the export and the export list.
        assert!(!admitted(&s.uri()), "{rule}");
        let list = client_any("/usr/bin/nbdinfo", &["--list", &s.uri()]);
        assert_refused(&list, rule);
    }
}

#[test]
fn ip_tcp_ipv4_and_ipv6() {
    let script = "nbdinfo --size nbd://127.0.0.1:$port >/dev/null 2>&1; echo v4=$?; \
                  nbdinfo --size \"nbd://[::1]:$port\" >/dev/null 2>&1; echo v6=$?";
    let cases = [
        ("allow=allipv4,allipv6", "deny=all", "v4=0\nv6=0\n"),
        ("allow=127.0.0.1", "deny=all", "v4=0\nv6=1\n"),
        ("allow=::1", "deny=all", "v4=1\nv6=0\n"),
        ("allow=127.0.0.0/8", "deny=all", "v4=0\nv6=1\n"),
        ("allow=::/120", "deny=all", "v4=1\nv6=0\n"),
        ("allow=10.0.0.0/8,fe80::/10", "deny=all", "v4=1\nv6=1\n"),
        ("allow=anyunix", "deny=127.0.0.0/24", "v4=1\nv6=0\n"),
        ("allow=anyunix", "deny=anyipv6", "v4=0\nv6=1\n"),
        ("allow=anyunix", "deny=::1/128", "v4=0\nv6=1\n"),
    ];
    for (allow, deny, want) in cases {
        let out = captive(
            &["-p", "0", "--filter=ip", "null", "1M", allow, deny],
            script,
        );
        assert_eq!(out, want, "{allow} {deny}");
    }
}

// ---------------------------------------------------------------- limit

#[test]
fn limit_two_clients() {
    let s = Server::start(&["--filter=limit", "memory", "1M", "limit=2"]);
    let out = python(
        &s.uri(),
        "import time\n\
         h2 = nbd.NBD()\n\
         h2.connect_uri(sys.argv[1])\n\
         h3 = nbd.NBD()\n\
         try:\n\
         \x20   h3.connect_uri(sys.argv[1])\n\
         \x20   print('third admitted')\n\
         except nbd.Error:\n\
         \x20   print('third refused')\n\
         h.pwrite(b'a' * 512, 0)\n\
         assert h2.pread(512, 0) == b'a' * 512\n\
         h.shutdown()\n\
         del h\n\
         # The slot frees once the server has closed the first connection.\n\
         deadline = time.time() + 30\n\
         while True:\n\
         \x20   h4 = nbd.NBD()\n\
         \x20   try:\n\
         \x20       h4.connect_uri(sys.argv[1])\n\
         \x20       break\n\
         \x20   except nbd.Error:\n\
         \x20       if time.time() > deadline: raise\n\
         \x20       time.sleep(0.1)\n\
         assert h4.pread(512, 0) == b'a' * 512\n\
         print('fourth admitted')\n",
        &[],
    );
    assert_eq!(out, "third refused\nfourth admitted\n");
    assert!(s.stderr().contains("too many clients"), "{}", s.stderr());
}

#[test]
fn limit_default_is_one() {
    let s = Server::start(&["--filter=limit", "memory", "1M"]);
    let out = python(
        &s.uri(),
        "h2 = nbd.NBD()\n\
         try:\n\
         \x20   h2.connect_uri(sys.argv[1])\n\
         \x20   print('admitted')\n\
         except nbd.Error:\n\
         \x20   print('refused')\n",
        &[],
    );
    assert_eq!(out, "refused\n");
}

/// retry-request passes data through unchanged (its retries over a failing
/// plugin are tested beside the filter), and its bad parameters stop
/// nbdkit at startup.
#[test]
fn retry_request_serves_data_and_refuses_bad_parameters() {
    let out = captive(
        &[
            "--filter=retry-request",
            "memory",
            "1M",
            "retry-request-retries=3",
            "retry-request-delay=100ms",
            "retry-request-open=false",
        ],
        "nbdsh -u \"$uri\" -c 'h.pwrite(b\"hello\", 4096); print(h.pread(5, 4096).decode())'",
    );
    assert_eq!(out.trim(), "hello");
    for bad in [
        "retry-request-retries=-1",
        "retry-request-retries=lots",
        "retry-request-delay=soon",
        "retry-request-delay=0",
        "retry-request-open=perhaps",
    ] {
        let err = crate::cli::expect_error(&["--filter=retry-request", "memory", "1M", bad], true);
        let key = bad.split('=').next().unwrap();
        assert!(err.contains(key), "{bad}: {err}");
    }
}
