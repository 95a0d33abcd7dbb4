//! Fuzz target body for the server's request validation: the checks
//! `POST /api/v1/sync` runs on the headers and the body before anything is
//! stored (`sync::check_device_id`, `sync::check_sync_version`,
//! `sync::validate`). Included by `server/tests/fuzz_replay.rs` too.

use std::sync::{Arc, OnceLock};

use constellation::codebooks::{CodeSpace, Codebooks, Codes};
use constellation::sync::{self, Item};
use omega_tv_sync::codec::{self, Codebook};
use omega_tv_sync::wire::{FrameReader, MAX_UPLOAD_PATTERNS};
use omega_tv_sync::{Embedding, Result};

/// The shipped default codebook as a server code space.
struct Book(Codebook<'static>);

impl CodeSpace for Book {
    fn id(&self) -> u32 {
        self.0.id()
    }
    fn decode(&self, bytes: &[u8], base: Option<&Codes>, out: &mut Codes) -> Result<()> {
        self.0.decode(bytes, base, out)
    }
    fn encode(&self, codes: &Codes, out: &mut [u8]) -> Result<usize> {
        self.0.encode(codes, None, out)
    }
    fn reconstruct(&self, codes: &Codes) -> Result<Embedding> {
        self.0.reconstruct(codes)
    }
    fn quantize(&self, e: &Embedding) -> Codes {
        self.0.quantize(e)
    }
}

fn book() -> Codebook<'static> {
    static B: OnceLock<Codebook<'static>> = OnceLock::new();
    *B.get_or_init(|| codec::minilm_v1().expect("shipped codebook"))
}

fn codebooks() -> &'static Codebooks {
    static C: OnceLock<Codebooks> = OnceLock::new();
    C.get_or_init(|| Codebooks::empty().with(Arc::new(Book(book()))))
}

/// Marks an absent header in the `http_body` input layout.
pub const ABSENT: u8 = 0xff;

/// Lays out an `http_body` input: `X-Device-ID` (length byte, or
/// [`ABSENT`], then the bytes), `X-Sync-Version` (the same), then the body.
pub fn http_input(device: Option<&[u8]>, version: Option<&[u8]>, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for h in [device, version] {
        match h {
            Some(h) => {
                let h = &h[..h.len().min(usize::from(ABSENT) - 1)];
                v.push(h.len() as u8);
                v.extend_from_slice(h);
            }
            None => v.push(ABSENT),
        }
    }
    v.extend_from_slice(body);
    v
}

fn header(data: &[u8]) -> Option<(Option<&[u8]>, &[u8])> {
    let (&n, rest) = data.split_first()?;
    if n == ABSENT {
        return Some((None, rest));
    }
    let n = usize::from(n);
    (rest.len() >= n).then(|| (Some(&rest[..n]), &rest[n..]))
}

fn crc_fixed(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    if v.len() >= omega_tv_sync::wire::OVERHEAD && v[..2] == omega_tv_sync::wire::MAGIC {
        let end = v.len() - 4;
        let crc = omega_tv_sync::wire::crc32(&v[..end]);
        v[end..].copy_from_slice(&crc.to_le_bytes());
    }
    v
}

/// `http_body`: the handler's checks before storing, on headers and body
/// laid out as by [`http_input`]. An accepted upload must be consistent with
/// the core's reading of the same body. Accepted means: validated.
pub fn http_body(data: &[u8]) -> std::result::Result<(), String> {
    let (device, rest) = header(data).ok_or("short input")?;
    let (version, body) = header(rest).ok_or("short input")?;
    // Mutations should reach the records, not stop at the checksum.
    let body = &crc_fixed(body)[..];
    let device = sync::check_device_id(device).map_err(|e| e.code.to_string())?;
    let version = sync::check_sync_version(version).map_err(|e| e.code.to_string())?;
    let up = match sync::validate(device.clone(), version, body, codebooks()) {
        Ok(up) => up,
        Err(e) => {
            assert!((400..500).contains(&e.status), "{e:?}");
            assert!(!e.code.is_empty());
            return Err(e.code.to_string());
        }
    };
    assert_eq!(up.device, device);
    assert_eq!(up.since, version);
    assert!(up.items.len() <= MAX_UPLOAD_PATTERNS);
    for (i, item) in up.items.iter().enumerate() {
        assert!(up.items[..i].iter().all(|x| x.id() != item.id()));
        if let Item::Update {
            absolute: Some(codes),
            code,
            ..
        } = item
        {
            let mut again = [0i16; omega_tv_sync::DIM];
            book()
                .decode(code, None, &mut again)
                .expect("the server's absolute codes decode");
            assert_eq!(&again, &**codes);
        }
    }
    let f = FrameReader::parse(body).expect("an accepted body is a frame");
    assert_eq!(f.codebook_id(), up.codebook);
    assert_eq!(
        f.records().count(),
        up.items.len() + 1,
        "every record became an item"
    );
    Ok(())
}
