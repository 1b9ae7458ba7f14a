//! The readahead, retry and retry-request filters over the curl plugin and
//! our own test web server: a slow server (readahead must cut the number
//! of HTTP requests), and a flaky one (the retrying filters must make the
//! copy come out byte for byte, where without them it fails).

use crate::harness::*;
use crate::webserver::{Failure, WebOptions, WebServer};

/// Read `len` bytes sequentially in 64 KiB requests, one at a time, and
/// compare them with `file`; prints the seconds taken.
const SEQUENTIAL: &str = r#"
import time
want = open(sys.argv[2], "rb").read()
t = time.time()
for off in range(0, len(want), 65536):
    assert h.pread(65536, off) == want[off:off + 65536], off
print("%.3f" % (time.time() - t))
"#;

#[test]
fn readahead_cuts_the_requests_a_sequential_reader_makes() {
    let data = pseudo_random(8 << 20, 21);
    let dir = tempfile::tempdir().unwrap();
    let copy = write_file(dir.path(), "want", &data);
    let mut times = Vec::new();
    let mut counts = Vec::new();
    for filter in [None, Some("--filter=readahead")] {
        let web = WebServer::start(
            data.clone(),
            WebOptions {
                delay_ms: 20,
                ..Default::default()
            },
        );
        let url = web.url();
        let mut args = vec!["-r"];
        args.extend(filter);
        args.extend(["curl", &url]);
        let mut s = Server::start(&args);
        let out = python(&s.uri(), SEQUENTIAL, &[copy.to_str().unwrap()]);
        times.push(out.trim().to_string());
        s.stop_ok();
        counts.push(web.requests());
    }
    eprintln!(
        "8 MiB in 64 KiB reads at 20 ms a request: {} s and {} requests without readahead, {} s and {} with",
        times[0], counts[0], times[1], counts[1]
    );
    // One GET per client read without the filter (plus the size probe).
    assert!(counts[0] >= 128, "{counts:?}");
    // With it, a handful of growing windows.
    assert!(counts[1] <= 16, "{counts:?}");
}

/// A web server failing every 3rd request with 503.
fn flaky(data: &[u8]) -> WebServer {
    WebServer::start(
        data.to_vec(),
        WebOptions {
            fail_every: Some((3, Failure::Status(503))),
            ..Default::default()
        },
    )
}

/// Copy the flaky server's file out through `filter` (with its
/// parameters) and `tool`: did it succeed, what arrived, the log.
fn copy_with(
    filter: Option<&str>,
    params: &[&str],
    data: &[u8],
    tool: &str,
) -> (bool, Vec<u8>, String) {
    let web = flaky(data);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.img");
    let url = web.url();
    let mut args = vec!["-r", "-U", "-"];
    args.extend(filter);
    args.extend(["curl", &url, "connections=4"]);
    args.extend_from_slice(params);
    let cmd = match tool {
        "nbdcopy" => format!("nbdcopy \"$uri\" {}", out.display()),
        _ => format!("qemu-img convert -f raw -O raw \"$uri\" {}", out.display()),
    };
    args.extend(["--run", &cmd]);
    let o = run_cmd(
        nbdkit().env("PATH", client_path()).args(&args),
        LONG_TIMEOUT,
    );
    assert_no_panic(&o);
    let got = std::fs::read(&out).unwrap_or_default();
    (o.status.success(), got, stderr_str(&o))
}

#[test]
fn without_a_retrying_filter_the_flaky_copy_fails() {
    let data = pseudo_random(8 << 20, 22);
    for tool in ["nbdcopy", "qemu-img"] {
        let (ok, got, err) = copy_with(None, &[], &data, tool);
        assert!(
            !(ok && got == data),
            "{tool} copy succeeded without retries\n{err}"
        );
        assert!(err.contains("HTTP status 503"), "{err}");
    }
}

#[test]
fn retry_request_makes_the_flaky_copy_exact() {
    let data = pseudo_random(8 << 20, 23);
    for tool in ["nbdcopy", "qemu-img"] {
        let (ok, got, err) = copy_with(
            Some("--filter=retry-request"),
            &["retry-request-delay=10ms", "retry-request-retries=10"],
            &data,
            tool,
        );
        assert!(ok, "{tool}: {err}");
        assert!(got == data, "{tool}: the copy differs");
    }
}

#[test]
fn retry_makes_the_flaky_copy_exact() {
    let data = pseudo_random(8 << 20, 24);
    for tool in ["nbdcopy", "qemu-img"] {
        let (ok, got, err) = copy_with(
            Some("--filter=retry"),
            &["retry-delay=10ms", "retries=10", "retry-exponential=no"],
            &data,
            tool,
        );
        assert!(ok, "{tool}: {err}");
        assert!(got == data, "{tool}: the copy differs");
    }
}

#[test]
fn retry_rides_out_dropped_connections() {
    let data = pseudo_random(8 << 20, 25);
    let web = WebServer::start(
        data.clone(),
        WebOptions {
            fail_every: Some((4, Failure::Drop)),
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.img");
    let url = web.url();
    let cmd = format!("nbdcopy \"$uri\" {}", out.display());
    let o = run_cmd(
        nbdkit().env("PATH", client_path()).args([
            "-r",
            "-U",
            "-",
            "--filter=retry",
            "curl",
            &url,
            "retry-delay=10ms",
            "retries=10",
            "--run",
            &cmd,
        ]),
        LONG_TIMEOUT,
    );
    assert_success(&o, "nbdcopy through retry over dropped connections");
    assert!(std::fs::read(&out).unwrap() == data, "the copy differs");
}

/// The issue's seed commands verbatim, against lighttpd: nbdcopy out of
/// curl through each filter, checked with cmp.
#[test]
fn seed_commands_copy_from_lighttpd_through_each_filter() {
    let web = crate::webserver::Lighttpd::start();
    let data = pseudo_random(6 << 20, 26);
    web.write("disk.img", &data);
    let url = web.url("disk.img");
    for filter in ["readahead", "retry", "retry-request"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let arg = format!("--filter={filter}");
        let cmd = format!("nbdcopy \"$uri\" {}", out.display());
        let o = run_cmd(
            nbdkit()
                .env("PATH", client_path())
                .args(["-U", "-", &arg, "curl", &url, "--run", &cmd]),
            LONG_TIMEOUT,
        );
        assert_success(&o, filter);
        let cmp = std::process::Command::new("cmp")
            .arg(&out)
            .arg(web.root().join("disk.img"))
            .status()
            .unwrap();
        assert!(cmp.success(), "{filter}: cmp found a difference");
    }
}
