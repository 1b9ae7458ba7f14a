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
mod example1;
mod file;
mod filters;
mod hostile;
mod lifecycle;
mod memory;
mod null;
mod package;
mod partition;
mod protocol;
mod ranges;
mod readahead;
mod service;
mod tar;
mod tls;
mod webserver;
