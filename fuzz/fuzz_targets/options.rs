//! The command-line parser: the input is argv after the program name,
//! split on NUL bytes.  Any argv must give options or a startup error,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

fuzz_target!(|data: &[u8]| {
    let args: Vec<OsString> = if data.is_empty() {
        Vec::new()
    } else {
        data.split(|&b| b == 0)
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect()
    };
    let _ = nbdkit::cli::parse(args);
});
