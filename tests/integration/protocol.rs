//! The NBD protocol spoken with raw sockets (bytes written by hand).

use crate::harness::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_STARTTLS: u32 = 5;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = 0x8000_0001;
const REP_ERR_BIT: u32 = 0x8000_0000;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;

const FLAG_HAS_FLAGS: u16 = 1;
const FLAG_READ_ONLY: u16 = 2;

const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;
const EPERM: u32 = 1;

struct Conn {
    s: UnixStream,
}

/// Append one compact request (header, then `payload`) to `b`.
fn push_request(
    b: &mut Vec<u8>,
    flags: u16,
    typ: u16,
    cookie: u64,
    offset: u64,
    len: u32,
    payload: &[u8],
) {
    b.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&typ.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(payload);
}

impl Conn {
    /// Connect and read the 18-byte newstyle greeting; returns handshake flags.
    fn newstyle(path: &Path) -> (Conn, u16) {
        let s = UnixStream::connect(path).expect("connect");
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.set_write_timeout(Some(TIMEOUT)).unwrap();
        let mut c = Conn { s };
        assert_eq!(c.u64(), NBDMAGIC, "bad NBDMAGIC");
        assert_eq!(c.u64(), IHAVEOPT, "not newstyle (IHAVEOPT missing)");
        let flags = c.u16();
        (c, flags)
    }

    /// Newstyle greeting plus client flags (fixed newstyle, no zeroes).
    fn fixed(path: &Path) -> Conn {
        let (mut c, flags) = Conn::newstyle(path);
        assert_eq!(flags & 1, 1, "server is not fixed newstyle");
        c.put(&3u32.to_be_bytes());
        c
    }

    fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.s
            .read_exact(&mut v)
            .unwrap_or_else(|e| panic!("reading {n} bytes from server: {e}"));
        v
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.read_exact(2).try_into().unwrap())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.read_exact(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.read_exact(8).try_into().unwrap())
    }
    fn put(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("write to server");
    }

    fn send_opt(&mut self, opt: u32, data: &[u8]) {
        let mut b = Vec::with_capacity(16 + data.len());
        b.extend_from_slice(&IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.put(&b);
    }

    /// One option reply: (option, reply type, payload).
    fn opt_reply(&mut self) -> (u32, u32, Vec<u8>) {
        assert_eq!(self.u64(), OPT_REPLY_MAGIC, "bad option reply magic");
        let opt = self.u32();
        let rtype = self.u32();
        let len = self.u32() as usize;
        let data = self.read_exact(len);
        (opt, rtype, data)
    }

    /// Send INFO or GO for `name` with no info requests; collect replies up
    /// to the final one. Returns (final type, INFO_EXPORT (size, eflags)).
    fn info_or_go(&mut self, opt: u32, name: &[u8]) -> (u32, Option<(u64, u16)>) {
        let mut d = Vec::new();
        d.extend_from_slice(&(name.len() as u32).to_be_bytes());
        d.extend_from_slice(name);
        d.extend_from_slice(&0u16.to_be_bytes());
        self.send_opt(opt, &d);
        let mut export = None;
        loop {
            let (o, t, data) = self.opt_reply();
            assert_eq!(o, opt, "reply for wrong option");
            if t == REP_INFO {
                assert!(data.len() >= 2);
                let kind = u16::from_be_bytes([data[0], data[1]]);
                if kind == 0 {
                    assert_eq!(data.len(), 12, "NBD_INFO_EXPORT length");
                    let size = u64::from_be_bytes(data[2..10].try_into().unwrap());
                    let fl = u16::from_be_bytes([data[10], data[11]]);
                    export = Some((size, fl));
                }
                continue;
            }
            return (t, export);
        }
    }

    /// GO on the default export; panics unless it succeeds. Returns (size, eflags).
    fn go(&mut self) -> (u64, u16) {
        let (t, e) = self.info_or_go(OPT_GO, b"");
        assert_eq!(t, REP_ACK, "NBD_OPT_GO failed with reply type {t:#x}");
        e.expect("GO succeeded without NBD_INFO_EXPORT")
    }

    fn request(
        &mut self,
        flags: u16,
        typ: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) {
        let mut b = Vec::with_capacity(28 + payload.len());
        push_request(&mut b, flags, typ, cookie, offset, len, payload);
        self.put(&b);
    }

    /// Read a simple reply header: (error, cookie).
    fn simple_reply(&mut self) -> (u32, u64) {
        assert_eq!(self.u32(), SIMPLE_REPLY_MAGIC, "bad simple reply magic");
        let err = self.u32();
        let cookie = self.u64();
        (err, cookie)
    }

    /// READ with simple replies; Ok(data) or Err(errno).
    fn read(&mut self, cookie: u64, offset: u64, len: u32, flags: u16) -> Result<Vec<u8>, u32> {
        self.request(flags, CMD_READ, cookie, offset, len, &[]);
        let (err, c) = self.simple_reply();
        assert_eq!(c, cookie, "reply cookie mismatch");
        if err == 0 {
            Ok(self.read_exact(len as usize))
        } else {
            Err(err)
        }
    }

    fn write(&mut self, cookie: u64, offset: u64, data: &[u8], flags: u16) -> u32 {
        self.request(flags, CMD_WRITE, cookie, offset, data.len() as u32, data);
        let (err, c) = self.simple_reply();
        assert_eq!(c, cookie, "reply cookie mismatch");
        err
    }

    /// Send NBD_CMD_DISC and expect the server to close the connection.
    fn disconnect(mut self) {
        self.request(0, CMD_DISC, 999, 0, 0, &[]);
        let mut buf = [0u8; 1];
        self.s
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        match self.s.read(&mut buf) {
            Ok(0) => {}
            Ok(_) => panic!("server sent data after NBD_CMD_DISC"),
            Err(e) => panic!("after NBD_CMD_DISC: {e}"),
        }
    }
}

