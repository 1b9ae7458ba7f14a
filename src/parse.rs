//! Parsers for the value syntaxes nbdkit accepts on its command line:
//! sizes (`1M`, `512s`), booleans (`yes`, `off`) and integers (decimal,
//! `0x` hex, leading-`0` octal), with nbdkit's accept/reject rules.

use crate::error::{Error, Result};

/// Largest size nbdkit accepts: 2^63 - 1.
pub const MAX_SIZE: u64 = i64::MAX as u64;

/// Parse a size string as `nbdkit_parse_size` does: a decimal integer with
/// optional `+`, optionally followed by exactly one of the suffixes
/// `b s k m g t p e` (either case).  The result must fit in 2^63 - 1.
/// Unlike nbdkit (whose `strtoll` skips it), leading whitespace is refused:
/// `size=' 1M'` is far more likely a quoting mistake than a size.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s;
    let (negative, digits_and_suffix) = match t.as_bytes().first() {
        Some(b'+') => (false, &t[1..]),
        Some(b'-') => (true, &t[1..]),
        _ => (false, t),
    };
    let ndigits = digits_and_suffix
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    if ndigits == 0 {
        return Err(Error::config(format!("could not parse size string ({s})")));
    }
    let (digits, suffix) = digits_and_suffix.split_at(ndigits);
    if negative {
        if digits.bytes().all(|b| b == b'0') && suffix.is_empty() {
            return Ok(0);
        }
        return Err(Error::config(format!("size cannot be negative ({s})")));
    }
    let value: u64 = match digits.parse::<u64>() {
        Ok(v) if v <= MAX_SIZE => v,
        _ => return Err(Error::config(format!("overflow computing size ({s})"))),
    };
    let scale: u64 = match suffix {
        "" | "b" | "B" => 1,
        "s" | "S" => 512,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        "t" | "T" => 1 << 40,
        "p" | "P" => 1 << 50,
        "e" | "E" => 1 << 60,
        _ => {
            return Err(Error::config(format!(
                "could not parse size: unknown suffix '{suffix}'"
            )))
        }
    };
    match value.checked_mul(scale) {
        Some(v) if v <= MAX_SIZE => Ok(v),
        _ => Err(Error::config(format!("overflow computing size ({s})"))),
    }
}

/// Parse a boolean as `nbdkit_parse_bool` does (case-insensitive words).
pub fn parse_bool(s: &str) -> Result<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" | "on" => Ok(true),
        "0" | "false" | "f" | "no" | "n" | "off" => Ok(false),
        _ => Err(Error::config(format!("could not decipher boolean ({s})"))),
    }
}

/// Parse an unsigned integer the way `strtoull(s, NULL, 0)` reads it
/// (decimal, `0x` hex or leading-`0` octal, optional leading whitespace and
/// `+`), requiring the whole string to be consumed and the value to be at
/// most `max`.  `what` names the value in the error message.
pub fn parse_unsigned(what: &str, s: &str, max: u64) -> Result<u64> {
    let bad = || Error::config(format!("{what}: could not parse number: \"{s}\""));
    let t = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let t = t.strip_prefix('+').unwrap_or(t);
    let (radix, body) = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        (16, h)
    } else if t.len() > 1 && t.starts_with('0') {
        (8, &t[1..])
    } else {
        (10, t)
    };
    if body.is_empty() || !body.chars().all(|c| c.is_digit(radix)) {
        return Err(bad());
    }
    let v = u64::from_str_radix(body, radix)
        .map_err(|_| Error::config(format!("{what}: number out of range: \"{s}\"")))?;
    if v > max {
        return Err(Error::config(format!(
            "{what}: number out of range: \"{s}\""
        )));
    }
    Ok(v)
}

