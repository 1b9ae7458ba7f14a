//! One client connection: thread-model locking, preconnect, handshake,
//! transmission, and closing the export.

use crate::plugin::ThreadModel;
use crate::server::listen::Stream;
use crate::server::negotiate::{negotiate, Negotiated};
use crate::server::transmission::{self, Reader, Session, Writer, READ_BUFFER};
use crate::server::{hold, lock, peer, Server};
use std::io::{self, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::sync::Mutex;

/// Held for a whole connection under `serialize_connections`.
static CONNECTION_LOCK: Mutex<()> = Mutex::new(());
/// Held around every plugin call under `serialize_all_requests`.
static REQUEST_LOCK: Mutex<()> = Mutex::new(());

/// Split a stream into the read and write halves the protocol code uses,
/// keeping the stream itself for STARTTLS to run TLS over.
pub fn split(stream: Stream) -> io::Result<(Reader, Writer, Stream)> {
    let (r, w): (Box<dyn Read + Send>, Box<dyn Write + Send>) = match &stream {
        Stream::Tcp(s) => (Box::new(s.try_clone()?), Box::new(s.try_clone()?)),
        Stream::Unix(s) => (Box::new(s.try_clone()?), Box::new(s.try_clone()?)),
        Stream::Vsock(s) => (Box::new(s.try_clone()?), Box::new(s.try_clone()?)),
        Stream::Stdio { input, output } => {
            (Box::new(input.try_clone()?), Box::new(output.try_clone()?))
        }
    };
    Ok((BufReader::with_capacity(READ_BUFFER, r), w, stream))
}

/// Serve one connection to the end.
pub fn handle(server: &Server, reader: Reader, writer: Writer, socket: Stream) {
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
    let wait_fd = socket.try_clone_fd().ok();
    let socket_fd = socket.try_clone_fd().ok();
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
        Ok(Some(_)) if !crate::server::tls::is_tls() => wait_fd,
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
                wait_fd: wait_fd.as_ref().map(|f| f.as_fd()),
                socket_fd: socket_fd.as_ref().map(|f| f.as_fd()),
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
