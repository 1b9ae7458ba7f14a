//! The `scan` filter prefetches the whole disk in the background: over
//! `curl` with the cache filter below it, the web server sees the whole
//! file fetched although the client reads nothing.

use crate::cli::expect_error;
use crate::harness::*;
use crate::webserver::{WebOptions, WebServer};
use std::time::{Duration, Instant};

#[test]
fn scan_prefetches_the_whole_disk_without_client_reads() {
    let data = pseudo_random(4 << 20, 3);
    let web = WebServer::start(data.clone(), WebOptions::default());
    let s = Server::start(&[
        "--filter=scan",
        "--filter=cache",
        "curl",
        &web.url(),
        "scan-size=512K",
    ]);
    let before = web.requests();
    // Stay connected, reading nothing, until the scan has fetched the
    // file (eight 512K blocks) or a generous deadline passes.
    let out = python(
        &s.uri(),
        "import time\ntime.sleep(float(sys.argv[2]))\nprint(h.get_size())\n",
        &["3"],
    );
    assert_eq!(out.trim(), "4194304");
    let deadline = Instant::now() + Duration::from_secs(30);
    while web.requests() < before + 8 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        web.requests() >= before + 8,
        "only {} requests reached the web server",
        web.requests() - before
    );
    // And the data served afterwards is the file's.
    let out = python(
        &s.uri(),
        "import hashlib\nprint(hashlib.sha256(h.pread(4 << 20, 0)).hexdigest())\n",
        &[],
    );
    let want = {
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let f = write_file(dir.path(), "d", &data);
        let o = Command::new("sha256sum")
            .arg(&f)
            .stdout(Stdio::piped())
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(out.trim(), want);
}

#[test]
fn scan_warns_and_serves_when_it_cannot_scan() {
    // null cannot cache natively: the filter warns and passes through.
    let s = Server::start(&["--filter=scan", "null", "1M"]);
    assert_eq!(nbdsh(&s.uri(), "print(len(h.pread(512, 0)))").trim(), "512");
}

#[test]
fn scan_bad_parameters_are_startup_errors() {
    for arg in [
        "scan-size=1000",
        "scan-size=64M",
        "scan-size=big",
        "scan-ahead=perhaps",
    ] {
        let err = expect_error(&["--filter=scan", "memory", "1M", arg], true);
        assert!(!err.is_empty(), "{arg}");
    }
    let err = expect_error(&["--filter=scan", "memory", "1M", "scan-size=1000"], true);
    assert!(
        err.contains("scan-size parameter should be [512..32M] and a power of two"),
        "{err}"
    );
}
