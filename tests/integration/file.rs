//! The file plugin.

use crate::harness::*;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// upstream tests/test-file.sh: writes, trim and zero read back correctly.
const TEST_FILE_SH: &str = r#"
assert h.get_size() == 16384
assert not h.is_read_only()
buf1 = b"1" * 1024
buf2 = b"2" * 1024
h.pwrite(buf1 + buf2 + buf1 + buf2, 1024)
buf = h.pread(8192, 0)
assert buf == bytes(1024) + buf1 + buf2 + buf1 + buf2 + bytes(3072)
if h.can_flush():
    h.flush()
if h.can_trim():
    h.trim(1024, 1024)
    assert h.pread(1024, 1024) == bytes(1024)
h.zero(4096, 1024)
assert h.pread(8192, 0) == bytes(8192)
print("ok")
"#;

#[test]
fn test_file_sh() {
    let dir = tempfile::tempdir().unwrap();
    let disk = write_file(dir.path(), "disk", &vec![0u8; 16384]);
    let d = disk.display().to_string();
    let mut s = Server::start(&["file", &d]);
    assert_eq!(python(&s.uri(), TEST_FILE_SH, &[]).trim(), "ok");
    s.stop_ok();
    assert_eq!(std::fs::read(&disk).unwrap(), vec![0u8; 16384]);
}

#[test]
fn writes_reach_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let disk = write_file(dir.path(), "disk", &vec![0u8; 65536]);
    let arg = format!("file={}", disk.display());
    let s = Server::start(&["file", &arg]);
    python(
        &s.uri(),
        "h.pwrite(b'hello', 4093); h.flush(); print('ok')",
        &[],
    );
    let content = std::fs::read(&disk).unwrap();
    assert_eq!(&content[4093..4098], b"hello");
    assert_eq!(content.len(), 65536);
    // And a change made to the file is visible to the next read.
    let mut expect = content.clone();
    expect[0..3].copy_from_slice(b"abc");
    std::fs::write(&disk, &expect).unwrap();
    let out = python(&s.uri(), "print(h.pread(3, 0).decode())", &[]);
    assert_eq!(out.trim(), "abc");
}

fn allocated_blocks(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks()
}

#[test]
fn trim_punches_hole() {
    let dir = tempfile::tempdir().unwrap();
    let disk = write_file(dir.path(), "disk", &pseudo_random(4 << 20, 9));
    let f = std::fs::File::open(&disk).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let before = allocated_blocks(&disk);
    assert!(
        before >= 8192,
        "test file not fully allocated ({before} blocks)"
    );
    let d = disk.display().to_string();
    let mut s = Server::start(&["file", &d]);
    let script = r#"
assert h.can_trim()
h.trim(2 * 1024 * 1024, 1024 * 1024)
h.flush()
print("ok")
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "ok");
    s.stop_ok();
    let after = allocated_blocks(&disk);
    // 2 MiB = 4096 512-byte blocks punched (allow filesystem slack).
    assert!(
        after + 3500 <= before,
        "trim did not punch a hole: {before} -> {after} blocks"
    );
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 4 << 20);
    let data = std::fs::read(&disk).unwrap();
    assert!(data[1 << 20..3 << 20].iter().all(|&b| b == 0));
    assert_eq!(&data[..1 << 20], &pseudo_random(4 << 20, 9)[..1 << 20]);
}

#[test]
fn zero_reads_back_zero_and_keeps_size() {
    let dir = tempfile::tempdir().unwrap();
    let orig = pseudo_random(1 << 20, 5);
    let disk = write_file(dir.path(), "disk", &orig);
    let d = disk.display().to_string();
    let s = Server::start(&["file", &d]);
    let script = r#"
h.zero(100000, 12345)
h.zero(65536, 262144, nbd.CMD_FLAG_NO_HOLE)
h.flush()
print("ok")
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "ok");
    let mut expect = orig.clone();
    expect[12345..112345].fill(0);
    expect[262144..262144 + 65536].fill(0);
    let got = std::fs::read(&disk).unwrap();
    assert_eq!(got.len(), expect.len());
    assert!(got == expect, "file contents after zero differ");
}