#[test]
fn newstyle_greeting() {
    let s = Server::start(&["null", "1M"]);
    let (c, flags) = Conn::newstyle(&s.sock);
    assert_eq!(flags, 3, "handshake flags FIXED_NEWSTYLE|NO_ZEROES");
    drop(c);
}

#[test]
fn go_reports_size_and_flags() {
    let mut s = Server::start(&["memory", "1M"]);
    let mut c = Conn::fixed(&s.sock);
    let (size, fl) = c.go();
    assert_eq!(size, 1 << 20);
    assert_ne!(fl & FLAG_HAS_FLAGS, 0);
    assert_eq!(fl & FLAG_READ_ONLY, 0);
    // Round trip data with simple replies.
    let data = pseudo_random(4096, 7);
    assert_eq!(c.write(1, 12345, &data, 0), 0);
    assert_eq!(c.read(2, 12345, 4096, 0).unwrap(), data);
    c.request(0, CMD_FLUSH, 3, 0, 0, &[]);
    assert_eq!(c.simple_reply(), (0, 3));
    c.disconnect();
    s.stop_ok();
}

/// A GO repeating the same information requests thousands of times gets
/// one reply per distinct request, not one per repetition.
#[test]
fn repeated_info_requests_are_answered_once() {
    let mut s = Server::start(&["memory", "1M"]);
    let mut c = Conn::fixed(&s.sock);
    let n: u16 = 30_000;
    let mut d = Vec::new();
    d.extend_from_slice(&0u32.to_be_bytes());
    d.extend_from_slice(&(2 * n).to_be_bytes());
    for _ in 0..n {
        // NBD_INFO_BLOCK_SIZE and NBD_INFO_NAME, alternately.
        d.extend_from_slice(&3u16.to_be_bytes());
        d.extend_from_slice(&1u16.to_be_bytes());
    }
    // The count field is 16 bits: 60,000 requests still fit.
    c.send_opt(OPT_INFO, &d);
    let mut kinds = Vec::new();
    loop {
        let (o, t, data) = c.opt_reply();
        assert_eq!(o, OPT_INFO);
        if t != REP_INFO {
            assert_eq!(t, REP_ACK);
            break;
        }
        kinds.push(u16::from_be_bytes([data[0], data[1]]));
    }
    let replies = kinds.len();
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(kinds, [0, 1, 3]);
    assert_eq!(replies, 3, "one reply per distinct request, got {replies}");
    // The connection is still in step: GO works.
    c.go();
    c.disconnect();
    s.stop_ok();
}

#[test]
fn unknown_option_then_go() {
    let s = Server::start(&["memory", "64K"]);
    let mut c = Conn::fixed(&s.sock);
    c.send_opt(99, b"some data");
    let (o, t, _) = c.opt_reply();
    assert_eq!(o, 99);
    assert_eq!(
        t, REP_ERR_UNSUP,
        "unknown option must get NBD_REP_ERR_UNSUP"
    );
    let (size, _) = c.go();
    assert_eq!(size, 65536);
    assert_eq!(c.read(1, 0, 512, 0).unwrap(), vec![0u8; 512]);
    c.disconnect();
}

#[test]
fn starttls_refused_when_tls_off() {
    let s = Server::start(&["--tls=off", "memory", "64K"]);
    let mut c = Conn::fixed(&s.sock);
    c.send_opt(OPT_STARTTLS, b"");
    let (o, t, _) = c.opt_reply();
    assert_eq!(o, OPT_STARTTLS);
    assert_ne!(
        t & REP_ERR_BIT,
        0,
        "STARTTLS must get an error reply, got {t:#x}"
    );
    assert_ne!(t, 0x8000_0005, "must never be ERR_TLS_REQD in NOTLS mode");
    let (size, _) = c.go();
    assert_eq!(size, 65536);
    c.disconnect();
}

