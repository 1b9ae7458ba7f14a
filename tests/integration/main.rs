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
mod ddrescue;
mod decomp;
mod example1;
mod file;
mod filters;
mod hostile;
mod lifecycle;
mod memory;
mod null;
mod partition;
mod pause;
mod protocol;
mod ranges;
mod readahead;
mod scan;
mod service;
mod tar;
mod time_filters;
mod tls;
mod tls_fallback;
mod webserver;