/// upstream tests/test-file-extents.sh
#[test]
fn qemu_img_map_matches_local_file() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(10 << 20).unwrap();
    drop(f);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.write_all_at(&pseudo_random(65536, 1), 0).unwrap();
        f.write_all_at(&pseudo_random(131072, 2), 1 << 20).unwrap();
        f.write_all_at(&pseudo_random(4096, 3), 5 << 20).unwrap();
        f.write_all_at(&pseudo_random(65536, 4), (10 << 20) - 65536)
            .unwrap();
        f.sync_all().unwrap();
    }
    let d = disk.display().to_string();
    let local = qemu_img_map(&d);
    let s = Server::start(&["file", &d]);
    let remote = qemu_img_map(&s.uri());
    assert_eq!(remote, local);
    // Sanity: the map really has holes and data.
    assert!(local.contains("\"data\":false") && local.contains("\"data\":true"));
}

#[test]
fn readonly_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let orig = pseudo_random(65536, 77);
    let disk = write_file(dir.path(), "disk", &orig);
    let d = disk.display().to_string();
    let s = Server::start(&["-r", "file", &d]);
    let script = r#"
assert h.is_read_only()
try:
    h.pwrite(b"x" * 512, 0)
    print("write succeeded")
except nbd.Error as e:
    print("refused")
try:
    h.zero(512, 0)
    print("zero succeeded")
except nbd.Error as e:
    print("refused")
"#;
    let out = python(&s.uri(), script, &[]);
    assert_eq!(out, "refused\nrefused\n");
    let json = nbdinfo(&["--json", &s.uri()]);
    assert_eq!(jq(".exports[0].is_read_only", &json).trim(), "true");
    assert_eq!(std::fs::read(&disk).unwrap(), orig, "file was modified");
    // qemu-io writes fail too.
    let o = client_any(
        "/usr/bin/qemu-io",
        &["-f", "raw", "-c", "write -P 0x55 0 4k", &s.uri()],
    );
    let all = format!("{}{}", stdout_str(&o), stderr_str(&o));
    assert!(
        !o.status.success() || all.to_lowercase().contains("fail") || all.contains("denied"),
        "qemu-io write to -r export seemed to succeed:\n{all}"
    );
    assert_eq!(std::fs::read(&disk).unwrap(), orig, "file was modified");
}

#[test]
fn dir_lists_regular_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("exports");
    std::fs::create_dir(&d).unwrap();
    write_file(&d, "a", b"1\n");
    write_file(&d, "b", &vec![b'2'; 4096]);
    std::os::unix::fs::symlink("b", d.join("c")).unwrap();
    std::fs::create_dir(d.join("e")).unwrap();
    std::os::unix::fs::symlink("/dev/null", d.join("f")).unwrap();
    std::os::unix::fs::symlink(".", d.join("g")).unwrap();
    std::os::unix::fs::symlink("nonexistent", d.join("h")).unwrap();
    let st = std::process::Command::new("mkfifo")
        .arg(d.join("d"))
        .status()
        .expect("mkfifo");
    assert!(st.success());
    let arg = format!("dir={}", d.display());
    let s = Server::start(&["file", &arg]);
    let json = nbdinfo(&["--list", "--json", &s.uri()]);
    let names = jq("[.exports[].\"export-name\"] | sort", &json);
    assert_eq!(names.trim(), r#"["a","b","c"]"#, "{json}");
    assert_eq!(nbdinfo(&["--size", &s.uri_export("a")]).trim(), "2");
    assert_eq!(nbdinfo(&["--size", &s.uri_export("c")]).trim(), "4096");
    let out = python(&s.uri_export("c"), "print(h.pread(1, 0).decode())", &[]);
    assert_eq!(out.trim(), "2");
    for bad in ["", "d", "e", "f", "g", "h", "nosuch"] {
        let o = client_any("/usr/bin/nbdinfo", &["--size", &s.uri_export(bad)]);
        assert!(
            !o.status.success(),
            "export {bad:?} should not be served: {}",
            stdout_str(&o)
        );
    }
}

#[test]
fn dir_nonexistent_fails() {
    crate::cli::expect_error(&["file", "dir=/nonexistent/dir"], true);
    crate::cli::expect_error(&["file", "directory=/nonexistent/dir"], true);
}

