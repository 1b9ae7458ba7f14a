//! The `noextents` filter: hide the plugin's block-status support, so that
//! clients see the whole disk as allocated data.  Useful to test how a
//! client copes without extents, or to stop a client from skipping holes.

use crate::error::Result;
use crate::extents::Extents;
use crate::filter::{Filter, FilterContext, PassThrough};
use crate::layers::{Backend, Context};

#[derive(Default)]
pub struct NoExtents;

impl NoExtents {
    pub fn new() -> Self {
        NoExtents
    }
}

impl Filter for NoExtents {
    fn name(&self) -> &'static str {
        "noextents"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit noextents filter")
    }

    fn description(&self) -> &'static str {
        "Disable block status (extents) support."
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
        Ok(Box::new(Ctx(PassThrough(
            next.open(readonly, export, is_tls)?,
        ))))
    }
}

struct Ctx(PassThrough);

impl FilterContext for Ctx {
    fn next(&self) -> &dyn Context {
        self.0.next()
    }
    fn can_extents(&self) -> Result<bool> {
        Ok(false)
    }
    /// The server still offers `base:allocation`; the answer is then
    /// that everything is data, as for a plugin without extents.
    fn extents(&self, extents: &mut Extents, _flags: u32) -> Result<()> {
        let (start, end) = (extents.start(), extents.end());
        extents.add(start, end - start, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_no_parameter() {
        let mut f = NoExtents::new();
        assert!(!f.config("extents", "on").unwrap());
    }
}
