//! The partition filter over disk images partitioned by sfdisk (MBR with
//! primary and logical partitions, GPT with 512 and 4096 byte sectors):
//! each partition served is exactly that partition's bytes.

use crate::cli::expect_error;
use crate::harness::*;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const MIB: usize = 1 << 20;

/// Partition `img` with the sfdisk `script`.
fn sfdisk(img: &Path, extra: &[&str], script: &str) {
    let mut child = Command::new("/usr/sbin/sfdisk")
        .args(extra)
        .arg("--no-reread")
        .arg("--no-tell-kernel")
        .arg(img)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sfdisk");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let o = wait_output(child, TIMEOUT, "sfdisk");
    assert_success(&o, "sfdisk");
}

/// (number, start, size) of each partition in bytes, as sfdisk reads the
/// table back.
fn layout(img: &Path, sector: u64) -> Vec<(u32, u64, u64)> {
    let o = Command::new("/usr/sbin/sfdisk")
        .args(["-d", img.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let name = img.display().to_string();
    let mut parts = Vec::new();
    for line in String::from_utf8(o.stdout).unwrap().lines() {
        let Some((node, rest)) = line.split_once(" : ") else {
            continue;
        };
        let Some(n) = node.trim().strip_prefix(&name) else {
            continue;
        };
        let field = |key: &str| -> u64 {
            rest.split(',')
                .find_map(|f| f.trim().strip_prefix(key))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or_else(|| panic!("no {key} in {line}"))
        };
        let kind = rest
            .split(',')
            .find_map(|f| f.trim().strip_prefix("type="))
            .unwrap_or("");
        if kind == "5" || kind == "f" {
            continue; // the extended partition itself holds no data
        }
        parts.push((
            n.parse().unwrap(),
            field("start=") * sector,
            field("size=") * sector,
        ));
    }
    parts
}

/// A `size`-byte image partitioned by `script`, each partition filled
/// with its own pseudo-random bytes.  Returns the image's bytes and the
/// layout.
fn make_disk(
    dir: &Path,
    size: usize,
    extra: &[&str],
    sector: u64,
    script: &str,
) -> (Vec<u8>, Vec<(u32, u64, u64)>) {
    let img = dir.join("disk.img");
    std::fs::write(&img, vec![0u8; size]).unwrap();
    sfdisk(&img, extra, script);
    let parts = layout(&img, sector);
    let mut data = std::fs::read(&img).unwrap();
    for &(n, start, len) in &parts {
        let (s, l) = (start as usize, len as usize);
        data[s..s + l].copy_from_slice(&pseudo_random(l, 100 + n as u64));
    }
    std::fs::write(&img, &data).unwrap();
    (data, parts)
}

fn serve(dir: tempfile::TempDir, args: &[&str]) -> Server {
    let img = dir.path().join("disk.img").display().to_string();
    let mut full = vec!["--filter=partition", "file", img.as_str()];
    full.extend_from_slice(args);
    Server::start_in(dir, &full)
}

/// Each partition read through the filter is exactly its bytes.
#[track_caller]
fn check_every_partition(dir: &Path, data: &[u8], parts: &[(u32, u64, u64)], extra: &[&str]) {
    let img = dir.join("disk.img").display().to_string();
    for &(n, start, len) in parts {
        let param = format!("partition={n}");
        let mut args = vec!["--filter=partition", "file", img.as_str(), param.as_str()];
        args.extend_from_slice(extra);
        let s = Server::start(&args);
        assert_eq!(
            nbdinfo(&["--size", &s.uri()]).trim(),
            len.to_string(),
            "partition {n}"
        );
        let out = s.dir().join("part.img");
        nbdcopy(&[s.uri().as_str(), out.to_str().unwrap()]);
        let got = std::fs::read(&out).unwrap();
        assert!(
            got == data[start as usize..(start + len) as usize],
            "partition {n}: bytes differ"
        );
    }
}

/// Connecting fails and the server says why.
#[track_caller]
fn check_open_fails(dir: tempfile::TempDir, args: &[&str], msg: &str) {
    let s = serve(dir, args);
    let o = client_any("/usr/bin/nbdinfo", &["--size", &s.uri()]);
    assert!(!o.status.success(), "{args:?}: {}", stdout_str(&o));
    assert!(s.stderr().contains(msg), "{args:?}: {}", s.stderr());
}

const MBR3: &str = "label: dos\n\
    start=2048, size=2048, type=83\n\
    start=4096, size=4096, type=83\n\
    start=8192, size=2048, type=c\n";

#[test]
fn mbr_primary_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let (data, parts) = make_disk(dir.path(), 8 * MIB, &[], 512, MBR3);
    assert_eq!(
        parts,
        [
            (1, MIB as u64, MIB as u64),
            (2, 2 * MIB as u64, 2 * MIB as u64),
            (3, 4 * MIB as u64, MIB as u64)
        ]
    );
    check_every_partition(dir.path(), &data, &parts, &[]);
    check_open_fails(dir, &["partition=4"], "MBR partition 4 not found");
}

#[test]
fn writes_land_inside_the_partition() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = make_disk(dir.path(), 8 * MIB, &[], 512, MBR3);
    let s = serve(dir, &["partition=2"]);
    python(
        &s.uri(),
        "h.pwrite(b'\\x77' * 4096, 0)\n\
         h.pwrite(b'\\x88' * 512, h.get_size() - 512)\n\
         try:\n    h.pwrite(b'x', h.get_size())\nexcept nbd.Error:\n    pass\n",
        &[],
    );
    // qemu-io sees the same through the filter.
    let out = qemu_io(&[
        "-f",
        "raw",
        &s.uri(),
        "-c",
        "read -P 0x77 0 4096",
        "-c",
        "read -P 0x88 2096640 512",
    ]);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    let mut want = data.clone();
    want[2 * MIB..2 * MIB + 4096].fill(0x77);
    want[4 * MIB - 512..4 * MIB].fill(0x88);
    let got = std::fs::read(s.dir().join("disk.img")).unwrap();
    assert!(got == want, "the write went outside partition 2");
}

