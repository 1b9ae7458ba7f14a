//! Running as a service: systemd socket activation (our own fd-3 launcher,
//! `systemd-socket-activate`, libnbd's `[ CMD ]`), inetd-style `-s`,
//! `--vsock`, `-u`/`-g`, `--log`, sd_notify, stale `-U` sockets,
//! `--timeout`, `--keepalive`, and the shipped examples in `contrib/`.

use crate::harness::*;
use std::io::Read;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Binds the listening sockets named in argv[1] (`unix:PATH` or
/// `tcp:HOST:PORT`, comma separated), moves them to fds 3.., sets
/// `LISTEN_FDS` and `LISTEN_PID` to its own pid and execs argv[2..] -- what
/// systemd does for a socket-activated service.
const ACTIVATOR: &str = r#"
import fcntl, os, socket, sys
socks = []
for spec in sys.argv[1].split(','):
    kind, addr = spec.split(':', 1)
    if kind == 'unix':
        s = socket.socket(socket.AF_UNIX)
        s.bind(addr)
    else:
        host, port = addr.rsplit(':', 1)
        s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port)))
    s.listen()
    socks.append(s)
high = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD, 100) for s in socks]
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i, inheritable=True)
    os.close(fd)
os.environ['LISTEN_PID'] = str(os.getpid())
os.environ['LISTEN_FDS'] = str(len(socks))
os.execv(sys.argv[2], sys.argv[2:])
"#;

/// A process we started in its own process group: killed and reaped on drop.
struct Proc {
    child: Option<Child>,
    stderr_path: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, stderr_path: PathBuf) -> Proc {
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
        Proc {
            child: Some(child),
            stderr_path,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Wait for `path` to exist with content, failing if the process exits.
    fn wait_for_file(&mut self, path: &Path) -> String {
        let start = Instant::now();
        loop {
            if let Ok(s) = std::fs::read_to_string(path) {
                if !s.trim().is_empty() {
                    return s;
                }
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "exited ({st:?}) before {} appeared\n{}",
                    path.display(),
                    self.stderr()
                );
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "{} did not appear\n{}",
                path.display(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send `sig` to the process alone and wait for it to exit.
    fn signal_and_wait(&mut self, sig: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as i32, sig) };
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if start.elapsed() > TIMEOUT {
                kill_group(child.id(), libc::SIGKILL);
                let _ = child.wait();
                panic!("still running {TIMEOUT:?} after signal {sig}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(c.id(), libc::SIGKILL);
            let _ = c.wait();
        }
    }
}

/// Start nbdkit with sockets passed the systemd way.
fn activate(sockets: &[String], dir: &Path, args: &[&str]) -> Proc {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg("-c")
        .arg(ACTIVATOR)
        .arg(sockets.join(","))
        .arg(binary())
        .args(args);
    Proc::spawn(cmd, dir.join("nbdkit.stderr"))
}

fn unix_uri(sock: &Path) -> String {
    format!("nbd+unix:///?socket={}", sock.display())
}

#[test]
fn socket_activation_serves_inherited_sockets_without_forking() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    let pidfile = dir.path().join("pid");
    let port = free_port();
    let mut p = activate(
        &[
            format!("unix:{}", sock.display()),
            format!("tcp:127.0.0.1:{port}"),
        ],
        dir.path(),
        &["-P", pidfile.to_str().unwrap(), "memory", "1M"],
    );
    p.wait_for_file(&pidfile);
    assert_eq!(
        read_pid(&pidfile),
        p.pid() as i32,
        "the activated server must not fork"
    );
    for _ in 0..3 {
        assert_eq!(nbdinfo(&["--size", &unix_uri(&sock)]).trim(), "1048576");
        let tcp = format!("nbd://127.0.0.1:{port}");
        assert_eq!(nbdinfo(&["--size", &tcp]).trim(), "1048576");
    }
    // Several connections at once, over both sockets.
    let script = "h2 = nbd.NBD(); h2.connect_uri(sys.argv[2])\n\
                  h.pwrite(b'x' * 512, 0); print(h2.pread(512, 0) == b'x' * 512)";
    let tcp = format!("nbd://127.0.0.1:{port}");
    assert_eq!(python(&unix_uri(&sock), script, &[&tcp]).trim(), "True");
    let st = p.signal_and_wait(libc::SIGTERM);
    assert!(st.success(), "exit {st:?}\n{}", p.stderr());
}

#[test]
fn socket_activation_oldstyle() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    let pidfile = dir.path().join("pid");
    let mut p = activate(
        &[format!("unix:{}", sock.display())],
        dir.path(),
        &["-P", pidfile.to_str().unwrap(), "-o", "memory", "1M"],
    );
    p.wait_for_file(&pidfile);
    // As nbdkit's own test: the first 8 bytes are the NBD magic.
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut magic = [0u8; 16];
    s.read_exact(&mut magic).unwrap();
    assert_eq!(&magic, b"NBDMAGIC\x00\x00\x42\x02\x81\x86\x12\x53");
    drop(s);
    assert_eq!(nbdinfo(&["--size", &unix_uri(&sock)]).trim(), "1048576");
    assert!(p.signal_and_wait(libc::SIGTERM).success());
}

/// LISTEN_PID and LISTEN_FDS are for the activated process only: anything it
/// starts (here the exitwhen filter's script, run when the server gets
/// ready) must not see them, or it would take the sockets to be its own.
#[test]
fn socket_activation_hides_listen_variables_from_children() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    let pidfile = dir.path().join("pid");
    let envfile = dir.path().join("env");
    let script = format!("exit-when-script=env > {}", envfile.display());
    let mut p = activate(
        &[format!("unix:{}", sock.display())],
        dir.path(),
        &[
            "-P",
            pidfile.to_str().unwrap(),
            "--filter=exitwhen",
            "memory",
            "1M",
            &script,
        ],
    );
    p.wait_for_file(&pidfile);
    // The server really was activated: it serves the inherited socket.
    assert_eq!(nbdinfo(&["--size", &unix_uri(&sock)]).trim(), "1048576");
    let env = std::fs::read_to_string(&envfile).unwrap();
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
    assert!(
        !env.lines()
            .any(|l| l.starts_with("LISTEN_PID=") || l.starts_with("LISTEN_FDS=")),
        "{env}"
    );
    assert!(p.signal_and_wait(libc::SIGTERM).success(), "{}", p.stderr());
}

