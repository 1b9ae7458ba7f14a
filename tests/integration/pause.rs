//! The `pause` filter driven through its control socket: requests block
//! while paused and complete on resume; a pause is only acknowledged once
//! the requests in flight have finished.

use crate::cli::expect_error;
use crate::harness::*;
use std::process::Command;
use std::time::Duration;

/// Send `input` to the control socket with socat; what came back.
fn control(sock: &std::path::Path, input: &str) -> String {
    let script = format!(
        "printf '{input}' | socat -t 3 - UNIX-CONNECT:{}",
        sock.display()
    );
    let o = run_cmd(
        Command::new("/bin/sh").args(["-c", &script]),
        Duration::from_secs(30),
    );
    assert!(o.status.success(), "socat: {}", stderr_str(&o));
    stdout_str(&o)
}

#[test]
fn requests_block_while_paused_and_complete_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let arg = format!("pause-control={}", ctl.display());
    let s = Server::start(&["--filter=pause", "memory", "1M", &arg]);
    // Answers: P, R, and X for an unknown command; whitespace is ignored.
    assert_eq!(control(&ctl, "p r\\nq"), "PRX");
    // Paused from one control client, resumed from another, while a
    // client's request waits.
    let out = python(
        &s.uri(),
        "import socket, time\n\
         c = socket.socket(socket.AF_UNIX); c.connect(sys.argv[2])\n\
         c.sendall(b'p'); assert c.recv(1) == b'P'\n\
         cookie = h.aio_pwrite(b'w' * 512, 0)\n\
         deadline = time.monotonic() + 1.0\n\
         while time.monotonic() < deadline:\n\
         \x20   h.poll(100)\n\
         print('blocked' if not h.aio_command_completed(cookie) else 'ran while paused')\n\
         c.sendall(b'r'); assert c.recv(1) == b'R'\n\
         while not h.aio_command_completed(cookie):\n\
         \x20   h.poll(1000)\n\
         print(bytes(h.pread(4, 0)))\n",
        &[ctl.to_str().unwrap()],
    );
    assert_eq!(out.lines().collect::<Vec<_>>(), ["blocked", "b'wwww'"]);
}

#[test]
fn pause_is_acknowledged_after_requests_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let arg = format!("pause-control={}", ctl.display());
    // Reads take a second below the pause filter.
    let s = Server::start(&[
        "--filter=pause",
        "--filter=delay",
        "memory",
        "1M",
        "rdelay=1",
        &arg,
    ]);
    let out = python(
        &s.uri(),
        "import socket, time\n\
         cookie = h.aio_pread(nbd.Buffer(512), 0)\n\
         time.sleep(0.2)\n\
         c = socket.socket(socket.AF_UNIX); c.connect(sys.argv[2])\n\
         t = time.monotonic(); c.sendall(b'p'); assert c.recv(1) == b'P'\n\
         waited = time.monotonic() - t\n\
         # The reply is on its way or here: the read finished below.\n\
         while not h.aio_command_completed(cookie):\n\
         \x20   h.poll(1000)\n\
         print('drained' if waited > 0.4 else 'acknowledged early: %f' % waited)\n\
         c.sendall(b'r'); assert c.recv(1) == b'R'\n",
        &[ctl.to_str().unwrap()],
    );
    assert_eq!(out.trim(), "drained");
}

#[test]
fn a_paused_server_still_stops_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let arg = format!("pause-control={}", ctl.display());
    let mut s = Server::start(&["--filter=pause", "memory", "1M", &arg]);
    assert_eq!(control(&ctl, "p"), "P");
    let mut client = client("/usr/bin/nbdsh");
    client.args(["-u", &s.uri(), "-c", "h.pread(1, 0)"]);
    let child = client.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.stop_ok();
    let o = wait_output(child, Duration::from_secs(30), "nbdsh");
    assert!(!o.status.success(), "the paused read cannot have succeeded");
    assert!(!ctl.exists(), "the control socket is removed at exit");
}

#[test]
fn pause_bad_configuration_is_a_startup_error() {
    let err = expect_error(&["--filter=pause", "memory", "1M"], true);
    assert!(err.contains("pause-control socket was not set"), "{err}");
    let long = format!("pause-control=/tmp/{}", "x".repeat(120));
    let err = expect_error(&["--filter=pause", "memory", "1M", &long], true);
    assert!(err.contains("pause-control socket path too long"), "{err}");
    let err = expect_error(
        &[
            "--filter=pause",
            "memory",
            "1M",
            "pause-control=/nonexistent/dir/ctl",
        ],
        true,
    );
    assert!(err.contains("/nonexistent/dir/ctl"), "{err}");
}
