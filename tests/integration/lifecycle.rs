//! Running in the background: the launcher returns once the daemon is
//! ready (pidfile written), the daemon serves, detaches from the caller's
//! stdio, and stops cleanly on SIGTERM.

use crate::harness::*;
use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn backgrounds_and_pidfile_is_ready_when_launcher_returns() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    let pidfile = dir.path().join("pid");
    let mut launcher = nbdkit()
        .args([
            "-U",
            sock.to_str().unwrap(),
            "-P",
            pidfile.to_str().unwrap(),
            "memory",
            "1M",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let launcher_pid = launcher.id() as i32;
    // The daemon must not keep the caller's stdout/stderr open: reading
    // them to the end finishes once the launcher has exited.
    let mut out = Vec::new();
    launcher
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    launcher
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    let status = launcher.wait().unwrap();
    assert!(
        status.success(),
        "launcher exited {status:?}: {}",
        String::from_utf8_lossy(&out)
    );
    // No waiting: the pidfile exists as soon as the launcher has returned.
    let pid = read_pid(&pidfile);
    assert_ne!(pid, launcher_pid);
    assert!(alive(pid));
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    assert_eq!(nbdinfo(&["--size", &uri]).trim(), "1048576");
    terminate(pid);
}

#[test]
fn background_private_socket_lives_as_long_as_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let o = run(&[
        "-U",
        "-",
        "-P",
        pidfile.to_str().unwrap(),
        "--print-uri",
        "null",
        "1M",
    ]);
    assert_success(&o, "nbdkit -U - in the background");
    let uri = stdout_str(&o).lines().next().unwrap().to_string();
    let socket = uri.split("socket=").nth(1).unwrap().to_string();
    assert!(
        Path::new(&socket).exists(),
        "{socket} missing while the daemon runs"
    );
    assert_eq!(nbdinfo(&["--size", &uri]).trim(), "1048576");
    terminate(read_pid(&pidfile));
    assert!(
        !Path::new(&socket).parent().unwrap().exists(),
        "private directory left behind"
    );
}

/// `-v` keeps stderr (debug messages) after backgrounding.
#[test]
fn verbose_daemon_keeps_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    let pidfile = dir.path().join("pid");
    let errfile = dir.path().join("err");
    let status = nbdkit()
        .args([
            "-v",
            "-U",
            sock.to_str().unwrap(),
            "-P",
            pidfile.to_str().unwrap(),
            "null",
        ])
        .stderr(std::fs::File::create(&errfile).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let pid = read_pid(&pidfile);
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    nbdinfo(&["--size", &uri]);
    terminate(pid);
    let err = std::fs::read_to_string(&errfile).unwrap();
    assert!(err.contains("accepted connection"), "{err}");
}

/// `--exit-with-parent` implies staying in the foreground: the pidfile
/// names the process we started.
#[test]
fn exit_with_parent_does_not_fork() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    let pidfile = dir.path().join("pid");
    let mut child = nbdkit()
        .args(["--exit-with-parent", "-U", sock.to_str().unwrap()])
        .args(["-P", pidfile.to_str().unwrap(), "null"])
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !pidfile.exists() {
        assert!(child.try_wait().unwrap().is_none(), "nbdkit exited early");
        assert!(start.elapsed() < TIMEOUT, "no pidfile");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(read_pid(&pidfile), child.id() as i32);
    kill_group(child.id(), libc::SIGTERM);
    assert!(child.wait().unwrap().success());
}

/// Each quit signal stops the server cleanly (exit 0) even while a libnbd
/// client sits connected and idle: the server does not wait for it.
#[test]
fn quit_signals_with_an_idle_client_connected() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
        let mut s = Server::start(&["memory", "1M"]);
        let uri = s.uri();
        // The client connects, reports, then idles for far longer than the
        // test waits; it is killed when the test ends.
        let mut client = client("/usr/bin/python3")
            .args([
                "-c",
                "import nbd, sys, time\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\nprint('connected', flush=True)\ntime.sleep(600)\n",
                &uri,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = [0u8; 10];
        client.stdout.take().unwrap().read_exact(&mut line).unwrap();
        assert_eq!(&line, b"connected\n");
        kill_group(s.pid(), sig);
        // Wait for this signal alone to stop it (stop() would add SIGTERM).
        let status = s.wait_exit();
        let _ = client.kill();
        let _ = client.wait();
        assert!(status.success(), "signal {sig}: {status:?}\n{}", s.stderr());
    }
}

/// A parent that exits takes its `--exit-with-parent` server with it.
#[test]
fn exit_with_parent_server_goes_with_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    let pidfile = dir.path().join("pid");
    let log = dir.path().join("log");
    // The parent shell starts nbdkit, waits until it serves, checks a
    // client gets through, then exits (leaving nbdkit behind but for the
    // parent-death signal).
    let script = format!(
        "'{bin}' --exit-with-parent -U '{s}' -P '{p}' memory 1M 2>'{l}' &\n\
         while [ ! -s '{p}' ]; do sleep 0.05; done\n\
         nbdinfo --size 'nbd+unix://?socket={s}'\n",
        bin = binary().display(),
        s = sock.display(),
        p = pidfile.display(),
        l = log.display(),
    );
    let o = run_cmd(
        std::process::Command::new("/bin/sh")
            .args(["-c", &script])
            .env("PATH", client_path()),
        TIMEOUT,
    );
    assert_success(&o, "parent shell");
    assert_eq!(stdout_str(&o), "1048576\n");
    let pid = read_pid(&pidfile);
    let start = Instant::now();
    while alive(pid) {
        assert!(
            start.elapsed() < TIMEOUT,
            "server {pid} outlived its parent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(!err.contains("panicked") && !err.contains("error"), "{err}");
}

/// A parent that is process 1 (a container's init) is a real parent:
/// `--exit-with-parent` starts and serves, as the C nbdkit does.
#[test]
fn exit_with_parent_accepts_process_1_as_parent() {
    // In a new PID namespace the shell is process 1 and nbdkit its child.
    let script = format!(
        "echo shell=$$; {} --exit-with-parent -U - memory 1M --run 'nbdinfo --size \"$uri\"'",
        binary().display()
    );
    let o = run_cmd(
        std::process::Command::new("unshare")
            .args(["--fork", "--pid", "--mount-proc", "sh", "-c", &script])
            .env("PATH", client_path()),
        TIMEOUT,
    );
    assert_success(&o, "nbdkit --exit-with-parent under process 1");
    let out = stdout_str(&o);
    assert!(
        out.starts_with("shell=1\n"),
        "the shell is not process 1: {out}"
    );
    assert!(out.ends_with("1048576\n"), "{out}");
}
