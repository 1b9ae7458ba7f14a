//! Built-in plugins, one file each, and the registry that creates them by
//! name.

pub mod curl;
pub mod data;
pub mod example1;
pub mod file;
pub mod full;
pub mod memory;
pub mod null;
pub mod ones;
pub mod pattern;
pub mod random;
pub mod sparse_random;
pub mod zero;

use crate::plugin::Plugin;

/// Names of the built-in plugins.
pub const NAMES: &[&str] = &[
    "curl",
    "data",
    "example1",
    "file",
    "full",
    "memory",
    "null",
    "ones",
    "pattern",
    "random",
    "sparse-random",
    "zero",
];

/// A fresh, unconfigured plugin by short name; `None` if unknown.
pub fn new_plugin(name: &str) -> Option<Box<dyn Plugin>> {
    match name {
        "curl" => Some(Box::new(curl::CurlPlugin::new())),
        "example1" => Some(Box::new(example1::Example1Plugin::new())),
        "file" => Some(Box::new(file::FilePlugin::new())),
        "memory" => Some(Box::new(memory::MemoryPlugin::new())),
        "null" => Some(Box::new(null::NullPlugin::new())),
        "data" => Some(Box::new(data::DataPlugin::new())),
        "full" => Some(Box::new(full::FullPlugin::new())),
        "ones" => Some(Box::new(ones::OnesPlugin::new())),
        "pattern" => Some(Box::new(pattern::PatternPlugin::new())),
        "random" => Some(Box::new(random::RandomPlugin::new())),
        "sparse-random" => Some(Box::new(sparse_random::SparseRandomPlugin::new())),
        "zero" => Some(Box::new(zero::ZeroPlugin::new())),
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
