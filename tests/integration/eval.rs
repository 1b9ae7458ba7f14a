//! The eval plugin (nbdkit-eval-plugin(1)): the sh plugin's methods as
//! shell snippets on the command line.

use crate::harness::*;

const ZERO_PREAD: &str = "pread=dd if=/dev/zero count=$3 iflag=count_bytes status=none";

#[test]
fn eval_zero_disk_read_only() {
    let srv = Server::start(&["eval", "get_size=echo 64M", ZERO_PREAD]);
    assert_eq!(nbdinfo(&["--size", &srv.uri()]).trim(), "67108864");
    let j = nbdinfo(&["--json", &srv.uri()]);
    assert_eq!(jq(".exports[0].is_read_only", &j).trim(), "true", "{j}");
    let out = python(
        &srv.uri(),
        "print(h.pread(65536, 1 << 20) == bytes(65536))\n",
        &[],
    );
    assert_eq!(out.trim(), "True");
}

/// The file-plugin equivalent from the manual page, with `config=`.
#[test]
fn eval_file_equivalent_with_config_and_synthesized_can_write() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let file_arg = format!("file={}", disk.display());
    let mut srv = Server::start_in(
        dir,
        &[
            "eval",
            r#"config=ln -sf "$(realpath "$3")" $tmpdir/file"#,
            "get_size=stat -Lc %s $tmpdir/file",
            "pread=dd if=$tmpdir/file skip=$4 count=$3 iflag=count_bytes,skip_bytes status=none",
            "pwrite=dd of=$tmpdir/file seek=$4 conv=notrunc oflag=seek_bytes status=none",
            &file_arg,
        ],
    );
    // pwrite given, can_write not: writable.
    let out = python(
        &srv.uri(),
        r#"
assert not h.is_read_only()
assert not h.can_flush() and not h.can_trim()
h.pwrite(b"\xab" * 4096, 8192)
assert h.pread(4096, 8192) == b"\xab" * 4096
print("ok")
"#,
        &[],
    );
    assert_eq!(out.trim(), "ok");
    srv.stop_ok();
    let data = std::fs::read(&disk).unwrap();
    assert!(data[8192..12288].iter().all(|&b| b == 0xab));
    assert!(data[..8192].iter().all(|&b| b == 0));
}

#[test]
fn eval_synthesizes_every_can_method_from_its_data_method() {
    let srv = Server::start(&[
        "eval",
        "get_size=echo 1M",
        ZERO_PREAD,
        "pwrite=cat >/dev/null",
        "flush=:",
        "trim=:",
        "zero=:",
        "extents=echo 0 1M hole,zero",
    ]);
    let j = nbdinfo(&["--json", &srv.uri()]);
    for k in ["can_flush", "can_trim", "can_zero", "can_fua"] {
        assert_eq!(
            jq(&format!(".exports[0].{k}"), &j).trim(),
            "true",
            "{k}: {j}"
        );
    }
    assert_eq!(jq(".exports[0].is_read_only", &j).trim(), "false", "{j}");
    let map = jq(
        "map({start, length, data, zero})",
        &qemu_img_map(&srv.uri()),
    );
    assert_eq!(
        map.trim(),
        r#"[{"start":0,"length":1048576,"data":false,"zero":true}]"#
    );
    // An explicit can_* wins over the synthesized one.
    let srv = Server::start(&[
        "eval",
        "get_size=echo 1M",
        ZERO_PREAD,
        "pwrite=cat >/dev/null",
        "can_write=exit 3",
    ]);
    let j = nbdinfo(&["--json", &srv.uri()]);
    assert_eq!(jq(".exports[0].is_read_only", &j).trim(), "true", "{j}");
}

#[test]
fn eval_missing_catches_every_other_method() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("missing.log");
    let missing = format!(r#"missing=echo "$@" >> {}; exit 2"#, log.display());
    let mut srv = Server::start_in(dir, &["eval", "get_size=echo 1M", ZERO_PREAD, &missing]);
    python(&srv.uri(), "h.pread(512, 0)\n", &[]);
    crate::sh::wait_for_lines(&log, "close", 1);
    srv.stop_ok();
    let got = std::fs::read_to_string(&log).unwrap();
    for m in [
        "config_complete",
        "thread_model",
        "get_ready",
        "after_fork",
        "preconnect false",
        "open false",
        "can_write",
        "can_flush",
        "close",
        "unload",
    ] {
        assert!(
            got.lines().any(|l| l.starts_with(m)),
            "missing= did not see {m}:\n{got}"
        );
    }
    // Methods given explicitly are not sent to missing=.
    assert!(!got
        .lines()
        .any(|l| l.starts_with("get_size") || l.starts_with("pread")));
}

