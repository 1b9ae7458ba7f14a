//! The transmission phase of NBD (requests and replies), as a pure codec.
//!
//! This module is for: decoding the fixed-size request header (compact
//! 28-byte or extended 32-byte form), and building reply headers and
//! small reply payloads in the shape the negotiated [`ReplyStyle`] demands.
//! Reply headers are built in a stack buffer ([`ReplyHeader`]) so the hot
//! path does not allocate; read data is never copied here — the server
//! writes the header and then its own data buffer.  It also has client-side
//! counterparts ([`encode_request`], [`decode_reply_head`]) for tests and
//! fuzzing.
//!
//! It is not for: validating requests against the export (ranges, flags
//! permitted by the transmission flags, payload limits), mapping errno to
//! NBD errors, deciding which extents to report, or doing any I/O.

use super::consts::*;
use super::{CodecError, Reader};

/// Size of a compact request header.
pub const COMPACT_REQUEST_LEN: usize = 28;
/// Size of an extended request header.
pub const EXTENDED_REQUEST_LEN: usize = 32;
/// Size of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Size of a structured reply chunk header.
pub const STRUCTURED_REPLY_LEN: usize = 20;
/// Size of an extended reply chunk header.
pub const EXTENDED_REPLY_LEN: usize = 32;

/// Size of the request header for the negotiated header style.
pub fn request_len(extended: bool) -> usize {
    if extended {
        EXTENDED_REQUEST_LEN
    } else {
        COMPACT_REQUEST_LEN
    }
}

/// Whether `buf` begins with one whole request: its header and, for a
/// write (or an extended request flagged `NBD_CMD_FLAG_PAYLOAD_LEN`), all
/// of its payload.  Only looks at the fields it needs; a bad header counts
/// as whole, so that decoding it reports the error at once.
pub fn whole_request_at(buf: &[u8], extended: bool) -> bool {
    let hdr = request_len(extended);
    if buf.len() < hdr {
        return false;
    }
    let flags = u16::from_be_bytes([buf[4], buf[5]]);
    let command = u16::from_be_bytes([buf[6], buf[7]]);
    let length = if extended {
        u64::from_be_bytes(buf[24..32].try_into().unwrap_or([0; 8]))
    } else {
        u64::from(u32::from_be_bytes(buf[24..28].try_into().unwrap_or([0; 4])))
    };
    let payload = command == NBD_CMD_WRITE || (extended && flags & NBD_CMD_FLAG_PAYLOAD_LEN != 0);
    !payload || (buf.len() - hdr) as u64 >= length
}

/// A decoded request header (both forms).  For compact requests `length`
/// is the 32-bit length widened; for extended requests it is the 64-bit
/// length (a payload length if `NBD_CMD_FLAG_PAYLOAD_LEN` is set, else an
/// effect length).  Any payload follows the header on the wire and is not
/// part of this struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// `NBD_CMD_FLAG_*` bits.
    pub flags: u16,
    /// `NBD_CMD_*` number.
    pub command: u16,
    /// Opaque cookie (the spec's former "handle"), echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Length (see above).
    pub length: u64,
}

/// Decode a request header.  `buf` must be exactly [`COMPACT_REQUEST_LEN`]
/// bytes (`extended == false`: magic `0x25609513`, flags, type, cookie,
/// offset, 32-bit length) or [`EXTENDED_REQUEST_LEN`] bytes
/// (`extended == true`: magic `0x21e41c71`, flags, type, cookie, offset,
/// 64-bit length).  A shorter buffer is [`CodecError::Truncated`], a longer
/// one [`CodecError::WrongLength`], a wrong magic [`CodecError::BadMagic`]
/// (the server should drop the connection: the stream is out of sync).
pub fn decode_request(buf: &[u8], extended: bool) -> Result<Request, CodecError> {
    let (want, magic_want) = if extended {
        (EXTENDED_REQUEST_LEN, NBD_EXTENDED_REQUEST_MAGIC)
    } else {
        (COMPACT_REQUEST_LEN, NBD_REQUEST_MAGIC)
    };
    if buf.len() < want {
        return Err(CodecError::Truncated {
            needed: want,
            got: buf.len(),
        });
    }
    if buf.len() > want {
        return Err(CodecError::WrongLength {
            expected: want,
            got: buf.len(),
        });
    }
    let truncated = CodecError::Truncated {
        needed: want,
        got: buf.len(),
    };
    let mut r = Reader::new(buf);
    let magic = r.u32().ok_or_else(|| truncated.clone())?;
    if magic != magic_want {
        return Err(CodecError::BadMagic {
            expected: u64::from(magic_want),
            got: u64::from(magic),
        });
    }
    let fields = (r.u16(), r.u16(), r.u64(), r.u64());
    let length = if extended {
        r.u64()
    } else {
        r.u32().map(u64::from)
    };
    match (fields, length) {
        ((Some(flags), Some(command), Some(cookie), Some(offset)), Some(length)) => Ok(Request {
            flags,
            command,
            cookie,
            offset,
            length,
        }),
        _ => Err(truncated),
    }
}

