//! nbdkit's C plugin ABI, driven by test plugins written in C and compiled
//! here with the system compiler against Debian's nbdkit-plugin-dev
//! headers (tests/fixtures/cplugin/testplug.c): every callback, every
//! exported function, API versions 1 and 2, thread models, errno.

use crate::harness::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const SOURCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/cplugin/testplug.c"
);

/// Compile `src` (once per flag set) into a plugin .so; returns its path.
fn build(src: &str, flags: &[&str]) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let key = format!("{src} {}", flags.join(" "));
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let map = built.get_or_insert_with(HashMap::new);
    if let Some(p) = map.get(&key) {
        return p.clone();
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cabi-plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("p{}-{}.so", map.len(), std::process::id()));
    let o = std::process::Command::new("cc")
        .args(["-Wall", "-Werror", "-shared", "-fPIC", "-O1", "-o"])
        .arg(&out)
        .arg(src)
        .args(flags)
        .output()
        .expect("run the C compiler");
    assert!(
        o.status.success(),
        "compiling {src} {flags:?}:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    map.insert(key, out.clone());
    out
}

fn plugin(api: u32, tm: &str, extra: &[&str]) -> String {
    let mut flags = vec![
        format!("-DAPI={api}"),
        format!("-DTM=NBDKIT_THREAD_MODEL_{tm}"),
    ];
    flags.extend(extra.iter().map(|s| s.to_string()));
    let f: Vec<&str> = flags.iter().map(String::as_str).collect();
    build(SOURCE, &f).display().to_string()
}

fn v2() -> String {
    plugin(2, "PARALLEL", &[])
}

/// The plugin's text report (first 8 KiB of the disk) on `uri`.
fn report(uri: &str) -> String {
    nbdsh(
        uri,
        "print(bytes(h.pread(4096, 0)).rstrip(b'\\0').decode())",
    )
}

#[test]
fn parsers_paths_and_passwords_at_config_time() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "from-file\n").unwrap();
    let p = v2();
    let s = Server::start_in(
        dir,
        &[
            &p,
            "1M",
            "int=-12",
            "unsigned=0x10",
            "i8=-128",
            "u8=255",
            "i16=077",
            "u16=65535",
            "i32=-2147483648",
            "u32=4294967295",
            "i64=-9223372036854775808",
            "u64=18446744073709551615",
            "prob=1:4",
            "delay=1.5ms",
            "bool=on",
            "sizeof=2k",
            "abs=/already/absolute",
            "real=/usr/../etc",
            &format!("password=+{}", pw.display()),
            "intern=kept",
        ],
    );
    let r = report(&s.uri());
    for want in [
        "int=-12\n",
        "unsigned=16\n",
        "i8=-128\n",
        "u8=255\n",
        "i16=63\n",
        "u16=65535\n",
        "i32=-2147483648\n",
        "u32=4294967295\n",
        "i64=-9223372036854775808\n",
        "u64=18446744073709551615\n",
        "prob=0.25\n",
        "delay=0.001500000\n",
        "bool=1\n",
        "sizeof=2048\n",
        "abs=/already/absolute\n",
        "real=/etc\n",
        "password=from-file\n",
        "config_interned=kept",
        "config_complete stdio_safe=1\n",
    ] {
        assert!(r.contains(want), "{want:?} not in:\n{r}");
    }
}

#[test]
fn parsers_refuse_what_nbdkit_refuses() {
    let p = v2();
    let mut s = Server::start(&[
        &p,
        "u8=256",
        "i8=-129",
        "unsigned=-1",
        "int=12x",
        "prob=-1",
        "delay=soon",
        "bool=maybe",
        "sizeof=1Q",
    ]);
    let r = report(&s.uri());
    for want in [
        "u8=error",
        "i8=error",
        "unsigned=error",
        "int=error",
        "prob=error",
        "delay=error",
        "bool=-1",
        "sizeof=-1",
    ] {
        assert!(r.contains(want), "{want:?} not in:\n{r}");
    }
    s.stop();
    let e = s.stderr();
    assert!(e.contains("what: number out of range: \"256\""), "{e}");
    assert!(e.contains("negative numbers are not allowed"), "{e}");
}

#[test]
fn connection_context_export_name_peer_and_interning() {
    let p = v2();
    let s = Server::start(&[&p]);
    let r = report(&s.uri_export("exp1"));
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    for want in [
        format!("open export=exp1 tls=0 uid={uid} gid={gid} pid_positive=1 family=1\n"),
        "interned=exp1 printf=exp1-42 strndup=abc".to_string(),
        "tls_dn=[]".into(),
        "preconnect pid_ok=1\n".into(),
        "get_ready\n".into(),
        "after_fork\n".into(),
    ] {
        assert!(r.contains(&want), "{want:?} not in:\n{r}");
    }
    // The default export "" is the plugin's default_export answer.
    assert!(report(&s.uri()).contains("open export=defname "));
    // Over TCP the peer is an AF_INET address.
    let t = Server::start_tcp(&[&p]);
    assert!(report(&t.uri()).contains("family=2\n"));
}

