//! The error filter: injected errors reach the client with the configured
//! errno (checked as libnbd's `nbd.Error.errno`), per call, switched on and
//! off at run time by trigger files; bad parameters are startup errors.

use crate::cli::expect_error;
use crate::harness::*;

/// A Python helper: `errno_of(f)` is the errno name `f()` raised, or "ok".
const ERRNO_OF: &str = "def errno_of(f):\n    try:\n        f()\n        return 'ok'\n    except nbd.Error as e:\n        return e.errno\n";

#[test]
fn error_each_call_fails_with_its_own_errno() {
    let s = Server::start(&[
        "--filter=error",
        "memory",
        "1M",
        "error-pread=EPERM",
        "error-pread-rate=1",
        "error-pwrite=ENOSPC",
        "error-pwrite-rate=100%",
        "error-trim-rate=1:1",
        "error-cache=ESHUTDOWN",
        "error-cache-rate=1",
    ]);
    let script = format!(
        "{ERRNO_OF}\
         print(errno_of(lambda: h.pread(512, 0)))\n\
         print(errno_of(lambda: h.pwrite(bytes(512), 0)))\n\
         print(errno_of(lambda: h.trim(512, 0)))\n\
         print(errno_of(lambda: h.zero(512, 0)))\n\
         print(errno_of(lambda: h.cache(512, 0)))\n\
         print(errno_of(lambda: h.flush()))\n"
    );
    let out = python(&s.uri(), &script, &[]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["EPERM", "ENOSPC", "EIO", "ok", "ESHUTDOWN", "ok"]
    );
}

#[test]
fn error_file_switches_faults_on_and_off_while_connected() {
    let dir = tempfile::tempdir().unwrap();
    let trigger = dir.path().join("inject");
    let wtrigger = dir.path().join("inject-write");
    let filearg = format!("error-file={}", trigger.display());
    let wfilearg = format!("error-pwrite-file={}", wtrigger.display());
    let s = Server::start(&[
        "--filter=error",
        "memory",
        "1M",
        "error-rate=1",
        "error=ENOMEM",
        &filearg,
        &wfilearg,
    ]);
    let script = format!(
        "{ERRNO_OF}\
         t, w = sys.argv[2], sys.argv[3]\n\
         print(errno_of(lambda: h.pread(512, 0)))\n\
         open(t, 'w').close()\n\
         print(errno_of(lambda: h.pread(512, 0)))\n\
         print(errno_of(lambda: h.pwrite(bytes(512), 0)))\n\
         open(w, 'w').close()\n\
         print(errno_of(lambda: h.pwrite(bytes(512), 0)))\n\
         os.unlink(t)\n\
         print(errno_of(lambda: h.pread(512, 0)))\n"
    );
    let out = python(
        &s.uri(),
        &script,
        &[
            &trigger.display().to_string(),
            &wtrigger.display().to_string(),
        ],
    );
    // The write has its own trigger file, so error-file does not apply to it.
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["ok", "ENOMEM", "ok", "ENOMEM", "ok"]
    );
}

#[test]
fn error_rate_fails_about_that_share_of_requests() {
    let s = Server::start(&["--filter=error", "memory", "1M", "error-pread-rate=50%"]);
    let script = format!(
        "{ERRNO_OF}\
         r = [errno_of(lambda: h.pread(512, 0)) for i in range(400)]\n\
         print(r.count('EIO'), r.count('ok'))\n"
    );
    let out = python(&s.uri(), &script, &[]);
    let n: Vec<u32> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert_eq!(n[0] + n[1], 400, "{out}");
    // Binomial(400, 0.5): outside 100..300 has probability below 1e-20.
    assert!((100..300).contains(&n[0]), "{out}");
}

#[test]
fn error_bad_parameters_are_startup_errors() {
    for bad in [
        "error=ENOENT",
        "error-pread=eio",
        "error-rate=2",
        "error-rate=often",
        "error-zero-rate=150%",
        "error-rate=1:0",
        "error-file=",
    ] {
        let e = expect_error(&["--filter=error", "memory", "1M", bad], true);
        let key = bad.split('=').next().unwrap();
        assert!(e.contains(key), "{bad}: {e}");
    }
}
