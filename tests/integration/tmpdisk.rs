//! The tmpdisk plugin: a fresh disk per connection, made by mkfs or by
//! command=, removed from $TMPDIR at once.

use crate::cli::expect_error;
use crate::harness::*;

fn start(tmp: &std::path::Path, args: &[&str]) -> Server {
    let t = tmp.to_path_buf();
    Server::start_with(tempfile::tempdir().unwrap(), args, move |c| {
        c.env("TMPDIR", &t);
    })
}

#[test]
fn tmpdisk_each_connection_gets_a_fresh_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(
        tmp.path(),
        &["tmpdisk", "1M", "command=truncate -s $size \"$disk\""],
    );
    let uri = srv.uri();
    // Write on one connection, and the data is there on that connection...
    let o = python(
        &uri,
        "print(h.get_size(), h.can_multi_conn())\nh.pwrite(b'mark', 0)\nprint(bytes(h.pread(4, 0)))",
        &[],
    );
    assert_eq!(o.trim(), "1048576 False\nb'mark'");
    // ...but a new connection sees a blank disk.
    let o = python(&uri, "print(bytes(h.pread(4, 0)))", &[]);
    assert_eq!(o.trim(), "b'\\x00\\x00\\x00\\x00'");
    // Two connections at once see different disks.
    let o = python(
        &uri,
        "h2 = nbd.NBD()\nh2.connect_uri(sys.argv[1])\nh.pwrite(b'one', 0)\n\
         print(bytes(h2.pread(3, 0)))",
        &[],
    );
    assert_eq!(o.trim(), "b'\\x00\\x00\\x00'");
    // Nothing is left in $TMPDIR, even while connected.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn tmpdisk_default_mkfs_with_type_and_label() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(
        tmp.path(),
        &["tmpdisk", "size=8M", "type=ext4", "label=hello"],
    );
    // ext2/3/4 superblock at 1024: magic 0xEF53 at +56, volume name at +120.
    let o = python(
        &srv.uri(),
        "sb = h.pread(1024, 1024)\nprint(h.get_size(), sb[56:58].hex(), sb[120:136].rstrip(b'\\0').decode())",
        &[],
    );
    assert_eq!(o.trim(), "8388608 53ef hello");
}

#[test]
fn tmpdisk_command_variables_and_final_size() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(
        tmp.path(),
        &[
            "tmpdisk",
            "size=0",
            "greeting=it's $here",
            "command=printf '%s' \"$greeting\" > \"$disk\"; truncate -s 4096 \"$disk\"",
        ],
    );
    let o = python(
        &srv.uri(),
        "print(h.get_size(), h.pread(10, 0).decode())",
        &[],
    );
    assert_eq!(o.trim(), "4096 it's $here");
}

#[test]
fn tmpdisk_failing_command_refuses_the_client_only() {
    let tmp = tempfile::tempdir().unwrap();
    let mut srv = start(
        tmp.path(),
        &["tmpdisk", "1M", "command=echo oops >&2; exit 3"],
    );
    let o = client_any("/usr/bin/nbdinfo", &[srv.uri()]);
    assert!(!o.status.success());
    assert!(srv.is_running());
    let e = srv.stderr();
    assert!(
        e.contains("oops") && e.contains("command exited with code 3"),
        "{e}"
    );
    // A command that makes no disk.
    let srv = start(tmp.path(), &["tmpdisk", "1M", "command=true"]);
    let o = client_any("/usr/bin/nbdinfo", &[srv.uri()]);
    assert!(!o.status.success());
    assert!(srv.stderr().contains("open"), "{}", srv.stderr());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn tmpdisk_errors() {
    let e = expect_error(&["tmpdisk"], true);
    assert!(e.contains("size parameter is required"), "{e}");
    let e = expect_error(&["tmpdisk", "1M", "disk=/tmp/x"], true);
    assert!(e.contains("'disk' parameter cannot be set"), "{e}");
    let e = expect_error(&["tmpdisk", "size=junk"], true);
    assert!(e.contains("junk"), "{e}");
    let e = expect_error(&["tmpdisk", "1M", "label=a", "label=b"], true);
    assert!(e.contains("more than once"), "{e}");
}
