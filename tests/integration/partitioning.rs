//! The partitioning plugin: MBR (primary and logical partitions) and GPT
//! tables checked with sfdisk and sgdisk on a copy of the served disk,
//! the partitions' contents, writes, and parameter errors.

use crate::cli::expect_error;
use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Copy the disk served by `args` (run captive) to `out`.
fn copy_disk(dir: &Path, args: &[&str], out: &Path) {
    let mut full: Vec<String> = vec!["-U".into(), "-".into()];
    full.extend(args.iter().map(|s| s.to_string()));
    full.push("--run".into());
    full.push(format!("nbdcopy \"$uri\" '{}'", out.display()));
    let mut cmd = nbdkit();
    cmd.current_dir(dir).args(&full);
    let o = run_cmd(&mut cmd, LONG_TIMEOUT);
    assert_success(&o, "nbdkit partitioning --run nbdcopy");
}

fn tool(prog: &str, args: &[&str]) -> String {
    let o = Command::new(prog).args(args).output().expect(prog);
    assert!(
        o.status.success(),
        "{prog} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The partition lines of `sfdisk -d`, with the image path removed.
fn sfdisk_dump(img: &Path) -> (String, Vec<String>) {
    let out = tool("/usr/sbin/sfdisk", &["-d", img.to_str().unwrap()]);
    let name = img.display().to_string();
    let label = out
        .lines()
        .find_map(|l| l.strip_prefix("label: "))
        .unwrap_or("")
        .to_string();
    let parts = out
        .lines()
        .filter_map(|l| l.strip_prefix(&name))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    (label, parts)
}

/// Files p1 (1 MiB), p2 (3000 bytes), p3 (2 MiB) of known content.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    [("p1", 1 << 20, 1), ("p2", 3000, 2), ("p3", 2 << 20, 3)]
        .iter()
        .map(|&(n, len, seed)| {
            let data = pseudo_random(len, seed);
            (write_file(dir, n, &data), data)
        })
        .collect()
}

const ARGS: &[&str] = &[
    "partitioning",
    "./p1",
    "mbr-id=0x82",
    "alignment=4096",
    "./p2",
    "type-guid=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
    "mbr-id=default",
    "file=./p3",
];

#[test]
fn partitioning_mbr_table_and_contents() {
    let dir = tempfile::tempdir().unwrap();
    let fs = files(dir.path());
    let img = dir.path().join("disk.img");
    let mut args = ARGS.to_vec();
    args.push("partition-type=mbr");
    copy_disk(dir.path(), &args, &img);
    let (label, parts) = sfdisk_dump(&img);
    assert_eq!(label, "dos");
    assert_eq!(
        parts,
        [
            "1 : start= 2048, size= 2048, type=83, bootable",
            "2 : start= 4096, size= 6, type=82",
            "3 : start= 4104, size= 4096, type=83",
        ]
    );
    let disk = std::fs::read(&img).unwrap();
    // Size: last partition end, no backup table.
    assert_eq!(disk.len(), (4104 + 4096) * 512);
    for ((_, data), start) in fs.iter().zip([2048usize, 4096, 4104]) {
        assert_eq!(&disk[start * 512..start * 512 + data.len()], &data[..]);
    }
    // Padding after p2 (3000 bytes in 6 sectors) and before p1 reads as zero.
    assert!(disk[4096 * 512 + 3000..4104 * 512].iter().all(|&b| b == 0));
    assert!(disk[512..2048 * 512].iter().all(|&b| b == 0));
}

#[test]
fn partitioning_mbr_matches_c_plugin_byte_for_byte() {
    let c_plugin =
        Path::new("/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-partitioning-plugin.so");
    if testing_c_nbdkit() || !c_plugin.exists() {
        eprintln!("C partitioning plugin not installed: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for i in 1..=6 {
        write_file(
            dir.path(),
            &format!("q{i}"),
            &pseudo_random(i * 3000, i as u64),
        );
    }
    let args = [
        "partitioning",
        "partition-type=mbr",
        "./q1",
        "./q2",
        "./q3",
        "alignment=512",
        "./q4",
        "mbr-id=0x07",
        "./q5",
        "./q6",
    ];
    let ours = dir.path().join("ours");
    copy_disk(dir.path(), &args, &ours);
    let c = dir.path().join("c");
    let mut full = vec!["-U", "-"];
    full.extend_from_slice(&args);
    let run = format!("nbdcopy \"$uri\" '{}'", c.display());
    full.extend_from_slice(&["--run", &run]);
    let o = Command::new("/usr/bin/nbdkit")
        .current_dir(dir.path())
        .args(&full)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&ours).unwrap() == std::fs::read(&c).unwrap());
}

