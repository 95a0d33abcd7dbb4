//! One sync: validate, apply, respond. Pure logic over the storage traits.
//!
//! [`validate`] checks everything that can be checked without the store
//! (headers, size, frame, codebook, every record, every absolute code) and
//! turns the body into an [`Upload`]. [`apply`] runs inside the writer's
//! transaction: idempotency first, then optimistic concurrency per pattern
//! (a delta is decoded against the stored codes *before* anything is
//! written, so a bad delta still stores nothing), then the writes, the
//! response page and the idempotency record, all in that one transaction.

use omega_tv_sync::wire::{Caps, Coding, FrameReader, Kind, Record, MAX_UPLOAD_FRAME};
use omega_tv_sync::{DeviceId, Error};
use sha2::{Digest, Sha256};

use crate::codes::{Codebooks, Codes};
use crate::download::{self, Answer, ConflictState, PageRequest};
use crate::error::ApiError;
use crate::store::{DeviceRecord, ReadTxn, StoreResult, StoredPattern, WriteTxn};

/// One validated pattern record of an upload.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// A changed pattern.
    Update {
        /// Pattern id.
        id: String,
        /// Revision it is based on.
        base_rev: u32,
        /// Success rate in `[0, 1]`.
        success_rate: f32,
        /// Samples.
        sample_count: u32,
        /// Category.
        category: String,
        /// Coded bytes (a delta is decoded against the stored codes in [`apply`]).
        code: Vec<u8>,
        /// The decoded codes of an `Absolute` update.
        absolute: Option<Box<Codes>>,
        /// A `Delta` decoded ahead of the transaction against the stored
        /// codes then current: `(base codes, result)`. Used only when the
        /// stored codes are still exactly that base.
        predecoded: Option<Box<(Codes, Codes)>>,
    },
    /// A dropped pattern.
    Removal {
        /// Pattern id.
        id: String,
        /// Revision it is based on.
        base_rev: u32,
    },
}

impl Item {
    /// The pattern id.
    pub fn id(&self) -> &str {
        match self {
            Item::Update { id, .. } | Item::Removal { id, .. } => id,
        }
    }
}

/// A validated upload.
#[derive(Clone, Debug, PartialEq)]
pub struct Upload {
    /// Device id (validated).
    pub device: String,
    /// Sync sequence.
    pub seq: u64,
    /// The device's global version.
    pub since: u64,
    /// Response caps.
    pub caps: Caps,
    /// Codebook id of the frame.
    pub codebook: u32,
    /// SHA-256 of the body.
    pub sha256: [u8; 32],
    /// The device takes a zstd-compressed response (upload flag bit 1).
    pub accept_zstd: bool,
    /// Pattern records, in frame order.
    pub items: Vec<Item>,
}

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

