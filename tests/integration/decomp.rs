//! The decompressing filters (xz, gzip, bzip2): files made by the system
//! tools, served read-only over `file`, copied out and read at random and
//! compared byte for byte with the original.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A disk-like image: runs of random bytes, text and zeros, so that the
/// compressors have something to do and every region is distinct.
fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let rnd = pseudo_random(len, seed);
    let mut i = 0;
    while v.len() < len {
        let n = (len - v.len()).min(40_000 + (i % 7) * 3001);
        match i % 3 {
            0 => v.extend_from_slice(&rnd[v.len()..v.len() + n]),
            1 => v.extend((0..n).map(|k| b"the quick brown fox "[(k + i) % 20])),
            _ => v.resize(v.len() + n, 0),
        }
        i += 1;
    }
    v
}

/// Run `tool ARGS... < src > dst` (the tools' own stdout mode).
fn compress(tool: &str, args: &[&str], src: &Path, dst: &Path) {
    let out = std::fs::File::create(dst).unwrap();
    let o = Command::new(tool)
        .args(args)
        .stdin(std::fs::File::open(src).unwrap())
        .stdout(out)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool} (is it installed?): {e}"));
    assert!(
        o.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Number of blocks `xz --list` counts in `file`.
fn xz_blocks(file: &Path) -> u64 {
    let o = Command::new("xz")
        .args(["--robot", "--list"])
        .arg(file)
        .output()
        .unwrap();
    assert!(o.status.success());
    // "totals\t<streams>\t<blocks>\t..."
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let line = out
        .lines()
        .find(|l| l.starts_with("totals\t"))
        .unwrap_or_else(|| panic!("no totals in xz --list:\n{out}"));
    line.split('\t').nth(2).unwrap().parse().unwrap()
}

/// The original and its compressed form in a fresh directory.
struct Files {
    dir: tempfile::TempDir,
    data: Vec<u8>,
    raw: PathBuf,
}

impl Files {
    fn new(len: usize, seed: u64) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let data = image(len, seed);
        let raw = write_file(dir.path(), "disk.raw", &data);
        Files { dir, data, raw }
    }

    fn make(&self, name: &str, tool: &str, args: &[&str]) -> PathBuf {
        let p = self.dir.path().join(name);
        compress(tool, args, &self.raw, &p);
        p
    }
}

/// Copy the export out with nbdcopy and with qemu-img convert, and read it
/// at random (crossing every `boundary`, if given) with libnbd; everything
/// must equal `data`.
#[track_caller]
fn check_export(uri: &str, data: &[u8], raw: &Path, boundary: Option<u64>) {
    let out = tempfile::tempdir().unwrap();
    let a = out.path().join("nbdcopy.out");
    nbdcopy(&[uri, a.to_str().unwrap()]);
    assert!(std::fs::read(&a).unwrap() == data, "nbdcopy copy differs");
    let b = out.path().join("qemu.out");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        uri,
        b.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&b).unwrap() == data, "qemu-img copy differs");

    let script = r#"
import random
data = open(sys.argv[2], 'rb').read()
size = h.get_size()
assert size == len(data), (size, len(data))
assert h.is_read_only()
r = random.Random(int(sys.argv[3]))
reads = [(r.randrange(size), None) for _ in range(400)]
bs = int(sys.argv[4])
if bs:
    reads += [(max(0, k - 3), 7) for k in range(bs, size, bs)]
reads += [(0, 1), (size - 1, 1), (0, min(size, 3 << 20))]
for off, n in reads:
    if n is None:
        n = r.randint(1, min(200000, size - off))
    n = min(n, size - off)
    got = h.pread(n, off)
    if got != data[off:off + n]:
        print("MISMATCH at", off, "length", n)
        sys.exit(1)
# Block status says "all data" (the compressed file's own holes mean
# nothing here) and cache requests work.
h2 = nbd.NBD()
h2.add_meta_context("base:allocation")
h2.connect_uri(sys.argv[1])
if size:
    seen = []
    def got_extents(ctx, off, entries, err):
        seen.extend(entries)
        return 0
    h2.block_status(min(size, 1 << 30), 0, got_extents)
    assert seen and all(f == 0 for f in seen[1::2]), seen
    assert h2.can_cache()
    h2.cache(min(size, 1 << 20), 0)
    assert h2.pread(4096, 0) == data[:4096]
print("ok", len(reads))
"#;
    let bs = boundary.unwrap_or(0).to_string();
    let out = python(uri, script, &[raw.to_str().unwrap(), "7", &bs]);
    assert!(out.starts_with("ok "), "{out}");
}

#[test]
fn xz_many_blocks() {
    let f = Files::new(3 << 20, 11);
    let xz = f.make("disk.xz", "xz", &["-1", "-T1", "--block-size=262144", "-c"]);
    assert!(xz_blocks(&xz) >= 12, "xz made too few blocks");
    let s = Server::start(&["--filter=xz", "file", xz.to_str().unwrap()]);
    check_export(&s.uri(), &f.data, &f.raw, Some(262144));
    // A tiny cache still gives the same bytes (blocks are evicted and
    // decoded again).
    let s1 = Server::start(&[
        "--filter=xz",
        "file",
        xz.to_str().unwrap(),
        "xz-max-depth=1",
        "xz-max-block=256K",
    ]);
    check_export(&s1.uri(), &f.data, &f.raw, Some(262144));
}

