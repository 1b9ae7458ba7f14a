//! The sh plugin (nbdkit-sh-plugin(3)): a script called once per method.

use crate::harness::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Write an executable `/bin/sh` script `name` into `dir`.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = write_file(dir, name, format!("#!/bin/sh\n{body}").as_bytes());
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A 1M read/write disk kept in `$tmpdir/disk`, logging every call with its
/// arguments to `LOG` (a file outside `$tmpdir`).
const DISK: &str = r#"
log=$(dirname "$0")/calls.log
echo "$@" >> "$log"
disk=$tmpdir/disk
case "$1" in
  load) echo "tmpdir=$tmpdir" > "$(dirname "$0")/tmpdir.txt" ;;
  get_ready|after_fork|config_complete|unload|close|preconnect) ;;
  open) [ -f "$disk" ] || truncate -s 1M "$disk"; echo "h-$2" ;;
  get_size) stat -Lc %s "$disk" ;;
  can_write|can_flush|can_trim|can_zero|can_extents|can_multi_conn) exit 0 ;;
  is_rotational) exit 3 ;;
  can_fua) echo native ;;
  can_cache) echo native ;;
  pread) dd if="$disk" skip=$4 count=$3 iflag=count_bytes,skip_bytes status=none ;;
  pwrite) dd of="$disk" seek=$4 conv=notrunc oflag=seek_bytes status=none ;;
  flush|cache) ;;
  trim|zero) dd if=/dev/zero of="$disk" seek=$4 count=$3 conv=notrunc iflag=count_bytes oflag=seek_bytes status=none ;;
  extents) echo "0 64K"; echo "64K 960K hole,zero" ;;
  thread_model) echo serialize_requests ;;
  *) exit 2 ;;
esac
"#;

/// Wait until `file` has a line starting with `prefix` `n` times: the
/// server runs `close` after the client has gone, so a test that stops the
/// server right after its client would race the close.
pub fn wait_for_lines(file: &Path, prefix: &str, n: usize) {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.lines().filter(|l| l.starts_with(prefix)).count() >= n {
            return;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "no {n} '{prefix}' lines in {}:\n{text}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn calls(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("calls.log")).unwrap_or_default()
}

#[test]
fn sh_disk_roundtrip_with_every_data_method() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(dir.path(), "disk.sh", DISK);
    let sdir = dir.path().to_path_buf();
    let mut srv = Server::start_in(dir, &["sh", s.to_str().unwrap()]);
    let out = python(
        &srv.uri(),
        r#"
assert h.get_size() == 1048576
assert not h.is_read_only()
assert h.can_flush() and h.can_trim() and h.can_zero() and h.can_fua()
assert h.can_multi_conn() and h.can_cache()
data = bytes(range(256)) * 256
h.pwrite(data, 4096)
assert h.pread(65536, 4096) == data
h.pwrite(b"\xff" * 512, 0, nbd.CMD_FLAG_FUA)
h.flush()
h.trim(512, 4096)
assert h.pread(512, 4096) == bytes(512)
h.zero(512, 4608, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(512, 4608) == bytes(512)
h.cache(4096, 0)
assert h.pread(512, 0) == b"\xff" * 512
print("ok")
"#,
        &[],
    );
    assert_eq!(out.trim(), "ok");
    wait_for_lines(&sdir.join("calls.log"), "close", 1);
    srv.stop_ok();
    let log = calls(&sdir);
    for want in [
        "load",
        "config_complete",
        "thread_model",
        "get_ready",
        "after_fork",
        "preconnect false",
        "open false  false",
        "get_size h-false",
        "pwrite h-false 512 0 fua",
        "pwrite h-false 65536 4096 ",
        "pread h-false 65536 4096",
        "flush h-false",
        "trim h-false 512 4096 ",
        "zero h-false 512 4608 ",
        "cache h-false 4096 0",
        "close h-false",
        "unload",
    ] {
        assert!(
            log.lines()
                .any(|l| l == want || l.starts_with(&format!("{want} "))),
            "no call '{want}' in the log:\n{log}"
        );
    }
    // Order of the lifecycle calls.
    let pos = |m: &str| {
        log.lines()
            .position(|l| l.split(' ').next() == Some(m))
            .unwrap()
    };
    assert!(pos("load") < pos("config_complete"));
    assert!(pos("config_complete") < pos("get_ready"));
    assert!(pos("get_ready") < pos("after_fork"));
    assert!(pos("after_fork") < pos("open"));
    assert!(pos("close") < pos("unload"));
}

#[test]
fn sh_tmpdir_is_shared_and_removed_at_exit() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(dir.path(), "disk.sh", DISK);
    let sdir = dir.path().to_path_buf();
    let mut srv = Server::start_in(dir, &["sh", s.to_str().unwrap()]);
    let tmpdir = std::fs::read_to_string(sdir.join("tmpdir.txt")).unwrap();
    let tmpdir = PathBuf::from(tmpdir.trim().strip_prefix("tmpdir=").unwrap());
    // The disk made by `open` is there for later calls and connections.
    python(&srv.uri(), "h.pwrite(b'x' * 512, 0)\n", &[]);
    assert!(tmpdir.join("disk").exists());
    let out = python(&srv.uri(), "print(h.pread(1, 0))\n", &[]);
    assert_eq!(out.trim(), "bytearray(b'x')");
    srv.stop_ok();
    assert!(!tmpdir.exists(), "{} not removed at exit", tmpdir.display());
}

