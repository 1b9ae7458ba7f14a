//! The transmission phase: decode a request, check it, apply it to the
//! export, encode the reply — one small function per step.
//!
//! Concurrency follows nbdkit: a connection has up to `-t` workers (one for
//! non-parallel thread models).  Workers take turns holding the connection's
//! read side to receive one whole request (header and payload), then run it
//! without any connection lock and send the reply while holding the write
//! side.  So requests run in parallel and replies go out as they finish.
//!
//! The connection's I/O is just the two halves passed to [`serve`]: a plain
//! socket split with `try_clone`, or (later) a TLS stream whose halves share
//! one lock internally.  Nothing here depends on which.

use crate::error::Error;
use crate::extents::Extents;
use crate::layers::{flags, MAX_REQUEST_SIZE};
use crate::plugin::{CacheMode, FuaMode, ZeroMode};
use crate::protocol::consts::*;
use crate::protocol::transmission::{
    block_status_reply, decode_request, error_reply, ok_reply, read_reply_header, ReplyStyle,
    Request, COMPACT_REQUEST_LEN, EXTENDED_REQUEST_LEN,
};
use crate::server::export::Export;
use crate::server::{hold, lock, quit, threads};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io::{self, BufRead, IoSlice, Read, Write};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::Scope;
use std::time::{Duration, Instant};

use crate::server::budget::{self, Budget, Grant};
/// The read half of a connection (buffered: one `read` may bring in several
/// pipelined requests).
pub use crate::server::recv::{Reader, READ_BUFFER};
/// The write half of a connection.
pub type Writer = Box<dyn Write + Send>;

/// What the transmission phase needs to know about the negotiation.
pub struct Session<'a> {
    pub export: &'a Export,
    pub style: ReplyStyle,
    /// `base:allocation` was selected for this export.
    pub base_allocation: bool,
    /// Number of workers (1 serializes the connection's requests).
    pub workers: usize,
    /// Every layer answers without waiting, so a request may run on the
    /// worker that read it (see [`worker`]).
    pub quick_layers: bool,
    /// Held around every request (`serialize_all_requests`).
    pub request_lock: Option<&'a Mutex<()>>,
    /// The connection's socket, polled briefly for the next request (see
    /// [`await_next_request`]); `None` where that cannot tell (TLS keeps
    /// its own buffer).
    pub wait_fd: Option<BorrowedFd<'a>>,
    /// The connection's socket, shut down when a layer asks for the
    /// connection to be dropped at once (see [`disconnect_now`]).
    pub socket_fd: Option<BorrowedFd<'a>>,
}

/// What a layer asked for while it ran a request (see [`disconnect_now`]
/// and [`disconnect_soon`]); ordered so that the stronger request wins.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ending {
    Stay,
    Soft,
    Force,
}

thread_local! {
    /// Set by a layer during a request: how to end the connection.
    static DISCONNECT: std::cell::Cell<Ending> = const { std::cell::Cell::new(Ending::Stay) };
}

/// Called by a layer while it runs a request (nbdkit's
/// `nbdkit_disconnect(true)`): the request gets no reply and the
/// connection is closed at once.
pub fn disconnect_now() {
    DISCONNECT.with(|d| d.set(Ending::Force));
}

/// Called by a layer while it runs a request (nbdkit's
/// `nbdkit_disconnect(false)`): this request and those already running
/// finish and are answered, every request read after it fails with
/// `ESHUTDOWN`, and the client may still say goodbye with `NBD_CMD_DISC`.
pub fn disconnect_soon() {
    DISCONNECT.with(|d| d.set(d.get().max(Ending::Soft)));
}

struct Shared<'a> {
    s: &'a Session<'a>,
    reader: Mutex<Reader>,
    writer: Mutex<Writer>,
    closing: AtomicBool,
    /// A layer asked for a soft disconnect: refuse new requests.
    refusing: AtomicBool,
    /// How long requests have been taking to run.
    pace: Pace,
    /// Whose turn it is to read: `true` while some worker holds the read
    /// side.  Workers wait on `turn_free` for it.
    turn: Mutex<bool>,
    turn_free: Condvar,
    /// Workers waiting for the read side (idle).
    waiting: AtomicUsize,
    /// Workers on this connection, the connection's own thread included.
    running: AtomicUsize,
    /// Bytes of large requests in flight on this connection.
    budget: Budget,
}

