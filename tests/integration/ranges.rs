//! The range filters offset, truncate, protect and readonly, driven by
//! real clients over the file plugin, with the file compared byte for
//! byte afterwards.

use crate::cli::expect_error;
use crate::harness::*;

/// A server over `disk.img` holding `data`, with `args` after the file.
fn serve_file(data: &[u8], args: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let img = write_file(dir.path(), "disk.img", data);
    let mut full = vec!["file".to_string(), img.display().to_string()];
    full.extend(args.iter().map(|s| s.to_string()));
    let full: Vec<&str> = full.iter().map(|s| s.as_str()).collect();
    Server::start_in(dir, &full)
}

/// Python: a second handle `g` that negotiated `base:allocation`.
const WITH_STATUS: &str = "g = nbd.NBD()\n\
    g.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)\n\
    g.connect_uri(sys.argv[1])\n";

fn disk(s: &Server) -> Vec<u8> {
    std::fs::read(s.dir().join("disk.img")).unwrap()
}

/// The whole export, copied out by nbdcopy.
fn copy_out(s: &Server) -> Vec<u8> {
    let out = s.dir().join("out.img");
    nbdcopy(&[s.uri().as_str(), out.to_str().unwrap()]);
    std::fs::read(out).unwrap()
}

// ------------------------------------------------------------------ offset

#[test]
fn offset_and_range_serve_exactly_the_window() {
    let data = pseudo_random(1 << 20, 1);
    let s = serve_file(&data, &["--filter=offset", "offset=64k", "range=256k"]);
    assert_eq!(nbdinfo(&["--size", &s.uri()]).trim(), "262144");
    assert_eq!(copy_out(&s), &data[65536..65536 + 262144]);
    // Writes land shifted by the offset, and nowhere else.
    python(
        &s.uri(),
        "h.pwrite(b'\\x5a' * 4096, 0)\nh.pwrite(b'\\xa5' * 100, 262144 - 100)\n\
         try:\n    h.pwrite(b'x', 262144)\n    print('accepted')\n\
         except nbd.Error as e:\n    print('refused')\n",
        &[],
    );
    let mut want = data.clone();
    want[65536..65536 + 4096].fill(0x5a);
    want[65536 + 262144 - 100..65536 + 262144].fill(0xa5);
    assert_eq!(disk(&s), want);
}

#[test]
fn offset_without_range_runs_to_the_end() {
    let data = pseudo_random(100_000, 2);
    let s = serve_file(&data, &["--filter=offset", "offset=1000"]);
    assert_eq!(nbdinfo(&["--size", &s.uri()]).trim(), "99000");
    assert_eq!(copy_out(&s), &data[1000..]);
    // Block status comes back in the window's coordinates.
    let out = python(
        &s.uri(),
        &format!(
            "{WITH_STATUS}ents = []\n\
             g.block_status(99000, 0, lambda ctx, off, e, err: ents.extend(e))\n\
             print(sum(ents[0::2]))\n"
        ),
        &[],
    );
    assert!(out.trim().parse::<u64>().unwrap() <= 99000, "{out}");
}

#[test]
fn offset_outside_the_plugin_fails_the_connection() {
    for args in [
        &["--filter=offset", "offset=2M"][..],
        &["--filter=offset", "offset=512k", "range=600k"],
    ] {
        let s = serve_file(&[0u8; 1 << 20], args);
        let o = client_any("/usr/bin/nbdinfo", &["--size", &s.uri()]);
        assert!(!o.status.success(), "{args:?}: {}", stdout_str(&o));
        assert!(
            s.stderr().contains("larger than the real size")
                || s.stderr().contains("greater than size"),
            "{}",
            s.stderr()
        );
    }
    // The whole file is a valid window.
    let s = serve_file(&[7u8; 4096], &["--filter=offset", "offset=0", "range=4096"]);
    assert_eq!(copy_out(&s), vec![7u8; 4096]);
}

// ---------------------------------------------------------------- truncate

#[test]
fn truncate_larger_reads_zeroes_and_refuses_data_past_the_end() {
    let data = pseudo_random(1000, 3);
    let s = serve_file(&data, &["--filter=truncate", "truncate=4096"]);
    assert_eq!(nbdinfo(&["--size", &s.uri()]).trim(), "4096");
    let mut want = data.clone();
    want.resize(4096, 0);
    assert_eq!(copy_out(&s), want);
    let out = python(
        &s.uri(),
        &format!(
            "{WITH_STATUS}h.pwrite(b'\\0' * 3000, 1000)\n\
         h.pwrite(b'\\x11' * 5 + b'\\0' * 95, 995)\n\
         try:\n    h.pwrite(b'\\x01', 2000)\n    print('accepted')\n\
         except nbd.Error as e:\n    print(e.errno)\n\
         h.zero(2000, 2000)\n\
         ents = []\n\
         g.block_status(3096, 1000, lambda ctx, off, e, err: ents.extend(e))\n\
         print(ents)\n"
        ),
        &[],
    );
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("ENOSPC"), "{out}");
    // The last extent is the tail past the file: a hole reading as zero.
    let ents = lines.next().unwrap();
    assert_eq!(ents, "[3096, 3]");
    let mut want = data.clone();
    want[995..1000].fill(0x11);
    assert_eq!(disk(&s), want, "the file itself never grows");
}

