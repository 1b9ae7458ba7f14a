//! Real clients: qemu-img, qemu-io, nbdinfo, nbdcopy.

use crate::harness::*;

#[test]
fn qemu_img_info_virtual_size() {
    let s = Server::start(&["memory", "1M"]);
    let out = qemu_img(&["info", "--output=json", &s.uri()]);
    assert_eq!(jq(".\"virtual-size\"", &out).trim(), "1048576", "{out}");
    let out = qemu_img(&["info", &s.uri()]);
    assert!(out.contains("virtual size: 1 MiB (1048576 bytes)"), "{out}");
}

#[test]
fn qemu_img_info_captive() {
    let out = captive(&["memory", "1G"], "qemu-img info --output=json \"$uri\"");
    assert_eq!(jq(".\"virtual-size\"", &out).trim(), "1073741824", "{out}");
}

#[test]
fn qemu_img_convert_in_and_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = pseudo_random(4 << 20, 1234);
    data[1 << 20..2 << 20].fill(0); // a zero region for qemu to skip/zero
    let src = write_file(dir.path(), "src", &data);
    let dst = dir.path().join("dst");
    let s = Server::start(&["memory", "4M"]);
    let uri = s.uri();
    let src_s = src.display().to_string();
    let dst_s = dst.display().to_string();
    qemu_img(&["convert", "-n", "-f", "raw", "-O", "raw", &src_s, &uri]);
    qemu_img(&["convert", "-f", "raw", "-O", "raw", &uri, &dst_s]);
    let got = std::fs::read(&dst).unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "round trip through qemu-img convert differs");
    // qemu-img compare agrees.
    qemu_img(&["compare", "-f", "raw", "-F", "raw", &src_s, &uri]);
}

#[test]
fn qemu_io_write_read_pattern() {
    let s = Server::start(&["memory", "1M"]);
    let out = qemu_io(&[
        "-f",
        "raw",
        "-c",
        "write -P 0x55 0 64k",
        "-c",
        "read -P 0x55 0 64k",
        "-c",
        "write -z 4k 4k",
        "-c",
        "read -P 0 4k 4k",
        "-c",
        "read -P 0x55 8k 56k",
        "-c",
        "aio_write -P 0x66 128k 64k",
        "-c",
        "aio_write -P 0x77 192k 64k",
        "-c",
        "aio_flush",
        "-c",
        "read -P 0x66 128k 64k",
        "-c",
        "read -P 0x77 192k 64k",
        &s.uri(),
    ]);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert!(out.contains("wrote 65536/65536 bytes at offset 0"), "{out}");
    assert!(out.contains("read 65536/65536 bytes at offset 0"), "{out}");
    let check = python(&s.uri(), "print(h.pread(3, 65535).hex())", &[]);
    assert_eq!(check.trim(), "550000");
}

#[test]
fn qemu_io_pattern_mismatch_detected() {
    // Make sure the qemu-io check above can fail: wrong pattern is reported.
    let s = Server::start(&["memory", "1M"]);
    let o = client_any(
        "/usr/bin/qemu-io",
        &["-f", "raw", "-c", "read -P 0x55 0 4k", &s.uri()],
    );
    let all = format!("{}{}", stdout_str(&o), stderr_str(&o));
    assert!(all.contains("Pattern verification failed"), "{all}");
}

#[test]
fn nbdinfo_memory_flags() {
    let s = Server::start(&["memory", "1M"]);
    let json = nbdinfo(&["--json", &s.uri()]);
    let flags = jq(
        ".exports[0] | [.can_flush, .can_fua, .can_multi_conn, .can_trim, .can_zero, \
         .can_fast_zero, .can_cache, .is_read_only, .is_rotational, .\"export-size\"]",
        &json,
    );
    assert_eq!(
        flags.trim(),
        "[true,true,true,true,true,true,true,false,false,1048576]",
        "{json}"
    );
    assert_eq!(jq(".protocol", &json).trim(), "\"newstyle-fixed\"");
    assert_eq!(jq(".structured", &json).trim(), "true");
    assert_eq!(
        jq(".exports[0].contexts", &json).trim(),
        "[\"base:allocation\"]"
    );
}

