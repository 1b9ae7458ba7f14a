//! One client connection: thread-model locking, preconnect, handshake,
//! transmission, and closing the export.

use crate::plugin::ThreadModel;
use crate::server::listen::Shared;
use crate::server::negotiate::{negotiate, Negotiated};
use crate::server::transmission::{self, Reader, Session, Writer};
use crate::server::{hold, lock, peer, Server};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::sync::Mutex;

/// Held for a whole connection under `serialize_connections`.
static CONNECTION_LOCK: Mutex<()> = Mutex::new(());
/// Held around every plugin call under `serialize_all_requests`.
static REQUEST_LOCK: Mutex<()> = Mutex::new(());

/// The read and write halves the protocol code uses, both on the
/// connection's one socket (which STARTTLS later runs TLS over).
pub fn split(socket: &Shared) -> (Reader, Writer) {
    let r: Box<dyn Read + Send> = Box::new(socket.clone());
    let w: Box<dyn Write + Send> = Box::new(socket.clone());
    (Reader::new(r), w)
}

/// Serve one connection to the end.
pub fn handle(server: &Server, reader: Reader, writer: Writer, socket: Shared) {
    let model = server.thread_model;
    let _conn_guard = (model == ThreadModel::SerializeConnections).then(|| lock(&CONNECTION_LOCK));
    let request_lock = (model <= ThreadModel::SerializeAllRequests).then_some(&REQUEST_LOCK);
    let (mut reader, mut writer) = (reader, writer);
    // Before any NBD byte: the layers may refuse the client (the peer was
    // made current by whoever accepted the connection).
    let peer = peer::current().unwrap_or_else(peer::Peer::unknown);
    let admitted = {
        let _g = hold(request_lock);
        server.stack.preconnect(server.handshake.readonly, &peer)
    };
    if let Err(e) = admitted {
        crate::log::error(e.message());
        return;
    }
    // Kept for the whole connection: the fd the workers poll.
    let own = socket.clone();
    let negotiated = negotiate(
        &server.handshake,
        &*server.stack.backend,
        request_lock,
        Some(socket),
        &mut reader,
        &mut writer,
    );
    crate::server::timeout::handshake_done();
    // Plain sockets only: under TLS a request may wait decrypted inside
    // the TLS layer while the socket has nothing to read.
    let wait_fd = match &negotiated {
        Ok(Some(_)) if !crate::server::tls::is_tls() => Some(own.as_fd()),
        _ => None,
    };
    match negotiated {
        Ok(Some(Negotiated {
            export,
            style,
            base_allocation,
        })) => {
            crate::log::debug(format!(
                "handshake complete: export '{}' size {} style {style:?}",
                export.name, export.size
            ));
            let session = Session {
                export: &export,
                style,
                base_allocation,
                workers: if model == ThreadModel::Parallel {
                    server.threads
                } else {
                    1
                },
                request_lock,
                quick_layers: server.stack.quick_requests(),
                wait_fd,
                socket_fd: Some(own.as_fd()),
            };
            transmission::serve(&session, reader, writer);
            let _g = hold(request_lock);
            drop(export);
        }
        Ok(None) => crate::log::debug("client closed the connection during the handshake"),
        Err(e) => crate::log::debug(format!("handshake failed: {e}")),
    }
    crate::server::tls::clear_peer();
}