#[test]
fn sh_nbdcopy_and_qemu_img_read_a_pattern() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "pat.sh",
        r#"
case "$1" in
  get_size) echo 4M ;;
  pread) head -c $(( $4 + $3 )) "$(dirname "$0")/pattern" | tail -c $3 ;;
  thread_model) echo parallel ;;
  *) exit 2 ;;
esac
"#,
    );
    let pattern = pseudo_random(4 << 20, 7);
    write_file(dir.path(), "pattern", &pattern);
    let out = dir.path().join("copy");
    let srv = Server::start_in(dir, &["sh", s.to_str().unwrap()]);
    nbdcopy(&[&srv.uri(), out.to_str().unwrap()]);
    assert!(
        std::fs::read(&out).unwrap() == pattern,
        "nbdcopy copy differs"
    );
    let info = qemu_img(&["info", "--output=json", &srv.uri()]);
    assert!(info.contains("\"virtual-size\": 4194304"), "{info}");
    let conv = srv.dir().join("conv");
    qemu_img(&["convert", "-O", "raw", &srv.uri(), conv.to_str().unwrap()]);
    assert!(
        std::fs::read(&conv).unwrap() == pattern,
        "qemu-img copy differs"
    );
    // A read-only script: writes are refused.
    assert!(nbdinfo(&["--json", &srv.uri()]).contains("\"is_read_only\": true"));
}

#[test]
fn sh_errno_from_stderr_reaches_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "err.sh",
        r#"
case "$1" in
  get_size) echo 1M ;;
  can_write) exit 0 ;;
  pread)
    case $4 in
      0) echo 'ENOSPC Out of space' >&2; exit 1 ;;
      512) echo EPERM >&2; exit 1 ;;
      1024) exit 1 ;;
      1536) echo 'einval lower case works' >&2; exit 1 ;;
      2048) echo 'EINVALID is not a name' >&2; exit 1 ;;
      2560) echo 'ENOSPC first line' >&2; echo 'second line' >&2; exit 9 ;;
      3072) exit 3 ;;
      *) dd if=/dev/zero count=$3 iflag=count_bytes status=none ;;
    esac ;;
  pwrite) cat >/dev/null; echo 'EDQUOT quota' >&2; exit 1 ;;
  *) exit 2 ;;
esac
"#,
    );
    let srv = Server::start_in(dir, &["sh", s.to_str().unwrap()]);
    let out = python(
        &srv.uri(),
        r#"
import errno
def err(f):
    try:
        f()
    except nbd.Error as e:
        return e.errno
    return "ok"
print(err(lambda: h.pread(512, 0)))
print(err(lambda: h.pread(512, 512)))
print(err(lambda: h.pread(512, 1024)))
print(err(lambda: h.pread(512, 1536)))
print(err(lambda: h.pread(512, 2048)))
print(err(lambda: h.pread(512, 2560)))
print(err(lambda: h.pread(512, 3072)))
print(err(lambda: h.pwrite(b"x" * 512, 0)))
print(err(lambda: h.pread(512, 4096)))
"#,
        &[],
    );
    // EDQUOT travels as ENOSPC in NBD.
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["ENOSPC", "EPERM", "EIO", "EINVAL", "EIO", "ENOSPC", "EIO", "ENOSPC", "ok"],
        "{}",
        srv.stderr()
    );
    let log = srv.stderr();
    assert!(log.contains(": Out of space"), "{log}");
    assert!(log.contains("did not print an error message"), "{log}");
    assert!(log.contains("EINVALID is not a name"), "{log}");
    assert!(log.contains("unexpected code (3/false)"), "{log}");
    assert!(
        !log.contains("second line"),
        "only the first line is an error: {log}"
    );
}