#[test]
fn nbdinfo_readonly() {
    let s = Server::start(&["-r", "memory", "1M"]);
    let json = nbdinfo(&["--json", &s.uri()]);
    assert_eq!(
        jq(".exports[0].is_read_only", &json).trim(),
        "true",
        "{json}"
    );
    let s2 = Server::start(&["--readonly", "null", "1M"]);
    let json = nbdinfo(&["--json", &s2.uri()]);
    assert_eq!(
        jq(".exports[0].is_read_only", &json).trim(),
        "true",
        "{json}"
    );
}

#[test]
fn nbdinfo_list_memory() {
    let s = Server::start(&["memory", "1M"]);
    let json = nbdinfo(&["--list", "--json", &s.uri()]);
    assert_eq!(
        jq("[.exports[].\"export-name\"]", &json).trim(),
        "[\"\"]",
        "{json}"
    );
}

#[test]
fn tcp_server_with_clients() {
    let mut s = Server::start_tcp(&["memory", "2M"]);
    let uri = s.uri();
    assert_eq!(nbdinfo(&["--size", &uri]).trim(), "2097152");
    let out = qemu_io(&[
        "-f",
        "raw",
        "-c",
        "write -P 0x11 1k 3k",
        "-c",
        "read -P 0x11 1k 3k",
        &uri,
    ]);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("out");
    nbdcopy(&[uri.as_str(), dst.to_str().unwrap()]);
    let data = std::fs::read(&dst).unwrap();
    assert_eq!(data.len(), 2 << 20);
    assert!(data[1024..4096].iter().all(|&b| b == 0x11));
    assert!(data[4096..].iter().all(|&b| b == 0));
    s.stop_ok();
}

#[test]
fn nbdcopy_in_and_out_multi_conn() {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(16 << 20, 99);
    let src = write_file(dir.path(), "src", &data);
    let dst = dir.path().join("dst");
    let s = Server::start(&["memory", "16M"]);
    let uri = s.uri();
    nbdcopy(&["--connections=4", src.to_str().unwrap(), uri.as_str()]);
    nbdcopy(&["--connections=4", uri.as_str(), dst.to_str().unwrap()]);
    assert!(
        std::fs::read(&dst).unwrap() == data,
        "nbdcopy round trip differs"
    );
}

#[test]
fn server_exits_cleanly_after_clients() {
    let mut s = Server::start(&["memory", "1M"]);
    for _ in 0..5 {
        assert_eq!(nbdinfo(&["--size", &s.uri()]).trim(), "1048576");
    }
    assert!(s.is_running());
    s.stop_ok();
}

/// `--keepalive` sets SO_KEEPALIVE on accepted TCP connections (and only
/// then), as `ss -o` shows while a client is connected.
#[test]
fn keepalive_on_tcp_connections() {
    for (flag, want) in [(Some("--keepalive"), "1"), (None, "0")] {
        let mut args = vec![];
        args.extend(flag);
        args.extend(["null", "1M"]);
        let s = Server::start_tcp(&args);
        let port = s.port.unwrap();
        let script = format!(
            "import subprocess, time\n\
             out = ''\n\
             for _ in range(100):\n    \
                 out = subprocess.run(['ss', '-tnoe', 'state', 'established', '( sport = :{port} )'], capture_output=True, text=True).stdout\n    \
                 if ':{port}' in out: break\n    \
                 time.sleep(0.05)\n\
             print(out.count('keepalive'))\n"
        );
        assert_eq!(python(&s.uri(), &script, &[]).trim(), want, "{flag:?}");
    }
}

/// Without block-size constraints from the plugin, no NBD_INFO_BLOCK_SIZE
/// is sent (as nbdkit); memory states its constraints.
#[test]
fn block_size_only_when_the_plugin_has_one() {
    let null = captive(&["null", "1M"], "nbdinfo \"$uri\"");
    assert!(!null.contains("block_size_minimum"), "{null}");
    let mem = captive(&["memory", "1M"], "nbdinfo \"$uri\"");
    assert!(mem.contains("block_size_preferred: 32768"), "{mem}");
}
