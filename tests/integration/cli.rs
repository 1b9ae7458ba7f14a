//! Command line: probing options, error handling, option permutation.

use crate::harness::*;

fn config_map(out: &str) -> std::collections::HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn version_first_line() {
    let out = run_ok(&["--version"]);
    let first = out.lines().next().unwrap_or("");
    if testing_c_nbdkit() {
        assert!(first.starts_with("nbdkit 1."), "first line: {first:?}");
    } else {
        assert!(first.starts_with("nbdkit 1.46"), "first line: {first:?}");
    }
    // Short form too.
    let out2 = run_ok(&["-V"]);
    assert_eq!(out2.lines().next(), Some(first));
}

#[test]
fn plugin_version_lines() {
    let out = run_ok(&["memory", "--version"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("nbdkit 1."), "{out}");
    assert!(
        lines.iter().any(|l| l.starts_with("memory 1.")),
        "no `memory 1.` line in:\n{out}"
    );
    for p in ["null", "file"] {
        let out = run_ok(&[p, "--version"]);
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{p} 1."))),
            "no `{p} 1.` line in:\n{out}"
        );
    }
}

#[test]
fn dump_config_keys() {
    let out = run_ok(&["--dump-config"]);
    let m = config_map(&out);
    assert_eq!(
        m.get("version_major").map(String::as_str),
        Some("1"),
        "{out}"
    );
    let minor: u32 = m
        .get("version_minor")
        .unwrap_or_else(|| panic!("no version_minor in:\n{out}"))
        .parse()
        .expect("version_minor is a number");
    if !testing_c_nbdkit() {
        assert!(minor >= 46, "version_minor={minor} < 46");
    }
    assert_eq!(m.get("name").map(String::as_str), Some("nbdkit"));
    for k in [
        "binary",
        "bindir",
        "exit_with_parent",
        "plugindir",
        "tls",
        "version",
        "zstd",
    ] {
        assert!(m.contains_key(k), "--dump-config lacks {k}=:\n{out}");
    }
    assert!(
        m["version"].starts_with(&format!("1.{minor}")),
        "version={} vs version_minor={minor}",
        m["version"]
    );
    assert!(matches!(m["tls"].as_str(), "yes" | "no"));
    assert!(matches!(m["zstd"].as_str(), "yes" | "no"));
}

#[test]
fn help_mentions_dump_config() {
    let out = run_ok(&["--help"]);
    assert!(out.contains("dump-config"), "{out}");
    assert!(out.contains("PLUGIN"), "{out}");
}

#[test]
fn plugin_help_mentions_size() {
    let out = run_ok(&["memory", "--help"]);
    assert!(out.contains("size="), "{out}");
}

#[test]
fn dump_plugin_builtin_plugins() {
    for p in ["memory", "null", "file"] {
        let out = run_ok(&[p, "--dump-plugin"]);
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines.contains(&format!("name={p}").as_str()),
            "{p} --dump-plugin lacks name={p}:\n{out}"
        );
        assert!(
            lines.contains(&"thread_model=parallel"),
            "{p} --dump-plugin lacks thread_model=parallel:\n{out}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("version=1.")),
            "{p}: no version=:\n{out}"
        );
    }
    let out = run_ok(&["memory", "--dump-plugin"]);
    assert!(out.lines().any(|l| l == "magic_config_key=size"), "{out}");
}

#[test]
fn dump_plugin_without_plugin_fails() {
    let o = run(&["--dump-plugin"]);
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(1), "{}", stderr_str(&o));
    assert!(stderr_str(&o).starts_with("nbdkit: "), "{}", stderr_str(&o));
}

/// Run nbdkit in the foreground on a private socket so that a wrongly
/// accepted command line cannot daemonise; expect exit 1 and an error line.
#[track_caller]
pub fn expect_error(args: &[&str], error_prefix: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    let pid = dir.path().join("pid");
    let mut full = vec![
        "-f".to_string(),
        "-U".to_string(),
        sock.display().to_string(),
        "-P".to_string(),
        pid.display().to_string(),
    ];
    full.extend(args.iter().map(|s| s.to_string()));
    let o = run(&full);
    assert_no_panic(&o);
    let err = stderr_str(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "nbdkit {args:?}: expected exit 1, got {:?}\nstderr: {err}",
        o.status
    );
    assert!(
        !pid.exists(),
        "nbdkit {args:?} wrote a pidfile although it failed"
    );
    assert!(
        std::os::unix::net::UnixStream::connect(&sock).is_err(),
        "nbdkit {args:?} failed but something still serves its socket"
    );
    let want = if error_prefix {
        "nbdkit: error: "
    } else {
        "nbdkit: "
    };
    assert!(
        err.lines().any(|l| l.starts_with(want)),
        "nbdkit {args:?}: no stderr line starting {want:?}:\n{err}"
    );
    err
}