#[test]
fn socket_activation_refuses_listening_options() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    let spec = [format!("unix:{}", sock.display())];
    for (flag, args) in [
        ("-i", vec!["-i", "127.0.0.1"]),
        ("-p", vec!["-p", "10999"]),
        ("-s", vec!["-s"]),
        ("-U", vec!["-U", "/tmp/nowhere.sock"]),
        ("--run", vec!["--run", "true"]),
        ("--vsock", vec!["--vsock"]),
    ] {
        let _ = std::fs::remove_file(&sock);
        let mut full = args.clone();
        full.push("null");
        let mut p = activate(&spec, dir.path(), &full);
        // Signal 0 sends nothing: just wait for the refusal.
        let st = p.signal_and_wait(0);
        assert_eq!(st.code(), Some(1), "{flag}: {}", p.stderr());
        assert!(
            p.stderr()
                .contains(&format!("cannot use socket activation with {flag} flag")),
            "{flag}: {}",
            p.stderr()
        );
    }
}

/// Run nbdkit with LISTEN_* set to exactly these values (from a shell, so
/// `$$` is nbdkit's own pid after exec).
fn run_with_listen_env(listen_pid: &str, listen_fds: &str, fd3: &str, args: &str) -> Output {
    let script = format!(
        "export LISTEN_PID={listen_pid} LISTEN_FDS={listen_fds}; exec 3{fd3}; exec {} {args}",
        binary().display()
    );
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg(&script)
        .process_group(0)
        .stdin(Stdio::null());
    run_cmd(&mut c, TIMEOUT)
}

#[test]
fn socket_activation_environment_errors() {
    // Out of range counts are errors.
    for n in ["0", "17"] {
        let o = run_with_listen_env("$$", n, "</dev/null", "null");
        assert_eq!(o.status.code(), Some(1), "{}", stderr_str(&o));
        assert!(
            stderr_str(&o).contains(&format!("LISTEN_FDS={n} out of range")),
            "{}",
            stderr_str(&o)
        );
    }
    // fd 3 that is not a listening socket is refused, not spun on.
    let o = run_with_listen_env("$$", "1", "</dev/null", "null");
    assert_eq!(o.status.code(), Some(1), "{}", stderr_str(&o));
    assert!(stderr_str(&o).contains("fd 3"), "{}", stderr_str(&o));
    // LISTEN_PID for another process: a warning, then normal startup.
    let o = run_with_listen_env("1", "1", "</dev/null", "-U - null --run 'echo ran'");
    assert_success(&o, "LISTEN_PID not for us");
    assert_eq!(stdout_str(&o).trim(), "ran");
    assert!(
        stderr_str(&o).contains("LISTEN_PID was not for us (ignored)"),
        "{}",
        stderr_str(&o)
    );
}

#[test]
fn systemd_socket_activate_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = Command::new("/usr/bin/systemd-socket-activate");
    cmd.arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg(binary())
        .args(["memory", "2M"]);
    let mut p = Proc::spawn(cmd, dir.path().join("stderr"));
    wait_for_tcp(port, &mut p);
    for _ in 0..3 {
        let uri = format!("nbd://127.0.0.1:{port}");
        assert_eq!(nbdinfo(&["--size", &uri]).trim(), "2097152");
    }
    assert!(p.signal_and_wait(libc::SIGTERM).success(), "{}", p.stderr());
}

