//! Running one script method: spawn, feed stdin, collect stdout and
//! stderr, and turn the exit status into an outcome (nbdkit-sh-plugin(3),
//! "Exit codes").
//!
//! The child gets its own process group so that everything it starts can be
//! killed together.  Its three pipes are served by one `poll` loop, so a
//! large `pwrite` buffer and a script that prints before it has read all
//! of its input cannot deadlock.  Stdout is capped (a script that prints
//! without end is killed and reported, never buffered without bound), and
//! stderr keeps only its head.  A stop request (SIGTERM, ...) kills the
//! process group of a running script, so a hanging script cannot hold the
//! server up; `close` and `unload`, which belong to shutdown, get a few
//! seconds' grace first.

use crate::error::{Error, Result};
use crate::server::quit;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long `close` and `unload` may still run once the server is told to
/// stop, before they are killed too.
const CLEANUP_GRACE: Duration = Duration::from_secs(5);

/// How much of stderr is kept for the error message.
const STDERR_KEEP: usize = 64 * 1024;

/// Largest stdout accepted from methods that print text (sizes, handles,
/// export lists, extents).
pub const TEXT_LIMIT: usize = 16 * 1024 * 1024;

/// What to run for a method.
#[derive(Debug, Clone)]
pub enum Target {
    /// An executable script (`sh`): `SCRIPT METHOD ARGS...`.  If the kernel
    /// refuses it with `ENOEXEC` (no `#!` line), it is run by `/bin/sh`, as
    /// `execvp` would.
    Exec(PathBuf),
    /// A shell snippet (`eval`): `/bin/sh -c SNIPPET METHOD METHOD ARGS...`,
    /// so that `$1` is the method name and the arguments follow, as in `sh`.
    Snippet(String),
}

/// The outcome of a method that ran.
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    /// Exit status 0, with what it printed on stdout.
    Ok(Vec<u8>),
    /// Exit status 2: the script does not implement the method.
    Missing,
    /// Exit status 3: false (for boolean methods).
    False,
}

/// One call of a method.
pub struct Call<'a> {
    pub target: &'a Target,
    /// The name used in error messages (the script path, or the method for
    /// `eval`).
    pub label: &'a str,
    pub method: &'a str,
    pub args: &'a [&'a str],
    /// Data for the script's stdin (`pwrite`); stdin is `/dev/null` if none.
    pub stdin: Option<&'a [u8]>,
    /// Most bytes of stdout accepted; more is an error.
    pub stdout_limit: usize,
}

/// Set once a script could not be executed directly (`ENOEXEC`), so later
/// calls go straight to `/bin/sh`.
static EXEC_VIA_SH: AtomicBool = AtomicBool::new(false);

