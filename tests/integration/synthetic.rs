//! The synthetic plugins: pattern, zero, full, ones, random, sparse-random.
//! Reference values marked "C" were read from nbdkit 1.32.5's C plugins
//! with the same parameters; ours must serve the same bytes.

use crate::harness::*;

/// Start `nbdkit ARGS` expecting a startup failure: exit status 1 and an
/// error line containing `needle`.
#[track_caller]
fn startup_error(args: &[&str], needle: &str) {
    let o = run(args);
    let err = stderr_str(&o);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(
        err.contains("error") && err.contains(needle),
        "{args:?}: {err}"
    );
    assert_no_panic(&o);
}

/// `qemu-img map` as `[{start, length, data, zero}]` JSON on one line.
fn map_json(uri: &str) -> String {
    let out = qemu_img(&["map", "--output=json", "-f", "raw", uri]);
    jq("map({start, length, data, zero})", &out)
        .trim()
        .to_string()
}

/// md5 of the whole disk, read with nbdcopy.
fn disk_md5(args: &[&str]) -> String {
    let mut a: Vec<&str> = vec!["-U", "-"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--run", "nbdcopy \"$uri\" - | md5sum"]);
    run_ok(&a)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

// ---- pattern -------------------------------------------------------------

#[test]
fn pattern_words_hold_their_offset_big_endian() {
    let s = Server::start(&["pattern", "size=1M"]);
    let script = r#"
import struct
assert h.get_size() == 1048576
assert h.is_read_only()
assert h.pread(16, 0) == bytes(8) + bytes([0, 0, 0, 0, 0, 0, 0, 8])
assert h.pread(8, 0x28) == struct.pack(">Q", 0x28)
# Unaligned reads see the same bytes as aligned ones.
whole = h.pread(65536, 65536)
for off in (1, 7, 9, 4095):
    assert h.pread(100, 65536 + off) == whole[off:off + 100], off
for i in range(0, 65536, 8):
    assert struct.unpack(">Q", whole[i:i + 8])[0] == 65536 + i
# The last word of a size that is not a multiple of 8 is cut short.
print("ok")
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "ok");
}

#[test]
fn pattern_truncates_last_word_and_copies() {
    // The whole disk as nbdcopy sees it equals the pattern computed here.
    let s = Server::start(&["pattern", "1001"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    nbdcopy(&[s.uri().as_str(), out.to_str().unwrap()]);
    let got = std::fs::read(&out).unwrap();
    let want: Vec<u8> = (0..1001u64)
        .map(|o| (o & !7).to_be_bytes()[(o % 8) as usize])
        .collect();
    assert_eq!(got, want);
    // No extents: the whole disk is data.
    let s = Server::start(&["pattern", "1M"]);
    assert_eq!(
        map_json(&s.uri()).trim(),
        r#"[{"start":0,"length":1048576,"data":true,"zero":false}]"#
    );
}

#[test]
fn pattern_largest_size_and_writes_refused() {
    let s = Server::start(&["pattern", "9223372036854775807"]);
    let script = r#"
import struct
size = h.get_size()
assert size == 2**63 - 1
last = (size - 1) & ~7
assert h.pread(7, last) == struct.pack(">Q", last)[:7]
try:
    h.pwrite(b"x", 0)
    raise SystemExit("write succeeded")
except nbd.Error as e:
    assert e.errno in ("EPERM", "EROFS", "EINVAL"), e
print("ok")
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "ok");
}

#[test]
fn pattern_bad_parameters() {
    startup_error(&["pattern"], "size");
    startup_error(&["pattern", "size=foo"], "size");
    startup_error(&["pattern", "1M", "seed=1"], "unknown parameter 'seed'");
    startup_error(&["pattern", "1M", "size=2M"], "more than once");
}

// ---- zero ----------------------------------------------------------------

/// upstream tests/test-zero.sh
#[test]
fn zero_is_empty_and_read_only() {
    let s = Server::start(&["zero"]);
    assert_eq!(nbdinfo(&["--size", &s.uri()]).trim(), "0");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    nbdcopy(&[s.uri().as_str(), out.to_str().unwrap()]);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 0);
    let info = nbdinfo(&[s.uri().as_str()]);
    assert!(info.contains("is_read_only: true"), "{info}");
    assert!(info.contains("can_multi_conn: true"), "{info}");
}