#[test]
fn list_exports() {
    let s = Server::start(&["memory", "64K"]);
    let mut c = Conn::fixed(&s.sock);
    c.send_opt(OPT_LIST, b"");
    let mut names = Vec::new();
    loop {
        let (o, t, data) = c.opt_reply();
        assert_eq!(o, OPT_LIST);
        match t {
            REP_SERVER => {
                let n = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
                assert!(4 + n <= data.len(), "bad NBD_REP_SERVER");
                names.push(data[4..4 + n].to_vec());
            }
            REP_ACK => break,
            _ => panic!("unexpected reply {t:#x} to NBD_OPT_LIST"),
        }
    }
    assert_eq!(
        names,
        vec![Vec::<u8>::new()],
        "memory lists the default export"
    );
    let (size, _) = c.go();
    assert_eq!(size, 65536);
    c.disconnect();
}

#[test]
fn abort_gets_ack() {
    let s = Server::start(&["null"]);
    let mut c = Conn::fixed(&s.sock);
    c.send_opt(OPT_ABORT, b"");
    // The server may reply ACK or just close; if it replies, it is an ACK.
    let mut b = [0u8; 8];
    match c.s.read_exact(&mut b) {
        Ok(()) => {
            assert_eq!(u64::from_be_bytes(b), OPT_REPLY_MAGIC);
            assert_eq!(c.u32(), OPT_ABORT);
            assert_eq!(c.u32(), REP_ACK);
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof),
    }
    // And the server still serves new clients.
    let mut c2 = Conn::fixed(&s.sock);
    c2.go();
}

#[test]
fn info_long_export_names() {
    let s = Server::start(&["null", "1M"]);
    let mut c = Conn::fixed(&s.sock);
    let name4096 = vec![b'x'; 4096];
    let (t, e) = c.info_or_go(OPT_INFO, &name4096);
    assert_eq!(t, REP_ACK, "4096-byte export name must be accepted");
    assert_eq!(e.expect("INFO_EXPORT").0, 1 << 20);
    let name4097 = vec![b'x'; 4097];
    let (t, _) = c.info_or_go(OPT_INFO, &name4097);
    assert_ne!(t & REP_ERR_BIT, 0, "4097-byte export name must be refused");
    // Still negotiating: GO works.
    let (t, e) = c.info_or_go(OPT_GO, &name4096);
    assert_eq!(t, REP_ACK);
    assert_eq!(e.unwrap().0, 1 << 20);
    c.disconnect();
}

#[test]
fn read_past_end_then_valid_read() {
    let s = Server::start(&["memory", "1M"]);
    let mut c = Conn::fixed(&s.sock);
    c.go();
    assert_eq!(c.read(1, (1 << 20) - 100, 512, 0), Err(EINVAL));
    assert_eq!(c.read(2, 1 << 21, 1, 0), Err(EINVAL));
    assert_eq!(c.read(3, u64::MAX - 10, 512, 0), Err(EINVAL));
    assert_eq!(c.read(4, (1 << 20) - 512, 512, 0).unwrap(), vec![0u8; 512]);
    c.disconnect();
}

#[test]
fn write_past_end_stays_in_sync() {
    let s = Server::start(&["memory", "1M"]);
    let mut c = Conn::fixed(&s.sock);
    c.go();
    let junk = vec![0xaau8; 4096];
    let err = c.write(1, (1 << 20) - 1024, &junk, 0);
    assert!(
        err == ENOSPC || err == EINVAL,
        "write past end: errno {err}"
    );
    // The payload must have been consumed: the next request is parsed as such.
    let data = pseudo_random(1024, 3);
    assert_eq!(c.write(2, (1 << 20) - 1024, &data, 0), 0);
    assert_eq!(c.read(3, (1 << 20) - 1024, 1024, 0).unwrap(), data);
    c.disconnect();
}

#[test]
fn oversized_read_gets_error() {
    let s = Server::start(&["memory", "128M"]);
    let mut c = Conn::fixed(&s.sock);
    c.go();
    let r = c.read(1, 0, 64 * 1024 * 1024 + 1, 0);
    assert!(r.is_err(), "64 MiB + 1 read must fail");
    assert_eq!(c.read(2, 0, 4096, 0).unwrap(), vec![0u8; 4096]);
    c.disconnect();
}

#[test]
fn unknown_command_flag_gets_einval() {
    let s = Server::start(&["memory", "1M"]);
    let mut c = Conn::fixed(&s.sock);
    c.go();
    assert_eq!(c.read(1, 0, 512, 1 << 14), Err(EINVAL));
    assert_eq!(c.read(2, 0, 512, 0).unwrap(), vec![0u8; 512]);
    c.disconnect();
}

#[test]
fn unknown_command_type_gets_einval() {
    let s = Server::start(&["memory", "1M"]);
    let mut c = Conn::fixed(&s.sock);
    c.go();
    c.request(0, 200, 1, 0, 0, &[]);
    assert_eq!(c.simple_reply(), (EINVAL, 1));
    assert_eq!(c.read(2, 0, 512, 0).unwrap(), vec![0u8; 512]);
    c.disconnect();
}