/// Parse a signed integer the way `nbdkit_parse_int` and friends read it
/// (`strtoll(s, NULL, 0)`: decimal, `0x` hex or leading-`0` octal, optional
/// leading whitespace and sign), requiring the whole string to be consumed
/// and `min <= value <= max`.  `what` names the value in errors.
pub fn parse_signed(what: &str, s: &str, min: i64, max: i64) -> Result<i64> {
    let range = || Error::config(format!("{what}: number out of range: \"{s}\""));
    let t = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (negative, rest) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if rest.starts_with(['+', '-', ' ']) {
        return Err(Error::config(format!(
            "{what}: could not parse number: \"{s}\""
        )));
    }
    let magnitude = parse_unsigned(what, rest, u64::MAX).map_err(|e| {
        if e.message().contains("out of range") {
            range()
        } else {
            Error::config(format!("{what}: could not parse number: \"{s}\""))
        }
    })?;
    let v = if negative {
        if magnitude > i64::MAX as u64 + 1 {
            return Err(range());
        }
        (magnitude as i128).wrapping_neg() as i64
    } else {
        i64::try_from(magnitude).map_err(|_| range())?
    };
    if v < min || v > max {
        return Err(range());
    }
    Ok(v)
}

/// Parse a probability as `nbdkit_parse_probability` does: a decimal
/// number (`0.1`, `1e-1`), a percentage (`10%`) or a ratio (`1:10`,
/// `1/10`).  The result is finite and >= 0, possibly above 1 (`200%`).
pub fn parse_probability(what: &str, s: &str) -> Result<f64> {
    let bad = || Error::config(format!("{what}: could not parse probability: \"{s}\""));
    let num = |t: &str| -> Result<f64> {
        let t = t.trim();
        if t.is_empty()
            || !t
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        {
            return Err(bad());
        }
        t.parse::<f64>().map_err(|_| bad())
    };
    let v = if let Some((a, b)) = s.split_once([':', '/']) {
        let d = num(b)?;
        if d == 0.0 {
            return Err(Error::config(format!(
                "{what}: probability has a zero denominator: \"{s}\""
            )));
        }
        num(a)? / d
    } else if let Some(p) = s.trim_end().strip_suffix('%') {
        num(p)? / 100.0
    } else {
        num(s)?
    };
    if !v.is_finite() || v < 0.0 {
        return Err(Error::config(format!(
            "{what}: probability out of range: \"{s}\""
        )));
    }
    Ok(v)
}

