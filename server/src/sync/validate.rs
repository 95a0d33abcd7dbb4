//! Everything checked without the store: the headers, the size, the frame
//! (CRC, zstd), the codebook, every record and every absolute code. The
//! result is an [`Upload`]; a refusal is an [`ApiError`] and stores nothing.

use omega_tv_sync::wire::{Coding, FrameReader, Kind, PatternUpdate, Record, MAX_UPLOAD_FRAME};
use omega_tv_sync::{DeviceId, Error};
use sha2::{Digest, Sha256};

use super::{Item, Upload};
use crate::codebooks::{CodeSpace, Codebooks, Codes};
use crate::error::ApiError;

/// Checks the `X-Device-ID` header value.
pub fn check_device_id(v: Option<&[u8]>) -> Result<String, ApiError> {
    let v = v.ok_or_else(|| ApiError::new(400, "missing_device_id", "X-Device-ID is required"))?;
    let s = std::str::from_utf8(v)
        .map_err(|_| ApiError::new(400, "invalid_device_id", "X-Device-ID is not ASCII"))?;
    DeviceId::new(s).map_err(|e| {
        ApiError::new(
            400,
            "invalid_device_id",
            format!("X-Device-ID: {}", e.code()),
        )
    })?;
    Ok(s.to_string())
}

/// Checks the `X-Sync-Version` header value.
pub fn check_sync_version(v: Option<&[u8]>) -> Result<u64, ApiError> {
    let v =
        v.ok_or_else(|| ApiError::new(400, "missing_sync_version", "X-Sync-Version is required"))?;
    std::str::from_utf8(v)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| {
            ApiError::new(
                400,
                "invalid_sync_version",
                "X-Sync-Version must be a decimal u64",
            )
        })
}

/// Decompresses a zstd upload body; the records may take at most
/// `MAX_UPLOAD_FRAME` bytes (a larger output is `decompression`, 400).
fn decompress(body: &[u8]) -> Result<Vec<u8>, ApiError> {
    use omega_tv_sync::wire::zstd::{Decompressor, DCTX_WORKSPACE_WORDS};
    thread_local! {
        static WORKSPACE: std::cell::RefCell<Vec<u64>> =
            std::cell::RefCell::new(vec![0u64; DCTX_WORKSPACE_WORDS]);
    }
    let mut out = vec![0u8; MAX_UPLOAD_FRAME];
    let n = WORKSPACE
        .with_borrow_mut(|ws| Decompressor::new(ws)?.decompress(body, &mut out))
        .map_err(|e| ApiError::core(e, "zstd body"))?;
    out.truncate(n);
    Ok(out)
}

/// Validates an upload body sent by `device` holding global version
/// `header_version`.
pub fn validate(
    device: String,
    header_version: u64,
    body: &[u8],
    codebooks: &Codebooks,
) -> Result<Upload, ApiError> {
    if body.len() > MAX_UPLOAD_FRAME {
        return Err(ApiError::new(
            413,
            "body_too_large",
            format!("body exceeds {MAX_UPLOAD_FRAME} bytes"),
        ));
    }
    let frame = FrameReader::parse(body).map_err(|e| ApiError::core(e, "frame"))?;
    let accept_zstd = frame.accepts_zstd();
    let plain: Vec<u8>;
    let frame = if frame.is_compressed() {
        plain = decompress(frame.body())?;
        FrameReader::from_body(frame.kind(), frame.codebook_id(), &plain)
    } else {
        frame
    };
    if frame.kind() != Kind::Upload {
        return Err(ApiError::new(
            400,
            Error::UnknownKind.code(),
            "frame is not an upload",
        ));
    }
    let book = codebooks.get(frame.codebook_id()).ok_or_else(|| {
        ApiError::new(
            422,
            Error::UnknownCodebook.code(),
            format!("codebook {:08x} is not known", frame.codebook_id()),
        )
    })?;
    let mut records = frame.records();
    let head = match records.next() {
        Some(Ok(Record::UploadHead(h))) => h,
        Some(Ok(_)) => return Err(ApiError::core(Error::UnknownKind, "first record")),
        Some(Err(e)) => return Err(ApiError::core(e, "upload head")),
        None => return Err(ApiError::core(Error::Truncated, "upload head")),
    };
    if head.since != header_version {
        return Err(ApiError::new(
            400,
            "header_mismatch",
            format!(
                "X-Sync-Version {header_version} differs from the frame's since {}",
                head.since
            ),
        ));
    }
    let mut items: Vec<Item> = Vec::new();
    for (i, r) in records.enumerate() {
        let r = r.map_err(|e| ApiError::core(e, &format!("record {}", i + 1)))?;
        let item = match r {
            Record::Pattern(p) => update(&p, &**book)?,
            Record::Removal(r) => Item::Removal {
                id: r.id.as_str().to_string(),
                base_rev: r.base_rev,
            },
            _ => return Err(ApiError::core(Error::UnknownKind, "record")),
        };
        if items.iter().any(|x| x.id() == item.id()) {
            return Err(ApiError::new(
                400,
                "duplicate_pattern",
                format!("pattern {} appears twice", item.id()),
            ));
        }
        items.push(item);
    }
    Ok(Upload {
        device,
        seq: head.seq,
        since: head.since,
        caps: head.caps,
        codebook: frame.codebook_id(),
        sha256: Sha256::digest(body).into(),
        accept_zstd,
        items,
    })
}

/// One pattern record as an [`Item::Update`]: an absolute code decoded
/// (and so checked) now; a delta needs `base_rev > 0` and is decoded
/// against the stored codes later.
fn update(p: &PatternUpdate<'_>, book: &dyn CodeSpace) -> Result<Item, ApiError> {
    let absolute = match p.coding {
        Coding::Absolute => {
            let mut codes: Box<Codes> = Box::new([0; omega_tv_sync::DIM]);
            book.decode(p.code, None, &mut codes)
                .map_err(|e| ApiError::core(e, &format!("pattern {} code", p.id.as_str())))?;
            Some(codes)
        }
        Coding::Delta => {
            if p.base_rev == 0 {
                return Err(ApiError::new(
                    400,
                    Error::Malformed.code(),
                    format!("pattern {}: a delta needs base_rev > 0", p.id.as_str()),
                ));
            }
            None
        }
    };
    Ok(Item::Update {
        id: p.id.as_str().to_string(),
        base_rev: p.base_rev,
        success_rate: p.success_rate,
        sample_count: p.sample_count,
        category: p.category.as_str().to_string(),
        code: p.code.to_vec(),
        absolute,
        predecoded: None,
    })
}
