//! Built-in filters, one file each (`--filter=NAME`).
//!
//! A new filter is one file implementing [`crate::filter::Filter`] plus one
//! line in [`new_filter`].

pub mod blocksize;
pub mod blocksize_policy;
pub mod delay;
pub mod exitlast;
pub mod exitwhen;
pub mod ip;
pub mod limit;
pub mod noparallel;
pub mod offset;
pub mod partition;
pub mod protect;
pub mod readonly;
pub mod retry_request;
pub mod tar;
pub mod truncate;

use crate::filter::Filter;

/// Names of the built-in filters.
pub const NAMES: &[&str] = &[
    "blocksize",
    "blocksize-policy",
    "delay",
    "exitlast",
    "exitwhen",
    "ip",
    "limit",
    "noparallel",
    "offset",
    "partition",
    "protect",
    "readonly",
    "retry-request",
    "tar",
    "truncate",
];

/// A fresh, unconfigured filter by short name; `None` if unknown.
pub fn new_filter(name: &str) -> Option<Box<dyn Filter>> {
    match name {
        "blocksize" => Some(Box::new(blocksize::Blocksize::new())),
        "blocksize-policy" => Some(Box::new(blocksize_policy::BlocksizePolicy::new())),
        "delay" => Some(Box::new(delay::Delay::new())),
        "exitlast" => Some(Box::new(exitlast::ExitLast::new())),
        "exitwhen" => Some(Box::new(exitwhen::ExitWhen::new())),
        "ip" => Some(Box::new(ip::Ip::new())),
        "limit" => Some(Box::new(limit::Limit::new())),
        "noparallel" => Some(Box::new(noparallel::NoParallel::new())),
        "offset" => Some(Box::new(offset::Offset::new())),
        "partition" => Some(Box::new(partition::Partition::new())),
        "protect" => Some(Box::new(protect::Protect::new())),
        "readonly" => Some(Box::new(readonly::ReadOnly::new())),
        "retry-request" => Some(Box::new(retry_request::RetryRequest::new())),
        "tar" => Some(Box::new(tar::Tar::new())),
        "truncate" => Some(Box::new(truncate::Truncate::new())),
        _ => None,
    }
}
