//! nbdkit's C plugin ABI: Debian's shipped `.so` plugins loaded BY PATH
//! (so these keep testing the ABI when native plugins of the same names
//! exist), driven by real clients; the lookup rules; load errors.
//! The C test plugins compiled here live in `cabi_c.rs`.

use crate::harness::*;
use std::path::PathBuf;

pub const PLUGINDIR: &str = "/usr/lib/x86_64-linux-gnu/nbdkit/plugins";

/// The path of Debian's `nbdkit-NAME-plugin.so`.
pub fn so(name: &str) -> String {
    format!("{PLUGINDIR}/nbdkit-{name}-plugin.so")
}

#[test]
fn data_by_path_serves_its_bytes_and_extents() {
    let s = Server::start(&[&so("data"), "data=1 2 3 @4096 0xff", "size=1M"]);
    let out = nbdsh(
        &s.uri(),
        "assert h.get_size() == 1048576\n\
         assert h.pread(4, 0) == b'\\x01\\x02\\x03\\x00'\n\
         assert h.pread(1, 4096) == b'\\xff'\n\
         h.pwrite(b'xy', 100)\n\
         assert h.pread(2, 100) == b'xy'\n\
         print('ok')",
    );
    assert_eq!(out.trim(), "ok");
    // The data plugin answers block status: the tail is a hole.
    let map = qemu_img(&["map", "--output=json", &s.uri()]);
    assert!(map.contains("\"data\": false"), "{map}");
}

#[test]
fn pattern_by_path_reads_offsets() {
    let s = Server::start(&[&so("pattern"), "1M"]);
    let out = nbdsh(
        &s.uri(),
        "assert h.pread(8, 8) == (8).to_bytes(8, 'big')\n\
         assert h.pread(8, 65536) == (65536).to_bytes(8, 'big')\n\
         print(h.get_size())",
    );
    assert_eq!(out.trim(), "1048576");
}

#[test]
fn sh_script_serves_reads_and_writes_and_errno_reaches_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::write(&disk, vec![0u8; 65536]).unwrap();
    let script = dir.path().join("plugin.sh");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/bash
disk={disk}
case "$1" in
  get_size) stat -c %s $disk ;;
  can_write) exit 0 ;;
  pread) dd if=$disk skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none ;;
  pwrite)
    if [ $4 -ge 61440 ]; then echo "EPERM refusing the last 4K" >&2; exit 1; fi
    dd of=$disk seek=$4 oflag=seek_bytes conv=notrunc status=none ;;
  *) exit 2 ;;
esac
"#,
            disk = disk.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let s = Server::start(&[&so("sh"), script.to_str().unwrap()]);
    let out = nbdsh(
        &s.uri(),
        "h.pwrite(b'hello', 1000)\n\
         assert h.pread(5, 1000) == b'hello'\n\
         try:\n    h.pwrite(b'x' * 512, 61440)\n    print('no error')\n\
         except nbd.Error as e:\n    print(e.errno)",
    );
    assert_eq!(out.trim(), "EPERM");
    assert_eq!(&std::fs::read(&disk).unwrap()[1000..1005], b"hello");
    let mut s = s;
    s.stop();
    assert!(
        s.stderr().contains("refusing the last 4K"),
        "{}",
        s.stderr()
    );
}

#[test]
fn eval_by_path_with_nbdcopy() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let s = Server::start(&[
        &so("eval"),
        "get_size=echo 64K",
        "pread=head -c $3 /dev/zero | tr '\\0' 'A'",
    ]);
    nbdcopy(&[&s.uri(), out.to_str().unwrap()]);
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), 65536);
    assert!(got.iter().all(|&b| b == b'A'));
}

#[test]
fn python_plugin_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("p.py");
    std::fs::write(
        &script,
        r#"
import nbdkit
API_VERSION = 2
disk = bytearray(1024 * 1024)
def open(readonly):
    return {"export": nbdkit.export_name()}
def get_size(h):
    return len(disk)
def pread(h, buf, offset, flags):
    end = offset + len(buf)
    buf[:] = disk[offset:end]
def pwrite(h, buf, offset, flags):
    if offset == 0:
        nbdkit.set_error(28)
        raise RuntimeError("no room at offset 0")
    disk[offset:offset + len(buf)] = buf
"#,
    )
    .unwrap();
    let s = Server::start(&[&so("python"), script.to_str().unwrap()]);
    let out = nbdsh(
        &s.uri(),
        "h.pwrite(b'py', 4096)\n\
         assert h.pread(2, 4096) == b'py'\n\
         try:\n    h.pwrite(b'x', 0)\n\
         except nbd.Error as e:\n    print(e.errno)",
    );
    assert_eq!(out.trim(), "ENOSPC");
}