#[test]
fn zero_takes_no_parameters() {
    startup_error(&["zero", "size=1M"], "no parameters");
    startup_error(&["zero", "1M"], "1M");
}

// ---- full ----------------------------------------------------------------

/// upstream tests/test-full.sh
#[test]
fn full_reads_zero_and_every_write_fails_enospc() {
    let s = Server::start(&["full", "1M"]);
    let script = r#"
assert h.get_size() == 1048576
assert h.pread(4096, 1000) == bytes(4096)
def enospc(f):
    try:
        f()
        raise SystemExit("succeeded")
    except nbd.Error as e:
        assert e.errno == "ENOSPC", e
enospc(lambda: h.pwrite(b"x" * 512, 0))
enospc(lambda: h.pwrite(b"x", 1048575, nbd.CMD_FLAG_FUA) if h.can_fua() else h.pwrite(b"x", 1))
enospc(lambda: h.trim(4096, 0))
enospc(lambda: h.zero(4096, 0))
try:
    h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO)
    raise SystemExit("fast zero succeeded")
except nbd.Error as e:
    assert e.errno in ("ENOTSUP", "EOPNOTSUPP", "ENOSPC"), e
# Still readable after failures.
assert h.pread(1, 0) == b"\0"
print("ok")
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "ok");
    assert_eq!(
        map_json(&s.uri()).trim(),
        r#"[{"start":0,"length":1048576,"data":false,"zero":true}]"#
    );
    // A copy into it fails.
    let dir = tempfile::tempdir().unwrap();
    let src = write_file(dir.path(), "src", &[1u8; 65536]);
    let o = client_any(
        "/usr/bin/nbdcopy",
        &[src.to_str().unwrap(), s.uri().as_str()],
    );
    assert!(!o.status.success());
}

#[test]
fn full_bad_parameters() {
    startup_error(&["full"], "size");
    startup_error(&["full", "1X"], "size");
    startup_error(&["full", "1M", "byte=1"], "unknown parameter 'byte'");
}

// ---- ones ----------------------------------------------------------------

#[test]
fn ones_default_byte_writes_discarded() {
    let s = Server::start(&["ones", "1M"]);
    let script = r#"
assert h.get_size() == 1048576
assert not h.is_read_only()
assert h.pread(1000, 12345) == b"\xff" * 1000
h.pwrite(b"\0" * 4096, 0)
h.zero(4096, 8192)
h.trim(4096, 16384)
h.flush()
assert h.pread(20480, 0) == b"\xff" * 20480
print("ok")
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "ok");
    assert_eq!(
        map_json(&s.uri()).trim(),
        r#"[{"start":0,"length":1048576,"data":true,"zero":false}]"#
    );
}

#[test]
fn ones_byte_parameter_and_default_size() {
    for (v, b) in [("0x55", 0x55u8), ("0", 0), ("017", 15), ("200", 200)] {
        let param = format!("byte={v}");
        let s = Server::start(&["ones", "size=64K", &param]);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        nbdcopy(&[s.uri().as_str(), out.to_str().unwrap()]);
        assert_eq!(std::fs::read(&out).unwrap(), vec![b; 65536], "byte={v}");
    }
    let s = Server::start(&["ones"]);
    assert_eq!(nbdinfo(&["--size", &s.uri()]).trim(), "0");
}

#[test]
fn ones_bad_parameters() {
    startup_error(&["ones", "byte=256"], "byte");
    startup_error(&["ones", "byte=-1"], "byte");
    startup_error(&["ones", "byte=ff"], "byte");
    startup_error(&["ones", "byte=1", "byte=2"], "more than once");
    startup_error(&["ones", "1M", "seed=2"], "unknown parameter 'seed'");
}

// ---- random --------------------------------------------------------------

