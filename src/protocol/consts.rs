//! Every numeric constant of the NBD protocol, named as in the NBD
//! specification (`doc/proto.md` of NetworkBlockDevice/nbd), plus small
//! functions that turn numbers back into names for debug messages.
//!
//! This module is for: magic numbers, flag bits, option / reply / command /
//! chunk type numbers, and NBD error values.  It is not for encoding or
//! decoding anything (see [`super::handshake`] and [`super::transmission`]),
//! nor for mapping host `errno` values to NBD errors (that is server policy).
//!
//! Sizes follow the wire: 16-bit fields are `u16`, 32-bit fields `u32`,
//! 64-bit magics `u64`.

// ---------------------------------------------------------------------------
// Magic numbers.

/// `NBDMAGIC`: first 8 bytes the server sends (ASCII "NBDMAGIC").
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle greeting magic, also prefixes every client option
/// (ASCII "IHAVEOPT").
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Oldstyle greeting magic (the spec's `cliserv_magic`).
pub const NBD_OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Magic prefixing every fixed-newstyle option reply.
pub const NBD_OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Compact (28-byte) request magic.
pub const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
/// Extended (32-byte) request magic, used once `NBD_OPT_EXTENDED_HEADERS`
/// has been negotiated.
pub const NBD_EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// Simple reply magic (the spec notes it used to be called
/// `NBD_REPLY_MAGIC`).
pub const NBD_SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Old name of [`NBD_SIMPLE_REPLY_MAGIC`].
pub const NBD_REPLY_MAGIC: u32 = NBD_SIMPLE_REPLY_MAGIC;
/// Structured reply chunk magic.
pub const NBD_STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Extended reply chunk magic.
pub const NBD_EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;

// ---------------------------------------------------------------------------
// Handshake flags (server → client, 16 bits) and client flags (32 bits).

/// Server supports the fixed newstyle protocol.
pub const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Server will omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME` if the
/// client asks for it.
pub const NBD_FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client supports the fixed newstyle protocol.
pub const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client asks the server to omit the 124 zero bytes.
pub const NBD_FLAG_C_NO_ZEROES: u32 = 1 << 1;

// ---------------------------------------------------------------------------
// Options (client → server, 32 bits).

/// Choose an export and enter transmission (no error reply possible).
pub const NBD_OPT_EXPORT_NAME: u32 = 1;
/// Client wants to abort negotiation.
pub const NBD_OPT_ABORT: u32 = 2;
/// List exports.
pub const NBD_OPT_LIST: u32 = 3;
/// Withdrawn by the spec; kept so the number has a name.  Servers treat it
/// as unknown.
pub const NBD_OPT_PEEK_EXPORT: u32 = 4;
/// Upgrade the connection to TLS.
pub const NBD_OPT_STARTTLS: u32 = 5;
/// Ask about an export without entering transmission.
pub const NBD_OPT_INFO: u32 = 6;
/// Like INFO, then enter transmission.
pub const NBD_OPT_GO: u32 = 7;
/// Negotiate structured replies.
pub const NBD_OPT_STRUCTURED_REPLY: u32 = 8;
/// List metadata contexts.
pub const NBD_OPT_LIST_META_CONTEXT: u32 = 9;
/// Select metadata contexts.
pub const NBD_OPT_SET_META_CONTEXT: u32 = 10;
/// Negotiate extended (32-byte) headers.
pub const NBD_OPT_EXTENDED_HEADERS: u32 = 11;

// ---------------------------------------------------------------------------
// Option reply types (server → client, 32 bits).

/// Bit 31: set on every error reply type.
pub const NBD_REP_FLAG_ERROR: u32 = 1 << 31;
/// The option was handled (final reply).
pub const NBD_REP_ACK: u32 = 1;
/// One export, in reply to `NBD_OPT_LIST`.
pub const NBD_REP_SERVER: u32 = 2;
/// One piece of export information, in reply to INFO / GO.
pub const NBD_REP_INFO: u32 = 3;
/// One metadata context, in reply to LIST/SET_META_CONTEXT.
pub const NBD_REP_META_CONTEXT: u32 = 4;
/// Option not supported (unknown options get this).
pub const NBD_REP_ERR_UNSUP: u32 = NBD_REP_FLAG_ERROR | 1;
/// Forbidden by server policy.
pub const NBD_REP_ERR_POLICY: u32 = NBD_REP_FLAG_ERROR | 2;
/// Syntactically or semantically invalid option.
pub const NBD_REP_ERR_INVALID: u32 = NBD_REP_FLAG_ERROR | 3;
/// Not supported on this platform.
pub const NBD_REP_ERR_PLATFORM: u32 = NBD_REP_FLAG_ERROR | 4;
/// TLS is required first.
pub const NBD_REP_ERR_TLS_REQD: u32 = NBD_REP_FLAG_ERROR | 5;
/// No such export.
pub const NBD_REP_ERR_UNKNOWN: u32 = NBD_REP_FLAG_ERROR | 6;
/// Server is shutting down.
pub const NBD_REP_ERR_SHUTDOWN: u32 = NBD_REP_FLAG_ERROR | 7;
/// Client must request `NBD_INFO_BLOCK_SIZE`.
pub const NBD_REP_ERR_BLOCK_SIZE_REQD: u32 = NBD_REP_FLAG_ERROR | 8;
/// Request or reply too large.
pub const NBD_REP_ERR_TOO_BIG: u32 = NBD_REP_FLAG_ERROR | 9;
/// Extended headers are required (or already negotiated, for a later
/// `NBD_OPT_STRUCTURED_REPLY`).
pub const NBD_REP_ERR_EXT_HEADER_REQD: u32 = NBD_REP_FLAG_ERROR | 10;

// ---------------------------------------------------------------------------
// Information types inside `NBD_REP_INFO` (16 bits).

/// Size and transmission flags (mandatory reply to INFO / GO).
pub const NBD_INFO_EXPORT: u16 = 0;
/// Canonical export name.
pub const NBD_INFO_NAME: u16 = 1;
/// Human-readable description.
pub const NBD_INFO_DESCRIPTION: u16 = 2;
/// Minimum, preferred and maximum block sizes.
pub const NBD_INFO_BLOCK_SIZE: u16 = 3;

// ---------------------------------------------------------------------------
// Transmission flags (16 bits).

/// Always set.
pub const NBD_FLAG_HAS_FLAGS: u16 = 1 << 0;
/// Export is read-only.
pub const NBD_FLAG_READ_ONLY: u16 = 1 << 1;
/// Server supports `NBD_CMD_FLUSH`.
pub const NBD_FLAG_SEND_FLUSH: u16 = 1 << 2;
/// Server supports `NBD_CMD_FLAG_FUA`.
pub const NBD_FLAG_SEND_FUA: u16 = 1 << 3;
/// Export has rotational characteristics.
pub const NBD_FLAG_ROTATIONAL: u16 = 1 << 4;
/// Server supports `NBD_CMD_TRIM`.
pub const NBD_FLAG_SEND_TRIM: u16 = 1 << 5;
/// Server supports `NBD_CMD_WRITE_ZEROES` and `NBD_CMD_FLAG_NO_HOLE`.
pub const NBD_FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Server supports `NBD_CMD_FLAG_DF` (only with structured replies).
pub const NBD_FLAG_SEND_DF: u16 = 1 << 7;
/// Multiple connections share one consistent cache.
pub const NBD_FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// Server supports `NBD_CMD_RESIZE` (experimental).
pub const NBD_FLAG_SEND_RESIZE: u16 = 1 << 9;
/// Server supports `NBD_CMD_CACHE`.
pub const NBD_FLAG_SEND_CACHE: u16 = 1 << 10;
/// Server supports `NBD_CMD_FLAG_FAST_ZERO`.
pub const NBD_FLAG_SEND_FAST_ZERO: u16 = 1 << 11;
/// Server accepts a payload on `NBD_CMD_BLOCK_STATUS` (extended headers).
pub const NBD_FLAG_BLOCK_STATUS_PAYLOAD: u16 = 1 << 12;

// ---------------------------------------------------------------------------
// Commands (16 bits).

/// Read.
pub const NBD_CMD_READ: u16 = 0;
/// Write.
pub const NBD_CMD_WRITE: u16 = 1;
/// Disconnect (no reply).
pub const NBD_CMD_DISC: u16 = 2;
/// Flush.
pub const NBD_CMD_FLUSH: u16 = 3;
/// Trim (discard hint).
pub const NBD_CMD_TRIM: u16 = 4;
/// Prefetch into cache.
pub const NBD_CMD_CACHE: u16 = 5;
/// Write zeroes.
pub const NBD_CMD_WRITE_ZEROES: u16 = 6;
/// Query block status.
pub const NBD_CMD_BLOCK_STATUS: u16 = 7;
/// Resize the export (experimental; nbdkit does not support it).
pub const NBD_CMD_RESIZE: u16 = 8;

// ---------------------------------------------------------------------------
// Command flags (16 bits).

/// Force unit access.
pub const NBD_CMD_FLAG_FUA: u16 = 1 << 0;
/// Do not punch holes (WRITE_ZEROES).
pub const NBD_CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Do not fragment the read reply.
pub const NBD_CMD_FLAG_DF: u16 = 1 << 2;
/// Return only one extent (BLOCK_STATUS).
pub const NBD_CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// Fail fast if zeroing is not faster than writing.
pub const NBD_CMD_FLAG_FAST_ZERO: u16 = 1 << 4;
/// The length field is a payload length (extended headers only).
pub const NBD_CMD_FLAG_PAYLOAD_LEN: u16 = 1 << 5;

// ---------------------------------------------------------------------------
// Structured / extended reply chunks.

/// Reply flag: this is the last chunk of the reply.
pub const NBD_REPLY_FLAG_DONE: u16 = 1 << 0;
/// Chunk with no payload.
pub const NBD_REPLY_TYPE_NONE: u16 = 0;
/// 64-bit offset followed by data.
pub const NBD_REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// 64-bit offset and 32-bit hole size.
pub const NBD_REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Context id + (32-bit length, 32-bit flags) descriptors.
pub const NBD_REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Context id, descriptor count, (64-bit length, 32-bit padding, 32-bit
/// flags) descriptors (extended headers only).
pub const NBD_REPLY_TYPE_BLOCK_STATUS_EXT: u16 = 6;
/// Bit 15: set on every error chunk type.
pub const NBD_REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;
/// 32-bit error, 16-bit message length, message.
pub const NBD_REPLY_TYPE_ERROR: u16 = NBD_REPLY_TYPE_ERROR_BIT | 1;
/// As `ERROR`, followed by a 64-bit offset.
pub const NBD_REPLY_TYPE_ERROR_OFFSET: u16 = NBD_REPLY_TYPE_ERROR_BIT | 2;

// ---------------------------------------------------------------------------
// NBD error values (32 bits, independent of the host's errno numbering).

/// Operation not permitted.
pub const NBD_EPERM: u32 = 1;
/// Input/output error.
pub const NBD_EIO: u32 = 5;
/// Cannot allocate memory.
pub const NBD_ENOMEM: u32 = 12;
/// Invalid argument.
pub const NBD_EINVAL: u32 = 22;
/// No space left on device.
pub const NBD_ENOSPC: u32 = 28;
/// Value too large (DF reads).
pub const NBD_EOVERFLOW: u32 = 75;
/// Operation not supported (FAST_ZERO).
pub const NBD_ENOTSUP: u32 = 95;
/// Server is shutting down.
pub const NBD_ESHUTDOWN: u32 = 108;

// ---------------------------------------------------------------------------
// Metadata context `base:allocation` status flags.

/// The extent is a hole (unallocated).
pub const NBD_STATE_HOLE: u32 = 1 << 0;
/// The extent reads as zeroes.
pub const NBD_STATE_ZERO: u32 = 1 << 1;

/// Longest string (export name, query, message) the protocol allows, bytes.
pub const NBD_MAX_STRING: usize = 4096;

// ---------------------------------------------------------------------------
// Names for debug messages.

/// The spec name of an option number (`"NBD_OPT_GO"`), or `"unknown"`.
pub fn option_name(option: u32) -> &'static str {
    match option {
        NBD_OPT_EXPORT_NAME => "NBD_OPT_EXPORT_NAME",
        NBD_OPT_ABORT => "NBD_OPT_ABORT",
        NBD_OPT_LIST => "NBD_OPT_LIST",
        NBD_OPT_PEEK_EXPORT => "NBD_OPT_PEEK_EXPORT",
        NBD_OPT_STARTTLS => "NBD_OPT_STARTTLS",
        NBD_OPT_INFO => "NBD_OPT_INFO",
        NBD_OPT_GO => "NBD_OPT_GO",
        NBD_OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
        NBD_OPT_LIST_META_CONTEXT => "NBD_OPT_LIST_META_CONTEXT",
        NBD_OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
        NBD_OPT_EXTENDED_HEADERS => "NBD_OPT_EXTENDED_HEADERS",
        _ => "unknown",
    }
}

/// The spec name of an option reply type (`"NBD_REP_ERR_UNSUP"`), or
/// `"unknown"`.
pub fn reply_name(reply_type: u32) -> &'static str {
    match reply_type {
        NBD_REP_ACK => "NBD_REP_ACK",
        NBD_REP_SERVER => "NBD_REP_SERVER",
        NBD_REP_INFO => "NBD_REP_INFO",
        NBD_REP_META_CONTEXT => "NBD_REP_META_CONTEXT",
        NBD_REP_ERR_UNSUP => "NBD_REP_ERR_UNSUP",
        NBD_REP_ERR_POLICY => "NBD_REP_ERR_POLICY",
        NBD_REP_ERR_INVALID => "NBD_REP_ERR_INVALID",
        NBD_REP_ERR_PLATFORM => "NBD_REP_ERR_PLATFORM",
        NBD_REP_ERR_TLS_REQD => "NBD_REP_ERR_TLS_REQD",
        NBD_REP_ERR_UNKNOWN => "NBD_REP_ERR_UNKNOWN",
        NBD_REP_ERR_SHUTDOWN => "NBD_REP_ERR_SHUTDOWN",
        NBD_REP_ERR_BLOCK_SIZE_REQD => "NBD_REP_ERR_BLOCK_SIZE_REQD",
        NBD_REP_ERR_TOO_BIG => "NBD_REP_ERR_TOO_BIG",
        NBD_REP_ERR_EXT_HEADER_REQD => "NBD_REP_ERR_EXT_HEADER_REQD",
        _ => "unknown",
    }
}

/// The spec name of an `NBD_INFO_*` type, or `"unknown"`.
pub fn info_name(info: u16) -> &'static str {
    match info {
        NBD_INFO_EXPORT => "NBD_INFO_EXPORT",
        NBD_INFO_NAME => "NBD_INFO_NAME",
        NBD_INFO_DESCRIPTION => "NBD_INFO_DESCRIPTION",
        NBD_INFO_BLOCK_SIZE => "NBD_INFO_BLOCK_SIZE",
        _ => "unknown",
    }
}

/// The spec name of a command (`"NBD_CMD_READ"`), or `"unknown"`.
pub fn command_name(command: u16) -> &'static str {
    match command {
        NBD_CMD_READ => "NBD_CMD_READ",
        NBD_CMD_WRITE => "NBD_CMD_WRITE",
        NBD_CMD_DISC => "NBD_CMD_DISC",
        NBD_CMD_FLUSH => "NBD_CMD_FLUSH",
        NBD_CMD_TRIM => "NBD_CMD_TRIM",
        NBD_CMD_CACHE => "NBD_CMD_CACHE",
        NBD_CMD_WRITE_ZEROES => "NBD_CMD_WRITE_ZEROES",
        NBD_CMD_BLOCK_STATUS => "NBD_CMD_BLOCK_STATUS",
        NBD_CMD_RESIZE => "NBD_CMD_RESIZE",
        _ => "unknown",
    }
}

/// The spec name of a reply chunk type (`"NBD_REPLY_TYPE_OFFSET_DATA"`), or
/// `"unknown"`.
pub fn reply_type_name(kind: u16) -> &'static str {
    match kind {
        NBD_REPLY_TYPE_NONE => "NBD_REPLY_TYPE_NONE",
        NBD_REPLY_TYPE_OFFSET_DATA => "NBD_REPLY_TYPE_OFFSET_DATA",
        NBD_REPLY_TYPE_OFFSET_HOLE => "NBD_REPLY_TYPE_OFFSET_HOLE",
        NBD_REPLY_TYPE_BLOCK_STATUS => "NBD_REPLY_TYPE_BLOCK_STATUS",
        NBD_REPLY_TYPE_BLOCK_STATUS_EXT => "NBD_REPLY_TYPE_BLOCK_STATUS_EXT",
        NBD_REPLY_TYPE_ERROR => "NBD_REPLY_TYPE_ERROR",
        NBD_REPLY_TYPE_ERROR_OFFSET => "NBD_REPLY_TYPE_ERROR_OFFSET",
        _ => "unknown",
    }
}

/// The spec name of an NBD error value (`"NBD_EIO"`), or `"unknown"`.
/// Zero (success) is `"0"`.
pub fn nbd_errno_name(error: u32) -> &'static str {
    match error {
        0 => "0",
        NBD_EPERM => "NBD_EPERM",
        NBD_EIO => "NBD_EIO",
        NBD_ENOMEM => "NBD_ENOMEM",
        NBD_EINVAL => "NBD_EINVAL",
        NBD_ENOSPC => "NBD_ENOSPC",
        NBD_EOVERFLOW => "NBD_EOVERFLOW",
        NBD_ENOTSUP => "NBD_ENOTSUP",
        NBD_ESHUTDOWN => "NBD_ESHUTDOWN",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics_match_spec_text() {
        assert_eq!(&NBDMAGIC.to_be_bytes(), b"NBDMAGIC");
        assert_eq!(&IHAVEOPT.to_be_bytes(), b"IHAVEOPT");
        assert_eq!(NBD_OLDSTYLE_MAGIC, 0x00420281861253);
        assert_eq!(NBD_OPT_REPLY_MAGIC, 0x3e889045565a9);
    }

    #[test]
    fn error_codes_have_bit_31() {
        assert_eq!(NBD_REP_ERR_UNSUP, 0x8000_0001);
        assert_eq!(NBD_REP_ERR_EXT_HEADER_REQD, 0x8000_000a);
        assert_eq!(NBD_REPLY_TYPE_ERROR, 32769);
        assert_eq!(NBD_REPLY_TYPE_ERROR_OFFSET, 32770);
    }

    #[test]
    fn names() {
        assert_eq!(option_name(NBD_OPT_GO), "NBD_OPT_GO");
        assert_eq!(
            option_name(NBD_OPT_EXTENDED_HEADERS),
            "NBD_OPT_EXTENDED_HEADERS"
        );
        assert_eq!(option_name(999), "unknown");
        assert_eq!(command_name(NBD_CMD_READ), "NBD_CMD_READ");
        assert_eq!(command_name(NBD_CMD_BLOCK_STATUS), "NBD_CMD_BLOCK_STATUS");
        assert_eq!(command_name(1000), "unknown");
        assert_eq!(nbd_errno_name(NBD_ESHUTDOWN), "NBD_ESHUTDOWN");
        assert_eq!(nbd_errno_name(4), "unknown");
        assert_eq!(reply_name(NBD_REP_ERR_INVALID), "NBD_REP_ERR_INVALID");
        assert_eq!(
            reply_type_name(NBD_REPLY_TYPE_ERROR),
            "NBD_REPLY_TYPE_ERROR"
        );
        assert_eq!(info_name(NBD_INFO_BLOCK_SIZE), "NBD_INFO_BLOCK_SIZE");
    }
}