#[test]
fn error_unknown_plugin() {
    expect_error(&["nosuchplugin"], true);
}

#[test]
fn error_unknown_filter() {
    expect_error(&["--filter=nosuchfilter", "memory", "1M"], true);
}

#[test]
fn error_unknown_filter_with_space() {
    expect_error(&["--filter", "nosuchfilter", "memory", "1M"], true);
}

#[test]
fn error_bad_sizes() {
    for size in [
        "1Q",
        "1.5M",
        "-1",
        "8E",
        "",
        "1MB",
        "0x10",
        "9223372036854775808",
    ] {
        if size.starts_with('-') {
            expect_error(&["memory", "--", size], true);
        } else {
            expect_error(&["memory", size], true);
        }
        expect_error(&["memory", &format!("size={size}")], true);
    }
}

/// Inputs that C nbdkit 1.32.5 accepts but that are almost certainly
/// mistakes: each is refused at startup with a message that says why.
#[test]
fn error_suspicious_command_lines() {
    let long_name = "a".repeat(5000);
    let dir = tempfile::tempdir().unwrap();
    let empty_psk = write_file(dir.path(), "keys.psk", b"");
    let empty_psk = empty_psk.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["memory", "size= 1M"], "size"),
        (&["memory", " 1M"], "size"),
        (&["memory", "1M", "2M"], "more than once"),
        (&["memory", "size=1M", "size=1M"], "more than once"),
        (&["null", "1M", "2M"], "more than once"),
        (&["-e", &long_name, "memory", "1M"], "4096"),
        (
            &["--mask-handshake=999999", "memory", "1M"],
            "mask-handshake",
        ),
        (
            &["--tls=on", "--tls-psk", empty_psk, "memory", "1M"],
            "no keys",
        ),
        (&["memory", "1M", "--run", ""], "--run"),
        (&["memory", "1M", "--run", "  "], "--run"),
    ];
    for (args, why) in cases {
        let err = expect_error(args, true);
        assert!(err.contains(why), "nbdkit {args:?}: no {why:?} in:\n{err}");
    }
    // The limits themselves are still accepted.
    let name = "b".repeat(4096);
    let out = captive(&["-e", &name, "memory", "1M"], "echo ok");
    assert_eq!(out.trim(), "ok");
    let out = captive(&["--mask-handshake=3", "memory", "1M"], "echo ok");
    assert_eq!(out.trim(), "ok");
}

#[test]
fn error_memory_without_size() {
    let err = expect_error(&["memory"], true);
    assert!(err.contains("size"), "{err}");
}

#[test]
fn error_unknown_parameter() {
    let err = expect_error(&["memory", "1M", "foo=bar"], true);
    assert!(err.contains("foo"), "message does not name the key:\n{err}");
}

#[test]
fn error_file_nonexistent() {
    expect_error(&["file", "/nonexistent/disk.img"], true);
}

#[test]
fn error_unknown_option() {
    expect_error(&["--nosuchoption", "memory", "1M"], false);
}

#[test]
fn error_bad_threads() {
    expect_error(&["-t", "abc", "memory", "1M"], true);
}

#[test]
fn error_no_plugin() {
    let o = run(&["-f"]);
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr_str(&o).starts_with("nbdkit: "), "{}", stderr_str(&o));
}

#[test]
fn largest_size_accepted() {
    let out = captive(
        &["-U", "-", "memory", "9223372036854775807"],
        "nbdinfo --size \"$uri\"",
    );
    assert_eq!(out.trim(), "9223372036854775807");
}

#[test]
fn size_suffixes() {
    for (s, n) in [
        ("1b", 1u64),
        ("3s", 1536),
        ("1k", 1024),
        ("2K", 2048),
        ("1m", 1 << 20),
        ("1G", 1 << 30),
        ("+5", 5),
    ] {
        let out = captive(&["-U", "-", "memory", s], "nbdinfo --size \"$uri\"");
        assert_eq!(out.trim(), n.to_string(), "size {s}");
    }
}