/// How long an extra worker waits for work before it exits.
const IDLE_EXIT: Duration = Duration::from_secs(2);

/// Serve requests until the client disconnects, the stream fails or the
/// server stops reading.
///
/// Workers start on demand: the connection's own thread is the first, and
/// another is spawned only when a request is handed on while no worker is
/// idle, up to `session.workers` and within the process-wide budget
/// ([`threads`]).  Extra workers exit after [`IDLE_EXIT`] without work.
pub fn serve(session: &Session<'_>, reader: Reader, writer: Writer) {
    let shared = Shared {
        s: session,
        reader: Mutex::new(reader),
        writer: Mutex::new(writer),
        closing: AtomicBool::new(false),
        refusing: AtomicBool::new(false),
        pace: Pace::new(),
        turn: Mutex::new(false),
        turn_free: Condvar::new(),
        waiting: AtomicUsize::new(0),
        running: AtomicUsize::new(1),
        budget: Budget::new(budget::PER_CONNECTION),
    };
    std::thread::scope(|scope| worker(&shared, scope, false));
}

/// Start one more worker if the connection and the process allow it.
fn add_worker<'scope, 'env>(c: &'scope Shared<'env>, scope: &'scope Scope<'scope, 'env>) {
    let max = c.s.workers.max(1);
    if c.running
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_err()
    {
        return;
    }
    let Some(permit) = threads::reserve() else {
        c.running.fetch_sub(1, Ordering::AcqRel);
        return;
    };
    let ctx = thread_context();
    let spawned = std::thread::Builder::new()
        .name("worker".into())
        .stack_size(threads::WORKER_STACK)
        .spawn_scoped(scope, move || {
            let _permit = permit;
            crate::log::set_thread_context(ctx);
            worker(c, scope, true);
            c.running.fetch_sub(1, Ordering::AcqRel);
        });
    if let Err(e) = spawned {
        c.running.fetch_sub(1, Ordering::AcqRel);
        crate::log::debug(format!("cannot start worker thread: {e}"));
    }
}

fn thread_context() -> Option<String> {
    std::thread::current().name().map(str::to_string)
}

/// A request read off the wire, with its payload if it had one.
struct Incoming<'c> {
    req: Request,
    /// Set when the request must be refused before running it.
    refuse: Option<(u32, String)>,
    /// A large request's share of the connection's and the process's
    /// buffer budgets, given back once its reply is sent.
    _held: Option<(Grant<'c>, Grant<'static>)>,
}

/// A worker keeps a buffer up to this size between requests; a larger one
/// is freed once its reply is sent.
const KEEP_BUFFER: usize = 1 << 20;

/// The read side, held by one worker at a time; handed on when dropped.
struct ReadTurn<'c, 'a> {
    c: &'c Shared<'a>,
    r: Option<MutexGuard<'c, Reader>>,
}

impl Drop for ReadTurn<'_, '_> {
    fn drop(&mut self) {
        self.r = None;
        *lock(&self.c.turn) = false;
        self.c.turn_free.notify_one();
    }
}

/// Wait for the read side.  An extra worker gives up (`None`) after
/// [`IDLE_EXIT`] without getting it.
fn take_turn<'c, 'a>(c: &'c Shared<'a>, extra: bool) -> Option<ReadTurn<'c, 'a>> {
    let mut taken = lock(&c.turn);
    if *taken {
        c.waiting.fetch_add(1, Ordering::AcqRel);
        let deadline = Instant::now() + IDLE_EXIT;
        while *taken {
            if extra {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || c.closing.load(Ordering::Acquire) {
                    c.waiting.fetch_sub(1, Ordering::AcqRel);
                    return None;
                }
                taken = c
                    .turn_free
                    .wait_timeout(taken, left)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            } else {
                taken = c.turn_free.wait(taken).unwrap_or_else(|p| p.into_inner());
            }
        }
        c.waiting.fetch_sub(1, Ordering::AcqRel);
    }
    *taken = true;
    drop(taken);
    Some(ReadTurn {
        c,
        r: Some(lock(&c.reader)),
    })
}

