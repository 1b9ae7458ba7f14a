//! The stats and count filters: the stats file checked field by field
//! against nbdkit's documented format, and count's totals after real
//! clients' traffic.

use crate::cli::expect_error;
use crate::harness::*;

/// `NAME: N ops, S s, SIZE, RATE/s op, RATE/s total` split into its fields.
#[track_caller]
fn op_line(line: &str) -> (String, u64, f64, String, String, String) {
    let (name, rest) = line.split_once(": ").expect("NAME: ...");
    let f: Vec<&str> = rest.split(", ").collect();
    assert_eq!(f.len(), 5, "{line}");
    let ops = f[0].strip_suffix(" ops").expect("N ops").parse().unwrap();
    let secs = f[1].strip_suffix(" s").expect("S s").parse().unwrap();
    let op_rate = f[3].strip_suffix("/s op").expect("/s op").to_string();
    let total_rate = f[4].strip_suffix("/s total").expect("/s total").to_string();
    (name.into(), ops, secs, f[2].into(), op_rate, total_rate)
}

#[track_caller]
fn is_human_size(s: &str) {
    let ok = s == "(n/a)"
        || s.strip_suffix(" bytes")
            .is_some_and(|n| n.parse::<u64>().is_ok())
        || ["KiB", "MiB", "GiB"].iter().any(|u| {
            s.strip_suffix(&format!(" {u}"))
                .is_some_and(|n| n.split_once('.').is_some_and(|(_, d)| d.len() == 2))
        });
    assert!(ok, "not a size: {s:?}");
}

#[test]
fn stats_file_has_totals_rates_and_breakdowns() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stats");
    let arg = format!("statsfile={}", file.display());
    captive(
        &["-U", "-", "--filter=stats", "memory", "1M", &arg],
        "nbdsh -u \"$uri\" -c '\n\
for i in range(20): h.pread(4096, i * 4096)\n\
for i in range(3): h.pread(512, 512 * i + 512)\n\
h.pwrite(b\"x\" * 512, 1024)\n\
h.zero(4096, 0)\n\
h.flush()\n\
h.trim(4096, 0)\n'",
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // total: 27 ops, S s, 90.00 KiB, RATE/s
    let t: Vec<&str> = lines[0]
        .strip_prefix("total: ")
        .unwrap()
        .split(", ")
        .collect();
    assert_eq!(t[0], "27 ops", "{text}");
    assert!(t[1].ends_with(" s"));
    assert_eq!(t[2], "90.00 KiB");
    is_human_size(t[3].strip_suffix("/s").unwrap());

    let (name, ops, secs, size, r1, r2) = op_line(lines[1]);
    assert_eq!(
        (name.as_str(), ops, size.as_str()),
        ("read", 23, "81.50 KiB")
    );
    assert!(secs >= 0.0);
    is_human_size(&r1);
    is_human_size(&r2);
    let expect_breakdown = [
        "  Request size and alignment breakdown:",
        "    12 bits: 87.0% (20 reqs, 80.00 KiB total)",
        "         12 bit aligned: 100.0% (20)",
        "         13 bit aligned:  50.0% (10)",
        "         14 bit aligned:  25.0% (5)",
        "         15 bit aligned:  15.0% (3)",
        "         16 bit aligned:  10.0% (2)",
        "     9 bits: 13.0% (3 reqs, 1.50 KiB total)",
        "          9 bit aligned: 100.0% (3)",
        "         10 bit aligned:  33.3% (1)",
        "",
    ];
    assert_eq!(&lines[2..13], expect_breakdown, "{text}");
    let names: Vec<String> = lines
        .iter()
        .filter(|l| !l.starts_with(' ') && !l.is_empty() && !l.starts_with("total"))
        .map(|l| op_line(l).0)
        .collect();
    assert_eq!(names, ["read", "write", "trim", "zero", "flush"]);
    let w = lines.iter().position(|l| l.starts_with("write:")).unwrap();
    assert_eq!(op_line(lines[w]).3, "512 bytes");
    assert_eq!(
        lines[w + 2],
        "    other sizes: 100.0% (1 reqs, 512 bytes total)"
    );
    let f = lines.iter().find(|l| l.starts_with("flush:")).unwrap();
    assert_eq!(op_line(f).3, "0 bytes");
    assert!(text.ends_with("total\n"), "{text:?}");
}

#[test]
fn stats_threshold_zero_drops_the_breakdown_and_append_keeps_old_runs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stats");
    let arg = format!("statsfile={}", file.display());
    for _ in 0..2 {
        captive(
            &[
                "-U",
                "-",
                "--filter=stats",
                "memory",
                "1M",
                &arg,
                "statsappend=true",
                "statsthreshold=0",
            ],
            "nbdsh -u \"$uri\" -c 'h.pread(4096, 0)'",
        );
    }
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.matches("total: 1 ops").count(), 2, "{text}");
    assert!(!text.contains("breakdown"), "{text}");
}

#[test]
fn stats_bad_parameters_are_startup_errors() {
    let e = expect_error(&["--filter=stats", "memory", "1M"], true);
    assert!(e.contains("statsfile"), "{e}");
    for bad in [
        "statsthreshold=101",
        "statsthreshold=-1",
        "statsappend=sure",
    ] {
        let e = expect_error(
            &["--filter=stats", "memory", "1M", "statsfile=/tmp/x", bad],
            true,
        );
        assert!(e.contains(bad.split('=').next().unwrap()), "{bad}: {e}");
    }
}

#[test]
fn count_reports_bytes_of_a_copy_at_exit() {
    let o = run_cmd(
        nbdkit()
            .args([
                "-v",
                "-U",
                "-",
                "--filter=count",
                "memory",
                "1M",
                "--run",
                "nbdsh -u \"$uri\" -c 'h.pwrite(bytes(65536), 0); h.zero(4096, 65536); \
                 h.trim(8192, 131072); h.pread(1024, 0)' && nbdcopy \"$uri\" null:",
            ])
            .env("PATH", client_path()),
        LONG_TIMEOUT,
    );
    assert_success(&o, "count");
    let err = stderr_str(&o);
    let line = err
        .lines()
        .find(|l| l.contains("count bytes:"))
        .unwrap_or_else(|| panic!("no summary in\n{err}"));
    // nbdcopy reads the data extents (the written 64 KiB) and zeroes the rest.
    let tail = line.split("count bytes: ").nth(1).unwrap();
    let f: Vec<&str> = tail.split(", ").collect();
    assert_eq!(f[1], "written 65536", "{line}");
    assert_eq!(f[2], "zeroed 4096", "{line}");
    assert_eq!(f[3], "trimmed 8192", "{line}");
    let read: u64 = f[0].strip_prefix("read ").unwrap().parse().unwrap();
    assert!(read >= 1024 + 65536, "{line}");
}
