//! The blocksize and blocksize-policy filters.  blocksize-policy with
//! `blocksize-error-policy=error` under blocksize stands for a plugin that
//! refuses unaligned or oversized requests: every client request that
//! succeeds through the pair proves blocksize widened or split it.

use crate::cli::expect_error;
use crate::harness::*;

/// A server over `disk.img` holding `data`, with `args` before the plugin
/// (filters) and `params` after the file.
fn serve_file(data: &[u8], filters: &[&str], params: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let img = write_file(dir.path(), "disk.img", data);
    let img = img.display().to_string();
    let mut full: Vec<&str> = filters.to_vec();
    full.push("file");
    full.push(&img);
    full.extend_from_slice(params);
    Server::start_in(dir, &full)
}

fn disk(s: &Server) -> Vec<u8> {
    std::fs::read(s.dir().join("disk.img")).unwrap()
}

/// A plugin that only accepts 4096-aligned requests of at most 64k.
const STRICT: &[&str] = &[
    "blocksize-minimum=4096",
    "blocksize-preferred=4096",
    "blocksize-maximum=64k",
    "blocksize-error-policy=error",
];

fn strict_with(extra: &[&str]) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = STRICT.to_vec();
    for e in extra {
        v.push(Box::leak(e.to_string().into_boxed_str()));
    }
    v
}

#[test]
fn the_strict_stack_really_refuses_unaligned_requests() {
    let data = pseudo_random(65536, 10);
    let s = serve_file(&data, &["--filter=blocksize-policy"], STRICT);
    let out = python(
        &s.uri(),
        "h.set_strict_mode(0)\n\
         def attempt(f):\n\
         \x20   try:\n\
         \x20       f()\n\
         \x20       return 'ok'\n\
         \x20   except nbd.Error as e:\n\
         \x20       return e.errno\n\
         print(attempt(lambda: h.pread(4096, 4096)))\n\
         print(attempt(lambda: h.pread(1, 0)))\n\
         print(attempt(lambda: h.pread(4096, 1)))\n\
         print(attempt(lambda: h.pwrite(b'x' * 4097, 0)))\n\
         print(attempt(lambda: h.pread(65536 + 4096, 0) if h.get_size() > 65536 else h.pread(8192, 4094)))\n\
         print(attempt(lambda: h.zero(100, 0)))\n\
         print(attempt(lambda: h.trim(4096, 4096)))\n",
        &[],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["ok", "EINVAL", "EINVAL", "EINVAL", "EINVAL", "EINVAL", "ok"],
        "{out}"
    );
    // Nothing refused was written (the trimmed block may read anything).
    let got = disk(&s);
    assert!(got[..4096] == data[..4096] && got[8192..] == data[8192..]);
}

#[test]
fn qemu_io_unaligned_writes_become_read_modify_write() {
    let data = pseudo_random(1 << 20, 11);
    for minblock in [&["minblock=4096"][..], &[]] {
        // Without minblock= the filter takes 4096 from the layer below.
        let mut params = strict_with(minblock);
        params.push("maxdata=64k");
        let s = serve_file(
            &data,
            &["--filter=blocksize", "--filter=blocksize-policy"],
            &params,
        );
        let out = qemu_io(&[
            "-f",
            "raw",
            &s.uri(),
            "-c",
            "write -P 0xab 1 1",
            "-c",
            "write -P 0xcd 4095 2",
            "-c",
            "write -P 0xef 10000 70000",
            "-c",
            "write -z 200000 5000",
            "-c",
            "read -P 0xab 1 1",
            "-c",
            "read -P 0xcd 4095 2",
            "-c",
            "read -P 0xef 10000 70000",
            "-c",
            "read -P 0 200000 5000",
        ]);
        assert!(!out.contains("failed"), "{minblock:?}: {out}");
        let mut want = data.clone();
        want[1] = 0xab;
        want[4095..4097].fill(0xcd);
        want[10000..80000].fill(0xef);
        want[200000..205000].fill(0);
        assert!(disk(&s) == want, "{minblock:?}: bytes differ");
    }
}