#[test]
fn partitioning_mbr_logical_partitions() {
    let dir = tempfile::tempdir().unwrap();
    for i in 1..=6 {
        write_file(
            dir.path(),
            &format!("q{i}"),
            &pseudo_random(i * 3000, i as u64),
        );
    }
    let img = dir.path().join("disk.img");
    copy_disk(
        dir.path(),
        &[
            "partitioning",
            "partition-type=mbr",
            "./q1",
            "./q2",
            "./q3",
            "./q4",
            "./q5",
            "./q6",
        ],
        &img,
    );
    let (label, parts) = sfdisk_dump(&img);
    assert_eq!(label, "dos");
    // 1-3 primary, 4 the extended partition, 5-7 logical.
    assert_eq!(parts.len(), 7, "{parts:?}");
    assert!(parts[3].contains("type=f"), "{parts:?}");
    for p in &parts[4..] {
        assert!(p.contains("type=83"), "{p}");
    }
    // Each logical partition holds its file.
    let disk = std::fs::read(&img).unwrap();
    for (i, line) in parts.iter().enumerate().skip(4) {
        let start: usize = line
            .split("start= ")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let n = i; // partition 5 = q4
        let data = pseudo_random(n * 3000, n as u64);
        assert_eq!(
            &disk[start * 512..start * 512 + data.len()],
            &data[..],
            "{line}"
        );
    }
}

#[test]
fn partitioning_gpt_table_checked_by_sgdisk() {
    let dir = tempfile::tempdir().unwrap();
    let fs = files(dir.path());
    let img = dir.path().join("disk.img");
    let mut args = ARGS.to_vec();
    args.push("partition-type=gpt");
    copy_disk(dir.path(), &args, &img);
    let v = tool("/usr/sbin/sgdisk", &["-v", img.to_str().unwrap()]);
    assert!(v.contains("No problems found"), "{v}");
    let (label, parts) = sfdisk_dump(&img);
    assert_eq!(label, "gpt");
    assert_eq!(parts.len(), 3);
    assert!(
        parts[0]
            .starts_with("1 : start= 2048, size= 2048, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4,"),
        "{}",
        parts[0]
    );
    assert!(parts[0].contains("name=\"p1\""), "{}", parts[0]);
    assert!(parts[0].contains("LegacyBIOSBootable"), "{}", parts[0]);
    assert!(
        parts[1].starts_with("2 : start= 4096, size= 6, type=0FC63DAF"),
        "{}",
        parts[1]
    );
    assert!(
        parts[2]
            .starts_with("3 : start= 4104, size= 4096, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F,"),
        "{}",
        parts[2]
    );
    // Unique partition GUIDs differ.
    let uuid = |l: &str| l.split("uuid=").nth(1).unwrap()[..36].to_string();
    assert_ne!(uuid(&parts[0]), uuid(&parts[1]));
    // Backup header at the last sector: 33 sectors after the last partition.
    let disk = std::fs::read(&img).unwrap();
    assert_eq!(disk.len(), (8200 + 33) * 512);
    assert_eq!(&disk[disk.len() - 512..disk.len() - 504], b"EFI PART");
    assert_eq!(&disk[512..520], b"EFI PART");
    // Protective MBR.
    assert_eq!(disk[0x1c2], 0xee);
    for ((_, data), start) in fs.iter().zip([2048usize, 4096, 4104]) {
        assert_eq!(&disk[start * 512..start * 512 + data.len()], &data[..]);
    }
    let p = tool("/usr/sbin/sgdisk", &["-p", img.to_str().unwrap()]);
    assert!(p.contains("Partition table holds up to 128 entries"), "{p}");
}

#[test]
fn partitioning_default_type_and_many_gpt_partitions() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..130 {
        write_file(dir.path(), &format!("f{i}"), &[i as u8; 512]);
    }
    // Four files: MBR.
    let img = dir.path().join("four.img");
    copy_disk(
        dir.path(),
        &["partitioning", "./f0", "./f1", "./f2", "./f3"],
        &img,
    );
    assert_eq!(sfdisk_dump(&img).0, "dos");
    // Five files: GPT.
    let img = dir.path().join("five.img");
    copy_disk(
        dir.path(),
        &["partitioning", "./f0", "./f1", "./f2", "./f3", "./f4"],
        &img,
    );
    assert_eq!(sfdisk_dump(&img).0, "gpt");
    // 130 files: a GPT with room for 256 entries, each partition aligned.
    let names: Vec<String> = (0..130).map(|i| format!("./f{i}")).collect();
    let mut args = vec!["partitioning", "alignment=512"];
    args.extend(names.iter().map(String::as_str));
    let img = dir.path().join("many.img");
    copy_disk(dir.path(), &args, &img);
    let v = tool("/usr/sbin/sgdisk", &["-v", img.to_str().unwrap()]);
    assert!(v.contains("No problems found"), "{v}");
    let p = tool("/usr/sbin/sgdisk", &["-p", img.to_str().unwrap()]);
    assert!(p.contains("holds up to 256 entries"), "{p}");
    let (_, parts) = sfdisk_dump(&img);
    assert_eq!(parts.len(), 130);
    let disk = std::fs::read(&img).unwrap();
    // 2 + 64 table sectors, then one sector per file.
    assert!(disk[66 * 512..67 * 512].iter().all(|&b| b == 0));
    assert!(disk[67 * 512..68 * 512].iter().all(|&b| b == 1));
}