#[test]
fn readonly_write_gets_eperm() {
    let s = Server::start(&["-r", "memory", "1M"]);
    let mut c = Conn::fixed(&s.sock);
    let (_, fl) = c.go();
    assert_ne!(fl & FLAG_READ_ONLY, 0);
    assert_eq!(c.write(1, 0, &[1u8; 512], 0), EPERM);
    assert_eq!(c.read(2, 0, 512, 0).unwrap(), vec![0u8; 512]);
    c.disconnect();
}

#[test]
fn oldstyle_greeting() {
    let s = Server::start(&["-o", "memory", "1M"]);
    let mut st = UnixStream::connect(&s.sock).unwrap();
    st.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut g = [0u8; 152];
    st.read_exact(&mut g).expect("152-byte oldstyle greeting");
    assert_eq!(u64::from_be_bytes(g[0..8].try_into().unwrap()), NBDMAGIC);
    assert_eq!(
        u64::from_be_bytes(g[8..16].try_into().unwrap()),
        OLDSTYLE_MAGIC
    );
    assert_eq!(u64::from_be_bytes(g[16..24].try_into().unwrap()), 1 << 20);
    let flags = u32::from_be_bytes(g[24..28].try_into().unwrap());
    assert_eq!(flags >> 16, 0, "global flags are zero");
    assert_ne!(flags & 1, 0, "HAS_FLAGS");
    assert!(g[28..].iter().all(|&b| b == 0), "124 zero bytes");
    let mut c = Conn { s: st };
    let data = pseudo_random(1000, 11);
    assert_eq!(c.write(1, 333, &data, 0), 0);
    assert_eq!(c.read(2, 333, 1000, 0).unwrap(), data);
    c.disconnect();
}

#[test]
fn oldstyle_reported_by_nbdinfo() {
    let s = Server::start(&["-o", "memory", "1M"]);
    let out = nbdinfo(&["--json", &s.uri()]);
    assert!(out.contains("\"protocol\": \"oldstyle\""), "{out}");
    let s2 = Server::start(&["-n", "memory", "1M"]);
    let out = nbdinfo(&["--json", &s2.uri()]);
    assert!(out.contains("\"protocol\": \"newstyle-fixed\""), "{out}");
}

#[test]
fn mask_handshake_zero() {
    let s = Server::start(&["--mask-handshake=0", "memory", "1M"]);
    let (mut c, flags) = Conn::newstyle(&s.sock);
    assert_eq!(flags, 0, "--mask-handshake=0 must send handshake flags 0");
    c.put(&0u32.to_be_bytes());
    c.send_opt(OPT_EXPORT_NAME, b"");
    assert_eq!(c.u64(), 1 << 20, "export size");
    let fl = c.u16();
    assert_ne!(fl & FLAG_HAS_FLAGS, 0);
    let zeroes = c.read_exact(124);
    assert!(zeroes.iter().all(|&b| b == 0), "124 zero bytes");
    assert_eq!(c.read(1, 0, 512, 0).unwrap(), vec![0u8; 512]);
    c.disconnect();
}

#[test]
fn export_name_option_with_no_zeroes() {
    let s = Server::start(&["memory", "1M"]);
    let mut c = Conn::fixed(&s.sock);
    c.send_opt(OPT_EXPORT_NAME, b"");
    assert_eq!(c.u64(), 1 << 20);
    let _fl = c.u16();
    // NO_ZEROES negotiated: the next bytes are a reply to our request.
    assert_eq!(c.read(1, 0, 16, 0).unwrap(), vec![0u8; 16]);
    c.disconnect();
}

#[test]
fn no_sr_refuses_structured_replies() {
    let s = Server::start(&["--no-sr", "memory", "1M"]);
    let mut c = Conn::fixed(&s.sock);
    c.send_opt(OPT_STRUCTURED_REPLY, b"");
    let (o, t, _) = c.opt_reply();
    assert_eq!(o, OPT_STRUCTURED_REPLY);
    assert_eq!(t, REP_ERR_UNSUP);
    c.go();
    c.disconnect();

    let out = nbdsh(&s.uri(), "print(h.get_structured_replies_negotiated())");
    assert_eq!(out.trim(), "False");
    let out = nbdinfo(&["--json", &s.uri()]);
    assert!(out.contains("\"structured\": false"), "{out}");
}

#[test]
fn structured_replies_by_default() {
    let s = Server::start(&["memory", "1M"]);
    let mut c = Conn::fixed(&s.sock);
    c.send_opt(OPT_STRUCTURED_REPLY, b"");
    let (o, t, _) = c.opt_reply();
    assert_eq!((o, t), (OPT_STRUCTURED_REPLY, REP_ACK));
    drop(c);
    let out = nbdsh(&s.uri(), "print(h.get_structured_replies_negotiated())");
    assert_eq!(out.trim(), "True");
}

