//! The example1 plugin: a 100 MiB read-only disk with one empty partition.

use crate::harness::*;

#[test]
fn copied_out_with_qemu_img_has_one_linux_partition() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_cmd(
        nbdkit()
            .current_dir(dir.path())
            .env("PATH", client_path())
            .args(["example1", "--run", "qemu-img convert \"$uri\" disk.img"]),
        LONG_TIMEOUT,
    );
    assert_success(&o, "example1 copy");
    let img = dir.path().join("disk.img");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 104857600);
    let o = std::process::Command::new("/usr/sbin/sfdisk")
        .arg("-d")
        .arg(&img)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "sfdisk: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(table.contains("label: dos"), "{table}");
    let parts: Vec<&str> = table.lines().filter(|l| l.contains("start=")).collect();
    assert_eq!(parts.len(), 1, "{table}");
    assert!(
        parts[0].contains("start=         128") || parts[0].contains("start=128"),
        "{table}"
    );
    assert!(parts[0].contains("type=83"), "{table}");
}

#[test]
fn read_only_and_takes_no_parameters() {
    let out = captive(
        &["example1"],
        "nbdinfo --size \"$uri\"; nbdinfo --json \"$uri\"",
    );
    assert!(out.starts_with("104857600"), "{out}");
    assert!(out.contains("\"is_read_only\": true"), "{out}");
    let err = crate::cli::expect_error(&["example1", "foo=bar"], true);
    assert!(err.contains("foo"), "{err}");
    crate::cli::expect_error(&["example1", "1M"], true);
}
