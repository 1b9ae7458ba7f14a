//! The rate filter: a copy through it takes about as long as the token
//! bucket says (generous bounds; exact figures belong in bench/), rates
//! change at run time through rate files, and bad parameters are startup
//! errors.

use crate::cli::expect_error;
use crate::harness::*;
use std::time::{Duration, Instant};

#[test]
fn rate_paces_a_copy_after_the_initial_burst() {
    // 16 MiB at 32 Mbit/s (4 MiB/s) with a 2 s (8 MiB) burst: about 2 s.
    let t0 = Instant::now();
    captive(
        &["-U", "-", "--filter=rate", "memory", "16M", "rate=32M"],
        "nbdcopy --no-extents \"$uri\" null:",
    );
    let t = t0.elapsed();
    assert!(t >= Duration::from_millis(1700), "too fast: {t:?}");
    assert!(t < Duration::from_secs(12), "too slow: {t:?}");
}

#[test]
fn connection_rate_limits_each_connection() {
    // 8 MiB at 64 Mbit/s per connection, half a second of burst: ~0.5 s.
    let t0 = Instant::now();
    captive(
        &[
            "-U",
            "-",
            "--filter=rate",
            "memory",
            "8M",
            "connection-rate=64M",
            "burstiness=0.5",
        ],
        "nbdcopy --no-extents -C 1 \"$uri\" null:",
    );
    let t = t0.elapsed();
    assert!(t >= Duration::from_millis(400), "too fast: {t:?}");
    assert!(t < Duration::from_secs(10), "too slow: {t:?}");
}

#[test]
fn rate_file_changes_the_rate_while_connected() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rate");
    std::fs::write(&file, "10G\n").unwrap();
    let arg = format!("rate-file={}", file.display());
    let s = Server::start(&["--filter=rate", "memory", "8M", &arg]);
    // Fast at 10 Gbit/s; then 4 Mbit/s (a 1 MiB burst): 2 MiB more takes
    // at least 2 s.
    let out = python(
        &s.uri(),
        "import time\n\
         t = time.monotonic()\n\
         for i in range(8): h.pread(1 << 20, i << 20)\n\
         fast = time.monotonic() - t\n\
         open(sys.argv[2], 'w').write('4M\\n')\n\
         t = time.monotonic()\n\
         h.pread(1 << 20, 0)\n\
         h.pread(1 << 20, 0)\n\
         slow = time.monotonic() - t\n\
         print(fast < 1.5, slow >= 1.7, slow < 10)\n",
        &[&file.display().to_string()],
    );
    assert_eq!(out.trim(), "True True True");
}

#[test]
fn rate_bad_parameters_are_startup_errors() {
    for (bad, word) in [
        (vec!["rate=0"], "rate"),
        (vec!["rate=fast"], "rate"),
        (vec!["rate=1M", "rate=2M"], "twice"),
        (vec!["connection-rate=0"], "connection-rate"),
        (vec!["burstiness=lots"], "burstiness"),
        (vec!["burstiness=-1"], "burstiness"),
    ] {
        let mut args = vec!["--filter=rate", "memory", "1M"];
        args.extend(bad.iter());
        let e = expect_error(&args, true);
        assert!(e.contains(word), "{bad:?}: {e}");
    }
}
