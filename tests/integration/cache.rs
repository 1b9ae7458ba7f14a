//! The cache and cacheextents filters.

use crate::cli::expect_error;
use crate::harness::*;
use std::path::Path;

/// Space used by the server's cache file (an unlinked `cache*` file in
/// `tmpdir`), found through /proc.
fn cache_file_bytes(pid: u32, tmpdir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let prefix = tmpdir.join("cache").display().to_string();
    let mut found = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let e = e.unwrap();
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let t = target.display().to_string();
        if t.starts_with(&prefix) && t.ends_with("(deleted)") {
            found.push(std::fs::metadata(e.path()).unwrap().blocks() * 512);
        }
    }
    assert_eq!(found.len(), 1, "cache files of {pid}: {found:?}");
    found[0]
}

/// A 32 MiB disk through a 4 MiB cache: writes and reads both fill the
/// cache, which must reclaim (writing dirty blocks back); everything read
/// back and, after flush, the file itself equal what was written.
#[test]
fn reclaim_keeps_the_cache_bounded_and_data_intact() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src_data = pseudo_random(32 << 20, 11);
    let src = write_file(tmp.path(), "src.img", &src_data);
    let disk = tmp.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let tmpdir = tmp.path().to_path_buf();
    let s = Server::start_with(
        dir,
        &[
            "--filter=cache",
            "file",
            disk.to_str().unwrap(),
            "cache-max-size=4M",
            "cache-on-read=true",
        ],
        |c| {
            c.env("TMPDIR", &tmpdir);
        },
    );
    nbdcopy(&["--flush", src.to_str().unwrap(), &s.uri()]);
    let used = cache_file_bytes(s.pid(), &tmpdir);
    assert!(used <= 4 << 20, "cache holds {used} bytes after writing");
    assert_eq!(std::fs::read(&disk).unwrap(), src_data, "file after flush");
    let back = tmp.path().join("back.img");
    nbdcopy(&[&s.uri(), back.to_str().unwrap()]);
    assert_eq!(std::fs::read(&back).unwrap(), src_data, "read back");
    let used = cache_file_bytes(s.pid(), &tmpdir);
    assert!(used <= 4 << 20, "cache holds {used} bytes after reading");
    assert!(used > 0, "reads with cache-on-read=true filled nothing");
    // Random partial writes on two connections, read back, flushed.
    let script = r#"
import random
random.seed(3)
size = h.get_size()
h2 = nbd.NBD()
h2.connect_uri(sys.argv[1])
model = bytearray(h.pread(size, 0))
for i in range(200):
    off = random.randrange(size)
    n = min(random.choice([1, 1000, 65536, 300000]), size - off)
    b = os.urandom(n)
    (h if i % 2 else h2).pwrite(b, off)
    model[off:off+n] = b
assert h2.pread(size, 0) == model
h2.flush()
with open(sys.argv[2], "rb") as f:
    assert f.read() == model, "file after flush"
print("ok")
"#;
    assert_eq!(
        python(&s.uri(), script, &[disk.to_str().unwrap()]).trim(),
        "ok"
    );
}

/// Writeback keeps writes from the file until flush (or FUA);
/// writethrough writes them at once; unsafe ignores flush.
#[test]
fn writeback_writethrough_and_unsafe() {
    let script = r#"
path = sys.argv[2]
def first(off):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(1).decode()
h.pwrite(b"B" * 70000, 1000)
seen = [first(1000), first(70999)]
h.pwrite(b"C" * 10, 200000, nbd.CMD_FLAG_FUA)
seen.append(first(200000))
h.flush()
seen += [first(1000), first(70999)]
assert h.pread(70000, 1000) == b"B" * 70000
print("".join(seen))
"#;
    for (mode, want) in [
        ("writeback", "AACBB"),
        ("writethrough", "BBCBB"),
        ("unsafe", "AAAAA"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let p = write_file(dir.path(), "disk.img", &vec![b'A'; 1 << 20]);
        let arg = format!("cache={mode}");
        let s = Server::start(&["--filter=cache", "file", p.to_str().unwrap(), &arg]);
        let out = python(&s.uri(), script, &[p.to_str().unwrap()]);
        assert_eq!(out.trim(), want, "cache={mode}");
    }
}

/// A cache request fills the cache (so later reads do not reach the
/// plugin: a change behind the cache's back does not show); -D
/// cache.verbose=1 (with -v) logs each block cached.
#[test]
fn cache_requests_populate_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_file(dir.path(), "disk.img", &vec![b'A'; 4 << 16]);
    let s = Server::start(&[
        "--filter=cache",
        "-v",
        "-D",
        "cache.verbose=1",
        "file",
        p.to_str().unwrap(),
    ]);
    let script = r#"
B = 65536
assert h.can_cache()
h.cache(B + 1, 10)          # blocks 0 and 1
with open(sys.argv[2], "r+b") as f:
    f.write(b"B" * (4 * B))
print("".join(h.pread(1, i * B + 7).decode() for i in range(4)))
"#;
    let out = python(&s.uri(), script, &[p.to_str().unwrap()]);
    assert_eq!(out.trim(), "AABB");
    let log = s.stderr();
    assert!(log.contains("cache: cache block 0"), "{log}");
    assert!(log.contains("cache: cache block 1"), "{log}");
    assert!(!log.contains("cache: cache block 2"), "{log}");
}

