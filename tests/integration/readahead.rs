//! The readahead filter with real clients: sequential reads reach the
//! plugin in a few large windows, data stays right under writes, and
//! parallel copies come out byte for byte.  (Over a slow web server it is
//! tested in `curl_filters`.)

use crate::harness::*;

/// Reads that reached the plugin, from the `-v` layer trace.
fn plugin_reads(log: &str, plugin: &str) -> usize {
    log.matches(&format!("debug: {plugin}: pread ")).count()
}

#[test]
fn sequential_64k_reads_reach_the_plugin_in_a_few_windows() {
    let data = pseudo_random(16 << 20, 11);
    let dir = tempfile::tempdir().unwrap();
    let disk = write_file(dir.path(), "disk.img", &data);
    let mut s = Server::start(&["-v", "--filter=readahead", "file", disk.to_str().unwrap()]);
    // 8 MiB in 64 KiB reads, one at a time, as the issue's client does.
    let out = python(
        &s.uri(),
        "import hashlib\n\
         m = hashlib.sha256()\n\
         for i in range(128):\n\
         \x20   m.update(h.pread(65536, i * 65536))\n\
         print(m.hexdigest())\n",
        &[],
    );
    let want = {
        use std::process::Command;
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!("head -c 8388608 {} | sha256sum", disk.display()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(out.trim(), want);
    s.stop_ok();
    let n = plugin_reads(&s.stderr(), "file");
    assert!(n <= 8, "{n} reads reached the plugin for 128 client reads");
    assert!(n >= 2, "the trace shows {n} plugin reads");
}

#[test]
fn random_reads_go_straight_through() {
    let mut s = Server::start(&["-v", "--filter=readahead", "memory", "64M"]);
    python(
        &s.uri(),
        "for off in [40 << 20, 3 << 20, 17 << 20, 9 << 20, 60 << 20, 1 << 20]:\n\
         \x20   assert h.pread(4096, off) == bytes(4096)\n",
        &[],
    );
    s.stop_ok();
    // Each seek resets the window: one plugin read per client read, none
    // bigger than the request.
    let log = s.stderr();
    assert_eq!(plugin_reads(&log, "memory"), 6, "{log}");
    assert!(!log.contains("memory: pread count=131072"), "{log}");
}

#[test]
fn reads_after_writes_see_the_writes_on_every_connection() {
    let s = Server::start(&["--filter=readahead", "memory", "16M"]);
    // Connection 1 reads ahead over the first MiB, connection 2 writes
    // into it, connection 1 must see the write.
    let out = python(
        &s.uri(),
        "import nbd, sys\n\
         h2 = nbd.NBD()\n\
         h2.connect_uri(sys.argv[1])\n\
         for i in range(8):\n\
         \x20   assert h.pread(65536, i * 65536) == bytes(65536)\n\
         h2.pwrite(b'\\xab' * 4096, 9 * 65536 + 100)\n\
         h.pwrite(b'\\xcd' * 10, 10 * 65536)\n\
         h2.zero(65536, 12 * 65536)\n\
         got = h.pread(4 * 65536, 8 * 65536)\n\
         want = bytearray(4 * 65536)\n\
         want[65536 + 100:65536 + 4196] = b'\\xab' * 4096\n\
         want[2 * 65536:2 * 65536 + 10] = b'\\xcd' * 10\n\
         assert got == bytes(want)\n\
         print('fresh')\n",
        &[&s.uri()],
    );
    assert_eq!(out.trim(), "fresh");
}

#[test]
fn parallel_copies_come_out_byte_for_byte() {
    let data = pseudo_random(24 << 20, 5);
    let dir = tempfile::tempdir().unwrap();
    let disk = write_file(dir.path(), "disk.img", &data);
    let s = Server::start(&["-r", "--filter=readahead", "file", disk.to_str().unwrap()]);
    let out1 = dir.path().join("nbdcopy.img");
    nbdcopy(&[&s.uri(), out1.to_str().unwrap()]);
    assert!(
        std::fs::read(&out1).unwrap() == data,
        "nbdcopy copy differs"
    );
    let out2 = dir.path().join("qemu.img");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        &s.uri(),
        out2.to_str().unwrap(),
    ]);
    assert!(
        std::fs::read(&out2).unwrap() == data,
        "qemu-img copy differs"
    );
}
