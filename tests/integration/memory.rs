//! The memory plugin: data integrity through real clients.

use crate::harness::*;

/// Python: apply writes at odd offsets to a model and compare a full read.
const ODD_WRITES: &str = r#"
size = h.get_size()
model = bytearray(size)
writes = [(1, 1), (4095, 2), (4096, 1), (32767, 1), (32767, 3), (32768, 1),
          (32769, 100), (65535, 70000), (123457, 4097), (200001, 33333),
          (size - 1, 1), (size - 1000, 999)]
for i, (off, n) in enumerate(writes):
    buf = bytes(((i * 37 + j * 11 + 1) % 251) + 1 for j in range(n))
    h.pwrite(buf, off)
    model[off:off + n] = buf
# Read back with unaligned requests covering everything.
pos = 0
step = 65537
while pos < size:
    n = min(step, size - pos)
    got = h.pread(n, pos)
    assert got == bytes(model[pos:pos + n]), "mismatch at %d+%d" % (pos, n)
    pos += n
for off, n in writes:
    assert h.pread(n, off) == bytes(model[off:off + n]), (off, n)
print("ok")
"#;

#[test]
fn odd_offset_writes_read_back() {
    let s = Server::start(&["memory", "1M"]);
    assert_eq!(python(&s.uri(), ODD_WRITES, &[]).trim(), "ok");
}

#[test]
fn allocators_round_trip() {
    for alloc in ["sparse", "malloc", "zstd"] {
        let arg = format!("allocator={alloc}");
        let mut s = Server::start(&["memory", "16M", &arg]);
        let out = python(&s.uri(), ODD_WRITES, &[]);
        assert_eq!(out.trim(), "ok", "allocator={alloc}");
        // test-memory-allocator-malloc.sh, plus trim/zero reading back zero.
        let script = r#"
M = 1024 * 1024
h.pwrite(b"1" * 512, 0)
h.pwrite(b"2" * 65536, 8 * M + 1)
h.pwrite(b"3" * 512, 16 * M - 512)
assert h.pread(512, 0) == b"1" * 512
assert h.pread(65536, 8 * M + 1) == b"2" * 65536
assert h.pread(512, 16 * M - 512) == b"3" * 512
h.zero(1000, 8 * M + 100)
assert h.pread(1002, 8 * M + 99) == b"2" + bytes(1000) + b"2"
h.trim(32768, 0)
assert h.pread(512, 0) == bytes(512)
h.flush()
print("ok")
"#;
        assert_eq!(
            python(&s.uri(), script, &[]).trim(),
            "ok",
            "allocator={alloc}"
        );
        s.stop_ok();
    }
}

#[test]
fn writes_visible_across_connections() {
    let s = Server::start(&["memory", "1M"]);
    let script = r#"
h2 = nbd.NBD()
h2.connect_uri(sys.argv[1])
h.pwrite(b"hello world", 100001)
assert h2.pread(11, 100001) == b"hello world"
h2.pwrite(b"X" * 70000, 300000)
assert h.pread(70000, 300000) == b"X" * 70000
assert h.can_multi_conn()
h2.shutdown()
print("ok")
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "ok");
    // And a completely separate client process sees the data too.
    let out = python(&s.uri(), "print(h.pread(11, 100001).decode())", &[]);
    assert_eq!(out.trim(), "hello world");
}

/// upstream tests/test-memory-largest.sh
#[test]
fn largest_disk() {
    let s = Server::start(&["memory", "9223372036854775807"]);
    let script = r#"
assert h.get_size() == 9223372036854775807
b1 = b"1" * 512
b2 = b"2" * 65536
b3 = b"3" * 511
h.pwrite(b1, 0)
h.pwrite(b2, 1000000001)
h.pwrite(b3, 9223372036854775296)
assert h.pread(512, 0) == b1
assert h.pread(65536, 1000000001) == b2
assert h.pread(511, 9223372036854775296) == b3
assert h.pread(4096, 5000000000000000000) == bytes(4096)
print("ok")
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "ok");
}

#[test]
fn qemu_img_convert_in_nbdcopy_out() {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(100 << 20, 42);
    let src = write_file(dir.path(), "src", &data);
    let dst = dir.path().join("dst");
    let s = Server::start(&["memory", "100M"]);
    let uri = s.uri();
    qemu_img(&[
        "convert".as_ref(),
        "-n".as_ref(),
        "-f".as_ref(),
        "raw".as_ref(),
        "-O".as_ref(),
        "raw".as_ref(),
        src.as_os_str(),
        uri.as_ref(),
    ]);
    nbdcopy(&[std::ffi::OsStr::new(&uri), dst.as_os_str()]);
    let got = std::fs::read(&dst).unwrap();
    assert_eq!(got.len(), data.len());
    assert!(
        got == data,
        "nbdcopy output differs from what qemu-img wrote"
    );
}