#[test]
fn truncate_smaller_and_rounding() {
    let data = pseudo_random(10_000, 4);
    for (args, size) in [
        (&["truncate=3000"][..], 3000usize),
        (&["round-up=4k"], 12288),
        (&["round-down=4k"], 8192),
        (&["round-up=512", "round-down=8k"], 8192),
        (&["truncate=5000", "round-up=1k"], 5120),
        (&["round-up=16"], 10_000),
    ] {
        let mut full = vec!["--filter=truncate"];
        full.extend_from_slice(args);
        let s = serve_file(&data, &full);
        assert_eq!(
            nbdinfo(&["--size", &s.uri()]).trim(),
            size.to_string(),
            "{args:?}"
        );
        let mut want = data.clone();
        want.resize(size, 0);
        assert_eq!(copy_out(&s), want, "{args:?}");
    }
}

// ----------------------------------------------------------------- protect

#[test]
fn protect_refuses_changes_to_protected_bytes_only() {
    let data = pseudo_random(65536, 5);
    let s = serve_file(
        &data,
        &["--filter=protect", "protect=0-511", "protect=61440-"],
    );
    let script = "\
def attempt(f):
    try:
        f()
        return 'ok'
    except nbd.Error as e:
        return e.errno
boot = h.pread(512, 0)
print(attempt(lambda: h.pwrite(b'\\x01' * 1024, 1024)))
print(attempt(lambda: h.pwrite(b'\\x02', 511)))
print(attempt(lambda: h.pwrite(boot + b'\\x03' * 512, 0)))
print(attempt(lambda: h.pwrite(b'\\x04' * 8, 61436)))
print(attempt(lambda: h.zero(4096, 61440)))
print(attempt(lambda: h.trim(512, 0)))
print(attempt(lambda: h.zero(512, 4096)))
";
    let out = python(&s.uri(), script, &[]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["ok", "EPERM", "ok", "EPERM", "EPERM", "EPERM", "ok"],
        "{out}"
    );
    let mut want = data.clone();
    want[1024..2048].fill(1);
    want[512..1024].fill(3);
    want[4096..4608].fill(0);
    assert_eq!(disk(&s), want);
}

#[test]
fn protect_range_forms() {
    // -END, START-END, and ~START-END (everything but the range).
    let data = pseudo_random(8192, 6);
    for (param, open_lo, open_hi) in [
        ("protect=-1023", 1024usize, 8192usize),
        ("protect=~1024-2047", 1024, 2048),
        ("protect=0x400-", 0, 1024),
    ] {
        let s = serve_file(&data, &["--filter=protect", param]);
        let script = "r = []\n\
             for off in range(0, 8192, 512):\n\
             \x20   try:\n\
             \x20       h.pwrite(b'\\xee' * 512, off)\n\
             \x20       r.append(off)\n\
             \x20   except nbd.Error:\n\
             \x20       pass\n\
             print(r)\n";
        let out = python(&s.uri(), script, &[]);
        let want: Vec<usize> = (open_lo..open_hi).step_by(512).collect();
        assert_eq!(out.trim(), format!("{want:?}"), "{param}");
        let mut expect = data.clone();
        expect[open_lo..open_hi].fill(0xee);
        assert_eq!(disk(&s), expect, "{param}");
    }
}

// ---------------------------------------------------------------- readonly

#[test]
fn readonly_without_a_file_is_read_only() {
    let data = pseudo_random(4096, 7);
    let s = serve_file(&data, &["--filter=readonly"]);
    let out = python(
        &s.uri(),
        "print(h.is_read_only())\n\
         try:\n    h.pwrite(b'x', 0)\nexcept nbd.Error as e:\n    print(e.errno)\n",
        &[],
    );
    assert_eq!(out.lines().collect::<Vec<_>>(), ["True", "EPERM"]);
    assert_eq!(copy_out(&s), data);
    assert_eq!(disk(&s), data);
}

#[test]
fn readonly_file_switches_write_protection_at_run_time() {
    let data = pseudo_random(4096, 8);
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("ro");
    let flag_s = flag.display().to_string();
    let s = serve_file(
        &data,
        &["--filter=readonly", &format!("readonly-file={flag_s}")],
    );
    let script = "\
import pathlib
flag = pathlib.Path(sys.argv[2])
def attempt(f):
    try:
        f()
        return 'ok'
    except nbd.Error as e:
        return e.errno
print(h.is_read_only())
print(attempt(lambda: h.pwrite(b'\\x01' * 512, 0)))
flag.touch()
print(attempt(lambda: h.pwrite(b'\\x02' * 512, 512)))
print(attempt(lambda: h.zero(512, 1024)))
print(attempt(lambda: h.trim(512, 1024)))
print(h.pread(4, 0) == b'\\x01' * 4)
flag.unlink()
print(attempt(lambda: h.pwrite(b'\\x03' * 512, 2048)))
";
    let out = python(&s.uri(), script, &[&flag_s]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["False", "ok", "EPERM", "EPERM", "EPERM", "True", "ok"],
        "{out}"
    );
    let mut want = data.clone();
    want[..512].fill(1);
    want[2048..2560].fill(3);
    assert_eq!(disk(&s), want);
}

// ---------------------------------------------------------- bad parameters

#[test]
fn bad_parameters_are_startup_errors() {
    for (filter, param, msg) in [
        ("offset", "offset=-1", "size cannot be negative"),
        ("offset", "range=1x", "unknown suffix"),
        ("truncate", "truncate=big", "could not parse size"),
        ("truncate", "round-up=0", "must be > 0"),
        ("truncate", "round-up=1000", "power of 2"),
        ("truncate", "round-down=8G", "too large"),
        ("protect", "protect=100", "missing '-'"),
        ("protect", "protect=200-100", "end < start"),
        ("protect", "protect=1k-2k", "could not parse number"),
        ("readonly", "readonly-file=", "cannot be empty"),
    ] {
        let err = expect_error(&["--filter", filter, "memory", "1M", param], true);
        assert!(err.contains(msg), "{filter} {param}: {err}");
    }
}