#[test]
fn mbr_logical_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let script = "label: dos\n\
        start=2048, size=2048, type=83\n\
        start=4096, size=28672, type=5\n\
        size=2048, type=83\n\
        size=4096, type=83\n\
        size=2048, type=83\n";
    let (data, parts) = make_disk(dir.path(), 16 * MIB, &[], 512, script);
    let numbers: Vec<u32> = parts.iter().map(|p| p.0).collect();
    assert_eq!(numbers, [1, 5, 6, 7]);
    check_every_partition(dir.path(), &data, &parts, &[]);
    // The extended partition itself is not served.
    let d2 = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join("disk.img"), d2.path().join("disk.img")).unwrap();
    check_open_fails(d2, &["partition=2"], "MBR partition 2 not found");
    check_open_fails(dir, &["partition=8"], "MBR partition 8 not found");
}

#[test]
fn logical_partition_without_an_extended_partition() {
    let dir = tempfile::tempdir().unwrap();
    make_disk(dir.path(), 8 * MIB, &[], 512, MBR3);
    check_open_fails(dir, &["partition=5"], "no extended partition");
}

const GPT3: &str = "label: gpt\n\
    start=2048, size=2048\n\
    start=4096, size=4096\n\
    start=8192, size=2048\n";

#[test]
fn gpt_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let (data, parts) = make_disk(dir.path(), 8 * MIB, &[], 512, GPT3);
    assert_eq!(parts.len(), 3);
    // Partition 1 is GPT's, not the protective MBR's whole-disk entry.
    assert_eq!(parts[0], (1, MIB as u64, MIB as u64));
    check_every_partition(dir.path(), &data, &parts, &[]);
    let d2 = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join("disk.img"), d2.path().join("disk.img")).unwrap();
    check_open_fails(d2, &["partition=4"], "GPT partition 4 not found");
    check_open_fails(
        dir,
        &["partition=129"],
        "GPT partition number 129 out of range",
    );
}

#[test]
fn gpt_with_4k_sectors() {
    // sfdisk here cannot write 4k-sector tables; fdisk -b can.
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![0u8; 16 * MIB]).unwrap();
    let mut child = Command::new("/usr/sbin/fdisk")
        .args(["-b", "4096"])
        .arg(&img)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fdisk");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"g\nn\n1\n256\n+2M\nn\n2\n768\n+1M\nw\n")
        .unwrap();
    assert_success(&wait_output(child, TIMEOUT, "fdisk"), "fdisk");
    let parts = [
        (1, MIB as u64, 2 * MIB as u64),
        (2, 3 * MIB as u64, MIB as u64),
    ];
    let mut data = std::fs::read(&img).unwrap();
    assert_eq!(&data[4096..4104], b"EFI PART");
    for &(n, start, len) in &parts {
        let (s, l) = (start as usize, len as usize);
        data[s..s + l].copy_from_slice(&pseudo_random(l, 100 + n as u64));
    }
    std::fs::write(&img, &data).unwrap();
    check_every_partition(dir.path(), &data, &parts, &["partition-sectorsize=4k"]);
}

#[test]
fn damaged_or_missing_tables_are_refused() {
    // No table at all.
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "disk.img", &vec![0u8; MIB]);
    check_open_fails(dir, &["partition=1"], "does not contain MBR or GPT");
    // Too small to hold a table.
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "disk.img", &[0u8; 512]);
    check_open_fails(dir, &["partition=1"], "too small");
    // A partition past the end of the disk (the image was cut short).
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = make_disk(dir.path(), 8 * MIB, &[], 512, MBR3);
    std::fs::write(dir.path().join("disk.img"), &data[..4 * MIB]).unwrap();
    check_open_fails(dir, &["partition=3"], "partition 3 is outside the disk");
    // GPT headers with a bad entry size or entries elsewhere.
    for (at, value, msg) in [
        (
            0x54usize,
            64u64,
            "GPT partition entry size is invalid (64 bytes)",
        ),
        (0x48, 3, "non-standard GPT header"),
        (0x50, 100_000, "GPT partition table is too large"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (mut data, _) = make_disk(dir.path(), 8 * MIB, &[], 512, GPT3);
        let width = if at == 0x48 { 8 } else { 4 };
        data[512 + at..512 + at + width].copy_from_slice(&value.to_le_bytes()[..width]);
        std::fs::write(dir.path().join("disk.img"), &data).unwrap();
        check_open_fails(dir, &["partition=1"], msg);
    }
}

#[test]
fn bad_parameters_are_startup_errors() {
    for (param, msg) in [
        ("partition=0", "invalid partition number"),
        ("partition=first", "could not parse number"),
        ("partition-sectorsize=1024", "512 or 4096"),
    ] {
        let err = expect_error(&["--filter=partition", "memory", "1M", param], true);
        assert!(err.contains(msg), "{param}: {err}");
    }
    let err = expect_error(&["--filter=partition", "memory", "1M"], true);
    assert!(
        err.contains("you must supply the partition parameter"),
        "{err}"
    );
}
