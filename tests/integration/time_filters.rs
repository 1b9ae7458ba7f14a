//! The filters about time and disk behaviour: `time-limit` (clients are
//! dropped once their time is up), `spinning` (seek delays like a rotating
//! disk) and `rotational` (the flag clients see).

use crate::cli::expect_error;
use crate::harness::*;

// ---------------------------------------------------------------- rotational

fn rotational_flag(args: &[&str]) -> String {
    let s = Server::start(args);
    let json = nbdinfo(&["--json", &s.uri()]);
    jq(".exports[0].is_rotational", &json).trim().to_string()
}

#[test]
fn rotational_sets_and_clears_the_flag() {
    // memory is not rotational by itself; the filter alone makes it so.
    assert_eq!(rotational_flag(&["memory", "1M"]), "false");
    assert_eq!(
        rotational_flag(&["--filter=rotational", "memory", "1M"]),
        "true"
    );
    assert_eq!(
        rotational_flag(&["--filter=rotational", "memory", "1M", "rotational=false"]),
        "false"
    );
    // And it overrides a layer that says rotational.
    assert_eq!(
        rotational_flag(&[
            "--filter=rotational",
            "--filter=spinning",
            "memory",
            "1M",
            "rotational=no",
        ]),
        "false"
    );
}

#[test]
fn rotational_bad_value_is_a_startup_error() {
    let err = expect_error(
        &["--filter=rotational", "memory", "1M", "rotational=sideways"],
        true,
    );
    assert!(
        err.contains("could not decipher boolean (sideways)"),
        "{err}"
    );
}

// ---------------------------------------------------------------- time-limit

#[test]
fn time_limit_drops_the_client_after_the_limit() {
    let s = Server::start(&["--filter=time-limit", "memory", "1M", "time-limit=1"]);
    let out = python(
        &s.uri(),
        "import time\n\
         h.pwrite(b'x' * 512, 0)\n\
         assert h.pread(512, 0) == b'x' * 512\n\
         time.sleep(2.5)\n\
         try:\n\
         \x20   h.pread(512, 0)\n\
         \x20   print('still served')\n\
         except nbd.Error as e:\n\
         \x20   print('dropped', e.errno)\n\
         print('closed' if h.aio_is_closed() or h.aio_is_dead() else 'open')\n",
        &[],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("dropped"), "{out}");
    assert_eq!(lines[1], "closed", "{out}");
    // The limit is per connection: a new client is served again.
    let out = python(&s.uri(), "print(bytes(h.pread(1, 0)))", &[]);
    assert_eq!(out.trim(), "b'x'");
}

#[test]
fn time_limit_zero_means_no_limit() {
    let s = Server::start(&["--filter=time-limit", "memory", "1M", "time-limit=0"]);
    let out = python(
        &s.uri(),
        "import time\nh.pread(1, 0)\ntime.sleep(1.2)\nprint(len(h.pread(512, 0)))\n",
        &[],
    );
    assert_eq!(out.trim(), "512");
    // The default (60 s) does not drop a short session either.
    let s = Server::start(&["--filter=time-limit", "memory", "1M"]);
    assert_eq!(nbdsh(&s.uri(), "print(h.get_size())").trim(), "1048576");
}

#[test]
fn time_limit_bad_value_is_a_startup_error() {
    for v in ["soon", "-5", "1h"] {
        let arg = format!("time-limit={v}");
        let err = expect_error(&["--filter=time-limit", "memory", "1M", &arg], true);
        assert!(err.contains("could not parse delay"), "{v}: {err}");
    }
}

// ---------------------------------------------------------------- spinning

#[test]
fn spinning_adds_seek_delays_for_far_requests_only() {
    let s = Server::start(&[
        "--filter=spinning",
        "memory",
        "1G",
        "min-seek-time=0.01",
        "half-seek-time=0.3",
        "max-seek-time=0.6",
    ]);
    let out = python(
        &s.uri(),
        "import time\n\
         def t(off):\n\
         \x20   s = time.monotonic(); h.pread(4096, off); return time.monotonic() - s\n\
         near = sum(t(o * 4096) for o in range(20))\n\
         far = t((1 << 30) - 4096)\n\
         back = t(0)\n\
         print(near, far, back, h.is_rotational(), h.can_multi_conn())\n",
        &[],
    );
    let f: Vec<&str> = out.split_whitespace().collect();
    let near: f64 = f[0].parse().unwrap();
    let far: f64 = f[1].parse().unwrap();
    let back: f64 = f[2].parse().unwrap();
    // Twenty reads within one track cost no seek at all (generous bound).
    assert!(near < 0.5, "near reads took {near}s");
    // A full stroke sleeps max-seek-time, and back again.
    assert!(far >= 0.55, "full-stroke seek took only {far}s");
    assert!(back >= 0.55, "seek back took only {back}s");
    assert_eq!(&f[3..], ["True", "False"], "{out}");
}

#[test]
fn spinning_with_separate_heads_seeks_each_section_on_its_own() {
    // Four heads, one per 256M: alternating between sections costs nothing
    // when the heads are separate (each stays on its own track) ...
    let script = "import time\n\
         s = time.monotonic()\n\
         for i in range(8):\n\
         \x20   h.pread(512, (i % 4) * (256 << 20) + 4096)\n\
         print(time.monotonic() - s)\n";
    let args = |sep: &'static str| {
        vec![
            "--filter=spinning",
            "memory",
            "1G",
            "heads=4",
            sep,
            "min-seek-time=0.2",
            "half-seek-time=0.2",
            "max-seek-time=0.2",
        ]
    };
    let s = Server::start(&args("separate-heads=true"));
    let sep: f64 = python(&s.uri(), script, &[]).trim().parse().unwrap();
    assert!(sep < 0.15, "separate heads: {sep}s");
    // ... and with one arm every head moves together, so nothing seeks
    // either: each head sits at the same offset of its section.
    let s = Server::start(&args("separate-heads=false"));
    let one: f64 = python(&s.uri(), script, &[]).trim().parse().unwrap();
    assert!(one < 0.15, "one arm: {one}s");
    // But one arm pays for a move in any section.
    let out = python(
        &s.uri(),
        "import time\n\
         h.pread(512, 0)\n\
         s = time.monotonic(); h.pread(512, (256 << 20) + (128 << 20)); print(time.monotonic() - s)\n",
        &[],
    );
    let t: f64 = out.trim().parse().unwrap();
    assert!(t >= 0.18, "seek on one arm took {t}s");
}

#[test]
fn spinning_bad_parameters_are_startup_errors() {
    for (arg, msg) in [
        ("heads=0", "heads must be in the range [1..64] (was: 0)"),
        ("heads=100", "heads must be in the range [1..64] (was: 100)"),
        ("separate-heads=both", "could not decipher boolean"),
        ("min-seek-time=-1", "min-seek-time must be a number >= 0"),
        ("max-seek-time=slow", "max-seek-time must be a number >= 0"),
    ] {
        let err = expect_error(&["--filter=spinning", "memory", "1M", arg], true);
        assert!(err.contains(msg), "{arg}: {err}");
    }
}
