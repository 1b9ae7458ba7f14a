//! Integration tests for the nbdkit binary: one test binary, many modules.
//! Run against another binary with `NBDKIT_TEST_BINARY=/usr/bin/nbdkit`.

mod harness;

mod accept;
mod blocksize;
mod cabi;
mod cabi_c;
mod cache;
mod caps;
mod captive;
mod cli;
mod clients;
mod concurrency;
mod cow;
mod curl;
mod curl_filters;
mod data;
mod decomp;
mod eval;
mod example1;
mod file;
mod filters;
mod hostile;
mod info;
mod lifecycle;
mod memory;
mod nbd_plugin;
mod null;
mod ondemand;
mod partition;
mod partitioning;
mod protocol;
mod ranges;
mod readahead;
mod service;
mod sh;
mod split;
mod synthetic;
mod tar;
mod tls;
mod tmpdisk;
mod webserver;