#[test]
fn sh_missing_and_false_booleans() {
    let dir = tempfile::tempdir().unwrap();
    // can_write false (3), can_flush missing (2): read-only, no flush, no
    // FUA; can_zero true but no zero method: zeroes fall back to pwrite.
    let s = script(
        dir.path(),
        "b.sh",
        r#"
case "$1" in
  get_size) echo 1M ;;
  pread) dd if=/dev/zero count=$3 iflag=count_bytes status=none ;;
  can_write) exit 3 ;;
  can_trim) exit 3 ;;
  is_rotational) exit 0 ;;
  can_multi_conn) exit 3 ;;
  *) exit 2 ;;
esac
"#,
    );
    let srv = Server::start_in(dir, &["sh", s.to_str().unwrap()]);
    let j = nbdinfo(&["--json", &srv.uri()]);
    let get = |k: &str| jq(&format!(".exports[0].{k}"), &j).trim().to_string();
    assert_eq!(get("is_read_only"), "true", "{j}");
    assert_eq!(get("can_flush"), "false", "{j}");
    assert_eq!(get("can_fua"), "false", "{j}");
    assert_eq!(get("can_trim"), "false", "{j}");
    assert_eq!(get("can_multi_conn"), "false", "{j}");
    assert_eq!(get("can_cache"), "false", "{j}");
    assert_eq!(get("is_rotational"), "true", "{j}");
}

#[test]
fn sh_zero_falls_back_to_pwrite_on_enotsup() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "z.sh",
        r#"
echo "$1 $5" >> "$(dirname "$0")/calls.log"
case "$1" in
  get_size) echo 64K ;;
  pread) dd if=/dev/zero count=$3 iflag=count_bytes status=none ;;
  can_write|can_zero) exit 0 ;;
  can_fast_zero) exit 0 ;;
  pwrite) cat > /dev/null ;;
  zero) echo 'ENOTSUP not today' >&2; exit 1 ;;
  *) exit 2 ;;
esac
"#,
    );
    let sdir = dir.path().to_path_buf();
    let srv = Server::start_in(dir, &["sh", s.to_str().unwrap()]);
    let out = python(
        &srv.uri(),
        r#"
import errno
h.zero(4096, 0)
try:
    h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO)
    print("fast zero succeeded")
except nbd.Error as e:
    print(e.errno)
"#,
        &[],
    );
    assert_eq!(out.trim(), "ENOTSUP");
    let log = calls(&sdir);
    assert!(log.contains("zero may_trim"), "{log}");
    assert!(
        log.contains("zero may_trim,fast") || log.contains("zero fast"),
        "{log}"
    );
    assert!(
        log.contains("pwrite"),
        "normal zero did not fall back: {log}"
    );
}

#[test]
fn sh_extents_lines_reach_qemu_img_map() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(dir.path(), "disk.sh", DISK);
    let srv = Server::start_in(dir, &["sh", s.to_str().unwrap()]);
    let map = qemu_img_map(&srv.uri());
    let got = jq("map({start, length, data, zero})", &map);
    assert_eq!(
        got.trim(),
        r#"[{"start":0,"length":65536,"data":true,"zero":false},{"start":65536,"length":983040,"data":false,"zero":true}]"#,
        "{map}"
    );
}

#[test]
fn sh_bad_extents_are_an_error_and_the_server_lives() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "x.sh",
        r#"
case "$1" in
  get_size) echo 1M ;;
  pread) dd if=/dev/zero count=$3 iflag=count_bytes status=none ;;
  can_extents) exit 0 ;;
  extents) echo "0 banana" ;;
  *) exit 2 ;;