#[test]
fn options_after_plugin_parameters() {
    let out = captive(
        &["memory", "1M", "-U", "-"],
        "nbdinfo --size \"$uri\"; echo \"$unixsocket\"",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1048576", "{out}");
    assert!(lines[1].ends_with("/socket"), "{out}");
}

#[test]
fn bundled_unix_dash() {
    let out = captive(&["-U-", "memory", "size=2M"], "nbdinfo --size \"$uri\"");
    assert_eq!(out.trim(), "2097152");
}

#[test]
fn long_options_with_equals() {
    let out = captive(
        &["--unix=-", "--readonly", "--threads=4", "memory", "1M"],
        "nbdinfo --json \"$uri\"",
    );
    assert!(out.contains("\"is_read_only\": true"), "{out}");
}

#[test]
fn debug_environ_prints_the_environment_escaped() {
    let o = run_cmd(
        nbdkit().env("nbdkit_sentinel", "4\x07\x08\t\n2").args([
            "-v",
            "-D",
            "nbdkit.environ=1",
            "-U",
            "-",
            "null",
            "--run",
            "true",
        ]),
        TIMEOUT,
    );
    assert_success(&o, "nbdkit -D nbdkit.environ=1");
    let err = stderr_str(&o);
    assert!(
        err.lines()
            .any(|l| l == "nbdkit: debug: nbdkit_sentinel=4\\a\\b\\t\\n2"),
        "{err}"
    );
    // Only with -v, and only when asked.
    for args in [
        &["-D", "nbdkit.environ=1", "-U", "-", "null", "--run", "true"][..],
        &[
            "-v",
            "-D",
            "nbdkit.environ=0",
            "-U",
            "-",
            "null",
            "--run",
            "true",
        ],
    ] {
        let o = run_cmd(nbdkit().env("nbdkit_sentinel", "42").args(args), TIMEOUT);
        assert_success(&o, "nbdkit");
        assert!(!stderr_str(&o).contains("sentinel"), "{args:?}");
    }
    let err = expect_error(&["-D", "nbdkit.environ=lots", "null"], true);
    assert!(err.contains("nbdkit.environ"), "{err}");
}

#[test]
fn verbose_debug_messages() {
    let o = run_cmd(
        nbdkit().args(["-v", "-U", "-", "null", "--run", "true"]),
        TIMEOUT,
    );
    assert_success(&o, "nbdkit -v");
    let err = stderr_str(&o);
    assert!(
        err.lines()
            .next()
            .unwrap_or("")
            .starts_with("nbdkit: debug: nbdkit 1."),
        "first -v line:\n{err}"
    );
    assert!(err.lines().count() > 1, "only one debug line:\n{err}");
    for l in err.lines() {
        assert!(l.starts_with("nbdkit: "), "stderr line {l:?}");
    }
    // Debug output never goes to stdout (it belongs to COMMAND and to
    // --print-uri), nor does the served process write there.
    assert_eq!(stdout_str(&o), "", "-v wrote to stdout");
    // Likewise for a foreground server that handles a connection.
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("stdout");
    let out_file = std::fs::File::create(&out_path).unwrap();
    let mut s = Server::start_with(dir, &["-v", "memory", "1M"], |cmd| {
        cmd.stdout(out_file.try_clone().unwrap());
    });
    nbdinfo(&["--size", &s.uri()]);
    s.stop_ok();
    assert!(
        s.stderr().contains("debug: memory: pread") || s.stderr().contains("debug: memory: open"),
        "{}",
        s.stderr()
    );
    assert_eq!(
        std::fs::read_to_string(&out_path).unwrap(),
        "",
        "-v server wrote to stdout"
    );
}

#[test]
fn quiet_without_verbose() {
    let o = run_cmd(
        nbdkit().args(["-U", "-", "null", "--run", "echo hi"]),
        TIMEOUT,
    );
    assert_success(&o, "nbdkit");
    assert_eq!(stderr_str(&o), "", "unexpected stderr without -v");
    assert_eq!(stdout_str(&o), "hi\n");
}

#[test]
fn pidfile_holds_server_pid() {
    let mut s = Server::start(&["null"]);
    let pid = std::fs::read_to_string(s.dir().join("pid")).unwrap();
    assert_eq!(pid, format!("{}\n", s.pid()));
    s.stop_ok();
}

#[test]
fn clean_exit_on_signals() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT, libc::SIGHUP] {
        let mut s = Server::start(&["memory", "1M"]);
        assert_eq!(nbdinfo(&["--size", &s.uri()]).trim(), "1048576");
        kill_group(s.pid(), sig);
        let st = s.stop();
        assert!(st.success(), "signal {sig}: exit {st:?}\n{}", s.stderr());
    }
}

