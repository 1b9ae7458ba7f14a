//! The `ddrescue` filter: a GNU ddrescue mapfile's unrescued areas fail
//! with EIO at the client; rescued ones read the image's data.

use crate::cli::expect_error;
use crate::harness::*;

const MAP: &str = "# Mapfile. Created by GNU ddrescue version 1.27\n\
    # current_pos  current_status  current_pass\n\
    0x00030000     +               1\n\
    #      pos        size  status\n\
    0x00000000  0x00010000  +\n\
    0x00010000  0x00000200  -\n\
    0x00010200  0x0000FE00  +\n\
    0x00020000  0x00008000  +\n\
    0x00028000  0x00008000  ?\n";

#[test]
fn unrescued_areas_fail_with_eio_and_the_rest_reads_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(0x30000, 7);
    let img = write_file(dir.path(), "img", &data);
    let map = write_file(dir.path(), "map", MAP.as_bytes());
    let s = Server::start(&[
        "--filter=ddrescue",
        "file",
        img.to_str().unwrap(),
        &format!("ddrescue-mapfile={}", map.display()),
    ]);
    let out = python(
        &s.uri(),
        "import errno\n\
         data = open(sys.argv[2], 'rb').read()\n\
         for off, n in [(0, 512), (0xfe00, 0x200), (0x10000, 512), (0xfe00, 0x400),\n\
         \x20              (0x10200, 512), (0x1fe00, 0x400), (0x27e00, 0x400), (0x28000, 512)]:\n\
         \x20   try:\n\
         \x20       assert h.pread(n, off) == data[off:off + n]\n\
         \x20       print(hex(off), 'data')\n\
         \x20   except nbd.Error as e:\n\
         \x20       print(hex(off), e.errno if isinstance(e.errno, str) else errno.errorcode[e.errno])\n\
         print(h.is_read_only(), h.can_cache())\n",
        &[img.to_str().unwrap()],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "0x0 data",
            "0xfe00 data",
            "0x10000 EIO",
            "0xfe00 EIO",
            "0x10200 data",
            // Neighbouring finished blocks count as one.
            "0x1fe00 data",
            "0x27e00 EIO",
            "0x28000 EIO",
            "True False",
        ]
    );
    // qemu-img sees the damage too.
    let o = client_any(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            &s.uri(),
            dir.path().join("out").to_str().unwrap(),
        ],
    );
    assert!(!o.status.success(), "copying a damaged image should fail");
}

#[test]
fn ddrescue_bad_configuration_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = expect_error(&["--filter=ddrescue", "memory", "1M"], true);
    assert!(
        err.contains("ddrescue-mapfile parameter is required"),
        "{err}"
    );
    let err = expect_error(
        &[
            "--filter=ddrescue",
            "memory",
            "1M",
            "ddrescue-mapfile=/nonexistent/map",
        ],
        true,
    );
    assert!(
        err.contains("/nonexistent/map: ddrescue: open: No such file"),
        "{err}"
    );
    let map = write_file(dir.path(), "map", b"0 + 1\n0x0 0x10 %\n");
    let arg = format!("ddrescue-mapfile={}", map.display());
    let err = expect_error(&["--filter=ddrescue", "memory", "1M", &arg], true);
    assert!(err.contains("line 2: unknown block status"), "{err}");
}
