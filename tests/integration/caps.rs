//! The capability filters (issue 15) driven by real clients: nofilter,
//! noextents, nozero, fua, nocache, multi-conn; and the small transforms
//! and checks swab, checkwrite, extentlist and exportname.  Which calls
//! reach the plugin is read from the `-v` debug lines (`memory: flush`).

use crate::cli::expect_error;
use crate::harness::*;

/// The capability flags nbdinfo reports for a server started with `args`.
#[track_caller]
fn flags(args: &[&str]) -> String {
    let s = Server::start(args);
    let json = nbdinfo(&["--json", &s.uri()]);
    jq(
        ".exports[0] | {zero: .can_zero, fast_zero: .can_fast_zero, fua: .can_fua, \
         cache: .can_cache, flush: .can_flush, multi_conn: .can_multi_conn, \
         write: (.is_read_only | not), size: .\"export-size\", \
         min: .block_size_minimum}",
        &json,
    )
    .trim()
    .to_string()
}

/// Count the debug lines `debug: LAYER: CALL` (CALL followed by a space
/// or the end of the line) in a server's log.
fn count(log: &str, layer: &str, call: &str) -> usize {
    let needle = format!("debug: {layer}: {call}");
    log.lines()
        .filter(|l| {
            l.split_once(&needle)
                .is_some_and(|(_, rest)| rest.is_empty() || rest.starts_with(' '))
        })
        .count()
}

/// The plugin-layer debug lines for data calls, in order.
fn plugin_calls(log: &str, plugin: &str) -> Vec<String> {
    let needle = format!("debug: {plugin}: ");
    log.lines()
        .filter_map(|l| l.split_once(&needle).map(|(_, r)| r.to_string()))
        .filter(|r| {
            [
                "pread", "pwrite", "zero", "trim", "flush", "cache", "extents",
            ]
            .iter()
            .any(|c| r.split(' ').next() == Some(c))
        })
        .collect()
}

#[track_caller]
fn has(json: &str, key: &str, want: &str) {
    assert!(
        json.contains(&format!("\"{key}\":{want}")),
        "{key} should be {want}: {json}"
    );
}

// ------------------------------------------------------------ capabilities

#[test]
fn capability_flags_follow_each_mode() {
    let m = ["memory", "1M"];
    let with = |f: &str, extra: &[&str]| {
        let mut v = vec![f];
        v.extend_from_slice(&m);
        v.extend_from_slice(extra);
        flags(&v)
    };
    let base = flags(&m);
    for k in ["zero", "fast_zero", "fua", "cache", "flush", "multi_conn"] {
        has(&base, k, "true");
    }
    assert_eq!(with("--filter=nofilter", &[]), base);
    assert_eq!(with("--filter=noextents", &[]), base);

    let j = with("--filter=nozero", &[]);
    has(&j, "zero", "false");
    has(&j, "fast_zero", "false");
    has(&j, "fua", "true");
    for mode in ["emulate", "notrim", "plugin"] {
        let z = format!("zeromode={mode}");
        let j = with("--filter=nozero", &[&z]);
        has(&j, "zero", "true");
        has(&j, "fast_zero", "true");
        let j = with("--filter=nozero", &[&z, "fastzeromode=none"]);
        has(&j, "zero", "true");
        has(&j, "fast_zero", "false");
        let j = with("--filter=nozero", &[&z, "fastzeromode=slow"]);
        has(&j, "fast_zero", "true");
    }

    let j = with("--filter=fua", &[]);
    has(&j, "fua", "false");
    has(&j, "flush", "true");
    for mode in ["emulate", "native", "force", "pass", "discard"] {
        let j = with("--filter=fua", &[&format!("fuamode={mode}")]);
        has(&j, "fua", "true");
        has(&j, "flush", "true");
    }

    has(&with("--filter=nocache", &[]), "cache", "false");
    has(
        &with("--filter=nocache", &["cachemode=none"]),
        "cache",
        "false",
    );
    has(
        &with("--filter=nocache", &["cachemode=emulate"]),
        "cache",
        "true",
    );
    has(
        &with("--filter=nocache", &["cachemode=nop"]),
        "cache",
        "true",
    );

    for (mode, mc) in [
        ("auto", "true"),
        ("emulate", "true"),
        ("plugin", "true"),
        ("unsafe", "true"),
        ("disable", "false"),
    ] {
        let j = with("--filter=multi-conn", &[&format!("multi-conn-mode={mode}")]);
        has(&j, "multi_conn", mc);
        has(&j, "fua", "true");
    }
}

