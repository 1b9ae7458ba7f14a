//! The `cacheextents` filter: remember the plugin's last block-status
//! answer, so that clients asking again within it (as qemu does, one
//! small window at a time) do not reach a plugin for which extents are
//! expensive.
//!
//! As nbdkit: one answer is kept for the whole server (here, together
//! with the export it came from); a query whose start lies inside the kept
//! range is answered from it; on a miss the plugin is asked without
//! `req_one`, so that it says as much as it will; any write, trim or zero
//! on any connection forgets the kept answer.

use crate::error::Result;
use crate::extents::{Extent, Extents};
use crate::filter::{Filter, FilterContext};
use crate::layers::{flags, Backend, Context};
use std::sync::{Arc, Mutex};

/// The kept answer.
#[derive(Default)]
struct Kept {
    export: String,
    list: Vec<Extent>,
}

impl Kept {
    fn covers(&self, export: &str, offset: u64) -> bool {
        match (self.list.first(), self.list.last()) {
            (Some(first), Some(last)) => {
                self.export == export
                    && offset >= first.offset
                    && offset < last.offset + last.length
            }
            _ => false,
        }
    }
}

pub struct CacheExtents {
    kept: Arc<Mutex<Kept>>,
}

impl CacheExtents {
    pub fn new() -> Self {
        CacheExtents {
            kept: Arc::default(),
        }
    }
}

impl Default for CacheExtents {
    fn default() -> Self {
        Self::new()
    }
}

impl Filter for CacheExtents {
    fn name(&self) -> &'static str {
        "cacheextents"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit extents caching filter")
    }

    fn description(&self) -> &'static str {
        "Cache extents."
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        Ok(Box::new(CacheExtentsContext {
            next: next.open(readonly, export, is_tls)?,
            export: export.to_string(),
            kept: self.kept.clone(),
        }))
    }
}

struct CacheExtentsContext {
    next: Box<dyn Context>,
    export: String,
    kept: Arc<Mutex<Kept>>,
}

impl CacheExtentsContext {
    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forget(&self) {
        self.kept().list.clear();
    }
}

impl FilterContext for CacheExtentsContext {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn extents(&self, extents: &mut Extents, f: u32) -> Result<()> {
        let mut kept = self.kept();
        if kept.covers(&self.export, extents.start()) {
            crate::log::debug("cacheextents: returning from cache");
            for e in &kept.list {
                extents.add(e.offset, e.length, e.flags)?;
            }
            return Ok(());
        }
        crate::log::debug("cacheextents: cache miss");
        // The lock is held across the plugin's answer, as nbdkit, so that
        // a write cannot slip in between the answer and keeping it.
        self.next.extents(extents, f & !flags::REQ_ONE)?;
        kept.export.clone_from(&self.export);
        kept.list = extents.list().to_vec();
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, f: u32) -> Result<()> {
        self.forget();
        let r = self.next.pwrite(buf, offset, f);
        // Again, in case a query answered while the call ran.
        self.forget();
        r
    }

    fn trim(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        self.forget();
        let r = self.next.trim(count, offset, f);
        // Again, in case a query answered while the call ran.
        self.forget();
        r
    }

    fn zero(&self, count: u64, offset: u64, f: u32) -> Result<()> {
        self.forget();
        let r = self.next.zero(count, offset, f);
        // Again, in case a query answered while the call ran.
        self.forget();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_only_inside_the_kept_range_and_export() {
        let mut k = Kept::default();
        assert!(!k.covers("", 0));
        k.list = vec![
            Extent {
                offset: 100,
                length: 50,
                flags: 0,
            },
            Extent {
                offset: 150,
                length: 50,
                flags: 3,
            },
        ];
        assert!(!k.covers("", 99));
        assert!(k.covers("", 100));
        assert!(k.covers("", 199));
        assert!(!k.covers("", 200));
        assert!(!k.covers("other", 150));
    }
}
