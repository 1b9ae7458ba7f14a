//! The wire codec's decoders: request headers (compact and extended),
//! option headers and option payloads, and the client-side reply
//! decoders.  None may panic on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbdkit::protocol::handshake::{
    encode_option, parse_option, parse_option_header, parse_option_reply_header,
};
use nbdkit::protocol::transmission::{
    decode_reply_head, decode_request, encode_request, COMPACT_REQUEST_LEN, EXTENDED_REQUEST_LEN,
};

fuzz_target!(|data: &[u8]| {
    // Request headers: the whole input (any length is a legal call), and
    // exact-size prefixes; what decodes must encode back to the same bytes.
    for extended in [false, true] {
        let _ = decode_request(data, extended);
        let len = if extended {
            EXTENDED_REQUEST_LEN
        } else {
            COMPACT_REQUEST_LEN
        };
        if let Some(head) = data.get(..len) {
            if let Ok(req) = decode_request(head, extended) {
                assert_eq!(encode_request(&req, extended), head, "request round trip");
            }
        }
    }
    // Option header, then the option's payload as parse_option sees it.
    if let Some(head) = data.get(..16) {
        let head: &[u8; 16] = head.try_into().unwrap();
        if let Ok(h) = parse_option_header(head) {
            let payload = &data[16..];
            if let Ok(opt) = parse_option(h.option, payload) {
                // What parses must re-encode to a parseable option.
                let again = encode_option(&opt);
                if let Some(h2) = again.get(..16) {
                    let h2: &[u8; 16] = h2.try_into().unwrap();
                    let h2 = parse_option_header(h2).expect("re-encoded header");
                    assert!(parse_option(h2.option, &again[16..]).is_ok());
                }
            }
        }
    }
    // Any option number with the payload after a 4-byte option number.
    if data.len() >= 4 {
        let option = u32::from_be_bytes(data[..4].try_into().unwrap());
        let _ = parse_option(option, &data[4..]);
    }
    if let Some(head) = data.get(..20) {
        let _ = parse_option_reply_header(head.try_into().unwrap());
    }
    let _ = decode_reply_head(data);
});