#[test]
fn nofilter_serves_data_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(1 << 20, 15);
    let path = write_file(dir.path(), "disk", &data);
    let p = path.display().to_string();
    let s = Server::start(&["--filter=nofilter", "--filter=nofilter", "file", &p]);
    let out = python(
        &s.uri(),
        "exp = open(sys.argv[2], 'rb').read()\n\
         assert h.pread(len(exp), 0) == exp\n\
         new = bytes((i * 13 + 1) % 251 for i in range(65536))\n\
         h.pwrite(new, 4096, nbd.CMD_FLAG_FUA)\n\
         h.zero(4096, 0)\n\
         h.flush()\n\
         print('ok')\n",
        &[&p],
    );
    assert_eq!(out.trim(), "ok");
    let mut want = data;
    want[4096..4096 + 65536]
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = ((i * 13 + 1) % 251) as u8);
    want[..4096].fill(0);
    assert!(std::fs::read(&path).unwrap() == want, "file differs");
}

#[test]
fn nofilter_adds_no_layer_to_requests_but_shows_in_debug() {
    let s = Server::start(&["-v", "--filter=nofilter", "memory", "1M"]);
    python(&s.uri(), "h.pwrite(b'a' * 512, 0)\nh.pread(512, 0)\n", &[]);
    let log = s.stderr();
    assert_eq!(count(&log, "nofilter", "pwrite"), 1, "{log}");
    assert_eq!(count(&log, "memory", "pwrite"), 1, "{log}");
    assert_eq!(count(&log, "nofilter", "pread"), 1, "{log}");
}

#[test]
fn noextents_reports_everything_as_data() {
    let script = "h = nbd.NBD()\n\
                  h.add_meta_context('base:allocation')\n\
                  h.connect_uri(sys.argv[1])\n\
                  h.pwrite(b'x' * 4096, 65536)\n\
                  seen = []\n\
                  def cb(ctx, off, ents, err):\n\
                  \x20   seen.extend(zip(ents[0::2], ents[1::2]))\n\
                  \x20   return 0\n\
                  h.block_status(1 << 20, 0, cb)\n\
                  print(seen)\n";
    let s = Server::start(&["memory", "1M"]);
    let plain = python(&s.uri(), script, &[]);
    assert!(
        plain.contains("(65536, 3)"),
        "memory should show holes: {plain}"
    );
    let s = Server::start(&["--filter=noextents", "memory", "1M"]);
    let out = python(&s.uri(), script, &[]);
    assert_eq!(out.trim(), "[(1048576, 0)]");
    // qemu-img map agrees: one allocated data extent.
    let map = qemu_img(&["map", "--output=json", "-f", "raw", &s.uri()]);
    assert_eq!(jq("length", &map).trim(), "1", "{map}");
    assert_eq!(jq(".[0].data", &map).trim(), "true", "{map}");
}

#[test]
fn nozero_emulate_writes_zeroes() {
    let s = Server::start(&["-v", "--filter=nozero", "memory", "1M", "zeromode=emulate"]);
    let out = python(
        &s.uri(),
        "import errno\n\
         h.pwrite(b'\\xff' * 65536, 0)\n\
         h.zero(3 << 20 >> 2, 4096, nbd.CMD_FLAG_FUA)\n\
         d = h.pread(1 << 20, 0)\n\
         assert d[:4096] == b'\\xff' * 4096\n\
         assert d[4096:] == bytes((1 << 20) - 4096)\n\
         try:\n\
         \x20   h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO)\n\
         \x20   print('fast zero succeeded')\n\
         except nbd.Error as e:\n\
         \x20   print('fast', e.errnum == errno.ENOTSUP)\n\
         assert h.pread(4096, 0) == b'\\xff' * 4096\n",
        &[],
    );
    assert_eq!(out.trim(), "fast True");
    let log = s.stderr();
    assert_eq!(count(&log, "memory", "zero"), 0, "{log}");
    // 786432 bytes: one 1 MiB buffer is enough, FUA passed on natively.
    assert!(
        log.contains("memory: pwrite count=786432 offset=4096 fua=1"),
        "{log}"
    );
}