#[test]
fn ipv4_only_listener() {
    let port = free_port().to_string();
    let out = captive(
        &["-4", "-p", &port, "null", "1M"],
        &format!("nbdinfo --size nbd://127.0.0.1:{port}"),
    );
    assert_eq!(out.trim(), "1048576");
}

#[test]
fn ipv6_only_listener() {
    let port = free_port().to_string();
    let out = captive(
        &["-6", "-p", &port, "null", "1M"],
        &format!("nbdinfo --size 'nbd://[::1]:{port}'"),
    );
    assert_eq!(out.trim(), "1048576");
}

#[test]
fn threads_one_serial() {
    let s = Server::start(&["-t", "1", "memory", "1M"]);
    let script = "for i in range(50):\n    h.aio_pwrite(bytes([i]) * 4096, i * 4096)\n\
                  while h.aio_in_flight() > 0:\n    h.poll(-1)\n\
                  assert all(h.pread(4096, i * 4096) == bytes([i]) * 4096 for i in range(50))\n\
                  print('ok')\n";
    assert_eq!(python(&s.uri(), script, &[]).trim(), "ok");
}

/// `--no-mc` (≥ 1.38): no meta contexts, so no block status.
#[test]
fn no_meta_contexts() {
    let s = Server::start(&["--no-mc", "memory", "1M"]);
    let script = r#"
h2 = nbd.NBD()
h2.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h2.connect_uri(sys.argv[1])
print(h2.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), h2.get_structured_replies_negotiated())
"#;
    assert_eq!(python(&s.uri(), script, &[]).trim(), "False True");
}

/// Options that make no sense together are refused with nbdkit's message.
#[test]
fn conflicting_service_options() {
    for args in [
        &["-p", "10999", "-U", "-", "null"][..],
        &["null", "--run", "true", "--dump-plugin"][..],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert_eq!(
            stderr_str(&o).trim(),
            "nbdkit: error: --dump-plugin, -p, --run, -s, -U or --vsock options cannot be used in this combination",
            "{args:?}"
        );
        assert!(o.stdout.is_empty(), "{args:?}");
    }
}

/// `--print-uri` prints nbdkit 1.46's four lines (URI, shell-quoted URI,
/// and an nbdinfo command, quoted by nbdkit's rules: bare when only
/// `[A-Za-z0-9.-_=,:/]`, otherwise in double quotes) before COMMAND starts.
#[test]
fn print_uri_lines() {
    let expect = |o: &std::process::Output, what: &str| -> String {
        assert_success(o, what);
        let out = stdout_str(o);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5, "{what}:\n{out}");
        // Line 5 is "$uri" echoed by COMMAND, after the printed lines.
        let uri = lines[4];
        let quoted = if uri
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_=,:/".contains(c))
        {
            uri.to_string()
        } else {
            format!("\"{}\"", uri.replace('$', "\\$"))
        };
        assert_eq!(
            lines[..4],
            [
                uri,
                &format!("Shell-quoted URI: {quoted}"),
                "Command to query the NBD endpoint:",
                &format!("  nbdinfo {quoted}"),
            ],
            "{what}"
        );
        // The quoted form means the URI to the shell.
        let sh = run_cmd(
            std::process::Command::new("/bin/sh").args(["-c", &format!("printf %s {quoted}")]),
            TIMEOUT,
        );
        assert_eq!(stdout_str(&sh), uri, "{what}");
        uri.to_string()
    };
    let o = run(&["-U", "-", "--print-uri", "null", "--run", "echo \"$uri\""]);
    let uri = expect(&o, "-U -");
    assert!(uri.starts_with("nbd+unix://?socket=/tmp/nbdkit"), "{uri}");

    let o = run_cmd(
        nbdkit()
            .args(["-U", "-", "-e", "a b$c", "--print-url", "null", "--run"])
            .arg("echo \"$uri\"; nbdinfo --size \"$uri\" >&2")
            .env("PATH", client_path()),
        TIMEOUT,
    );
    let uri = expect(&o, "-e 'a b$c'");
    assert!(uri.starts_with("nbd+unix:///a%20b%24c?socket=/"), "{uri}");
    assert_eq!(stderr_str(&o), "0\n");

    let port = free_port().to_string();
    let o = run(&[
        "-p",
        &port,
        "-i",
        "127.0.0.1",
        "--show-uri",
        "null",
        "--run",
        "echo \"$uri\"",
    ]);
    let uri = expect(&o, "-p PORT");
    assert_eq!(uri, format!("nbd://localhost:{port}"));
    assert!(stdout_str(&o).contains(&format!("\n  nbdinfo nbd://localhost:{port}\n")));
}