esac
"#,
    );
    let mut srv = Server::start_in(dir, &["sh", s.to_str().unwrap()]);
    let out = python_any(
        &srv.uri(),
        r#"
h2 = nbd.NBD()
h2.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h2.connect_uri(sys.argv[1])
try:
    h2.block_status(65536, 0, lambda *a: 0)
    print("no error")
except nbd.Error as e:
    print("error")
print(len(h2.pread(512, 0)))
"#,
        &[],
    );
    assert_eq!(
        stdout_str(&out).split_whitespace().collect::<Vec<_>>(),
        ["error", "512"]
    );
    assert!(
        srv.stderr().contains("extent line '0 banana'"),
        "{}",
        srv.stderr()
    );
    srv.stop_ok();
}

#[test]
fn sh_list_exports_default_export_and_descriptions() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "e.sh",
        r#"
case "$1" in
  list_exports) echo INTERLEAVED; echo alpha; echo "first disk"; echo beta; echo "second disk" ;;
  default_export) echo beta ;;
  open) echo "$3" ;;
  get_size) [ "$2" = alpha ] && echo 1M || echo 2M ;;
  export_description) echo "desc of $2" ;;
  pread) dd if=/dev/zero count=$3 iflag=count_bytes status=none ;;
  *) exit 2 ;;
esac
"#,
    );
    let srv = Server::start_in(dir, &["sh", s.to_str().unwrap()]);
    let j = nbdinfo(&["--list", "--json", &srv.uri()]);
    assert_eq!(
        jq("[.exports[] | {\"export-name\", description}]", &j).trim(),
        r#"[{"export-name":"alpha","description":"first disk"},{"export-name":"beta","description":"second disk"}]"#,
        "{j}"
    );
    // Opened, an export describes itself with export_description.
    let j = nbdinfo(&["--json", &srv.uri_export("alpha")]);
    assert_eq!(
        jq(".exports[0].description", &j).trim(),
        "\"desc of alpha\"",
        "{j}"
    );
    // The default export "" is the script's default_export.
    assert_eq!(nbdinfo(&["--size", &srv.uri()]).trim(), "2097152");
    assert_eq!(
        nbdinfo(&["--size", &srv.uri_export("alpha")]).trim(),
        "1048576"
    );
}

#[test]
fn sh_list_exports_names_and_descriptions_form() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "e.sh",
        r#"
case "$1" in
  list_exports) printf 'NAMES+DESCRIPTIONS\na\nb\nA disk\nB disk\n' ;;
  get_size) echo 1M ;;
  pread) dd if=/dev/zero count=$3 iflag=count_bytes status=none ;;
  *) exit 2 ;;
esac
"#,
    );
    let srv = Server::start_in(dir, &["sh", s.to_str().unwrap()]);
    let list = nbdinfo(&["--list", "--json", &srv.uri()]);
    let names = jq("[.exports[] | .\"export-name\"]", &list);
    assert_eq!(names.trim(), r#"["a","b"]"#, "{list}");
}

#[test]
fn sh_block_size_fua_cache_and_description() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "bs.sh",
        r#"
case "$1" in
  get_size) echo 1M ;;
  block_size) echo 512 4K 1M ;;
  export_description) echo "a described disk" ;;
  pread) dd if=/dev/zero count=$3 iflag=count_bytes status=none ;;
  can_write|can_flush) exit 0 ;;
  pwrite) cat >/dev/null ;;
  can_fua) echo emulate ;;
  can_cache) echo emulate ;;
  *) exit 2 ;;
esac
"#,
    );
    let srv = Server::start_in(dir, &["sh", s.to_str().unwrap()]);
    let j = nbdinfo(&["--json", &srv.uri()]);
    let get = |k: &str| jq(&format!(".exports[0].{k}"), &j).trim().to_string();
    assert_eq!(get("block_size_minimum"), "512", "{j}");
    assert_eq!(get("block_size_preferred"), "4096", "{j}");
    assert_eq!(get("block_size_maximum"), "1048576", "{j}");
    assert_eq!(get("description"), "\"a described disk\"", "{j}");
    assert_eq!(get("can_fua"), "true", "{j}");
    assert_eq!(get("can_cache"), "true", "{j}");
}

#[test]
fn sh_config_magic_key_and_config_complete() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "c.sh",
        r#"