#[test]
fn garbage_client_does_not_kill_server() {
    let mut s = Server::start(&["memory", "1M"]);
    for junk in [&b"GET / HTTP/1.0\r\n\r\n"[..], &[0xffu8; 100][..], &b""[..]] {
        let mut st = UnixStream::connect(&s.sock).unwrap();
        let _ = st.write_all(junk);
        drop(st);
    }
    // Bad request magic after GO.
    let mut c = Conn::fixed(&s.sock);
    c.go();
    c.put(&[0u8; 28]);
    drop(c);
    assert!(s.is_running(), "server died");
    assert_eq!(nbdinfo(&["--size", &s.uri()]).trim(), "1048576");
    s.stop_ok();
}

const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;
const REPLY_FLAG_DONE: u16 = 1;
const REPLY_TYPE_NONE: u16 = 0;
const REPLY_TYPE_OFFSET_DATA: u16 = 1;
const REPLY_TYPE_ERROR: u16 = 0x8001;

impl Conn {
    /// One structured reply chunk: (flags, type, cookie, payload).
    fn chunk(&mut self) -> (u16, u16, u64, Vec<u8>) {
        assert_eq!(
            self.u32(),
            STRUCTURED_REPLY_MAGIC,
            "bad structured reply magic"
        );
        let flags = self.u16();
        let typ = self.u16();
        let cookie = self.u64();
        let len = self.u32() as usize;
        let data = self.read_exact(len);
        (flags, typ, cookie, data)
    }
}

#[test]
fn unknown_client_flags_close_connection() {
    let s = Server::start(&["null", "1M"]);
    let (mut c, _) = Conn::newstyle(&s.sock);
    c.put(&0x8000_0003u32.to_be_bytes());
    // Whatever we send next, the server must not answer an option.
    let _ = c.s.write_all(&{
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&OPT_LIST.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b
    });
    let mut buf = [0u8; 8];
    match c.s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("server did not close after unknown client flags: {other:?}"),
    }
    assert_eq!(nbdinfo(&["--size", &s.uri()]).trim(), "1048576");
}

#[test]
fn structured_read_replies() {
    let s = Server::start(&["memory", "1M"]);
    let mut c = Conn::fixed(&s.sock);
    c.send_opt(OPT_STRUCTURED_REPLY, b"");
    assert_eq!(c.opt_reply().1, REP_ACK);
    let (_, fl) = c.go();
    assert_ne!(fl & 128, 0, "SEND_DF advertised with structured replies");
    let data = pseudo_random(5000, 8);
    assert_eq!(c.write(1, 777, &data, 0), 0);
    // A successful READ: data chunks (OFFSET_DATA or holes), the last DONE.
    c.request(0, CMD_READ, 2, 777, 5000, &[]);
    let mut got = vec![0u8; 5000];
    let mut covered = 0usize;
    loop {
        let (flags, typ, cookie, payload) = c.chunk();
        assert_eq!(cookie, 2);
        match typ {
            REPLY_TYPE_OFFSET_DATA => {
                let off = u64::from_be_bytes(payload[0..8].try_into().unwrap()) as usize - 777;
                got[off..off + payload.len() - 8].copy_from_slice(&payload[8..]);
                covered += payload.len() - 8;
            }
            2 => {
                let n = u32::from_be_bytes(payload[8..12].try_into().unwrap()) as usize;
                covered += n;
            }
            REPLY_TYPE_NONE => assert_eq!(payload.len(), 0),
            t => panic!("unexpected chunk type {t:#x}"),
        }
        if flags & REPLY_FLAG_DONE != 0 {
            break;
        }
    }
    assert_eq!(covered, 5000);
    assert_eq!(got, data);
    // A failing READ gets an error chunk (structured, even for errors).
    c.request(0, CMD_READ, 3, 1 << 20, 512, &[]);
    let (flags, typ, cookie, payload) = c.chunk();
    assert_eq!(cookie, 3);
    assert!(typ == REPLY_TYPE_ERROR || typ == 0x8002, "type {typ:#x}");
    assert_ne!(flags & REPLY_FLAG_DONE, 0);
    assert_eq!(
        u32::from_be_bytes(payload[0..4].try_into().unwrap()),
        EINVAL
    );
    // DF read of 64 KiB works.
    c.request(4, CMD_READ, 4, 0, 65536, &[]);
    let (flags, typ, cookie, payload) = c.chunk();
    assert_eq!(cookie, 4);
    assert_eq!(typ, REPLY_TYPE_OFFSET_DATA);
    assert_eq!(payload.len(), 8 + 65536);
    if flags & REPLY_FLAG_DONE == 0 {
        let (flags, typ, _, _) = c.chunk();
        assert_eq!((flags & REPLY_FLAG_DONE, typ), (1, REPLY_TYPE_NONE));
    }
    c.disconnect();
}