impl Call<'_> {
    fn command(&self, via_sh: bool) -> Command {
        let mut cmd = match self.target {
            Target::Exec(path) if via_sh => {
                let mut c = Command::new("/bin/sh");
                c.arg(path);
                c
            }
            Target::Exec(path) => Command::new(path),
            Target::Snippet(code) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c").arg(code).arg(self.method);
                c
            }
        };
        cmd.arg(self.method).args(self.args);
        cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.process_group(0);
        cmd
    }

    fn spawn(&self) -> Result<Child> {
        let via_sh = EXEC_VIA_SH.load(Ordering::Relaxed);
        match self.command(via_sh).spawn() {
            Ok(c) => Ok(c),
            Err(e)
                if !via_sh
                    && matches!(self.target, Target::Exec(_))
                    && e.raw_os_error() == Some(libc::ENOEXEC) =>
            {
                EXEC_VIA_SH.store(true, Ordering::Relaxed);
                self.command(true)
                    .spawn()
                    .map_err(|e| Error::io(e, format!("{}: cannot run script", self.label)))
            }
            Err(e) => Err(Error::io(e, format!("{}: cannot run script", self.label))),
        }
    }

    /// Run the method and classify its exit status.  Errors (exit status 1
    /// or any other unknown status, death by a signal, too much output) are
    /// returned as `Err` with the errno and message the script gave.
    pub fn run(&self) -> Result<Status> {
        let mut child = self.spawn()?;
        let io = self.exchange(&mut child);
        if io.is_err() {
            kill_group(&child);
        }
        let status = child
            .wait()
            .map_err(|e| Error::io(e, format!("{}: waitpid", self.label)))?;
        let Exchange {
            stdout,
            stderr,
            interrupted,
            overflow,
        } = io?;
        if interrupted {
            return Err(Error::new(
                Errno::ESHUTDOWN,
                format!(
                    "{}: {}: script killed: the server is shutting down",
                    self.label, self.method
                ),
            ));
        }
        if overflow {
            return Err(Error::new(
                Errno::EIO,
                format!(
                    "{}: {}: script printed more than {} bytes on stdout",
                    self.label, self.method, self.stdout_limit
                ),
            ));
        }
        if let Some(sig) = status.signal() {
            let name = nix::sys::signal::Signal::try_from(sig)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| format!("signal {sig}"));
            return Err(Error::new(
                Errno::EIO,
                format!(
                    "{}: {}: script terminated by {name}",
                    self.label, self.method
                ),
            ));
        }
        match status.code() {
            Some(0) => Ok(Status::Ok(stdout)),
            Some(2) => Ok(Status::Missing),
            Some(3) => Ok(Status::False),
            code => Err(script_error(self.label, &stderr, code.unwrap_or(-1))),
        }
    }

    fn exchange(&self, child: &mut Child) -> Result<Exchange> {
        let ctx = |what: &str| format!("{}: {what}", self.label);
        let mut stdin = child.stdin.take();
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        for fd in [
            stdin.as_ref().map(|f| f.as_raw_fd()),
            stdout.as_ref().map(|f| f.as_raw_fd()),
            stderr.as_ref().map(|f| f.as_raw_fd()),
        ]
        .into_iter()
        .flatten()
        {
            set_nonblocking(fd).map_err(|e| Error::os(e, ctx("fcntl")))?;
        }
        let mut input = self.stdin.unwrap_or(&[]);
        if input.is_empty() {
            stdin = None;
        }
        let mut ex = Exchange::default();
        // The cleanup methods, which run during shutdown, get a grace
        // period after the stop request; all others are killed at once.
        let grace = if matches!(self.method, "close" | "unload") {
            CLEANUP_GRACE
        } else {
            Duration::ZERO
        };
        let mut watch_quit = true;
        let mut deadline: Option<Instant> = None;
        let mut chunk = vec![0u8; 64 * 1024];
        while stdout.is_some() || stderr.is_some() {
            let mut fds = Vec::with_capacity(4);
            let mut which = Vec::with_capacity(4);
            if let Some(f) = &stdin {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLOUT));
                which.push(0);
            }
            if let Some(f) = &stdout {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                which.push(1);
            }
            if let Some(f) = &stderr {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                which.push(2);
            }
            if watch_quit {
                fds.push(PollFd::new(quit::fd(), PollFlags::POLLIN));
                which.push(3);
            }
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    PollTimeout::try_from(left.as_millis().min(60_000) as u32 + 1)
                        .unwrap_or(PollTimeout::MAX)
                }
            };
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(Error::os(e, ctx("poll"))),
            }
            let ready: Vec<usize> = fds
                .iter()
                .zip(&which)
                .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
                .map(|(_, &w)| w)
                .collect();
            drop(fds);
            if deadline.is_some_and(|d| Instant::now() >= d) {
                deadline = None;
                ex.interrupted = true;
                kill_group(child);
                stdin = None;
            }
            for w in ready {
                match w {
                    0 => {
                        let f = stdin.as_mut().expect("polled stdin");
                        match f.write(input) {
                            Ok(n) => input = &input[n..],
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            // The script exited or closed stdin without
                            // reading everything: its exit status decides.
                            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => input = &[],
                            Err(e) => return Err(Error::io(e, ctx("write to script"))),
                        }
                        if input.is_empty() {
                            stdin = None;
                        }
                    }
                    1 => {
                        let f = stdout.as_mut().expect("polled stdout");
                        match read_some(f, &mut chunk) {
                            Ok(Some(0)) => stdout = None,
                            Ok(Some(n)) => {
                                if ex.stdout.len() + n > self.stdout_limit {
                                    ex.overflow = true;
                                    kill_group(child);
                                    stdout = None;
                                    stdin = None;
                                } else {
                                    ex.stdout.extend_from_slice(&chunk[..n]);
                                }
                            }
                            Ok(None) => {}
                            Err(e) => return Err(Error::io(e, ctx("read from script"))),
                        }
                    }
                    2 => {
                        let f = stderr.as_mut().expect("polled stderr");
                        match read_some(f, &mut chunk) {
                            Ok(Some(0)) => stderr = None,
                            Ok(Some(n)) => {
                                let room = STDERR_KEEP.saturating_sub(ex.stderr.len());
                                ex.stderr.extend_from_slice(&chunk[..n.min(room)]);
                            }
                            Ok(None) => {}
                            Err(e) => return Err(Error::io(e, ctx("read from script"))),
                        }
                    }
                    _ => {
                        if quit::requested() {
                            watch_quit = false;
                            if grace.is_zero() {
                                ex.interrupted = true;
                                kill_group(child);
                                stdin = None;
                            } else {
                                deadline = Some(Instant::now() + grace);
                            }
                        }
                    }
                }
            }
        }
        Ok(ex)
    }
}