case "$1" in
  magic_config_key) echo size ;;
  config)
    case "$2" in
      size) echo "$3" > $tmpdir/size ;;
      fill) echo "$3" > $tmpdir/fill ;;
      *) echo "EINVAL unknown parameter $2" >&2; exit 1 ;;
    esac ;;
  config_complete) [ -f $tmpdir/size ] || { echo "size is required" >&2; exit 1; } ;;
  get_size) cat $tmpdir/size ;;
  pread) dd if=/dev/zero count=$3 iflag=count_bytes status=none ;;
  dump_plugin) echo "sh_test_flag=yes" ;;
  thread_model) echo serialize_connections ;;
  *) exit 2 ;;
esac
"#,
    );
    let sp = s.to_str().unwrap();
    // Bare value after the script: the script's magic key.
    let srv = Server::start(&["sh", sp, "3M", "fill=1"]);
    assert_eq!(nbdinfo(&["--size", &srv.uri()]).trim(), "3145728");
    drop(srv);
    let srv = Server::start(&["sh", sp, "size=5M"]);
    assert_eq!(nbdinfo(&["--size", &srv.uri()]).trim(), "5242880");
    drop(srv);
    // Errors from config and config_complete are startup errors.
    let o = run(&["sh", sp, "bogus=1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr_str(&o).contains("unknown parameter bogus"),
        "{}",
        stderr_str(&o)
    );
    let o = run(&["sh", sp]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr_str(&o).contains("size is required"),
        "{}",
        stderr_str(&o)
    );
    // --dump-plugin: the script's lines and its thread model.
    let d = run_ok(&["sh", sp, "--dump-plugin"]);
    assert!(d.contains("\nsh_test_flag=yes\n"), "{d}");
    assert!(d.contains("\nmax_known_status=3\n"), "{d}");
    assert!(d.contains("\nthread_model=serialize_connections\n"), "{d}");
}

#[test]
fn sh_thread_model_default_and_config_without_method() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(dir.path(), "m.sh", "exit 2\n");
    let sp = s.to_str().unwrap();
    let d = run_ok(&["sh", sp, "--dump-plugin"]);
    assert!(d.contains("\nthread_model=serialize_all_requests\n"), "{d}");
    let o = run(&["sh", sp, "a=b"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr_str(&o).contains("this plugin does not need command line configuration"),
        "{}",
        stderr_str(&o)
    );
    let o = run(&["sh", sp, "bare"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr_str(&o).contains("expecting key=value on the command line but got: bare"),
        "{}",
        stderr_str(&o)
    );
    // get_size is required.
    let srv = Server::start(&["sh", sp]);
    let o = client_any("nbdinfo", &["--size", &srv.uri()]);
    assert!(!o.status.success());
    assert!(
        srv.stderr().contains("get_size method is required"),
        "{}",
        srv.stderr()
    );
}

#[test]
fn sh_script_must_exist_and_be_executable() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_file(dir.path(), "noexec.sh", b"#!/bin/sh\nexit 2\n");
    let o = run(&["sh", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr_str(&o).contains("not executable"),
        "{}",
        stderr_str(&o)
    );
    let o = run(&["sh", "/nonexistent/script.sh"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr_str(&o).contains("/nonexistent/script.sh"),
        "{}",
        stderr_str(&o)
    );
    let o = run(&["sh", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr_str(&o).contains("not a regular file"),
        "{}",
        stderr_str(&o)
    );
    let o = run(&["sh"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr_str(&o).contains("missing script"),
        "{}",
        stderr_str(&o)
    );
    let o = run(&["sh", "size=1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr_str(&o).contains("first parameter must be script="),
        "{}",
        stderr_str(&o)
    );
}

#[test]
fn sh_inline_script_from_stdin_without_shebang() {
    let dir = tempfile::tempdir().unwrap();
    let inline = write_file(
        dir.path(),
        "inline",
        b"case \"$1\" in\n  get_size) echo 7M ;;\n  pread) dd if=/dev/zero count=$3 iflag=count_bytes status=none ;;\n  *) exit 2 ;;\nesac\n",
    );
    let srv = Server::start_with(dir, &["sh", "-"], |cmd| {
        cmd.stdin(std::fs::File::open(&inline).unwrap());
    });
    assert_eq!(nbdinfo(&["--size", &srv.uri()]).trim(), "7340032");
    let out = python(&srv.uri(), "print(h.pread(4096, 0) == bytes(4096))\n", &[]);
    assert_eq!(out.trim(), "True");
}

#[test]
fn sh_garbage_output_is_a_clear_error_and_the_server_lives() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "g.sh",
        r#"
case "$1" in
  open) [ "$3" = badsize ] && echo bad || echo good ;;
  get_size) [ "$2" = bad ] && echo banana || echo 1M ;;
  can_fua) [ "$2" = bad ] && echo sometimes || echo none ;;
  pread)
    case $4 in
      0) echo short ;;
      512) yes ;;
      *) dd if=/dev/zero count=$3 iflag=count_bytes status=none ;;
    esac ;;
  *) exit 2 ;;
