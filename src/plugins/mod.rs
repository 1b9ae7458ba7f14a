//! Built-in plugins, one file each, and the registry that creates them by
//! name.

pub mod cabi;
pub mod concat;
pub mod curl;
pub mod eval;
pub mod example1;
pub mod file;
pub mod info;
pub mod memory;
pub mod mkdisk;
pub mod nbd;
pub mod null;
pub mod ondemand;
pub mod partitioning;
pub mod sh;
pub mod split;
pub mod tmpdisk;

use crate::plugin::Plugin;

/// Names of the built-in plugins.
pub const NAMES: &[&str] = &[
    "curl",
    "eval",
    "example1",
    "file",
    "info",
    "memory",
    "nbd",
    "null",
    "ondemand",
    "partitioning",
    "sh",
    "split",
    "tmpdisk",
];

/// A fresh, unconfigured plugin by short name; `None` if unknown.
pub fn new_plugin(name: &str) -> Option<Box<dyn Plugin>> {
    match name {
        "curl" => Some(Box::new(curl::CurlPlugin::new())),
        "eval" => Some(Box::new(eval::new_plugin())),
        "example1" => Some(Box::new(example1::Example1Plugin::new())),
        "file" => Some(Box::new(file::FilePlugin::new())),
        "info" => Some(Box::new(info::InfoPlugin::new())),
        "memory" => Some(Box::new(memory::MemoryPlugin::new())),
        "nbd" => Some(Box::new(nbd::NbdPlugin::new())),
        "null" => Some(Box::new(null::NullPlugin::new())),
        "ondemand" => Some(Box::new(ondemand::OndemandPlugin::new())),
        "partitioning" => Some(Box::new(partitioning::PartitioningPlugin::new())),
        "sh" => Some(Box::new(sh::ScriptPlugin::new(sh::Flavour::Sh))),
        "split" => Some(Box::new(split::SplitPlugin::new())),
        "tmpdisk" => Some(Box::new(tmpdisk::TmpdiskPlugin::new())),
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
