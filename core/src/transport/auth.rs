//! Device authentication: every sync request is signed with HMAC-SHA256.
//!
//! Each device holds a 32-byte secret [`DeviceKey`] (issued once at
//! enrolment, `constellation device add ID`). A request is signed over an
//! unambiguous, fixed-layout canonical message:
//!
//! ```text
//! "OTS1"
//! u16 BE length | method        ("POST")
//! u16 BE length | path          ("/api/v1/sync")
//! u16 BE length | device id     (the X-Device-ID value)
//! u64 BE        | counter       (monotonic per device, never reused)
//! 32 bytes      | SHA-256(body)
//! ```
//!
//! and the signature travels in one header:
//!
//! ```text
//! Authorization: OTS1-HMAC-SHA256 counter=<decimal u64>,sig=<64 lower-case hex>
//! ```
//!
//! The counter orders requests: the server accepts a request only when its
//! counter is greater than the last one it accepted from that device, so a
//! captured request cannot be replayed and an old one cannot overtake a new
//! one. No wall-clock time is involved (TV clocks are wrong). A retried
//! upload (same `seq`, same body) is signed again with the next counter: the
//! idempotency key stays the `seq`, the counter only orders requests.
//!
//! Everything here works in place, without allocation: the HMAC state is a
//! few hundred bytes of stack, the header is formatted into a
//! [`HEADER_MAX`]-byte buffer. `docs/wire-format.md` ("Authentication") has
//! the rules and a worked example that the tests below reproduce.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::{Error, Method, Result};

type HmacSha256 = Hmac<Sha256>;

/// The header that carries the signature.
pub const HEADER: &str = "Authorization";

/// The scheme name at the start of the header value.
pub const SCHEME: &str = "OTS1-HMAC-SHA256";

/// The domain tag that starts every canonical message.
pub const DOMAIN: &[u8; 4] = b"OTS1";

/// Bytes of a key and of a signature.
pub const KEY_LEN: usize = 32;

/// Longest header value: scheme, `" counter="`, 20 digits, `",sig="`, 64 hex.
pub const HEADER_MAX: usize = SCHEME.len() + 9 + 20 + 5 + 2 * KEY_LEN;

/// Counters a device skips after a restore: the snapshot stores the counter
/// plus this window, so a reboot never signs with a counter it may already
/// have used, unless more than this many requests were signed since the
/// last persisted snapshot (the snapshot is persisted after every applied
/// exchange; at the 300 s backoff cap that is ten years of failures).
pub const COUNTER_WINDOW: u64 = 1 << 20;

/// Largest forward jump the client accepts from a `401 replayed_counter`
/// answer (`last_counter`): an unauthenticated answer must not be able to
/// run the counter to its end.
pub const MAX_COUNTER_JUMP: u64 = 1 << 32;

/// A device's 32-byte secret key. `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceKey([u8; KEY_LEN]);

impl DeviceKey {
    /// A key from its bytes.
    pub const fn new(bytes: [u8; KEY_LEN]) -> Self {
        DeviceKey(bytes)
    }

    /// A key from 64 hex digits (either case), as `constellation device add`
    /// prints it. [`Error::Malformed`] otherwise.
    pub fn from_hex(s: &str) -> Result<Self> {
        let mut k = [0u8; KEY_LEN];
        decode_hex(s.as_bytes(), &mut k)?;
        Ok(DeviceKey(k))
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The device's TLS 1.3 pre-shared key: HMAC-SHA256(key,
    /// [`TLS_PSK_DOMAIN`]), 32 bytes. Its identity is the device id.
    ///
    /// Derived, so enrolment hands out one secret; a different value from
    /// the signing key, so the TLS terminator that holds PSKs cannot sign
    /// requests. `constellation device tls-psk` prints the same value.
    pub fn tls_psk(&self) -> [u8; 32] {
        // HMAC takes keys of any length: `new_from_slice` cannot fail, and a
        // failure would only yield a PSK no server accepts.
        match HmacSha256::new_from_slice(&self.0) {
            Ok(mut mac) => {
                mac.update(TLS_PSK_DOMAIN);
                mac.finalize().into_bytes().into()
            }
            Err(_) => [0; 32],
        }
    }
}

/// The message [`DeviceKey::tls_psk`] authenticates.
pub const TLS_PSK_DOMAIN: &[u8] = b"OTS1 tls-psk";

impl core::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("DeviceKey(..)")
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for DeviceKey {
    fn format(&self, f: defmt::Formatter) {
        defmt::write!(f, "DeviceKey(..)")
    }
}

/// The method's name as signed.
pub const fn method_str(m: Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Post => "POST",
    }
}

