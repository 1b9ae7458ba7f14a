//! Parallel requests, thread models and filters layered over a plugin:
//! out-of-order replies with `-t`, serialization with `--filter=noparallel`,
//! and shutdown cutting a slow request short.

use crate::harness::*;
use std::time::{Duration, Instant};

/// Run `requests` (Python issuing `aio_*` calls with `completion=done(NAME)`)
/// and print the names in the order the requests complete.
fn completion_order_of(uri: &str, requests: &str) -> String {
    let script = format!(
        r#"
order = []
def done(name):
    def cb(err):
        order.append(name)
        return 0
    return cb
{requests}
while h.aio_in_flight() > 0:
    h.poll(-1)
print(" ".join(order))
"#
    );
    python(uri, &script, &[]).trim().to_string()
}

/// Issue a slow write (3 s) at 512 then a quicker read (1 s) at 0 without
/// waiting, and give the order in which they complete.
fn completion_order(args: &[&str]) -> String {
    let mut full = vec!["--filter=delay", "memory", "1M", "wdelay=3", "rdelay=1"];
    full.extend_from_slice(args);
    let s = Server::start(&full);
    completion_order_of(
        &s.uri(),
        r#"h.aio_pwrite(b"x" * 512, 512, completion=done("write"))
h.aio_pread(nbd.Buffer(512), 0, completion=done("read"))"#,
    )
}

#[test]
fn parallel_requests_reply_out_of_order() {
    assert_eq!(completion_order(&[]), "read write");
}

/// Many quick requests first must not make the server run a slow one on
/// the worker that read it: the delay filter may wait, so a slow read still
/// overlaps a write sent while it runs.
#[test]
fn slow_request_after_quick_ones_still_overlaps() {
    let s = Server::start(&["--filter=delay", "memory", "1M", "rdelay=2"]);
    let requests = r#"
import time
for i in range(200):
    h.pwrite(b"q" * 512, i * 512)
h.aio_pread(nbd.Buffer(512), 0, completion=done("read"))
# The read is on its way alone; the write follows once it is running.
time.sleep(0.3)
h.aio_pwrite(b"x" * 512, 512, completion=done("write"))"#;
    assert_eq!(completion_order_of(&s.uri(), requests), "write read");
}

#[test]
fn one_thread_replies_in_order() {
    assert_eq!(completion_order(&["-t", "1"]), "write read");
}

#[test]
fn noparallel_serializes_requests() {
    assert_eq!(completion_order(&["--filter=noparallel"]), "write read");
}

#[test]
fn thread_model_is_the_strictest_layer() {
    let out = run_ok(&["--filter=noparallel", "memory", "1M", "--dump-plugin"]);
    assert!(out.contains("max_thread_model=parallel\n"), "{out}");
    assert!(out.contains("thread_model=serialize_requests\n"), "{out}");
    assert!(out.contains("noparallel_name=noparallel\n"), "{out}");
    let out = run_ok(&[
        "--filter=delay",
        "--filter=noparallel",
        "null",
        "serialize=all-requests",
        "rdelay=1",
        "--dump-plugin",
    ]);
    assert!(
        out.contains("thread_model=serialize_all_requests\n"),
        "{out}"
    );
    let out = run_ok(&["memory", "1M", "--dump-plugin"]);
    assert!(out.contains("thread_model=parallel\n"), "{out}");
}

#[test]
fn filter_versions_one_line_per_layer() {
    let out = run_ok(&[
        "--filter",
        "delay",
        "--filter=noparallel",
        "null",
        "--version",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].starts_with("nbdkit 1."), "{out}");
    assert!(lines[1].starts_with("delay 1."), "{out}");
    assert!(lines[2].starts_with("noparallel 1."), "{out}");
    assert!(lines[3].starts_with("null 1."), "{out}");
}

#[test]
fn filter_parameters_go_to_the_filter_and_bad_ones_fail() {
    let o = run(&[
        "--filter=noparallel",
        "null",
        "serialize=sometimes",
        "--run",
        "true",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr_str(&o));
    assert!(stderr_str(&o).contains("sometimes"), "{}", stderr_str(&o));
    let o = run(&["--filter=delay", "null", "rdelay=soon", "--run", "true"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr_str(&o));
    // A key no layer claims names the layers.
    let o = run(&["--filter=delay", "null", "nosuchkey=1", "--run", "true"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr_str(&o);
    assert!(
        err.contains("delay") && err.contains("null") && err.contains("nosuchkey"),
        "{err}"
    );
}

/// Under serialize_connections a second client waits until the first one
/// leaves, and multi-conn is not advertised.
#[test]
fn serialize_connections_admits_one_client_at_a_time() {
    let s = Server::start(&[
        "--filter=noparallel",
        "memory",
        "1M",
        "serialize=connections",
    ]);
    let script = r#"
import threading
print(h.can_multi_conn())
state = {}
def second():
    h2 = nbd.NBD()
    h2.connect_uri(sys.argv[1])
    state["connected"] = True
    h2.shutdown()
t = threading.Thread(target=second)
t.start()
t.join(2)
print(state.get("connected", False))
h.shutdown()
t.join(30)
print(state.get("connected", False))
"#;
    let out = python(&s.uri(), script, &[]);
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["False", "False", "True"],
        "{out}"
    );
}

/// SIGTERM while a request sleeps in the delay filter: the server stops
/// promptly (it does not sit out the 60 s delay) and exits 0; the client
/// gets an error reply or a closed connection, not a hang.
#[test]
fn shutdown_interrupts_slow_requests() {
    let mut s = Server::start(&["--filter=delay", "memory", "1M", "rdelay=60"]);
    let uri = s.uri();
    let client = std::thread::spawn(move || {
        python_any(&uri, "try:\n    h.pread(512, 0)\n    print('read ok')\nexcept nbd.Error as e:\n    print('error', e)\n", &[])
    });
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    s.stop_ok();
    assert!(start.elapsed() < Duration::from_secs(30));
    let out = client.join().unwrap();
    assert!(
        stdout_str(&out).starts_with("error"),
        "{}",
        stdout_str(&out)
    );
}