#[test]
fn export_list_and_descriptions() {
    let p = v2();
    let s = Server::start(&[&p]);
    let out = nbdinfo(&["--list", "--json", &s.uri()]);
    let got = jq("[.exports[] | [.[\"export-name\"], .description]]", &out);
    let got: String = got.split_whitespace().collect();
    assert_eq!(got, r#"[["a","thefirst"],["b",null],["defname",null]]"#);
    // .export_description answers NBD_INFO_DESCRIPTION for an open export.
    let out = nbdinfo(&["--json", &s.uri_export("a")]);
    let got = jq(".exports[0].description", &out);
    assert_eq!(got.trim(), "\"description of a\"", "{out}");
}

#[test]
fn errors_and_errno_reach_the_client() {
    let script = "def w(data):\n    try:\n        h.pwrite(data.ljust(512, b' '), 8192)\n        return 'ok'\n    except nbd.Error as e:\n        return e.errno\n\
                  print(w(b'ERR:s1'), w(b'ERR:s28'), w(b'ERR:e28'), w(b'fine'))";
    let mut s = Server::start(&[&v2()]);
    assert_eq!(nbdsh(&s.uri(), script).trim(), "EPERM ENOSPC EIO ok");
    s.stop();
    assert!(
        s.stderr().contains("pwrite failing on purpose with 28"),
        "{}",
        s.stderr()
    );
    // With errno_is_preserved, errno itself is the error.
    let p = plugin(2, "PARALLEL", &["-DERRNO_PRESERVED"]);
    let s = Server::start(&[&p]);
    assert_eq!(nbdsh(&s.uri(), script).trim(), "EPERM ENOSPC ENOSPC ok");
    // A failed open is an error for the client, and logged.
    let mut s = Server::start(&[&v2()]);
    let o = client_any("/usr/bin/nbdinfo", &[&s.uri_export("fail-open")]);
    assert!(!o.status.success());
    s.stop();
    assert!(
        s.stderr().contains("open refused for export fail-open"),
        "{}",
        s.stderr()
    );
}

#[test]
fn extents_from_the_plugin() {
    let s = Server::start(&[&v2(), "256K"]);
    let out = qemu_img(&["map", "--output=json", &s.uri()]);
    let got = jq("[.[] | [.start, .length, .data]]", &out);
    let got: String = got.split_whitespace().collect();
    assert_eq!(
        got,
        "[[0,65536,true],[65536,65536,false],[131072,65536,true],[196608,65536,false]]"
    );
}

#[test]
fn capabilities_follow_the_callbacks_in_both_api_versions() {
    let s = Server::start(&[&v2()]);
    let out = nbdsh(
        &s.uri(),
        "print(h.can_fua(), h.can_cache(), h.is_rotational(), h.can_multi_conn(), \
         h.can_trim(), h.can_zero(), h.can_fast_zero(), h.get_block_size(nbd.SIZE_MINIMUM), \
         h.get_block_size(nbd.SIZE_PREFERRED))\n\
         h.pwrite(b'z' * 4096, 65536, nbd.CMD_FLAG_FUA)\n\
         h.zero(4096, 65536)\n\
         assert h.pread(4096, 65536) == bytes(4096)\n\
         try:\n    h.zero(4096, 65536, nbd.CMD_FLAG_FAST_ZERO)\n\
         except nbd.Error as e:\n    print(e.errno)\n\
         h.cache(4096, 0)\nh.flush()\nh.trim(4096, 65536)",
    );
    // Fast zero is not advertised (the plugin zeroes natively), so libnbd
    // refuses the flag itself.
    assert_eq!(
        out.trim(),
        "True True True True True True False 512 4096\nEINVAL"
    );
    // API v1: FUA is emulated with flush, no cache, and fast zero fails
    // fast instead of calling the v1 .zero.
    let p1 = plugin(1, "PARALLEL", &[]);
    let s = Server::start(&[&p1]);
    let out = nbdsh(
        &s.uri(),
        "print(h.can_fua(), h.can_cache(), h.can_fast_zero())\n\
         h.pwrite(b'v' * 512, 65536, nbd.CMD_FLAG_FUA)\n\
         h.zero(512, 65536)\n\
         assert h.pread(512, 65536) == bytes(512)\n\
         try:\n    h.zero(512, 65536, nbd.CMD_FLAG_FAST_ZERO)\n\
         except nbd.Error as e:\n    print(e.errno)",
    );
    assert_eq!(out.trim(), "True False True\nENOTSUP");
    let d = run_ok(&[&p1, "--dump-plugin"]);
    assert!(
        d.contains("api_version=1\n") && d.contains("has_pread=1\n"),
        "{d}"
    );
}

/// Eight reads at once into the plugin's slow region (each sleeps 100ms
/// inside the plugin), then the plugin's record of the most it saw at once.
fn max_inflight(uri: &str) -> u32 {
    let out = python(
        uri,
        "size = h.get_size()\n\
         bufs = [nbd.Buffer(4096) for _ in range(8)]\n\
         for i, b in enumerate(bufs):\n    h.aio_pread(b, size - 65536 + i * 4096)\n\
         while h.aio_in_flight() > 0:\n    h.poll(-1)\n\
         r = bytes(h.pread(4096, 0)).rstrip(b'\\0').decode()\n\
         print([l for l in r.splitlines() if l.startswith('max_inflight=')][0][13:])",
        &[],
    );
    out.trim().parse().unwrap()
}

#[test]
fn a_serialized_plugin_never_sees_two_requests_at_once() {
    for api in [1, 2] {
        let p = plugin(api, "SERIALIZE_ALL_REQUESTS", &[]);
        let d = run_ok(&[&p, "--dump-plugin"]);
        assert!(
            d.contains("max_thread_model=serialize_all_requests\n"),
            "{d}"
        );
        let s = Server::start(&[&p]);
        assert_eq!(max_inflight(&s.uri()), 1, "api {api}");
    }
    let p = plugin(2, "SERIALIZE_REQUESTS", &[]);
    let s = Server::start(&[&p]);
    assert_eq!(max_inflight(&s.uri()), 1);
    // The parallel build lets them overlap.
    let s = Server::start(&[&v2()]);
    assert!(max_inflight(&s.uri()) > 1);
}

#[test]
fn debug_flags_are_set_before_load() {
    let p = v2();
    let s = Server::start_with(
        tempfile::tempdir().unwrap(),
        &[
            "-D",
            "testplug.foo.bar=3",
            "-D",
            "testplug.level=0x7",
            "-D",
            "testplug.nosuch=1",
            &p,
        ],
        |_| {},
    );
    let r = report(&s.uri());
    assert!(r.starts_with("load debug_foo_bar=3 debug_level=7\n"), "{r}");
    let mut s = s;
    s.stop();
    assert!(
        s.stderr()
            .contains("testplug does not contain a global variable called testplug_debug_nosuch"),
        "{}",
        s.stderr()
    );
}

#[test]
fn debug_messages_need_verbose() {
    let o = run(&["-v", &v2(), "--dump-plugin"]);
    assert!(
        stderr_str(&o).contains("debug: testplug loaded, level 0"),
        "{}",
        stderr_str(&o)
    );
    let o = run(&[&v2(), "--dump-plugin"]);
    assert!(!stderr_str(&o).contains("testplug loaded"));
}

#[test]
fn cleanup_then_unload_at_exit_and_shutdown_from_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let mut s = Server::start(&[&v2(), &format!("marker={}", marker.display())]);
    let _ = client_any(
        "/usr/bin/nbdsh",
        &[
            "-u",
            &s.uri(),
            "-c",
            "h.pwrite(b'SHUTDOWN'.ljust(512), 8192)",
        ],
    );
    let st = s.wait_exit();
    assert!(st.success(), "{st:?}: {}", s.stderr());
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "cleanup\nunload\n"
    );
}