fn mac_for(
    key: &DeviceKey,
    method: &str,
    path: &str,
    device_id: &str,
    counter: u64,
    body_sha256: &[u8; 32],
) -> Result<HmacSha256> {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = HmacSha256::new_from_slice(&key.0).map_err(|_| Error::WrongLength)?;
    mac.update(DOMAIN);
    for field in [method, path, device_id] {
        let n = u16::try_from(field.len()).map_err(|_| Error::StringTooLong)?;
        mac.update(&n.to_be_bytes());
        mac.update(field.as_bytes());
    }
    mac.update(&counter.to_be_bytes());
    mac.update(body_sha256);
    Ok(mac)
}

/// SHA-256 of a request body (the last field of the canonical message).
pub fn body_hash(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// Signs a request: HMAC-SHA256 with `key` over the canonical message of
/// `method`, `path`, `device_id`, `counter` and the SHA-256 of `body`.
/// [`Error::StringTooLong`] if a field exceeds 65,535 bytes.
pub fn sign(
    key: &DeviceKey,
    method: &str,
    path: &str,
    device_id: &str,
    counter: u64,
    body: &[u8],
) -> Result<[u8; 32]> {
    sign_hashed(key, method, path, device_id, counter, &body_hash(body))
}

/// [`sign`] with the body's SHA-256 already computed.
pub fn sign_hashed(
    key: &DeviceKey,
    method: &str,
    path: &str,
    device_id: &str,
    counter: u64,
    body_sha256: &[u8; 32],
) -> Result<[u8; 32]> {
    let mac = mac_for(key, method, path, device_id, counter, body_sha256)?;
    Ok(mac.finalize().into_bytes().into())
}

/// Checks `sig` against the request's signature in constant time (the
/// comparison takes as long whichever byte differs).
pub fn verify(
    key: &DeviceKey,
    method: &str,
    path: &str,
    device_id: &str,
    counter: u64,
    body_sha256: &[u8; 32],
    sig: &[u8],
) -> bool {
    match mac_for(key, method, path, device_id, counter, body_sha256) {
        Ok(mac) => mac.verify_slice(sig).is_ok(),
        Err(_) => false,
    }
}

/// Formats the `Authorization` header value into `buf` and returns it.
pub fn format_header<'b>(counter: u64, sig: &[u8; 32], buf: &'b mut [u8; HEADER_MAX]) -> &'b str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut at = 0;
    let mut put = |bytes: &[u8], at: &mut usize| {
        for &b in bytes {
            if let Some(slot) = buf.get_mut(*at) {
                *slot = b;
                *at += 1;
            }
        }
    };
    put(SCHEME.as_bytes(), &mut at);
    put(b" counter=", &mut at);
    let mut digits = [0u8; 20];
    put(
        crate::ascii::fmt_u64(counter, &mut digits).as_bytes(),
        &mut at,
    );
    put(b",sig=", &mut at);
    for b in sig {
        put(
            &[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0x0f)]],
            &mut at,
        );
    }
    core::str::from_utf8(buf.get(..at).unwrap_or(&[])).unwrap_or("")
}

/// Parses an `Authorization` header value: the counter and the signature.
/// Strict: exactly `OTS1-HMAC-SHA256 counter=<1..=20 digits>,sig=<64 hex>`;
/// [`Error::Malformed`] otherwise (and for a counter that overflows `u64`).
pub fn parse_header(value: &[u8]) -> Result<(u64, [u8; 32])> {
    let rest = value
        .strip_prefix(SCHEME.as_bytes())
        .and_then(|r| r.strip_prefix(b" counter="))
        .ok_or(Error::Malformed)?;
    let comma = rest
        .iter()
        .position(|&b| b == b',')
        .ok_or(Error::Malformed)?;
    let (digits, rest) = rest.split_at(comma);
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Error::Malformed);
    }
    let counter = crate::ascii::parse_u64(digits).ok_or(Error::Malformed)?;
    let hex = rest.strip_prefix(b",sig=").ok_or(Error::Malformed)?;
    let mut sig = [0u8; 32];
    decode_hex(hex, &mut sig)?;
    Ok((counter, sig))
}

/// The response header that carries the server's signature of its answer
/// (`X-OTS-Signature: <64 hex digits>`).
pub const RESPONSE_HEADER: &str = "X-OTS-Signature";