/// Client side: encode a request header (no payload).  In the compact form
/// the length field is 32 bits and **only the low 32 bits of
/// `req.length` are sent** (callers wanting a checked version use
/// [`try_encode_request`]).
pub fn encode_request(req: &Request, extended: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(request_len(extended));
    if extended {
        out.extend_from_slice(&NBD_EXTENDED_REQUEST_MAGIC.to_be_bytes());
    } else {
        out.extend_from_slice(&NBD_REQUEST_MAGIC.to_be_bytes());
    }
    out.extend_from_slice(&req.flags.to_be_bytes());
    out.extend_from_slice(&req.command.to_be_bytes());
    out.extend_from_slice(&req.cookie.to_be_bytes());
    out.extend_from_slice(&req.offset.to_be_bytes());
    if extended {
        out.extend_from_slice(&req.length.to_be_bytes());
    } else {
        // Documented truncation to the low 32 bits.
        out.extend_from_slice(&((req.length & 0xffff_ffff) as u32).to_be_bytes());
    }
    out
}

/// Client side: like [`encode_request`], but `None` if the length does not
/// fit the compact form's 32-bit field.
pub fn try_encode_request(req: &Request, extended: bool) -> Option<Vec<u8>> {
    if !extended && u32::try_from(req.length).is_err() {
        return None;
    }
    Some(encode_request(req, extended))
}

/// Which reply format the connection negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyStyle {
    /// Neither structured replies nor extended headers: simple replies only.
    Simple,
    /// `NBD_OPT_STRUCTURED_REPLY` was acknowledged.
    Structured,
    /// `NBD_OPT_EXTENDED_HEADERS` was acknowledged (takes precedence over
    /// structured replies; every reply is an extended chunk).
    Extended,
}

/// A reply header (plus any small fixed payload) in a stack buffer, so the
/// hot path does not allocate.  The longest one built here is 40 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyHeader {
    buf: [u8; 48],
    len: usize,
}