/// Parse a delay as `nbdkit_parse_delay` does: a non-negative decimal number
/// of seconds, optionally with a unit suffix `s`, `ms`, `us` (or `μs`) or
/// `ns` (`1`, `1.5`, `1.5s`, `120ms`, `10us`, `1ns`).
pub fn parse_delay(what: &str, s: &str) -> Result<std::time::Duration> {
    let bad = || Error::config(format!("{what}: could not parse delay: \"{s}\""));
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix("us").or_else(|| t.strip_suffix("μs")) {
        (n, 1e-6)
    } else if let Some(n) = t.strip_suffix("ns") {
        (n, 1e-9)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t, 1.0)
    };
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad());
    }
    let v: f64 = num.parse().map_err(|_| bad())?;
    let secs = v * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_integers_follow_strtoll() {
        let p = |s| parse_signed("x", s, i32::MIN as i64, i32::MAX as i64);
        assert_eq!(p("-12").unwrap(), -12);
        assert_eq!(p(" +0x10").unwrap(), 16);
        assert_eq!(p("-010").unwrap(), -8);
        assert_eq!(p("-2147483648").unwrap(), i32::MIN as i64);
        assert!(p("2147483648").is_err());
        assert!(p("-2147483649").is_err());
        for bad in ["", "-", "1x", "--1", "+-1", "- 1", "1 "] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_signed("x", "-9223372036854775808", i64::MIN, i64::MAX).unwrap(),
            i64::MIN
        );
    }

    #[test]
    fn probabilities() {
        let p = |s| parse_probability("p", s);
        for s in ["0.1", "1e-1", "10%", "1:10", "1/10"] {
            assert!((p(s).unwrap() - 0.1).abs() < 1e-12, "{s}");
        }
        assert_eq!(p("200%").unwrap(), 2.0);
        for bad in ["", "x", "-1", "1:0", "10%%", "inf", "nan"] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
    }

    /// nbdkit's own accept table (human-size-test-cases.h).
    #[test]
    fn accepts_what_nbdkit_accepts() {
        let ok: &[(&str, u64)] = &[
            ("0", 0),
            ("-0", 0),
            ("+0", 0),
            ("1", 1),
            ("+1", 1),
            ("1234567890", 1234567890),
            ("9223372036854775807", 9223372036854775807),
            ("1b", 1),
            ("1B", 1),
            ("1s", 512),
            ("1S", 512),
            ("1k", 1024),
            ("1K", 1024),
            ("1m", 1 << 20),
            ("1M", 1 << 20),
            ("+1M", 1 << 20),
            ("1g", 1 << 30),
            ("1G", 1 << 30),
            ("1t", 1 << 40),
            ("1T", 1 << 40),
            ("1p", 1 << 50),
            ("1P", 1 << 50),
            ("8191p", 8191 << 50),
            ("1e", 1 << 60),
            ("1E", 1 << 60),
            ("7E", 7 << 60),
        ];
        for (s, v) in ok {
            assert_eq!(parse_size(s).ok(), Some(*v), "{s:?}");
        }
    }

    #[test]
    fn rejects_what_nbdkit_rejects() {
        let bad = [
            // nbdkit accepts these two (strtoll skips the blank); we do not.
            " -0",
            " 08",
            " 1M",
            "\t1M",
            "",
            " ",
            "+ 1",
            "garbage",
            "0junk",
            "0garbage",
            "1 1",
            "1M 1",
            "0x0",
            "0x1",
            "M",
            "1MB",
            "1MiB",
            "1.5M",
            "1.5MB",
            "-1",
            "-1M",
            "-9223372036854775808",
            "8E",
            "8192P",
            "9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "999999999999999999999999",
            "1Q",
            "=foo",
        ];
        for s in bad {
            let err = parse_size(s).expect_err(s);
            assert!(!err.message().is_empty(), "{s:?} needs a message");
        }
    }

    #[test]
    fn size_messages_match_nbdkit() {
        assert_eq!(
            parse_size("1Q").unwrap_err().message(),
            "could not parse size: unknown suffix 'Q'"
        );
        assert_eq!(
            parse_size("-1").unwrap_err().message(),
            "size cannot be negative (-1)"
        );
        assert_eq!(
            parse_size("9E").unwrap_err().message(),
            "overflow computing size (9E)"
        );
        assert_eq!(
            parse_size("").unwrap_err().message(),
            "could not parse size string ()"
        );
    }

    #[test]
    fn booleans() {
        for s in ["1", "true", "T", "yes", "Y", "on", "ON"] {
            assert!(parse_bool(s).unwrap());
        }
        for s in ["0", "false", "f", "NO", "n", "off"] {
            assert!(!parse_bool(s).unwrap());
        }
        assert!(parse_bool("maybe").is_err());
        assert!(parse_bool("").is_err());
    }

    #[test]
    fn delays() {
        use std::time::Duration;
        assert_eq!(parse_delay("d", "1").unwrap(), Duration::from_secs(1));
        assert_eq!(
            parse_delay("d", "1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            parse_delay("d", "120ms").unwrap(),
            Duration::from_millis(120)
        );
        assert_eq!(parse_delay("d", "10us").unwrap(), Duration::from_micros(10));
        assert_eq!(parse_delay("d", "7ns").unwrap(), Duration::from_nanos(7));
        for bad in ["", "ms", "-1", "1x", "abc", "1e9999"] {
            assert!(parse_delay("d", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unsigned_numbers() {
        assert_eq!(parse_unsigned("x", "10", 100).unwrap(), 10);
        assert_eq!(parse_unsigned("x", "0x10", 100).unwrap(), 16);
        assert_eq!(parse_unsigned("x", "010", 100).unwrap(), 8);
        assert_eq!(parse_unsigned("x", "0", 100).unwrap(), 0);
        assert!(parse_unsigned("x", "101", 100).is_err());
        assert!(parse_unsigned("x", "abc", 100).is_err());
        assert!(parse_unsigned("x", "-1", 100).is_err());
        assert!(parse_unsigned("x", "", 100).is_err());
        assert!(parse_unsigned("x", "08", 100).is_err());
    }
}