#[test]
fn zeroes_and_trim_past_end() {
    let s = Server::start(&["memory", "1M"]);
    let mut c = Conn::fixed(&s.sock);
    c.go();
    c.request(0, CMD_WRITE_ZEROES, 1, (1 << 20) - 10, 20, &[]);
    let (err, cookie) = c.simple_reply();
    assert_eq!(cookie, 1);
    assert!(err == ENOSPC || err == EINVAL, "errno {err}");
    c.request(0, CMD_TRIM, 2, 1 << 20, 1, &[]);
    let (err, cookie) = c.simple_reply();
    assert_eq!(cookie, 2);
    assert!(err == EINVAL || err == ENOSPC, "errno {err}");
    assert_eq!(c.read(3, 0, 1, 0).unwrap(), vec![0]);
    c.disconnect();
}

#[test]
fn pipelined_requests_all_answered() {
    let s = Server::start(&["-t", "8", "memory", "4M"]);
    let mut c = Conn::fixed(&s.sock);
    c.go();
    // 64 writes to distinct blocks sent without waiting, then all replies.
    let mut batch = Vec::new();
    for i in 0..64u64 {
        let data = vec![(i + 1) as u8; 4096];
        push_request(&mut batch, 0, CMD_WRITE, 1000 + i, i * 65536, 4096, &data);
    }
    let mut w = c.s.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&batch).unwrap());
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..64 {
        let (err, cookie) = c.simple_reply();
        assert_eq!(err, 0);
        assert!((1000..1064).contains(&cookie), "cookie {cookie}");
        assert!(seen.insert(cookie), "duplicate reply for {cookie}");
    }
    writer.join().unwrap();
    // Pipelined reads; replies matched by cookie.
    for i in 0..64u64 {
        c.request(0, CMD_READ, 5000 + i, i * 65536, 4096, &[]);
    }
    for _ in 0..64 {
        let (err, cookie) = c.simple_reply();
        assert_eq!(err, 0);
        let i = cookie - 5000;
        assert!(i < 64);
        let data = c.read_exact(4096);
        assert!(data.iter().all(|&b| b == (i + 1) as u8), "read {i}");
    }
    c.disconnect();
}

#[test]
fn block_size_info_is_valid_if_sent() {
    let s = Server::start(&["memory", "1M"]);
    let mut c = Conn::fixed(&s.sock);
    let mut d = Vec::new();
    d.extend_from_slice(&0u32.to_be_bytes());
    d.extend_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&3u16.to_be_bytes()); // NBD_INFO_BLOCK_SIZE
    c.send_opt(OPT_GO, &d);
    let mut saw_export = false;
    loop {
        let (o, t, data) = c.opt_reply();
        assert_eq!(o, OPT_GO);
        if t == REP_ACK {
            break;
        }
        assert_eq!(t, REP_INFO, "unexpected reply {t:#x}");
        match u16::from_be_bytes([data[0], data[1]]) {
            0 => saw_export = true,
            3 => {
                assert_eq!(data.len(), 14);
                let min = u32::from_be_bytes(data[2..6].try_into().unwrap());
                let pref = u32::from_be_bytes(data[6..10].try_into().unwrap());
                let max = u32::from_be_bytes(data[10..14].try_into().unwrap());
                assert!(min.is_power_of_two() && min <= 65536, "min {min}");
                assert!(
                    pref.is_power_of_two() && pref >= min.max(512),
                    "pref {pref}"
                );
                assert!(max >= pref, "max {max}");
            }
            _ => {}
        }
    }
    assert!(saw_export);
    assert_eq!(c.read(1, 0, 1, 0).unwrap(), vec![0]);
    c.disconnect();
}

#[test]
fn many_simultaneous_connections() {
    let mut s = Server::start(&["memory", "1M"]);
    let mut conns: Vec<Conn> = (0..24)
        .map(|_| {
            let mut c = Conn::fixed(&s.sock);
            c.go();
            c
        })
        .collect();
    for (i, c) in conns.iter_mut().enumerate() {
        let data = vec![i as u8 + 1; 1000];
        assert_eq!(c.write(i as u64, i as u64 * 4096, &data, 0), 0);
    }
    for (i, c) in conns.iter_mut().enumerate() {
        // Read the block written by the "next" connection.
        let j = (i + 1) % 24;
        let got = c.read(100 + i as u64, j as u64 * 4096, 1000, 0).unwrap();
        assert_eq!(got, vec![j as u8 + 1; 1000]);
    }
    for c in conns {
        c.disconnect();
    }
    s.stop_ok();
}