/// Dirty blocks written into a hole read as data in block status.
#[test]
fn dirty_blocks_are_data_in_block_status() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sparse.img");
    std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
    let s = Server::start(&["--filter=cache", "file", p.to_str().unwrap()]);
    let script = r#"
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(sys.argv[1])
h.pwrite(b"x" * 65536, 65536)
e = []
h.block_status(1 << 20, 0, lambda m, o, x, err: e.extend(x))
print(e)
"#;
    let out = python(&s.uri(), script, &[]);
    assert_eq!(out.trim(), "[65536, 3, 65536, 0, 917504, 3]");
}

#[test]
fn cache_bad_parameters_are_startup_errors() {
    for bad in [
        &["cache=sometimes"][..],
        &["cache-max-size=1000K"],
        &["cache-max-size=lots"],
        &["cache-min-block-size=2K"],
        &["cache-min-block-size=5000"],
        &["cache-high-threshold=0"],
        &["cache-low-threshold=x"],
        &["cache-on-read=maybe"],
        &[
            "cache-max-size=4M",
            "cache-low-threshold=95",
            "cache-high-threshold=90",
        ],
    ] {
        let mut args = vec!["--filter=cache", "memory", "1M"];
        args.extend_from_slice(bad);
        let err = expect_error(&args, true);
        assert_eq!(
            err.lines()
                .filter(|l| l.starts_with("nbdkit: error: "))
                .count(),
            1,
            "{bad:?}: {err}"
        );
    }
}

/// Repeated block-status queries inside the kept answer do not reach the
/// plugin (counted with -v trace lines "file: extents"); a write forgets
/// the answer and the next query sees the new data.
#[test]
fn cacheextents_answers_repeated_queries() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sparse.img");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(8 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[1u8; 65536], 1 << 20).unwrap();
    drop(f);
    let s = Server::start(&["-v", "--filter=cacheextents", "file", p.to_str().unwrap()]);
    let script = r#"
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(sys.argv[1])
def bs(count, off, flags=0):
    e = []
    h.block_status(count, off, lambda m, o, x, err: e.extend(x), flags)
    return e
a = bs(8 << 20, 0)
b = bs(8 << 20, 0)
c = bs(1 << 20, 4 << 20, nbd.CMD_FLAG_REQ_ONE)
assert a == b, (a, b)
print(a)
print(c[:2])
sys.stdout.flush()
h.pwrite(b"y" * 65536, 6 << 20)
print(bs(8 << 20, 0))
"#;
    let out = python(&s.uri(), script, &[]);
    let lines: Vec<&str> = out.lines().collect();
    let m = 1u64 << 20;
    assert_eq!(
        lines[0],
        format!("[{m}, 3, 65536, 0, {}, 3]", 7 * m - 65536),
        "{out}"
    );
    assert_eq!(lines[1], format!("[{}, 3]", m), "{out}");
    assert_eq!(
        lines[2],
        format!(
            "[{m}, 3, 65536, 0, {}, 3, 65536, 0, {}, 3]",
            5 * m - 65536,
            2 * m - 65536
        ),
        "{out}"
    );
    let log = s.stderr();
    let calls = log.lines().filter(|l| l.contains("file: extents")).count();
    assert_eq!(calls, 2, "{log}");
    assert_eq!(log.matches("cacheextents: returning from cache").count(), 2);
}