/// The response as sent to a device that accepts zstd: the body compressed
/// when that makes the frame smaller, else `frame` unchanged. Deterministic,
/// so a replayed response is byte for byte the first one (the idempotency
/// record keeps the uncompressed frame).
pub fn compress_response(frame: &[u8]) -> Vec<u8> {
    use omega_tv_sync::wire::zstd::{Compressor, CCTX_WORKSPACE_WORDS};
    use omega_tv_sync::wire::{FLAG_ZSTD, HEADER_LEN, TRAILER_LEN};
    thread_local! {
        static WORKSPACE: std::cell::RefCell<Vec<u64>> =
            std::cell::RefCell::new(vec![0u64; CCTX_WORKSPACE_WORDS]);
    }
    let Some(body) = frame.get(HEADER_LEN..frame.len().saturating_sub(TRAILER_LEN)) else {
        return frame.to_vec();
    };
    if body.len() < 2 {
        return frame.to_vec();
    }
    let mut z = vec![0u8; body.len() - 1];
    let n = WORKSPACE.with_borrow_mut(|ws| Compressor::new(ws)?.compress(body, &mut z));
    match n {
        Ok(n) if n < body.len() => {
            let mut out = Vec::with_capacity(HEADER_LEN + n + TRAILER_LEN);
            out.extend_from_slice(&frame[..HEADER_LEN]);
            out[4] |= FLAG_ZSTD;
            out.extend_from_slice(&z[..n]);
            let crc = omega_tv_sync::wire::crc32(&out);
            out.extend_from_slice(&crc.to_le_bytes());
            out
        }
        _ => frame.to_vec(),
    }
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
            Record::Pattern(p) => {
                let absolute = match p.coding {
                    Coding::Absolute => {
                        let mut codes: Box<Codes> = Box::new([0; omega_tv_sync::DIM]);
                        book.decode(p.code, None, &mut codes).map_err(|e| {
                            ApiError::core(e, &format!("pattern {} code", p.id.as_str()))
                        })?;
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
                Item::Update {
                    id: p.id.as_str().to_string(),
                    base_rev: p.base_rev,
                    success_rate: p.success_rate,
                    sample_count: p.sample_count,
                    category: p.category.as_str().to_string(),
                    code: p.code.to_vec(),
                    absolute,
                    predecoded: None,
                }
            }
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

/// Decodes the upload's deltas against the stored codes visible in `txn`
/// (a read transaction), outside the writer, so that the single writer
/// thread only checks that the base is unchanged. Failures are left for
/// [`apply`] to decide (the base may yet change into a conflict).
pub fn predecode<T: ReadTxn + ?Sized>(
    txn: &T,
    up: &mut Upload,
    codebooks: &Codebooks,
) -> StoreResult<()> {
    let Some(book) = codebooks.get(up.codebook) else {
        return Ok(());
    };
    for item in &mut up.items {
        if let Item::Update {
            id,
            base_rev,
            code,
            absolute: None,
            predecoded,
            ..
        } = item
        {
            let Some(cur) = txn.pattern(&up.device, id)? else {
                continue;
            };
            if cur.revision != *base_rev || cur.codebook != up.codebook {
                continue;
            }
            let mut out: Codes = [0; omega_tv_sync::DIM];
            if book.decode(code, Some(&cur.codes), &mut out).is_ok() {
                *predecoded = Some(Box::new((*cur.codes, out)));
            }
        }
    }
    Ok(())
}

/// What [`apply`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// The response frame.
    pub response: Vec<u8>,
    /// True when this was a retry answered from the idempotency record.
    pub replayed: bool,
    /// Updates stored.
    pub acked: usize,
    /// Conflicts returned.
    pub conflicts: usize,
    /// Global/trend records in the response.
    pub changes: usize,
    /// The response asks the device to come back at once.
    pub more: bool,
}

enum Plan {
    Put(String, StoredPattern),
    Remove(String),
    Nothing,
}

/// Applies `up` inside a write transaction. The outer `Err` is a storage
/// failure (the transaction is abandoned); the inner one a rejection, for
/// which nothing was written.
pub fn apply(
    txn: &mut dyn WriteTxn,
    up: &Upload,
    codebooks: &Codebooks,
    next_sync_s: u32,
) -> StoreResult<Result<Applied, ApiError>> {
    let prev = txn.device(&up.device)?;
    if let Some(rec) = &prev {
        if up.seq == rec.last_seq {
            if up.sha256 == rec.body_sha256 {
                return Ok(Ok(Applied {
                    response: rec.response.clone(),
                    replayed: true,
                    acked: 0,
                    conflicts: 0,
                    changes: 0,
                    more: false,
                }));
            }
            let mut e = ApiError::new(
                409,
                "sequence_reused",
                format!("sequence {} was applied with a different body", up.seq),
            );
            e.last_seq = Some(rec.last_seq);
            return Ok(Err(e));
        }
        if up.seq < rec.last_seq {
            let mut e = ApiError::new(
                409,
                "stale_sequence",
                format!("sequence {} is older than {}", up.seq, rec.last_seq),
            );
            e.last_seq = Some(rec.last_seq);
            return Ok(Err(e));
        }
    }
    let Some(book) = codebooks.get(up.codebook) else {
        return Ok(Err(ApiError::new(
            422,
            Error::UnknownCodebook.code(),
            "unknown codebook",
        )));
    };

    // Phase 1: decide everything, write nothing.
    let mut plans: Vec<Plan> = Vec::with_capacity(up.items.len());
    let mut answers: Vec<Answer> = Vec::with_capacity(up.items.len());
    for item in &up.items {
        let cur = txn.pattern(&up.device, item.id())?;
        let cur_rev = cur.as_ref().map_or(0, |p| p.revision);
        let base_rev = match item {
            Item::Update { base_rev, .. } | Item::Removal { base_rev, .. } => *base_rev,
        };
        let same_book = cur.as_ref().is_none_or(|p| p.codebook == up.codebook);
        if base_rev != cur_rev || (!same_book && base_rev != 0) {
            let state = match &cur {
                Some(p) if p.codebook == up.codebook => {
                    let mut buf = vec![0u8; omega_tv_sync::wire::MAX_CODE_LEN];
                    match book.encode(&p.codes, &mut buf) {
                        Ok(n) => {
                            buf.truncate(n);
                            Some(ConflictState {
                                success_rate: p.success_rate,
                                sample_count: p.sample_count,
                                category: p.category.clone(),
                                code: buf,
                            })
                        }
                        Err(_) => None,
                    }
                }
                _ => None,
            };
            answers.push(Answer::Conflict {
                id: item.id().to_string(),
                server_rev: cur_rev,
                state,
            });
            plans.push(Plan::Nothing);
            continue;
        }
        match item {
            Item::Update {
                id,
                success_rate,
                sample_count,
                category,
                code,
                absolute,
                predecoded,
                ..
            } => {
                let codes = match (absolute, &cur) {
                    (Some(a), _) => a.clone(),
                    (None, Some(c))
                        if predecoded
                            .as_ref()
                            .is_some_and(|pd| pd.0 == *c.codes && c.codebook == up.codebook) =>
                    {
                        match predecoded {
                            Some(pd) => Box::new(pd.1),
                            None => continue,
                        }
                    }
                    (None, Some(c)) => {
                        let mut out: Box<Codes> = Box::new([0; omega_tv_sync::DIM]);
                        if let Err(e) = book.decode(code, Some(&c.codes), &mut out) {
                            return Ok(Err(ApiError::core(e, &format!("pattern {id} delta"))));
                        }
                        out
                    }
                    (None, None) => {
                        return Ok(Err(ApiError::new(
                            400,
                            Error::Malformed.code(),
                            format!("pattern {id}: delta without a stored base"),
                        )))
                    }
                };
                let revision = cur_rev.checked_add(1).unwrap_or(1);
                answers.push(Answer::Ack {
                    id: id.clone(),
                    revision,
                });
                plans.push(Plan::Put(
                    id.clone(),
                    StoredPattern {
                        revision,
                        codebook: up.codebook,
                        success_rate: *success_rate,
                        sample_count: *sample_count,
                        category: category.clone(),
                        codes,
                    },
                ));
            }
            Item::Removal { id, .. } => {
                answers.push(Answer::Ack {
                    id: id.clone(),
                    revision: 0,
                });
                plans.push(if cur.is_some() {
                    Plan::Remove(id.clone())
                } else {
                    Plan::Nothing
                });
            }
        }
    }

    // Phase 2: the response (read before our own writes: they do not touch
    // the changelog), then the writes and the idempotency record.
    let page = download::build(
        &*txn,
        &PageRequest {
            seq: up.seq,
            since: up.since,
            caps: up.caps,
            codebook: up.codebook,
            answers: &answers,
            next_sync_s,
            snapshot_horizon: prev.as_ref().and_then(|r| r.snapshot_horizon),
        },
    )?;
    let mut acked = 0;
    for plan in &plans {
        match plan {
            Plan::Put(id, p) => {
                txn.put_pattern(&up.device, id, p)?;
                acked += 1;
            }
            Plan::Remove(id) => {
                txn.remove_pattern(&up.device, id)?;
                acked += 1;
            }
            Plan::Nothing => {}
        }
    }
    let conflicts = answers
        .iter()
        .filter(|a| matches!(a, Answer::Conflict { .. }))
        .count();
    txn.put_device(
        &up.device,
        &DeviceRecord {
            last_seq: up.seq,
            body_sha256: up.sha256,
            response: page.frame.clone(),
            // Remembered only while the snapshot continues: a finished
            // snapshot must not let a later stale cursor skip a reset.
            snapshot_horizon: if page.more {
                page.snapshot_horizon
            } else {
                None
            },
            syncs: prev.as_ref().map_or(0, |r| r.syncs) + 1,
        },
    )?;
    Ok(Ok(Applied {
        response: page.frame,
        replayed: false,
        acked,
        conflicts,
        changes: page.changes,
        more: page.more,
    }))
}
