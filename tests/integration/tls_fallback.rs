//! The `tls-fallback` filter: plaintext clients read the `tlsreadme`
//! message from a small read-only export; TLS clients (PSK here) get the
//! plugin.

use crate::cli::expect_error;
use crate::harness::*;
use std::time::Duration;

/// A PSK key file for user alice in `dir`.
fn psk(dir: &std::path::Path) -> String {
    let mut c = client("/usr/bin/psktool");
    c.current_dir(dir).args(["-u", "alice", "-p", "keys.psk"]);
    assert_success(&run_cmd(&mut c, Duration::from_secs(60)), "psktool");
    dir.join("keys.psk").display().to_string()
}

#[test]
fn plaintext_clients_get_the_readme_and_tls_clients_the_plugin() {
    let keydir = tempfile::tempdir().unwrap();
    let keys = psk(keydir.path());
    let s = Server::start(&[
        "--tls=on",
        &format!("--tls-psk={keys}"),
        "--filter=tls-fallback",
        "memory",
        "1M",
        "tlsreadme=Use TLS, please.\n",
    ]);
    let plain = python(
        &s.uri(),
        "print(h.get_size(), h.is_read_only(), h.can_flush(), h.can_trim(), h.can_zero(), h.can_cache())\n\
         print(repr(bytes(h.pread(512, 0)).rstrip(b'\\0')))\n\
         try:\n\
         \x20   h.pwrite(b'x', 0)\n\
         except nbd.Error:\n\
         \x20   print('write refused')\n",
        &[],
    );
    assert_eq!(
        plain.lines().collect::<Vec<_>>(),
        [
            "512 True False False False False",
            "b'Use TLS, please.\\n'",
            "write refused",
        ]
    );
    let tls_uri = format!(
        "nbds+unix://alice@/?socket={}&tls-psk-file={keys}",
        s.sock.display()
    );
    let script = "import nbd, sys\n\
         h = nbd.NBD()\n\
         h.set_uri_allow_local_file(True)\n\
         h.connect_uri(sys.argv[1])\n\
         h.pwrite(b'secret', 0)\n\
         print(h.get_size(), h.is_read_only(), bytes(h.pread(6, 0)))\n";
    let secure = stdout_str(&client_ok("/usr/bin/python3", &["-c", script, &tls_uri]));
    assert_eq!(secure.trim(), "1048576 False b'secret'");
    // The plaintext side never sees the plugin's data.
    let again = python(&s.uri(), "print(bytes(h.pread(6, 0)))", &[]);
    assert_eq!(again.trim(), "b'Use TL'");
}

#[test]
fn the_default_readme_says_tls_is_required() {
    let keydir = tempfile::tempdir().unwrap();
    let keys = psk(keydir.path());
    let s = Server::start(&[
        "--tls=on",
        &format!("--tls-psk={keys}"),
        "--filter=tls-fallback",
        "memory",
        "1M",
    ]);
    let o = run_cmd(
        client("nbdcopy").args([&s.uri(), "-"]),
        Duration::from_secs(60),
    );
    assert_success(&o, "nbdcopy");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.starts_with("This NBD server requires TLS authentication"),
        "{text}"
    );
    assert_eq!(o.stdout.len(), 512);
}

#[test]
fn tls_fallback_needs_parallel_connections() {
    let err = expect_error(
        &[
            "--filter=tls-fallback",
            "--filter=noparallel",
            "memory",
            "1M",
            "serialize=connections",
        ],
        true,
    );
    assert!(
        err.contains("requires parallel connection support"),
        "{err}"
    );
}