impl ReplyHeader {
    fn new() -> Self {
        ReplyHeader {
            buf: [0; 48],
            len: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        // All callers in this module write at most 40 bytes in total.
        let end = self.len + bytes.len();
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
    }

    fn u16(&mut self, v: u16) -> &mut Self {
        self.put(&v.to_be_bytes());
        self
    }

    fn u32(&mut self, v: u32) -> &mut Self {
        self.put(&v.to_be_bytes());
        self
    }

    fn u64(&mut self, v: u64) -> &mut Self {
        self.put(&v.to_be_bytes());
        self
    }

    /// The bytes to send.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl AsRef<[u8]> for ReplyHeader {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

fn simple(cookie: u64, error: u32) -> ReplyHeader {
    let mut h = ReplyHeader::new();
    h.u32(NBD_SIMPLE_REPLY_MAGIC).u32(error).u64(cookie);
    h
}

fn structured(h: &mut ReplyHeader, kind: u16, cookie: u64, length: u32) {
    h.u32(NBD_STRUCTURED_REPLY_MAGIC)
        .u16(NBD_REPLY_FLAG_DONE)
        .u16(kind)
        .u64(cookie)
        .u32(length);
}

fn extended(h: &mut ReplyHeader, kind: u16, cookie: u64, offset: u64, length: u64) {
    h.u32(NBD_EXTENDED_REPLY_MAGIC)
        .u16(NBD_REPLY_FLAG_DONE)
        .u16(kind)
        .u64(cookie)
        .u64(offset)
        .u64(length);
}

/// A simple reply header: magic `0x67446698`, 32-bit error, cookie.  Only
/// valid when extended headers were not negotiated.
pub fn simple_reply(cookie: u64, nbd_error: u32) -> ReplyHeader {
    simple(cookie, nbd_error)
}

/// A general chunk header for replies not covered by the functions below
/// (e.g. multi-chunk replies): a structured chunk header (20 bytes) for
/// `Simple` and `Structured` — `length` saturates at `u32::MAX` and
/// `offset` is not sent — or an extended one (32 bytes, `offset` is the
/// request's offset) for `Extended`.  The payload is the caller's.
pub fn chunk_header(
    style: ReplyStyle,
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    length: u64,
) -> ReplyHeader {
    let mut h = ReplyHeader::new();
    match style {
        ReplyStyle::Simple | ReplyStyle::Structured => {
            h.u32(NBD_STRUCTURED_REPLY_MAGIC)
                .u16(flags)
                .u16(kind)
                .u64(cookie)
                .u32(u32::try_from(length).unwrap_or(u32::MAX));
        }
        ReplyStyle::Extended => {
            h.u32(NBD_EXTENDED_REPLY_MAGIC)
                .u16(flags)
                .u16(kind)
                .u64(cookie)
                .u64(offset)
                .u64(length);
        }
    }
    h
}

/// The bytes that precede `data_len` bytes of successfully read data, for a
/// read request at `offset` with `cookie`:
/// - `Simple`: simple reply, error 0 (16 bytes);
/// - `Structured`: one `NBD_REPLY_TYPE_OFFSET_DATA` chunk with
///   `NBD_REPLY_FLAG_DONE`, length `8 + data_len`, then the 64-bit offset
///   (28 bytes);
/// - `Extended`: extended chunk header (`DONE`, `OFFSET_DATA`, the header's
///   offset field echoing the request's offset as the spec requires, 64-bit
///   length `8 + data_len`) then the 64-bit offset of the data (40 bytes).
///
/// In the structured form, `data_len > u32::MAX - 8` cannot be expressed
/// and the length field saturates at `u32::MAX`; servers cap reads far
/// below that.
pub fn read_reply_header(
    style: ReplyStyle,
    cookie: u64,
    offset: u64,
    data_len: u32,
) -> ReplyHeader {
    match style {
        ReplyStyle::Simple => simple(cookie, 0),
        ReplyStyle::Structured => {
            let mut h = ReplyHeader::new();
            structured(
                &mut h,
                NBD_REPLY_TYPE_OFFSET_DATA,
                cookie,
                data_len.saturating_add(8),
            );
            h.u64(offset);
            h
        }
        ReplyStyle::Extended => {
            let mut h = ReplyHeader::new();
            extended(
                &mut h,
                NBD_REPLY_TYPE_OFFSET_DATA,
                cookie,
                offset,
                u64::from(data_len) + 8,
            );
            h.u64(offset);
            h
        }
    }
}

/// Success with no payload (every command except READ and BLOCK_STATUS, and
/// nothing is sent for DISC): `Simple` and `Structured` give a 16-byte
/// simple reply (nbdkit uses simple replies for these even when structured
/// replies are negotiated); `Extended` gives an extended chunk of type
/// `NBD_REPLY_TYPE_NONE` with `DONE`, the request's offset and length 0.
pub fn ok_reply(style: ReplyStyle, cookie: u64, offset: u64) -> ReplyHeader {
    match style {
        ReplyStyle::Simple | ReplyStyle::Structured => simple(cookie, 0),
        ReplyStyle::Extended => {
            let mut h = ReplyHeader::new();
            extended(&mut h, NBD_REPLY_TYPE_NONE, cookie, offset, 0);
            h
        }
    }
}

/// A failed request (`nbd_error` is an `NBD_E*` value, `command` the
/// request's `NBD_CMD_*`):
/// - `Simple`: simple reply carrying the error (16 bytes);
/// - `Structured`: for READ and BLOCK_STATUS an `NBD_REPLY_TYPE_ERROR` chunk
///   with `DONE` and payload (32-bit error, 16-bit message length 0)
///   (26 bytes); for other commands a simple reply with the error;
/// - `Extended`: extended chunk, type `ERROR`, `DONE`, the request's offset,
///   length 6, same payload (38 bytes).
///
/// No human-readable message is sent (nbdkit sends none in transmission).
pub fn error_reply(
    style: ReplyStyle,
    cookie: u64,
    offset: u64,
    nbd_error: u32,
    command: u16,
) -> ReplyHeader {
    match style {
        ReplyStyle::Simple => simple(cookie, nbd_error),
        ReplyStyle::Structured => {
            if command == NBD_CMD_READ || command == NBD_CMD_BLOCK_STATUS {
                let mut h = ReplyHeader::new();
                structured(&mut h, NBD_REPLY_TYPE_ERROR, cookie, 6);
                h.u32(nbd_error).u16(0);
                h
            } else {
                simple(cookie, nbd_error)
            }
        }
        ReplyStyle::Extended => {
            let mut h = ReplyHeader::new();
            extended(&mut h, NBD_REPLY_TYPE_ERROR, cookie, offset, 6);
            h.u32(nbd_error).u16(0);
            h
        }
    }
}

/// A complete successful block-status reply for one metadata context: one
/// chunk with `NBD_REPLY_FLAG_DONE`.  `extents` are `(length, flags)` pairs
/// describing consecutive ranges from the request's `offset`; trimming them
/// to the request (REQ_ONE, the 2^20 descriptor cap, at least one
/// descriptor, non-zero lengths) is the caller's job.
///
/// - `Structured` (and `Simple`, which is a caller error — block status
///   needs structured replies — and is answered in the structured form):
///   `NBD_REPLY_TYPE_BLOCK_STATUS`, payload 32-bit context id then
///   (32-bit length, 32-bit flags) per extent.  Clamping rule (as nbdkit):
///   an extent longer than `u32::MAX` is sent as `u32::MAX` bytes and the
///   list ends there, since later extents would no longer be contiguous.
///   Flags above 32 bits are impossible here (they are `u32`).
/// - `Extended`: `NBD_REPLY_TYPE_BLOCK_STATUS_EXT`, header offset = the
///   request's offset, payload 32-bit context id, 32-bit descriptor count,
///   then per extent a 64-bit length and a 64-bit status word (the spec's
///   32 bits of zero padding followed by the 32-bit flags).
pub fn block_status_reply(
    style: ReplyStyle,
    cookie: u64,
    offset: u64,
    context_id: u32,
    extents: &[(u64, u32)],
) -> Vec<u8> {
    match style {
        ReplyStyle::Simple | ReplyStyle::Structured => {
            let mut descs: Vec<(u32, u32)> = Vec::with_capacity(extents.len());
            for &(len, flags) in extents {
                match u32::try_from(len) {
                    Ok(l) => descs.push((l, flags)),
                    Err(_) => {
                        descs.push((u32::MAX, flags));
                        break;
                    }
                }
            }
            let payload_len = 4usize.saturating_add(descs.len().saturating_mul(8));
            let mut h = ReplyHeader::new();
            structured(
                &mut h,
                NBD_REPLY_TYPE_BLOCK_STATUS,
                cookie,
                super::len_u32(payload_len),
            );
            let mut out = Vec::with_capacity(STRUCTURED_REPLY_LEN + payload_len);
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(&context_id.to_be_bytes());
            for (len, flags) in descs {
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&flags.to_be_bytes());
            }
            out
        }
        ReplyStyle::Extended => {
            let payload_len = 8u64.saturating_add((extents.len() as u64).saturating_mul(16));
            let mut h = ReplyHeader::new();
            extended(
                &mut h,
                NBD_REPLY_TYPE_BLOCK_STATUS_EXT,
                cookie,
                offset,
                payload_len,
            );
            let mut out = Vec::with_capacity(EXTENDED_REPLY_LEN + 8 + extents.len() * 16);
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(&context_id.to_be_bytes());
            // The spec allows a count of 0 ("determined by the length");
            // use it in the impossible case that the real count overflows.
            let count = u32::try_from(extents.len()).unwrap_or(0);
            out.extend_from_slice(&count.to_be_bytes());
            for &(len, flags) in extents {
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&u64::from(flags).to_be_bytes());
            }
            out
        }
    }
}