#[test]
fn eval_missing_can_answer_for_methods() {
    // missing= can implement methods itself, dispatching on $1.
    let srv = Server::start(&[
        "eval",
        r#"missing=case "$1" in get_size) echo 2M ;; pread) dd if=/dev/zero count=$3 iflag=count_bytes status=none ;; *) exit 2 ;; esac"#,
    ]);
    assert_eq!(nbdinfo(&["--size", &srv.uri()]).trim(), "2097152");
}

#[test]
fn eval_unload_runs_at_exit() {
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("unloaded");
    let unload = format!("unload=touch {}", mark.display());
    let mut srv = Server::start_in(dir, &["eval", "get_size=echo 1M", ZERO_PREAD, &unload]);
    assert!(!mark.exists());
    srv.stop_ok();
    assert!(mark.exists(), "unload= did not run");
}

#[test]
fn eval_errors_and_exit_codes() {
    let srv = Server::start(&[
        "eval",
        "get_size=echo 1M",
        r#"pread=if [ $4 = 0 ]; then echo "ENOSPC full up" >&2; exit 1; fi; dd if=/dev/zero count=$3 iflag=count_bytes status=none"#,
        "can_write=exit 3",
        "is_rotational=exit 0",
        "can_multi_conn=exit 0",
    ]);
    let out = python(
        &srv.uri(),
        r#"
try:
    h.pread(512, 0)
    print("ok")
except nbd.Error as e:
    print(e.errno)
print(len(h.pread(512, 512)))
print(h.is_read_only(), h.can_multi_conn())
"#,
        &[],
    );
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["ENOSPC", "512", "True", "True"]
    );
    assert!(srv.stderr().contains("pread: full up"), "{}", srv.stderr());
}

#[test]
fn eval_list_exports_and_default_export() {
    let srv = Server::start(&[
        "eval",
        "list_exports=echo NAMES; echo a; echo b",
        "default_export=echo b",
        r#"open=echo "$3""#,
        r#"get_size=[ "$2" = a ] && echo 1M || echo 3M"#,
        ZERO_PREAD,
    ]);
    let list = nbdinfo(&["--list", "--json", &srv.uri()]);
    assert_eq!(
        jq("[.exports[] | .\"export-name\"]", &list).trim(),
        r#"["a","b"]"#
    );
    assert_eq!(nbdinfo(&["--size", &srv.uri()]).trim(), "3145728");
    assert_eq!(nbdinfo(&["--size", &srv.uri_export("a")]).trim(), "1048576");
}

#[test]
fn eval_bad_parameters_are_startup_errors() {
    let o = run(&["eval", "get_size=echo 1M", "get_size=echo 2M"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr_str(&o).contains("method get_size defined more than once"),
        "{}",
        stderr_str(&o)
    );
    let o = run(&["eval", "get_size=echo 1M", "foo=bar"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr_str(&o).contains("callback 'foo' is unknown, and there is no 'config' callback"),
        "{}",
        stderr_str(&o)
    );
    let o = run(&["eval", "get_size=echo 1M", "bare"]);
    assert_eq!(o.status.code(), Some(1));
    let o = run(&[
        "eval",
        "get_size=echo 1M",
        "config_complete=echo 'EINVAL not configured' >&2; exit 1",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr_str(&o).contains("not configured"),
        "{}",
        stderr_str(&o)
    );
}

#[test]
fn eval_dump_plugin_and_thread_model() {
    let d = run_ok(&[
        "eval",
        "thread_model=echo parallel",
        "dump_plugin=echo eval_test=1",
        "--dump-plugin",
    ]);
    assert!(d.contains("\nthread_model=parallel\n"), "{d}");
    assert!(d.contains("\neval_test=1\n"), "{d}");
    assert!(d.contains("\nmax_known_status=3\n"), "{d}");
    let d = run_ok(&["eval", "--dump-plugin"]);
    assert!(d.contains("\nthread_model=serialize_all_requests\n"), "{d}");
}

#[test]
fn eval_tmpdir_is_set_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let note = dir.path().join("tmpdir.txt");
    let cc = format!("config_complete=echo $tmpdir > {}", note.display());
    let mut srv = Server::start_in(dir, &["eval", &cc, "get_size=echo 1M", ZERO_PREAD]);
    let tmpdir = std::fs::read_to_string(&note).unwrap();
    let tmpdir = std::path::PathBuf::from(tmpdir.trim());
    assert!(tmpdir.is_dir());
    srv.stop_ok();
    assert!(!tmpdir.exists(), "{} not removed", tmpdir.display());
}
