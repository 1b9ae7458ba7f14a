//! The handshake and option-negotiation phase of NBD, as a pure codec.
//!
//! This module is for: the server's greetings, parsing the client's flags,
//! option headers and option payloads into [`ClientOption`]s (rejecting
//! malformed payloads with the `NBD_REP_ERR_*` code the server should send),
//! and encoding every option reply the server sends.  It also has the
//! client-side counterparts ([`encode_option`], [`parse_option_reply_header`])
//! for tests and fuzzing.
//!
//! It is not for: deciding what to answer (TLS mode, which exports exist,
//! option ordering rules, limits on option counts or payload sizes) or doing
//! any I/O.  The server reads the 16-byte option header, checks the length
//! against its own limit, reads that many bytes, and calls [`parse_option`].

use super::consts::*;
use super::{len_u32, CodecError, Reader};

/// The server's newstyle greeting: `NBDMAGIC`, `IHAVEOPT`, 16-bit
/// handshake flags.
pub fn newstyle_greeting(handshake_flags: u16) -> [u8; 18] {
    let mut out = [0u8; 18];
    out[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..18].copy_from_slice(&handshake_flags.to_be_bytes());
    out
}

/// The server's oldstyle greeting: `NBDMAGIC`, the oldstyle magic, 64-bit
/// size, 32-bit flags (zero global flags in the high 16 bits, transmission
/// flags `eflags` in the low 16 bits, as nbdkit sends them), 124 zero bytes.
pub fn oldstyle_greeting(size: u64, eflags: u16) -> [u8; 152] {
    let mut out = [0u8; 152];
    out[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&NBD_OLDSTYLE_MAGIC.to_be_bytes());
    out[16..24].copy_from_slice(&size.to_be_bytes());
    out[24..28].copy_from_slice(&u32::from(eflags).to_be_bytes());
    out
}

/// The 32-bit client flags sent after the newstyle greeting.  Checking for
/// unknown bits is the server's job.
pub fn parse_client_flags(buf: [u8; 4]) -> u32 {
    u32::from_be_bytes(buf)
}

/// Client side: the 4 bytes of client flags.
pub fn encode_client_flags(flags: u32) -> [u8; 4] {
    flags.to_be_bytes()
}

/// The fixed part of a client option: option number and payload length
/// (the `IHAVEOPT` magic has been checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// `NBD_OPT_*` number.
    pub option: u32,
    /// Length of the data that follows.
    pub length: u32,
}

/// Decode the 16-byte option header: `IHAVEOPT`, 32-bit option, 32-bit
/// length.  A wrong magic is [`CodecError::BadMagic`] (the server should
/// drop the connection).
pub fn parse_option_header(buf: &[u8; 16]) -> Result<OptionHeader, CodecError> {
    let mut r = Reader::new(buf);
    let (magic, option, length) = match (r.u64(), r.u32(), r.u32()) {
        (Some(m), Some(o), Some(l)) => (m, o, l),
        _ => return Err(fixed_size_truncated(buf.len())),
    };
    if magic != IHAVEOPT {
        return Err(CodecError::BadMagic {
            expected: IHAVEOPT,
            got: magic,
        });
    }
    Ok(OptionHeader { option, length })
}

/// Fixed-size buffers cannot be short, so this is unreachable; it keeps the
/// decoders panic-free without `unwrap`.
fn fixed_size_truncated(len: usize) -> CodecError {
    CodecError::Truncated {
        needed: len,
        got: len,
    }
}

/// The data of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InfoRequest {
    /// Export name (may be empty: the default export).
    pub name: String,
    /// Requested `NBD_INFO_*` types, in the client's order (duplicates and
    /// unknown types are kept; the server decides what to do with them).
    pub requests: Vec<u16>,
}

/// The data of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetaRequest {
    /// Export name the contexts are for.
    pub export: String,
    /// Queries such as `"base:allocation"` (syntax is not checked here).
    pub queries: Vec<String>,
}