#[test]
fn xz_one_big_block() {
    let f = Files::new(2 << 20, 12);
    // No --block-size and one thread: the whole file is one block.
    let xz = f.make("disk.xz", "xz", &["-2", "-T1", "-c"]);
    assert_eq!(xz_blocks(&xz), 1);
    let s = Server::start(&["--filter=xz", "file", xz.to_str().unwrap()]);
    check_export(&s.uri(), &f.data, &f.raw, None);

    // Over xz-max-block the file is refused when a client connects, and
    // the message says what to do.
    let s = Server::start(&[
        "--filter=xz",
        "file",
        xz.to_str().unwrap(),
        "xz-max-block=1M",
    ]);
    let o = client_any("/usr/bin/nbdinfo", &["--size", &s.uri()]);
    assert!(!o.status.success());
    let err = s.stderr();
    assert!(
        err.contains("largest block") && err.contains("xz-max-block"),
        "{err}"
    );
}

#[test]
fn xz_concatenated_streams() {
    let f = Files::new(1 << 20, 13);
    let one = f.make("one.xz", "xz", &["-1", "-T1", "--block-size=100000", "-c"]);
    let two = f.make("two.xz", "xz", &["-1", "-T1", "--check=sha256", "-c"]);
    let mut both = std::fs::read(&one).unwrap();
    both.extend_from_slice(&[0; 8]); // stream padding
    both.extend(std::fs::read(&two).unwrap());
    let p = write_file(f.dir.path(), "both.xz", &both);
    let mut data = f.data.clone();
    data.extend_from_slice(&f.data);
    let raw2 = write_file(f.dir.path(), "both.raw", &data);
    // xz itself agrees this is one file.
    let o = Command::new("xz").args(["-dc"]).arg(&p).output().unwrap();
    assert!(o.status.success() && o.stdout == data);
    let s = Server::start(&["--filter=xz", "file", p.to_str().unwrap()]);
    check_export(&s.uri(), &data, &raw2, Some(100000));
}

#[test]
fn gzip_and_bzip2() {
    let f = Files::new(3 << 20, 14);
    for (filter, tool, args) in [
        ("gzip", "gzip", &["-c"][..]),
        ("bzip2", "bzip2", &["-c", "-1"][..]),
    ] {
        let p = f.make(&format!("disk.{filter}"), tool, args);
        // The decompressed copy goes to $TMPDIR and is unlinked at once.
        let tmp = tempfile::tempdir().unwrap();
        let tmpdir = tmp.path().to_path_buf();
        let mut s = Server::start_with(
            tempfile::tempdir().unwrap(),
            &[&format!("--filter={filter}"), "file", p.to_str().unwrap()],
            |c| {
                c.env("TMPDIR", &tmpdir);
            },
        );
        check_export(&s.uri(), &f.data, &f.raw, None);
        // Served from the temporary file, which has no name.
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "{filter} left a file in TMPDIR"
        );
        s.stop_ok();
    }
}

#[test]
fn writes_are_refused() {
    let f = Files::new(300_000, 15);
    let xz = f.make("disk.xz", "xz", &["-1", "-T1", "--block-size=65536", "-c"]);
    let gz = f.make("disk.gz", "gzip", &["-c"]);
    let bz = f.make("disk.bz2", "bzip2", &["-c"]);
    for (filter, p) in [("xz", &xz), ("gzip", &gz), ("bzip2", &bz)] {
        let before = std::fs::read(p).unwrap();
        let s = Server::start(&[&format!("--filter={filter}"), "file", p.to_str().unwrap()]);
        let out = python(
            &s.uri(),
            r#"
assert h.is_read_only()
assert not h.can_trim() and not h.can_zero()
refused = 0
for call in (lambda: h.pwrite(b"x" * 512, 0),
             lambda: h.zero(512, 0),
             lambda: h.trim(512, 0)):
    try:
        call()
    except nbd.Error:
        refused += 1
print(refused, h.pread(512, 0) == open(sys.argv[2], 'rb').read(512))
"#,
            &[f.raw.to_str().unwrap()],
        );
        assert_eq!(out.trim(), "3 True", "{filter}");
        assert!(
            std::fs::read(p).unwrap() == before,
            "{filter} changed its file"
        );
        // Even with the server not started read-only, the connection is.
        let info = nbdinfo(&[&s.uri()]);
        assert!(info.contains("is_read_only: true"), "{info}");
    }
}