esac
"#,
    );
    let mut srv = Server::start_in(dir, &["sh", s.to_str().unwrap()]);
    let o = client_any("nbdinfo", &["--size", &srv.uri_export("badsize")]);
    assert!(!o.status.success());
    assert!(
        srv.stderr()
            .contains("could not parse output from get_size method: 'banana'"),
        "{}",
        srv.stderr()
    );
    let out = python(
        &srv.uri(),
        r#"
import errno
for off in (0, 512, 1024):
    try:
        h.pread(512, off)
        print("ok")
    except nbd.Error as e:
        print(e.errno)
"#,
        &[],
    );
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["EIO", "EIO", "ok"]
    );
    let log = srv.stderr();
    assert!(
        log.contains("expecting 512 bytes but received 6 bytes"),
        "{log}"
    );
    assert!(
        log.contains("printed more than 512 bytes on stdout"),
        "{log}"
    );
    assert!(srv.is_running());
    srv.stop_ok();
}

/// Processes whose command line contains `marker`.
fn procs_with(marker: &str) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&c).contains(marker) {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn sh_hanging_script_is_killed_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("hang{}", std::process::id());
    // A sleep no other test runs, to find it in /proc.
    let naptime = format!("{}.25", 100_000 + std::process::id());
    let s = script(
        dir.path(),
        &format!("{marker}.sh"),
        &format!(
            r#"
case "$1" in
  get_size) echo 1M ;;
  pread) touch "$(dirname "$0")/reading"; sleep {naptime} ;;
  *) exit 2 ;;
esac
"#
        ),
    );
    let sdir = dir.path().to_path_buf();
    let mut srv = Server::start_in(dir, &["sh", s.to_str().unwrap()]);
    let mut client = client("/usr/bin/python3")
        .args(["-c", &format!("{PY_PRELUDE}h.pread(512, 0)\n"), &srv.uri()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !sdir.join("reading").exists() {
        assert!(start.elapsed() < TIMEOUT, "pread never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = srv.stop();
    assert!(st.success(), "{st:?}\n{}", srv.stderr());
    let _ = client.wait();
    // The script and its sleep were killed with it.
    let start = Instant::now();
    while procs_with(&marker) + procs_with(&naptime) > 0 {
        assert!(start.elapsed() < TIMEOUT, "script still running after exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sh_lifecycle_errors_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "l.sh",
        r#"
case "$1" in
  config) echo "$3" > $tmpdir/mode ;;
  get_ready) [ "$(cat $tmpdir/mode 2>/dev/null)" = get_ready ] && { echo 'EINVAL not ready' >&2; exit 1; } || : ;;
  after_fork) [ "$(cat $tmpdir/mode 2>/dev/null)" = after_fork ] && { echo 'EIO no fork' >&2; exit 1; } || : ;;
  preconnect) [ "$(cat $tmpdir/mode)" = preconnect ] && { echo 'EPERM go away' >&2; exit 1; } || : ;;
  open) [ "$3" = secret ] && { echo 'EPERM not this one' >&2; exit 1; }; echo h ;;
  block_size) [ "$(cat $tmpdir/mode)" = block_size ] && echo 512 4K || exit 2 ;;
  get_size) echo 1M ;;
  pread) dd if=/dev/zero count=$3 iflag=count_bytes status=none ;;
  *) exit 2 ;;