fn worker<'scope, 'env>(c: &'scope Shared<'env>, scope: &'scope Scope<'scope, 'env>, extra: bool) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let Some(mut turn) = take_turn(c, extra) else {
            return;
        };
        let mut ran_inline = false;
        loop {
            if c.closing.load(Ordering::Acquire) {
                return;
            }
            let Some(r) = turn.r.as_mut() else {
                return;
            };
            if ran_inline && r.buffer().is_empty() {
                if let Some(fd) = c.s.wait_fd {
                    await_next_request(fd);
                }
            }
            let incoming = match receive(c, r, &mut buf) {
                Ok(Some(inc)) => inc,
                Ok(None) => {
                    c.closing.store(true, Ordering::Release);
                    return;
                }
                Err(e) => {
                    crate::log::debug(format!("connection closed: {e}"));
                    c.closing.store(true, Ordering::Release);
                    return;
                }
            };
            // When the layers never wait, no other request is waiting in
            // the read buffer and this connection's requests have been
            // quick, run this one here and keep the read side: waking
            // another worker just to wait for the next request costs more
            // than the request itself.  Otherwise hand the read side on
            // first, so requests overlap (a plugin that may wait for a disk
            // always does this, so one slow read never holds up the next);
            // with no idle worker to take it, start one.
            if c.s.workers > 1 && c.s.quick_layers && r.buffer().is_empty() && c.pace.quick() {
                ran_inline = true;
                if !run_and_reply(c, incoming, &mut buf) {
                    return;
                }
            } else {
                drop(turn);
                if c.s.workers > 1 && c.waiting.load(Ordering::Acquire) == 0 {
                    add_worker(c, scope);
                }
                if !run_and_reply(c, incoming, &mut buf) {
                    return;
                }
                break;
            }
        }
    }
}

/// How long a connection's requests have been taking: a moving average of
/// their run times, deciding whether the next one may run inline.
struct Pace(AtomicU64);

impl Pace {
    /// Requests averaging less than this run inline (see [`worker`]): a
    /// hand-off to another worker costs a few microseconds of wake-ups.
    const INLINE_BELOW_NS: u64 = 50_000;
    /// Where a connection starts: slow, so that its first requests always
    /// overlap and a slow plugin never runs inline.
    const INITIAL_NS: u64 = 1_000_000;

    fn new() -> Self {
        Pace(AtomicU64::new(Self::INITIAL_NS))
    }

    /// Whether recent requests ran quickly enough to run the next inline.
    fn quick(&self) -> bool {
        self.0.load(Ordering::Relaxed) < Self::INLINE_BELOW_NS
    }

    /// Fold one request's run time in (each new one weighs a quarter).
    /// Workers race on this; a lost update only blurs the average.
    fn ran_for(&self, ns: u64) {
        let old = self.0.load(Ordering::Relaxed);
        self.0.store(old - old / 4 + ns / 4, Ordering::Relaxed);
    }
}

/// How long a worker that ran a request inline polls for the next one
/// before blocking in `read`.
const SPIN: Duration = Duration::from_micros(50);
/// Set while some worker spins: one at a time in the whole server, so
/// spinning never takes more than one core.
static SPINNING: AtomicBool = AtomicBool::new(false);

/// Poll the socket for up to [`SPIN`] before the worker blocks in `read`.
/// A client at a low queue depth sends its next request within a few tens
/// of microseconds; a worker that went to sleep meanwhile must be woken,
/// which on a virtual machine costs more than the request (fio 4k random
/// reads at iodepth 1: 65-75 us mean latency blocking, 25 us polling).
/// The cost is at most `SPIN` of one core after each such request; an idle
/// connection costs nothing.
fn await_next_request(fd: BorrowedFd<'_>) {
    if SPINNING.swap(true, Ordering::Acquire) {
        return;
    }
    let start = Instant::now();
    loop {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        // Readable, closed or failed: the read that follows finds out.
        if !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0)) || start.elapsed() >= SPIN {
            break;
        }
        std::hint::spin_loop();
    }
    SPINNING.store(false, Ordering::Release);
}