/// A decoded client option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    /// `NBD_OPT_EXPORT_NAME` with the export name.
    ExportName(String),
    /// `NBD_OPT_ABORT`.
    Abort,
    /// `NBD_OPT_LIST`.
    List,
    /// `NBD_OPT_STARTTLS`.
    StartTls,
    /// `NBD_OPT_INFO`.
    Info(InfoRequest),
    /// `NBD_OPT_GO`.
    Go(InfoRequest),
    /// `NBD_OPT_STRUCTURED_REPLY`.
    StructuredReply,
    /// `NBD_OPT_LIST_META_CONTEXT`.
    ListMetaContext(MetaRequest),
    /// `NBD_OPT_SET_META_CONTEXT`.
    SetMetaContext(MetaRequest),
    /// `NBD_OPT_EXTENDED_HEADERS`.
    ExtendedHeaders,
    /// Any other option number (including the withdrawn
    /// `NBD_OPT_PEEK_EXPORT`); its data is ignored.  The server answers
    /// `NBD_REP_ERR_UNSUP` and keeps negotiating.
    Unknown(u32),
}

impl ClientOption {
    /// The `NBD_OPT_*` number of this option.
    pub fn number(&self) -> u32 {
        match self {
            ClientOption::ExportName(_) => NBD_OPT_EXPORT_NAME,
            ClientOption::Abort => NBD_OPT_ABORT,
            ClientOption::List => NBD_OPT_LIST,
            ClientOption::StartTls => NBD_OPT_STARTTLS,
            ClientOption::Info(_) => NBD_OPT_INFO,
            ClientOption::Go(_) => NBD_OPT_GO,
            ClientOption::StructuredReply => NBD_OPT_STRUCTURED_REPLY,
            ClientOption::ListMetaContext(_) => NBD_OPT_LIST_META_CONTEXT,
            ClientOption::SetMetaContext(_) => NBD_OPT_SET_META_CONTEXT,
            ClientOption::ExtendedHeaders => NBD_OPT_EXTENDED_HEADERS,
            ClientOption::Unknown(n) => *n,
        }
    }
}

/// A malformed option payload: the server answers it with an option reply
/// of type `reply` (normally `NBD_REP_ERR_INVALID`) carrying `message`, and
/// keeps negotiating (for `NBD_OPT_EXPORT_NAME` it must disconnect instead,
/// since that option has no error reply).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OptionError {
    /// An `NBD_REP_ERR_*` code.
    pub reply: u32,
    /// Human-readable explanation (suitable for the log and the client).
    pub message: String,
}

impl OptionError {
    /// An `NBD_REP_ERR_INVALID` error about `option`.
    pub fn invalid(option: u32, what: &str) -> Self {
        OptionError {
            reply: NBD_REP_ERR_INVALID,
            message: format!("{}: {}", option_name(option), what),
        }
    }
}

/// Check a protocol string: at most [`NBD_MAX_STRING`] bytes, valid UTF-8,
/// no NUL bytes (the spec forbids NUL in strings).
fn check_string(option: u32, what: &str, bytes: &[u8]) -> Result<String, OptionError> {
    if bytes.len() > NBD_MAX_STRING {
        return Err(OptionError::invalid(
            option,
            &format!("{what}: string too long"),
        ));
    }
    if bytes.contains(&0) {
        return Err(OptionError::invalid(
            option,
            &format!("{what}: string contains NUL"),
        ));
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_owned()),
        Err(_) => Err(OptionError::invalid(
            option,
            &format!("{what}: string is not valid UTF-8"),
        )),
    }
}

/// Read a 32-bit length and then that many bytes as a checked string.
fn read_string(r: &mut Reader<'_>, option: u32, what: &str) -> Result<String, OptionError> {
    let len = r
        .u32()
        .ok_or_else(|| OptionError::invalid(option, "option data too short"))?;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > NBD_MAX_STRING {
        return Err(OptionError::invalid(
            option,
            &format!("{what}: string too long"),
        ));
    }
    let bytes = r.bytes(len).ok_or_else(|| {
        OptionError::invalid(option, &format!("{what}: length exceeds option data"))
    })?;
    check_string(option, what, bytes)
}

