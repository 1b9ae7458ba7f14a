//! The cow filter: a private writable overlay; the plugin's data is never
//! changed.

use crate::cli::expect_error;
use crate::harness::*;

/// A file whose size is not a multiple of the block size, with data, a
/// hole, and more data.
fn disk(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let size = (4 << 20) + 1000;
    let mut data = vec![0u8; size];
    data[..1 << 20].copy_from_slice(&pseudo_random(1 << 20, 1));
    data[3 << 20..].copy_from_slice(&pseudo_random(size - (3 << 20), 2));
    let p = dir.join("disk.img");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size as u64).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&data[..1 << 20], 0).unwrap();
    f.write_all_at(&data[3 << 20..], 3 << 20).unwrap();
    (p, data)
}

/// Writes, zeroes and trims of every alignment, on two connections, land
/// in the overlay and read back exactly; the file is untouched.
#[test]
fn writes_read_back_and_leave_the_plugin_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (p, data) = disk(dir.path());
    let s = Server::start(&["--filter=cow", "file", p.to_str().unwrap()]);
    let script = r#"
import random
size = h.get_size()
model = bytearray(h.pread(size, 0))
h2 = nbd.NBD()
h2.connect_uri(sys.argv[1])
assert h.can_multi_conn() and h.can_trim() and h.can_zero()
random.seed(5)
for i in range(300):
    off = random.randrange(size)
    n = min(random.choice([1, 511, 4096, 65536, 70000, 200000]), size - off)
    op = random.choice(["w", "w", "z", "t"])
    c = h if i % 2 else h2
    if op == "w":
        b = bytes(random.getrandbits(8) for _ in range(n)) if n < 5000 else os.urandom(n)
        c.pwrite(b, off, nbd.CMD_FLAG_FUA if i % 3 == 0 else 0)
        model[off:off+n] = b
    elif op == "z":
        c.zero(n, off, nbd.CMD_FLAG_NO_HOLE if i % 3 == 0 else 0)
        model[off:off+n] = bytes(n)
    else:
        c.trim(n, off)
        model[off:off+n] = bytes(n)
# The end of the disk, in its partial last block.
h.pwrite(b"END", size - 3)
model[size-3:] = b"END"
h.flush()
assert h.pread(size, 0) == model, "connection 1 differs"
assert h2.pread(size, 0) == model, "connection 2 differs"
print("ok")
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "ok");
    // The same data through nbdcopy.
    let out = dir.path().join("copy.img");
    nbdcopy(&[&s.uri(), out.to_str().unwrap()]);
    let copied = std::fs::read(&out).unwrap();
    assert_eq!(copied.len(), data.len());
    assert_ne!(copied, data);
    assert!(copied.ends_with(b"END"));
    drop(s);
    assert_eq!(
        std::fs::read(&p).unwrap(),
        data,
        "the plugin's file changed"
    );
}

/// qemu-img writes a whole image through cow over a read-only plugin.
#[test]
fn qemu_img_convert_over_a_read_only_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let src = write_file(dir.path(), "src.img", &pseudo_random(3 << 20, 9));
    let s = Server::start(&["--filter=cow", "null", "3M"]);
    qemu_img(&[
        "convert",
        "-n",
        "-f",
        "raw",
        "-O",
        "raw",
        src.to_str().unwrap(),
        &s.uri(),
    ]);
    let out = dir.path().join("out.img");
    nbdcopy(&[&s.uri(), out.to_str().unwrap()]);
    assert_eq!(std::fs::read(out).unwrap(), std::fs::read(src).unwrap());
}

/// Block status joins the overlay's blocks (data, zero, trimmed) with the
/// plugin's extents (a file with a hole).
#[test]
fn extents_across_overlay_and_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sparse.img");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(1 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&pseudo_random(65536, 3), 0).unwrap();
    drop(f);
    let s = Server::start(&["--filter=cow", "file", p.to_str().unwrap()]);
    let script = r#"
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(sys.argv[1])
K = 1024
before = []
h.block_status(1 << 20, 0, lambda m, o, e, err: before.extend(e))
print("before", before)
h.pwrite(b"x" * 4096, 512 * K)               # one 64K block becomes data
h.zero(64 * K, 768 * K, nbd.CMD_FLAG_NO_HOLE) # allocated zeroes
h.trim(64 * K, 0)                            # the plugin's data trimmed
h.zero(64 * K, 896 * K)                      # may punch a hole
ext = []
h.block_status(1 << 20, 0, lambda m, o, e, err: ext.extend(e))
print("after", ext)
one = []
h.block_status(424 * K, 600 * K, lambda m, o, e, err: one.extend(e), nbd.CMD_FLAG_REQ_ONE)
print("one", one)
"#;
    let out = python(&s.uri(), script, &[]);
    let k = 1024u64;
    let line = |name: &str, v: &[(u64, u32)]| {
        let items: Vec<String> = v.iter().map(|(l, f)| format!("{l}, {f}")).collect();
        format!("{name} [{}]", items.join(", "))
    };
    let want = [
        line("before", &[(64 * k, 0), (960 * k, 3)]),
        line(
            "after",
            &[
                (64 * k, 3),
                (448 * k, 3),
                (64 * k, 0),
                (192 * k, 3),
                (64 * k, 2),
                (64 * k, 3),
                (64 * k, 3),
                (64 * k, 3),
            ],
        ),
        line("one", &[(168 * k, 3)]),
    ];
    let got: Vec<&str> = out.lines().collect();
    // libnbd hands over the extents as the server sent them; adjacent
    // extents of one type may or may not be merged, so compare after
    // merging.
    let merge = |l: &str| {
        let (name, rest) = l.split_once(' ').unwrap();
        let nums: Vec<u64> = rest
            .trim_matches(|c| c == '[' || c == ']')
            .split(", ")
            .map(|x| x.parse().unwrap())
            .collect();
        let mut m: Vec<(u64, u32)> = Vec::new();
        for pair in nums.chunks(2) {
            match m.last_mut() {
                Some(last) if last.1 == pair[1] as u32 => last.0 += pair[0],
                _ => m.push((pair[0], pair[1] as u32)),
            }
        }
        line(name, &m)
    };
    let want: Vec<String> = want.iter().map(|l| merge(l)).collect();
    let got: Vec<String> = got.iter().map(|l| merge(l)).collect();
    assert_eq!(got, want, "{out}");
    // nbdinfo --map agrees on where the data is.
    let map = nbdinfo(&["--map", &s.uri()]);
    let data: Vec<&str> = map.lines().filter(|l| l.ends_with("data")).collect();
    assert_eq!(data.len(), 1, "{map}");
    assert!(data[0].trim().starts_with(&format!("{}", 512 * k)), "{map}");
}