#[test]
fn random_same_seed_same_bytes_as_c() {
    // C: nbdkit random 1M seed=12345 | md5sum
    assert_eq!(
        disk_md5(&["random", "1M", "seed=12345"]),
        "c3fb146bb4c0037e87e690ac87d900cb"
    );
    let s = Server::start(&["random", "size=1M", "seed=12345"]);
    // C: the first 16 bytes.
    assert_eq!(
        nbdsh(&s.uri(), "print(h.pread(16, 0).hex())").trim(),
        "880493f162cf7fcfe258c26d2494ba2e"
    );
    let s0 = Server::start(&["random", "size=1M", "seed=0"]);
    assert_eq!(
        nbdsh(&s0.uri(), "print(h.pread(16, 1000).hex())").trim(),
        "54b6529a529d6134c1c2798af151672b"
    );
    // Other seeds give other data; the same seed is repeatable.
    let a = disk_md5(&["random", "1M", "seed=1"]);
    assert_ne!(a, disk_md5(&["random", "1M", "seed=2"]));
    assert_eq!(a, disk_md5(&["random", "1M", "seed=0x1"]));
}

#[test]
fn random_copy_onto_itself_checks_writes() {
    // upstream: nbdcopy "$uri" "$uri" succeeds because writes match.
    let out = run_ok(&[
        "-U",
        "-",
        "random",
        "size=8M",
        "seed=9",
        "--run",
        "nbdcopy \"$uri\" \"$uri\" && echo copied",
    ]);
    assert_eq!(out.trim(), "copied");
    let s = Server::start(&["random", "size=1M", "seed=9"]);
    let script = r#"
data = h.pread(4096, 4096)
h.pwrite(data, 4096)
bad = bytearray(data); bad[0] ^= 1
for f in (lambda: h.pwrite(bytes(bad), 4096), lambda: h.trim(512, 0), lambda: h.zero(512, 0)):
    try:
        f()
        raise SystemExit("succeeded")
    except nbd.Error as e:
        assert e.errno == "EIO", e
print("ok")
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "ok");
    // The disk is all data.
    assert_eq!(
        map_json(&s.uri()).trim(),
        r#"[{"start":0,"length":1048576,"data":true,"zero":false}]"#
    );
}

#[test]
fn random_without_seed_still_serves() {
    let s = Server::start(&["random", "64K"]);
    let out = nbdsh(&s.uri(), "d = h.pread(65536, 0); print(len(set(d)) > 200)");
    assert_eq!(out.trim(), "True");
}

#[test]
fn random_bad_parameters() {
    startup_error(&["random"], "size");
    startup_error(&["random", "1M", "seed=abc"], "seed");
    startup_error(&["random", "1M", "seed=4294967296"], "seed");
    startup_error(&["random", "1M", "seed=-1"], "seed");
    startup_error(&["random", "1M", "seed=1", "seed=2"], "more than once");
    startup_error(
        &["random", "1M", "percent=1"],
        "unknown parameter 'percent'",
    );
}

// ---- sparse-random -------------------------------------------------------

#[test]
fn sparse_random_same_map_and_bytes_as_c() {
    // C: nbdkit sparse-random 16M seed=77 runlength=65536 | md5sum
    let args = ["sparse-random", "16M", "seed=77", "runlength=65536"];
    assert_eq!(disk_md5(&args), "acf010aeeba419319aa57edb46aad58c");
    let s = Server::start(&args);
    let map = nbdinfo(&["--map", &s.uri()]);
    let first: Vec<&str> = map.lines().take(3).collect();
    assert_eq!(
        first
            .iter()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>(),
        vec![
            "0 536576 3 hole,zero",
            "536576 24576 0 data",
            "561152 479232 3 hole,zero"
        ],
        "{map}"
    );
    let totals = nbdinfo(&["--map", "--totals", &s.uri()]);
    assert!(
        totals.contains("1777664") && totals.contains("14999552"),
        "{totals}"
    );
    // runlength accepts size suffixes (64K = 65536).
    assert_eq!(
        disk_md5(&["sparse-random", "16M", "seed=77", "runlength=64K"]),
        "acf010aeeba419319aa57edb46aad58c"
    );
    // C: random-content=true percent=40.
    assert_eq!(
        disk_md5(&[
            "sparse-random",
            "16M",
            "seed=77",
            "runlength=65536",
            "random-content=true",
            "percent=40"
        ]),
        "a5f0042bc14c262a4b98a91a1fbc3bdc"
    );
}