/// NBD_OPT_EXTENDED_HEADERS (qemu 10 uses it): the server may refuse it with
/// ERR_UNSUP (the C nbdkit 1.32 does), but if it accepts, 32-byte requests
/// and extended replies must work.
#[test]
fn extended_headers_if_supported() {
    let s = Server::start(&["memory", "1M"]);
    let mut c = Conn::fixed(&s.sock);
    c.send_opt(11, b"");
    let (o, t, _) = c.opt_reply();
    assert_eq!(o, 11);
    if t == REP_ERR_UNSUP {
        c.go();
        c.disconnect();
        return;
    }
    assert_eq!(t, REP_ACK, "NBD_OPT_EXTENDED_HEADERS reply {t:#x}");
    c.go();
    let ext_req = |c: &mut Conn, typ: u16, cookie: u64, off: u64, len: u64| {
        let mut b = Vec::new();
        b.extend_from_slice(&0x21e4_1c71u32.to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&typ.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&off.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        c.put(&b);
    };
    let ext_reply = |c: &mut Conn| {
        assert_eq!(c.u32(), 0x6e8a_278c, "extended reply magic");
        let flags = c.u16();
        let typ = c.u16();
        let cookie = c.u64();
        let off = c.u64();
        let len = c.u64() as usize;
        (flags, typ, cookie, off, c.read_exact(len))
    };
    ext_req(&mut c, CMD_READ, 1, 4096, 512);
    let mut data = Vec::new();
    loop {
        let (flags, typ, cookie, off, payload) = ext_reply(&mut c);
        assert_eq!(cookie, 1);
        assert_eq!(off, 4096, "extended reply echoes the request offset");
        if typ == REPLY_TYPE_OFFSET_DATA {
            data.extend_from_slice(&payload[8..]);
        } else if typ == 2 {
            let n = u32::from_be_bytes(payload[8..12].try_into().unwrap());
            data.extend(std::iter::repeat_n(0u8, n as usize));
        } else {
            assert_eq!(typ, REPLY_TYPE_NONE, "chunk type {typ:#x}");
        }
        if flags & REPLY_FLAG_DONE != 0 {
            break;
        }
    }
    assert_eq!(data, vec![0u8; 512]);
    ext_req(&mut c, CMD_READ, 2, 1 << 20, 512);
    let (flags, typ, cookie, _, payload) = ext_reply(&mut c);
    assert_eq!(cookie, 2);
    assert!(typ == REPLY_TYPE_ERROR || typ == 0x8002, "type {typ:#x}");
    assert_ne!(flags & REPLY_FLAG_DONE, 0);
    assert_eq!(
        u32::from_be_bytes(payload[0..4].try_into().unwrap()),
        EINVAL
    );
    ext_req(&mut c, CMD_FLUSH, 3, 0, 0);
    let (flags, typ, cookie, _, payload) = ext_reply(&mut c);
    assert_eq!(
        (flags & 1, typ, cookie, payload.len()),
        (1, REPLY_TYPE_NONE, 3, 0)
    );
    ext_req(&mut c, CMD_DISC, 4, 0, 0);
}

/// A burst of pipelined requests of every kind, ending in NBD_CMD_DISC,
/// sent in one write: the server runs the small ones on the worker that
/// reads them and gathers their replies into shared writes, while a large
/// read that came first runs on another worker and is overtaken.  Every
/// request gets exactly one right reply, none is lost when the goodbye
/// follows at once, and the writes all land.
#[test]
fn gathered_replies_with_out_of_order_completion() {
    const MIB: u64 = 1 << 20;
    let s = Server::start(&["-t", "4", "memory", "64M"]);
    let pattern = pseudo_random(32 * MIB as usize, 3);
    {
        let mut c = Conn::fixed(&s.sock);
        c.go();
        assert_eq!(c.write(1, 0, &pattern, 0), 0);
        c.disconnect();
    }
    let mut c = Conn::fixed(&s.sock);
    c.go();
    // What each cookie's reply must be: Ok(expected read data) or Err(errno).
    let mut expect: std::collections::BTreeMap<u64, Result<Vec<u8>, u32>> = Default::default();
    let mut batch = Vec::new();
    let mut put = |flags, typ, cookie, offset, len, payload: &[u8]| {
        push_request(&mut batch, flags, typ, cookie, offset, len, payload)
    };
    // First the whole 32 MiB, then many small requests.
    put(0, CMD_READ, 1, 0, 32 << 20, &[]);
    expect.insert(1, Ok(pattern.clone()));
    let block = |i: u64| vec![(i % 251) as u8 + 1; 4096];
    for i in 0..500u64 {
        let cookie = 100 + i;
        let at = (i * 7919 % 8000) * 4096;
        match i % 5 {
            0 => {
                put(0, CMD_WRITE, cookie, 40 * MIB + i * 4096, 4096, &block(i));
                expect.insert(cookie, Ok(Vec::new()));
            }
            1 => {
                put(0, CMD_READ, cookie, at, 4096, &[]);
                expect.insert(cookie, Ok(pattern[at as usize..][..4096].to_vec()));
            }
            2 => {
                put(0, CMD_READ, cookie, 64 * MIB, 512, &[]);
                expect.insert(cookie, Err(EINVAL));
            }
            3 => {
                put(0, CMD_FLUSH, cookie, 0, 0, &[]);
                expect.insert(cookie, Ok(Vec::new()));
            }
            _ => {
                // Larger than what the server copies to gather.
                put(0, CMD_READ, cookie, at, 20000, &[]);
                expect.insert(cookie, Ok(pattern[at as usize..][..20000].to_vec()));
            }
        }
    }
    // Small replies just before the goodbye wait to be gathered.
    put(0, CMD_FLUSH, 997, 0, 0, &[]);
    expect.insert(997, Ok(Vec::new()));
    put(0, CMD_READ, 998, 4096, 4096, &[]);
    expect.insert(998, Ok(pattern[4096..8192].to_vec()));
    put(0, CMD_DISC, 999, 0, 0, &[]);
    let mut w = c.s.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&batch).unwrap());
    let mut order = Vec::new();
    while !expect.is_empty() {
        let (err, cookie) = c.simple_reply();
        let want = expect
            .remove(&cookie)
            .unwrap_or_else(|| panic!("reply for unknown or answered cookie {cookie}"));
        match want {
            Err(errno) => assert_eq!(err, errno, "errno of request {cookie}"),
            Ok(data) => {
                assert_eq!(err, 0, "request {cookie} failed");
                // Only reads carry data after a simple reply.
                assert!(c.read_exact(data.len()) == data, "data of read {cookie}");
            }
        }
        order.push(cookie);
    }
    writer.join().unwrap();
    // After the last reply, the goodbye: the server closes.
    let mut rest = Vec::new();
    c.s.read_to_end(&mut rest).expect("read to end of file");
    assert!(rest.is_empty(), "{} bytes after the last reply", rest.len());
    assert_ne!(order[0], 1, "the large read was not overtaken");
    // The writes all landed.
    let mut c = Conn::fixed(&s.sock);
    c.go();
    for i in (0..500u64).filter(|i| i % 5 == 0) {
        assert!(
            c.read(1, 40 * MIB + i * 4096, 4096, 0).unwrap() == block(i),
            "write {i}"
        );
    }
    c.disconnect();
}