/// Partial writes to the same blocks, many in flight at once, lose no
/// bytes (read-modify-write is serialised per block).
#[test]
fn parallel_partial_writes_to_one_block() {
    // The delay under cow keeps first reads of a block slow, so that
    // read-modify-writes of one block overlap.
    let s = Server::start(&[
        "--filter=cow",
        "--filter=delay",
        "--threads=16",
        "memory",
        "1M",
        "rdelay=5ms",
    ]);
    let script = r#"
import random
random.seed(1)
size = 256 * 1024
model = bytearray(size)
pieces = list(range(0, size, 1000))
random.shuffle(pieces)
for off in pieces:
    n = min(1000, size - off)
    b = bytes([random.randrange(1, 256)]) * n
    model[off:off+n] = b
    # Completion callbacks returning 1 retire the commands.
    h.aio_pwrite(b, off, completion=lambda err: 1)
    while h.aio_in_flight() >= 32:
        h.poll(-1)
while h.aio_in_flight() > 0:
    h.poll(-1)
assert h.pread(size, 0) == model
print("ok")
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "ok");
}

/// cow-on-read=/PATH saves the blocks read while PATH exists, and
/// cow-on-cache=true saves the blocks a cache request names: later
/// changes to the plugin's file do not show through for those blocks.
#[test]
fn cow_on_read_path_and_cow_on_cache() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_file(dir.path(), "disk.img", &vec![b'A'; 4 << 16]);
    let toggle = dir.path().join("toggle");
    let cor = format!("cow-on-read={}", toggle.display());
    let s = Server::start(&[
        "--filter=cow",
        "file",
        p.to_str().unwrap(),
        &cor,
        "cow-on-cache=true",
    ]);
    let script = r#"
import os, sys
B = 65536
toggle, path = sys.argv[2], sys.argv[3]
open(toggle, "w").close()
h.pread(10, 5)          # block 0 saved
os.unlink(toggle)
h.pread(10, B + 5)      # block 1 not saved
h.cache(1, 2 * B + 7)   # block 2 saved by the cache request
with open(path, "r+b") as f:
    f.write(b"B" * (4 * B))
print([h.pread(1, i * B + 100).decode() for i in range(4)])
"#;
    let out = python(
        &s.uri(),
        script,
        &[toggle.to_str().unwrap(), p.to_str().unwrap()],
    );
    assert_eq!(out.trim(), "['A', 'B', 'A', 'B']");
}

#[test]
fn bad_parameters_are_startup_errors() {
    for bad in [
        "cow-block-size=1000",
        "cow-block-size=2048",
        "cow-block-size=65535",
        "cow-block-size=4G",
        "cow-block-size=big",
        "cow-on-cache=maybe",
        "cow-on-read=sometimes",
    ] {
        let err = expect_error(&["--filter=cow", "memory", "1M", bad], true);
        assert_eq!(
            err.lines()
                .filter(|l| l.starts_with("nbdkit: error: "))
                .count(),
            1,
            "{bad}: {err}"
        );
    }
    let err = expect_error(
        &["--filter=cow", "memory", "1M", "cow-block-size=3000"],
        true,
    );
    assert!(err.contains("cow-block-size"), "{err}");
    // An unusable temporary directory is found at startup.
    let mut c = nbdkit();
    c.env("TMPDIR", "/nonexistent/dir").args([
        "-f",
        "-U",
        "-",
        "--filter=cow",
        "memory",
        "1M",
        "--run",
        "true",
    ]);
    let o = run_cmd(&mut c, TIMEOUT);
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(1), "{}", stderr_str(&o));
    assert!(
        stderr_str(&o).contains("/nonexistent/dir"),
        "{}",
        stderr_str(&o)
    );
}
