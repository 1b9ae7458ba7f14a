//! The `noparallel` filter: make the server serialize work as if the plugin
//! had declared a stricter thread model (`serialize=requests` by default,
//! `all-requests` or `connections`).  Useful to tame a plugin, and to test
//! the server's thread models.

use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::plugin::ThreadModel;

pub struct NoParallel {
    model: ThreadModel,
}

impl NoParallel {
    pub fn new() -> Self {
        NoParallel {
            model: ThreadModel::SerializeRequests,
        }
    }
}

impl Default for NoParallel {
    fn default() -> Self {
        Self::new()
    }
}

impl Filter for NoParallel {
    fn name(&self) -> &'static str {
        "noparallel"
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit noparallel filter")
    }

    fn description(&self) -> &'static str {
        "Serialize connections or requests."
    }

    fn config_help(&self) -> &'static str {
        "serialize=<MODE>      'requests' (default), 'all-requests', or 'connections'."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "serialize" {
            return Ok(false);
        }
        self.model = match value {
            "requests" => ThreadModel::SerializeRequests,
            "all-requests" | "all_requests" => ThreadModel::SerializeAllRequests,
            "connections" => ThreadModel::SerializeConnections,
            _ => {
                return Err(Error::config(format!(
                    "noparallel: unknown serialize mode '{value}' \
                     (expecting requests, all-requests or connections)"
                )))
            }
        };
        Ok(true)
    }

    fn thread_model(&self) -> ThreadModel {
        self.model
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        let mut f = NoParallel::new();
        assert_eq!(f.thread_model(), ThreadModel::SerializeRequests);
        assert!(f.config("serialize", "connections").unwrap());
        assert_eq!(f.thread_model(), ThreadModel::SerializeConnections);
        assert!(!f.config("size", "1M").unwrap());
        assert!(f.config("serialize", "sometimes").is_err());
    }
}