#[test]
fn fio_randwrite_verify() {
    let s = Server::start(&["memory", "16M"]);
    let uri = format!("--uri={}", s.uri());
    let out = fio(&[
        "--name=nbdverify",
        "--ioengine=nbd",
        &uri,
        "--rw=randwrite",
        "--verify=crc32c",
        "--bs=4k",
        "--size=16m",
        "--iodepth=16",
        "--verify_state_save=0",
    ]);
    assert!(out.contains("nbdverify: (groupid=0"), "{out}");
    assert!(out.contains("err= 0"), "fio reported errors:\n{out}");
    assert!(
        out.contains("issued rwts: total=4096,4096"),
        "fio did not write and verify all 4096 blocks:\n{out}"
    );
    assert!(!out.contains("verify: bad"), "{out}");
}

#[test]
fn concurrent_clients_separate_regions() {
    let s = Server::start(&["memory", "8M"]);
    let uri = s.uri();
    let script = r#"
r = int(sys.argv[2])
M = 1024 * 1024
base = r * M
import random
rnd = random.Random(r)
data = bytes(rnd.getrandbits(8) for _ in range(M))
for i in range(0, M, 65536 + 3):
    n = min(65536 + 3, M - i)
    h.pwrite(data[i:i + n], base + i)
for i in range(0, M, 4093):
    n = min(4093, M - i)
    assert h.pread(n, base + i) == data[i:i + n], (r, i)
h.flush()
print("ok", r)
"#;
    let handles: Vec<_> = (0..4)
        .map(|r| {
            let uri = uri.clone();
            std::thread::spawn(move || python(&uri, script, &[&r.to_string()]))
        })
        .collect();
    for (r, t) in handles.into_iter().enumerate() {
        let out = t.join().expect("client thread panicked");
        assert_eq!(out.trim(), format!("ok {r}"));
    }
    // Verify all regions again from one connection (regions 4..8 stay zero).
    let check = r#"
import random
M = 1024 * 1024
for r in range(4):
    rnd = random.Random(r)
    data = bytes(rnd.getrandbits(8) for _ in range(M))
    assert h.pread(M, r * M) == data, r
assert h.pread(4 * M, 4 * M) == bytes(4 * M)
print("ok")
"#;
    assert_eq!(python(&uri, check, &[]).trim(), "ok");
}

#[test]
fn zero_and_trim_read_back_zero() {
    let s = Server::start(&["memory", "1M"]);
    let script = r#"
h.pwrite(b"\xff" * 200000, 10000)
h.zero(50000, 20000)
h.trim(40000, 100000)
h.zero(1000, 205000, nbd.CMD_FLAG_NO_HOLE)
got = h.pread(210010, 0)
want = bytes(10000) + b"\xff" * 10000 + bytes(50000) + b"\xff" * 30000 + bytes(40000) + b"\xff" * 65000 + bytes(1000) + b"\xff" * 4000 + bytes(10)
assert len(want) == 210010
assert got == want
print("ok")
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "ok");
}

#[test]
fn fua_and_cache_commands() {
    let s = Server::start(&["memory", "1M"]);
    let script = r#"
assert h.can_fua() and h.can_cache() and h.can_flush()
h.pwrite(b"abc" * 1000, 7, nbd.CMD_FLAG_FUA)
h.cache(65536, 0)
h.zero(3, 7, nbd.CMD_FLAG_FUA)
h.flush()
assert h.pread(3000, 7) == bytes(3) + b"abc" * 999
print("ok")
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "ok");
}

#[test]
fn fast_zero_supported() {
    let s = Server::start(&["memory", "1M"]);
    let script = r#"
assert h.can_fast_zero()
h.pwrite(b"\x01" * 4096, 0)
h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO)
assert h.pread(4096, 0) == bytes(4096)
print("ok")
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "ok");
}

#[test]
fn block_status_after_write() {
    let s = Server::start(&["memory", "1M"]);
    let script = r#"
h2 = nbd.NBD()
h2.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h2.connect_uri(sys.argv[1])
assert h2.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h2.pwrite(b"x" * 32768, 65536)
ents = []
def cb(meta, off, e, err):
    if meta == nbd.CONTEXT_BASE_ALLOCATION:
        ents.extend(zip(e[0::2], e[1::2]))
h2.block_status(1048576, 0, cb)
# Reconstruct per-byte state over the disk.
pos = 0
states = []
for (ln, fl) in ents:
    states.append((pos, ln, fl))
    pos += ln
assert pos >= 1048576, ents
def state_at(o):
    for (p, ln, fl) in states:
        if p <= o < p + ln:
            return fl
assert state_at(65536) & 1 == 0, ents
assert state_at(65536 + 32767) & 1 == 0, ents
assert state_at(0) & 2 == 2, ents
print("ok")
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "ok");
}
