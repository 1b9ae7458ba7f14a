//! Built-in plugins, one file each, and the registry that creates them by
//! name.

pub mod cabi;
pub mod curl;
pub mod example1;
pub mod file;
pub mod memory;
pub mod null;

use crate::plugin::Plugin;

/// Names of the built-in plugins.
pub const NAMES: &[&str] = &["curl", "example1", "file", "memory", "null"];

/// A fresh, unconfigured plugin by short name; `None` if unknown.
pub fn new_plugin(name: &str) -> Option<Box<dyn Plugin>> {
    match name {
        "curl" => Some(Box::new(curl::CurlPlugin::new())),
        "example1" => Some(Box::new(example1::Example1Plugin::new())),
        "file" => Some(Box::new(file::FilePlugin::new())),
        "memory" => Some(Box::new(memory::MemoryPlugin::new())),
        "null" => Some(Box::new(null::NullPlugin::new())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_creates_its_plugin() {
        for &n in NAMES {
            let p = new_plugin(n).expect("known plugin");
            assert_eq!(p.name(), n);
            assert!(!p.config_help().is_empty());
        }
        assert!(new_plugin("nosuch").is_none());
    }
}
