//! The handshake: oldstyle, or fixed newstyle option negotiation, up to the
//! point where an export is open and transmission begins.
//!
//! Parsing and encoding are the codec's ([`crate::protocol::handshake`]);
//! this module holds the negotiation state (structured replies, extended
//! headers, selected meta contexts, an export opened by `NBD_OPT_INFO`) and
//! decides what to answer.

use crate::error::{Error, Result};
use crate::layers::{Backend, MAX_REQUEST_SIZE};
use crate::plugin::ThreadModel;
use crate::protocol::consts::*;
use crate::protocol::handshake::*;
use crate::protocol::transmission::ReplyStyle;
use crate::server::export::Export;
use crate::server::hold;
use crate::server::listen::Shared;
use crate::server::tls::{self, Tls};
use crate::server::transmission::{read_exact_or_eof, Reader, Writer};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

/// The meta context we offer, and its id.
pub const BASE_ALLOCATION: &str = "base:allocation";
pub const BASE_ALLOCATION_ID: u32 = 1;

/// Options that shape negotiation.
#[derive(Debug, Clone)]
pub struct HandshakeConfig {
    pub oldstyle: bool,
    pub readonly: bool,
    pub no_sr: bool,
    pub no_mc: bool,
    /// Handshake flags offered (already masked by `--mask-handshake`).
    pub handshake_flags: u16,
    pub thread_model: ThreadModel,
    /// TLS credentials; `None` when TLS is off.
    pub tls: Option<Arc<Tls>>,
}

/// The outcome of a successful handshake.
pub struct Negotiated {
    pub export: Export,
    pub style: ReplyStyle,
    pub base_allocation: bool,
}

/// At most this many options before an export is chosen (nbdkit's limit,
/// raised by each export listed).
const MAX_OPTIONS: usize = 32;

/// Run the handshake.  `Ok(None)` means the client went away or aborted.
/// `socket` is the connection's socket, for NBD_OPT_STARTTLS to run TLS
/// over; after it `r` and `w` are the encrypted halves.
pub fn negotiate(
    cfg: &HandshakeConfig,
    backend: &dyn Backend,
    lock: Option<&Mutex<()>>,
    socket: Option<Shared>,
    r: &mut Reader,
    w: &mut Writer,
) -> Result<Option<Negotiated>> {
    let io = |e: std::io::Error| Error::io(e, "handshake");
    if cfg.oldstyle {
        let export = {
            let _g = hold(lock);
            let name = backend.default_export(cfg.readonly, false)?;
            Export::open(backend, &name, cfg.readonly, cfg.thread_model)?
        };
        let eflags = export.eflags(false);
        w.write_all(&oldstyle_greeting(export.size, eflags))
            .map_err(io)?;
        w.flush().map_err(io)?;
        return Ok(Some(Negotiated {
            export,
            style: ReplyStyle::Simple,
            base_allocation: false,
        }));
    }
    w.write_all(&newstyle_greeting(cfg.handshake_flags))
        .map_err(io)?;
    w.flush().map_err(io)?;
    let mut cflags = [0u8; 4];
    if !read_exact_or_eof(r, &mut cflags).map_err(io)? {
        return Ok(None);
    }
    let cflags = parse_client_flags(cflags);
    if cflags & !(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES) != 0 {
        return Err(Error::config(format!(
            "handshake: unknown client flags 0x{cflags:x}"
        )));
    }
    let mut n = Negotiation {
        cfg,
        backend,
        lock,
        fixed: cflags & NBD_FLAG_C_FIXED_NEWSTYLE != 0
            && cfg.handshake_flags & NBD_FLAG_FIXED_NEWSTYLE != 0,
        no_zeroes: cflags & NBD_FLAG_C_NO_ZEROES != 0
            && cfg.handshake_flags & NBD_FLAG_NO_ZEROES != 0,
        style: ReplyStyle::Simple,
        meta: None,
        listed: false,
        info_export: None,
        socket,
        secure: false,
    };
    n.run(r, w)
}

