//! The Debian package (`cargo deb`, configured in Cargo.toml): its control
//! fields and contents, and the binary and manual pages it installs, tried
//! in a throwaway root made with `dpkg -x`.
//!
//! The package is made once per test run from the binary under test
//! (`cargo deb --no-build`, so it reuses the build these tests run against).
//! Needs cargo-deb (`cargo install cargo-deb --locked`), dpkg-dev, pandoc
//! (for the manual pages) and man-db; scripts/test.sh installs them.
//! `installed_dump_config_is_debians` needs root (a private mount
//! namespace puts the packaged binary at /usr/bin/nbdkit).

use crate::harness::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The .deb, made on first use into a directory kept for the whole run.
fn deb() -> &'static Path {
    static DEB: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DEB.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("nbdkit-rust.deb");
        // The profile of the binary under test (target/PROFILE/nbdkit).
        let exe = PathBuf::from(env!("CARGO_BIN_EXE_nbdkit"));
        let profile = match exe.parent().and_then(|p| p.file_name()) {
            Some(p) if p == "debug" => "dev".to_string(),
            Some(p) => p.to_string_lossy().into_owned(),
            None => "release".into(),
        };
        let man1 = exe.parent().unwrap().join("man/man1");
        assert!(
            man1.join("nbdkit.1.gz").exists(),
            "no manual pages in {}: build.rs makes them with pandoc \
             (apt-get install pandoc, then rebuild; scripts/test.sh installs it)",
            man1.display()
        );
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let o = run_cmd(
            Command::new(cargo)
                .current_dir(MANIFEST_DIR)
                .args(["deb", "--no-build", "--profile", &profile, "--output"])
                .arg(&out),
            LONG_TIMEOUT,
        );
        assert_success(
            &o,
            "cargo deb (install it with `cargo install cargo-deb --locked`; scripts/test.sh does)",
        );
        (dir, out)
    })
    .1
}

fn dpkg_deb(args: &[&str]) -> String {
    let o = run_cmd(Command::new("dpkg-deb").args(args).arg(deb()), TIMEOUT);
    assert_success(&o, &format!("dpkg-deb {args:?}"));
    stdout_str(&o)
}

/// The package unpacked with `dpkg -x` into a fresh directory.
fn unpacked() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let o = run_cmd(
        Command::new("dpkg").arg("-x").arg(deb()).arg(root.path()),
        TIMEOUT,
    );
    assert_success(&o, "dpkg -x");
    root
}

/// The manual pages docs/ should give: name and section.
fn expected_pages() -> Vec<(String, u8)> {
    let docs = Path::new(MANIFEST_DIR).join("docs");
    let mut pages = vec![
        ("nbdkit".to_string(), 1),
        ("nbdkit-captive".into(), 1),
        ("nbdkit-service".into(), 1),
        ("nbdkit-tls".into(), 1),
    ];
    if docs.join("plugins.md").exists() {
        pages.push(("nbdkit-plugin".into(), 3));
    }
    for kind in ["plugin", "filter"] {
        for e in std::fs::read_dir(docs.join(format!("{kind}s"))).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "md") {
                let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
                pages.push((format!("nbdkit-{stem}-{kind}"), 1));
            }
        }
    }
    pages
}

fn config_map(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn control_fields() {
    let f = dpkg_deb(&["-f"]);
    let field = |name: &str| -> String {
        f.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name}: field in\n{f}"))
            .to_string()
    };
    assert_eq!(field("Package"), "nbdkit-rust");
    assert_eq!(field("Version"), format!("{VERSION}-1"));
    // Swaps in for Debian's nbdkit, and meets its dependents' `Depends: nbdkit`.
    assert_eq!(field("Provides"), format!("nbdkit (= {VERSION})"));
    assert_eq!(field("Conflicts"), "nbdkit");
    assert_eq!(field("Replaces"), "nbdkit");
    let arch = run_cmd(Command::new("dpkg").arg("--print-architecture"), TIMEOUT);
    assert_eq!(field("Architecture"), stdout_str(&arch).trim());
    // Worked out from the binary's shared libraries.
    let depends = field("Depends");
    for lib in ["libc6", "libssl3", "libcurl4"] {
        assert!(depends.contains(lib), "Depends lacks {lib}: {depends}");
    }
    // Not linked but loaded by the nbd plugin: named by hand.
    assert!(
        depends.contains("libnbd0 (>= 1.14)"),
        "Depends lacks libnbd0: {depends}"
    );
}

