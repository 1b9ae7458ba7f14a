//! Captive mode basics (`--run`).

use crate::harness::*;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;

/// Parse `key=value` lines printed by a --run script.
fn vars(out: &str) -> std::collections::HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const PRINT_VARS: &str = "echo uri=$uri; echo nbd=$nbd; echo port=$port; \
     echo unixsocket=$unixsocket; echo exportname=$exportname";

#[test]
fn run_variables_with_private_socket() {
    let out = captive(&["-U", "-", "memory", "1M"], PRINT_VARS);
    let v = vars(&out);
    let sock = &v["unixsocket"];
    assert!(
        sock.starts_with("/tmp/nbdkit") && sock.ends_with("/socket"),
        "unixsocket={sock}"
    );
    let dirname = Path::new(sock).parent().unwrap();
    let base = dirname.file_name().unwrap().to_str().unwrap();
    assert_eq!(base.len(), "nbdkitXXXXXX".len(), "dir {dirname:?}");
    assert_eq!(dirname.parent().unwrap(), Path::new("/tmp"));
    assert_eq!(v["uri"], format!("nbd+unix://?socket={sock}"));
    assert_eq!(v["nbd"], v["uri"]);
    assert_eq!(v["port"], "");
    assert_eq!(v["exportname"], "");
    assert!(
        !dirname.exists(),
        "private socket directory {dirname:?} still exists after exit"
    );
}

#[test]
fn run_variables_named_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("my.sock");
    let s = sock.display().to_string();
    let out = captive(&["-U", &s, "null"], PRINT_VARS);
    let v = vars(&out);
    assert_eq!(v["uri"], format!("nbd+unix://?socket={s}"));
    assert_eq!(v["unixsocket"], s);
    assert_eq!(v["port"], "");
}

#[test]
fn run_variables_not_exported() {
    let out = captive(
        &["-U", "-", "memory", "1M"],
        "env; echo uri-set=${uri:+yes}",
    );
    assert!(out.lines().any(|l| l == "uri-set=yes"), "{out}");
    for var in ["uri=", "nbd=", "unixsocket=", "exportname=", "port="] {
        assert!(
            !out.lines().any(|l| l.starts_with(var)),
            "{var} is exported to the environment:\n{out}"
        );
    }
}

#[test]
fn run_exportname_percent_encoded() {
    let out = captive(&["-U", "-", "-e", "a b/c?", "null"], PRINT_VARS);
    let v = vars(&out);
    assert_eq!(v["exportname"], "a b/c?");
    assert_eq!(
        v["uri"],
        format!("nbd+unix:///a%20b/c%3F?socket={}", v["unixsocket"])
    );
}

#[test]
fn run_exportname_simple() {
    let out = captive(&["-U", "-", "-e", "foo", "null"], PRINT_VARS);
    let v = vars(&out);
    assert_eq!(v["exportname"], "foo");
    assert_eq!(
        v["uri"],
        format!("nbd+unix:///foo?socket={}", v["unixsocket"])
    );
}

#[test]
fn run_tcp_port() {
    for attempt in 0..10 {
        let port = free_port();
        let ps = port.to_string();
        let o = run_cmd(
            nbdkit()
                .args([
                    "-p",
                    &ps,
                    "-i",
                    "127.0.0.1",
                    "memory",
                    "1M",
                    "--run",
                    &format!("{PRINT_VARS}; nbdinfo --size nbd://127.0.0.1:$port"),
                ])
                .env("PATH", client_path()),
            LONG_TIMEOUT,
        );
        if !o.status.success() && stderr_str(&o).contains("in use") && attempt < 9 {
            continue;
        }
        assert_success(&o, "nbdkit -p PORT --run");
        let out = stdout_str(&o);
        let v = vars(&out);
        assert_eq!(v["uri"], format!("nbd://localhost:{port}"));
        assert_eq!(v["port"], ps);
        assert_eq!(v["unixsocket"], "");
        assert!(out.lines().any(|l| l == "1048576"), "{out}");
        return;
    }
}

#[test]
fn run_tcp_port_exportname() {
    let port = free_port().to_string();
    let out = captive(
        &["-p", &port, "-i", "127.0.0.1", "-e", "foo", "null"],
        PRINT_VARS,
    );
    let v = vars(&out);
    assert_eq!(v["uri"], format!("nbd://localhost:{port}/foo"));
}

