//! The records the server stores, and their encodings: the pattern's own
//! fixed layout (read and written on every sync), postcard for the rest,
//! with the one earlier layout of [`Contribution`] still read.

use serde::{Deserialize, Serialize};

use super::{StoreError, StoreResult};
use crate::codebooks::Codes;
use omega_tv_sync::DIM;

/// A device's idempotency record: what it last sent and what it got back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Sequence number of the last applied upload.
    pub last_seq: u64,
    /// SHA-256 of that upload's body.
    pub body_sha256: [u8; 32],
    /// The response sent for it, byte for byte.
    pub response: Vec<u8>,
    /// The horizon in force when this device's snapshot (reset) began; while
    /// it is unchanged, later pages continue the snapshot instead of
    /// restarting it.
    pub snapshot_horizon: Option<u64>,
    /// Uploads applied (not replays).
    pub syncs: u64,
}

/// A device's enrolment for request signing (`crate::auth`): no key is
/// stored, only what is needed to derive and check it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolment {
    /// Key generation: the device key is derived from the master secret,
    /// this number and the device id; re-enrolling bumps it (a new key).
    pub generation: u32,
    /// When it was (last) enrolled, Unix seconds.
    pub enrolled_at: u64,
    /// Revoked devices are refused (`401 unauthorized`).
    pub revoked: bool,
    /// Counter of the last accepted request (0: none yet).
    pub last_counter: u64,
}

/// A device pattern as the server holds it: absolute integer codes.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredPattern {
    /// Revision, bumped by one on every applied update. A pattern stored
    /// anew starts one above the device's revision floor
    /// ([`ReadTxn::revision_floor`](super::ReadTxn::revision_floor): 1 when
    /// the device never removed a pattern), so a revision is never reused
    /// for a pattern id.
    pub revision: u32,
    /// Codebook the codes belong to.
    pub codebook: u32,
    /// Success rate in `[0, 1]`.
    pub success_rate: f32,
    /// Samples behind the pattern.
    pub sample_count: u32,
    /// Category.
    pub category: String,
    /// Absolute codes.
    pub codes: Box<Codes>,
}

impl StoredPattern {
    /// Serialises for storage: revision, codebook, rate, samples (4 bytes
    /// each, little-endian), category (length byte + bytes), then the 384
    /// codes as little-endian `i16` (a plain copy, no varints: the sync path
    /// reads and writes these on every update).
    pub fn to_bytes(&self) -> Vec<u8> {
        let cat = self.category.as_bytes();
        let cat = &cat[..cat.len().min(255)];
        let mut out = Vec::with_capacity(17 + cat.len() + 2 * DIM);
        out.extend_from_slice(&self.revision.to_le_bytes());
        out.extend_from_slice(&self.codebook.to_le_bytes());
        out.extend_from_slice(&self.success_rate.to_le_bytes());
        out.extend_from_slice(&self.sample_count.to_le_bytes());
        out.push(cat.len() as u8);
        out.extend_from_slice(cat);
        for c in self.codes.iter() {
            out.extend_from_slice(&c.to_le_bytes());
        }
        out
    }

    /// Reads what [`to_bytes`](Self::to_bytes) wrote.
    pub fn from_bytes(b: &[u8]) -> StoreResult<Self> {
        let bad = StoreError::Corrupt("pattern");
        let u32_at = |i: usize| -> StoreResult<u32> {
            let s = b.get(i..i + 4).ok_or(bad.clone())?;
            Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        };
        let revision = u32_at(0)?;
        let codebook = u32_at(4)?;
        let success_rate = f32::from_bits(u32_at(8)?);
        let sample_count = u32_at(12)?;
        let n = usize::from(*b.get(16).ok_or(bad.clone())?);
        let category = std::str::from_utf8(b.get(17..17 + n).ok_or(bad.clone())?)
            .map_err(|_| bad.clone())?
            .to_string();
        let raw = b.get(17 + n..).ok_or(bad.clone())?;
        if raw.len() != 2 * DIM {
            return Err(bad);
        }
        let mut codes: Box<Codes> = Box::new([0; DIM]);
        for (c, x) in codes.iter_mut().zip(raw.chunks_exact(2)) {
            *c = i16::from_le_bytes([x[0], x[1]]);
        }
        Ok(StoredPattern {
            revision,
            codebook,
            success_rate,
            sample_count,
            category,
            codes,
        })
    }
}

/// One entry of the global changelog.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum GlobalChange {
    /// A global pattern was published or changed.
    Upsert {
        /// Global pattern id.
        id: u32,
        /// Success rate in `[0, 1]`.
        success_rate: f32,
        /// Samples behind it.
        sample_count: u32,
        /// Distinct contributing devices.
        contributors: u32,
        /// Category.
        category: String,
        /// Codebook of `code`.
        codebook: u32,
        /// Absolute coded embedding, ready for the wire.
        code: Vec<u8>,
    },
    /// A global pattern was withdrawn (a tombstone).
    Remove {
        /// Global pattern id.
        id: u32,
    },
    /// A trend signal.
    Trend {
        /// Content id.
        content_id: String,
        /// Momentum against baseline.
        score: f32,
        /// Region code (two upper-case letters).
        region: [u8; 2],
        /// Category.
        category: String,
        /// Server Unix time (s) it was computed at.
        calculated_at: u64,
    },
}

impl GlobalChange {
    /// The compaction key: the changelog keeps only the newest entry per key.
    pub fn item_key(&self) -> String {
        match self {
            GlobalChange::Upsert { id, .. } | GlobalChange::Remove { id } => format!("g/{id}"),
            GlobalChange::Trend {
                content_id,
                region,
                category,
                ..
            } => format!(
                "t/{}/{}/{}",
                String::from_utf8_lossy(region),
                category,
                content_id
            ),
        }
    }