fn parse_info(option: u32, data: &[u8]) -> Result<InfoRequest, OptionError> {
    let mut r = Reader::new(data);
    let name = read_string(&mut r, option, "export name")?;
    let count = r
        .u16()
        .ok_or_else(|| OptionError::invalid(option, "option data too short"))?;
    if r.remaining() != usize::from(count) * 2 {
        return Err(OptionError::invalid(
            option,
            "number of information requests does not match option length",
        ));
    }
    let mut requests = Vec::with_capacity(usize::from(count));
    while let Some(info) = r.u16() {
        requests.push(info);
    }
    Ok(InfoRequest { name, requests })
}

fn parse_meta(option: u32, data: &[u8]) -> Result<MetaRequest, OptionError> {
    let mut r = Reader::new(data);
    let export = read_string(&mut r, option, "export name")?;
    let count = r
        .u32()
        .ok_or_else(|| OptionError::invalid(option, "option data too short"))?;
    // Every query takes at least 4 bytes, so never reserve more than that
    // allows, whatever the count field claims.
    let cap = usize::try_from(count)
        .unwrap_or(usize::MAX)
        .min(r.remaining() / 4);
    let mut queries = Vec::with_capacity(cap);
    for _ in 0..count {
        queries.push(read_string(&mut r, option, "query")?);
    }
    if r.remaining() != 0 {
        return Err(OptionError::invalid(
            option,
            "trailing data after the last query",
        ));
    }
    Ok(MetaRequest { export, queries })
}

/// Decode the data of option number `option`.
///
/// Never panics, whatever `data` holds.  Errors (all `NBD_REP_ERR_INVALID`):
/// data on an option that takes none (ABORT, LIST, STARTTLS,
/// STRUCTURED_REPLY, EXTENDED_HEADERS); length fields inconsistent with the
/// data (too short, overrunning, or trailing bytes) in INFO / GO / META
/// payloads; strings longer than [`NBD_MAX_STRING`], not UTF-8, or
/// containing NUL.  For EXPORT_NAME the whole data is the name.  Unknown
/// option numbers are `Ok(ClientOption::Unknown(n))` whatever the data.
pub fn parse_option(option: u32, data: &[u8]) -> Result<ClientOption, OptionError> {
    let no_data = |opt: ClientOption| {
        if data.is_empty() {
            Ok(opt)
        } else {
            Err(OptionError::invalid(
                option,
                "option should have zero length",
            ))
        }
    };
    match option {
        NBD_OPT_EXPORT_NAME => Ok(ClientOption::ExportName(check_string(
            option,
            "export name",
            data,
        )?)),
        NBD_OPT_ABORT => no_data(ClientOption::Abort),
        NBD_OPT_LIST => no_data(ClientOption::List),
        NBD_OPT_STARTTLS => no_data(ClientOption::StartTls),
        NBD_OPT_INFO => Ok(ClientOption::Info(parse_info(option, data)?)),
        NBD_OPT_GO => Ok(ClientOption::Go(parse_info(option, data)?)),
        NBD_OPT_STRUCTURED_REPLY => no_data(ClientOption::StructuredReply),
        NBD_OPT_LIST_META_CONTEXT => Ok(ClientOption::ListMetaContext(parse_meta(option, data)?)),
        NBD_OPT_SET_META_CONTEXT => Ok(ClientOption::SetMetaContext(parse_meta(option, data)?)),
        NBD_OPT_EXTENDED_HEADERS => no_data(ClientOption::ExtendedHeaders),
        n => Ok(ClientOption::Unknown(n)),
    }
}

// ---------------------------------------------------------------------------
// Server → client option replies.