#[test]
fn bad_parameters() {
    for arg in [
        "xz-max-depth=0",
        "xz-max-depth=foo",
        "xz-max-depth=-1",
        "xz-max-block=foo",
        "xz-max-block=-1",
        "xz-max-block=1X",
    ] {
        let err = crate::cli::expect_error(&["--filter=xz", "null", arg], true);
        let key = arg.split('=').next().unwrap();
        assert!(
            err.contains(key) || err.contains("size"),
            "{arg}: unhelpful error: {err}"
        );
    }
}

/// Serve `file` through `filter`; connecting must fail, the server must
/// say `want` and stay up.
#[track_caller]
fn refused_at_open(filter: &str, file: &Path, want: &str) {
    let mut s = Server::start(&[
        &format!("--filter={filter}"),
        "file",
        file.to_str().unwrap(),
    ]);
    let o = client_any("/usr/bin/nbdinfo", &["--size", &s.uri()]);
    assert!(!o.status.success(), "{filter} served {file:?}");
    let err = s.stderr();
    assert!(
        err.contains(want),
        "{filter} {file:?}: wanted {want:?} in:\n{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(s.is_running());
    s.stop_ok();
}

#[test]
fn wrong_format_is_a_clear_error() {
    let f = Files::new(100_000, 16);
    let gz = f.make("disk.gz", "gzip", &["-c"]);
    let xz = f.make("disk.xz", "xz", &["-c"]);
    refused_at_open("xz", &f.raw, "not an xz file");
    refused_at_open("xz", &gz, "not an xz file");
    refused_at_open("gzip", &f.raw, "not a gzip file");
    refused_at_open("gzip", &xz, "not a gzip file");
    refused_at_open("bzip2", &gz, "not a bzip2 file");
    let empty = write_file(f.dir.path(), "empty", b"");
    for filter in ["xz", "gzip", "bzip2"] {
        refused_at_open(filter, &empty, "not a");
    }
}

#[test]
fn truncated_and_corrupt_files() {
    let f = Files::new(1 << 20, 17);
    let xz = f.make("disk.xz", "xz", &["-1", "-T1", "--block-size=65536", "-c"]);
    let gz = f.make("disk.gz", "gzip", &["-c"]);
    let bz = f.make("disk.bz2", "bzip2", &["-c"]);
    let cut = |p: &Path, n: usize| {
        let b = std::fs::read(p).unwrap();
        let name = format!("{}.cut{n}", p.file_name().unwrap().to_str().unwrap());
        write_file(f.dir.path(), &name, &b[..b.len() - n])
    };
    // xz reads its index from the end: truncation is found at open.
    for n in [4, 100, 1000] {
        refused_at_open("xz", &cut(&xz, n), "xz: ");
    }
    refused_at_open("gzip", &cut(&gz, 100), "truncated");
    refused_at_open("bzip2", &cut(&bz, 100), "truncated");

    // Damage inside one xz block: open works, reads of that block fail,
    // every other block still reads correctly.
    let mut b = std::fs::read(&xz).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    let bad = write_file(f.dir.path(), "bad.xz", &b);
    let s = Server::start(&["--filter=xz", "file", bad.to_str().unwrap()]);
    let out = python(
        &s.uri(),
        r#"
data = open(sys.argv[2], 'rb').read()
bad = good = 0
for off in range(0, len(data), 65536):
    try:
        ok = h.pread(65536, off) == data[off:off + 65536]
        assert ok, off
        good += 1
    except nbd.Error:
        bad += 1
print(bad, good)
"#,
        &[f.raw.to_str().unwrap()],
    );
    let v: Vec<u32> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert!(v[0] >= 1 && v[1] >= 10, "bad, good = {out}");
    assert!(s.stderr().contains("corrupt"), "{}", s.stderr());

    // Damage inside gzip or bzip2 data is found while decompressing.
    for (filter, p) in [("gzip", &gz), ("bzip2", &bz)] {
        let mut b = std::fs::read(p).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0xff;
        let bad = write_file(f.dir.path(), &format!("bad.{filter}"), &b);
        refused_at_open(filter, &bad, &format!("{filter}: "));
    }
}

/// The tar filter over a decompressing one serves a member of a
/// compressed tar file.
#[test]
fn tar_member_of_compressed_tar() {
    let f = Files::new(500_000, 18);
    write_file(f.dir.path(), "a.txt", b"first\n");
    for (filter, flag) in [("gzip", "z"), ("bzip2", "j"), ("xz", "J")] {
        let t = format!("data.tar.{filter}");
        let o = Command::new("tar")
            .current_dir(f.dir.path())
            .args([&format!("c{flag}f"), &t, "a.txt", "disk.raw"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let p = f.dir.path().join(&t);
        let s = Server::start(&[
            "file",
            p.to_str().unwrap(),
            "--filter=tar",
            &format!("--filter={filter}"),
            "tar-entry=disk.raw",
        ]);
        let out = tempfile::tempdir().unwrap();
        let dst = out.path().join("out");
        nbdcopy(&[&s.uri(), dst.to_str().unwrap()]);
        assert!(std::fs::read(&dst).unwrap() == f.data, "{filter}");
    }
}
