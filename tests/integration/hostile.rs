//! Clients that try to exhaust the server: thousands of connections, huge
//! `-t`, pipelined requests whose replies are never read.  The server must
//! keep serving others, stay within a sane number of threads, and still
//! stop promptly on SIGTERM.

use crate::harness::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Raise this process's open file limit (inherited by the server) so that
/// thousands of connections fit on both sides.
fn raise_nofile(want: u64) {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl), 0);
        rl.rlim_cur = want.min(rl.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &rl), 0);
    }
}

/// Connect and negotiate the default export with NBD_OPT_GO (fixed
/// newstyle, no zeroes, simple replies).
fn handshake(sock: &Path) -> UnixStream {
    handshake_on(UnixStream::connect(sock).expect("connect"))
}

fn handshake_on(mut s: UnixStream) -> UnixStream {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut greet = [0u8; 18];
    s.read_exact(&mut greet).expect("greeting");
    assert_eq!(&greet[..16], b"NBDMAGICIHAVEOPT");
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut opt = Vec::new();
    opt.extend_from_slice(b"IHAVEOPT");
    opt.extend_from_slice(&7u32.to_be_bytes()); // NBD_OPT_GO
    opt.extend_from_slice(&6u32.to_be_bytes());
    opt.extend_from_slice(&0u32.to_be_bytes()); // export name ""
    opt.extend_from_slice(&0u16.to_be_bytes()); // no info requests
    s.write_all(&opt).unwrap();
    loop {
        let mut hdr = [0u8; 20];
        s.read_exact(&mut hdr).expect("option reply");
        let kind = u32::from_be_bytes(hdr[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(hdr[16..20].try_into().unwrap()) as usize;
        let mut data = vec![0u8; len];
        s.read_exact(&mut data).unwrap();
        match kind {
            1 => return s, // NBD_REP_ACK
            3 => continue, // NBD_REP_INFO
            other => panic!("NBD_OPT_GO refused: reply type 0x{other:x}"),
        }
    }
}

fn read_request(cookie: u64, offset: u64, len: u32) -> [u8; 28] {
    let mut r = [0u8; 28];
    r[..4].copy_from_slice(&0x2560_9513u32.to_be_bytes());
    r[6..8].copy_from_slice(&0u16.to_be_bytes()); // NBD_CMD_READ
    r[8..16].copy_from_slice(&cookie.to_be_bytes());
    r[16..24].copy_from_slice(&offset.to_be_bytes());
    r[24..28].copy_from_slice(&len.to_be_bytes());
    r
}

/// A number from `/proc/PID/status` (`Threads:`, `VmRSS:` in KiB, ...).
fn status_number(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} line"))
}

fn threads_of(pid: u32) -> usize {
    status_number(pid, "Threads:") as usize
}

#[test]
fn huge_thread_count_serves_parallel_requests() {
    let srv = Server::start(&["-t", "100000", "memory", "64M"]);
    let out = python(
        &srv.uri(),
        "h.aio_pwrite(b'x' * 65536, 0)\n\
         for i in range(32):\n    h.aio_pread(nbd.Buffer(1 << 20), i << 20)\n\
         while h.aio_in_flight() > 0:\n    h.poll(-1)\n\
         print(h.pread(1, 0))\n",
        &[],
    );
    assert!(out.contains("b'x'"), "{out}");
    nbdinfo(&[srv.uri()]);
    assert!(
        threads_of(srv.pid()) < 200,
        "{} threads",
        threads_of(srv.pid())
    );
}

#[test]
fn thousands_of_idle_clients_do_not_exhaust_threads() {
    raise_nofile(20000);
    let mut srv = Server::start(&["memory", "64M"]);
    let clients: Vec<UnixStream> = (0..2000).map(|_| handshake(&srv.sock)).collect();
    // Each has made one request, so each connection has been served.
    for (i, c) in clients.iter().enumerate().step_by(100) {
        let mut c = c;
        c.write_all(&read_request(i as u64, 0, 512)).unwrap();
        let mut reply = [0u8; 16 + 512];
        c.read_exact(&mut reply).expect("reply");
        assert_eq!(&reply[4..8], &[0, 0, 0, 0], "read failed");
    }
    let info = nbdinfo(&["--size", &srv.uri()]);
    assert_eq!(info.trim(), "67108864");
    assert!(srv.is_running());
    // An idle connection costs one thread and one fd (its socket).
    let n = threads_of(srv.pid());
    assert!(
        n < clients.len() + 100,
        "{n} threads for {} clients",
        clients.len()
    );
    let fds = std::fs::read_dir(format!("/proc/{}/fd", srv.pid()))
        .expect("fd dir")
        .count();
    assert!(
        fds < clients.len() + 100,
        "{fds} fds for {} clients",
        clients.len()
    );
    drop(clients);
    srv.stop_ok();
}

#[test]
fn pipelined_large_reads_are_held_to_the_connection_budget() {
    let mut srv = Server::start(&["memory", "1G"]);
    let mut c = handshake(&srv.sock);
    // 32 reads of 64 MiB, 2 GiB of replies, sent before reading any.
    for i in 0..32u64 {
        c.write_all(&read_request(i, (i % 16) << 26, 64 << 20))
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    let rss = status_number(srv.pid(), "VmRSS:");
    // Read every reply: all arrive, in full.
    let mut reply = vec![0u8; 16 + (64 << 20)];
    for _ in 0..32 {
        c.read_exact(&mut reply).expect("reply");
        assert_eq!(&reply[4..8], &[0, 0, 0, 0], "read failed");
    }
    let peak = status_number(srv.pid(), "VmHWM:");
    // One connection may hold 256 MiB of large requests: far from the
    // 16 x 64 MiB its workers could otherwise fill.
    assert!(rss < 512 * 1024, "RSS {rss} KiB while replies were unread");
    assert!(peak < 600 * 1024, "peak RSS {peak} KiB");
    drop(c);
    srv.stop_ok();
}

#[test]
fn sigterm_with_a_client_that_never_reads_replies() {
    let mut srv = Server::start(&["memory", "64M"]);
    let mut c = handshake(&srv.sock);
    c.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    // Pipeline 1 MiB reads until the server's replies fill every buffer and
    // its workers block writing them.
    for i in 0..64u64 {
        if c.write_all(&read_request(i, (i % 64) << 20, 1 << 20))
            .is_err()
        {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(srv.is_running());
    kill_group(srv.pid(), libc::SIGTERM);
    let start = Instant::now();
    while srv.is_running() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "server still running 5 s after SIGTERM\n{}",
            srv.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(c);
}

#[test]
fn sigterm_in_single_mode_with_a_client_that_never_reads_replies() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let stdout = theirs.try_clone().unwrap();
    let mut child = nbdkit()
        .args(["-s", "memory", "64M"])
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            theirs,
        )))
        .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            stdout,
        )))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("nbdkit -s");
    let mut c = handshake_on(ours);
    c.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    for i in 0..64u64 {
        if c.write_all(&read_request(i, (i % 64) << 20, 1 << 20))
            .is_err()
        {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "nbdkit -s exited early"
    );
    kill_group(child.id(), libc::SIGTERM);
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.code().is_some(), "killed by a signal: {st:?}");
            break;
        }
        if start.elapsed() > Duration::from_secs(5) {
            kill_group(child.id(), libc::SIGKILL);
            let _ = child.wait();
            panic!("nbdkit -s still running 5 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(c);
}