#[test]
fn nozero_fastzeromode_and_notrim() {
    let run = |args: &[&str]| {
        let mut v = vec!["-v", "--filter=nozero", "memory", "1M"];
        v.extend_from_slice(args);
        let s = Server::start(&v);
        let out = python(
            &s.uri(),
            "import errno\n\
             h.pwrite(b'\\xff' * 8192, 0)\n\
             try:\n\
             \x20   h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO)\n\
             \x20   print('ok', h.pread(4096, 0) == bytes(4096))\n\
             except nbd.Error as e:\n\
             \x20   print('enotsup' if e.errnum == errno.ENOTSUP else e)\n\
             h.zero(4096, 4096)\n\
             assert h.pread(4096, 4096) == bytes(4096)\n",
            &[],
        );
        (out.trim().to_string(), s.stderr())
    };
    let (out, _) = run(&["zeromode=emulate", "fastzeromode=ignore"]);
    assert_eq!(out, "ok True");
    let (out, _) = run(&["zeromode=plugin", "fastzeromode=slow"]);
    assert_eq!(out, "enotsup");
    let (out, log) = run(&["zeromode=plugin"]);
    assert_eq!(out, "ok True");
    assert!(
        log.contains("memory: zero count=4096 offset=4096 may_trim=1"),
        "{log}"
    );
    let (out, log) = run(&["zeromode=notrim"]);
    assert_eq!(out, "ok True");
    assert!(
        log.contains("memory: zero count=4096 offset=4096 may_trim=0"),
        "{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("memory: zero") && l.contains("may_trim=1")),
        "{log}"
    );
    // Without write-zeroes, qemu-io's write -z still works (by writes).
    let s = Server::start(&["--filter=nozero", "memory", "1M"]);
    let o = qemu_io(&[
        "-f",
        "raw",
        "-c",
        "write -P 0x33 0 64k",
        "-c",
        "write -z 0 4k",
        "-c",
        "read -P 0 0 4k",
        "-c",
        "read -P 0x33 4k 60k",
        &s.uri(),
    ]);
    assert!(!o.contains("fail"), "{o}");
}

/// Write with FUA and flush through `fuamode=MODE`: the plugin's calls.
fn fua_calls(mode: &str) -> Vec<String> {
    let s = Server::start(&[
        "-v",
        "--filter=fua",
        "memory",
        "1M",
        &format!("fuamode={mode}"),
    ]);
    let out = python(
        &s.uri(),
        "h.pwrite(b'a' * 512, 0, nbd.CMD_FLAG_FUA)\n\
         h.pwrite(b'b' * 512, 512)\n\
         h.zero(512, 1024, nbd.CMD_FLAG_FUA)\n\
         h.trim(512, 2048, nbd.CMD_FLAG_FUA)\n\
         h.flush()\n\
         d = h.pread(1536, 0)\n\
         print(d == b'a' * 512 + b'b' * 512 + bytes(512))\n",
        &[],
    );
    assert_eq!(out.trim(), "True", "data through fuamode={mode}");
    plugin_calls(&s.stderr(), "memory")
        .into_iter()
        .filter(|c| !c.starts_with("pread"))
        .map(|c| c.split(" may_trim").next().unwrap().to_string())
        .collect()
}

#[test]
fn fua_modes_change_what_reaches_the_plugin() {
    assert_eq!(
        fua_calls("emulate"),
        [
            "pwrite count=512 offset=0 fua=0",
            "flush",
            "pwrite count=512 offset=512 fua=0",
            "zero count=512 offset=1024",
            "flush",
            "trim count=512 offset=2048 fua=0",
            "flush",
            "flush"
        ]
    );
    let native = [
        "pwrite count=512 offset=0 fua=1",
        "pwrite count=512 offset=512 fua=0",
        "zero count=512 offset=1024",
        "trim count=512 offset=2048 fua=1",
        "flush",
    ];
    assert_eq!(fua_calls("native"), native);
    assert_eq!(fua_calls("pass"), native);
    assert_eq!(
        fua_calls("force"),
        [
            "pwrite count=512 offset=0 fua=1",
            "pwrite count=512 offset=512 fua=1",
            "zero count=512 offset=1024",
            "trim count=512 offset=2048 fua=1",
        ]
    );
    assert_eq!(
        fua_calls("discard"),
        [
            "pwrite count=512 offset=0 fua=0",
            "pwrite count=512 offset=512 fua=0",
            "zero count=512 offset=1024",
            "trim count=512 offset=2048 fua=0",
        ]
    );
}

