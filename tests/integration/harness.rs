//! Shared helpers for the integration tests: locating the binary under
//! test, running it with a watchdog, a `Server` guard that always reaps the
//! server, and wrappers around the real NBD clients.

#![allow(dead_code)] // not every helper is used by every module

use std::ffi::OsStr;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Generous timeout for anything we wait for.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout for heavier client runs (copies, fio).
pub const LONG_TIMEOUT: Duration = Duration::from_secs(180);

/// The binary under test: `$NBDKIT_TEST_BINARY` or the one cargo built.
pub fn binary() -> PathBuf {
    match std::env::var_os("NBDKIT_TEST_BINARY") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_nbdkit")),
    }
}

/// True when the tests are pointed at the C nbdkit (reference runs).
pub fn testing_c_nbdkit() -> bool {
    binary() == Path::new("/usr/bin/nbdkit") || binary() == Path::new("/usr/sbin/nbdkit")
}

/// A `Command` for the binary under test, in its own process group so that a
/// watchdog can kill everything it forked.
pub fn nbdkit() -> Command {
    let mut cmd = Command::new(binary());
    // As a user would run it from PATH (getopt messages use argv[0]).
    cmd.arg0("nbdkit");
    cmd.process_group(0);
    cmd.stdin(Stdio::null());
    cmd
}

/// Send `sig` to the process group led by `pid` (and the process itself).
pub fn kill_group(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(-(pid as i32), sig);
        libc::kill(pid as i32, sig);
    }
}

/// Wait for `child` up to `timeout`, collecting stdout/stderr. On timeout the
/// whole process group is killed and the test panics naming `what`.
pub fn wait_output(mut child: Child, timeout: Duration, what: &str) -> Output {
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut v);
        }
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_end(&mut v);
        }
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if start.elapsed() > timeout {
            kill_group(child.id(), libc::SIGKILL);
            let _ = child.wait();
            panic!("{what}: still running after {timeout:?}; killed");
        }
        thread::sleep(Duration::from_millis(20));
    };
    // A grandchild could keep the pipes open; don't hang on it.
    let deadline = Instant::now() + TIMEOUT;
    while !(t_out.is_finished() && t_err.is_finished()) {
        if Instant::now() > deadline {
            panic!("{what}: exited but its output pipes stay open (leaked process?)");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// Run a prepared command with a timeout, capturing output. Panics with a clear
/// message if the program is not installed.
pub fn run_cmd(cmd: &mut Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!(
                "required program {:?} is not installed (or not on PATH): {e}",
                cmd.get_program()
            )
        }
        Err(e) => panic!("cannot spawn {what}: {e}"),
    };
    wait_output(child, timeout, &what)
}

/// Run nbdkit with `args` (in its own process group, stdin /dev/null).
pub fn run<S: AsRef<OsStr>>(args: &[S]) -> Output {
    run_cmd(nbdkit().args(args), TIMEOUT)
}