#[test]
fn contents() {
    let list = dpkg_deb(&["-c"]);
    let has = |path: &str| {
        list.lines()
            .any(|l| l.ends_with(path) || l.contains(&format!("{path} -> ")))
    };
    let line = |path: &str| {
        list.lines()
            .find(|l| l.contains(path))
            .unwrap_or_else(|| panic!("{path} not in the package:\n{list}"))
            .to_string()
    };
    assert!(line(" ./usr/bin/nbdkit").starts_with("-rwxr-xr-x"));
    assert!(
        line(" ./usr/sbin/nbdkit").ends_with("./usr/sbin/nbdkit -> ../bin/nbdkit"),
        "{}",
        line("./usr/sbin/nbdkit")
    );
    for (name, section) in expected_pages() {
        let path = format!("./usr/share/man/man{section}/{name}.{section}.gz");
        assert!(has(&path), "{path} not in the package:\n{list}");
    }
    for unit in ["nbdkit.socket", "nbdkit.service", "nbdkit-notify.service"] {
        let path = format!("./lib/systemd/system/{unit}");
        assert!(has(&path), "{path} not in the package:\n{list}");
    }
    assert!(has("./usr/share/doc/nbdkit-rust/copyright"), "{list}");
}

#[test]
fn installed_binary_runs_and_man_reads_its_pages() {
    let root = unpacked();
    let usr = root.path().join("usr");
    for bin in ["bin", "sbin"] {
        let o = run_cmd(
            Command::new(usr.join(bin).join("nbdkit")).arg("--version"),
            TIMEOUT,
        );
        assert_success(&o, &format!("/usr/{bin}/nbdkit --version"));
        assert!(stdout_str(&o).contains(VERSION), "{}", stdout_str(&o));
    }
    let o = run_cmd(
        Command::new(usr.join("bin/nbdkit")).arg("--dump-config"),
        TIMEOUT,
    );
    assert_success(&o, "nbdkit --dump-config");
    let m = config_map(&stdout_str(&o));
    assert_eq!(Path::new(&m["binary"]), usr.join("bin/nbdkit"));
    assert_eq!(Path::new(&m["mandir"]), usr.join("share/man"));

    // `man -l` on a packaged page, and `man NAME` finding it by name.
    let page = usr.join("share/man/man1/nbdkit-captive.1.gz");
    let o = run_cmd(
        Command::new("man")
            .arg("-l")
            .arg(&page)
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0"),
        TIMEOUT,
    );
    assert_success(&o, "man -l nbdkit-captive.1.gz");
    let text = stdout_str(&o);
    assert!(text.contains("NBDKIT-CAPTIVE(1)"), "{text}");
    assert!(text.contains("nbdkit-captive - "), "no NAME line:\n{text}");
    assert!(text.contains("--run"), "{text}");
    let o = run_cmd(
        Command::new("man")
            .arg("--manpath")
            .arg(usr.join("share/man"))
            .args(["-w", "nbdkit-memory-plugin"]),
        TIMEOUT,
    );
    assert_success(&o, "man -w nbdkit-memory-plugin");
    assert_eq!(
        Path::new(stdout_str(&o).trim()),
        usr.join("share/man/man1/nbdkit-memory-plugin.1.gz")
    );
}

