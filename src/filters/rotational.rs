//! The `rotational` filter: set the NBD rotational flag the client sees,
//! whatever the plugin says.  With the filter and no parameter the export
//! is rotational; `rotational=false` clears the flag.

use crate::error::Result;
use crate::filter::{Filter, FilterContext};
use crate::layers::{Backend, Context};
use crate::parse::parse_bool;

pub struct Rotational {
    rotational: bool,
}

impl Rotational {
    pub fn new() -> Self {
        Rotational { rotational: true }
    }
}

impl Default for Rotational {
    fn default() -> Self {
        Self::new()
    }
}

impl Filter for Rotational {
    fn name(&self) -> &'static str {
        "rotational"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit rotational filter")
    }

    fn description(&self) -> &'static str {
        "Set if the plugin is rotational or not."
    }

    fn config_help(&self) -> &'static str {
        "rotational=true|false      Set rotational property (default: true)."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "rotational" {
            return Ok(false);
        }
        self.rotational = parse_bool(value)?;
        Ok(true)
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
        Ok(Box::new(RotationalContext {
            next: next.open(readonly, export, is_tls)?,
            rotational: self.rotational,
        }))
    }
}

struct RotationalContext {
    next: Box<dyn Context>,
    rotational: bool,
}

impl FilterContext for RotationalContext {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn is_rotational(&self) -> Result<bool> {
        Ok(self.rotational)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let mut f = Rotational::new();
        assert!(f.rotational, "the filter alone makes the export rotational");
        assert!(f.config("rotational", "off").unwrap());
        assert!(!f.rotational);
        assert!(f.config("rotational", "yes").unwrap());
        assert!(f.rotational);
        assert!(f.config("rotational", "maybe").is_err());
        assert!(!f.config("size", "1M").unwrap());
    }
}
