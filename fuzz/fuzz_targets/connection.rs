//! One whole connection over an in-memory stream: the input is every byte
//! the client sends; the server negotiates and then serves requests
//! against a 1M `memory` plugin, and its replies are thrown away.  The
//! stream ends at the input's end, so every run ends.  Nothing the client
//! sends may panic the server or hang it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbdkit::layers::{Chain, Stack};
use nbdkit::plugin::ThreadModel;
use nbdkit::plugins::new_plugin;
use nbdkit::protocol::consts::{NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_NO_ZEROES};
use nbdkit::server::negotiate::{negotiate, HandshakeConfig, Negotiated};
use nbdkit::server::recv::Reader;
use nbdkit::server::transmission::{serve, Session, Writer};
use std::io::Cursor;

/// A fresh 1M memory disk for each input, so that a crash replays alone.
fn stack() -> Stack {
    let plugin = new_plugin("memory").expect("memory plugin");
    let mut chain = Chain {
        filters: vec![],
        plugin,
    };
    chain.config_param("size=1M").expect("size");
    chain.config_complete().expect("config_complete");
    let stack = chain.into_stack();
    stack.get_ready().expect("get_ready");
    stack
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the server's options, the rest is the client.
    let (mode, client) = match data.split_first() {
        Some((&m, rest)) => (m, rest),
        None => (0, data),
    };
    let stack = stack();
    let cfg = HandshakeConfig {
        oldstyle: mode & 1 != 0,
        readonly: mode & 2 != 0,
        no_sr: mode & 4 != 0,
        no_mc: mode & 8 != 0,
        handshake_flags: NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES,
        thread_model: ThreadModel::Parallel,
        tls: None,
    };
    let mut reader = Reader::new(Box::new(Cursor::new(client.to_vec())));
    let mut writer: Writer = Box::new(std::io::sink());
    let negotiated = negotiate(&cfg, &*stack.backend, None, None, &mut reader, &mut writer);
    if let Ok(Some(Negotiated {
        export,
        style,
        base_allocation,
    })) = negotiated
    {
        let session = Session {
            export: &export,
            style,
            base_allocation,
            // One worker: the run is deterministic and replays alike.
            workers: 1,
            request_lock: None,
            quick_layers: stack.quick_requests(),
            wait_fd: None,
            socket_fd: None,
        };
        serve(&session, reader, writer);
        drop(export);
    }
    stack.cleanup();
});
