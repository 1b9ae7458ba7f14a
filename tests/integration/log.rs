//! The log filter: its file lines checked field by field against the
//! format nbdkit's manual documents, its script mode, appending, and bad
//! parameters.

use crate::cli::expect_error;
use crate::harness::*;

/// One parsed log line: timestamp, optional connection, action (with a
/// leading `...` for replies), optional id, the rest, and whether it ends
/// with ` ...` (a request).
#[derive(Debug)]
struct Line {
    conn: Option<u64>,
    act: String,
    id: Option<u64>,
    args: String,
    enter: bool,
}

/// Parse `YYYY-MM-DD HH:MM:SS.UUUUUU [connection=N ]ACT[ id=N][ ARGS][ ...]`,
/// failing the test on anything else.
#[track_caller]
fn parse(line: &str) -> Line {
    let b = line.as_bytes();
    assert!(line.len() > 27, "short line: {line:?}");
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    assert!(
        digits(0..4)
            && b[4] == b'-'
            && digits(5..7)
            && b[7] == b'-'
            && digits(8..10)
            && b[10] == b' '
            && digits(11..13)
            && b[13] == b':'
            && digits(14..16)
            && b[16] == b':'
            && digits(17..19)
            && b[19] == b'.'
            && digits(20..26)
            && b[26] == b' ',
        "bad timestamp: {line:?}"
    );
    let mut rest = &line[27..];
    let mut conn = None;
    if let Some(r) = rest.strip_prefix("connection=") {
        let (n, r) = r.split_once(' ').expect("connection=N then a space");
        conn = Some(n.parse().expect("connection number"));
        rest = r;
    }
    let enter = rest.ends_with(" ...");
    if enter {
        rest = &rest[..rest.len() - 4];
    }
    let (act, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let mut id = None;
    if let Some(r) = rest.strip_prefix("id=") {
        let (n, r) = r.split_once(' ').unwrap_or((r, ""));
        id = Some(n.parse().expect("id number"));
        rest = r;
    }
    Line {
        conn,
        act: act.to_string(),
        id,
        args: rest.to_string(),
        enter,
    }
}

fn lines(path: &std::path::Path) -> Vec<Line> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(parse)
        .collect()
}

#[test]
fn log_file_has_a_request_and_a_reply_line_per_call() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let logarg = format!("logfile={}", log.display());
    captive(
        &["-U", "-", "--filter=log", "memory", "1M", &logarg],
        "nbdsh -u \"$uri\" -c '\n\
h.pread(512, 0)\n\
h.pwrite(b\"x\" * 512, 1024, nbd.CMD_FLAG_FUA)\n\
h.zero(4096, 0)\n\
h.flush()\n\
h.trim(4096, 8192)\n\
h.cache(4096, 0)\n'",
    );
    let l = lines(&log);
    assert_eq!(l[0].act, "Ready");
    assert_eq!(l[0].args, "thread_model=3");
    assert!(l[0].conn.is_none());
    let pre = l.iter().position(|x| x.act == "Preconnect").unwrap();
    assert!(l[pre].enter && l[pre].id == Some(1) && l[pre].args == "readonly=0");
    assert_eq!(l[pre + 1].act, "...Preconnect");
    assert_eq!(l[pre + 1].args, "return=0");

    let c = l.iter().find(|x| x.act == "Connect").expect("Connect line");
    assert_eq!(c.conn, Some(1));
    assert!(c.id.is_none() && !c.enter);
    let fields: Vec<&str> = c.args.split(' ').collect();
    let keys: Vec<&str> = fields
        .iter()
        .map(|f| f.split('=').next().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "export",
            "tls",
            "size",
            "minsize",
            "prefsize",
            "maxsize",
            "write",
            "flush",
            "rotational",
            "trim",
            "zero",
            "fua",
            "extents",
            "cache",
            "fast_zero"
        ]
    );
    assert_eq!(fields[0], "export=\"\"");
    assert_eq!(fields[2], "size=0x100000");
    assert_eq!(fields[6], "write=1");

    let reqs: Vec<&Line> = l.iter().filter(|x| x.conn == Some(1)).collect();
    let expect = [
        ("Read", "offset=0x0 count=0x200"),
        ("Write", "offset=0x400 count=0x200 fua=1"),
        ("Zero", "offset=0x0 count=0x1000 trim=1 fua=0 fast=0"),
        ("Flush", ""),
        ("Trim", "offset=0x2000 count=0x1000 fua=0"),
        ("Cache", "offset=0x0 count=0x1000"),
    ];
    // Connect, then a request and a reply per call, then Disconnect.
    assert_eq!(reqs.len(), 2 + 2 * expect.len(), "{reqs:#?}");
    for (i, (act, args)) in expect.iter().enumerate() {
        let (e, r) = (reqs[1 + 2 * i], reqs[2 + 2 * i]);
        let id = Some(i as u64 + 1);
        assert!(
            e.enter && e.act == *act && e.id == id && e.args == *args,
            "{e:?}"
        );
        assert!(
            !r.enter && r.act == format!("...{act}") && r.id == id,
            "{r:?}"
        );
        assert_eq!(r.args, "return=0");
    }
    let d = reqs.last().unwrap();
    assert_eq!(d.act, "Disconnect");
    assert_eq!(d.args, "transactions=6");
}