/// 1.36+: `--run` without -U/-p implies `-U -` (1.32.5 uses TCP 10809).
#[test]
fn run_implies_private_unix_socket() {
    // 1.32.5 binds TCP 10809 here; serialise with the 10809 test.
    let _lock = lock_10809();
    let out = captive(
        &["memory", "1M"],
        &format!("{PRINT_VARS}; nbdinfo --size \"$uri\""),
    );
    let v = vars(&out);
    assert!(
        v["uri"].starts_with("nbd+unix://?socket=/tmp/nbdkit"),
        "uri={}",
        v["uri"]
    );
    assert!(v["unixsocket"].ends_with("/socket"));
    assert_eq!(v["port"], "");
    assert!(out.lines().any(|l| l == "1048576"), "{out}");
}

#[test]
fn run_exit_status_propagates() {
    for (cmd, code) in [
        ("exit 7", 7),
        ("true", 0),
        ("false", 1),
        ("exit 255", 255),
        ("exit 137", 137),
        ("no-such-command-for-nbdkit-test", 127),
    ] {
        let o = run(&["-U", "-", "memory", "1M", "--run", cmd]);
        assert_no_panic(&o);
        assert_eq!(
            o.status.code(),
            Some(code),
            "--run {cmd:?}: {}",
            stderr_str(&o)
        );
        assert!(o.stdout.is_empty(), "--run {cmd:?} wrote to stdout");
    }
}

#[test]
fn run_nbdinfo_size() {
    let out = captive(&["-U", "-", "memory", "1M"], "nbdinfo --size \"$uri\"");
    assert_eq!(out, "1048576\n");
}

#[test]
fn run_command_inherits_stdin() {
    let mut cmd = nbdkit();
    cmd.args(["-U", "-", "null", "--run", "cat; echo to-stderr >&2"])
        .stdin(std::process::Stdio::piped());
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hello from stdin\n").unwrap();
    }
    let o = wait_output(child, TIMEOUT, "nbdkit --run cat");
    assert_success(&o, "nbdkit --run cat");
    assert_eq!(stdout_str(&o), "hello from stdin\n");
    // And nbdkit's stderr.
    assert_eq!(stderr_str(&o), "to-stderr\n");
}

/// The ONLY test that uses the default port 10809 (nothing else may).
/// Checks the default TCP URI with `--run`, then that a foreground server
/// without `-p` listens on 10809 on every address.
#[test]
fn default_port_10809() {
    let _lock = lock_10809();
    let out = captive(
        &["-p", "10809", "memory", "1M"],
        "echo uri=$uri; echo port=$port; nbdinfo --size nbd://localhost",
    );
    let v = vars(&out);
    assert_eq!(v["uri"], "nbd://localhost:10809");
    assert_eq!(v["port"], "10809");
    assert!(out.lines().any(|l| l == "1048576"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let pid = dir.path().join("pid");
    let child = nbdkit()
        .args(["-f", "-P", &pid.display().to_string(), "memory", "2M"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = KillOnDrop(Some(child));
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&pid)
        .map(|s| s.trim().is_empty())
        .unwrap_or(true)
    {
        if let Some(st) = guard.0.as_mut().unwrap().try_wait().unwrap() {
            panic!("nbdkit on the default port exited early: {st:?}");
        }
        assert!(start.elapsed() < TIMEOUT, "pidfile not written");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(nbdinfo(&["--size", "nbd://localhost"]).trim(), "2097152");
    assert_eq!(
        nbdinfo(&["--size", "nbd://127.0.0.1:10809"]).trim(),
        "2097152"
    );
    let child = guard.0.take().unwrap();
    kill_group(child.id(), libc::SIGTERM);
    let o = wait_output(child, TIMEOUT, "nbdkit on 10809");
    assert!(o.status.success(), "{:?} {}", o.status, stderr_str(&o));
}

struct KillOnDrop(Option<std::process::Child>);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            kill_group(c.id(), libc::SIGKILL);
            let _ = c.wait();
        }
    }
}

/// The pidfile is in place, naming the live server, before COMMAND starts.
#[test]
fn pidfile_written_before_command_starts() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let p = pidfile.to_str().unwrap();
    let script = format!(
        "pid=$(cat '{p}' 2>/dev/null || echo none); echo \"$pid\"; \
         kill -0 \"$pid\" && echo alive; [ \"$pid\" != $PPID ] && echo not-supervisor"
    );
    let out = captive(&["-P", p, "memory", "1M"], &script);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].parse::<u32>().is_ok(), "{out}");
    assert_eq!(&lines[1..], ["alive", "not-supervisor"], "{out}");
}

