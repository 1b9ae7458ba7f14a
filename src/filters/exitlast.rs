//! The `exitlast` filter: exit once the last client has disconnected (never
//! before the first one has connected).
//!
//! It counts open connections (an `NBD_OPT_INFO` query counts too, as in
//! nbdkit) and asks for a graceful stop when the count drops back to zero:
//! the server stops accepting, lets any client still negotiating finish, and
//! exits.

use crate::error::Result;
use crate::filter::{Filter, FilterContext, Guarded};
use crate::layers::Backend;
use crate::server::quit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Default)]
pub struct ExitLast {
    connections: Arc<AtomicUsize>,
}

impl ExitLast {
    pub fn new() -> Self {
        Self::default()
    }
}

/// One open connection; dropping it is the filter's `close`.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.fetch_sub(1, Ordering::SeqCst) == 1 {
            crate::log::debug("exitlast: exiting on last client connection");
            quit::request_graceful();
        }
    }
}

impl Filter for ExitLast {
    fn name(&self) -> &'static str {
        "exitlast"
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit exitlast filter")
    }

    fn description(&self) -> &'static str {
        "Exit when the last client connection is closed."
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        let ctx = next.open(readonly, export, is_tls)?;
        self.connections.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(Guarded(Open(self.connections.clone()), ctx)))
    }
}