#[test]
fn partitioning_too_large_for_mbr() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(3 << 40)
        .unwrap();
    let b = big.display().to_string();
    let e = expect_error(&["partitioning", "partition-type=mbr", &b], true);
    assert!(e.contains("too large for an MBR"), "{e}");
    // Without partition-type, GPT is chosen.
    let srv = Server::start(&["partitioning", &b]);
    let o = python(&srv.uri(), "print(h.pread(8, 512).decode())", &[]);
    assert_eq!(o.trim(), "EFI PART");
}

#[test]
fn partitioning_writes_reach_files_and_tables_are_read_only() {
    let dir = tempfile::tempdir().unwrap();
    files(dir.path());
    let d = dir.path().display().to_string();
    let srv = Server::start(&["partitioning", &format!("{d}/p1"), &format!("{d}/p2")]);
    let py = "
import errno
h.pwrite(b'NEW', 2048 * 512 + 10)
h.flush()
mbr = h.pread(512, 0)
h.pwrite(mbr, 0)                      # the same bytes: accepted
h.pwrite(bytes(512), 1024)            # zeroes over padding: accepted
for off, data in ((0x1be, b'\\x00'), (1024, b'x')):
    try:
        h.pwrite(data, off)
        print('no error')
    except nbd.Error as e:
        print(e.errno == 'EIO')
h.zero(512, 1024)                     # zeroing padding is fine
try:
    h.zero(512, 0)
    print('no error')
except nbd.Error as e:
    print(e.errno == 'EIO')
";
    let o = python(&srv.uri(), py, &[]);
    assert_eq!(
        o.split_whitespace().collect::<Vec<_>>(),
        ["True", "True", "True"]
    );
    let p1 = std::fs::read(dir.path().join("p1")).unwrap();
    assert_eq!(&p1[10..13], b"NEW");
    assert!(srv.stderr().contains("partition table"), "{}", srv.stderr());

    // -r: read-only.
    let srv = Server::start(&["-r", "partitioning", &format!("{d}/p1")]);
    let o = python(&srv.uri(), "print(h.is_read_only())", &[]);
    assert_eq!(o.trim(), "True");
}

#[test]
fn partitioning_partition_filter_round_trip() {
    // The manual's example: the partition filter undoes the plugin.
    let dir = tempfile::tempdir().unwrap();
    let fs = files(dir.path());
    let d = dir.path().display().to_string();
    for (n, (_, data)) in fs
        .iter()
        .enumerate()
        .filter(|(_, (_, d))| d.len() % 512 == 0)
    {
        let srv = Server::start(&[
            "--filter=partition",
            "partitioning",
            &format!("{d}/p1"),
            &format!("{d}/p2"),
            &format!("{d}/p3"),
            &format!("partition={}", n + 1),
        ]);
        let out = dir.path().join(format!("out{n}"));
        nbdcopy(&[srv.uri().as_str(), out.to_str().unwrap()]);
        assert!(std::fs::read(&out).unwrap() == *data);
    }
}

#[test]
fn partitioning_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "f", &[1u8; 1024]);
    write_file(dir.path(), "empty", &[]);
    let f = dir.path().join("f").display().to_string();
    let empty = dir.path().join("empty").display().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["partitioning"], "at least one file"),
        (
            &["partitioning", &empty],
            "zero length partitions are not allowed",
        ),
        (
            &["partitioning", "alignment=3000", &f],
            "multiple of sector size",
        ),
        (
            &["partitioning", "alignment=256", &f],
            "should be >= sector size 512",
        ),
        (
            &["partitioning", "alignment=4M", &f],
            "maximum alignment 1048576",
        ),
        (&["partitioning", "mbr-id=0x100", &f], "mbr-id"),
        (&["partitioning", "mbr-id=0", &f], "reserved"),
        (&["partitioning", "mbr-id=junk", &f], "mbr-id"),
        (
            &["partitioning", "type-guid=xyz", &f],
            "could not validate GUID: xyz",
        ),
        (
            &["partitioning", "partition-type=foo", &f],
            "unknown partition-type: foo",
        ),
        (&["partitioning", "/nonexistent"], "/nonexistent"),
        (&["partitioning", "/dev/null"], "not a regular file"),
        (&["partitioning", &f, "size=1"], "unknown parameter 'size'"),
    ];
    for (args, want) in cases {
        let e = expect_error(args, true);
        assert!(e.contains(want), "{args:?}: {e}");
    }
}
