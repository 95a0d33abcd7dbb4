//! Decimal numbers as ASCII text, without allocation: the one formatter and
//! the parsers every part of the crate (and the transports) use for header
//! values, query strings and error bodies.
//!
//! Imports nothing from the rest of the crate.

/// Bytes of the longest decimal `u64` (`18446744073709551615`).
pub const U64_DIGITS: usize = 20;

/// Formats `v` in decimal into the end of `buf` and returns the digits
/// (no sign, no leading zeros; `0` for zero).
///
/// ```
/// let mut buf = [0u8; omega_tv_sync::ascii::U64_DIGITS];
/// assert_eq!(omega_tv_sync::ascii::fmt_u64(1536, &mut buf), "1536");
/// ```
pub fn fmt_u64(mut v: u64, buf: &mut [u8; U64_DIGITS]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    core::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// Parses `digits` as a decimal `u64`: one or more ASCII digits and nothing
/// else (no sign, no spaces). `None` when empty, when any byte is not a
/// digit, or when the value overflows `u64`.
pub fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    let mut n = 0u64;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(n)
}

/// Parses `digits` as a decimal `u32` that saturates: one or more ASCII
/// digits and nothing else; a value above `u32::MAX` (any number of digits)
/// gives `u32::MAX`. `None` when empty or when any byte is not a digit.
pub fn parse_u32_saturating(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() {
        return None;
    }
    let mut n: u32 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.saturating_mul(10).saturating_add(u32::from(d - b'0'));
    }
    Some(n)
}

/// `v` without leading and trailing spaces and tabs (HTTP's optional
/// whitespace around a field value).
pub fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Finds `"<key>": N` in a JSON error body (`key` with its quotes) and
/// parses `N` (spaces and the colon between them skipped; the digits end at
/// the first non-digit). `None` when the key is missing or `N` is not a
/// `u64`.
pub fn parse_json_u64(body: &[u8], key: &[u8]) -> Option<u64> {
    let at = body.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = body.get(at..)?;
    let rest = &rest[rest.iter().position(|&b| b != b' ' && b != b':')?..];
    let end = rest
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    parse_u64(rest.get(..end)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_every_width() {
        let mut b = [0u8; U64_DIGITS];
        assert_eq!(fmt_u64(0, &mut b), "0");
        assert_eq!(fmt_u64(7, &mut b), "7");
        assert_eq!(fmt_u64(1536, &mut b), "1536");
        assert_eq!(fmt_u64(u64::MAX, &mut b), "18446744073709551615");
        for v in [9u64, 10, 99, 100, 4_294_967_295, 4_294_967_296] {
            assert_eq!(fmt_u64(v, &mut b), std::format!("{v}"));
        }
    }

    #[test]
    fn parse_u64_is_strict_and_checks_overflow() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"0042"), Some(42));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b"99999999999999999999999"), None);
        for bad in [&b""[..], b"+1", b"-1", b" 1", b"1 ", b"1a", b"0x10"] {
            assert_eq!(parse_u64(bad), None, "{:?}", std::str::from_utf8(bad));
        }
    }

    #[test]
    fn parse_u32_saturating_saturates() {
        assert_eq!(parse_u32_saturating(b"0"), Some(0));
        assert_eq!(parse_u32_saturating(b"4294967295"), Some(u32::MAX));
        assert_eq!(parse_u32_saturating(b"4294967296"), Some(u32::MAX));
        assert_eq!(
            parse_u32_saturating(b"99999999999999999999999"),
            Some(u32::MAX)
        );
        for bad in [&b""[..], b"+1", b"-1", b"1.5", b" 1"] {
            assert_eq!(parse_u32_saturating(bad), None);
        }
    }

    #[test]
    fn trims_spaces_and_tabs_only() {
        assert_eq!(trim_ows(b" \t 12 \t"), b"12");
        assert_eq!(trim_ows(b"   "), b"");
        assert_eq!(trim_ows(b"\r12\n"), b"\r12\n");
    }

    #[test]
    fn json_numbers_after_their_key() {
        assert_eq!(
            parse_json_u64(br#"{"last_seq":42}"#, b"\"last_seq\""),
            Some(42)
        );
        assert_eq!(
            parse_json_u64(br#"{"last_counter" : 7,"a":1}"#, b"\"last_counter\""),
            Some(7)
        );
        assert_eq!(parse_json_u64(br#"{"last_seq":-1}"#, b"\"last_seq\""), None);
        assert_eq!(
            parse_json_u64(br#"{"last_seq":18446744073709551616}"#, b"\"last_seq\""),
            None
        );
        assert_eq!(parse_json_u64(br#"{"last_seq":"#, b"\"last_seq\""), None);
    }
}