/// A fixed-newstyle option reply: magic `0x3e889045565a9`, option, reply
/// type, 32-bit payload length, payload.
pub fn option_reply(option: u32, reply_type: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + payload.len());
    out.extend_from_slice(&NBD_OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&len_u32(payload.len()).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Payload of `NBD_REP_SERVER`: 32-bit name length, name, then the
/// description bytes (if any; their length is implied by the reply length).
pub fn rep_server_payload(name: &str, description: Option<&str>) -> Vec<u8> {
    let desc = description.unwrap_or("");
    let mut out = Vec::with_capacity(4 + name.len() + desc.len());
    out.extend_from_slice(&len_u32(name.len()).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(desc.as_bytes());
    out
}

/// Payload of `NBD_REP_INFO` / `NBD_INFO_EXPORT`: 16-bit type 0, 64-bit
/// size, 16-bit transmission flags.
pub fn info_export_payload(size: u64, eflags: u16) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[0..2].copy_from_slice(&NBD_INFO_EXPORT.to_be_bytes());
    out[2..10].copy_from_slice(&size.to_be_bytes());
    out[10..12].copy_from_slice(&eflags.to_be_bytes());
    out
}

fn info_string_payload(info: u16, s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + s.len());
    out.extend_from_slice(&info.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    out
}

/// Payload of `NBD_REP_INFO` / `NBD_INFO_NAME`: 16-bit type 1, name.
pub fn info_name_payload(name: &str) -> Vec<u8> {
    info_string_payload(NBD_INFO_NAME, name)
}

/// Payload of `NBD_REP_INFO` / `NBD_INFO_DESCRIPTION`: 16-bit type 2,
/// description.
pub fn info_description_payload(desc: &str) -> Vec<u8> {
    info_string_payload(NBD_INFO_DESCRIPTION, desc)
}

/// Payload of `NBD_REP_INFO` / `NBD_INFO_BLOCK_SIZE`: 16-bit type 3, then
/// 32-bit minimum, preferred and maximum block sizes.
pub fn info_block_size_payload(minimum: u32, preferred: u32, maximum: u32) -> [u8; 14] {
    let mut out = [0u8; 14];
    out[0..2].copy_from_slice(&NBD_INFO_BLOCK_SIZE.to_be_bytes());
    out[2..6].copy_from_slice(&minimum.to_be_bytes());
    out[6..10].copy_from_slice(&preferred.to_be_bytes());
    out[10..14].copy_from_slice(&maximum.to_be_bytes());
    out
}

/// Payload of `NBD_REP_META_CONTEXT`: 32-bit context id, context name.
pub fn meta_context_payload(id: u32, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// The successful reply to `NBD_OPT_EXPORT_NAME`: 64-bit size, 16-bit
/// transmission flags, then 124 zero bytes unless `no_zeroes` (both sides
/// set NO_ZEROES).
pub fn export_name_reply(size: u64, eflags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(134);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&eflags.to_be_bytes());
    if !no_zeroes {
        out.resize(134, 0);
    }
    out
}

// ---------------------------------------------------------------------------
// Client side (tests, fuzzing).

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&len_u32(s.len()).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Client side: just the data part of an option (what [`parse_option`]
/// takes).  Options without data and `Unknown` give an empty vector.
pub fn encode_option_data(opt: &ClientOption) -> Vec<u8> {
    let mut out = Vec::new();
    match opt {
        ClientOption::ExportName(name) => out.extend_from_slice(name.as_bytes()),
        ClientOption::Info(req) | ClientOption::Go(req) => {
            put_string(&mut out, &req.name);
            // More than 65535 requests cannot be expressed; the count
            // saturates and the list is cut to match.
            let count = u16::try_from(req.requests.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&count.to_be_bytes());
            for info in req.requests.iter().take(usize::from(count)) {
                out.extend_from_slice(&info.to_be_bytes());
            }
        }
        ClientOption::ListMetaContext(req) | ClientOption::SetMetaContext(req) => {
            put_string(&mut out, &req.export);
            out.extend_from_slice(&len_u32(req.queries.len()).to_be_bytes());
            for q in &req.queries {
                put_string(&mut out, q);
            }
        }
        ClientOption::Abort
        | ClientOption::List
        | ClientOption::StartTls
        | ClientOption::StructuredReply
        | ClientOption::ExtendedHeaders
        | ClientOption::Unknown(_) => {}
    }
    out
}

/// Client side: a whole option: `IHAVEOPT`, option number, 32-bit length,
/// data.  `Unknown(n)` is sent with empty data.
pub fn encode_option(opt: &ClientOption) -> Vec<u8> {
    let data = encode_option_data(opt);
    let mut out = Vec::with_capacity(16 + data.len());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&opt.number().to_be_bytes());
    out.extend_from_slice(&len_u32(data.len()).to_be_bytes());
    out.extend_from_slice(&data);
    out
}

/// Client side: decode the 20-byte option reply header into
/// `(option, reply_type, length)`, checking the magic.
pub fn parse_option_reply_header(buf: &[u8; 20]) -> Result<(u32, u32, u32), CodecError> {
    let mut r = Reader::new(buf);
    let (magic, option, reply_type, length) = match (r.u64(), r.u32(), r.u32(), r.u32()) {
        (Some(m), Some(o), Some(t), Some(l)) => (m, o, t, l),
        _ => return Err(fixed_size_truncated(buf.len())),
    };
    if magic != NBD_OPT_REPLY_MAGIC {
        return Err(CodecError::BadMagic {
            expected: NBD_OPT_REPLY_MAGIC,
            got: magic,
        });
    }
    Ok((option, reply_type, length))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(buf: &[u8]) -> OptionHeader {
        let h: &[u8; 16] = buf[..16].try_into().unwrap();
        parse_option_header(h).unwrap()
    }

    #[test]
    fn newstyle_greeting_bytes() {
        assert_eq!(
            newstyle_greeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES),
            *b"NBDMAGICIHAVEOPT\x00\x03"
        );
    }

    #[test]
    fn oldstyle_greeting_bytes() {
        let g = oldstyle_greeting(0x1_0000_0000, 0x0183);
        let mut want = Vec::new();
        want.extend_from_slice(b"NBDMAGIC");
        want.extend_from_slice(&[0x00, 0x00, 0x42, 0x02, 0x81, 0x86, 0x12, 0x53]);
        want.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
        want.extend_from_slice(&[0, 0, 0x01, 0x83]);
        want.extend_from_slice(&[0; 124]);
        assert_eq!(g.to_vec(), want);
    }

    #[test]
    fn client_flags() {
        assert_eq!(parse_client_flags([0, 0, 0, 3]), 3);
        assert_eq!(encode_client_flags(3), [0, 0, 0, 3]);
    }

    #[test]
    fn option_header_bytes() {
        let buf = *b"IHAVEOPT\x00\x00\x00\x07\x00\x00\x01\x02";
        assert_eq!(
            parse_option_header(&buf),
            Ok(OptionHeader {
                option: 7,
                length: 0x102
            })
        );
        let bad = *b"IHAVEOPX\x00\x00\x00\x07\x00\x00\x01\x02";
        assert!(matches!(
            parse_option_header(&bad),
            Err(CodecError::BadMagic {
                expected: IHAVEOPT,
                ..
            })
        ));
    }

    #[test]
    fn option_reply_bytes() {
        let r = option_reply(NBD_OPT_GO, NBD_REP_ACK, &[]);
        assert_eq!(
            r,
            [0, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 0]
        );
        let r = option_reply(NBD_OPT_LIST, NBD_REP_ERR_INVALID, b"no");
        assert_eq!(
            r,
            [
                0, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 3, 0x80, 0, 0, 3, 0, 0, 0, 2,
                b'n', b'o'
            ]
        );
    }

    #[test]
    fn option_reply_header_roundtrip_and_magic() {
        let r = option_reply(9, NBD_REP_META_CONTEXT, b"abcd");
        let h: &[u8; 20] = r[..20].try_into().unwrap();
        assert_eq!(
            parse_option_reply_header(h),
            Ok((9, NBD_REP_META_CONTEXT, 4))
        );
        let mut bad = *h;
        bad[0] = 1;
        assert!(matches!(
            parse_option_reply_header(&bad),
            Err(CodecError::BadMagic { .. })
        ));
    }

    #[test]
    fn rep_server_bytes() {
        assert_eq!(
            rep_server_payload("ab", Some("xyz")),
            [0, 0, 0, 2, b'a', b'b', b'x', b'y', b'z']
        );
        assert_eq!(rep_server_payload("", None), [0, 0, 0, 0]);
    }

    #[test]
    fn info_payload_bytes() {
        assert_eq!(
            info_export_payload(0x0102_0304_0506_0708, 0x0a0b),
            [0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0x0a, 0x0b]
        );
        assert_eq!(info_name_payload("nm"), [0, 1, b'n', b'm']);
        assert_eq!(info_description_payload("d"), [0, 2, b'd']);
        assert_eq!(
            info_block_size_payload(1, 4096, 0x0200_0000),
            [0, 3, 0, 0, 0, 1, 0, 0, 0x10, 0, 2, 0, 0, 0]
        );
    }

    #[test]
    fn meta_context_bytes() {
        assert_eq!(
            meta_context_payload(1, "base:allocation"),
            b"\x00\x00\x00\x01base:allocation"
        );
    }

    #[test]
    fn export_name_reply_bytes() {
        let short = export_name_reply(512, 0x0003, true);
        assert_eq!(short, [0, 0, 0, 0, 0, 0, 2, 0, 0, 3]);
        let long = export_name_reply(512, 0x0003, false);
        assert_eq!(long.len(), 134);
        assert_eq!(&long[..10], &short[..]);
        assert!(long[10..].iter().all(|&b| b == 0));
    }

    #[test]
    fn encode_option_bytes() {
        let go = ClientOption::Go(InfoRequest {
            name: "a".into(),
            requests: vec![NBD_INFO_BLOCK_SIZE],
        });
        assert_eq!(
            encode_option(&go),
            b"IHAVEOPT\x00\x00\x00\x07\x00\x00\x00\x09\x00\x00\x00\x01a\x00\x01\x00\x03"
        );
        let set = ClientOption::SetMetaContext(MetaRequest {
            export: "".into(),
            queries: vec!["b:c".into()],
        });
        assert_eq!(
            encode_option(&set),
            b"IHAVEOPT\x00\x00\x00\x0a\x00\x00\x00\x0f\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x03b:c"
        );
        assert_eq!(
            encode_option(&ClientOption::Unknown(0x1234)),
            b"IHAVEOPT\x00\x00\x12\x34\x00\x00\x00\x00"
        );
        assert_eq!(
            encode_option(&ClientOption::ExportName("x".into())),
            b"IHAVEOPT\x00\x00\x00\x01\x00\x00\x00\x01x"
        );
    }

    #[test]
    fn export_name_limits() {
        let ok = "a".repeat(NBD_MAX_STRING);
        assert_eq!(
            parse_option(NBD_OPT_EXPORT_NAME, ok.as_bytes()),
            Ok(ClientOption::ExportName(ok.clone()))
        );
        let long = "a".repeat(NBD_MAX_STRING + 1);
        let e = parse_option(NBD_OPT_EXPORT_NAME, long.as_bytes()).unwrap_err();
        assert_eq!(e.reply, NBD_REP_ERR_INVALID);
        assert!(e.message.contains("string too long"), "{}", e.message);
        assert_eq!(
            parse_option(NBD_OPT_EXPORT_NAME, b""),
            Ok(ClientOption::ExportName(String::new()))
        );
    }

    #[test]
    fn go_name_limits() {
        for (len, ok) in [(NBD_MAX_STRING, true), (NBD_MAX_STRING + 1, false)] {
            let opt = ClientOption::Go(InfoRequest {
                name: "n".repeat(len),
                requests: vec![],
            });
            let data = encode_option_data(&opt);
            let r = parse_option(NBD_OPT_GO, &data);
            if ok {
                assert_eq!(r, Ok(opt));
            } else {
                let e = r.unwrap_err();
                assert_eq!(e.reply, NBD_REP_ERR_INVALID);
                assert!(e.message.contains("string too long"));
            }
        }
    }

    #[test]
    fn invalid_utf8_and_nul() {
        let e = parse_option(NBD_OPT_EXPORT_NAME, &[0xff, 0xfe]).unwrap_err();
        assert_eq!(e.reply, NBD_REP_ERR_INVALID);
        let e = parse_option(NBD_OPT_EXPORT_NAME, b"a\0b").unwrap_err();
        assert_eq!(e.reply, NBD_REP_ERR_INVALID);
        // Bad UTF-8 in a meta context query.
        let mut data = vec![0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0x80];
        let e = parse_option(NBD_OPT_LIST_META_CONTEXT, &data).unwrap_err();
        assert_eq!(e.reply, NBD_REP_ERR_INVALID);
        data[12] = b'x';
        assert!(parse_option(NBD_OPT_LIST_META_CONTEXT, &data).is_ok());
    }

    #[test]
    fn info_name_length_overruns_data() {
        // Name length 10, but only 3 name bytes and no count.
        let data = [0, 0, 0, 10, b'a', b'b', b'c'];
        let e = parse_option(NBD_OPT_INFO, &data).unwrap_err();
        assert_eq!(e.reply, NBD_REP_ERR_INVALID);
        // Name length 0xffffffff.
        let data = [0xff, 0xff, 0xff, 0xff, 0, 0];
        assert_eq!(
            parse_option(NBD_OPT_GO, &data).unwrap_err().reply,
            NBD_REP_ERR_INVALID
        );
        // Too short for even the name length.
        assert!(parse_option(NBD_OPT_GO, &[0, 0]).is_err());
        assert!(parse_option(NBD_OPT_GO, &[]).is_err());
    }

    #[test]
    fn info_count_mismatch() {
        // Count says 2 requests, only one present.
        let data = [0, 0, 0, 0, 0, 2, 0, 3];
        assert!(parse_option(NBD_OPT_INFO, &data).is_err());
        // Count says 1, trailing byte.
        let data = [0, 0, 0, 0, 0, 1, 0, 3, 0];
        assert!(parse_option(NBD_OPT_INFO, &data).is_err());
        // Exact.
        let data = [0, 0, 0, 0, 0, 1, 0, 3];
        assert_eq!(
            parse_option(NBD_OPT_INFO, &data),
            Ok(ClientOption::Info(InfoRequest {
                name: String::new(),
                requests: vec![3]
            }))
        );
    }

    #[test]
    fn meta_length_mismatches() {
        // Query count larger than the data.
        let data = [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        assert!(parse_option(NBD_OPT_SET_META_CONTEXT, &data).is_err());
        // Trailing bytes.
        let data = [0, 0, 0, 0, 0, 0, 0, 0, 1];
        assert!(parse_option(NBD_OPT_SET_META_CONTEXT, &data).is_err());
        // Query longer than 4096.
        let mut data = vec![0, 0, 0, 0, 0, 0, 0, 1];
        data.extend_from_slice(&4097u32.to_be_bytes());
        data.extend(std::iter::repeat_n(b'q', 4097));
        let e = parse_option(NBD_OPT_SET_META_CONTEXT, &data).unwrap_err();
        assert!(e.message.contains("string too long"));
        // Zero queries is fine.
        let data = [0, 0, 0, 1, b'e', 0, 0, 0, 0];
        assert_eq!(
            parse_option(NBD_OPT_LIST_META_CONTEXT, &data),
            Ok(ClientOption::ListMetaContext(MetaRequest {
                export: "e".into(),
                queries: vec![]
            }))
        );
    }

    #[test]
    fn no_data_options_reject_data() {
        for opt in [
            NBD_OPT_ABORT,
            NBD_OPT_LIST,
            NBD_OPT_STARTTLS,
            NBD_OPT_STRUCTURED_REPLY,
            NBD_OPT_EXTENDED_HEADERS,
        ] {
            let e = parse_option(opt, b"x").unwrap_err();
            assert_eq!(e.reply, NBD_REP_ERR_INVALID);
            assert!(e.message.starts_with(option_name(opt)));
            assert!(parse_option(opt, b"").is_ok());
        }
        assert_eq!(parse_option(NBD_OPT_LIST, b""), Ok(ClientOption::List));
    }

    #[test]
    fn unknown_options() {
        assert_eq!(
            parse_option(NBD_OPT_PEEK_EXPORT, b"whatever"),
            Ok(ClientOption::Unknown(4))
        );
        assert_eq!(parse_option(0, b""), Ok(ClientOption::Unknown(0)));
        assert_eq!(
            parse_option(0xdead_beef, b""),
            Ok(ClientOption::Unknown(0xdead_beef))
        );
    }

    fn nbd_string() -> impl Strategy<Value = String> {
        // Arbitrary non-NUL chars, then cut to at most 4096 bytes on a char
        // boundary.  Some cases use long ASCII to reach the limit.
        prop_oneof![
            "[^\u{0}]{0,64}",
            (0usize..=NBD_MAX_STRING).prop_map(|n| "x".repeat(n)),
            proptest::collection::vec(any::<char>().prop_filter("no NUL", |c| *c != '\0'), 0..1200)
                .prop_map(|v| v.into_iter().collect::<String>()),
        ]
        .prop_map(|mut s| {
            while s.len() > NBD_MAX_STRING {
                s.pop();
            }
            s
        })
    }

    fn info_request() -> impl Strategy<Value = InfoRequest> {
        (nbd_string(), proptest::collection::vec(any::<u16>(), 0..64))
            .prop_map(|(name, requests)| InfoRequest { name, requests })
    }

    fn meta_request() -> impl Strategy<Value = MetaRequest> {
        (nbd_string(), proptest::collection::vec(nbd_string(), 0..6))
            .prop_map(|(export, queries)| MetaRequest { export, queries })
    }

    fn client_option() -> impl Strategy<Value = ClientOption> {
        prop_oneof![
            nbd_string().prop_map(ClientOption::ExportName),
            Just(ClientOption::Abort),
            Just(ClientOption::List),
            Just(ClientOption::StartTls),
            info_request().prop_map(ClientOption::Info),
            info_request().prop_map(ClientOption::Go),
            Just(ClientOption::StructuredReply),
            meta_request().prop_map(ClientOption::ListMetaContext),
            meta_request().prop_map(ClientOption::SetMetaContext),
            Just(ClientOption::ExtendedHeaders),
            (12u32..).prop_map(ClientOption::Unknown),
            Just(ClientOption::Unknown(0)),
            Just(ClientOption::Unknown(NBD_OPT_PEEK_EXPORT)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn option_roundtrip(opt in client_option()) {
            let wire = encode_option(&opt);
            prop_assert!(wire.len() >= 16);
            let h = header(&wire);
            prop_assert_eq!(h.option, opt.number());
            prop_assert_eq!(h.length as usize, wire.len() - 16);
            let parsed = parse_option(h.option, &wire[16..]);
            prop_assert_eq!(parsed, Ok(opt));
        }

        #[test]
        fn parse_option_never_panics(
            option in prop_oneof![0u32..16, any::<u32>()],
            data in proptest::collection::vec(any::<u8>(), 0..4096),
        ) {
            let _ = parse_option(option, &data);
        }

        #[test]
        fn parse_option_structured_garbage_never_panics(
            option in prop_oneof![Just(NBD_OPT_INFO), Just(NBD_OPT_GO),
                                  Just(NBD_OPT_LIST_META_CONTEXT),
                                  Just(NBD_OPT_SET_META_CONTEXT)],
            len in prop_oneof![0u32..16, any::<u32>()],
            count in prop_oneof![0u32..4, any::<u32>()],
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            // Plausible prefixes reach deeper than uniformly random bytes.
            let mut data = len.to_be_bytes().to_vec();
            data.extend(std::iter::repeat_n(b'a', (len as usize).min(32)));
            data.extend_from_slice(&count.to_be_bytes());
            data.extend_from_slice(&tail);
            if let Err(e) = parse_option(option, &data) {
                prop_assert_eq!(e.reply, NBD_REP_ERR_INVALID);
            }
        }

        #[test]
        fn option_header_never_panics(buf in any::<[u8; 16]>()) {
            let _ = parse_option_header(&buf);
        }

        #[test]
        fn option_reply_roundtrip(option in any::<u32>(), rt in any::<u32>(),
                                  payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            let r = option_reply(option, rt, &payload);
            let h: &[u8; 20] = r[..20].try_into().unwrap();
            prop_assert_eq!(parse_option_reply_header(h), Ok((option, rt, payload.len() as u32)));
            prop_assert_eq!(&r[20..], &payload[..]);
        }
    }
}