#[test]
fn zero_random_and_sparse_random_by_path() {
    // The (deprecated) zero plugin takes no parameters: an empty disk.
    let s = Server::start(&[&so("zero")]);
    assert_eq!(nbdsh(&s.uri(), "print(h.get_size())").trim(), "0");
    let s = Server::start(&[&so("random"), "1M", "seed=42"]);
    let out = nbdsh(
        &s.uri(),
        "a = h.pread(4096, 8192)\nassert a == h.pread(4096, 8192)\nprint(a != bytes(4096))",
    );
    assert_eq!(out.trim(), "True");
    let s = Server::start(&[&so("sparse-random"), "16M", "seed=1", "percent=50"]);
    let map = qemu_img(&["map", "--output=json", &s.uri()]);
    assert!(
        map.contains("\"data\": true") && map.contains("\"data\": false"),
        "{map}"
    );
}

#[test]
fn split_by_path_concatenates_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    std::fs::write(&a, vec![b'a'; 4096]).unwrap();
    std::fs::write(&b, vec![b'b'; 4096]).unwrap();
    let s = Server::start(&[&so("split"), a.to_str().unwrap(), b.to_str().unwrap()]);
    let out = nbdsh(&s.uri(), "print(h.get_size(), bytes(h.pread(2, 4095)))");
    assert_eq!(out.trim(), "8192 b'ab'");
}

#[test]
fn partitioning_by_path_makes_a_partition_table() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p1");
    std::fs::write(&p, vec![7u8; 1 << 20]).unwrap();
    let s = Server::start(&[
        &so("partitioning"),
        p.to_str().unwrap(),
        "partition-type=mbr",
    ]);
    let out = dir.path().join("disk");
    nbdcopy(&[&s.uri(), out.to_str().unwrap()]);
    let disk = std::fs::read(&out).unwrap();
    assert_eq!(&disk[510..512], &[0x55, 0xaa]);
    let sf = std::process::Command::new("/usr/sbin/sfdisk")
        .args(["-d", out.to_str().unwrap()])
        .output()
        .unwrap();
    let sf = String::from_utf8_lossy(&sf.stdout);
    assert!(sf.contains("size=        2048"), "{sf}");
}

#[test]
fn info_by_path_sees_the_export_name() {
    let s = Server::start(&[&so("info"), "mode=exportname"]);
    let out = nbdsh(&s.uri_export("hello-abi"), "print(bytes(h.pread(9, 0)))");
    assert_eq!(out.trim(), "b'hello-abi'");
}

#[test]
fn ondemand_by_path_keeps_data_per_export() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let s = Server::start(&[
        &so("ondemand"),
        &format!("dir={}", store.display()),
        "size=1M",
        "command=truncate -s $size \"$disk\"",
    ]);
    nbdsh(&s.uri_export("one"), "h.pwrite(b'kept', 0)");
    let out = nbdsh(&s.uri_export("one"), "print(bytes(h.pread(4, 0)))");
    assert_eq!(out.trim(), "b'kept'");
    assert!(store.join("one").exists());
}

#[test]
fn tmpdisk_by_path_gives_a_writable_scratch_disk() {
    let s = Server::start(&[&so("tmpdisk"), "1M", "command=truncate -s $size \"$disk\""]);
    let out = nbdsh(
        &s.uri(),
        "h.pwrite(b'tmp', 512)\nprint(h.get_size(), bytes(h.pread(3, 512)))",
    );
    assert_eq!(out.trim(), "1048576 b'tmp'");
}