pub fn stdout_str(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr_str(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert the command succeeded, with a message showing both streams.
#[track_caller]
pub fn assert_success(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed with {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        stdout_str(o),
        stderr_str(o)
    );
}

/// Run nbdkit expecting success; return stdout.
#[track_caller]
pub fn run_ok<S: AsRef<OsStr>>(args: &[S]) -> String {
    let o = run(args);
    assert_success(&o, "nbdkit");
    stdout_str(&o)
}

/// Run a `--run` captive nbdkit: `nbdkit ARGS... --run SCRIPT`, expect exit 0,
/// return stdout.
#[track_caller]
pub fn captive(args: &[&str], script: &str) -> String {
    let mut full: Vec<&str> = args.to_vec();
    full.push("--run");
    full.push(script);
    let o = run_cmd(
        nbdkit().args(&full).env("PATH", client_path()),
        LONG_TIMEOUT,
    );
    assert_success(&o, &format!("nbdkit {full:?}"));
    stdout_str(&o)
}

/// PATH with /usr/bin first (so nbdsh finds the python3 that has libnbd).
pub fn client_path() -> String {
    let old = std::env::var("PATH").unwrap_or_default();
    format!("/usr/bin:/bin:/usr/sbin:/sbin:{old}")
}

/// A client command: absolute program preferred, PATH starting with /usr/bin.
pub fn client(prog: &str) -> Command {
    let mut c = Command::new(prog);
    c.env("PATH", client_path());
    c.stdin(Stdio::null());
    c.process_group(0);
    c
}

/// Run a client program and insist it succeeds; return its output.
#[track_caller]
pub fn client_ok<S: AsRef<OsStr>>(prog: &str, args: &[S]) -> Output {
    let mut c = client(prog);
    c.args(args);
    let o = run_cmd(&mut c, LONG_TIMEOUT);
    assert_success(
        &o,
        &format!("{prog} {:?}", c.get_args().collect::<Vec<_>>()),
    );
    o
}

/// Run a client program, returning its output whatever the status.
pub fn client_any<S: AsRef<OsStr>>(prog: &str, args: &[S]) -> Output {
    let mut c = client(prog);
    c.args(args);
    run_cmd(&mut c, LONG_TIMEOUT)
}

#[track_caller]
pub fn nbdinfo<S: AsRef<OsStr>>(args: &[S]) -> String {
    stdout_str(&client_ok("/usr/bin/nbdinfo", args))
}

#[track_caller]
pub fn qemu_img<S: AsRef<OsStr>>(args: &[S]) -> String {
    stdout_str(&client_ok("/usr/bin/qemu-img", args))
}

#[track_caller]
pub fn qemu_io<S: AsRef<OsStr>>(args: &[S]) -> String {
    stdout_str(&client_ok("/usr/bin/qemu-io", args))
}

#[track_caller]
pub fn nbdcopy<S: AsRef<OsStr>>(args: &[S]) -> String {
    stdout_str(&client_ok("/usr/bin/nbdcopy", args))
}

#[track_caller]
pub fn fio<S: AsRef<OsStr>>(args: &[S]) -> String {
    stdout_str(&client_ok("/usr/bin/fio", args))
}

/// Run `nbdsh -u URI -c SCRIPT` (the `h` handle is connected). Returns stdout.
#[track_caller]
pub fn nbdsh(uri: &str, script: &str) -> String {
    stdout_str(&client_ok("/usr/bin/nbdsh", &["-u", uri, "-c", script]))
}

/// Python prelude for libnbd scripts: `h` connected to `sys.argv[1]`.
pub const PY_PRELUDE: &str = "import nbd, sys, os\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\n";

/// Run a libnbd Python script (with `PY_PRELUDE`) against `uri` using
/// /usr/bin/python3; extra args follow the URI in sys.argv. Returns stdout.
#[track_caller]
pub fn python(uri: &str, script: &str, extra: &[&str]) -> String {
    let full = format!("{PY_PRELUDE}{script}");
    let mut args = vec!["-c", &full, uri];
    args.extend_from_slice(extra);
    stdout_str(&client_ok("/usr/bin/python3", &args))
}

/// Like `python` but returns the raw output whatever the status.
pub fn python_any(uri: &str, script: &str, extra: &[&str]) -> Output {
    let full = format!("{PY_PRELUDE}{script}");
    let mut args = vec!["-c", &full, uri];
    args.extend_from_slice(extra);
    client_any("/usr/bin/python3", &args)
}

/// Held by the (only) tests that may bind the default port 10809.
pub static PORT_10809: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Take the 10809 lock even if a previous holder panicked.
pub fn lock_10809() -> std::sync::MutexGuard<'static, ()> {
    PORT_10809.lock().unwrap_or_else(|e| e.into_inner())
}

/// Pick a currently free TCP port on 127.0.0.1 (never 10809).
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let p = l.local_addr().unwrap().port();
        drop(l);
        if p != 10809 {
            return p;
        }
    }
}

