//! The tar filter: one member of an uncompressed tar, read and written in
//! place.

use crate::harness::*;
use std::process::Command;

fn tar(dir: &std::path::Path, args: &[&str]) {
    let o = Command::new("tar")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "tar {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn member(dir: &std::path::Path, tarfile: &str, name: &str) -> Vec<u8> {
    let o = Command::new("tar")
        .current_dir(dir)
        .args(["xOf", tarfile, name])
        .output()
        .unwrap();
    assert!(o.status.success());
    o.stdout
}

/// The seed's command verbatim: write a new disk.img into the tar in place.
#[test]
fn seed_command_writes_the_member_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_file(d, "a.txt", b"first member\n");
    write_file(d, "disk.img", &vec![0u8; 1 << 20]);
    write_file(d, "z.txt", b"last member\n");
    tar(d, &["cf", "data.tar", "a.txt", "disk.img", "z.txt"]);
    let new = pseudo_random(1 << 20, 42);
    write_file(d, "disk.img", &new);
    let o = run_cmd(
        nbdkit()
            .current_dir(d)
            .env("PATH", client_path())
            .args([
                "file",
                "data.tar",
                "--filter=tar",
                "tar-entry=disk.img",
                "--run",
            ])
            .arg("qemu-img convert -n disk.img \"$uri\""),
        LONG_TIMEOUT,
    );
    assert_success(&o, "seed tar command");
    assert_eq!(member(d, "data.tar", "disk.img"), new);
    assert_eq!(member(d, "data.tar", "a.txt"), b"first member\n");
    assert_eq!(member(d, "data.tar", "z.txt"), b"last member\n");
}

#[test]
fn long_names_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let long = format!("{}/disk.img", "d".repeat(120));
    std::fs::create_dir_all(d.join("d".repeat(120))).unwrap();
    write_file(d, &long, &pseudo_random(65536, 7));
    for fmt in ["gnu", "pax"] {
        let t = format!("{fmt}.tar");
        tar(d, &["cf", &t, &format!("--format={fmt}"), &long]);
        let p = d.join(&t);
        let out = captive(
            &[
                "file",
                p.to_str().unwrap(),
                "--filter=tar",
                &format!("tar-entry={long}"),
            ],
            "nbdinfo --size \"$uri\"",
        );
        assert_eq!(out.trim(), "65536", "{fmt}");
    }
    let p = d.join("gnu.tar");
    let o = run_cmd(
        nbdkit().env("PATH", client_path()).args([
            "file",
            p.to_str().unwrap(),
            "--filter=tar",
            "tar-entry=nope.img",
            "--run",
            "nbdinfo --size \"$uri\"",
        ]),
        TIMEOUT,
    );
    assert!(!o.status.success());
    assert!(stderr_str(&o).contains("nope.img"), "{}", stderr_str(&o));
    crate::cli::expect_error(&["--filter=tar", "file", p.to_str().unwrap()], true);
}

/// `tar-limit` stops the search for the member; 0 means no limit.
#[test]
fn tar_limit_bounds_the_search() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_file(d, "big.bin", &vec![7u8; 1 << 20]);
    write_file(d, "late.txt", b"after a megabyte\n");
    tar(d, &["cf", "data.tar", "big.bin", "late.txt"]);
    let tarfile = d.join("data.tar");
    let tarfile = tarfile.to_str().unwrap();
    let read_late = |limit: &str| {
        let o = run_cmd(
            nbdkit().env("PATH", client_path()).args([
                "-r",
                "-U",
                "-",
                "file",
                tarfile,
                "--filter=tar",
                "tar-entry=late.txt",
                limit,
                "--run",
                "nbdinfo --size \"$uri\"",
            ]),
            TIMEOUT,
        );
        assert_no_panic(&o);
        o
    };
    for limit in ["tar-limit=0", "tar-limit=2M"] {
        let o = read_late(limit);
        assert_success(&o, limit);
        assert_eq!(stdout_str(&o).trim(), "17", "{limit}");
    }
    // The member's header lies past the first 64 KiB: not found within it.
    let o = read_late("tar-limit=64K");
    assert!(!o.status.success(), "found past tar-limit=64K");
    assert!(stderr_str(&o).contains("late.txt"), "{}", stderr_str(&o));
}
