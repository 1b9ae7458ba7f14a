//! The `limit` filter: at most `limit=N` clients at a time (default 1, 0
//! means no limit).
//!
//! Excess clients are refused in `preconnect`, before any NBD byte, and
//! checked again in `open` because a client may sit in negotiation while
//! others open.  A slot is taken by `open` and freed when that connection
//! closes.

use crate::error::{Error, Result};
use crate::filter::{Filter, FilterContext, Guarded};
use crate::layers::Backend;
use crate::parse::parse_unsigned;
use crate::server::lock;
use crate::server::peer::Peer;
use std::sync::{Arc, Mutex};

pub struct Limit {
    limit: u64,
    connections: Arc<Mutex<u64>>,
}

impl Limit {
    pub fn new() -> Self {
        Limit {
            limit: 1,
            connections: Arc::default(),
        }
    }

    /// Error unless another client fits.
    fn check(&self, connections: u64) -> Result<()> {
        if self.limit > 0 && connections >= self.limit {
            return Err(Error::new(
                nix::errno::Errno::EBUSY,
                "limit: too many clients connected, connection rejected",
            ));
        }
        Ok(())
    }
}

impl Default for Limit {
    fn default() -> Self {
        Self::new()
    }
}

/// A taken slot; dropping it (the filter's `close`) frees it.
struct Slot(Arc<Mutex<u64>>);

impl Drop for Slot {
    fn drop(&mut self) {
        *lock(&self.0) -= 1;
    }
}

impl Filter for Limit {
    fn name(&self) -> &'static str {
        "limit"
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit limit filter")
    }

    fn description(&self) -> &'static str {
        "Limit the number of clients that can connect concurrently."
    }

    fn config_help(&self) -> &'static str {
        "limit=N                        Limit connections to N clients (default 1, 0 = no limit)."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "limit" {
            return Ok(false);
        }
        self.limit = parse_unsigned("limit", value, u64::MAX)?;
        Ok(true)
    }

    fn preconnect(&self, next: &dyn Backend, readonly: bool, peer: &Peer) -> Result<()> {
        self.check(*lock(&self.connections))?;
        next.preconnect(readonly, peer)
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        let slot = {
            let mut n = lock(&self.connections);
            self.check(*n)?;
            *n += 1;
            Slot(self.connections.clone())
        };
        let ctx = next.open(readonly, export, is_tls)?;
        Ok(Box::new(Guarded(slot, ctx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let mut f = Limit::new();
        assert_eq!(f.limit, 1);
        assert!(f.config("limit", "2").unwrap());
        assert_eq!(f.limit, 2);
        assert!(f.config("limit", "-1").is_err());
        assert!(f.config("limit", "two").is_err());
        assert!(!f.config("size", "1M").unwrap());
        assert!(f.check(1).is_ok());
        assert!(f.check(2).is_err());
        f.config("limit", "0").unwrap();
        assert!(f.check(1000).is_ok());
    }
}