#[test]
fn fua_none_hides_fua_from_clients() {
    let s = Server::start(&["--filter=fua", "memory", "1M"]);
    let out = python(
        &s.uri(),
        "print(h.can_fua())\n\
         h.set_strict_mode(0)\n\
         try:\n\
         \x20   h.pwrite(b'a' * 512, 0, nbd.CMD_FLAG_FUA)\n\
         \x20   print('accepted')\n\
         except nbd.Error as e:\n\
         \x20   print('refused')\n\
         h.pwrite(b'b' * 512, 0)\n\
         print(h.pread(512, 0) == b'b' * 512)\n",
        &[],
    );
    assert_eq!(out.trim(), "False\nrefused\nTrue");
}

#[test]
fn nocache_modes() {
    let script = "h.pwrite(b'c' * 8192, 0)\n\
                  h.cache(8192, 0)\n\
                  print(h.pread(8192, 0) == b'c' * 8192)\n";
    for (mode, reads, caches) in [("emulate", 2, 0), ("nop", 1, 0)] {
        let s = Server::start(&[
            "-v",
            "--filter=nocache",
            "memory",
            "1M",
            &format!("cachemode={mode}"),
        ]);
        assert_eq!(python(&s.uri(), script, &[]).trim(), "True");
        let log = s.stderr();
        assert_eq!(count(&log, "memory", "pread"), reads, "{mode}: {log}");
        assert_eq!(count(&log, "memory", "cache"), caches, "{mode}: {log}");
        assert!(
            mode != "emulate" || log.contains("memory: pread count=8192 offset=0"),
            "{log}"
        );
    }
    // Without the filter the plugin's own cache is called.
    let s = Server::start(&["-v", "memory", "1M"]);
    python(&s.uri(), script, &[]);
    assert_eq!(count(&s.stderr(), "memory", "cache"), 1);
    // cachemode=none: not advertised, and refused if sent anyway.
    let s = Server::start(&["--filter=nocache", "memory", "1M"]);
    let out = python(
        &s.uri(),
        "print(h.can_cache())\n\
         h.set_strict_mode(0)\n\
         try:\n\
         \x20   h.cache(512, 0)\n\
         \x20   print('accepted')\n\
         except nbd.Error:\n\
         \x20   print('refused')\n",
        &[],
    );
    assert_eq!(out.trim(), "False\nrefused");
}

// -------------------------------------------------------------- multi-conn

/// Two connections: A writes, B flushes twice, A reads while B writes with
/// FUA.  Returns the plugin's flush and write lines, with markers.
fn multi_conn_calls(args: &[&str], export_b: &str) -> (String, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), vec![0u8; 65536]).unwrap();
    std::fs::write(dir.path().join("b"), vec![0u8; 65536]).unwrap();
    let d = format!("dir={}", dir.path().display());
    let mut v = vec!["-v", "--filter=multi-conn", "file", &d];
    v.extend_from_slice(args);
    let s = Server::start_in(dir, &v);
    let out = python(
        &s.uri_export("a"),
        "h2 = nbd.NBD()\n\
         h2.connect_uri(sys.argv[2])\n\
         print(h.can_multi_conn(), h.can_fua())\n\
         h.pwrite(b'x' * 512, 0)\n\
         h2.flush()\n\
         h2.flush()\n\
         h.pread(512, 0)\n\
         h2.pwrite(b'y' * 512, 512, nbd.CMD_FLAG_FUA)\n\
         h.shutdown()\n\
         h2.shutdown()\n",
        &[&s.uri_export(export_b)],
    );
    let calls = plugin_calls(&s.stderr(), "file")
        .into_iter()
        .filter(|c| c.starts_with("flush") || c.starts_with("pwrite"))
        .collect();
    (out.trim().to_string(), calls)
}

#[test]
fn multi_conn_emulate_flushes_every_dirty_connection() {
    let (out, calls) = multi_conn_calls(&["multi-conn-mode=emulate"], "a");
    assert_eq!(out, "True True");
    assert_eq!(
        calls,
        [
            "pwrite count=512 offset=0 fua=0",
            // B's flush reaches A (which wrote); the second finds all clean.
            "flush",
            "pwrite count=512 offset=512 fua=0",
            // FUA emulated by flushing the group: B wrote, A only read
            // but the group was dirty.
            "flush",
            "flush",
        ]
    );
    // track-dirty=off: every flush goes to every connection.
    let (_, calls) = multi_conn_calls(
        &["multi-conn-mode=emulate", "multi-conn-track-dirty=off"],
        "a",
    );
    assert_eq!(
        calls.iter().filter(|c| *c == "flush").count(),
        6,
        "{calls:?}"
    );
    // track-dirty=fast: a dirty group flushes everyone.
    let (_, calls) = multi_conn_calls(
        &["multi-conn-mode=emulate", "multi-conn-track-dirty=fast"],
        "a",
    );
    assert_eq!(
        calls.iter().filter(|c| *c == "flush").count(),
        4,
        "{calls:?}"
    );
}