#[test]
fn sparse_random_extents_agree_with_data() {
    let s = Server::start(&[
        "sparse-random",
        "32M",
        "seed=4",
        "runlength=256K",
        "percent=25",
    ]);
    let script = r#"
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(sys.argv[1])
ents = []
def cb(meta, off, e, err):
    ents.extend(e)
size = h.get_size()
off = 0
while off < size:
    ents.clear()
    h.block_status(min(size - off, 8 << 20), off, cb)
    for i in range(0, len(ents), 2):
        n, flags = ents[i], ents[i + 1]
        d = h.pread(min(n, 1 << 20), off)
        if flags == 3:
            assert d == bytes(len(d)), off
        else:
            assert flags == 0 and d != bytes(len(d)), (off, flags)
            # Blocks without random-content are one repeated non-zero byte.
            assert d[:4096] == d[:1] * 4096, off
        off += n
print("ok")
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "ok");
}

#[test]
fn sparse_random_copy_onto_itself_and_hole_rules() {
    let out = run_ok(&[
        "-U",
        "-",
        "sparse-random",
        "size=1G",
        "seed=3",
        "runlength=1M",
        "--run",
        "nbdcopy \"$uri\" \"$uri\" && qemu-img convert -n -O raw \"$uri\" \"$uri\" && echo copied",
    ]);
    assert_eq!(out.trim(), "copied");
    let s = Server::start(&["sparse-random", "size=4M", "percent=100", "seed=1"]);
    let script = r#"
for f in (lambda: h.pwrite(bytes(4096), 0), lambda: h.trim(4096, 0), lambda: h.zero(4096, 0)):
    try:
        f()
        raise SystemExit("succeeded")
    except nbd.Error as e:
        assert e.errno == "EIO", e
h.pwrite(h.pread(5000, 100), 100)
h.flush()
print("ok")
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "ok");
    let s = Server::start(&["sparse-random", "size=4M", "percent=0"]);
    let script = r#"
h.pwrite(bytes(4096), 0)
h.trim(65536, 0)
h.zero(65536, 1000)
try:
    h.pwrite(b"x", 0)
    raise SystemExit("succeeded")
except nbd.Error as e:
    assert e.errno == "EIO", e
print("ok")
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "ok");
    assert_eq!(
        map_json(&s.uri()).trim(),
        r#"[{"start":0,"length":4194304,"data":false,"zero":true}]"#
    );
}

#[test]
fn sparse_random_percent_and_random_content() {
    let totals = |args: &[&str]| {
        let s = Server::start(args);
        nbdinfo(&["--map", "--totals", &s.uri()])
    };
    let t = totals(&["sparse-random", "64M", "percent=100"]);
    assert!(t.contains("100.0%") && t.contains("data"), "{t}");
    let t = totals(&["sparse-random", "64M", "percent=0"]);
    assert!(t.contains("100.0%") && t.contains("hole,zero"), "{t}");
    let a = disk_md5(&[
        "sparse-random",
        "4M",
        "percent=50",
        "seed=8",
        "runlength=64K",
    ]);
    let b = disk_md5(&[
        "sparse-random",
        "4M",
        "percent=50",
        "seed=8",
        "runlength=64K",
        "random-content=yes",
    ]);
    assert_ne!(a, b);
    let s = Server::start(&["sparse-random", "1M", "percent=100", "random-content=true"]);
    let out = nbdsh(&s.uri(), "d = h.pread(4096, 0); print(len(set(d)) > 100)");
    assert_eq!(out.trim(), "True");
}

#[test]
fn sparse_random_bad_parameters() {
    startup_error(&["sparse-random"], "size");
    startup_error(&["sparse-random", "1M", "percent=101"], "percent");
    startup_error(&["sparse-random", "1M", "percent=-1"], "percent");
    startup_error(&["sparse-random", "1M", "percent=abc"], "percent");
    startup_error(&["sparse-random", "1M", "runlength=0"], "runlength");
    startup_error(&["sparse-random", "1M", "runlength=1Q"], "runlength");
    startup_error(
        &["sparse-random", "1M", "random-content=maybe"],
        "random-content",
    );
    startup_error(&["sparse-random", "1M", "seed=x"], "seed");
    startup_error(
        &["sparse-random", "1M", "percent=1", "percent=2"],
        "more than once",
    );
    startup_error(
        &["sparse-random", "1M", "byte=1"],
        "unknown parameter 'byte'",
    );
}
