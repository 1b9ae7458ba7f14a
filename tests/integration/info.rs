//! The info plugin: every mode, read with libnbd, over Unix and TCP.

use crate::cli::expect_error;
use crate::harness::*;

/// Read the whole disk of export `name_py` (a Python expression for the
/// name) and return it as hex.
fn read_export_hex(srv: &Server, name_py: &str) -> String {
    let connect = match srv.port {
        Some(p) => format!("h.connect_tcp('127.0.0.1', '{p}')"),
        None => format!("h.connect_unix('{}')", srv.sock.display()),
    };
    let script = format!(
        "import nbd\nh = nbd.NBD()\nh.set_export_name({name_py})\n{connect}\n\
         n = h.get_size()\nprint(h.pread(n, 0).hex() if n else '')"
    );
    stdout_str(&client_ok("/usr/bin/python3", &["-c", &script]))
        .trim()
        .to_string()
}

#[test]
fn info_exportname_reflects_the_name() {
    let srv = Server::start(&["info", "mode=exportname"]);
    assert_eq!(read_export_hex(&srv, "'hello'"), hex(b"hello"));
    // The default mode is exportname; non-ASCII UTF-8 and spaces survive.
    let srv = Server::start(&["info"]);
    assert_eq!(
        read_export_hex(&srv, "'h\u{e9}llo w'"),
        hex("h\u{e9}llo w".as_bytes())
    );
    assert_eq!(read_export_hex(&srv, "''"), "");
    // nbdinfo sees the size of the name.
    let o = nbdinfo(&["--size", &srv.uri_export("abcdefg")]);
    assert_eq!(o.trim(), "7");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn info_base64exportname_decodes_binary() {
    let srv = Server::start(&["info", "base64exportname"]);
    // Bytes 0..=255 (with NULs and high bytes) as base64.
    let all: Vec<u8> = (0..=255u8).collect();
    let b64 = stdout_str(&client_ok(
        "/usr/bin/python3",
        &[
            "-c",
            "import base64,sys; print(base64.b64encode(bytes(range(256))).decode())",
        ],
    ));
    let b64 = b64.trim();
    assert_eq!(read_export_hex(&srv, &format!("'{b64}'")), hex(&all));
    // '+' and '/' in names, and padding.
    assert_eq!(read_export_hex(&srv, "'+/+/'"), "fbffbf");
    assert_eq!(read_export_hex(&srv, "'aGk='"), hex(b"hi"));
    // A name that is not base64 is refused (the client cannot connect).
    let o = client_any(
        "/usr/bin/nbdinfo",
        &[format!(
            "nbd+unix:///not*base64?socket={}",
            srv.sock.display()
        )],
    );
    assert!(!o.status.success());
    assert!(srv.stderr().contains("base64"), "{}", srv.stderr());
}

#[test]
fn info_address_unix_and_tcp() {
    let srv = Server::start(&["info", "mode=address"]);
    assert_eq!(read_export_hex(&srv, "''"), hex(b"unix"));
    let srv = Server::start_tcp(&["info", "address"]);
    let s = python(&srv.uri(), "print(h.pread(h.get_size(), 0).decode())", &[]);
    let s = s.trim();
    let (ip, port) = s.rsplit_once(':').expect(s);
    assert_eq!(ip, "127.0.0.1");
    let port: u16 = port.parse().unwrap();
    assert_ne!(port, srv.port.unwrap());
}

/// (seconds, microseconds) read in one 12-byte request from `uri`.
fn read_time(uri: &str) -> (u64, u32) {
    let o = python(
        uri,
        "assert h.get_size() == 12\nb = h.pread(12, 0)\n\
         print(int.from_bytes(b[:8], 'big'), int.from_bytes(b[8:], 'big'))\n\
         assert h.pread(4, 8)  # a partial read works too",
        &[],
    );
    let mut it = o.split_whitespace();
    (
        it.next().unwrap().parse().unwrap(),
        it.next().unwrap().parse().unwrap(),
    )
}

#[test]
fn info_time_modes() {
    let srv = Server::start(&["info", "time"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (s, us) = read_time(&srv.uri());
    assert!(s.abs_diff(now) < 60, "{s} vs {now}");
    assert!(us < 1_000_000);
    let srv = Server::start(&["info", "mode=uptime"]);
    let (s, us) = read_time(&srv.uri());
    assert!(s < 60 && us < 1_000_000, "{s}.{us}");
    assert!(s > 0 || us > 0);
    let srv = Server::start(&["info", "conntime"]);
    let (s, us) = read_time(&srv.uri());
    assert!(s < 60 && us < 1_000_000, "{s}.{us}");
    // Read-only: writes are refused.
    let o = python_any(&srv.uri(), "h.pwrite(b'x', 0)", &[]);
    assert!(!o.status.success());
}

#[test]
fn info_dump_plugin_and_errors() {
    let o = run_ok(&["info", "--dump-plugin"]);
    assert!(o.contains("info_address=yes"), "{o}");
    assert!(o.contains("info_base64=yes"), "{o}");
    let e = expect_error(&["info", "mode=nosuch"], true);
    assert!(e.contains("nosuch"), "{e}");
    let e = expect_error(&["info", "time", "mode=uptime"], true);
    assert!(e.contains("more than once"), "{e}");
    let e = expect_error(&["info", "foo=bar"], true);
    assert!(e.contains("unknown parameter 'foo'"), "{e}");
}