#[test]
fn multi_conn_plugin_mode_skips_clean_flushes() {
    let (out, calls) = multi_conn_calls(&["multi-conn-mode=plugin"], "a");
    assert_eq!(out, "True True");
    assert_eq!(
        calls,
        [
            "pwrite count=512 offset=0 fua=0",
            "flush",
            // Native FUA passed on; nothing dirty after, no flush.
            "pwrite count=512 offset=512 fua=1",
        ]
    );
    let (out, calls) = multi_conn_calls(&["multi-conn-mode=disable"], "a");
    assert_eq!(out, "False True");
    assert_eq!(
        calls.iter().filter(|c| *c == "flush").count(),
        1,
        "{calls:?}"
    );
}

#[test]
fn multi_conn_exportname_groups_by_export() {
    // A writes export a, B flushes export b: different groups, so A's
    // data is not flushed by B.
    let (_, calls) = multi_conn_calls(
        &["multi-conn-mode=emulate", "multi-conn-exportname=true"],
        "b",
    );
    assert_eq!(
        calls,
        [
            "pwrite count=512 offset=0 fua=0",
            "pwrite count=512 offset=512 fua=0",
            "flush"
        ],
    );
    let (_, calls) = multi_conn_calls(&["multi-conn-mode=emulate"], "b");
    assert_eq!(
        calls.iter().filter(|c| *c == "flush").count(),
        3,
        "{calls:?}"
    );
}

#[test]
fn multi_conn_emulate_needs_flush() {
    // example1 has no flush: emulation cannot work, the client is refused.
    let s = Server::start(&["--filter=multi-conn", "example1", "multi-conn-mode=emulate"]);
    let o = client_any("/usr/bin/nbdinfo", &[&s.uri()]);
    assert!(!o.status.success(), "{}", stdout_str(&o));
    assert!(
        s.stderr()
            .contains("emulating multi-conn requires working flush"),
        "{}",
        s.stderr()
    );
    // In auto mode the plugin's own answer is used.
    let s = Server::start(&["--filter=multi-conn", "example1"]);
    let json = nbdinfo(&["--json", &s.uri()]);
    assert_eq!(jq(".exports[0].can_multi_conn", &json).trim(), "true");
}

// -------------------------------------------------------------------- swab

#[test]
fn swab_swaps_words_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(65536 + 7, 3);
    let path = write_file(dir.path(), "disk", &data);
    let p = path.display().to_string();
    for (bits, n) in [("16", 2usize), ("32", 4), ("64", 8), ("8", 1)] {
        let b = format!("swab-bits={bits}");
        let s = Server::start(&["--filter=swab", "file", &p, &b]);
        let json = nbdinfo(&["--json", &s.uri()]);
        let size = 65536 + 7 - (65536 + 7) % n;
        assert_eq!(
            jq(".exports[0][\"export-size\"]", &json).trim(),
            size.to_string()
        );
        if n > 1 {
            assert_eq!(
                jq(".exports[0].block_size_minimum", &json).trim(),
                n.to_string()
            );
        }
        let got = python(
            &s.uri(),
            "sys.stdout.write(h.pread(h.get_size(), 0).hex())",
            &[],
        );
        let want: Vec<u8> = data[..size]
            .chunks(n)
            .flat_map(|w| w.iter().rev().copied())
            .collect();
        assert!(
            got == want.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "swab-bits={bits} read"
        );
    }
    // Writes are swapped on the way down.
    let s = Server::start(&["--filter=swab", "file", &p, "swab-bits=32"]);
    python(&s.uri(), "h.pwrite(bytes(range(16)), 64)\n", &[]);
    let disk = std::fs::read(&path).unwrap();
    assert_eq!(
        &disk[64..80],
        &[3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12]
    );
    assert_eq!(&disk[..64], &data[..64]);
    assert_eq!(&disk[80..], &data[80..]);
}