/// Pipelined writes whose payloads arrive whole in the read buffer (the
/// server hands them to the plugin from there), split across reads, or
/// larger than the buffer, mixed with refused writes whose payload must
/// still be skipped: every reply is right and every byte lands where it was
/// sent.
#[test]
fn pipelined_write_payloads_land_however_they_arrive() {
    const SIZE: usize = 32 << 20;
    let s = Server::start(&["memory", "32M"]);
    let mut c = Conn::fixed(&s.sock);
    c.go();
    let mut disk = vec![0u8; SIZE];
    let mut expect: std::collections::BTreeMap<u64, u32> = Default::default();
    let mut batch = Vec::new();
    let sizes = [
        1usize, 512, 4096, 4095, 28, 65536, 300_000, 4096, 7, 131_072,
    ];
    let mut at = 0usize;
    for i in 0..300u64 {
        let len = sizes[i as usize % sizes.len()];
        let data = pseudo_random(len, i + 1);
        let cookie = i + 1;
        if i % 7 == 3 {
            // Runs past the end: refused, and its payload skipped.
            let offset = (SIZE - 1) as u64;
            push_request(
                &mut batch,
                0,
                CMD_WRITE,
                cookie,
                offset,
                len as u32 + 1,
                &data,
            );
            batch.push(0xee);
            expect.insert(cookie, ENOSPC);
        } else {
            // Apart from each other, so their order does not matter.
            push_request(
                &mut batch, 0, CMD_WRITE, cookie, at as u64, len as u32, &data,
            );
            disk[at..at + len].copy_from_slice(&data);
            at += len + 1;
            expect.insert(cookie, 0);
        }
    }
    assert!(at <= SIZE);
    // Sent in ragged pieces, so payloads straddle the server's reads.
    let mut w = c.s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut pieces = [1000usize, 3, 70_000, 4124, 262_144].iter().cycle();
        let mut rest = &batch[..];
        while !rest.is_empty() {
            let n = (*pieces.next().unwrap()).min(rest.len());
            w.write_all(&rest[..n]).unwrap();
            rest = &rest[n..];
        }
    });
    while !expect.is_empty() {
        let (err, cookie) = c.simple_reply();
        let want = expect
            .remove(&cookie)
            .unwrap_or_else(|| panic!("reply for unknown or answered cookie {cookie}"));
        if want == ENOSPC {
            assert!(
                err == ENOSPC || err == EINVAL,
                "write {cookie}: errno {err}"
            );
        } else {
            assert_eq!(err, want, "write {cookie}");
        }
    }
    writer.join().unwrap();
    for (i, chunk) in disk.chunks(1 << 20).enumerate() {
        let got = c.read(1, (i << 20) as u64, chunk.len() as u32, 0).unwrap();
        assert!(got == chunk, "data in MiB {i}");
    }
    c.disconnect();
}