#[test]
fn forced_and_soft_disconnect_from_the_plugin() {
    let s = Server::start(&[&v2()]);
    // Forced: the write that asked gets no reply, the connection is gone
    // and the server goes on serving others.
    let out = nbdsh(
        &s.uri(),
        "try:
    h.pwrite(b'DISCONNECT'.ljust(512), 8192)
    print('pwrite answered')
except nbd.Error as e:
    print('pwrite failed')
try:
    h.pread(512, 0)
    print('pread answered')
except nbd.Error as e:
    print('pread failed')",
    );
    assert_eq!(out, "pwrite failed\npread failed\n");
    // Soft: the write that asked is answered (and done), later requests
    // fail with ESHUTDOWN, and the client can still disconnect cleanly.
    let out = nbdsh(
        &s.uri(),
        "import errno
h.pwrite(b'SOFTDISC'.ljust(512), 16384)
for i in range(2):
    try:
        h.pread(512, 16384)
        print('pread answered')
    except nbd.Error as e:
        print('pread failed', errno.errorcode[e.errnum])
h.shutdown()
print('shut down')",
    );
    assert_eq!(
        out,
        "pread failed ESHUTDOWN\npread failed ESHUTDOWN\nshut down\n"
    );
    // A new connection is served normally and sees both writes.
    let out = nbdsh(
        &s.uri(),
        "print(h.pread(512, 8192)[:10], h.pread(512, 16384)[:8])",
    );
    assert_eq!(out, "bytearray(b'DISCONNECT') bytearray(b'SOFTDISC')\n");
    // Asked for in `.open`, outside any request: ignored, as in nbdkit.
    let out = nbdsh(
        &s.uri_export("disconnect-in-open"),
        "print(h.pread(512, 8192)[:10])",
    );
    assert_eq!(out, "bytearray(b'DISCONNECT')\n");
}