#[test]
fn maxdata_splits_large_requests() {
    let data = pseudo_random(4 << 20, 12);
    let mut params = strict_with(&[]);
    params.push("maxdata=64k");
    let s = serve_file(
        &data,
        &["--filter=blocksize", "--filter=blocksize-policy"],
        &params,
    );
    // nbdcopy's large requests, split into 64k pieces.
    let out = s.dir().join("out.img");
    nbdcopy(&["--request-size=4194304", &s.uri(), out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == data, "copy differs");
    let new = pseudo_random(3 << 20, 13);
    let newf = write_file(s.dir(), "new.img", &new);
    python(
        &s.uri(),
        "new = open(sys.argv[2], 'rb').read()\n\
         h.pwrite(new, 12345)\n\
         assert h.pread(len(new), 12345) == new\n",
        &[newf.to_str().unwrap()],
    );
    let mut want = data.clone();
    want[12345..12345 + new.len()].copy_from_slice(&new);
    assert!(disk(&s) == want, "bytes differ after the split write");
}

#[test]
fn size_rounds_down_and_sizes_are_advertised() {
    let data = pseudo_random(10000, 14);
    let s = serve_file(&data, &["--filter=blocksize"], &["minblock=4k"]);
    let out = python(
        &s.uri(),
        "print(h.get_size())\n\
         print(h.get_block_size(nbd.SIZE_MINIMUM), h.get_block_size(nbd.SIZE_PREFERRED), \
         h.get_block_size(nbd.SIZE_MAXIMUM))\n\
         print(h.pread(8192, 0) == open(sys.argv[2], 'rb').read()[:8192])\n",
        &[s.dir().join("disk.img").to_str().unwrap()],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["8192", "1 4096 4294967295", "True"],
        "{out}"
    );
    // A larger preferred size from below is kept.
    let s = serve_file(
        &data,
        &["--filter=blocksize", "--filter=blocksize-policy"],
        &["minblock=512", "blocksize-preferred=64k"],
    );
    let out = python(
        &s.uri(),
        "print(h.get_block_size(nbd.SIZE_MINIMUM), h.get_block_size(nbd.SIZE_PREFERRED), \
         h.get_block_size(nbd.SIZE_MAXIMUM))\n",
        &[],
    );
    assert_eq!(out.trim(), "1 65536 4294967295");
}

#[test]
fn concurrent_overlapping_unaligned_writes_lose_nothing() {
    // Every byte of a few blocks written by its own 1-byte request, many
    // in flight at once: a read-modify-write that let another write into
    // its block between the read and the write would lose bytes.
    let data = vec![0u8; 65536];
    let s = serve_file(
        &data,
        &["--filter=blocksize", "--filter=blocksize-policy"],
        &strict_with(&["--threads=16"]),
    );
    python(
        &s.uri(),
        "import random\n\
         offs = list(range(0, 16384))\n\
         random.Random(7).shuffle(offs)\n\
         for i, off in enumerate(offs):\n\
         \x20   while h.aio_in_flight() >= 64:\n\
         \x20       h.poll(-1)\n\
         \x20   h.aio_pwrite(bytes([off % 251 + 1]), off)\n\
         while h.aio_in_flight() > 0:\n\
         \x20   h.poll(-1)\n",
        &[],
    );
    let got = disk(&s);
    let want: Vec<u8> = (0..65536)
        .map(|i| if i < 16384 { (i % 251 + 1) as u8 } else { 0 })
        .collect();
    let lost = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert_eq!(lost, 0, "{lost} bytes lost");
}

#[test]
fn unaligned_zero_trim_and_block_status() {
    let data = pseudo_random(65536, 15);
    let s = serve_file(
        &data,
        &["--filter=blocksize", "--filter=blocksize-policy"],
        STRICT,
    );
    let out = python(
        &s.uri(),
        "h.zero(5000, 3000)\n\
         h.trim(10000, 20001)\n\
         h.flush()\n\
         g = nbd.NBD()\n\
         g.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)\n\
         g.connect_uri(sys.argv[1])\n\
         ents = []\n\
         g.block_status(1000, 4097, lambda ctx, off, e, err: ents.extend(e))\n\
         print(sum(ents[0::2]) > 0)\n\
         try:\n\
         \x20   h.zero(100, 1, nbd.CMD_FLAG_FAST_ZERO)\n\
         \x20   print('fast')\n\
         except nbd.Error as e:\n\
         \x20   print(e.errno)\n",
        &[],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "True", "{out}");
    let mut want = data.clone();
    want[3000..8000].fill(0);
    let got = disk(&s);
    // Trim may discard only whole 4k blocks inside the range: bytes outside
    // [20480, 28672) keep their data.
    assert!(
        got[..20480] == want[..20480],
        "bytes before the trim changed"
    );
    assert!(
        got[28672..] == want[28672..],
        "bytes after the trim changed"
    );
}

// --------------------------------------------------------- blocksize-policy

#[test]
fn policy_advertises_the_configured_sizes() {
    let s = Server::start(&[
        "--filter=blocksize-policy",
        "null",
        "1M",
        "blocksize-preferred=32k",
    ]);
    let out = nbdinfo(&[&s.uri()]);
    assert!(out.contains("block_size_minimum: 1\n"), "{out}");
    assert!(out.contains("block_size_preferred: 32768\n"), "{out}");
    assert!(out.contains("block_size_maximum: 4294967295\n"), "{out}");
    let s = Server::start(&[
        "--filter=blocksize-policy",
        "null",
        "1M",
        "blocksize-minimum=512",
        "blocksize-preferred=4k",
        "blocksize-maximum=1M",
    ]);
    let out = nbdinfo(&[&s.uri()]);
    assert!(out.contains("block_size_minimum: 512\n"), "{out}");
    assert!(out.contains("block_size_preferred: 4096\n"), "{out}");
    assert!(out.contains("block_size_maximum: 1048576\n"), "{out}");
}

#[test]
fn policy_allow_passes_bad_requests_through() {
    let data = pseudo_random(8192, 16);
    let s = serve_file(
        &data,
        &["--filter=blocksize-policy"],
        &["blocksize-minimum=4096", "blocksize-error-policy=allow"],
    );
    python(
        &s.uri(),
        "h.set_strict_mode(0)\nh.pwrite(b'\\x42', 3)\n",
        &[],
    );
    let mut want = data.clone();
    want[3] = 0x42;
    assert!(disk(&s) == want, "bytes differ");
}

#[test]
fn policy_write_disconnect_drops_the_client() {
    let data = pseudo_random(65536, 17);
    let s = serve_file(
        &data,
        &["--filter=blocksize-policy"],
        &["blocksize-preferred=4k", "blocksize-write-disconnect=10000"],
    );
    let out = python(
        &s.uri(),
        "h.set_strict_mode(0)\n\
         h.pwrite(b'\\x01' * 8192, 0)\n\
         print(h.get_block_size(nbd.SIZE_MAXIMUM))\n\
         try:\n\
         \x20   h.pwrite(b'\\x02' * 10001, 8192)\n\
         \x20   print('accepted')\n\
         except nbd.Error as e:\n\
         \x20   print('refused')\n\
         try:\n\
         \x20   h.pread(512, 0)\n\
         \x20   print('still connected')\n\
         except nbd.Error as e:\n\
         \x20   print('disconnected')\n",
        &[],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["10000", "refused", "disconnected"],
        "{out}"
    );
    let mut want = data.clone();
    want[..8192].fill(1);
    assert!(disk(&s) == want, "the oversize write must not land");
    assert!(s.stderr().contains("oversize write"), "{}", s.stderr());
    // The server itself carries on.
    assert_eq!(nbdinfo(&["--size", &s.uri()]).trim(), "65536");
}

#[test]
fn bad_parameters_are_startup_errors() {
    for (filter, params, msg) in [
        ("blocksize", &["minblock=0"][..], "must be non-zero"),
        ("blocksize", &["minblock=3"], "power of 2"),
        ("blocksize", &["minblock=128k"], "must not exceed 65536"),
        ("blocksize", &["maxdata=5G"], "too large"),
        ("blocksize", &["maxlen=x"], "could not parse size"),
        (
            "blocksize",
            &["minblock=4k", "maxdata=6k"],
            "maxdata must be a multiple of 4096",
        ),
        (
            "blocksize",
            &["minblock=4k", "maxlen=1000"],
            "maxlen must be a multiple of 4096",
        ),
        (
            "blocksize-policy",
            &["blocksize-error-policy=strict"],
            "unknown blocksize-error-policy",
        ),
        ("blocksize-policy", &["blocksize-minimum=3"], "power of 2"),
        ("blocksize-policy", &["blocksize-minimum=128k"], "<= 64K"),
        (
            "blocksize-policy",
            &["blocksize-preferred=256"],
            "between 512 and 32M",
        ),
        (
            "blocksize-policy",
            &["blocksize-maximum=5G"],
            "could not parse",
        ),
        (
            "blocksize-policy",
            &["blocksize-minimum=4k", "blocksize-maximum=6k"],
            "multiple of blocksize-minimum",
        ),
        (
            "blocksize-policy",
            &["blocksize-minimum=8k", "blocksize-preferred=4k"],
            "blocksize-minimum must be <= blocksize-preferred",
        ),
        (
            "blocksize-policy",
            &["blocksize-preferred=8k", "blocksize-maximum=4k"],
            "blocksize-preferred must be <= blocksize-maximum",
        ),
        (
            "blocksize-policy",
            &["blocksize-minimum=512", "blocksize-write-disconnect=512"],
            "larger than blocksize-minimum",
        ),
    ] {
        let mut args = vec!["--filter", filter, "memory", "1M"];
        args.extend_from_slice(params);
        let err = expect_error(&args, true);
        assert!(err.contains(msg), "{filter} {params:?}: {err}");
    }
}