/// Run one request and send its reply.  `false` when the connection is
/// finished (the reply could not be sent).
fn run_and_reply(c: &Shared<'_>, incoming: Incoming<'_>, buf: &mut Vec<u8>) -> bool {
    let Incoming {
        req,
        refuse,
        _held: held,
    } = incoming;
    if crate::log::verbose() {
        crate::log::debug(format!(
            "{} flags=0x{:x} offset={} length={}",
            command_name(req.command),
            req.flags,
            req.offset,
            req.length
        ));
    }
    // A disconnect asked for on this thread outside any request (from
    // `.open`, say) is not this request's: nbdkit ignores it.
    DISCONNECT.with(|d| d.set(Ending::Stay));
    let outcome = match refuse {
        Some((err, msg)) => {
            crate::log::error(format!(
                "invalid request: {}: {msg}",
                command_name(req.command)
            ));
            Outcome::Error(err)
        }
        None if quit::requested() || c.refusing.load(Ordering::Acquire) => {
            Outcome::Error(NBD_ESHUTDOWN)
        }
        None => {
            let started = Instant::now();
            let outcome = {
                let _guard = hold(c.s.request_lock);
                execute(c.s, &req, buf)
            };
            c.pace
                .ran_for(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
            outcome
        }
    };
    let asked = DISCONNECT.with(|d| d.replace(Ending::Stay));
    if asked == Ending::Soft {
        crate::log::debug("a layer asked to end the connection: refusing new requests");
        c.refusing.store(true, Ordering::Release);
    }
    if asked == Ending::Force {
        crate::log::debug("a layer asked to drop the connection: closing it without a reply");
        c.closing.store(true, Ordering::Release);
        if let Some(fd) = c.s.socket_fd {
            // Wakes the worker blocked reading the next request.
            let _ = nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                nix::sys::socket::Shutdown::Both,
            );
        }
        return false;
    }
    let mut w = lock(&c.writer);
    let sent = send_reply(c.s, &mut **w, &req, outcome, buf);
    drop(w);
    if buf.len() > KEEP_BUFFER {
        *buf = Vec::new();
    }
    drop(held);
    if let Err(e) = sent {
        crate::log::debug(format!("write reply: {e}"));
        c.closing.store(true, Ordering::Release);
        return false;
    }
    true
}

/// Read one request (and its payload into `buf`).  `Ok(None)` means the
/// client is gone: clean EOF or `NBD_CMD_DISC`.
fn receive<'c>(
    c: &'c Shared<'_>,
    r: &mut Reader,
    buf: &mut Vec<u8>,
) -> io::Result<Option<Incoming<'c>>> {
    let s = c.s;
    let extended = s.style == ReplyStyle::Extended;
    let len = if extended {
        EXTENDED_REQUEST_LEN
    } else {
        COMPACT_REQUEST_LEN
    };
    let mut hdr = [0u8; EXTENDED_REQUEST_LEN];
    if !read_exact_or_eof(r, &mut hdr[..len])? {
        return Ok(None);
    }
    let req = decode_request(&hdr[..len], extended)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    if req.command == NBD_CMD_DISC {
        return Ok(None);
    }
    let has_payload =
        req.command == NBD_CMD_WRITE || (extended && req.flags & NBD_CMD_FLAG_PAYLOAD_LEN != 0);
    let payload = if has_payload { req.length } else { 0 };
    // Take a large request's buffer from the budgets before reading its
    // payload; while they are spent this worker waits here, holding the
    // read side, and the client's socket is not read (back-pressure).
    let size = if req.command == NBD_CMD_READ {
        req.length
    } else {
        payload
    };
    let held = if size > budget::SMALL && size <= MAX_REQUEST_SIZE {
        let stopped = || io::Error::new(io::ErrorKind::Interrupted, "server stopping");
        let conn = c.budget.take(size, &c.closing).ok_or_else(stopped)?;
        let global = budget::global()
            .take(size, &c.closing)
            .ok_or_else(stopped)?;
        Some((conn, global))
    } else {
        None
    };
    let mut refuse = None;
    if payload > MAX_REQUEST_SIZE {
        if extended {
            // The spec lets a server hang up on a payload larger than it
            // advertised; skipping gigabytes is not worth it.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("request payload too large ({payload} bytes)"),
            ));
        }
        skip(r, payload)?;
        refuse = Some((NBD_ENOMEM, format!("request too large ({payload} bytes)")));
    } else if payload > 0 {
        let n = payload as usize;
        if buf.len() < n {
            buf.resize(n, 0);
        }
        r.read_exact(&mut buf[..n])?;
    }
    if refuse.is_none() {
        refuse = validate(s, &req, has_payload).err();
    }
    Ok(Some(Incoming {
        req,
        refuse,
        _held: held,
    }))
}