#[test]
fn directory_is_another_name_for_dir() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("exports");
    std::fs::create_dir(&d).unwrap();
    write_file(&d, "one", b"11");
    write_file(&d, "two", &vec![b'2'; 1024]);
    let arg = format!("directory={}", d.display());
    let s = Server::start(&["file", &arg]);
    let json = nbdinfo(&["--list", "--json", &s.uri()]);
    let names = jq("[.exports[].\"export-name\"] | sort", &json);
    assert_eq!(names.trim(), r#"["one","two"]"#, "{json}");
    let out = python(
        &s.uri_export("two"),
        "print(h.get_size(), h.pread(2, 1000).decode())",
        &[],
    );
    assert_eq!(out.trim(), "1024 22");
}

#[test]
fn fd_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let disk = write_file(dir.path(), "disk", &vec![0u8; 16384]);
    let script = "nbdinfo --size \"$uri\"; nbdinfo --json \"$uri\" | jq .exports[0].is_read_only; \
                  /usr/bin/python3 -c 'import nbd, sys; h = nbd.NBD(); h.connect_uri(sys.argv[1]); \
                  h.pwrite(b\"fdfdfd\", 100); h.zero(10, 101); h.flush(); print(bytes(h.pread(8, 99)))' \"$uri\"";
    let o = run_cmd(
        std::process::Command::new("/bin/sh")
            .args([
                "-c",
                "exec \"$0\" -U - file fd=6 --run \"$2\" 6<>\"$1\"",
                &binary().display().to_string(),
                &disk.display().to_string(),
                script,
            ])
            .env("PATH", client_path())
            .stdin(std::process::Stdio::null()),
        LONG_TIMEOUT,
    );
    assert_success(&o, "nbdkit file fd=6");
    assert_eq!(
        stdout_str(&o),
        "16384\nfalse\nb'\\x00f\\x00\\x00\\x00\\x00\\x00\\x00'\n"
    );
    let data = std::fs::read(&disk).unwrap();
    assert_eq!(&data[99..103], b"\0f\0\0");
}

#[test]
fn exact_file_sizes() {
    let dir = tempfile::tempdir().unwrap();
    for size in [0usize, 1, 511, 512, 513, 1 << 20, (1 << 20) + 1] {
        let disk = write_file(dir.path(), &format!("disk{size}"), &vec![7u8; size]);
        let d = disk.display().to_string();
        let out = captive(&["-U", "-", "file", &d], "nbdinfo --size \"$uri\"");
        assert_eq!(out.trim(), size.to_string(), "file of {size} bytes");
    }
}

#[test]
fn last_partial_sector_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let disk = write_file(dir.path(), "disk", &vec![0u8; 513]);
    let d = disk.display().to_string();
    let s = Server::start(&["file", &d]);
    let script = r#"
assert h.get_size() == 513
h.pwrite(b"xyz", 510)
assert h.pread(3, 510) == b"xyz"
try:
    h.pwrite(b"xyz", 511)
    print("bad")
except nbd.Error:
    print("ok")
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "ok");
    let data = std::fs::read(&disk).unwrap();
    assert_eq!(data.len(), 513);
    assert_eq!(&data[510..], b"xyz");
}

/// A loop device attached for the length of a test, detached on drop.
struct LoopDevice(String);

impl LoopDevice {
    fn attach(image: &Path) -> LoopDevice {
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(image)
            .output()
            .expect("run losetup (util-linux)");
        assert!(
            out.status.success(),
            "losetup failed (the block-device test needs root and /dev/loop*): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        LoopDevice(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

/// The file plugin serves a block device: exact size, writes land on the
/// device, write-zeroes and trim read back as zero.
#[test]
fn block_device() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("blk.img");
    std::fs::write(&image, vec![0xaau8; 8 << 20]).unwrap();
    let dev = LoopDevice::attach(&image);
    let s = Server::start(&["file", &dev.0]);
    assert_eq!(nbdinfo(&["--size", &s.uri()]).trim(), "8388608");
    let out = qemu_io(&[
        "-f",
        "raw",
        "-c",
        "write -P 0x33 4096 1M",
        "-c",
        "read -P 0x33 4096 1M",
        "-c",
        "write -z 0 4096",
        "-c",
        "read -P 0 0 4096",
        "-c",
        "discard 2M 1M",
        "-c",
        "flush",
        &s.uri(),
    ]);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    drop(s);
    let data = std::fs::read(&dev.0).unwrap();
    assert!(data[..4096].iter().all(|&b| b == 0));
    assert!(data[4096..4096 + (1 << 20)].iter().all(|&b| b == 0x33));
    assert!(data[(1 << 20) + 4096..2 << 20].iter().all(|&b| b == 0xaa));
}
