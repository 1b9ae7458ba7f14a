//! The ondemand plugin: a persistent disk per export name in dir=, made on
//! first use, listed, locked while in use.

use crate::cli::expect_error;
use crate::harness::*;

const CMD: &str = "command=truncate -s $size \"$disk\"";

#[test]
fn ondemand_disks_persist_per_name() {
    let exports = tempfile::tempdir().unwrap();
    let d = format!("dir={}", exports.path().display());
    let srv = Server::start(&["ondemand", &d, "1M", CMD]);
    python(
        &srv.uri_export("alpha"),
        "h.pwrite(b'alpha', 0)\nh.flush()",
        &[],
    );
    python(&srv.uri_export("beta"), "h.pwrite(b'beta!', 0)", &[]);
    python(&srv.uri(), "h.pwrite(b'deflt', 0)", &[]);
    // Reconnecting finds each disk again.
    for (name, want) in [("alpha", "alpha"), ("beta", "beta!"), ("", "deflt")] {
        let o = python(&srv.uri_export(name), "print(h.pread(5, 0).decode())", &[]);
        assert_eq!(o.trim(), want, "{name}");
    }
    // The files are in dir=, "" as "default".
    let mut names: Vec<String> = std::fs::read_dir(exports.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["alpha", "beta", "default"]);
    assert_eq!(
        std::fs::read(exports.path().join("alpha")).unwrap().len(),
        1 << 20
    );
    // The export list: "" then the names, dot-files skipped.
    write_file(exports.path(), ".state", b"");
    let o = nbdinfo(&["--list", "--json", &srv.uri()]);
    assert_eq!(
        jq("[.exports[][\"export-name\"]] | join(\",\")", &o).trim(),
        "\",alpha,beta\""
    );
    drop(srv);
    // And across a server restart.
    let srv = Server::start(&["ondemand", &d, "1M", CMD]);
    let o = python(
        &srv.uri_export("alpha"),
        "print(h.pread(5, 0).decode())",
        &[],
    );
    assert_eq!(o.trim(), "alpha");
}

#[test]
fn ondemand_default_mkfs_and_bad_names() {
    let exports = tempfile::tempdir().unwrap();
    let d = format!("dir={}", exports.path().display());
    let srv = Server::start(&["ondemand", &d, "size=8M", "label=od"]);
    let o = python(
        &srv.uri_export("fs"),
        "sb = h.pread(1024, 1024)\nprint(sb[56:58].hex(), sb[120:136].rstrip(b'\\0').decode())",
        &[],
    );
    assert_eq!(o.trim(), "53ef od");
    for bad in ["a.b", "a:b"] {
        let o = client_any("/usr/bin/nbdinfo", &[srv.uri_export(bad)]);
        assert!(!o.status.success(), "{bad}");
    }
    assert!(
        srv.stderr().contains("invalid exportname"),
        "{}",
        srv.stderr()
    );
    assert!(!exports.path().join("a.b").exists());
}

#[test]
fn ondemand_locking_wait_and_share() {
    let exports = tempfile::tempdir().unwrap();
    let d = format!("dir={}", exports.path().display());
    // Default: a second writer of the same export is refused.
    let srv = Server::start(&["ondemand", &d, "1M", CMD]);
    let py = "
h2 = nbd.NBD()
try:
    h2.connect_uri(sys.argv[1])
    print('connected')
except nbd.Error:
    print('refused')
";
    assert_eq!(python(&srv.uri_export("x"), py, &[]).trim(), "refused");
    assert!(
        srv.stderr().contains("locked by another client"),
        "{}",
        srv.stderr()
    );
    // A different export is fine at the same time.
    let py2 = "h2 = nbd.NBD()\nh2.connect_uri(sys.argv[2])\nprint('ok')";
    let other = srv.uri_export("y");
    assert_eq!(python(&srv.uri_export("x"), py2, &[&other]).trim(), "ok");
    drop(srv);
    // share=true: both connect.
    let srv = Server::start(&["ondemand", &d, "1M", CMD, "share=true"]);
    assert_eq!(python(&srv.uri_export("x"), py, &[]).trim(), "connected");
    drop(srv);
    // wait=true: the second waits until the first disconnects.
    let srv = Server::start(&["ondemand", &d, "1M", CMD, "wait=true"]);
    let py3 = "
import threading, time
h2 = nbd.NBD()
done = []
t = threading.Thread(target=lambda: (h2.connect_uri(sys.argv[1]), done.append(1)))
t.start()
time.sleep(1)
print(len(done))
h.shutdown()
t.join(30)
print(len(done))
";
    let o = python(&srv.uri_export("x"), py3, &[]);
    assert_eq!(o.split_whitespace().collect::<Vec<_>>(), ["0", "1"]);
}

#[test]
fn ondemand_errors() {
    let exports = tempfile::tempdir().unwrap();
    let d = format!("dir={}", exports.path().display());
    let e = expect_error(&["ondemand", "1M"], true);
    assert!(e.contains("dir and size parameters are required"), "{e}");
    let e = expect_error(&["ondemand", &d], true);
    assert!(e.contains("dir and size parameters are required"), "{e}");
    let e = expect_error(&["ondemand", "dir=/nonexistent", "1M"], true);
    assert!(e.contains("/nonexistent"), "{e}");
    let e = expect_error(&["ondemand", "dir=/etc/hostname", "1M"], true);
    assert!(e.contains("not a directory"), "{e}");
    let e = expect_error(&["ondemand", &d, "1M", "wait=perhaps"], true);
    assert!(e.contains("perhaps"), "{e}");
    let e = expect_error(&["ondemand", &d, "1M", "disk=x"], true);
    assert!(e.contains("'disk'"), "{e}");
}