/// The domain tag of a response's canonical message. A request's message
/// continues after `"OTS1"` with a `u16` method length; `"resp"` read as
/// one would be 29,285, a method no request has, so the two kinds of
/// message never coincide.
pub const RESPONSE_DOMAIN: &[u8; 8] = b"OTS1resp";

/// Signs a response: HMAC-SHA256 with the device's key over
///
/// ```text
/// "OTS1resp" | u64 BE counter of the request answered | u16 BE status | SHA-256(body)
/// ```
///
/// where the body is the response body exactly as sent (compressed or not).
/// The counter binds the answer to one request: the client uses every
/// counter once, so a response replayed from an earlier exchange, or
/// delivered to another request, does not verify.
pub fn sign_response(key: &DeviceKey, counter: u64, status: u16, body: &[u8]) -> Result<[u8; 32]> {
    let mac = response_mac(key, counter, status, &body_hash(body))?;
    Ok(mac.finalize().into_bytes().into())
}

/// Checks a response signature in constant time (see [`sign_response`]).
pub fn verify_response(
    key: &DeviceKey,
    counter: u64,
    status: u16,
    body: &[u8],
    sig: &[u8; 32],
) -> bool {
    match response_mac(key, counter, status, &body_hash(body)) {
        Ok(mac) => mac.verify_slice(sig).is_ok(),
        Err(_) => false,
    }
}

fn response_mac(
    key: &DeviceKey,
    counter: u64,
    status: u16,
    body_sha256: &[u8; 32],
) -> Result<HmacSha256> {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = HmacSha256::new_from_slice(&key.0).map_err(|_| Error::WrongLength)?;
    mac.update(RESPONSE_DOMAIN);
    mac.update(&counter.to_be_bytes());
    mac.update(&status.to_be_bytes());
    mac.update(body_sha256);
    Ok(mac)
}

/// Parses an `X-OTS-Signature` value: exactly 64 hex digits (either case),
/// spaces and tabs around them allowed. `None` for anything else.
pub fn parse_response_header(value: &[u8]) -> Option<[u8; 32]> {
    let mut sig = [0u8; 32];
    decode_hex(crate::ascii::trim_ows(value), &mut sig).ok()?;
    Some(sig)
}

/// Formats a response signature as the header value (64 lower-case hex).
pub fn format_response_header<'b>(sig: &[u8; 32], buf: &'b mut [u8; 2 * KEY_LEN]) -> &'b str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in buf.chunks_exact_mut(2).zip(sig) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0x0f)];
    }
    core::str::from_utf8(buf).unwrap_or("")
}