/// If the supervising process is killed, the server does not linger.
#[test]
fn server_exits_when_supervisor_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let o = run(&[
        "-P",
        pidfile.to_str().unwrap(),
        "null",
        "--run",
        "kill -9 $PPID; sleep 1",
    ]);
    assert_eq!(o.status.signal(), Some(9));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let start = std::time::Instant::now();
    // SAFETY: kill(pid, 0) only checks for existence.
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(
            start.elapsed() < TIMEOUT,
            "server {pid} outlived its supervisor"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `allocator=malloc,mlock=true` locks the disk in the serving process.
#[test]
fn mlock_applies_to_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let p = pidfile.to_str().unwrap();
    let out = captive(
        &["-P", p, "memory", "8M", "allocator=malloc,mlock=true"],
        &format!("grep VmLck /proc/$(cat '{p}')/status"),
    );
    let kb: u64 = out
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(kb >= 8192, "{out}");
}

/// COMMAND killed by a signal: 128+N, with nbdkit's message.
#[test]
fn run_command_killed_by_signal() {
    let o = run(&["null", "--run", "kill -9 $$"]);
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(137), "{}", stderr_str(&o));
    assert!(
        stderr_str(&o).contains("external command was killed by signal 9"),
        "{}",
        stderr_str(&o)
    );
}

/// The server killed by signal N while COMMAND goes on to succeed: 128+N
/// (SIGUSR1, which nbdkit does not handle, as nbdkit's test-captive.sh).
#[test]
fn run_server_killed_by_signal() {
    for (sig, code) in [("KILL", 137), ("USR1", 138)] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pid");
        // Wait until the server is a zombie (the supervisor reaps it only
        // after COMMAND ends), so the supervisor is sure to see how it died.
        let script = format!(
            "pid=$(cat '{}'); kill -{sig} $pid; \
             while [ -e /proc/$pid ] && ! grep -q '^[0-9]* (.*) Z' /proc/$pid/stat; do sleep 0.05; done",
            p.display()
        );
        let o = run(&["-P", p.to_str().unwrap(), "null", "--run", &script]);
        assert_no_panic(&o);
        assert_eq!(o.status.code(), Some(code), "{sig}: {}", stderr_str(&o));
        assert!(
            stderr_str(&o).contains(&format!(
                "nbdkit command was killed by signal {}",
                code - 128
            )),
            "{}",
            stderr_str(&o)
        );
        assert!(o.stdout.is_empty(), "{sig}: {}", stdout_str(&o));
    }
}

/// A 4096-byte export name (the protocol's maximum) that needs
/// percent-encoding travels through `$exportname` and `$uri` to a client.
#[test]
fn run_longest_export_name() {
    let name = "a b/".repeat(1024);
    assert_eq!(name.len(), 4096);
    let out = captive(
        &["-e", &name, "memory", "1M"],
        "printf '%s\\n' \"$exportname\"; printf '%s\\n' \"$uri\"; nbdinfo --size \"$uri\"",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0], name);
    let encoded = "a%20b/".repeat(1024);
    assert!(
        lines[1].starts_with(&format!("nbd+unix:///{encoded}?socket=/")),
        "{}",
        lines[1]
    );
    assert_eq!(lines[2], "1048576");
}

/// COMMAND starts with default signal handling, as from a shell: nothing
/// the supervisor ignores (SIGINT, SIGQUIT) or Rust ignores (SIGPIPE) leaks.
#[test]
fn run_command_has_default_signals() {
    let out = captive(&["null"], "grep '^SigIgn:' /proc/self/status");
    let mask = u64::from_str_radix(out.trim().trim_start_matches("SigIgn:").trim(), 16)
        .unwrap_or_else(|e| panic!("{out}: {e}"));
    for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGPIPE] {
        assert_eq!(mask & (1 << (sig - 1)), 0, "signal {sig} ignored: {out}");
    }
}