/// Debian's directories (as Debian's own nbdkit 1.32.5 prints them), for
/// the packaged binary at /usr/bin/nbdkit: a private mount namespace binds
/// it over /usr/bin, so this needs root.
#[test]
fn installed_dump_config_is_debians() {
    let root = unpacked();
    let bin = root.path().join("usr/bin");
    let o = run_cmd(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$1" /usr/bin && exec /usr/bin/nbdkit --dump-config"#)
            .arg("sh")
            .arg(&bin),
        TIMEOUT,
    );
    assert_success(
        &o,
        "nbdkit --dump-config at /usr/bin (this test needs root: unshare --mount)",
    );
    let m = config_map(&stdout_str(&o));
    assert_eq!(m["version"], VERSION, "not our binary: {m:?}");
    let libdir = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
    for (k, v) in [
        ("binary", "/usr/bin/nbdkit".to_string()),
        ("bindir", "/usr/bin".into()),
        ("sbindir", "/usr/bin".into()),
        ("libdir", libdir.clone()),
        ("plugindir", format!("{libdir}/nbdkit/plugins")),
        ("filterdir", format!("{libdir}/nbdkit/filters")),
        ("mandir", "/usr/share/man".into()),
        ("sysconfdir", "/etc".into()),
        ("root_tls_certificates_dir", "/etc/pki/nbdkit".into()),
    ] {
        assert_eq!(m.get(k), Some(&v), "--dump-config {k}= in {m:?}");
    }
}

/// A tiny Python plugin: 1 MiB of `*`.
const PY_PLUGIN: &str = r#"API_VERSION = 2

def open(readonly):
    return 1

def get_size(h):
    return 1048576

def pread(h, buf, offset, flags):
    buf[:] = b"*" * len(buf)
"#;

/// Debian's nbdkit-plugin-python keeps working with the packaged binary:
/// its .so, named by path, serves a Python script.
#[test]
fn debian_python_plugin_through_installed_binary() {
    let so = format!(
        "/usr/lib/{}-linux-gnu/nbdkit/plugins/nbdkit-python-plugin.so",
        std::env::consts::ARCH
    );
    assert!(
        Path::new(&so).exists(),
        "{so} missing: apt-get install nbdkit-plugin-python (scripts/test.sh does)"
    );
    let root = unpacked();
    let script = write_file(root.path(), "plugin.py", PY_PLUGIN.as_bytes());
    let o = run_cmd(
        Command::new(root.path().join("usr/bin/nbdkit"))
            .args(["-U", "-", &so])
            .arg(format!("script={}", script.display()))
            .arg("--run")
            .arg(
                r#"nbdsh -u "$uri" -c 'assert h.get_size() == 1048576' -c 'assert h.pread(4, 4096) == b"****"' -c 'print("ok")'"#,
            )
            .env("PATH", client_path()),
        LONG_TIMEOUT,
    );
    assert_success(&o, "packaged nbdkit with Debian's python plugin");
    assert_eq!(stdout_str(&o).trim(), "ok");

    // And by name, as after `apt install`: the packaged binary at
    // /usr/bin/nbdkit (bound there in a private mount namespace; root)
    // finds the plugin in Debian's plugindir.
    let o = run_cmd(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(concat!(
                r#"mount --bind "$1/usr/bin/nbdkit" /usr/bin/nbdkit && "#,
                r#"exec /usr/bin/nbdkit -U - python "script=$2" --run "#,
                r#"'nbdsh -u "$uri" -c "assert h.pread(4, 0) == b\"****\"" -c "print(\"ok\")"'"#
            ))
            .arg("sh")
            .arg(root.path())
            .arg(&script)
            .env("PATH", client_path()),
        LONG_TIMEOUT,
    );
    assert_success(&o, "nbdkit python (by name) at /usr/bin/nbdkit; needs root");
    assert_eq!(stdout_str(&o).trim(), "ok");
}