#[test]
fn dump_plugin_lines_are_in_nbdkits_order() {
    let out = run_ok(&[&so("memory"), "--dump-plugin"]);
    let keys: Vec<&str> = out.lines().filter_map(|l| l.split('=').next()).collect();
    let head = [
        "path",
        "name",
        "version",
        "api_version",
        "struct_size",
        "max_thread_model",
        "thread_model",
        "errno_is_preserved",
        "magic_config_key",
    ];
    assert_eq!(&keys[..head.len()], &head, "{out}");
    assert!(out.contains(&format!("path={}\n", so("memory"))), "{out}");
    assert!(out.contains("struct_size=384\n"), "{out}");
    // has_* lines, then the plugin's own .dump_plugin lines (mlock=...).
    let first_has = keys.iter().position(|k| k.starts_with("has_")).unwrap();
    let last_has = keys.iter().rposition(|k| k.starts_with("has_")).unwrap();
    assert!(keys[first_has..=last_has]
        .iter()
        .all(|k| k.starts_with("has_")));
    assert!(keys[last_has + 1..].contains(&"mlock"), "{out}");
    // The has_ lines match the C nbdkit's for the same .so.
    if std::path::Path::new("/usr/bin/nbdkit").exists() {
        let c = std::process::Command::new("/usr/bin/nbdkit")
            .args([&so("memory"), "--dump-plugin"])
            .output()
            .unwrap();
        let c = String::from_utf8_lossy(&c.stdout);
        let has = |s: &str| -> Vec<String> {
            s.lines()
                .filter(|l| l.starts_with("has_"))
                .map(String::from)
                .collect()
        };
        assert_eq!(has(&out), has(&c));
    }
}

#[test]
fn help_and_version_come_from_the_plugin() {
    let out = run_ok(&[&so("data"), "--help"]);
    assert!(out.contains(&format!("({})", so("data"))), "{out}");
    assert!(out.contains("base64="), "{out}");
    let out = run_ok(&[&so("data"), "--version"]);
    assert!(out.lines().any(|l| l.starts_with("data 1.")), "{out}");
}

#[test]
fn short_name_falls_back_to_the_plugindir_so() {
    // No helper implements ssh natively: the short name finds Debian's .so.
    let out = run_ok(&["ssh", "--dump-plugin"]);
    assert!(out.contains(&format!("path={}\n", so("ssh"))), "{out}");
    assert!(out.contains("name=ssh\n"), "{out}");
}

#[test]
fn short_name_script_is_executed_with_the_plugin_argument_replaced() {
    // nbdkit-S3-plugin is a Python script whose #! line runs
    // `/usr/bin/nbdkit python`; --version shows the python plugin.
    let script = PathBuf::from(PLUGINDIR).join("nbdkit-S3-plugin");
    if !script.exists() {
        return;
    }
    let out = run_ok(&["S3", "--version"]);
    assert!(out.lines().any(|l| l.starts_with("python ")), "{out}");
}

#[test]
fn dump_config_shows_the_plugindir() {
    let out = run_ok(&["--dump-config"]);
    assert!(out.contains(&format!("plugindir={PLUGINDIR}\n")), "{out}");
}

fn fails_naming(args: &[&str], needle: &str) {
    let o = run(args);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr_str(&o));
    let e = stderr_str(&o);
    assert!(e.starts_with("nbdkit: error: "), "{e}");
    assert!(e.contains(needle), "{needle} not in {e}");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn load_errors_are_one_line_naming_the_file() {
    fails_naming(
        &["/nonexistent/nbdkit-x-plugin.so"],
        "/nonexistent/nbdkit-x-plugin.so",
    );
    fails_naming(&["/etc/passwd"], "/etc/passwd");
    let libz = "/usr/lib/x86_64-linux-gnu/libz.so.1";
    if std::path::Path::new(libz).exists() {
        fails_naming(&[libz], "plugin_init");
    }
    fails_naming(&["nosuchplugin"], "nbdkit-nosuchplugin-plugin.so");
}

#[test]
fn c_filters_are_refused() {
    let f = "/usr/lib/x86_64-linux-gnu/nbdkit/filters/nbdkit-cow-filter.so";
    fails_naming(&[&format!("--filter={f}"), "memory", "1M"], "C filters");
    // A short name found only as a C filter .so.
    fails_naming(&["--filter=luks", "memory", "1M"], "C filters");
}

#[test]
fn config_errors_from_the_plugin_exit_1() {
    // The data plugin refuses a missing data= at config_complete.
    fails_naming(&[&so("data"), "size=1M"], "data");
}
