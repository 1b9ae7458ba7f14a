//! Integration tests for the nbdkit binary: one test binary, many modules.
//! Run against another binary with `NBDKIT_TEST_BINARY=/usr/bin/nbdkit`.

mod harness;

mod accept;
mod blocksize;
mod cache;
mod caps;
mod captive;
mod cli;
mod clients;
mod concurrency;
mod cow;
mod curl;
mod curl_filters;
mod decomp;
mod error;
mod evil;
mod example1;
mod file;
mod filters;
mod hostile;
mod lifecycle;
mod log;
mod memory;
mod null;
mod partition;
mod protocol;
mod ranges;
mod rate;
mod readahead;
mod service;
mod stats;
mod tar;
mod tls;
mod webserver;
