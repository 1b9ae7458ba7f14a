//! The data plugin: the manual's format examples (expected bytes written
//! out by hand here), every parameter, writes, extents and errors.

use crate::harness::*;

/// The whole disk of `nbdkit data ARGS`, read with nbdcopy.
fn disk(args: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut a: Vec<String> = vec!["-U".into(), "-".into(), "data".into()];
    a.extend(args.iter().map(|s| s.to_string()));
    a.push("--run".into());
    a.push(format!("nbdcopy \"$uri\" {}", out.display()));
    run_ok(&a);
    std::fs::read(&out).unwrap()
}

#[track_caller]
fn startup_error(args: &[&str], needle: &str) {
    let mut a = vec!["data"];
    a.extend_from_slice(args);
    let o = run(&a);
    let err = stderr_str(&o);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(
        err.contains("error") && err.contains(needle),
        "{args:?}: {err}"
    );
    assert_no_panic(&o);
}

fn sector_with_signature() -> Vec<u8> {
    let mut s = vec![0u8; 512];
    s[510] = 0x55;
    s[511] = 0xaa;
    s
}

#[test]
fn data_manual_first_example_and_alignment_form() {
    let mut want = sector_with_signature();
    want[..4].copy_from_slice(&[0, 1, 2, 3]);
    assert_eq!(disk(&["0 1 2 3 @0x1fe 0x55 0xaa"]), want);
    assert_eq!(disk(&["data=0 1 2 3 @^0x200 @-2 le16:0xaa55"]), want);
}

#[test]
fn data_manual_test_patterns() {
    let want: Vec<u8> = [0x55u8, 0xaa].repeat(2048);
    assert_eq!(disk(&[" ( 0x55 0xAA )*2048 "]), want);
    let want: Vec<u8> = b"Hello".repeat(2000)[..8192].to_vec();
    assert_eq!(disk(&[" ( \"Hello\" )*2000 ", "size=8192"]), want);
    assert_eq!(disk(&["( 0x55 0xAA ) * 256"]), [0x55u8, 0xaa].repeat(256));
}

#[test]
fn data_manual_mbr_example() {
    let got = disk(&[
        "
   @0x1be    # MBR first partition entry
     0           # Partition status
     0 2 0       # CHS start
     0x83        # Partition type (Linux)
     0x20 0x20 0 # CHS last sector
     le32:1      # LBA first sector
     le32:0x7ff  # LBA number of sectors
   @0x1fe    # Boot signature
     0x55 0xaa
   ",
        "size=1M",
    ]);
    assert_eq!(got.len(), 1 << 20);
    let mut want = vec![0u8; 1 << 20];
    want[0x1be..0x1ce].copy_from_slice(&[
        0, 0, 2, 0, 0x83, 0x20, 0x20, 0, 1, 0, 0, 0, 0xff, 0x07, 0, 0,
    ]);
    want[0x1fe] = 0x55;
    want[0x1ff] = 0xaa;
    assert_eq!(got, want);
    // sfdisk reads it as one Linux partition from sector 1.
    let dir = tempfile::tempdir().unwrap();
    let img = write_file(dir.path(), "disk", &got);
    let o = std::process::Command::new("/usr/sbin/sfdisk")
        .args(["-d", img.to_str().unwrap()])
        .output();
    if let Ok(o) = o {
        let d = String::from_utf8_lossy(&o.stdout);
        assert!(
            d.contains("start=           1, size=        2047, type=83"),
            "{d}"
        );
    }
}