esac
"#,
    );
    let sp = s.to_str().unwrap();
    for (mode, msg) in [("get_ready", "not ready"), ("after_fork", "no fork")] {
        let o = run(&[
            "-U",
            "-",
            "sh",
            sp,
            &format!("mode={mode}"),
            "--run",
            "true",
        ]);
        assert_eq!(o.status.code(), Some(1), "{mode}: {}", stderr_str(&o));
        assert!(stderr_str(&o).contains(msg), "{mode}: {}", stderr_str(&o));
        // The temporary directory is removed on these failures too.
        let left = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("mode")).is_ok_and(|m| m.trim() == mode)
            })
            .count();
        assert_eq!(left, 0, "{mode}: a temporary directory was left behind");
    }
    // preconnect refuses connections; the server lives on.
    let mut srv = Server::start(&["sh", sp, "mode=preconnect"]);
    let o = client_any("nbdinfo", &["--size", &srv.uri()]);
    assert!(!o.status.success());
    assert!(srv.stderr().contains("go away"), "{}", srv.stderr());
    assert!(srv.is_running());
    srv.stop_ok();
    // open refuses one export, serves the others.
    let srv = Server::start(&["sh", sp, "mode=none"]);
    let o = client_any("nbdinfo", &["--size", &srv.uri_export("secret")]);
    assert!(!o.status.success());
    assert!(srv.stderr().contains("not this one"), "{}", srv.stderr());
    assert_eq!(nbdinfo(&["--size", &srv.uri()]).trim(), "1048576");
    drop(srv);
    // Unparsable block_size output is a clear error in the log (the
    // server then advertises no block size).
    let srv = Server::start(&["sh", sp, "mode=block_size"]);
    let _ = client_any("nbdinfo", &["--json", &srv.uri()]);
    assert!(
        srv.stderr()
            .contains("could not parse output from block_size method: '512 4K'"),
        "{}",
        srv.stderr()
    );
}

#[test]
fn sh_per_connection_handles_in_tmpdir() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "h.sh",
        r#"
case "$1" in
  open) d=$(mktemp -d $tmpdir/handle-XXXXXX); echo "$d" >> "$(dirname "$0")/opened"; echo "$d" ;;
  close) echo "$2" >> "$(dirname "$0")/closed"; rm -rf "$2" ;;
  get_size) echo 1M ;;
  can_write) exit 0 ;;
  pwrite) cat > "$2/last" ;;
  pread) if [ -f "$2/last" ]; then head -c $3 "$2/last"; else dd if=/dev/zero count=$3 iflag=count_bytes status=none; fi ;;
  *) exit 2 ;;
esac
"#,
    );
    let sdir = dir.path().to_path_buf();
    let mut srv = Server::start_in(dir, &["sh", s.to_str().unwrap()]);
    // Each connection writes and reads back its own state.
    let out = python(
        &srv.uri(),
        r#"
h2 = nbd.NBD()
h2.connect_uri(sys.argv[1])
h.pwrite(b"a" * 512, 0)
h2.pwrite(b"b" * 512, 0)
print(h.pread(512, 0) == b"a" * 512, h2.pread(512, 0) == b"b" * 512)
"#,
        &[],
    );
    assert_eq!(out.trim(), "True True");
    wait_for_lines(&sdir.join("closed"), "/", 2);
    srv.stop_ok();
    let opened = std::fs::read_to_string(sdir.join("opened")).unwrap();
    let closed = std::fs::read_to_string(sdir.join("closed")).unwrap();
    let mut o: Vec<&str> = opened.lines().collect();
    let mut c: Vec<&str> = closed.lines().collect();
    o.sort();
    c.sort();
    assert_eq!(o.len(), 2);
    assert_ne!(o[0], o[1]);
    assert_eq!(o, c, "close got the handles open printed");
}

#[test]
fn sh_run_command_sees_tmpdir_and_it_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "r.sh",
        "case \"$1\" in get_size) echo 1M ;; pread) dd if=/dev/zero count=$3 iflag=count_bytes status=none ;; *) exit 2 ;; esac\n",
    );
    let out = run_ok(&[
        "-U",
        "-",
        "sh",
        s.to_str().unwrap(),
        "--run",
        "test -d \"$tmpdir\" && echo \"$tmpdir\"",
    ]);
    let tmpdir = PathBuf::from(out.trim());
    assert!(tmpdir.is_absolute(), "{out}");
    let start = Instant::now();
    while tmpdir.exists() {
        assert!(
            start.elapsed() < TIMEOUT,
            "{} not removed",
            tmpdir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