/// Decodes exactly `2 * out.len()` hex digits.
fn decode_hex(hex: &[u8], out: &mut [u8]) -> Result<()> {
    if hex.len() != 2 * out.len() {
        return Err(Error::Malformed);
    }
    fn nibble(c: u8) -> Result<u8> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(Error::Malformed),
        }
    }
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of docs/wire-format.md ("Authentication"),
    /// computed independently with Python's `hmac` and `hashlib`.
    const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const BODY: &[u8] = b"hello";
    const SIG_HEX: &str = "426b94afcec3a0fa1e0332d13369b8e68e2b81e98a5ac7a6a9d74442dc16df16";

    fn key() -> DeviceKey {
        DeviceKey::from_hex(KEY_HEX).unwrap()
    }

    /// The response example of docs/wire-format.md ("Signed responses").
    #[test]
    fn response_signature_binds_counter_status_and_body() {
        let body = br#"{"error":"stale_sequence","detail":"x","last_seq":5}"#;
        let sig = sign_response(&key(), 42, 409, body).unwrap();
        assert!(verify_response(&key(), 42, 409, body, &sig));
        // Another request's counter, another status, another body, another key.
        assert!(!verify_response(&key(), 43, 409, body, &sig));
        assert!(!verify_response(&key(), 42, 200, body, &sig));
        assert!(!verify_response(&key(), 42, 409, b"{}", &sig));
        let other = DeviceKey::new([7; 32]);
        assert!(!verify_response(&other, 42, 409, body, &sig));
        // The header round-trips; anything but 64 hex digits is refused.
        let mut buf = [0u8; 64];
        let h = format_response_header(&sig, &mut buf);
        assert_eq!(parse_response_header(h.as_bytes()), Some(sig));
        let padded = std::format!(" {} ", h.to_uppercase());
        assert_eq!(parse_response_header(padded.as_bytes()), Some(sig));
        assert_eq!(parse_response_header(&h.as_bytes()[1..]), None);
        assert_eq!(parse_response_header(b""), None);
        // A request message never equals a response message: the request
        // signature over the same counter and body differs.
        let req = sign(&key(), "POST", "/api/v1/sync", "tv-0001", 42, body).unwrap();
        assert_ne!(req, sig);
    }

    #[test]
    fn signature_matches_the_documented_vector() {
        let sig = sign(&key(), "POST", "/api/v1/sync", "tv-0001", 42, BODY).unwrap();
        let mut want = [0u8; 32];
        decode_hex(SIG_HEX.as_bytes(), &mut want).unwrap();
        assert_eq!(sig, want);
        let mut buf = [0u8; HEADER_MAX];
        let h = format_header(42, &sig, &mut buf);
        assert_eq!(h, std::format!("OTS1-HMAC-SHA256 counter=42,sig={SIG_HEX}"));
        assert_eq!(parse_header(h.as_bytes()).unwrap(), (42, sig));
    }

    /// The TLS PSK of the documented key, computed with Python's `hmac`.
    #[test]
    fn tls_psk_matches_the_documented_vector() {
        let mut want = [0u8; 32];
        decode_hex(
            b"c1d522085c4dc365c0358d00d2aa9d0c2db20e6f66bf86ffe380a3498970eed1",
            &mut want,
        )
        .unwrap();
        assert_eq!(key().tls_psk(), want);
        assert_ne!(&key().tls_psk(), key().as_bytes());
    }

    #[test]
    fn every_field_is_covered() {
        let k = key();
        let base = sign(&k, "POST", "/api/v1/sync", "tv-0001", 42, BODY).unwrap();
        let h = body_hash(BODY);
        assert!(verify(&k, "POST", "/api/v1/sync", "tv-0001", 42, &h, &base));
        assert!(!verify(&k, "GET", "/api/v1/sync", "tv-0001", 42, &h, &base));
        assert!(!verify(
            &k,
            "POST",
            "/api/v1/synd",
            "tv-0001",
            42,
            &h,
            &base
        ));
        assert!(!verify(
            &k,
            "POST",
            "/api/v1/sync",
            "tv-0002",
            42,
            &h,
            &base
        ));
        assert!(!verify(
            &k,
            "POST",
            "/api/v1/sync",
            "tv-0001",
            43,
            &h,
            &base
        ));
        let h2 = body_hash(b"hellp");
        assert!(!verify(
            &k,
            "POST",
            "/api/v1/sync",
            "tv-0001",
            42,
            &h2,
            &base
        ));
        let mut k2 = *k.as_bytes();
        k2[31] ^= 1;
        let k2 = DeviceKey::new(k2);
        assert!(!verify(
            &k2,
            "POST",
            "/api/v1/sync",
            "tv-0001",
            42,
            &h,
            &base
        ));
        // A truncated or extended signature never verifies.
        assert!(!verify(
            &k,
            "POST",
            "/api/v1/sync",
            "tv-0001",
            42,
            &h,
            &base[..31]
        ));
        // Length prefixes: moving a byte between fields changes the message.
        let a = sign(&k, "POST", "/api/v1/sync", "ab", 1, b"").unwrap();
        let b = sign(&k, "POST", "/api/v1/synca", "b", 1, b"").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn header_parsing_is_strict() {
        let sig = [0xabu8; 32];
        let mut buf = [0u8; HEADER_MAX];
        let max = format_header(u64::MAX, &sig, &mut buf);
        assert_eq!(max.len(), HEADER_MAX);
        assert_eq!(parse_header(max.as_bytes()).unwrap(), (u64::MAX, sig));
        let good = "OTS1-HMAC-SHA256 counter=7,sig=".to_string() + &"ab".repeat(32);
        assert_eq!(parse_header(good.as_bytes()).unwrap(), (7, sig));
        let upper = good.replace("ab", "AB");
        assert_eq!(parse_header(upper.as_bytes()).unwrap(), (7, sig));
        for bad in [
            String::new(),
            "Bearer x".into(),
            good.replace("OTS1", "OTS2"),
            good.replace("counter=7", "counter="),
            good.replace("counter=7", "counter=-7"),
            good.replace("counter=7", "counter=18446744073709551616"),
            good.replace(",sig=", ", sig="),
            good.clone() + "a",
            good[..good.len() - 1].to_string(),
            good.replace("ab", "zz"),
        ] {
            assert_eq!(parse_header(bad.as_bytes()), Err(Error::Malformed), "{bad}");
        }
        assert!(DeviceKey::from_hex("00").is_err());
        assert_eq!(std::format!("{:?}", key()), "DeviceKey(..)");
    }

    use std::string::{String, ToString};
}