    /// True for a tombstone.
    pub fn is_tombstone(&self) -> bool {
        matches!(self, GlobalChange::Remove { .. })
    }

    /// Serialises for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Reads what [`to_bytes`](Self::to_bytes) wrote.
    pub fn from_bytes(b: &[u8]) -> StoreResult<Self> {
        postcard::from_bytes(b).map_err(|_| StoreError::Corrupt("changelog entry"))
    }
}

/// A device-pattern change, input to aggregation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceChange {
    /// Commit-ordered sequence number.
    pub seq: u64,
    /// Device id.
    pub device: String,
    /// Pattern id.
    pub pattern: String,
}

/// A device pattern's contribution to a global pattern (aggregation state).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contribution {
    /// The global pattern it was merged into.
    pub global: u32,
    /// Its weight: `counted * success_rate`.
    pub weight: f32,
    /// Its success rate.
    pub success_rate: f32,
    /// Its samples, as uploaded.
    pub sample_count: u32,
    /// Its direction (unit norm), as merged.
    pub vector: Vec<f32>,
    /// The samples it counts for in the global pattern (its weight and the
    /// published sample count): `min(sample_count, max_weight_samples)`,
    /// scaled down when the device's contributions to the same global
    /// pattern together exceed `max_weight_samples`. `None` in records
    /// stored before the per-device cap: `min(sample_count,
    /// max_weight_samples)`.
    pub counted: Option<u32>,
}

/// [`Contribution`] as stored before `counted` existed.
#[derive(Deserialize)]
struct ContributionV1 {
    global: u32,
    weight: f32,
    success_rate: f32,
    sample_count: u32,
    vector: Vec<f32>,
}

impl Contribution {
    /// The samples it counts for, `clip` being `max_weight_samples`.
    pub fn counted(&self, clip: u32) -> u32 {
        self.counted.unwrap_or(self.sample_count.min(clip))
    }

    /// Serialises for storage (postcard).
    pub fn to_bytes(&self) -> StoreResult<Vec<u8>> {
        postcard::to_stdvec(self).map_err(|e| StoreError::Backend(e.to_string()))
    }

    /// Reads what [`to_bytes`](Self::to_bytes) wrote, or a record of the
    /// earlier layout without `counted` (which ends where `counted` begins,
    /// so it never reads as the current layout).
    pub fn from_bytes(b: &[u8]) -> StoreResult<Self> {
        let bad = || StoreError::Corrupt("contribution");
        match postcard::take_from_bytes::<Contribution>(b) {
            Ok((c, [])) => Ok(c),
            Ok(_) => Err(bad()),
            Err(_) => match postcard::take_from_bytes::<ContributionV1>(b) {
                Ok((c, [])) => Ok(Contribution {
                    global: c.global,
                    weight: c.weight,
                    success_rate: c.success_rate,
                    sample_count: c.sample_count,
                    vector: c.vector,
                    counted: None,
                }),
                _ => Err(bad()),
            },
        }
    }
}

/// A global pattern's aggregation state (never sent to devices).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GlobalAggregate {
    /// Category.
    pub category: String,
    /// Weighted sum of contributing directions.
    pub sum: Vec<f32>,
    /// Sum of weights.
    pub weight: f64,
    /// Weighted sum of success rates.
    pub rate_sum: f64,
    /// Sum of samples.
    pub samples: u64,
    /// Contributions per device id (distinct devices = its length).
    pub devices: std::collections::BTreeMap<String, u32>,
    /// Whether it is currently published.
    pub published: bool,
    /// Fingerprint of what was last published (codes, contributors, rate).
    pub fingerprint: u64,
    /// The unit direction last published (empty when never published).
    pub published_unit: Vec<f32>,
    /// Contributors at the last publication.
    pub published_devices: u32,
    /// Success rate at the last publication.
    pub published_rate: f32,
}

impl GlobalAggregate {
    /// An empty aggregate of `category`.
    pub fn new(category: &str) -> Self {
        GlobalAggregate {
            category: category.to_string(),
            sum: vec![0.0; DIM],
            weight: 0.0,
            rate_sum: 0.0,
            samples: 0,
            devices: Default::default(),
            published: false,
            fingerprint: 0,
            published_unit: Vec::new(),
            published_devices: 0,
            published_rate: 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Contribution;

    #[test]
    fn contributions_round_trip_and_the_earlier_layout_still_reads() {
        let c = Contribution {
            global: 7,
            weight: 83.0 * 0.9,
            success_rate: 0.9,
            sample_count: 4000,
            vector: vec![0.5; 384],
            counted: Some(83),
        };
        let b = c.to_bytes().unwrap();
        assert_eq!(Contribution::from_bytes(&b).unwrap(), c);
        assert_eq!(c.counted(1000), 83);
        // Stored before the per-device cap: no `counted` at the end.
        #[derive(serde::Serialize)]
        struct V1 {
            global: u32,
            weight: f32,
            success_rate: f32,
            sample_count: u32,
            vector: Vec<f32>,
        }
        let old = postcard::to_stdvec(&V1 {
            global: 7,
            weight: 900.0,
            success_rate: 0.9,
            sample_count: 4000,
            vector: vec![0.5; 384],
        })
        .unwrap();
        let r = Contribution::from_bytes(&old).unwrap();
        assert_eq!((r.global, r.sample_count, r.counted), (7, 4000, None));
        assert_eq!(r.counted(1000), 1000, "what the earlier code counted");
        // Neither layout with bytes after it, nor a cut record, reads.
        let mut long = b.clone();
        long.push(0);
        assert!(Contribution::from_bytes(&long).is_err());
        assert!(Contribution::from_bytes(&b[..b.len() / 2]).is_err());
    }
}
