//! The null plugin.

use crate::harness::*;

/// upstream tests/test-null-extents.sh
#[test]
fn null_64k_maps_as_one_zero_extent() {
    let s = Server::start(&["null", "64K"]);
    let out = qemu_img(&["map", "--output=json", &s.uri()]);
    let got = jq("map({start, length, data, zero})", &out);
    assert_eq!(
        got.trim(),
        r#"[{"start":0,"length":65536,"data":false,"zero":true}]"#,
        "qemu-img map output:\n{out}"
    );
}

#[test]
fn null_0_is_empty() {
    let s = Server::start(&["null", "0"]);
    assert_eq!(nbdinfo(&["--size", &s.uri()]).trim(), "0");
    let s = Server::start(&["null"]);
    assert_eq!(nbdinfo(&["--size", &s.uri()]).trim(), "0");
}

/// upstream tests/test-null.c
#[test]
fn null_reads_zero_writes_discarded() {
    let mut s = Server::start(&["null", "100M"]);
    let script = r#"
assert h.get_size() == 100 * 1024 * 1024
assert not h.is_read_only()
h.pwrite(b"\xaa" * 256, 1024)
assert h.pread(2048, 0) == bytes(2048)
h.zero(4096, 0)
h.trim(4096, 8192)
h.flush()
h.pwrite(b"\x01" * 65536, 100 * 1024 * 1024 - 65536, nbd.CMD_FLAG_FUA)
assert h.pread(65536, 100 * 1024 * 1024 - 65536) == bytes(65536)
print("ok")
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "ok");
    s.stop_ok();
}

#[test]
fn null_size_magic_and_key() {
    let s = Server::start(&["null", "size=3M"]);
    assert_eq!(nbdinfo(&["--size", &s.uri()]).trim(), "3145728");
}

#[test]
fn null_block_status_all_hole_zero() {
    let s = Server::start(&["null", "1M"]);
    let script = r#"
h2 = nbd.NBD()
h2.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h2.connect_uri(sys.argv[1])
ents = []
def cb(meta, off, e, err):
    ents.extend(e)
h2.block_status(1048576, 0, cb)
assert ents == [1048576, 3], ents
print("ok")
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "ok");
}