#[test]
fn swab_refuses_unaligned_requests() {
    let s = Server::start(&["--filter=swab", "memory", "1M", "swab-bits=64"]);
    let out = python(
        &s.uri(),
        "import errno\n\
         h.set_strict_mode(0)\n\
         for op in (lambda: h.pread(8, 4), lambda: h.pread(4, 0),\n\
         \x20          lambda: h.pwrite(b'x' * 8, 1), lambda: h.zero(4, 8),\n\
         \x20          lambda: h.trim(12, 0), lambda: h.cache(8, 2)):\n\
         \x20   try:\n\
         \x20       op()\n\
         \x20       print('accepted')\n\
         \x20   except nbd.Error as e:\n\
         \x20       print(e.errnum == errno.EINVAL)\n\
         h.pwrite(b'abcdefgh', 8)\n\
         print(h.pread(8, 8))\n",
        &[],
    );
    assert_eq!(
        out.trim(),
        "True\nTrue\nTrue\nTrue\nTrue\nTrue\nbytearray(b'abcdefgh')",
        "{}",
        s.stderr()
    );
    assert!(s
        .stderr()
        .contains("swab: requests to this filter must be aligned"));
}

// -------------------------------------------------------------- checkwrite

#[test]
fn checkwrite_accepts_an_exact_copy_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = pseudo_random(4 << 20, 9);
    data[1 << 20..2 << 20].fill(0);
    let src = write_file(dir.path(), "src", &data);
    let mut other = data.clone();
    other[3 << 20] ^= 1;
    let bad = write_file(dir.path(), "bad", &other);
    let s = Server::start(&["--filter=checkwrite", "file", &src.display().to_string()]);
    let json = nbdinfo(&["--json", &s.uri()]);
    assert_eq!(
        jq(
            ".exports[0] | [.is_read_only, .can_fua, .can_zero, .can_trim, .can_fast_zero, .can_multi_conn]",
            &json
        )
        .trim(),
        "[false,true,true,true,true,true]"
    );
    nbdcopy(&[&src.display().to_string(), &s.uri()]);
    nbdcopy(&["--allocated", &src.display().to_string(), &s.uri()]);
    let o = client_any("/usr/bin/nbdcopy", &[&bad.display().to_string(), &s.uri()]);
    assert!(!o.status.success(), "copying different data must fail");
    assert!(
        s.stderr().contains("data written does not match expected"),
        "{}",
        s.stderr()
    );
    // The plugin's data is never changed.
    assert!(std::fs::read(&src).unwrap() == data);
}

#[test]
fn checkwrite_checks_zeroes_and_trims() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; 1 << 20];
    data[8192..12288].fill(0x5a);
    let src = write_file(dir.path(), "src", &data);
    let p = src.display().to_string();
    let s = Server::start(&["--filter=checkwrite", "file", &p]);
    let out = python(
        &s.uri(),
        "import errno\n\
         def t(f):\n\
         \x20   try:\n\
         \x20       f()\n\
         \x20       return 'ok'\n\
         \x20   except nbd.Error as e:\n\
         \x20       return errno.errorcode[e.errnum]\n\
         print(t(lambda: h.zero(8192, 0)))\n\
         print(t(lambda: h.zero(8192, 4096)))\n\
         print(t(lambda: h.trim(4096, 12288)))\n\
         print(t(lambda: h.trim(4096, 10240)))\n\
         print(t(lambda: h.pwrite(b'\\x5a' * 4096, 8192)))\n\
         print(t(lambda: h.pwrite(b'\\x5a' * 4096, 8193)))\n\
         print(t(lambda: h.zero(4096, 8192, nbd.CMD_FLAG_FAST_ZERO)))\n\
         print(t(lambda: h.flush()))\n",
        &[],
    );
    assert_eq!(out.trim(), "ok\nEIO\nok\nEIO\nok\nEIO\nENOTSUP\nok");
    assert!(std::fs::read(&src).unwrap() == data);
    // Over a read-only plugin it is still writable (it only reads).
    let s = Server::start(&["--filter=checkwrite", "example1"]);
    let out = python(
        &s.uri(),
        "print(h.is_read_only())\nh.pwrite(h.pread(512, 0), 0)\nh.zero(4096, 1 << 20)\nprint('ok')\n",
        &[],
    );
    assert_eq!(out.trim(), "False\nok");
}

// -------------------------------------------------------------- extentlist

