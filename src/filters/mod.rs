//! Built-in filters, one file each (`--filter=NAME`).
//!
//! A new filter is one file implementing [`crate::filter::Filter`] plus one
//! line in [`new_filter`].

pub mod delay;
pub mod noparallel;

use crate::filter::Filter;

/// Names of the built-in filters.
pub const NAMES: &[&str] = &["delay", "noparallel"];

/// A fresh, unconfigured filter by short name; `None` if unknown.
pub fn new_filter(name: &str) -> Option<Box<dyn Filter>> {
    match name {
        "delay" => Some(Box::new(delay::Delay::new())),
        "noparallel" => Some(Box::new(noparallel::NoParallel::new())),
        _ => None,
    }
}