/// Wait until something listens on 127.0.0.1:`port` (the launcher binds it
/// before starting nbdkit); a connection attempt is enough.
fn wait_for_tcp(port: u16, p: &mut Proc) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(st) = p.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("exited {st:?}: {}", p.stderr());
        }
        assert!(start.elapsed() < TIMEOUT, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn libnbd_bracket_command_uses_socket_activation() {
    let b = binary().display().to_string();
    let out = nbdinfo(&["--size", "--", "[", &b, "memory", "3M", "]"]);
    assert_eq!(out.trim(), "3145728");
}

// ---- -s (inetd style) ----

#[test]
fn single_under_socat_inetd_style() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    let mut cmd = Command::new("/usr/bin/socat");
    cmd.arg(format!("UNIX-LISTEN:{},fork", sock.display()))
        .arg(format!("EXEC:{} -r -s memory 1M", binary().display()));
    let mut p = Proc::spawn(cmd, dir.path().join("stderr"));
    let start = Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < TIMEOUT, "socat: {}", p.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Each connection gets its own nbdkit.
    for _ in 0..2 {
        let o = client_ok("/usr/bin/nbdinfo", &["--json", &unix_uri(&sock)]);
        let info = stdout_str(&o);
        assert!(info.contains("\"export-size\": 1048576"), "{info}");
        assert!(info.contains("\"is_read_only\": true"), "{info}");
    }
    let _ = p.signal_and_wait(libc::SIGTERM);
}

#[test]
fn single_with_libnbd_connect_command() {
    let b = binary().display().to_string();
    let script = "import nbd, sys\n\
                  h = nbd.NBD()\n\
                  h.connect_command([sys.argv[1], '-s', 'memory', '1M'])\n\
                  h.pwrite(b'hello', 100)\n\
                  print(h.get_size(), bytes(h.pread(5, 100)))\n\
                  h.shutdown()";
    let out = client_ok("/usr/bin/python3", &["-c", script, &b]);
    assert_eq!(stdout_str(&out).trim(), "1048576 b'hello'");
}

/// A fixed-newstyle client: flags, then `NBD_OPT_GO` for the default export.
fn go_request() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&3u32.to_be_bytes()); // FIXED_NEWSTYLE | NO_ZEROES
    v.extend_from_slice(b"IHAVEOPT");
    v.extend_from_slice(&7u32.to_be_bytes()); // NBD_OPT_GO
    v.extend_from_slice(&6u32.to_be_bytes());
    v.extend_from_slice(&0u32.to_be_bytes()); // export name ""
    v.extend_from_slice(&0u16.to_be_bytes()); // no info requests
    v
}

#[test]
fn single_with_stdin_a_plain_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_file(dir.path(), "client.bin", &go_request());
    let output = dir.path().join("server.bin");
    let pidfile = dir.path().join("pid");
    let mut cmd = nbdkit();
    cmd.args(["-s", "-P", pidfile.to_str().unwrap(), "memory", "1M"])
        .stdin(std::fs::File::open(&input).unwrap())
        .stdout(std::fs::File::create(&output).unwrap())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let o = wait_output(child, TIMEOUT, "nbdkit -s < file");
    assert_eq!(o.status.code(), Some(0), "{}", stderr_str(&o));
    let out = std::fs::read(&output).unwrap();
    assert!(out.starts_with(b"NBDMAGICIHAVEOPT"), "{out:?}");
    // The replies to NBD_OPT_GO end with NBD_REP_ACK (1) for option 7.
    let mut ack = Vec::new();
    ack.extend_from_slice(&0x3e889045565a9u64.to_be_bytes());
    ack.extend_from_slice(&7u32.to_be_bytes());
    ack.extend_from_slice(&1u32.to_be_bytes());
    ack.extend_from_slice(&0u32.to_be_bytes());
    assert!(out.ends_with(&ack), "{out:?}");
    assert_eq!(read_pid(&pidfile), pid as i32, "-s never forks");
}

#[test]
fn single_refuses_other_modes() {
    for args in [
        &["-s", "-U", "/tmp/x.sock", "null"][..],
        &["-s", "-p", "10999", "null"],
        &["-s", "--vsock", "null"],
        &["-s", "--run", "true", "null"],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            stderr_str(&o).contains("cannot be used in this combination"),
            "{args:?}: {}",
            stderr_str(&o)
        );
    }
    // As nbdkit's test-dump-plugin-and-single.sh.
    let o = run(&["--dump-plugin", "-s", "null"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(o.stdout.is_empty(), "{}", stdout_str(&o));
    assert!(!o.stderr.is_empty());
}

// ---- --vsock ----

/// A vsock port unlikely to collide with anything else on this machine,
/// above 2^31 to exercise the full 32-bit range.
fn vsock_port(salt: u32) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    0x8000_0000 + ((std::process::id() ^ nanos).wrapping_mul(2654435761) >> 4) + salt
}

#[test]
fn vsock_binds_32_bit_ports_and_reports_uris() {
    let port = vsock_port(1).to_string();
    let out = captive(
        &["--vsock", "-p", &port, "null", "1M"],
        "echo \"$uri|$port|$unixsocket\"",
    );
    assert_eq!(out.trim(), format!("nbd+vsock://1:{port}|{port}|"));
    let o = run(&[
        "--vsock",
        "-p",
        &port,
        "--print-uri",
        "-f",
        "null",
        "--run",
        "true",
    ]);
    assert_success(&o, "--print-uri");
    assert!(
        stdout_str(&o).starts_with(&format!("nbd+vsock://1:{port}\n")),
        "{}",
        stdout_str(&o)
    );
}