/// A running nbdkit server in the foreground. Killed and reaped on drop.
pub struct Server {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    pub sock: PathBuf,
    pub port: Option<u16>,
    stderr_path: PathBuf,
}

impl Server {
    /// `nbdkit -f -U <tmp>/sock -P <tmp>/pid ARGS...`
    #[track_caller]
    pub fn start(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, args)
    }

    /// Like `start` but in an existing tempdir (files for the plugin may live there).
    #[track_caller]
    pub fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Server {
        Self::start_with(dir, args, |_| {})
    }

    /// Like `start_in`, letting `setup` adjust the command first (for
    /// example to pass the server an inherited file descriptor).
    #[track_caller]
    pub fn start_with(
        dir: tempfile::TempDir,
        args: &[&str],
        mut setup: impl FnMut(&mut Command),
    ) -> Server {
        let sock = dir.path().join("sock");
        let pre: Vec<String> = vec![
            "-f".into(),
            "-U".into(),
            sock.display().to_string(),
            "-P".into(),
            dir.path().join("pid").display().to_string(),
        ];
        match Self::spawn(dir, sock, None, &pre, args, &mut setup) {
            Ok(s) => s,
            Err((_, msg)) => panic!("{msg}"),
        }
    }

    /// `nbdkit -f -i 127.0.0.1 -p PORT -P <tmp>/pid ARGS...` on a free port.
    #[track_caller]
    pub fn start_tcp(args: &[&str]) -> Server {
        let mut dir = tempfile::tempdir().expect("tempdir");
        for _ in 0..10 {
            let port = free_port();
            let pre: Vec<String> = vec![
                "-f".into(),
                "-i".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
                "-P".into(),
                dir.path().join("pid").display().to_string(),
            ];
            let sock = dir.path().join("sock");
            match Self::spawn(dir, sock, Some(port), &pre, args, &mut |_| {}) {
                Ok(s) => return s,
                Err((d, msg)) => {
                    if !msg.contains("in use") {
                        panic!("{msg}");
                    }
                    dir = d;
                }
            }
        }
        panic!("could not find a free TCP port after 10 tries");
    }

    fn spawn(
        dir: tempfile::TempDir,
        sock: PathBuf,
        port: Option<u16>,
        pre: &[String],
        args: &[&str],
        setup: &mut dyn FnMut(&mut Command),
    ) -> Result<Server, (tempfile::TempDir, String)> {
        let pidfile = dir.path().join("pid");
        let _ = std::fs::remove_file(&pidfile);
        let stderr_path = dir.path().join("nbdkit.stderr");
        let errf = std::fs::File::create(&stderr_path).expect("create stderr file");
        let mut cmd = nbdkit();
        cmd.args(pre).args(args);
        cmd.stdout(Stdio::null()).stderr(errf);
        setup(&mut cmd);
        let desc = format!("{cmd:?}");
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {desc}: {e}"));
        let mut server = Server {
            child: Some(child),
            dir: Some(dir),
            sock,
            port,
            stderr_path,
        };
        let start = Instant::now();
        loop {
            if let Ok(s) = std::fs::read_to_string(&pidfile) {
                if !s.trim().is_empty() {
                    return Ok(server);
                }
            }
            let child = server.child.as_mut().unwrap();
            if let Some(st) = child.try_wait().expect("try_wait") {
                server.child = None;
                let msg = format!(
                    "nbdkit exited ({st:?}) before writing its pidfile: {desc}\n--- stderr ---\n{}",
                    server.stderr()
                );
                let dir = server.dir.take().unwrap();
                return Err((dir, msg));
            }
            if start.elapsed() > TIMEOUT {
                let msg = format!(
                    "nbdkit did not write its pidfile within {TIMEOUT:?}: {desc}\n--- stderr ---\n{}",
                    server.stderr()
                );
                drop(server);
                panic!("{msg}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The NBD URI of the server (default export).
    pub fn uri(&self) -> String {
        match self.port {
            Some(p) => format!("nbd://127.0.0.1:{p}"),
            None => format!("nbd+unix:///?socket={}", self.sock.display()),
        }
    }

    /// URI for a named export (`name` must not need percent-encoding).
    pub fn uri_export(&self, name: &str) -> String {
        match self.port {
            Some(p) => format!("nbd://127.0.0.1:{p}/{name}"),
            None => format!("nbd+unix:///{name}?socket={}", self.sock.display()),
        }
    }

    /// The server's private temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// What the server wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Wait (up to 30 s) for the server to exit by itself; returns its
    /// status.  Panics, showing its stderr, if it is still running.
    #[track_caller]
    pub fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        while self.is_running() {
            if start.elapsed() > TIMEOUT {
                panic!(
                    "nbdkit still running {TIMEOUT:?} after it should have exited\n--- stderr ---\n{}",
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.stop()
    }

    /// Is the server process still running?
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// SIGTERM the server and wait (up to 30 s) for it; returns its status.
    /// SIGKILLs and panics if it does not exit.
    #[track_caller]
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server already stopped");
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        kill_group(child.id(), libc::SIGTERM);
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                return st;
            }
            if start.elapsed() > TIMEOUT {
                kill_group(child.id(), libc::SIGKILL);
                let _ = child.wait();
                panic!("nbdkit did not exit within {TIMEOUT:?} of SIGTERM");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop and assert a clean exit (status 0, not killed by a signal).
    #[track_caller]
    pub fn stop_ok(&mut self) {
        let st = self.stop();
        assert!(
            st.success(),
            "nbdkit exited with {st:?} (signal {:?}) after SIGTERM\n--- stderr ---\n{}",
            st.signal(),
            self.stderr()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(child.id(), libc::SIGTERM);
            let start = Instant::now();
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if start.elapsed() > TIMEOUT {
                    kill_group(child.id(), libc::SIGKILL);
                    let _ = child.wait();
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Write `data` to a new file `name` in `dir` and return its path.
pub fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write file");
    p
}

/// Deterministic pseudo-random bytes (xorshift), so failures are reproducible.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Panic text check used by the error tests.
#[track_caller]
pub fn assert_no_panic(o: &Output) {
    let e = stderr_str(o);
    assert!(
        !e.contains("panicked") && !e.contains("RUST_BACKTRACE"),
        "nbdkit panicked:\n{e}"
    );
    assert!(
        o.status.signal().is_none(),
        "nbdkit was killed by signal {:?}\n{e}",
        o.status.signal()
    );
}

/// Run `jq -c FILTER` on `input`; returns jq's stdout.
#[track_caller]
pub fn jq(filter: &str, input: &str) -> String {
    use std::io::Write;
    let mut c = client("/usr/bin/jq");
    c.args(["-c", filter]).stdin(Stdio::piped());
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("required program jq is not installed: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let data = input.as_bytes().to_vec();
    let w = thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let o = wait_output(child, TIMEOUT, "jq");
    w.join().unwrap();
    assert_success(&o, &format!("jq {filter} on:\n{input}"));
    stdout_str(&o)
}

/// `qemu-img map --output=json` of `target` (with `-f raw`), as compact JSON
/// with the host-specific "offset" field removed.
#[track_caller]
pub fn qemu_img_map(target: &str) -> String {
    let out = qemu_img(&["map", "--output=json", "-f", "raw", target]);
    // qemu 8.2 added "compressed"; Debian 12's qemu 7.2 does not print it.
    jq("map(del(.offset) | del(.compressed))", &out)
        .trim()
        .to_string()
}

/// Is `pid` a live process?  A zombie counts as gone: in some sandboxes
/// PID 1 reaps orphans late.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

pub fn read_pid(p: &Path) -> i32 {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("pidfile {}: {e}", p.display()))
        .trim()
        .parse()
        .expect("pidfile holds a number")
}

/// Send SIGTERM and wait for the process to go.
pub fn terminate(pid: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let start = Instant::now();
    while alive(pid) {
        assert!(start.elapsed() < TIMEOUT, "daemon {pid} ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}