/// Fill `buf`; `Ok(false)` on a clean EOF before its first byte (the peer
/// closed between messages), an error on EOF inside it.
pub fn read_exact_or_eof(r: &mut Reader, buf: &mut [u8]) -> io::Result<bool> {
    if r.fill_buf()?.is_empty() {
        return Ok(false);
    }
    r.read_exact(buf)?;
    Ok(true)
}

/// Read and drop `count` bytes so the stream stays in sync.
fn skip(r: &mut Reader, count: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.by_ref().take(count), &mut io::sink())?;
    if copied < count {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Check a request against the export before running it, as nbdkit does.
fn validate(s: &Session<'_>, req: &Request, has_payload: bool) -> Result<(), (u32, String)> {
    let e = s.export;
    let caps = &e.caps;
    let structured = s.style != ReplyStyle::Simple;
    let extended = s.style == ReplyStyle::Extended;
    let einval = |msg: &str| Err((NBD_EINVAL, msg.to_string()));

    let allowed: u16 = match req.command {
        NBD_CMD_READ => NBD_CMD_FLAG_DF,
        NBD_CMD_WRITE | NBD_CMD_TRIM => NBD_CMD_FLAG_FUA,
        NBD_CMD_WRITE_ZEROES => NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO,
        NBD_CMD_BLOCK_STATUS => NBD_CMD_FLAG_REQ_ONE,
        NBD_CMD_FLUSH | NBD_CMD_CACHE => 0,
        _ => return einval("unknown command"),
    } | if extended {
        NBD_CMD_FLAG_PAYLOAD_LEN
    } else {
        0
    };
    if req.flags & !allowed != 0 {
        return einval(&format!("invalid flags 0x{:x} for this command", req.flags));
    }
    if has_payload && req.command != NBD_CMD_WRITE {
        return einval("unexpected payload");
    }
    if req.flags & NBD_CMD_FLAG_DF != 0 && !structured {
        return einval("DF flag requires structured replies");
    }
    if req.flags & NBD_CMD_FLAG_FUA != 0 && caps.fua == FuaMode::None {
        return einval("FUA flag not supported");
    }
    if req.flags & NBD_CMD_FLAG_FAST_ZERO != 0 && !caps.fast_zero {
        return einval("fast zero not supported");
    }

    match req.command {
        NBD_CMD_FLUSH => {
            if !caps.flush {
                return einval("flush not supported");
            }
            if req.offset != 0 || req.length != 0 {
                return einval("flush: offset and length must be zero");
            }
            return Ok(());
        }
        NBD_CMD_WRITE | NBD_CMD_TRIM | NBD_CMD_WRITE_ZEROES if !caps.write => {
            return Err((NBD_EPERM, "export is read-only".into()));
        }
        NBD_CMD_TRIM if !caps.trim => return einval("trim not supported"),
        NBD_CMD_WRITE_ZEROES if caps.zero == ZeroMode::None => {
            return einval("write zeroes not supported")
        }
        NBD_CMD_CACHE if caps.cache == CacheMode::None => return einval("cache not supported"),
        NBD_CMD_BLOCK_STATUS if !(structured && s.base_allocation) => {
            return einval("block status requires structured replies and base:allocation")
        }
        _ => {}
    }

    let in_range = req.length > 0 && req.offset <= e.size && req.length <= e.size - req.offset;
    if !in_range {
        let err = match req.command {
            NBD_CMD_WRITE | NBD_CMD_WRITE_ZEROES if req.length > 0 => NBD_ENOSPC,
            _ => NBD_EINVAL,
        };
        return Err((
            err,
            format!(
                "offset {} and length {} are out of range for an export of size {}",
                req.offset, req.length, e.size
            ),
        ));
    }
    if req.command == NBD_CMD_READ && req.length > MAX_REQUEST_SIZE {
        return Err((NBD_ENOMEM, format!("read too large ({} bytes)", req.length)));
    }
    Ok(())
}

/// The result of running a request.
enum Outcome {
    Ok,
    /// `buf[..n]` holds the data read.
    Read(usize),
    BlockStatus(Vec<(u64, u32)>),
    Error(u32),
}

fn execute(s: &Session<'_>, req: &Request, buf: &mut Vec<u8>) -> Outcome {
    let ctx = s.export.ctx();
    let fua = if req.flags & NBD_CMD_FLAG_FUA != 0 {
        flags::FUA
    } else {
        0
    };
    let result = match req.command {
        NBD_CMD_READ => {
            let n = req.length as usize;
            if buf.len() < n {
                buf.resize(n, 0);
            }
            ctx.pread(&mut buf[..n], req.offset, 0)
                .map(|()| Outcome::Read(n))
        }
        NBD_CMD_WRITE => ctx
            .pwrite(&buf[..req.length as usize], req.offset, fua)
            .map(|()| Outcome::Ok),
        NBD_CMD_FLUSH => ctx.flush(0).map(|()| Outcome::Ok),
        NBD_CMD_TRIM => ctx.trim(req.length, req.offset, fua).map(|()| Outcome::Ok),
        NBD_CMD_CACHE => ctx.cache(req.length, req.offset, 0).map(|()| Outcome::Ok),
        NBD_CMD_WRITE_ZEROES => {
            let mut f = fua;
            if req.flags & NBD_CMD_FLAG_NO_HOLE == 0 {
                f |= flags::MAY_TRIM;
            }
            if req.flags & NBD_CMD_FLAG_FAST_ZERO != 0 {
                f |= flags::FAST_ZERO;
            }
            ctx.zero(req.length, req.offset, f).map(|()| Outcome::Ok)
        }
        NBD_CMD_BLOCK_STATUS => block_status(s, req).map(Outcome::BlockStatus),
        _ => Err(Error::new(Errno::EINVAL, "unknown command")),
    };
    match result {
        Ok(o) => o,
        Err(e) => {
            crate::log::error(format!("{}: {}", command_name(req.command), e.message()));
            Outcome::Error(nbd_error(e.errno(), req.flags))
        }
    }
}

fn block_status(s: &Session<'_>, req: &Request) -> crate::error::Result<Vec<(u64, u32)>> {
    let end = req.offset + req.length;
    let mut extents = Extents::new(req.offset, end);
    let req_one = req.flags & NBD_CMD_FLAG_REQ_ONE != 0;
    s.export
        .ctx()
        .extents(&mut extents, if req_one { flags::REQ_ONE } else { 0 })?;
    let mut list: Vec<(u64, u32)> = extents
        .list()
        .iter()
        .map(|e| (e.length, e.flags & (NBD_STATE_HOLE | NBD_STATE_ZERO)))
        .collect();
    if list.is_empty() {
        return Err(Error::new(Errno::EINVAL, "extents: no extents returned"));
    }
    if req_one {
        list.truncate(1);
    }
    Ok(list)
}

/// Map an errno to the NBD error a client sees, as nbdkit does.
pub fn nbd_error(errno: Errno, cmd_flags: u16) -> u32 {
    match errno {
        Errno::EROFS | Errno::EPERM => NBD_EPERM,
        Errno::EIO => NBD_EIO,
        Errno::ENOMEM => NBD_ENOMEM,
        Errno::EDQUOT | Errno::EFBIG | Errno::ENOSPC => NBD_ENOSPC,
        Errno::ESHUTDOWN => NBD_ESHUTDOWN,
        Errno::ENOTSUP if cmd_flags & NBD_CMD_FLAG_FAST_ZERO != 0 => NBD_ENOTSUP,
        Errno::EOVERFLOW if cmd_flags & NBD_CMD_FLAG_DF != 0 => NBD_EOVERFLOW,
        _ => NBD_EINVAL,
    }
}

fn send_reply(
    s: &Session<'_>,
    w: &mut dyn Write,
    req: &Request,
    outcome: Outcome,
    buf: &[u8],
) -> io::Result<()> {
    match outcome {
        Outcome::Ok => w.write_all(ok_reply(s.style, req.cookie, req.offset).as_bytes())?,
        Outcome::Read(n) => {
            let hdr = read_reply_header(s.style, req.cookie, req.offset, n as u32);
            write_all_vectored(
                w,
                &mut [IoSlice::new(hdr.as_bytes()), IoSlice::new(&buf[..n])],
            )?;
        }
        Outcome::BlockStatus(list) => w.write_all(&block_status_reply(
            s.style, req.cookie, req.offset, 1, &list,
        ))?,
        Outcome::Error(err) => {
            w.write_all(error_reply(s.style, req.cookie, req.offset, err, req.command).as_bytes())?
        }
    }
    w.flush()
}

/// Write every slice, retrying short writes (one `writev` in the common case).
pub fn write_all_vectored(w: &mut dyn Write, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_goes_inline_after_quick_requests_and_back_after_a_slow_one() {
        let p = Pace::new();
        assert!(!p.quick(), "a new connection overlaps its first requests");
        let mut n = 0;
        while !p.quick() {
            p.ran_for(2_000);
            n += 1;
            assert!(n < 100, "quick requests never turned inline on");
        }
        assert!(n > 5, "inline after only {n} requests");
        p.ran_for(1_000_000);
        assert!(!p.quick(), "a 1 ms request must end inline running");
        p.ran_for(u64::MAX);
        assert!(!p.quick());
        for _ in 0..200 {
            p.ran_for(0);
        }
        assert!(p.quick(), "the average comes down again");
    }

    #[test]
    fn polling_for_the_next_request_ends_and_lets_go() {
        use std::os::fd::AsFd;
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        // Nothing arrives: gives up (after SPIN) and frees the spinner slot.
        await_next_request(a.as_fd());
        assert!(!SPINNING.load(Ordering::Acquire));
        // A request is waiting, or the peer has gone: returns, slot free.
        b.write_all(b"x").unwrap();
        await_next_request(a.as_fd());
        drop(b);
        await_next_request(a.as_fd());
        assert!(!SPINNING.load(Ordering::Acquire));
        // Someone else spinning: this one does not, and leaves theirs alone.
        SPINNING.store(true, Ordering::Release);
        await_next_request(a.as_fd());
        assert!(SPINNING.swap(false, Ordering::AcqRel));
    }

    #[test]
    fn errno_mapping_follows_nbdkit() {
        assert_eq!(nbd_error(Errno::EROFS, 0), NBD_EPERM);
        assert_eq!(nbd_error(Errno::EDQUOT, 0), NBD_ENOSPC);
        assert_eq!(nbd_error(Errno::ENOTSUP, 0), NBD_EINVAL);
        assert_eq!(
            nbd_error(Errno::ENOTSUP, NBD_CMD_FLAG_FAST_ZERO),
            NBD_ENOTSUP
        );
        assert_eq!(nbd_error(Errno::EOVERFLOW, 0), NBD_EINVAL);
        assert_eq!(nbd_error(Errno::EOVERFLOW, NBD_CMD_FLAG_DF), NBD_EOVERFLOW);
        assert_eq!(nbd_error(Errno::EBADF, 0), NBD_EINVAL);
    }
}