#[test]
fn vsock_port_in_use_and_bad_ports() {
    let dir = tempfile::tempdir().unwrap();
    let port = vsock_port(2).to_string();
    let pidfile = dir.path().join("pid");
    let mut cmd = nbdkit();
    cmd.args(["--vsock", "-p", &port, "-f", "-P"])
        .arg(&pidfile)
        .args(["null"]);
    let mut first = Proc::spawn(cmd, dir.path().join("stderr"));
    first.wait_for_file(&pidfile);
    // The first server really holds the port: a second bind fails.
    let o = run(&["--vsock", "-p", &port, "-f", "null"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr_str(&o).contains("Address already in use"),
        "{}",
        stderr_str(&o)
    );
    assert!(first.signal_and_wait(libc::SIGTERM).success());
    for bad in ["4294967296", "-1", "abc"] {
        let o = run(&["--vsock", "-p", bad, "null"]);
        assert_eq!(o.status.code(), Some(1), "{bad}");
        assert!(stderr_str(&o).contains("port"), "{bad}: {}", stderr_str(&o));
    }
    let o = run(&["--vsock", "-U", "-", "null"]);
    assert_eq!(o.status.code(), Some(1));
}

/// `VMADDR_CID_ANY`.
const CID_ANY: u32 = u32::MAX;

/// The vsock listeners (CID, port) the server `pid` holds.
fn vsock_listeners(pid: u32) -> Vec<(u32, u32)> {
    server_sockets(pid)
        .iter()
        .filter_map(|s| s.local_addr().ok()?.as_vsock_address())
        .collect()
}

/// The listener is bound to every CID at the given port, and without `-p`
/// at 10809.  (No client can connect here: there is no vsock loopback
/// transport, so the server's own socket is inspected instead.)
#[test]
fn vsock_listens_on_any_cid_and_default_port() {
    assert_root();
    let dir = tempfile::tempdir().unwrap();
    let port = vsock_port(3);
    let pidfile = dir.path().join("pid");
    let mut cmd = nbdkit();
    cmd.args(["--vsock", "-p", &port.to_string(), "-f", "-P"])
        .arg(&pidfile)
        .arg("null");
    let mut p = Proc::spawn(cmd, dir.path().join("stderr"));
    p.wait_for_file(&pidfile);
    assert_eq!(vsock_listeners(p.pid()), [(CID_ANY, port)]);
    assert!(p.signal_and_wait(libc::SIGTERM).success());

    // The default port.  Another program on this machine may hold it (vsock
    // ports are not per test): then the bind error must name 10809.
    let pidfile = dir.path().join("pid2");
    let mut cmd = nbdkit();
    cmd.args(["--vsock", "-f", "-P"]).arg(&pidfile).arg("null");
    let mut p = Proc::spawn(cmd, dir.path().join("stderr2"));
    let start = Instant::now();
    while !pidfile.exists() {
        if let Some(st) = p.child.as_mut().unwrap().try_wait().unwrap() {
            p.child = None;
            assert_eq!(st.code(), Some(1));
            assert!(
                p.stderr()
                    .contains("bind vsock port 10809: Address already in use"),
                "{}",
                p.stderr()
            );
            return;
        }
        assert!(start.elapsed() < TIMEOUT, "no pidfile: {}", p.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    p.wait_for_file(&pidfile);
    assert_eq!(vsock_listeners(p.pid()), [(CID_ANY, 10809)]);
    assert!(p.signal_and_wait(libc::SIGTERM).success());
}

// ---- -u / -g ----

fn assert_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the -u/-g and syslog tests need root");
}

fn status_line(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn user_and_group_switch_after_binding() {
    assert_root();
    // `-u nobody` alone changes the user and leaves the group as it was (as
    // nbdkit does); the pidfile is written by the new user in every case.
    for (switch, gid, groups) in [
        (
            &["-u", "nobody", "-g", "nogroup"][..],
            "65534",
            Some("65534"),
        ),
        (&["-u", "65534", "-g", "65534"][..], "65534", Some("65534")),
        (&["-u", "nobody"][..], "0", None),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let sock = dir.path().join("sock");
        let pidfile = dir.path().join("pid");
        let mut cmd = nbdkit();
        cmd.arg("-f")
            .args(switch)
            .arg("-U")
            .arg(&sock)
            .arg("-P")
            .arg(&pidfile)
            .args(["memory", "1M"]);
        let mut p = Proc::spawn(
            cmd,
            std::env::temp_dir().join(format!("nbdkit-user-test-{}.stderr", std::process::id())),
        );
        p.wait_for_file(&pidfile);
        let pid = p.pid();
        assert_eq!(
            status_line(pid, "Uid:"),
            "65534 65534 65534 65534",
            "{switch:?}"
        );
        assert_eq!(status_line(pid, "Gid:"), [gid; 4].join(" "), "{switch:?}");
        if let Some(groups) = groups {
            assert_eq!(status_line(pid, "Groups:"), groups, "{switch:?}");
        }
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&pidfile).unwrap().uid(), 65534);
        // The socket was bound as root, before the switch.
        assert_eq!(std::fs::metadata(&sock).unwrap().uid(), 0);
        assert_eq!(nbdinfo(&["--size", &unix_uri(&sock)]).trim(), "1048576");
        assert!(p.signal_and_wait(libc::SIGTERM).success(), "{}", p.stderr());
        let _ = std::fs::remove_file(&p.stderr_path);
    }

    let o = run(&["-f", "-u", "no-such-user-x", "null"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr_str(&o).contains("not a valid user name or uid"));
    let o = run(&["-f", "-g", "no-such-group-x", "null"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr_str(&o).contains("not a valid group name or gid"));
}

// ---- --log ----

/// Read past the end of the export (libnbd's own bounds check turned off so
/// the request reaches the server): the server logs an error.
const BAD_READ: &str = "h.set_strict_mode(0)\ntry:\n    h.pread(512, h.get_size())\nexcept nbd.Error:\n    print('refused')\n";

#[test]
fn log_null_discards_errors() {
    let mut s = Server::start(&["--log=null", "memory", "1M"]);
    assert_eq!(python(&s.uri(), BAD_READ, &[]).trim(), "refused");
    s.stop_ok();
    assert!(!s.stderr().contains("error"), "{}", s.stderr());
    let o = run(&["--log=null", "memory", "size=abc"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stderr.is_empty(), "{}", stderr_str(&o));
    // Debug messages (-v) are not errors: they still go to stderr.
    let mut s = Server::start(&["-v", "--log=null", "memory", "1M"]);
    assert_eq!(python(&s.uri(), BAD_READ, &[]).trim(), "refused");
    s.stop_ok();
    assert!(s.stderr().contains("nbdkit: debug: "), "{}", s.stderr());
    assert!(!s.stderr().contains("error"), "{}", s.stderr());
}

#[test]
fn log_file_appends_errors() {
    let dir = tempfile::tempdir().unwrap();
    let log = write_file(dir.path(), "nbdkit.log", b"earlier line\n");
    let arg = format!("--log={}", log.display());
    let mut s = Server::start(&[&arg, "memory", "1M"]);
    assert_eq!(python(&s.uri(), BAD_READ, &[]).trim(), "refused");
    s.stop_ok();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.starts_with("earlier line\n"), "{text}");
    assert!(
        text.contains("nbdkit: memory[1]: error: invalid request: NBD_CMD_READ:"),
        "{text}"
    );
    assert!(!s.stderr().contains("error"), "{}", s.stderr());
    let o = run(&["--log=relative.log", "null"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr_str(&o).contains("absolute path"));
}

/// A private `/dev/log` for one nbdkit: the test owns a datagram socket and
/// nbdkit runs in its own mount namespace with a directory holding that
/// socket (and /dev/null) mounted on /dev.  The machine's /dev is untouched.
struct FakeSyslog {
    dir: tempfile::TempDir,
    socket: UnixDatagram,
}

impl FakeSyslog {
    fn new() -> FakeSyslog {
        assert_root();
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("dev");
        std::fs::create_dir(&dev).unwrap();
        std::fs::write(dev.join("null"), b"").unwrap();
        let socket = UnixDatagram::bind(dev.join("log")).unwrap();
        socket.set_read_timeout(Some(TIMEOUT)).unwrap();
        FakeSyslog { dir, socket }
    }

    /// `unshare` wrapper running `nbdkit ARGS` with the private /dev.
    fn command(&self, args: &[&str]) -> Command {
        let dev = self.dir.path().join("dev");
        let mut quoted = String::new();
        for a in args {
            quoted.push_str(&format!(" '{a}'"));
        }
        let script = format!(
            "mount --bind /dev/null {dev}/null && mount --bind {dev} /dev && exec {}{quoted}",
            binary().display(),
            dev = dev.display()
        );
        let mut c = Command::new("/usr/bin/unshare");
        c.args(["--mount", "--propagation", "private", "/bin/sh", "-c"])
            .arg(script);
        c
    }

    /// Next message that contains `needle` (others are skipped).
    fn expect(&self, needle: &str) -> String {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = self
                .socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no syslog message with {needle:?}: {e}"));
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.contains(needle) {
                return msg;
            }
        }
    }
}

#[test]
fn log_syslog_sends_errors_to_dev_log() {
    let syslog = FakeSyslog::new();
    // A startup error.
    let o = run_cmd(
        &mut syslog.command(&["-f", "--log=syslog", "memory", "size=abc"]),
        TIMEOUT,
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr_str(&o));
    assert!(!stderr_str(&o).contains("abc"), "{}", stderr_str(&o));
    let msg = syslog.expect("could not parse size string (abc)");
    // <LOG_DAEMON|LOG_ERR>TIMESTAMP nbdkit[PID]: MESSAGE, as C nbdkit.
    assert!(msg.starts_with("<27>"), "{msg}");
    assert!(msg.contains(" nbdkit["), "{msg}");

    // An error while serving, with the connection named.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    let pidfile = dir.path().join("pid");
    let mut cmd = syslog.command(&[
        "-f",
        "-v",
        "--log=syslog",
        "-U",
        sock.to_str().unwrap(),
        "-P",
        pidfile.to_str().unwrap(),
        "memory",
        "1M",
    ]);
    cmd.process_group(0);
    let mut p = Proc::spawn(cmd, dir.path().join("stderr"));
    p.wait_for_file(&pidfile);
    assert_eq!(python(&unix_uri(&sock), BAD_READ, &[]).trim(), "refused");
    let msg = syslog.expect("invalid request");
    assert!(
        msg.contains("memory[1]: invalid request: NBD_CMD_READ:"),
        "{msg}"
    );
    assert!(msg.starts_with("<27>"), "{msg}");
    assert!(p.signal_and_wait(libc::SIGTERM).success());
    // Errors went to syslog only; debug messages (-v) stay on stderr.
    assert!(!p.stderr().contains("error: "), "{}", p.stderr());
    assert!(p.stderr().contains("memory[1]: debug: "), "{}", p.stderr());
}

#[test]
fn log_default_is_syslog_once_in_the_background() {
    let syslog = FakeSyslog::new();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    let pidfile = dir.path().join("pid");
    let o = run_cmd(
        &mut syslog.command(&[
            "-U",
            sock.to_str().unwrap(),
            "-P",
            pidfile.to_str().unwrap(),
            "memory",
            "1M",
        ]),
        TIMEOUT,
    );
    assert_success(&o, "background nbdkit");
    let pid = read_pid(&pidfile);
    assert_eq!(python(&unix_uri(&sock), BAD_READ, &[]).trim(), "refused");
    let msg = syslog.expect("invalid request");
    assert!(msg.contains(&format!("nbdkit[{pid}]: ")), "{msg}");
    terminate(pid);
}

// ---- sd_notify ----

fn notify_socket(dir: &Path) -> (PathBuf, UnixDatagram) {
    let path = dir.join("notify");
    let s = UnixDatagram::bind(&path).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    (path, s)
}

fn recv_text(s: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).expect("a notification");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn sd_notify_ready_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let (path, notify) = notify_socket(dir.path());
    let sock = dir.path().join("sock");
    let pidfile = dir.path().join("pid");
    // Foreground: the process itself is the main pid.
    let mut cmd = nbdkit();
    cmd.env("NOTIFY_SOCKET", &path)
        .args(["-f", "-U"])
        .arg(&sock)
        .arg("-P")
        .arg(&pidfile)
        .args(["memory", "1M"]);
    let mut p = Proc::spawn(cmd, dir.path().join("stderr"));
    let msg = recv_text(&notify);
    assert_eq!(msg, format!("READY=1\nMAINPID={}\n", p.pid()));
    // Ready means ready: the pidfile exists and clients are served.
    assert!(pidfile.exists());
    assert_eq!(nbdinfo(&["--size", &unix_uri(&sock)]).trim(), "1048576");
    assert!(p.signal_and_wait(libc::SIGTERM).success());
    assert_eq!(recv_text(&notify), "STOPPING=1\n");

    // Backgrounded: MAINPID names the daemon.
    let sock2 = dir.path().join("sock2");
    let pid2 = dir.path().join("pid2");
    let mut c = nbdkit();
    c.env("NOTIFY_SOCKET", &path)
        .arg("-U")
        .arg(&sock2)
        .arg("-P")
        .arg(&pid2)
        .args(["memory", "1M"]);
    let o = run_cmd(&mut c, TIMEOUT);
    assert_success(&o, "background nbdkit");
    let daemon = read_pid(&pid2);
    assert_eq!(recv_text(&notify), format!("READY=1\nMAINPID={daemon}\n"));
    terminate(daemon);
    assert_eq!(recv_text(&notify), "STOPPING=1\n");
}

// ---- stale -U sockets ----

#[test]
fn stale_unix_socket_is_replaced_live_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    // A socket file nobody listens on, as a killed server leaves behind.
    drop(UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let pidfile = dir.path().join("pid");
    let mut cmd = nbdkit();
    cmd.args(["-f", "-U"])
        .arg(&sock)
        .arg("-P")
        .arg(&pidfile)
        .args(["memory", "1M"]);
    let mut first = Proc::spawn(cmd, dir.path().join("stderr"));
    first.wait_for_file(&pidfile);
    assert_eq!(nbdinfo(&["--size", &unix_uri(&sock)]).trim(), "1048576");
    // A live socket is never taken over.
    let o = run(&["-f", "-U", sock.to_str().unwrap(), "null"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr_str(&o).contains("Address already in use"),
        "{}",
        stderr_str(&o)
    );
    assert_eq!(nbdinfo(&["--size", &unix_uri(&sock)]).trim(), "1048576");
    assert!(first.signal_and_wait(libc::SIGTERM).success());
    // Something that is not a socket is left alone.
    let file = write_file(dir.path(), "file", b"keep me");
    let o = run(&["-f", "-U", file.to_str().unwrap(), "null"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

// ---- --timeout and --keepalive ----

#[test]
fn timeout_closes_connections_that_do_not_negotiate() {
    let s = Server::start(&["--timeout=1", "memory", "1M"]);
    let mut raw = std::os::unix::net::UnixStream::connect(&s.sock).unwrap();
    raw.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut greeting = [0u8; 18];
    raw.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
    // Say nothing: the server hangs up (EOF, not our read timeout).
    let mut rest = Vec::new();
    raw.read_to_end(&mut rest)
        .expect("the server closes the connection");
    assert!(rest.is_empty());
    // A client that has negotiated may stay idle for longer.
    let script = "import time\ntime.sleep(2.5)\nprint(bytes(h.pread(4, 0)))";
    assert_eq!(
        python(&s.uri(), script, &[]).trim(),
        "b'\\x00\\x00\\x00\\x00'"
    );
    assert!(
        s.stderr().contains("did not finish negotiation"),
        "{}",
        s.stderr()
    );
    let o = run(&["--timeout=soon", "null"]);
    assert_eq!(o.status.code(), Some(1));
}

/// Duplicates of every socket the server `pid` holds, taken through
/// pidfd_getfd(2) (we are root), to look at them from the test.
fn server_sockets(pid: u32) -> Vec<socket2::Socket> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: pidfd_open takes integers; a non-negative result is a new fd
    // that we own.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: see above: pidfd is open and ours alone.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as libc::c_int) };
    let mut socks = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let n: libc::c_int = entry.file_name().to_str().unwrap().parse().unwrap();
        // SAFETY: pidfd_getfd takes integers; a non-negative result is a
        // new fd in this process that we own.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_pidfd_getfd,
                std::os::fd::AsRawFd::as_raw_fd(&pidfd),
                n,
                0,
            )
        };
        if fd < 0 {
            // The server closed it in the meantime.
            continue;
        }
        // SAFETY: fd was just created for us and nothing else owns it.
        socks.push(socket2::Socket::from(unsafe {
            OwnedFd::from_raw_fd(fd as libc::c_int)
        }));
    }
    socks
}

/// SO_KEEPALIVE of each connected TCP socket the server `pid` holds.
fn server_keepalive_flags(pid: u32) -> Vec<bool> {
    server_sockets(pid)
        .iter()
        .filter(|s| s.peer_addr().is_ok_and(|a| a.is_ipv4() || a.is_ipv6()))
        .map(|s| s.keepalive().unwrap())
        .collect()
}

#[test]
fn keepalive_sets_so_keepalive_on_tcp_connections() {
    assert_root();
    for (args, expected) in [
        (&["--keepalive", "memory", "1M"][..], true),
        (&["memory", "1M"][..], false),
    ] {
        let s = Server::start_tcp(args);
        let pid = s.pid();
        // Hold a connection open while we look at the server's side.
        let mut client = std::net::TcpStream::connect(("127.0.0.1", s.port.unwrap())).unwrap();
        client.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut greeting = [0u8; 18];
        client.read_exact(&mut greeting).unwrap();
        // The connection's socket (possibly several fds for it).
        let flags = server_keepalive_flags(pid);
        assert!(!flags.is_empty(), "{args:?}: no TCP connection found");
        assert!(flags.iter().all(|&f| f == expected), "{args:?}: {flags:?}");
    }
}

/// Unix-domain connections get a send buffer that holds a whole large read
/// reply (2 MiB asked; the kernel doubles it and caps the request at
/// `net.core.wmem_max`), so a 1 MiB reply does not block the worker.
#[test]
fn unix_connections_get_a_large_send_buffer() {
    assert_root();
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let expected = 2 * wmem_max.min(2 << 20);
    let s = Server::start(&["memory", "1M"]);
    let mut client = std::os::unix::net::UnixStream::connect(&s.sock).unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut greeting = [0u8; 18];
    client.read_exact(&mut greeting).unwrap();
    // The server's end of our connection: its peer is this process.
    let me = std::process::id() as i32;
    let connected: Vec<usize> = server_sockets(s.pid())
        .iter()
        .filter(|x| {
            nix::sys::socket::getsockopt(*x, nix::sys::socket::sockopt::PeerCredentials)
                .is_ok_and(|c| c.pid() == me)
        })
        .map(|x| x.send_buffer_size().unwrap())
        .collect();
    assert!(!connected.is_empty(), "no Unix connection found");
    assert!(
        connected.iter().all(|&n| n == expected),
        "send buffers {connected:?}, expected {expected}"
    );
}

// ---- contrib/ examples ----

fn contrib(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The example's command line with our binary and `disk` substituted.
fn substitute(words: &[&str], disk: &Path) -> Vec<String> {
    words
        .iter()
        .map(|w| match *w {
            "/usr/sbin/nbdkit" => binary().display().to_string(),
            "/var/lib/nbdkit/disk.img" => disk.display().to_string(),
            w => w.to_string(),
        })
        .collect()
}

fn sample_disk(dir: &Path) -> PathBuf {
    write_file(dir, "disk.img", &pseudo_random(1 << 20, 4))
}

#[test]
fn contrib_systemd_socket_unit_with_systemd_socket_activate() {
    let socket_unit = contrib("systemd/nbdkit.socket");
    assert!(
        socket_unit
            .lines()
            .any(|l| l.trim() == "ListenStream=10809"),
        "{socket_unit}"
    );
    let service = contrib("systemd/nbdkit.service");
    let exec = service
        .lines()
        .find_map(|l| l.trim().strip_prefix("ExecStart="))
        .expect("ExecStart= line");
    let dir = tempfile::tempdir().unwrap();
    let disk = sample_disk(dir.path());
    let argv = substitute(&exec.split_whitespace().collect::<Vec<_>>(), &disk);
    // systemd-socket-activate stands in for systemd (port 10809 may be busy
    // on a test machine, so another port).
    let port = free_port();
    let mut cmd = Command::new("/usr/bin/systemd-socket-activate");
    cmd.arg("-l").arg(format!("127.0.0.1:{port}")).args(&argv);
    let mut p = Proc::spawn(cmd, dir.path().join("stderr"));
    wait_for_tcp(port, &mut p);
    let uri = format!("nbd://127.0.0.1:{port}");
    let copy = dir.path().join("copy.img");
    nbdcopy(&[uri.as_str(), copy.to_str().unwrap()]);
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&disk).unwrap());
    assert!(p.signal_and_wait(libc::SIGTERM).success(), "{}", p.stderr());
}

#[test]
fn contrib_systemd_notify_unit() {
    let service = contrib("systemd/nbdkit-notify.service");
    assert!(service.lines().any(|l| l.trim() == "Type=notify"));
    let exec = service
        .lines()
        .find_map(|l| l.trim().strip_prefix("ExecStart="))
        .expect("ExecStart= line");
    let dir = tempfile::tempdir().unwrap();
    let disk = sample_disk(dir.path());
    let sock = dir.path().join("nbdkit.sock");
    let mut argv = substitute(&exec.split_whitespace().collect::<Vec<_>>(), &disk);
    for w in argv.iter_mut() {
        if w == "/run/nbdkit/socket" {
            *w = sock.display().to_string();
        }
    }
    let (path, notify) = notify_socket(dir.path());
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).env("NOTIFY_SOCKET", &path);
    let mut p = Proc::spawn(cmd, dir.path().join("stderr"));
    assert_eq!(
        recv_text(&notify),
        format!("READY=1\nMAINPID={}\n", p.pid())
    );
    assert_eq!(nbdinfo(&["--size", &unix_uri(&sock)]).trim(), "1048576");
    assert!(p.signal_and_wait(libc::SIGTERM).success(), "{}", p.stderr());
}

