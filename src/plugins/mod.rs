//! Built-in plugins, one file each, and the registry that creates them by
//! name.

pub mod cabi;
pub mod concat;
pub mod curl;
pub mod data;
pub mod eval;
pub mod example1;
pub mod file;
pub mod full;
pub mod info;
pub mod memory;
pub mod mkdisk;
pub mod nbd;
pub mod null;
pub mod ondemand;
pub mod ones;
pub mod partitioning;
pub mod pattern;
pub mod random;
pub mod sh;
pub mod sparse_random;
pub mod split;
pub mod tmpdisk;
pub mod zero;

use crate::plugin::Plugin;

/// Names of the built-in plugins.
pub const NAMES: &[&str] = &[
    "curl",
    "data",
    "eval",
    "example1",
    "file",
    "full",
    "info",
    "memory",
    "nbd",
    "null",
    "ondemand",
    "ones",
    "partitioning",
    "pattern",
    "random",
    "sh",
    "sparse-random",
    "split",
    "tmpdisk",
    "zero",
];

/// A fresh, unconfigured plugin by short name; `None` if unknown.
pub fn new_plugin(name: &str) -> Option<Box<dyn Plugin>> {
    match name {
        "curl" => Some(Box::new(curl::CurlPlugin::new())),
        "data" => Some(Box::new(data::DataPlugin::new())),
        "eval" => Some(Box::new(eval::new_plugin())),
        "example1" => Some(Box::new(example1::Example1Plugin::new())),
        "file" => Some(Box::new(file::FilePlugin::new())),
        "full" => Some(Box::new(full::FullPlugin::new())),
        "info" => Some(Box::new(info::InfoPlugin::new())),
        "memory" => Some(Box::new(memory::MemoryPlugin::new())),
        "nbd" => Some(Box::new(nbd::NbdPlugin::new())),
        "null" => Some(Box::new(null::NullPlugin::new())),
        "ondemand" => Some(Box::new(ondemand::OndemandPlugin::new())),
        "ones" => Some(Box::new(ones::OnesPlugin::new())),
        "partitioning" => Some(Box::new(partitioning::PartitioningPlugin::new())),
        "pattern" => Some(Box::new(pattern::PatternPlugin::new())),
        "random" => Some(Box::new(random::RandomPlugin::new())),
        "sh" => Some(Box::new(sh::ScriptPlugin::new(sh::Flavour::Sh))),
        "sparse-random" => Some(Box::new(sparse_random::SparseRandomPlugin::new())),
        "split" => Some(Box::new(split::SplitPlugin::new())),
        "tmpdisk" => Some(Box::new(tmpdisk::TmpdiskPlugin::new())),
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