#[test]
fn extentlist_serves_extents_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let list = write_file(
        dir.path(),
        "extents",
        b"65536 64k\n0 4k 0\n8k\t4k hole,zero\n131072 4096 zero\n",
    );
    let l = format!("extentlist={}", list.display());
    let s = Server::start(&["--filter=extentlist", "memory", "1M", &l]);
    let out = python(
        &s.uri(),
        "h = nbd.NBD()\n\
         h.add_meta_context('base:allocation')\n\
         h.connect_uri(sys.argv[1])\n\
         seen = []\n\
         def cb(ctx, off, ents, err):\n\
         \x20   seen.extend(zip(ents[0::2], ents[1::2]))\n\
         \x20   return 0\n\
         off = 0\n\
         while off < h.get_size():\n\
         \x20   n = len(seen)\n\
         \x20   h.block_status(h.get_size() - off, off, cb)\n\
         \x20   off += sum(l for l, t in seen[n:])\n\
         print(seen)\n",
        &[],
    );
    assert_eq!(
        out.trim(),
        "[(4096, 0), (61440, 3), (65536, 0), (4096, 2), (913408, 3)]",
        "{}",
        s.stderr()
    );
    // qemu-img map sees the same layout.
    let map = qemu_img(&["map", "--output=json", "-f", "raw", &s.uri()]);
    assert_eq!(
        jq("[.[] | [.start, .length, .data, .zero]]", &map).trim(),
        "[[0,4096,true,false],[4096,61440,false,true],[65536,65536,true,false],\
         [131072,4096,true,true],[135168,913408,false,true]]"
    );
    // Data still comes from the plugin.
    let out = python(
        &s.uri(),
        "h.pwrite(b'q' * 512, 4096)\nprint(h.pread(512, 4096) == b'q' * 512)\n",
        &[],
    );
    assert_eq!(out.trim(), "True");
}

#[test]
fn extentlist_bad_files_are_startup_errors() {
    let dir = tempfile::tempdir().unwrap();
    let overlap = write_file(dir.path(), "o", b"0 8k\n4k 8k\n");
    let junk = write_file(dir.path(), "j", b"0 8k\nzero\n");
    let badsize = write_file(dir.path(), "b", b"0 8q\n");
    for (file, msg) in [
        (overlap.display().to_string(), "overlapping"),
        (junk.display().to_string(), "cannot parse zero"),
        (badsize.display().to_string(), "could not parse size"),
        ("/nonexistent/list".to_string(), "/nonexistent/list"),
    ] {
        let l = format!("extentlist={file}");
        let err = expect_error(&["--filter=extentlist", "memory", "1M", &l], true);
        assert!(err.contains(msg), "{file}: {err}");
    }
    let err = expect_error(&["--filter=extentlist", "memory", "1M"], true);
    assert!(
        err.contains("you must supply the extentlist parameter"),
        "{err}"
    );
    let l = format!("extentlist={}", overlap.display());
    let err = expect_error(&["--filter=extentlist", "memory", "1M", &l, &l], true);
    assert!(err.contains("cannot appear twice"), "{err}");
}

// -------------------------------------------------------------- exportname

fn list(args: &[&str]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("d");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("a"), vec![1u8; 1024]).unwrap();
    std::fs::write(sub.join("b"), vec![2u8; 2048]).unwrap();
    let d = format!("dir={}", sub.display());
    let mut v = vec!["--filter=exportname", "file", &d];
    v.extend_from_slice(args);
    let s = Server::start_in(dir, &v);
    let o = client_any("/usr/bin/nbdinfo", &["--list", "--json", &s.uri()]);
    let json = stdout_str(&o);
    let names = if o.status.success() {
        jq(
            "[.exports[] | [.\"export-name\", .description, .\"export-size\"]] | sort",
            &json,
        )
        .trim()
        .to_string()
    } else {
        "error".to_string()
    };
    // What the default export is.
    let o = client_any("/usr/bin/nbdinfo", &["--size", &s.uri()]);
    let size = if o.status.success() {
        stdout_str(&o).trim().to_string()
    } else {
        "error".to_string()
    };
    (names, size)
}

