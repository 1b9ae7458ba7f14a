//! Accepting connections when the server is out of file descriptors.

use crate::harness::*;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::time::Duration;

/// The server's user plus system CPU time, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Under `ulimit -n 32`, 60 clients connecting at once exhaust the
/// server's descriptors.  It must pause accepting instead of spinning on
/// `accept` (C nbdkit uses a whole core and logs tens of MB a second), log
/// the shortage once, and serve a new client once descriptors are free.
#[test]
fn out_of_descriptors_pauses_accepting() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_with(dir, &["memory", "1M"], |cmd| {
        // SAFETY: setrlimit is async-signal-safe and touches no memory of
        // the parent.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 32,
                    rlim_max: 32,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let before = cpu_ticks(s.pid());
    let clients: Vec<UnixStream> = (0..60)
        .filter_map(|_| UnixStream::connect(&s.sock).ok())
        .collect();
    assert!(
        clients.len() >= 40,
        "only {} clients connected",
        clients.len()
    );
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(s.pid()) - before;
    assert!(s.is_running(), "server died:\n{}", s.stderr());
    drop(clients);
    // Descriptors are free again: a new client is served.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(nbdinfo(&["--size", &s.uri()]).trim(), "1048576");
    let err = s.stderr();
    // Generous bounds: a spinning accept loop uses ~200 ticks in 2 s and
    // logs hundreds of thousands of lines.
    assert!(
        spent < 50,
        "server used {spent} ticks while out of descriptors"
    );
    let lines = err.lines().filter(|l| l.contains("accept")).count();
    assert!(
        lines <= 3,
        "{lines} accept lines logged:\n{}",
        &err[..err.len().min(2000)]
    );
    s.stop_ok();
}
