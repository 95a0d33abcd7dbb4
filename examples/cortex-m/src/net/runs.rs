//! What the device and the peer agree on: addresses, the recorded
//! fixtures of each exchange and how the peer frames its answer.

use embassy_net::{IpEndpoint, Ipv4Address};
use omega_tv_sync::codec::{minilm_small_v1, minilm_v1, Codebook};
use omega_tv_sync::Error;

/// The device's address (stack A). TEST-NET-1 (RFC 5737): the packets
/// never leave the firmware's RAM.
pub const DEVICE_ADDR: Ipv4Address = Ipv4Address::new(192, 0, 2, 2);
/// The peer's address (stack B).
pub const PEER_ADDR: Ipv4Address = Ipv4Address::new(192, 0, 2, 1);
/// The peer's TCP port.
pub const PEER_PORT: u16 = 8080;
/// The `Host` header the device sends.
pub const HOST: &str = "sync.test:8080";

/// The peer's endpoint.
pub fn peer() -> IpEndpoint {
    IpEndpoint::new(PEER_ADDR.into(), PEER_PORT)
}

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(env!("OUT_DIR"), "/", $name))
    };
}

/// How the peer frames the response body.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Framing {
    /// `Content-Length: N`.
    Length,
    /// `Transfer-Encoding: chunked`, in [`CHUNK`]-byte chunks.
    Chunked,
}

/// Chunk size of a chunked response (the ~1 KB responses become 4 or 5
/// chunks).
pub const CHUNK: usize = 256;

/// One plain-HTTP sync exchange: what the host recorded (`build.rs`).
pub struct Run {
    /// Codebook profile.
    pub name: &'static str,
    /// Its constructor.
    pub codebook: fn() -> Result<Codebook<'static>, Error>,
    /// The upload frame the host's client prepared.
    pub upload: &'static [u8],
    /// The `Authorization` header value signing it.
    pub auth: &'static [u8],
    /// The server's response frame.
    pub response: &'static [u8],
    /// Its `X-OTS-Signature` value (64 hex digits), signed for the request.
    pub sig: &'static [u8],
    /// How the peer sends it.
    pub framing: Framing,
}

/// The two exchanges: the default profile with a fixed-length body, the
/// small profile chunked.
pub static RUNS: [Run; 2] = [
    Run {
        name: "minilm_v1",
        codebook: minilm_v1,
        upload: fixture!("upload-v1-plain.bin"),
        auth: fixture!("auth-v1-plain.txt"),
        response: fixture!("response-v1-plain.bin"),
        sig: fixture!("sig-v1-plain.txt"),
        framing: Framing::Length,
    },
    Run {
        name: "minilm_small_v1",
        codebook: minilm_small_v1,
        upload: fixture!("upload-small-plain.bin"),
        auth: fixture!("auth-small-plain.txt"),
        response: fixture!("response-small-plain.bin"),
        sig: fixture!("sig-small-plain.txt"),
        framing: Framing::Chunked,
    },
];

/// Real pattern rows (little-endian f32), cut out by `build.rs`.
pub static ROWS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/patterns.bin"));
