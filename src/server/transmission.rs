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
    block_status_reply, decode_request, error_reply, ok_reply, read_reply_header, whole_request_at,
    ReplyHeader, ReplyStyle, Request, COMPACT_REQUEST_LEN, EXTENDED_REQUEST_LEN,
};
use crate::server::export::Export;
use crate::server::{hold, lock, quit, threads};
use nix::errno::Errno;
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
    /// The length of the request's payload left in the read buffer (0 when
    /// it was read into the worker's buffer): the caller passes it to the
    /// plugin from there (a write's data), then consumes it.
    in_place: usize,
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
    // Replies of requests run inline, not yet sent (see [`send_reply`]).
    let mut out: Vec<u8> = Vec::new();
    let extended = c.s.style == ReplyStyle::Extended;
    let mut wait = Wait::default();
    loop {
        let Some(mut turn) = take_turn(c, extra) else {
            return;
        };
        // The last request ran inline and no whole request follows it in
        // the read buffer: wait for the next one (see [`Wait`]).
        let mut wait_next = false;
        // Requests run inline since this worker last slept (see [`Wait`]).
        let mut burst = 0u32;
        loop {
            if c.closing.load(Ordering::Acquire) {
                return;
            }
            let Some(r) = turn.r.as_mut() else {
                return;
            };
            if wait_next {
                if let Some(fd) = c.s.wait_fd {
                    wait.before_read(r, fd, &mut burst);
                }
            }
            // When the layers never wait and this connection's requests
            // have been quick, run this one here and keep the read side:
            // waking another worker costs more than the request itself.
            // Its payload is then passed on straight from the read buffer.
            let inline = c.s.quick_layers && c.pace.quick();
            let incoming = match receive(c, r, &mut buf, inline) {
                Ok(Some(inc)) => inc,
                Ok(None) => {
                    // The client's goodbye may follow requests whose
                    // replies are still gathered here.
                    let _ = flush_replies(c, &mut out);
                    c.closing.store(true, Ordering::Release);
                    return;
                }
                Err(e) => {
                    crate::log::debug(format!("connection closed: {e}"));
                    c.closing.store(true, Ordering::Release);
                    return;
                }
            };
            // Run inline: while the read buffer holds another whole request
            // (after this one's payload), the reply waits in `out` to go out
            // with the next ones in one write.  Otherwise hand the read side
            // on first, so requests overlap (a plugin that may wait for a
            // disk always does this, so one slow read never holds up the
            // next); with no idle worker to take it, start one.
            if inline {
                burst += 1;
                let n = incoming.in_place;
                let more = whole_request_at(&r.buffer()[n..], extended);
                wait_next = !more;
                let ok = run_and_reply(c, incoming, &mut buf, &r.buffer()[..n], &mut out, more);
                r.consume(n);
                if !ok {
                    return;
                }
            } else {
                if flush_replies(c, &mut out).is_err() {
                    c.closing.store(true, Ordering::Release);
                    return;
                }
                drop(turn);
                if c.s.workers > 1 && c.waiting.load(Ordering::Acquire) == 0 {
                    add_worker(c, scope);
                }
                if !run_and_reply(c, incoming, &mut buf, &[], &mut out, false) {
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

/// How a worker that runs requests inline waits for the next one once the
/// read buffer holds no whole request: by spinning on the socket (see
/// [`await_next_request`]) or by blocking in `read`.
///
/// Spinning pays for a client that waits for each reply before it sends
/// the next request (low queue depth): a worker that went to sleep must be
/// woken, which on a virtual machine costs more than the request.  It does
/// not pay for a client that streams requests regardless of replies (deep
/// queues): the spin catches each request as it trickles in, one per
/// `recv`, and burns a core doing it, where a sleeping worker wakes to
/// several requests at a time and answers them in one write.
///
/// Which one pays shows only while blocking: a streaming client's requests
/// gather while the worker sleeps, so each wake-up finds several.  So a
/// worker spins, and every [`PROBE_EVERY`] times tries blocking instead; it
/// keeps blocking while wake-ups bring [`DEEP_BURST`] requests or more, and
/// goes back to spinning after [`STREAK`] wake-ups in a row that brought
/// fewer.
#[derive(Default)]
struct Wait {
    block: bool,
    /// Spinning: waits since blocking was last tried.  Blocking: shallow
    /// wake-ups in a row.
    count: u32,
}

/// How often a spinning worker tries blocking.
const PROBE_EVERY: u32 = 256;
/// Shallow wake-ups in a row that send a blocking worker back to spinning.
const STREAK: u32 = 8;
/// A wake-up that brings fewer requests than this did not pay for itself.
const DEEP_BURST: u32 = 4;

impl Wait {
    /// Called when the read buffer holds no whole request, after `burst`
    /// requests were run since this worker last slept.
    fn before_read(&mut self, r: &mut Reader, fd: BorrowedFd<'_>, burst: &mut u32) {
        if !self.block {
            *burst = 0;
            self.count += 1;
            if self.count < PROBE_EVERY {
                await_next_request(r, fd);
            } else {
                *self = Wait {
                    block: true,
                    count: 0,
                };
            }
            return;
        }
        // Only a read that finds nothing waiting puts the worker to sleep:
        // that ends the burst.
        if !matches!(r.fill_now(fd), Ok(None)) {
            return;
        }
        if *burst >= DEEP_BURST {
            self.count = 0;
        } else {
            self.count += 1;
            if self.count >= STREAK {
                *self = Wait::default();
            }
        }
        *burst = 0;
    }
}

/// Try to read the socket for up to [`SPIN`] before the worker blocks in
/// `read`.  Each try is a non-blocking `recv`, so the one that finds the
/// request has also read it.  The cost is at most `SPIN` of one core; an idle connection costs
/// nothing (fio 4k random reads at iodepth 1: 65-75 us mean latency
/// blocking, 25 us spinning).
fn await_next_request(r: &mut Reader, fd: BorrowedFd<'_>) {
    if SPINNING.swap(true, Ordering::Acquire) {
        return;
    }
    let start = Instant::now();
    // Data, end of file or an error: the read that follows finds out.
    while let Ok(None) = r.fill_now(fd) {
        if start.elapsed() >= SPIN {
            break;
        }
        std::hint::spin_loop();
    }
    SPINNING.store(false, Ordering::Release);
}

/// Run one request and send its reply.  `false` when the connection is
/// finished (the reply could not be sent).  A write's payload is `payload`
/// when the request left it in the read buffer, else in `buf`.  With
/// `defer`, a small reply may wait in `out` for the next ones (see
/// [`send_reply`]).
fn run_and_reply(
    c: &Shared<'_>,
    incoming: Incoming<'_>,
    buf: &mut Vec<u8>,
    payload: &[u8],
    out: &mut Vec<u8>,
    defer: bool,
) -> bool {
    let Incoming {
        req,
        refuse,
        in_place,
        _held: held,
    } = incoming;
    debug_assert_eq!(in_place, payload.len());
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
                execute(c.s, &req, buf, payload)
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
    let sent = send_reply(c, out, &req, outcome, buf, defer);
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

/// Read one request, and its payload into `buf` or, with `in_place` and
/// the whole payload already read, left in the read buffer (see
/// [`Incoming::in_place`]).  `Ok(None)` means the client is gone: clean EOF
/// or `NBD_CMD_DISC`.
fn receive<'c>(
    c: &'c Shared<'_>,
    r: &mut Reader,
    buf: &mut Vec<u8>,
    in_place: bool,
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
    let mut left = 0;
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
        if in_place && r.buffer().len() >= n {
            left = n;
        } else {
            if buf.len() < n {
                buf.resize(n, 0);
            }
            r.read_exact(&mut buf[..n])?;
        }
    }
    if refuse.is_none() {
        refuse = validate(s, &req, has_payload).err();
    }
    Ok(Some(Incoming {
        req,
        refuse,
        in_place: left,
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

/// Run one request.  A read's data goes to `buf`; a write's payload is
/// `payload` if it is not empty, else the start of `buf`.
fn execute(s: &Session<'_>, req: &Request, buf: &mut Vec<u8>, payload: &[u8]) -> Outcome {
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
        NBD_CMD_WRITE => {
            let data = if payload.is_empty() {
                &buf[..req.length as usize]
            } else {
                payload
            };
            ctx.pwrite(data, req.offset, fua).map(|()| Outcome::Ok)
        }
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

/// A reply's header: fixed-size, or built (block status).
enum Header {
    Fixed(ReplyHeader),
    Built(Vec<u8>),
}

impl Header {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Header::Fixed(h) => h.as_bytes(),
            Header::Built(v) => v,
        }
    }
}

/// Replies gathered in `out` are sent once they reach this size.
const BATCH_MAX: usize = 256 * 1024;
/// Read data up to this size is copied into `out` to wait for the next
/// replies; a larger reply goes out at once (with whatever `out` holds, in
/// one `writev`), so large reads are never copied twice.
const BATCH_COPY_MAX: usize = 16 * 1024;

/// Send one reply.  With `defer` (another whole request is waiting in the
/// read buffer, to be run on this thread next) a small reply is only
/// appended to `out`; otherwise it goes out now, after what `out` holds, in
/// one `writev`.  So the replies of a burst of pipelined requests cost one
/// system call, and no reply ever waits for a request that has not arrived.
fn send_reply(
    c: &Shared<'_>,
    out: &mut Vec<u8>,
    req: &Request,
    outcome: Outcome,
    buf: &[u8],
    defer: bool,
) -> io::Result<()> {
    let s = c.s;
    let (hdr, data) = match outcome {
        Outcome::Ok => (
            Header::Fixed(ok_reply(s.style, req.cookie, req.offset)),
            &[][..],
        ),
        Outcome::Read(n) => (
            Header::Fixed(read_reply_header(s.style, req.cookie, req.offset, n as u32)),
            &buf[..n],
        ),
        Outcome::BlockStatus(list) => (
            Header::Built(block_status_reply(
                s.style, req.cookie, req.offset, 1, &list,
            )),
            &[][..],
        ),
        Outcome::Error(err) => (
            Header::Fixed(error_reply(
                s.style,
                req.cookie,
                req.offset,
                err,
                req.command,
            )),
            &[][..],
        ),
    };
    let hdr = hdr.as_bytes();
    if defer && data.len() <= BATCH_COPY_MAX && out.len() + hdr.len() + data.len() <= BATCH_MAX {
        out.extend_from_slice(hdr);
        out.extend_from_slice(data);
        return Ok(());
    }
    let mut w = lock(&c.writer);
    let sent = write_all_vectored(
        &mut **w,
        &mut [IoSlice::new(out), IoSlice::new(hdr), IoSlice::new(data)],
    )
    .and_then(|()| w.flush());
    out.clear();
    sent
}

/// Send the replies gathered in `out`, if any.
fn flush_replies(c: &Shared<'_>, out: &mut Vec<u8>) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let mut w = lock(&c.writer);
    let sent = w.write_all(out).and_then(|()| w.flush());
    out.clear();
    sent
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

    /// Held by the tests that spin: the spinner slot is process-wide.
    static SPIN_TESTS: Mutex<()> = Mutex::new(());

    #[test]
    fn a_worker_blocks_while_wake_ups_bring_deep_bursts() {
        use std::os::fd::AsFd;
        let _one = lock(&SPIN_TESTS);
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut r = Reader::new(Box::new(a.try_clone().unwrap()));
        let mut w = Wait::default();
        let mut burst = 0;
        // Spinning (nothing arrives) until it is time to try blocking.
        for _ in 0..PROBE_EVERY - 1 {
            w.before_read(&mut r, a.as_fd(), &mut burst);
            assert!(!w.block);
        }
        w.before_read(&mut r, a.as_fd(), &mut burst);
        assert!(w.block);
        // Deep bursts keep it blocking, however many.
        for _ in 0..3 * STREAK {
            burst = DEEP_BURST;
            w.before_read(&mut r, a.as_fd(), &mut burst);
            assert_eq!(burst, 0, "sleeping ends the burst");
            assert!(w.block);
        }
        // A request already waiting means no sleep: the burst goes on.
        b.write_all(b"x").unwrap();
        burst = 1;
        w.before_read(&mut r, a.as_fd(), &mut burst);
        assert_eq!((burst, r.buffer()), (1, &b"x"[..]));
        // Shallow wake-ups in a row send it back to spinning.
        for i in 1..=STREAK {
            burst = 1;
            w.before_read(&mut r, a.as_fd(), &mut burst);
            assert_eq!(w.block, i < STREAK);
        }
    }

    #[test]
    fn polling_for_the_next_request_ends_and_lets_go() {
        use std::os::fd::AsFd;
        let _one = lock(&SPIN_TESTS);
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut r = Reader::new(Box::new(a.try_clone().unwrap()));
        // Nothing arrives: gives up (after SPIN) and frees the spinner slot.
        await_next_request(&mut r, a.as_fd());
        assert!(!SPINNING.load(Ordering::Acquire));
        assert!(r.buffer().is_empty());
        // A request is waiting: read in, slot free.
        b.write_all(b"x").unwrap();
        await_next_request(&mut r, a.as_fd());
        assert_eq!(r.buffer(), b"x");
        // The peer has gone: returns.
        drop(b);
        await_next_request(&mut r, a.as_fd());
        assert!(!SPINNING.load(Ordering::Acquire));
        // Someone else spinning: this one does not, and leaves theirs alone.
        SPINNING.store(true, Ordering::Release);
        await_next_request(&mut r, a.as_fd());
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
