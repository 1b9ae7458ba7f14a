//! Built-in filters, one file each (`--filter=NAME`).
//!
//! A new filter is one file implementing [`crate::filter::Filter`] plus one
//! line in [`new_filter`].

pub mod blocksize;
pub mod blocksize_policy;
pub mod cache;
pub mod cacheextents;
pub mod checkwrite;
pub mod count;
pub mod cow;
pub mod ddrescue;
pub mod delay;
pub mod error;
pub mod evil;
pub mod exitlast;
pub mod exitwhen;
pub mod exportname;
pub mod extentlist;
#[cfg(test)]
pub(crate) mod fake;
pub mod fua;
pub mod ip;
pub mod limit;
pub mod log;
pub mod multi_conn;
pub mod nocache;
pub mod noextents;
pub mod nofilter;
pub mod noparallel;
pub mod nozero;
pub mod offset;
pub mod partition;
pub mod pause;
pub mod protect;
pub mod rate;
pub mod readahead;
pub mod readonly;
pub mod retry;
pub mod retry_request;
pub mod rotational;
pub mod scan;
pub mod source;
pub mod spinning;
pub mod stats;
pub mod swab;
pub mod tar;
pub mod time_limit;
pub mod tls_fallback;
mod tmpfile;
pub mod truncate;
pub mod unpack;
pub mod xz;

use crate::filter::Filter;

/// Names of the built-in filters.
pub const NAMES: &[&str] = &[
    "blocksize",
    "blocksize-policy",
    "bzip2",
    "cache",
    "cacheextents",
    "checkwrite",
    "count",
    "cow",
    "ddrescue",
    "delay",
    "error",
    "evil",
    "exitlast",
    "exitwhen",
    "exportname",
    "extentlist",
    "fua",
    "gzip",
    "ip",
    "limit",
    "log",
    "multi-conn",
    "nocache",
    "noextents",
    "nofilter",
    "noparallel",
    "nozero",
    "offset",
    "partition",
    "pause",
    "protect",
    "rate",
    "readahead",
    "readonly",
    "retry",
    "retry-request",
    "rotational",
    "scan",
    "spinning",
    "stats",
    "swab",
    "tar",
    "time-limit",
    "tls-fallback",
    "truncate",
    "xz",
];

/// A fresh, unconfigured filter by short name; `None` if unknown.
pub fn new_filter(name: &str) -> Option<Box<dyn Filter>> {
    match name {
        "blocksize" => Some(Box::new(blocksize::Blocksize::new())),
        "blocksize-policy" => Some(Box::new(blocksize_policy::BlocksizePolicy::new())),
        "bzip2" => Some(Box::new(unpack::Unpack::new(unpack::Format::Bzip2))),
        "cache" => Some(Box::new(cache::Cache::new())),
        "cacheextents" => Some(Box::new(cacheextents::CacheExtents::new())),
        "checkwrite" => Some(Box::new(checkwrite::CheckWrite::new())),
        "count" => Some(Box::new(count::Count::new())),
        "cow" => Some(Box::new(cow::Cow::new())),
        "ddrescue" => Some(Box::new(ddrescue::Ddrescue::new())),
        "delay" => Some(Box::new(delay::Delay::new())),
        "error" => Some(Box::new(error::ErrorFilter::new())),
        "evil" => Some(Box::new(evil::Evil::new())),
        "exitlast" => Some(Box::new(exitlast::ExitLast::new())),
        "exitwhen" => Some(Box::new(exitwhen::ExitWhen::new())),
        "exportname" => Some(Box::new(exportname::ExportName::new())),
        "extentlist" => Some(Box::new(extentlist::ExtentList::new())),
        "fua" => Some(Box::new(fua::Fua::new())),
        "gzip" => Some(Box::new(unpack::Unpack::new(unpack::Format::Gzip))),
        "ip" => Some(Box::new(ip::Ip::new())),
        "limit" => Some(Box::new(limit::Limit::new())),
        "log" => Some(Box::new(log::Log::new())),
        "multi-conn" => Some(Box::new(multi_conn::MultiConn::new())),
        "nocache" => Some(Box::new(nocache::NoCache::new())),
        "noextents" => Some(Box::new(noextents::NoExtents::new())),
        "nofilter" => Some(Box::new(nofilter::NoFilter::new())),
        "noparallel" => Some(Box::new(noparallel::NoParallel::new())),
        "nozero" => Some(Box::new(nozero::NoZero::new())),
        "offset" => Some(Box::new(offset::Offset::new())),
        "partition" => Some(Box::new(partition::Partition::new())),
        "pause" => Some(Box::new(pause::Pause::new())),
        "protect" => Some(Box::new(protect::Protect::new())),
        "rate" => Some(Box::new(rate::Rate::new())),
        "readahead" => Some(Box::new(readahead::Readahead::new())),
        "readonly" => Some(Box::new(readonly::ReadOnly::new())),
        "retry" => Some(Box::new(retry::Retry::new())),
        "retry-request" => Some(Box::new(retry_request::RetryRequest::new())),
        "rotational" => Some(Box::new(rotational::Rotational::new())),
        "scan" => Some(Box::new(scan::Scan::new())),
        "spinning" => Some(Box::new(spinning::Spinning::new())),
        "stats" => Some(Box::new(stats::Stats::new())),
        "swab" => Some(Box::new(swab::Swab::new())),
        "tar" => Some(Box::new(tar::Tar::new())),
        "time-limit" => Some(Box::new(time_limit::TimeLimit::new())),
        "tls-fallback" => Some(Box::new(tls_fallback::TlsFallback::new())),
        "truncate" => Some(Box::new(truncate::Truncate::new())),
        "xz" => Some(Box::new(xz::Xz::new())),
        _ => None,
    }
}