#[test]
fn data_manual_files_names_vars_scripts() {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "file1", b"abc");
    write_file(dir.path(), "file2", &[7u8; 600]);
    let f1 = dir.path().join("file1");
    let f2 = dir.path().join("file2");
    let expr = format!(" <{} @^512 <{} @^512 ", f1.display(), f2.display());
    let got = disk(&[&expr]);
    let mut want = vec![0u8; 1536];
    want[..3].copy_from_slice(b"abc");
    want[512..1112].fill(7);
    assert_eq!(got, want);

    // </dev/urandom[:512]*16: one random sector, sixteen times.
    let got = disk(&[" </dev/urandom[:512]*16 "]);
    assert_eq!(got.len(), 8192);
    assert!(got.chunks(512).all(|c| c == &got[..512]));
    assert!(got[..512].iter().any(|&b| b != 0));

    // Names: two identical sectors with boot signatures.
    let got = disk(&[r" ( 0x55 0xAA ) -> \boot-signature
                      ( @0x1fe \boot-signature ) -> \sector
                      \sector \sector "]);
    assert_eq!(
        got,
        [sector_with_signature(), sector_with_signature()].concat()
    );

    // $VAR from a parameter and from the environment.
    let want: Vec<u8> = [0x55u8, 0xaa].repeat(16);
    assert_eq!(disk(&["$pattern*16", "pattern=0x55 0xAA"]), want);
    let o = nbdkit()
        .env("pattern", "0x55 0xAA")
        .args([
            "-U",
            "-",
            "data",
            "$pattern*16",
            "--run",
            "nbdcopy \"$uri\" - | od -An -tx1 | head -1",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("55 aa 55 aa"));

    // <(SCRIPT): the manual's incrementing pattern, cut by a slice.
    let got = disk(&[" <( i=0
                         while :; do
                             printf \"%04d\" $i; i=$((i+1))
                         done )[:32768] "]);
    let want: Vec<u8> = (0..8192)
        .flat_map(|i| format!("{i:04}").into_bytes())
        .collect();
    assert_eq!(got, want);
}

#[test]
fn data_base64_raw_and_size() {
    let got = disk(&["base64=MTIz", "size=1M"]);
    assert_eq!(got.len(), 1 << 20);
    assert_eq!(&got[..3], b"123");
    assert!(got[3..].iter().all(|&b| b == 0));
    assert_eq!(disk(&["raw=Hello, world!"]), b"Hello, world!");
    assert_eq!(
        disk(&["base64=aGVsbG8gbmJka2l0IHVzZXI="]),
        b"hello nbdkit user"
    );
    // size= truncates.
    assert_eq!(disk(&["1 2 3 4 5", "size=2"]), [1, 2]);
    // The manual's hello world.
    let out = run_ok(&[
        "-U",
        "-",
        "data",
        "raw=Hello, world!",
        "--run",
        "nbdcopy \"$uri\" - | cat",
    ]);
    assert_eq!(out, "Hello, world!");
    // --dump-plugin advertises base64.
    let d = run_ok(&["data", "--dump-plugin"]);
    assert!(d.contains("data_base64=yes"), "{d}");
}

#[test]
fn data_is_writable_with_every_allocator() {
    for alloc in ["sparse", "malloc", "malloc,mlock=false", "zstd"] {
        let a = format!("allocator={alloc}");
        let s = Server::start(&["data", "( 1 2 3 4 )*1024 @1M 9", "size=2M", &a]);
        let script = r#"
assert h.get_size() == 2 * 1024 * 1024
assert not h.is_read_only()
assert h.pread(8, 0) == bytes([1, 2, 3, 4, 1, 2, 3, 4])
assert h.pread(2, 1024 * 1024 - 1) == bytes([0, 9])
h.pwrite(b"hello", 100)
assert h.pread(5, 100) == b"hello"
h.zero(4096, 0)
assert h.pread(4096, 0) == bytes(4096)
h.trim(8, 4096)
h.flush()
assert h.can_multi_conn() and h.can_fua() and h.can_cache()
print("ok")
"#;
        assert_eq!(python(&s.uri(), script, &[]).trim(), "ok", "{alloc}");
    }
    // -r serves it read-only.
    let s = Server::start(&["-r", "data", "1 2 3"]);
    assert!(nbdinfo(&[s.uri().as_str()]).contains("is_read_only: true"));
}

#[test]
fn data_sparse_disk_extents() {
    let s = Server::start(&["data", "1 @1M 2 @^1M", "size=4M"]);
    let out = qemu_img(&["map", "--output=json", "-f", "raw", &s.uri()]);
    let got = jq("map(select(.data)) | map(.start)", &out);
    let starts: Vec<u64> = got
        .trim_matches(|c| c == '[' || c == ']' || c == '\n')
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect();
    assert_eq!(starts.len(), 2, "{out}");
    assert_eq!(starts[0], 0);
    assert!(starts[1] <= 1 << 20 && starts[1] > 0, "{out}");
    let totals = nbdinfo(&["--map", "--totals", &s.uri()]);
    assert!(totals.contains("hole,zero"), "{totals}");
}

#[test]
fn data_errors_name_the_token() {
    startup_error(&["1 2 256"], "offset 4");
    startup_error(&["1 2 256"], "256");
    startup_error(&["( 1 2"], "unmatched '('");
    startup_error(&["@-1"], "@-1");
    startup_error(&["$nosuch"], "$nosuch");
    startup_error(&["1 2 x"], "offset 4");
    startup_error(&["</nonexistent/file"], "/nonexistent/file");
    startup_error(&["<(exit 7)"], "status 7");
    startup_error(&["$v", "v=1 q"], "offset 2 of $v");
    startup_error(&["1", "szie=1M"], "szie");
    startup_error(&["1", "raw=2"], "exactly once");
    startup_error(&[], "not specified");
    startup_error(&["raw=1", "v=1"], "'v'");
    startup_error(&["base64=!!!!"], "base64");
    startup_error(&["1", "size=x"], "size");
    startup_error(&["1", "allocator=nope"], "allocator");
    startup_error(&["1", "allocator=malloc,mlock=maybe"], "boolean");
    startup_error(&["1", "size=1M", "size=2M"], "more than once");
}