#[derive(Default)]
struct Exchange {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    interrupted: bool,
    overflow: bool,
}

/// `Ok(None)` when nothing was ready after all.
fn read_some(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    match f.read(buf) {
        Ok(n) => Ok(Some(n)),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => Ok(None),
        Err(e) => Err(e),
    }
}

fn set_nonblocking(fd: std::os::fd::RawFd) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    // SAFETY: the descriptor belongs to a pipe we own for the whole call.
    let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let flags = OFlag::from_bits_truncate(fcntl(bfd, FcntlArg::F_GETFL)?);
    fcntl(bfd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// SIGKILL the child's process group (the child leads it).  Only called
/// before the child is reaped, so the id cannot have been reused.
fn kill_group(child: &Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
}

/// The errno names a script may print at the start of stderr.
const ERRNO_NAMES: &[(&str, Errno)] = &[
    ("EPERM", Errno::EPERM),
    ("EIO", Errno::EIO),
    ("ENOMEM", Errno::ENOMEM),
    ("EINVAL", Errno::EINVAL),
    ("ENOSPC", Errno::ENOSPC),
    ("EDQUOT", Errno::EDQUOT),
    ("EFBIG", Errno::EFBIG),
    ("EOVERFLOW", Errno::EOVERFLOW),
    ("ESHUTDOWN", Errno::ESHUTDOWN),
    ("ENOTSUP", Errno::ENOTSUP),
    ("EOPNOTSUPP", Errno::EOPNOTSUPP),
    ("EROFS", Errno::EROFS),
    ("EACCES", Errno::EACCES),
    ("ENOENT", Errno::ENOENT),
    ("EBADF", Errno::EBADF),
    ("EAGAIN", Errno::EAGAIN),
    ("EBUSY", Errno::EBUSY),
    ("ENODEV", Errno::ENODEV),
    ("ENXIO", Errno::ENXIO),
    ("ERANGE", Errno::ERANGE),
    ("ETIMEDOUT", Errno::ETIMEDOUT),
    ("ECONNRESET", Errno::ECONNRESET),
];

/// The error a failed script reported: an optional errno name (any case)
/// then whitespace and a message, on stderr.  Without a recognised name the
/// errno is `EIO` and all of stderr is the message.  Only the first line is
/// kept in the error; a longer text goes to the debug log.
pub fn script_error(label: &str, stderr: &[u8], code: i32) -> Error {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim_end_matches(['\n', '\r']);
    let mut errno = Errno::EIO;
    let mut rest: &str = text;
    let word_len = text
        .find(|c: char| c.is_ascii_whitespace())
        .unwrap_or(text.len());
    let word = &text[..word_len];
    if let Some((_, e)) = ERRNO_NAMES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(word))
    {
        errno = *e;
        rest = text[word_len..].trim_start();
    }
    if text.contains('\n') {
        crate::log::debug(format!("{label}: {text}"));
    }
    let first = rest.lines().next().unwrap_or("").trim_end();
    let msg = if !first.is_empty() {
        format!("{label}: {first}")
    } else if word_len > 0 && rest.is_empty() {
        // Only an errno name: say which.
        format!("{label}: {word}")
    } else if code == 1 {
        format!("{label}: script exited with error, but did not print an error message on stderr")
    } else {
        format!(
            "{label}: script exited with status {code}, but did not print an error message on stderr"
        )
    };
    Error::new(errno, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_word_and_message() {
        let e = script_error("s", b"ENOSPC Out of space\n", 1);
        assert_eq!(e.errno(), Errno::ENOSPC);
        assert_eq!(e.message(), "s: Out of space");
        let e = script_error("s", b"enospc\n", 1);
        assert_eq!(e.errno(), Errno::ENOSPC);
        assert_eq!(e.message(), "s: enospc");
        // Not a word of its own: EIO, whole text.
        let e = script_error("s", b"EINVALID thing", 1);
        assert_eq!(e.errno(), Errno::EIO);
        assert_eq!(e.message(), "s: EINVALID thing");
        let e = script_error("s", b"EPERM\tno\nsecond line\n", 1);
        assert_eq!(e.errno(), Errno::EPERM);
        assert_eq!(e.message(), "s: no");
        let e = script_error("s", b"", 1);
        assert_eq!(e.errno(), Errno::EIO);
        assert!(e.message().contains("did not print an error message"));
        let e = script_error("s", b"", 9);
        assert!(e.message().contains("status 9"), "{}", e.message());
    }

    fn sh(code: &str, args: &[&str], stdin: Option<&[u8]>, limit: usize) -> Result<Status> {
        let target = Target::Snippet(code.to_string());
        Call {
            target: &target,
            label: "test",
            method: "m",
            args,
            stdin,
            stdout_limit: limit,
        }
        .run()
    }

    #[test]
    fn exit_codes() {
        assert_eq!(
            sh("echo \"$1 $2\"", &["x"], None, 100).unwrap(),
            Status::Ok(b"m x\n".to_vec())
        );
        assert_eq!(sh("exit 2", &[], None, 100).unwrap(), Status::Missing);
        assert_eq!(sh("exit 3", &[], None, 100).unwrap(), Status::False);
        let e = sh("echo EROFS read only >&2; exit 1", &[], None, 100).unwrap_err();
        assert_eq!(e.errno(), Errno::EROFS);
        assert_eq!(e.message(), "test: read only");
        let e = sh("exit 5", &[], None, 100).unwrap_err();
        assert_eq!(e.errno(), Errno::EIO);
        let e = sh("kill -9 $$", &[], None, 100).unwrap_err();
        assert!(e.message().contains("SIGKILL"), "{}", e.message());
    }

    #[test]
    fn big_stdin_and_stdout_do_not_deadlock() {
        // The script echoes its input back before reading all of it.
        let data = vec![0x5au8; 4 << 20];
        let out = sh("cat", &[], Some(&data), data.len()).unwrap();
        assert_eq!(out, Status::Ok(data));
    }

    #[test]
    fn endless_output_is_cut_off() {
        let e = sh("yes", &[], None, 1 << 20).unwrap_err();
        assert!(
            e.message().contains("more than 1048576 bytes"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn script_ignoring_stdin_is_fine() {
        let data = vec![1u8; 1 << 20];
        assert_eq!(
            sh("exit 0", &[], Some(&data), 10).unwrap(),
            Status::Ok(Vec::new())
        );
    }
}
