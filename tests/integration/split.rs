//! The split plugin: several files served as one disk, with reads and
//! writes that cross file boundaries, read-only files, and its errors.

use crate::cli::expect_error;
use crate::harness::*;

/// Three files of awkward sizes (not sector multiples) in `dir`.
fn three_files(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let parts = vec![
        pseudo_random(100_000, 1),
        pseudo_random(1, 2),
        pseudo_random(70_001, 3),
    ];
    for (i, p) in parts.iter().enumerate() {
        write_file(dir, &format!("part{i}"), p);
    }
    parts
}

#[test]
fn split_reads_concatenation_and_writes_across_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let parts = three_files(dir.path());
    let whole: Vec<u8> = parts.concat();
    let d = dir.path().display().to_string();
    let (a, b, c) = (
        format!("{d}/part0"),
        format!("{d}/part1"),
        format!("{d}/part2"),
    );
    // Magic key for the first file, file= for the others.
    let srv = Server::start(&["split", &a, &format!("file={b}"), &format!("file={c}")]);
    let uri = srv.uri();
    assert_eq!(nbdinfo(&["--size", &uri]).trim(), whole.len().to_string());
    // The whole disk equals the files in order.
    let out = dir.path().join("out");
    nbdcopy(&[uri.as_str(), out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), whole);
    // A write covering the end of part0, all of part1 and the start of
    // part2 lands in all three files.
    let py = "
off = 100000 - 10
h.pwrite(b'\\xaa' * 30, off)
assert h.pread(30, off) == b'\\xaa' * 30
h.flush()
print(h.can_trim(), h.can_zero(), h.can_flush(), h.is_read_only())
";
    let o = python(&uri, py, &[]);
    assert_eq!(o.trim(), "True True True False");
    let p0 = std::fs::read(dir.path().join("part0")).unwrap();
    let p1 = std::fs::read(dir.path().join("part1")).unwrap();
    let p2 = std::fs::read(dir.path().join("part2")).unwrap();
    assert_eq!(p0.len(), 100_000);
    assert_eq!(&p0[99_990..], &[0xaa; 10]);
    assert_eq!(&p0[..99_990], &parts[0][..99_990]);
    assert_eq!(p1, [0xaa]);
    assert_eq!(&p2[..19], &[0xaa; 19]);
    assert_eq!(&p2[19..], &parts[2][19..]);
    // Zeroing across a boundary.
    python(
        &uri,
        "h.zero(8, 100000 - 4)\nassert h.pread(8, 100000 - 4) == bytes(8)",
        &[],
    );
    assert_eq!(
        &std::fs::read(dir.path().join("part0")).unwrap()[99_996..],
        &[0; 4]
    );
    // qemu-io reading across the last boundary.
    let o = qemu_io(&["-f", "raw", "-c", "read -P 0 100001 3", &uri]);
    assert!(o.contains("read 3/3 bytes"), "{o}");
}

#[test]
fn split_read_only_file_makes_read_only_disk() {
    let dir = tempfile::tempdir().unwrap();
    three_files(dir.path());
    let d = dir.path().display().to_string();
    let srv = Server::start(&["-r", "split", &format!("{d}/part0"), &format!("{d}/part2")]);
    let o = python(&srv.uri(), "print(h.is_read_only(), h.get_size())", &[]);
    assert_eq!(o.trim(), "True 170001");
    let o = python_any(&srv.uri(), "h.pwrite(b'x', 0)", &[]);
    assert!(!o.status.success());
}

#[test]
fn split_one_file_and_extents() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("sparse");
    let file = std::fs::File::create(&f).unwrap();
    file.set_len(4 << 20).unwrap();
    write_file(dir.path(), "data", &[1u8; 65536]);
    let srv = Server::start(&[
        "split",
        f.to_str().unwrap(),
        dir.path().join("data").to_str().unwrap(),
    ]);
    // The sparse file reads as a hole, the data file as data.
    let map = qemu_img_map(&srv.uri());
    assert_eq!(
        map,
        "[{\"start\":0,\"length\":4194304,\"depth\":0,\"present\":true,\"zero\":true,\"data\":false},\
         {\"start\":4194304,\"length\":65536,\"depth\":0,\"present\":true,\"zero\":false,\"data\":true}]"
    );
}

#[test]
fn split_errors() {
    let e = expect_error(&["split"], true);
    assert!(e.contains("file=<FILENAME>"), "{e}");
    let e = expect_error(&["split", "/nonexistent/file"], true);
    assert!(e.contains("/nonexistent/file"), "{e}");
    let e = expect_error(&["split", "/dev/null"], true);
    assert!(e.contains("not a regular file"), "{e}");
    let e = expect_error(&["split", "file=/etc/hostname", "size=1"], true);
    assert!(e.contains("unknown parameter 'size'"), "{e}");
}