struct Negotiation<'a> {
    cfg: &'a HandshakeConfig,
    backend: &'a dyn Backend,
    lock: Option<&'a Mutex<()>>,
    fixed: bool,
    no_zeroes: bool,
    style: ReplyStyle,
    /// Export name given to the last SET_META_CONTEXT, and whether
    /// base:allocation was selected.
    meta: Option<(String, bool)>,
    listed: bool,
    /// An export opened by NBD_OPT_INFO, kept for a following GO on the same
    /// name (requested name, export).
    info_export: Option<(String, Export)>,
    /// The socket, until STARTTLS hands it to TLS.
    socket: Option<Shared>,
    /// TLS is on for this connection.
    secure: bool,
}

impl Negotiation<'_> {
    fn run(&mut self, r: &mut Reader, w: &mut Writer) -> Result<Option<Negotiated>> {
        let io = |e: std::io::Error| Error::io(e, "handshake");
        let mut budget = MAX_OPTIONS;
        loop {
            if budget == 0 {
                return Err(Error::config("handshake: too many options"));
            }
            budget -= 1;
            let mut hdr = [0u8; 16];
            if !read_exact_or_eof(r, &mut hdr).map_err(io)? {
                return Ok(None);
            }
            let OptionHeader { option, length } =
                parse_option_header(&hdr).map_err(|e| Error::config(format!("handshake: {e}")))?;
            if length as u64 > MAX_REQUEST_SIZE {
                return Err(Error::config(format!(
                    "handshake: option {} data too long ({length} bytes)",
                    option_name(option)
                )));
            }
            let mut data = vec![0u8; length as usize];
            r.read_exact(&mut data).map_err(io)?;
            crate::log::debug(format!(
                "newstyle negotiation: {} length {length}",
                option_name(option)
            ));

            if !self.fixed && option != NBD_OPT_EXPORT_NAME {
                // A non-fixed client may only send EXPORT_NAME.
                self.reply_err(
                    w,
                    option,
                    NBD_REP_ERR_INVALID,
                    "only NBD_OPT_EXPORT_NAME is allowed",
                )?;
                continue;
            }
            if self.tls_required() && !matches!(option, NBD_OPT_STARTTLS | NBD_OPT_ABORT) {
                if option == NBD_OPT_EXPORT_NAME {
                    return Err(Error::config(
                        "client tried to use NBD_OPT_EXPORT_NAME with TLS required, disconnecting",
                    ));
                }
                self.reply_err(w, option, NBD_REP_ERR_TLS_REQD, "TLS is required")?;
                continue;
            }
            let parsed = match parse_option(option, &data) {
                Ok(p) => p,
                Err(OptionError { reply, message }) => {
                    if option == NBD_OPT_EXPORT_NAME {
                        return Err(Error::config(format!("NBD_OPT_EXPORT_NAME: {message}")));
                    }
                    self.reply_err(w, option, reply, &message)?;
                    continue;
                }
            };
            match parsed {
                ClientOption::ExportName(name) => {
                    let export = self.open(&name)?;
                    let eflags = export.eflags(self.style != ReplyStyle::Simple);
                    w.write_all(&export_name_reply(export.size, eflags, self.no_zeroes))
                        .map_err(io)?;
                    w.flush().map_err(io)?;
                    return Ok(Some(self.finish(&name, export)));
                }
                ClientOption::Abort => {
                    let _ = self.reply(w, option, NBD_REP_ACK, &[]);
                    return Ok(None);
                }
                ClientOption::List => {
                    if self.listed {
                        self.reply_err(
                            w,
                            option,
                            NBD_REP_ERR_INVALID,
                            "NBD_OPT_LIST may only be sent once",
                        )?;
                        continue;
                    }
                    self.listed = true;
                    let list = {
                        let _g = hold(self.lock);
                        self.backend.list_exports(self.cfg.readonly, self.secure)
                    };
                    match list {
                        Ok(list) => {
                            budget = budget.saturating_add(list.len());
                            for e in &list {
                                let p = rep_server_payload(&e.name, e.description.as_deref());
                                self.reply(w, option, NBD_REP_SERVER, &p)?;
                            }
                            self.reply(w, option, NBD_REP_ACK, &[])?;
                        }
                        Err(e) => self.reply_err(w, option, NBD_REP_ERR_PLATFORM, e.message())?,
                    }
                }
                ClientOption::StartTls => self.starttls(r, w)?,
                ClientOption::Info(req) | ClientOption::Go(req) => {
                    let go = option == NBD_OPT_GO;
                    let export = match self.take_or_open(&req.name) {
                        Ok(e) => e,
                        Err(e) => {
                            crate::log::error(e.message());
                            self.reply_err(w, option, NBD_REP_ERR_UNKNOWN, e.message())?;
                            continue;
                        }
                    };
                    let eflags = export.eflags(self.style != ReplyStyle::Simple);
                    self.reply(
                        w,
                        option,
                        NBD_REP_INFO,
                        &info_export_payload(export.size, eflags),
                    )?;
                    // Each distinct request is answered once, however often
                    // the client repeats it (a GO may carry thousands).
                    let mut answered = [false; 4];
                    for &info in &req.requests {
                        match answered.get_mut(usize::from(info)) {
                            Some(done) if !*done => *done = true,
                            _ => continue,
                        }
                        match info {
                            NBD_INFO_NAME => self.reply(
                                w,
                                option,
                                NBD_REP_INFO,
                                &info_name_payload(&export.name),
                            )?,
                            NBD_INFO_DESCRIPTION => match export.description() {
                                Ok(Some(d)) => self.reply(
                                    w,
                                    option,
                                    NBD_REP_INFO,
                                    &info_description_payload(&d),
                                )?,
                                Ok(None) => {}
                                Err(e) => crate::log::error(format!(
                                    "export_description: {}",
                                    e.message()
                                )),
                            },
                            // Like nbdkit, only when the layers state constraints.
                            NBD_INFO_BLOCK_SIZE => match export.block_size() {
                                Ok(Some(b)) => {
                                    let p =
                                        info_block_size_payload(b.minimum, b.preferred, b.maximum);
                                    self.reply(w, option, NBD_REP_INFO, &p)?;
                                }
                                Ok(None) => {}
                                Err(e) => crate::log::error(format!("block_size: {}", e.message())),
                            },
                            _ => {}
                        }
                    }
                    self.reply(w, option, NBD_REP_ACK, &[])?;
                    if go {
                        return Ok(Some(self.finish(&req.name, export)));
                    }
                    self.info_export = Some((req.name, export));
                }
                ClientOption::StructuredReply => {
                    if self.cfg.no_sr {
                        self.reply_err(
                            w,
                            option,
                            NBD_REP_ERR_UNSUP,
                            "structured replies are disabled (--no-sr)",
                        )?;
                    } else if self.style == ReplyStyle::Extended {
                        self.reply_err(
                            w,
                            option,
                            NBD_REP_ERR_EXT_HEADER_REQD,
                            "extended headers already negotiated",
                        )?;
                    } else {
                        self.style = ReplyStyle::Structured;
                        self.reply(w, option, NBD_REP_ACK, &[])?;
                    }
                }
                ClientOption::ExtendedHeaders => {
                    if self.cfg.no_sr {
                        self.reply_err(
                            w,
                            option,
                            NBD_REP_ERR_UNSUP,
                            "extended headers are disabled (--no-sr)",
                        )?;
                    } else {
                        self.style = ReplyStyle::Extended;
                        self.reply(w, option, NBD_REP_ACK, &[])?;
                    }
                }
                ClientOption::ListMetaContext(req) | ClientOption::SetMetaContext(req) => {
                    let set = option == NBD_OPT_SET_META_CONTEXT;
                    if self.cfg.no_mc {
                        self.reply_err(
                            w,
                            option,
                            NBD_REP_ERR_UNSUP,
                            "meta contexts are disabled (--no-mc)",
                        )?;
                        continue;
                    }
                    if set {
                        // SET replaces the selection, even if it then fails.
                        self.meta = None;
                    }
                    if self.style == ReplyStyle::Simple {
                        self.reply_err(
                            w,
                            option,
                            NBD_REP_ERR_INVALID,
                            "structured replies must be negotiated first",
                        )?;
                        continue;
                    }
                    let matched = if req.queries.is_empty() {
                        !set
                    } else {
                        req.queries
                            .iter()
                            .any(|q| q == BASE_ALLOCATION || (!set && q == "base:"))
                    };
                    if matched {
                        let id = if set { BASE_ALLOCATION_ID } else { 0 };
                        self.reply(
                            w,
                            option,
                            NBD_REP_META_CONTEXT,
                            &meta_context_payload(id, BASE_ALLOCATION),
                        )?;
                    }
                    if set {
                        self.meta = Some((req.export, matched));
                    }
                    self.reply(w, option, NBD_REP_ACK, &[])?;
                }
                ClientOption::Unknown(_) => {
                    self.reply_err(w, option, NBD_REP_ERR_UNSUP, "unknown option")?;
                }
            }
        }
    }

    /// `--tls=require` and this connection is not encrypted yet.
    fn tls_required(&self) -> bool {
        !self.secure && self.cfg.tls.as_ref().is_some_and(|t| t.require)
    }

    /// NBD_OPT_STARTTLS: acknowledge, run the TLS handshake on the socket,
    /// and forget everything negotiated in plaintext, as the spec requires.
    fn starttls(&mut self, r: &mut Reader, w: &mut Writer) -> Result<()> {
        let option = NBD_OPT_STARTTLS;
        let Some(tls) = self.cfg.tls.clone() else {
            return self.reply_err(
                w,
                option,
                NBD_REP_ERR_POLICY,
                "TLS is disabled on this server",
            );
        };
        if self.secure {
            return self.reply_err(w, option, NBD_REP_ERR_INVALID, "TLS is already in use");
        }
        let Some(socket) = self.socket.take() else {
            return self.reply_err(
                w,
                option,
                NBD_REP_ERR_UNSUP,
                "TLS is not available on this connection",
            );
        };
        self.reply(w, option, NBD_REP_ACK, &[])?;
        tls::upgrade(&tls, socket, r, w)?;
        crate::log::debug("using TLS on this connection");
        self.secure = true;
        self.style = ReplyStyle::Simple;
        self.meta = None;
        self.listed = false;
        self.info_export = None;
        Ok(())
    }

    /// Resolve `""` to the default export and open it.
    fn open(&self, requested: &str) -> Result<Export> {
        let _g = hold(self.lock);
        let name = if requested.is_empty() {
            self.backend
                .default_export(self.cfg.readonly, self.secure)?
        } else {
            requested.to_string()
        };
        Export::open(
            self.backend,
            &name,
            self.cfg.readonly,
            self.cfg.thread_model,
        )
    }

    /// Reuse the export opened by a previous NBD_OPT_INFO on the same name.
    fn take_or_open(&mut self, requested: &str) -> Result<Export> {
        if let Some((name, export)) = self.info_export.take() {
            if name == requested {
                return Ok(export);
            }
            // Close the old export before opening another, as nbdkit does
            // (a connection never holds two: the limit filter counts them).
            drop(export);
        }
        self.open(requested)
    }

    fn finish(&mut self, requested: &str, export: Export) -> Negotiated {
        let base_allocation = matches!(&self.meta, Some((name, true)) if name == requested);
        Negotiated {
            export,
            style: self.style,
            base_allocation,
        }
    }

    fn reply(&self, w: &mut Writer, option: u32, reply_type: u32, payload: &[u8]) -> Result<()> {
        w.write_all(&option_reply(option, reply_type, payload))
            .and_then(|()| w.flush())
            .map_err(|e| Error::io(e, "handshake"))
    }

    fn reply_err(&self, w: &mut Writer, option: u32, reply_type: u32, msg: &str) -> Result<()> {
        crate::log::debug(format!("{}: {msg}", option_name(option)));
        let mut msg = msg.as_bytes();
        if msg.len() > NBD_MAX_STRING {
            msg = &msg[..NBD_MAX_STRING];
        }
        self.reply(w, option, reply_type, msg)
    }
}