/// Client side: a decoded reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHead {
    /// Simple reply (read data, if any and error is 0, follows; its length
    /// is known only from the request).
    Simple {
        /// `NBD_E*` value, 0 for success.
        error: u32,
        /// The request's cookie.
        cookie: u64,
    },
    /// Structured or extended chunk header; `length` payload bytes follow.
    Chunk {
        /// `NBD_REPLY_FLAG_*` bits.
        flags: u16,
        /// `NBD_REPLY_TYPE_*`.
        kind: u16,
        /// The request's cookie.
        cookie: u64,
        /// `Some(request offset)` for extended headers, `None` for
        /// structured chunks.
        offset: Option<u64>,
        /// Payload length.
        length: u64,
    },
}

/// Client side: decode the reply header at the start of `buf`, choosing its
/// size by the magic (16 simple, 20 structured, 32 extended).  Returns the
/// header and the number of bytes it took; bytes after it are not looked
/// at.  Too short → [`CodecError::Truncated`] (with `needed` the full
/// header size once the magic is known); unknown magic →
/// [`CodecError::UnknownReplyMagic`].
pub fn decode_reply_head(buf: &[u8]) -> Result<(ReplyHead, usize), CodecError> {
    let truncated = |needed: usize| CodecError::Truncated {
        needed,
        got: buf.len(),
    };
    let mut r = Reader::new(buf);
    let magic = r.u32().ok_or_else(|| truncated(4))?;
    let needed = match magic {
        NBD_SIMPLE_REPLY_MAGIC => SIMPLE_REPLY_LEN,
        NBD_STRUCTURED_REPLY_MAGIC => STRUCTURED_REPLY_LEN,
        NBD_EXTENDED_REPLY_MAGIC => EXTENDED_REPLY_LEN,
        got => return Err(CodecError::UnknownReplyMagic { got }),
    };
    if buf.len() < needed {
        return Err(truncated(needed));
    }
    let head = match magic {
        NBD_SIMPLE_REPLY_MAGIC => match (r.u32(), r.u64()) {
            (Some(error), Some(cookie)) => ReplyHead::Simple { error, cookie },
            _ => return Err(truncated(needed)),
        },
        NBD_STRUCTURED_REPLY_MAGIC => match (r.u16(), r.u16(), r.u64(), r.u32()) {
            (Some(flags), Some(kind), Some(cookie), Some(length)) => ReplyHead::Chunk {
                flags,
                kind,
                cookie,
                offset: None,
                length: u64::from(length),
            },
            _ => return Err(truncated(needed)),
        },
        _ => match (r.u16(), r.u16(), r.u64(), r.u64(), r.u64()) {
            (Some(flags), Some(kind), Some(cookie), Some(offset), Some(length)) => {
                ReplyHead::Chunk {
                    flags,
                    kind,
                    cookie,
                    offset: Some(offset),
                    length,
                }
            }
            _ => return Err(truncated(needed)),
        },
    };
    Ok((head, needed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const COOKIE: u64 = 0x0102_0304_0506_0708;
    const COOKIE_BYTES: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
    const OFF: u64 = 0x1000;
    const OFF_BYTES: [u8; 8] = [0, 0, 0, 0, 0, 0, 0x10, 0];

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn whole_request_counts_the_payload_of_writes_only() {
        let req = |command, flags, length| Request {
            flags,
            command,
            cookie: COOKIE,
            offset: OFF,
            length,
        };
        for extended in [false, true] {
            let read = encode_request(&req(NBD_CMD_READ, 0, 4096), extended);
            assert!(whole_request_at(&read, extended));
            assert!(!whole_request_at(&read[..read.len() - 1], extended));
            let mut write = encode_request(&req(NBD_CMD_WRITE, 0, 10), extended);
            assert!(!whole_request_at(&write, extended));
            write.extend_from_slice(&[0; 9]);
            assert!(!whole_request_at(&write, extended));
            write.push(0);
            assert!(whole_request_at(&write, extended));
            // Whatever follows does not matter.
            write.extend_from_slice(&[7; 100]);
            assert!(whole_request_at(&write, extended));
        }
        let flagged = encode_request(
            &req(NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_PAYLOAD_LEN, 8),
            true,
        );
        assert!(!whole_request_at(&flagged, true));
    }

    #[test]
    fn decode_compact_request_bytes() {
        let buf = cat(&[
            &[0x25, 0x60, 0x95, 0x13],
            &[0x00, 0x01],
            &[0x00, 0x01],
            &COOKIE_BYTES,
            &OFF_BYTES,
            &[0, 0, 0x02, 0],
        ]);
        let req = decode_request(&buf, false).unwrap();
        assert_eq!(
            req,
            Request {
                flags: NBD_CMD_FLAG_FUA,
                command: NBD_CMD_WRITE,
                cookie: COOKIE,
                offset: OFF,
                length: 512
            }
        );
        assert_eq!(encode_request(&req, false), buf);
    }

    #[test]
    fn decode_extended_request_bytes() {
        let buf = cat(&[
            &[0x21, 0xe4, 0x1c, 0x71],
            &[0x00, 0x20],
            &[0x00, 0x06],
            &COOKIE_BYTES,
            &OFF_BYTES,
            &[0, 0, 0, 1, 0, 0, 0, 0],
        ]);
        let req = decode_request(&buf, true).unwrap();
        assert_eq!(
            req,
            Request {
                flags: NBD_CMD_FLAG_PAYLOAD_LEN,
                command: NBD_CMD_WRITE_ZEROES,
                cookie: COOKIE,
                offset: OFF,
                length: 1 << 32
            }
        );
        assert_eq!(encode_request(&req, true), buf);
    }

    #[test]
    fn decode_request_errors() {
        let good = encode_request(
            &Request {
                flags: 0,
                command: 0,
                cookie: 1,
                offset: 0,
                length: 1,
            },
            false,
        );
        assert_eq!(
            decode_request(&good[..27], false),
            Err(CodecError::Truncated {
                needed: 28,
                got: 27
            })
        );
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            decode_request(&long, false),
            Err(CodecError::WrongLength {
                expected: 28,
                got: 29
            })
        );
        // A compact request where an extended one is expected is too short;
        // padded to 32 bytes it has the wrong magic.
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 4]);
        assert_eq!(
            decode_request(&padded, true),
            Err(CodecError::BadMagic {
                expected: u64::from(NBD_EXTENDED_REQUEST_MAGIC),
                got: u64::from(NBD_REQUEST_MAGIC)
            })
        );
        assert!(matches!(
            decode_request(&[0; 28], false),
            Err(CodecError::BadMagic { got: 0, .. })
        ));
    }

    #[test]
    fn compact_encode_truncates_and_try_checks() {
        let req = Request {
            flags: 0,
            command: NBD_CMD_TRIM,
            cookie: 9,
            offset: 0,
            length: 0x1_0000_0005,
        };
        let wire = encode_request(&req, false);
        assert_eq!(decode_request(&wire, false).unwrap().length, 5);
        assert_eq!(try_encode_request(&req, false), None);
        assert!(try_encode_request(&req, true).is_some());
    }

    #[test]
    fn read_reply_header_bytes() {
        let s = read_reply_header(ReplyStyle::Simple, COOKIE, OFF, 512);
        assert_eq!(
            s.as_bytes(),
            cat(&[&[0x67, 0x44, 0x66, 0x98], &[0, 0, 0, 0], &COOKIE_BYTES])
        );
        let st = read_reply_header(ReplyStyle::Structured, COOKIE, OFF, 512);
        assert_eq!(
            st.as_bytes(),
            cat(&[
                &[0x66, 0x8e, 0x33, 0xef],
                &[0, 1],
                &[0, 1],
                &COOKIE_BYTES,
                &[0, 0, 0x02, 0x08],
                &OFF_BYTES
            ])
        );
        let ex = read_reply_header(ReplyStyle::Extended, COOKIE, OFF, 512);
        assert_eq!(
            ex.as_bytes(),
            cat(&[
                &[0x6e, 0x8a, 0x27, 0x8c],
                &[0, 1],
                &[0, 1],
                &COOKIE_BYTES,
                &OFF_BYTES,
                &[0, 0, 0, 0, 0, 0, 0x02, 0x08],
                &OFF_BYTES
            ])
        );
        assert_eq!(ex.as_ref().len(), 40);
    }

    #[test]
    fn ok_reply_bytes() {
        let want_simple = cat(&[&[0x67, 0x44, 0x66, 0x98], &[0; 4], &COOKIE_BYTES]);
        assert_eq!(
            ok_reply(ReplyStyle::Simple, COOKIE, OFF).as_bytes(),
            want_simple
        );
        assert_eq!(
            ok_reply(ReplyStyle::Structured, COOKIE, OFF).as_bytes(),
            want_simple
        );
        assert_eq!(
            ok_reply(ReplyStyle::Extended, COOKIE, OFF).as_bytes(),
            cat(&[
                &[0x6e, 0x8a, 0x27, 0x8c],
                &[0, 1],
                &[0, 0],
                &COOKIE_BYTES,
                &OFF_BYTES,
                &[0; 8]
            ])
        );
    }

    #[test]
    fn error_reply_bytes() {
        let simple_eio = cat(&[&[0x67, 0x44, 0x66, 0x98], &[0, 0, 0, 5], &COOKIE_BYTES]);
        assert_eq!(
            error_reply(ReplyStyle::Simple, COOKIE, OFF, NBD_EIO, NBD_CMD_READ).as_bytes(),
            simple_eio
        );
        assert_eq!(
            error_reply(ReplyStyle::Structured, COOKIE, OFF, NBD_EIO, NBD_CMD_WRITE).as_bytes(),
            simple_eio
        );
        let chunk = cat(&[
            &[0x66, 0x8e, 0x33, 0xef],
            &[0, 1],
            &[0x80, 0x01],
            &COOKIE_BYTES,
            &[0, 0, 0, 6],
            &[0, 0, 0, 5],
            &[0, 0],
        ]);
        assert_eq!(
            error_reply(ReplyStyle::Structured, COOKIE, OFF, NBD_EIO, NBD_CMD_READ).as_bytes(),
            chunk
        );
        assert_eq!(
            error_reply(
                ReplyStyle::Structured,
                COOKIE,
                OFF,
                NBD_EIO,
                NBD_CMD_BLOCK_STATUS
            )
            .as_bytes(),
            chunk
        );
        assert_eq!(
            error_reply(ReplyStyle::Extended, COOKIE, OFF, NBD_EINVAL, NBD_CMD_FLUSH).as_bytes(),
            cat(&[
                &[0x6e, 0x8a, 0x27, 0x8c],
                &[0, 1],
                &[0x80, 0x01],
                &COOKIE_BYTES,
                &OFF_BYTES,
                &[0, 0, 0, 0, 0, 0, 0, 6],
                &[0, 0, 0, 22],
                &[0, 0],
            ])
        );
    }

    #[test]
    fn block_status_bytes() {
        let ext = [(4096u64, 0u32), (512, NBD_STATE_HOLE | NBD_STATE_ZERO)];
        let want = cat(&[
            &[0x66, 0x8e, 0x33, 0xef],
            &[0, 1],
            &[0, 5],
            &COOKIE_BYTES,
            &[0, 0, 0, 20],
            &[0, 0, 0, 1],
            &[0, 0, 0x10, 0, 0, 0, 0, 0],
            &[0, 0, 0x02, 0, 0, 0, 0, 3],
        ]);
        assert_eq!(
            block_status_reply(ReplyStyle::Structured, COOKIE, OFF, 1, &ext),
            want
        );
        // Simple is a caller error; answered in the structured form.
        assert_eq!(
            block_status_reply(ReplyStyle::Simple, COOKIE, OFF, 1, &ext),
            want
        );
        assert_eq!(
            block_status_reply(ReplyStyle::Extended, COOKIE, OFF, 1, &ext),
            cat(&[
                &[0x6e, 0x8a, 0x27, 0x8c],
                &[0, 1],
                &[0, 6],
                &COOKIE_BYTES,
                &OFF_BYTES,
                &[0, 0, 0, 0, 0, 0, 0, 40],
                &[0, 0, 0, 1],
                &[0, 0, 0, 2],
                &[0, 0, 0, 0, 0, 0, 0x10, 0],
                &[0, 0, 0, 0, 0, 0, 0, 0],
                &[0, 0, 0, 0, 0, 0, 0x02, 0],
                &[0, 0, 0, 0, 0, 0, 0, 3],
            ])
        );
    }

    #[test]
    fn block_status_clamps_long_extents() {
        let ext = [(512u64, 0u32), (1 << 33, 3), (512, 0)];
        let out = block_status_reply(ReplyStyle::Structured, 1, 0, 1, &ext);
        // Header + context id + two descriptors; the third is dropped.
        assert_eq!(out.len(), 20 + 4 + 16);
        assert_eq!(&out[16..20], &[0, 0, 0, 20]);
        assert_eq!(&out[32..40], &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 3]);
        // Extended keeps the 64-bit length.
        let out = block_status_reply(ReplyStyle::Extended, 1, 0, 1, &ext);
        assert_eq!(out.len(), 32 + 8 + 3 * 16);
        assert_eq!(&out[56..64], &(1u64 << 33).to_be_bytes());
    }

    #[test]
    fn chunk_header_bytes() {
        assert_eq!(
            chunk_header(
                ReplyStyle::Structured,
                0,
                NBD_REPLY_TYPE_OFFSET_HOLE,
                COOKIE,
                OFF,
                12
            )
            .as_bytes(),
            cat(&[
                &[0x66, 0x8e, 0x33, 0xef],
                &[0, 0],
                &[0, 2],
                &COOKIE_BYTES,
                &[0, 0, 0, 12]
            ])
        );
        assert_eq!(
            chunk_header(ReplyStyle::Extended, 1, NBD_REPLY_TYPE_NONE, COOKIE, OFF, 0),
            ok_reply(ReplyStyle::Extended, COOKIE, OFF)
        );
        assert_eq!(
            simple_reply(COOKIE, NBD_EPERM).as_bytes(),
            cat(&[&[0x67, 0x44, 0x66, 0x98], &[0, 0, 0, 1], &COOKIE_BYTES])
        );
    }

    #[test]
    fn decode_reply_head_truncation_and_magic() {
        assert_eq!(
            decode_reply_head(&[0x67, 0x44]),
            Err(CodecError::Truncated { needed: 4, got: 2 })
        );
        let st = read_reply_header(ReplyStyle::Structured, 1, 0, 1);
        assert_eq!(
            decode_reply_head(&st.as_bytes()[..19]),
            Err(CodecError::Truncated {
                needed: 20,
                got: 19
            })
        );
        let ex = ok_reply(ReplyStyle::Extended, 1, 0);
        assert_eq!(
            decode_reply_head(&ex.as_bytes()[..31]),
            Err(CodecError::Truncated {
                needed: 32,
                got: 31
            })
        );
        assert_eq!(
            decode_reply_head(&[0xde, 0xad, 0xbe, 0xef, 0, 0]),
            Err(CodecError::UnknownReplyMagic { got: 0xdead_beef })
        );
    }

    fn style() -> impl Strategy<Value = ReplyStyle> {
        prop_oneof![
            Just(ReplyStyle::Simple),
            Just(ReplyStyle::Structured),
            Just(ReplyStyle::Extended)
        ]
    }

    proptest! {
        #[test]
        fn request_roundtrip_compact(flags in any::<u16>(), command in any::<u16>(),
                                     cookie in any::<u64>(), offset in any::<u64>(),
                                     length in any::<u32>()) {
            let req = Request { flags, command, cookie, offset, length: u64::from(length) };
            let wire = encode_request(&req, false);
            prop_assert_eq!(wire.len(), COMPACT_REQUEST_LEN);
            prop_assert_eq!(decode_request(&wire, false), Ok(req));
        }

        #[test]
        fn request_roundtrip_extended(flags in any::<u16>(), command in any::<u16>(),
                                      cookie in any::<u64>(), offset in any::<u64>(),
                                      length in any::<u64>()) {
            let req = Request { flags, command, cookie, offset, length };
            let wire = encode_request(&req, true);
            prop_assert_eq!(wire.len(), EXTENDED_REQUEST_LEN);
            prop_assert_eq!(decode_request(&wire, true), Ok(req));
        }

        #[test]
        fn decode_request_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..64),
                                       extended in any::<bool>()) {
            let _ = decode_request(&buf, extended);
        }

        #[test]
        fn decode_reply_head_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok((_, n)) = decode_reply_head(&buf) {
                prop_assert!(n <= buf.len());
            }
        }

        #[test]
        fn decode_reply_head_with_real_magic_never_panics(
            magic in prop_oneof![Just(NBD_SIMPLE_REPLY_MAGIC), Just(NBD_STRUCTURED_REPLY_MAGIC),
                                 Just(NBD_EXTENDED_REPLY_MAGIC)],
            rest in proptest::collection::vec(any::<u8>(), 0..40)) {
            let buf = [&magic.to_be_bytes()[..], &rest].concat();
            if let Ok((_, n)) = decode_reply_head(&buf) {
                prop_assert!(n <= buf.len());
            }
        }

        #[test]
        fn read_reply_roundtrip(style in style(), cookie in any::<u64>(), offset in any::<u64>(),
                                data_len in 0u32..=(u32::MAX - 8)) {
            let h = read_reply_header(style, cookie, offset, data_len);
            let (head, n) = decode_reply_head(h.as_bytes()).unwrap();
            match style {
                ReplyStyle::Simple => {
                    prop_assert_eq!(n, 16);
                    prop_assert_eq!(h.as_bytes().len(), 16);
                    prop_assert_eq!(head, ReplyHead::Simple { error: 0, cookie });
                }
                ReplyStyle::Structured | ReplyStyle::Extended => {
                    let ext = style == ReplyStyle::Extended;
                    prop_assert_eq!(n, if ext { 32 } else { 20 });
                    prop_assert_eq!(h.as_bytes().len(), n + 8);
                    prop_assert_eq!(head, ReplyHead::Chunk {
                        flags: NBD_REPLY_FLAG_DONE,
                        kind: NBD_REPLY_TYPE_OFFSET_DATA,
                        cookie,
                        offset: ext.then_some(offset),
                        length: u64::from(data_len) + 8,
                    });
                    prop_assert_eq!(&h.as_bytes()[n..], &offset.to_be_bytes()[..]);
                }
            }
        }

        #[test]
        fn ok_and_error_roundtrip(style in style(), cookie in any::<u64>(), offset in any::<u64>(),
                                  err in 1u32..200, command in 0u16..10) {
            let ok = ok_reply(style, cookie, offset);
            let (head, n) = decode_reply_head(ok.as_bytes()).unwrap();
            prop_assert_eq!(n, ok.as_bytes().len());
            if style == ReplyStyle::Extended {
                prop_assert_eq!(head, ReplyHead::Chunk {
                    flags: NBD_REPLY_FLAG_DONE, kind: NBD_REPLY_TYPE_NONE,
                    cookie, offset: Some(offset), length: 0 });
            } else {
                prop_assert_eq!(head, ReplyHead::Simple { error: 0, cookie });
            }

            let e = error_reply(style, cookie, offset, err, command);
            let bytes = e.as_bytes();
            let (head, n) = decode_reply_head(bytes).unwrap();
            match head {
                ReplyHead::Simple { error, cookie: c } => {
                    prop_assert_eq!(n, bytes.len());
                    prop_assert_eq!(error, err);
                    prop_assert_eq!(c, cookie);
                    prop_assert!(style == ReplyStyle::Simple
                        || (style == ReplyStyle::Structured
                            && command != NBD_CMD_READ && command != NBD_CMD_BLOCK_STATUS));
                }
                ReplyHead::Chunk { flags, kind, cookie: c, offset: o, length } => {
                    prop_assert_eq!(flags, NBD_REPLY_FLAG_DONE);
                    prop_assert_eq!(kind, NBD_REPLY_TYPE_ERROR);
                    prop_assert_eq!(c, cookie);
                    prop_assert_eq!(o, (style == ReplyStyle::Extended).then_some(offset));
                    prop_assert_eq!(length, 6);
                    prop_assert_eq!(bytes.len(), n + 6);
                    prop_assert_eq!(&bytes[n..n + 4], &err.to_be_bytes()[..]);
                    prop_assert_eq!(&bytes[n + 4..], &[0u8, 0][..]);
                }
            }
        }

        #[test]
        fn block_status_roundtrip(style in style(), cookie in any::<u64>(), offset in any::<u64>(),
                                  id in any::<u32>(),
                                  extents in proptest::collection::vec((1u64..=u64::from(u32::MAX), any::<u32>()), 1..50)) {
            let out = block_status_reply(style, cookie, offset, id, &extents);
            let (head, n) = decode_reply_head(&out).unwrap();
            let ReplyHead::Chunk { flags, kind, cookie: c, offset: o, length } = head else {
                return Err(TestCaseError::fail("expected a chunk"));
            };
            prop_assert_eq!(flags, NBD_REPLY_FLAG_DONE);
            prop_assert_eq!(c, cookie);
            prop_assert_eq!(length as usize, out.len() - n);
            let mut r = Reader::new(&out[n..]);
            prop_assert_eq!(r.u32(), Some(id));
            if style == ReplyStyle::Extended {
                prop_assert_eq!(kind, NBD_REPLY_TYPE_BLOCK_STATUS_EXT);
                prop_assert_eq!(o, Some(offset));
                prop_assert_eq!(r.u32(), Some(extents.len() as u32));
                for &(len, fl) in &extents {
                    prop_assert_eq!(r.u64(), Some(len));
                    prop_assert_eq!(r.u32(), Some(0));
                    prop_assert_eq!(r.u32(), Some(fl));
                }
            } else {
                prop_assert_eq!(kind, NBD_REPLY_TYPE_BLOCK_STATUS);
                prop_assert_eq!(o, None);
                for &(len, fl) in &extents {
                    prop_assert_eq!(r.u32().map(u64::from), Some(len));
                    prop_assert_eq!(r.u32(), Some(fl));
                }
            }
            prop_assert_eq!(r.remaining(), 0);
        }
    }
}