#[test]
fn exportname_list_modes() {
    assert_eq!(
        list(&[]),
        (
            r#"[["a",null,1024],["b",null,2048]]"#.to_string(),
            "error".to_string()
        )
    );
    assert_eq!(
        list(&["default-export=b"]),
        (
            r#"[["a",null,1024],["b",null,2048]]"#.to_string(),
            "2048".to_string()
        )
    );
    assert_eq!(
        list(&["exportname-list=defaultonly", "default-export=a"]),
        (r#"[["a",null,1024]]"#.to_string(), "1024".to_string())
    );
    assert_eq!(list(&["exportname-list=empty"]).0, "[]");
    assert_eq!(list(&["exportname-list=error"]).0, "error");
    assert_eq!(
        list(&[
            "exportname-list=explicit",
            "exportname=b",
            "exportdesc=fixed:the b disk",
        ])
        .0,
        r#"[["b","the b disk",2048]]"#
    );
}

#[test]
fn exportname_descriptions() {
    assert_eq!(
        list(&["exportdesc=script:echo \"disk $name\"; echo"]).0,
        r#"[["a","disk a\n",1024],["b","disk b\n",2048]]"#
    );
    assert_eq!(
        list(&["exportdesc=fixed:"]).0,
        // nbdinfo shows an empty description as none.
        r#"[["a",null,1024],["b",null,2048]]"#
    );
    assert_eq!(
        list(&["exportdesc=fixed:x", "exportdesc=none"]).0,
        r#"[["a",null,1024],["b",null,2048]]"#
    );
    // NBD_INFO_DESCRIPTION on an opened export too.
    let s = Server::start(&[
        "--filter=exportname",
        "memory",
        "1M",
        "exportdesc=script:printf '%s!' \"$name\"",
    ]);
    let out = python(
        &s.uri_export("it's"),
        "h2 = nbd.NBD()\nh2.set_full_info(True)\nh2.set_export_name(\"it's\")\n\
         h2.connect_uri(sys.argv[1])\nprint(h2.get_export_description())\n",
        &[],
    );
    assert_eq!(out.trim(), "it's!");
}

#[test]
fn exportname_strict_allows_only_listed_names() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), vec![1u8; 1024]).unwrap();
    std::fs::write(dir.path().join("b"), vec![2u8; 2048]).unwrap();
    let d = format!("dir={}", dir.path().display());
    let s = Server::start_in(
        dir,
        &[
            "--filter=exportname",
            "file",
            &d,
            "exportname-strict=true",
            "exportname=a",
        ],
    );
    assert_eq!(nbdinfo(&["--size", &s.uri_export("a")]).trim(), "1024");
    let o = client_any("/usr/bin/nbdinfo", &["--size", &s.uri_export("b")]);
    assert!(!o.status.success());
    assert!(
        s.stderr().contains("export 'b' not found"),
        "{}",
        s.stderr()
    );
    let o = client_any("/usr/bin/nbdinfo", &["--size", &s.uri()]);
    assert!(!o.status.success());
    assert!(s.stderr().contains("not permitted"), "{}", s.stderr());
    // "" listed: the default export (default-export=b) is allowed.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b"), vec![2u8; 2048]).unwrap();
    let d = format!("dir={}", dir.path().display());
    let s = Server::start_in(
        dir,
        &[
            "--filter=exportname",
            "file",
            &d,
            "exportname-strict=1",
            "exportname=",
            "exportname=b",
            "default-export=b",
        ],
    );
    assert_eq!(nbdinfo(&["--size", &s.uri()]).trim(), "2048");
}

// ------------------------------------------------------------ bad parameters

#[test]
fn bad_parameters_are_startup_errors() {
    for (filter, param, msg) in [
        (
            "nozero",
            "zeromode=sometimes",
            "unknown zeromode 'sometimes'",
        ),
        ("nozero", "fastzeromode=fast", "unknown fastzeromode 'fast'"),
        ("fua", "fuamode=always", "unknown fuamode 'always'"),
        (
            "nocache",
            "cachemode=passthrough",
            "unknown cachemode 'passthrough'",
        ),
        (
            "multi-conn",
            "multi-conn-mode=on",
            "unknown multi-conn mode 'on'",
        ),
        (
            "multi-conn",
            "multi-conn-track-dirty=slow",
            "track-dirty setting 'slow'",
        ),
        (
            "multi-conn",
            "multi-conn-exportname=perhaps",
            "could not decipher boolean",
        ),
        ("swab", "swab-bits=12", "must be 8, 16, 32 or 64"),
        ("swab", "swab-bits=", "swab-bits"),
        ("swab", "swab-bits=sixteen", "swab-bits"),
        (
            "exportname",
            "exportname-list=all",
            "unrecognized exportname-list mode: all",
        ),
        (
            "exportname",
            "exportname-strict=maybe",
            "could not decipher boolean",
        ),
        (
            "exportname",
            "exportdesc=shell:true",
            "unrecognized exportdesc mode",
        ),
    ] {
        let f = format!("--filter={filter}");
        let err = expect_error(&[&f, "memory", "1M", param], true);
        assert!(err.contains(msg), "{filter} {param}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    // Parameters of another filter are not taken.
    let err = expect_error(
        &["--filter=nofilter", "memory", "1M", "zeromode=none"],
        true,
    );
    assert!(err.contains("unknown parameter"), "{err}");
}