/// Read a pid written by a test's COMMAND or server, waiting for it.
fn read_pid(path: &Path) -> i32 {
    let start = std::time::Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if let Ok(pid) = s.trim().parse() {
                return pid;
            }
        }
        assert!(start.elapsed() < TIMEOUT, "{} not written", path.display());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Run `--run SCRIPT` (SCRIPT writes its pid to the file `{c}` stands
/// for), send `sig` to nbdkit, and return nbdkit's output, the time it
/// took to exit, and the command's and server's pids.
fn signal_captive(sig: i32, script: &str) -> (std::process::Output, std::time::Duration, i32, i32) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pid");
    let c = dir.path().join("cmdpid");
    let script = script.replace("{c}", c.to_str().unwrap());
    let child = nbdkit()
        .args(["-P", p.to_str().unwrap(), "memory", "1M", "--run", &script])
        .env("PATH", client_path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let command = read_pid(&c);
    let server = read_pid(&p);
    let start = std::time::Instant::now();
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, sig) };
    let o = wait_output(child, TIMEOUT, "nbdkit --run with a signal");
    (o, start.elapsed(), command, server)
}

fn assert_gone(pid: i32, what: &str) {
    // SAFETY: kill(pid, 0) only checks for existence.
    assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "{what} {pid} left behind");
}

/// SIGTERM, SIGINT, SIGHUP or SIGQUIT to the nbdkit process is passed on
/// to COMMAND; nbdkit stops the server and exits promptly with COMMAND's
/// status, 128+N, leaving neither behind.
#[test]
fn run_supervisor_signals() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
        let (o, took, command, server) = signal_captive(
            sig,
            "echo $$ > '{c}.tmp'; mv '{c}.tmp' '{c}'; exec sleep 30",
        );
        assert_no_panic(&o);
        assert_eq!(
            o.status.code(),
            Some(128 + sig),
            "signal {sig}: {}",
            stderr_str(&o)
        );
        assert!(
            took < std::time::Duration::from_secs(5),
            "signal {sig}: {took:?}"
        );
        assert_gone(command, "command");
        assert_gone(server, "server");
    }
}

/// The processes COMMAND started get the signal too: the shell dies of
/// it and its `sleep` must not live on.
#[test]
fn run_supervisor_signal_reaches_the_commands_children() {
    let (o, took, sleeper, server) = signal_captive(
        libc::SIGTERM,
        "sleep 30 & echo $! > '{c}.tmp'; mv '{c}.tmp' '{c}'; wait",
    );
    assert_no_panic(&o);
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    assert_gone(sleeper, "the command's child");
    assert_gone(server, "server");
}

/// A COMMAND that traps the signal decides the exit status; one that
/// ignores it is killed after the grace period, still within 5 s.
#[test]
fn run_supervisor_signal_trapped_or_ignored() {
    let trap = "trap 'exit 3' TERM; echo $$ > '{c}.tmp'; mv '{c}.tmp' '{c}'; \
                while :; do sleep 0.1; done";
    let (o, took, command, server) = signal_captive(libc::SIGTERM, trap);
    assert_eq!(o.status.code(), Some(3), "{}", stderr_str(&o));
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    assert_gone(command, "command");
    assert_gone(server, "server");

    let ignore = "trap '' TERM; echo $$ > '{c}.tmp'; mv '{c}.tmp' '{c}'; \
                  while :; do sleep 0.1; done";
    let (o, took, command, server) = signal_captive(libc::SIGTERM, ignore);
    assert_eq!(o.status.code(), Some(128 + 9), "{}", stderr_str(&o));
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    assert_gone(command, "command");
    assert_gone(server, "server");
}

/// When COMMAND ends, nbdkit returns only after the server has gone: no
/// orphan, no leftover private socket.
#[test]
fn run_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pid");
    let out = captive(
        &["-P", p.to_str().unwrap(), "memory", "1M"],
        "echo $unixsocket",
    );
    let sock = std::path::PathBuf::from(out.trim());
    let pid: i32 = std::fs::read_to_string(&p).unwrap().trim().parse().unwrap();
    // The supervisor reaped the server before exiting, so it is gone
    // entirely (not even a zombie).
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "server {pid} outlived nbdkit --run"
    );
    assert!(!sock.exists(), "{} left behind", sock.display());
    assert!(!sock.parent().unwrap().exists(), "private directory left");
}

