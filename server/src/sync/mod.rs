//! One sync: validate, apply, respond. Pure logic over the storage traits.
//!
//! ```text
//! headers + body --validate--> Upload --predecode (read txn)-->
//!   --apply (writer's txn): replay? / plan per item / page / writes--> Applied
//!   --compress_response (when the device takes zstd)--> response body
//! ```
//!
//! [`validate`] (`validate.rs`) checks everything that can be checked
//! without the store (headers, size, frame, codebook, every record, every
//! absolute code) and turns the body into an [`Upload`]. [`apply`]
//! (`apply.rs`) runs inside the writer's transaction: idempotency first,
//! then optimistic concurrency per pattern (a delta is decoded against the
//! stored codes *before* anything is written, so a bad delta still stores
//! nothing), then the writes, the response page and the idempotency record,
//! all in that one transaction.

mod apply;
mod plan;
mod validate;

pub use apply::{
    apply, apply_with, prebuild, predecode, quota_exceeded, rebuild, Applied, Prebuilt, Recipe,
    QUOTA_EXCEEDED, REPLAY_INLINE,
};
pub use validate::{check_device_id, check_sync_version, validate};

use omega_tv_sync::wire::Caps;

use crate::codebooks::Codes;

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

/// The response as sent to a device that accepts zstd: the body compressed
/// when that makes the frame smaller, else `frame` unchanged. Deterministic,
/// so a replayed response is byte for byte the first one (the idempotency
/// record keeps the uncompressed frame). The compression and the CRC are the
/// core's own ([`compress_body`](omega_tv_sync::wire::compress_body),
/// [`seal`](omega_tv_sync::wire::seal)), as in `FrameWriter::finish_zstd`.
pub fn compress_response(frame: &[u8]) -> Vec<u8> {
    use omega_tv_sync::wire::zstd::{Compressor, CCTX_WORKSPACE_WORDS};
    use omega_tv_sync::wire::{compress_body, seal, HEADER_LEN, TRAILER_LEN};
    thread_local! {
        static WORKSPACE: std::cell::RefCell<Vec<u64>> =
            std::cell::RefCell::new(vec![0u64; CCTX_WORKSPACE_WORDS]);
    }
    let len = frame.len().saturating_sub(TRAILER_LEN);
    let mut out = frame.to_vec();
    let mut scratch = vec![0u8; len.saturating_sub(HEADER_LEN + 1)];
    let packed = WORKSPACE.with_borrow_mut(|ws| {
        compress_body(&mut out, len, &mut Compressor::new(ws)?, &mut scratch)
    });
    match packed {
        Ok(n) if n < len => match seal(&mut out, n) {
            Ok(end) => {
                out.truncate(end);
                out
            }
            Err(_) => frame.to_vec(),
        },
        _ => frame.to_vec(),
    }
}