#[test]
fn dump_plugin_help_and_version() {
    let p = v2();
    let d = run_ok(&[&p, "--dump-plugin"]);
    let lines: Vec<&str> = d.lines().collect();
    assert_eq!(lines[0], format!("path={p}"));
    assert_eq!(
        &lines[1..5],
        [
            "name=testplug",
            "version=0.1",
            "api_version=2",
            "struct_size=384"
        ]
    );
    assert!(d.contains("max_thread_model=parallel\nthread_model=parallel\nerrno_is_preserved=0\nmagic_config_key=size\nhas_longname=1\nhas_description=1\nhas_load=1\nhas_unload=1\n"), "{d}");
    assert_eq!(*lines.last().unwrap(), "testplug_dump=yes");
    let h = run_ok(&[&p, "--help"]);
    assert!(
        h.contains("plugin: testplug (ABI test plugin)") && h.contains("fail=MSG  fail config"),
        "{h}"
    );
    let v = run_ok(&[&p, "--version"]);
    assert!(v.lines().any(|l| l == "testplug 0.1"), "{v}");
}

fn fails_with(args: &[&str], needle: &str) {
    let o = run(args);
    assert_eq!(o.status.code(), Some(1), "{args:?}");
    let e = stderr_str(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.starts_with("nbdkit: error: ") && e.contains(needle),
        "{needle}: {e}"
    );
}

#[test]
fn config_failures_and_bad_plugins_are_one_line_errors() {
    fails_with(&[&v2(), "fail=boom"], "config failed on purpose: boom");
    fails_with(&[&v2(), "nosuchkey=1"], "unknown parameter 'nosuchkey'");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.c");
    std::fs::write(
        &bad,
        "#include <nbdkit-plugin.h>\n\
         static struct nbdkit_plugin p = { ._struct_size = sizeof p, ._api_version = API, \
         ._thread_model = 3, .name = NAME, .open = (void *) 1, .get_size = (void *) 1 PREAD };\n\
         struct nbdkit_plugin *plugin_init (void) { return &p; }\n",
    )
    .unwrap();
    let b = bad.to_str().unwrap();
    let v99 = build(
        b,
        &["-DAPI=99", "-DNAME=\"bad\"", "-DPREAD=,.pread=(void*)1"],
    );
    fails_with(&[v99.to_str().unwrap()], "_api_version = 99");
    let nopread = build(b, &["-DAPI=2", "-DNAME=\"bad\"", "-DPREAD="]);
    fails_with(&[nopread.to_str().unwrap()], "must have a .pread callback");
    let badname = build(
        b,
        &["-DAPI=2", "-DNAME=\"9bad\"", "-DPREAD=,.pread=(void*)1"],
    );
    fails_with(&[badname.to_str().unwrap()], "9bad");
}

/// A plugin written with the `nbdkit` crate from crates.io, built here as
/// a cdylib (tests/fixtures/rust-plugin, about 15 s the first time; later
/// runs reuse its target directory).  It registers an older, shorter
/// `struct nbdkit_plugin` (the crate's), which exercises the
/// `min(_struct_size, ours)` copy.
#[test]
fn a_plugin_built_with_the_nbdkit_crate() {
    let manifest = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rust-plugin/Cargo.toml"
    );
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rust-plugin");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = run_cmd(
        std::process::Command::new(cargo)
            .args([
                "build",
                "--release",
                "--quiet",
                "--manifest-path",
                manifest,
                "--target-dir",
            ])
            .arg(&target),
        std::time::Duration::from_secs(600),
    );
    assert!(o.status.success(), "{}", stderr_str(&o));
    let so = target.join("release/libnbdkit_rustabi_plugin.so");
    let so = so.to_str().unwrap();
    let d = run_ok(&[so, "--dump-plugin"]);
    assert!(
        d.contains("name=rustabi\n") && d.contains("api_version=2\n"),
        "{d}"
    );
    let mut s = Server::start(&[so]);
    let out = nbdsh(
        &s.uri(),
        "h.pwrite(b'rs', 512)\nprint(bytes(h.pread(2, 512)), h.get_size())\n\
         try:\n    h.pwrite(b'x', 0)\nexcept nbd.Error as e:\n    print(e.errno)",
    );
    assert_eq!(out.trim(), "b'rs' 1048576\nENOSPC");
    s.stop();
    assert!(
        s.stderr().contains("no writes at offset 0"),
        "{}",
        s.stderr()
    );
}