/// `--exit-with-parent` is supported here, and says so.
#[test]
fn exit_with_parent_is_supported() {
    let out = run_ok(&["--exit-with-parent", "--version"]);
    assert!(out.starts_with("nbdkit 1."), "{out}");
    let out = run_ok(&["--dump-config"]);
    assert!(out.lines().any(|l| l == "exit_with_parent=yes"), "{out}");
}

#[test]
fn a_socket_path_that_is_not_utf8_works() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let mut raw = dir.path().as_os_str().as_bytes().to_vec();
    raw.extend_from_slice(b"/sock\xff\xfe");
    let sock = std::ffi::OsStr::from_bytes(&raw);
    let o = run_cmd(
        nbdkit()
            .env("PATH", client_path())
            .args([
                std::ffi::OsStr::new("-U"),
                sock,
                "memory".as_ref(),
                "1M".as_ref(),
                "--run".as_ref(),
                "nbdinfo --size \"$uri\"; printf '%s' \"$unixsocket\" > unixsocket; echo \"$uri\""
                    .as_ref(),
            ])
            .current_dir(dir.path()),
        TIMEOUT,
    );
    assert_success(&o, "nbdkit -U with a non-UTF-8 path");
    let out = stdout_str(&o);
    assert!(out.starts_with("1048576\n"), "{out}");
    assert!(out.contains("sock%FF%FE"), "{out}");
    assert_eq!(std::fs::read(dir.path().join("unixsocket")).unwrap(), raw);
}

/// `-e` takes any bytes, as C nbdkit does: `$exportname` holds them as
/// given and `$uri` percent-encodes them.
#[test]
fn an_export_name_that_is_not_utf8_reaches_run() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let o = run_cmd(
        nbdkit()
            .args([
                std::ffi::OsStr::new("-e"),
                std::ffi::OsStr::from_bytes(b"a\xffb c"),
                "memory".as_ref(),
                "1M".as_ref(),
                "--run".as_ref(),
                "printf '%s' \"$exportname\" > exportname; echo \"$uri\"".as_ref(),
            ])
            .current_dir(dir.path()),
        TIMEOUT,
    );
    assert_success(&o, "nbdkit -e with a non-UTF-8 name");
    let out = stdout_str(&o);
    assert!(out.starts_with("nbd+unix:///a%FFb%20c?socket="), "{out}");
    assert_eq!(
        std::fs::read(dir.path().join("exportname")).unwrap(),
        b"a\xffb c"
    );
}

/// `file=` takes a path that is any bytes; other parameters must be text
/// and say so.
#[test]
fn a_file_path_that_is_not_utf8_is_served() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let mut raw = dir.path().as_os_str().as_bytes().to_vec();
    raw.extend_from_slice(b"/disk\xfe");
    let path = std::ffi::OsStr::from_bytes(&raw);
    std::fs::write(path, vec![7u8; 65536]).unwrap();
    let mut param = b"file=".to_vec();
    param.extend_from_slice(&raw);
    let o = run_cmd(
        nbdkit().env("PATH", client_path()).args([
            "-U".as_ref(),
            "-".as_ref(),
            "file".as_ref(),
            std::ffi::OsStr::from_bytes(&param),
            "--run".as_ref(),
            std::ffi::OsStr::new("nbdinfo --size \"$uri\""),
        ]),
        TIMEOUT,
    );
    assert_success(&o, "nbdkit file= with a non-UTF-8 path");
    assert_eq!(stdout_str(&o), "65536\n");
    // The bare (magic) form as well.
    let o = run_cmd(
        nbdkit().env("PATH", client_path()).args([
            "-U".as_ref(),
            "-".as_ref(),
            "file".as_ref(),
            path,
            "--run".as_ref(),
            std::ffi::OsStr::new("nbdinfo --size \"$uri\""),
        ]),
        TIMEOUT,
    );
    assert_success(&o, "nbdkit file PATH with a non-UTF-8 path");
    let o = run_cmd(
        nbdkit().args([
            "-U".as_ref(),
            "-".as_ref(),
            "memory".as_ref(),
            std::ffi::OsStr::from_bytes(b"size=1\xff"),
        ]),
        TIMEOUT,
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr_str(&o);
    assert!(
        err.starts_with("nbdkit: error: size: value is not valid UTF-8"),
        "{err}"
    );
}
