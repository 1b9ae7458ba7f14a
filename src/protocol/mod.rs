//! The NBD wire protocol as a pure codec: bytes in, messages out.
//!
//! This module is for: the protocol constants ([`consts`]), encoding and
//! decoding of the handshake / option negotiation ([`handshake`]), and of
//! transmission-phase requests and replies ([`transmission`]).  All integers
//! are big-endian on the wire.
//!
//! It is not for: sockets, reading or writing streams, TLS, threads, or any
//! policy (which options to accept, which errors to send, mapping host errno
//! to NBD errors).  The server reads the fixed-size parts of a message
//! itself, hands the bytes to these functions, and writes what they return.

pub mod consts;
pub mod handshake;
pub mod transmission;

pub use handshake::{ClientOption, InfoRequest, MetaRequest, OptionError, OptionHeader};
pub use transmission::{ReplyHead, ReplyHeader, ReplyStyle, Request};

/// A message could not be decoded.
///
/// Negotiation-level problems with option *contents* are reported as
/// [`OptionError`] instead, because those are answered with an option
/// reply rather than by dropping the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum CodecError {
    /// The message did not start with the expected magic number (32-bit
    /// magics are widened to `u64`).
    #[error("bad magic: expected {expected:#x}, got {got:#x}")]
    BadMagic {
        /// The magic the decoder was looking for.
        expected: u64,
        /// The magic found in the buffer.
        got: u64,
    },
    /// The buffer is shorter than the message.
    #[error("truncated message: needed {needed} bytes, got {got}")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// The buffer must be exactly one message long and is longer.
    #[error("wrong message length: expected {expected} bytes, got {got}")]
    WrongLength {
        /// Exact size of the message.
        expected: usize,
        /// Size of the buffer.
        got: usize,
    },
    /// A reply started with a magic that is none of the simple, structured
    /// or extended reply magics.
    #[error("unknown reply magic {got:#x}")]
    UnknownReplyMagic {
        /// The magic found.
        got: u32,
    },
}

/// Big-endian readers over a byte slice that never panic: each returns
/// `None` when the slice is too short.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N).and_then(|b| b.try_into().ok())
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }
}

/// A `usize` length as the 32-bit wire length.  Lengths this codec writes
/// are far below 4 GiB (strings are at most 4096 bytes, payloads at most
/// what the server allows); an impossible larger value saturates rather than
/// wrapping or panicking.
pub(crate) fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