#[test]
fn log_replies_name_the_error_the_client_sees() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let logarg = format!("logfile={}", log.display());
    // The log filter above the error filter sees the injected error.
    let mut s = Server::start(&[
        "--filter=log",
        "--filter=error",
        "memory",
        "1M",
        &logarg,
        "error-pwrite-rate=1",
        "error=ENOSPC",
    ]);
    let out = python(
        &s.uri(),
        "try:\n    h.pwrite(bytes(512), 0)\n\
         except nbd.Error as e:\n    print(e.errno == 'ENOSPC')\n\
         h.shutdown()\n",
        &[],
    );
    assert_eq!(out.trim(), "True");
    s.stop();
    let l = lines(&log);
    let r = l.iter().find(|x| x.act == "...Write").unwrap();
    assert_eq!(r.args, "return=-1 error=ENOSPC");
}

#[test]
fn log_extents_and_list_exports_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let logarg = format!("logfile={}", log.display());
    captive(
        &["-U", "-", "--filter=log", "memory", "1M", &logarg],
        "nbdinfo --list \"$uri\" >/dev/null && nbdinfo --map \"$uri\" >/dev/null",
    );
    let l = lines(&log);
    let le = l.iter().find(|x| x.act == "ListExports").unwrap();
    assert!(le.enter && le.args == "readonly=0 tls=0", "{le:?}");
    let lr = l.iter().find(|x| x.act == "...ListExports").unwrap();
    assert_eq!(lr.args, "exports=(\"\") return=0");
    let e = l.iter().find(|x| x.act == "Extents").unwrap();
    assert!(e.args.starts_with("offset=0x0 count="), "{e:?}");
    assert!(e.args.ends_with(" req_one=0"), "{e:?}");
    let r = l.iter().find(|x| x.act == "...Extents").unwrap();
    assert_eq!(r.args, "extents=(0x0 0x100000 \"hole,zero\") return=0");
    // Two connections (one per nbdinfo run that opened the export).
    assert!(l.iter().any(|x| x.conn == Some(2)));
}

#[test]
fn log_append_keeps_earlier_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    std::fs::write(&log, "").unwrap();
    let logarg = format!("logfile={}", log.display());
    for _ in 0..2 {
        captive(
            &[
                "-U",
                "-",
                "--filter=log",
                "memory",
                "1M",
                &logarg,
                "logappend=true",
            ],
            "nbdinfo \"$uri\" >/dev/null",
        );
    }
    let l = lines(&log);
    assert_eq!(l.iter().filter(|x| x.act == "Ready").count(), 2);
    // Without logappend the file is replaced.
    captive(
        &["-U", "-", "--filter=log", "memory", "1M", &logarg],
        "nbdinfo \"$uri\" >/dev/null",
    );
    assert_eq!(lines(&log).iter().filter(|x| x.act == "Ready").count(), 1);
}

#[test]
fn log_script_runs_with_the_line_as_variables() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let script = format!(
        "logscript=echo \"$type $act ${{connection:-}} ${{id:-}} ${{offset:-}} ${{count:-}}\" >> {}",
        out.display()
    );
    captive(
        &["-U", "-", "--filter=log", "memory", "1M", &script],
        "nbdsh -u \"$uri\" -c 'h.pread(512, 4096)'",
    );
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("PRINT Ready"), "{text}");
    assert!(text.contains("ENTER Read 1 1 0x1000 0x200\n"), "{text}");
    assert!(text.contains("LEAVE Read 1 1  \n"), "{text}");
    assert!(text.contains("PRINT Disconnect 1"), "{text}");
}

#[test]
fn log_bad_parameters_are_startup_errors() {
    let e = expect_error(
        &[
            "--filter=log",
            "memory",
            "1M",
            "logfile=/x",
            "logappend=sometimes",
        ],
        true,
    );
    assert!(e.contains("logappend"), "{e}");
    let e = expect_error(
        &[
            "--filter=log",
            "memory",
            "1M",
            "logfile=/nonexistent-dir/log",
        ],
        true,
    );
    assert!(e.contains("/nonexistent-dir/log"), "{e}");
}
