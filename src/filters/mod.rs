//! Built-in filters, one file each (`--filter=NAME`).
//!
//! A new filter is one file implementing [`crate::filter::Filter`] plus one
//! line in [`new_filter`].

pub mod cache;
pub mod cacheextents;
pub mod cow;
pub mod delay;
pub mod exitlast;
pub mod exitwhen;
pub mod ip;
pub mod limit;
pub mod noparallel;
pub mod readahead;
pub mod retry;
pub mod retry_request;
pub mod tar;
mod tmpfile;

use crate::filter::Filter;

/// Names of the built-in filters.
pub const NAMES: &[&str] = &[
    "cache",
    "cacheextents",
    "cow",
    "delay",
    "exitlast",
    "exitwhen",
    "ip",
    "limit",
    "noparallel",
    "readahead",
    "retry",
    "retry-request",
    "tar",
];

/// A fresh, unconfigured filter by short name; `None` if unknown.
pub fn new_filter(name: &str) -> Option<Box<dyn Filter>> {
    match name {
        "cache" => Some(Box::new(cache::Cache::new())),
        "cacheextents" => Some(Box::new(cacheextents::CacheExtents::new())),
        "cow" => Some(Box::new(cow::Cow::new())),
        "delay" => Some(Box::new(delay::Delay::new())),
        "exitlast" => Some(Box::new(exitlast::ExitLast::new())),
        "exitwhen" => Some(Box::new(exitwhen::ExitWhen::new())),
        "ip" => Some(Box::new(ip::Ip::new())),
        "limit" => Some(Box::new(limit::Limit::new())),
        "noparallel" => Some(Box::new(noparallel::NoParallel::new())),
        "readahead" => Some(Box::new(readahead::Readahead::new())),
        "retry" => Some(Box::new(retry::Retry::new())),
        "retry-request" => Some(Box::new(retry_request::RetryRequest::new())),
        "tar" => Some(Box::new(tar::Tar::new())),
        _ => None,
    }
}