/// Serve `argv` (an `-s` command line) inetd-style with socat on a free TCP
/// port and check a client reads the disk through it.
fn check_inetd_style(argv: &[String], dir: &Path, disk: &Path) {
    assert!(argv.iter().any(|a| a == "-s"), "{argv:?}");
    let port = free_port();
    let mut cmd = Command::new("/usr/bin/socat");
    cmd.arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
        .arg(format!("EXEC:{}", argv.join(" ")));
    let mut p = Proc::spawn(cmd, dir.join("socat.stderr"));
    wait_for_tcp(port, &mut p);
    let uri = format!("nbd://127.0.0.1:{port}");
    let copy = dir.join("copy.img");
    nbdcopy(&[uri.as_str(), copy.to_str().unwrap()]);
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(disk).unwrap());
    let _ = p.signal_and_wait(libc::SIGTERM);
}

#[test]
fn contrib_inetd_line_with_socat() {
    let conf = contrib("inetd/inetd.conf");
    let line = conf
        .lines()
        .find(|l| l.starts_with("nbd"))
        .expect("an nbd service line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&fields[..5], ["nbd", "stream", "tcp", "nowait", "root"]);
    // fields[5] is the program, fields[6] its argv[0].
    let dir = tempfile::tempdir().unwrap();
    let disk = sample_disk(dir.path());
    let mut argv = substitute(&fields[5..6], &disk);
    argv.extend(substitute(&fields[7..], &disk));
    check_inetd_style(&argv, dir.path(), &disk);
}

#[test]
fn contrib_xinetd_service_with_socat() {
    let conf = contrib("xinetd/nbd");
    let value = |key: &str| {
        conf.lines()
            .find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == key).then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {key} in the xinetd example"))
    };
    assert_eq!(value("socket_type"), "stream");
    assert_eq!(value("wait"), "no");
    let dir = tempfile::tempdir().unwrap();
    let disk = sample_disk(dir.path());
    let server = value("server");
    let args = value("server_args");
    let mut words = vec![server.as_str()];
    words.extend(args.split_whitespace());
    check_inetd_style(&substitute(&words, &disk), dir.path(), &disk);
}
