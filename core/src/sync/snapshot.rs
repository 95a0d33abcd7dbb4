//! The state that survives a reboot, as one bounded frame.
//!
//! A snapshot is a frame of kind `Snapshot` (magic, version, codebook id,
//! CRC-32) whose one record holds a layout byte, then, in postcard:
//!
//! ```text
//! layout: u8 = 0x82 (layout 2),
//! device_id: str<=64, seq: u64, global_version: u64, auth_counter: u64, count: u16,
//! then `count` times:
//!   id: str<=16, rev: u32, acked_valid: bool, success_rate: f32,
//!   sample_count: u32, category: str<=16, acked: 384 x i16 (zigzag varints)
//! ```
//!
//! It keeps what the server acknowledged; the device's newer, unacknowledged
//! changes are the application's to upsert again after a reboot (it owns its
//! patterns), and they are then uploaded as deltas on the acknowledged base.
//! A request in flight at power loss is not kept: its sequence number is
//! reused with a different body, which the server answers with 409 and the
//! client continues after the server's sequence (nothing is lost; a
//! pattern the server applied but the device never saw acknowledged comes
//! back as a conflict and is merged).
//!
//! `auth_counter` is the next unused request counter at snapshot time; a
//! restored client resumes at it plus
//! [`COUNTER_WINDOW`](crate::transport::auth::COUNTER_WINDOW), so requests signed after
//! the snapshot and before a reboot (resends of a failing exchange) can never
//! have their counters signed again. A restored client that has signed
//! nothing yet writes the stored value back unchanged (every counter from
//! there plus the window on is still unused), so a snapshot restores to
//! itself. Layout 1 (written before request signing existed) has no layout
//! byte and no `auth_counter` (its body starts with the device id's length,
//! `1..=64`); it is still read, as `auth_counter = 0`.

use postcard::experimental::max_size::MaxSize;
use serde::{Deserialize, Serialize};

use super::{Config, Slot, SyncClient};
use crate::codec::{Codebook, Codes};
use crate::types::{Category, DeviceId, PatternId};
use crate::wire::{FrameReader, Kind, Record, OVERHEAD};
use crate::{Error, Result, DIM};

#[derive(Serialize, Deserialize)]
struct Head<'a> {
    device_id: &'a str,
    seq: u64,
    global_version: u64,
    auth_counter: u64,
    count: u16,
}

/// Layout 1, without the layout byte and the counter.
#[derive(Serialize, Deserialize)]
struct HeadV1<'a> {
    device_id: &'a str,
    seq: u64,
    global_version: u64,
    count: u16,
}

/// The first body byte of layout 2 (a layout-1 body starts with `1..=64`).
const LAYOUT_2: u8 = 0x82;

#[derive(Serialize, Deserialize)]
struct SlotHead<'a> {
    id: &'a str,
    rev: u32,
    acked_valid: bool,
    success_rate: f32,
    sample_count: u32,
    category: &'a str,
}

const HEAD_MAX: usize = 1 + DeviceId::POSTCARD_MAX_SIZE + 10 + 10 + 10 + 3;
const SLOT_MAX: usize =
    PatternId::POSTCARD_MAX_SIZE + 5 + 1 + 4 + 5 + Category::POSTCARD_MAX_SIZE + DIM * 3;

/// Largest snapshot of a client with `n` slots, in bytes (frame included):
/// `13 + 1 + 99 + n * 1201` (each code is a zigzag varint of at most 3
/// bytes). For 64 patterns: 76,977 bytes; real states take about half
/// (most codes fit in 1–2 bytes).
pub const fn max_snapshot_len(n: usize) -> usize {
    OVERHEAD + 1 + HEAD_MAX + n * SLOT_MAX
}

impl<'cb, const N: usize> SyncClient<'cb, N> {
    /// Largest snapshot of this client type ([`max_snapshot_len`]`(N)`).
    pub const MAX_SNAPSHOT_LEN: usize = max_snapshot_len(N);

    /// Writes the persistent state into `buf` (at most
    /// [`Self::MAX_SNAPSHOT_LEN`] bytes) and returns its length. Call it after
    /// every applied exchange, before the next one.
    #[inline(never)] // own frame: see the sync module's "Memory"
    pub fn snapshot(&self, buf: &mut [u8]) -> Result<usize> {
        use crate::wire::{crc32, tag, FORMAT_VERSION, HEADER_LEN, MAGIC, TRAILER_LEN};
        let start = HEADER_LEN + 1;
        let end_limit = buf
            .len()
            .checked_sub(TRAILER_LEN)
            .ok_or(Error::BufferTooSmall)?;
        let body = buf.get_mut(start..end_limit).ok_or(Error::BufferTooSmall)?;
        let mut at = 0usize;
        fn put<T: Serialize>(v: &T, body: &mut [u8], at: &mut usize) -> Result<()> {
            let dst = body.get_mut(*at..).ok_or(Error::BufferTooSmall)?;
            *at += postcard::to_slice(v, dst)?.len();
            Ok(())
        }
        let head = Head {
            device_id: self.cfg.device_id.as_str(),
            seq: self.seq,
            global_version: self.global_version,
            auth_counter: match self.auth_restored {
                Some(s)
                    if self.auth_counter
                        == s.saturating_add(crate::transport::auth::COUNTER_WINDOW) =>
                {
                    s
                }
                _ => self.auth_counter,
            },
            count: self.slots.len() as u16,
        };
        put(&LAYOUT_2, body, &mut at)?;
        put(&head, body, &mut at)?;
        for s in self.slots.iter() {
            let sh = SlotHead {
                id: s.id.as_str(),
                rev: s.rev,
                acked_valid: s.acked_valid,
                success_rate: s.success_rate,
                sample_count: s.sample_count,
                category: s.category.as_str(),
            };
            put(&sh, body, &mut at)?;
            for c in s.acked.iter() {
                put(c, body, &mut at)?;
            }
        }
        let end = start + at;
        buf[0..2].copy_from_slice(&MAGIC);
        buf[2] = FORMAT_VERSION;
        buf[3] = Kind::Snapshot as u8;
        buf[4] = 0;
        buf[5..9].copy_from_slice(&self.cb.id().to_le_bytes());
        buf[HEADER_LEN] = tag::SNAPSHOT;
        let crc = crc32(&buf[..end]);
        buf[end..end + TRAILER_LEN].copy_from_slice(&crc.to_le_bytes());
        Ok(end + TRAILER_LEN)
    }

    /// Rebuilds a client from a snapshot. The device id in the snapshot must
    /// be `config.device_id` and the codebook the one it was made with
    /// ([`Error::UnknownCodebook`]); a corrupt snapshot is an error, never a
    /// partial state. Returns the client by value; see
    /// [`restore_into`](Self::restore_into) for the in-place form.
    pub fn restore(codebook: Codebook<'cb>, config: Config, bytes: &[u8]) -> Result<Self> {
        let mut client = SyncClient::new(codebook, config);
        client.restore_into(bytes)?;
        Ok(client)
    }

    /// Replaces this client's state with the snapshot's, in place, keeping
    /// its codebook and configuration (the snapshot's device id and codebook
    /// must match them). The snapshot is checked completely before anything
    /// changes: on error the client is as it was.
    #[inline(never)] // own frame: see the sync module's "Memory"
    pub fn restore_into(&mut self, bytes: &[u8]) -> Result<()> {
        let f = FrameReader::parse(bytes)?;
        if f.kind() != Kind::Snapshot {
            return Err(Error::UnknownKind);
        }
        if f.codebook_id() != self.cb.id() {
            return Err(Error::UnknownCodebook);
        }
        let mut recs = f.records();
        let body = match recs.next() {
            Some(Ok(Record::Snapshot(b))) => b,
            Some(Err(e)) => return Err(e),
            _ => return Err(Error::Malformed),
        };
        // Pass 1: check everything, change nothing.
        let mut ids: heapless::Vec<PatternId, N> = heapless::Vec::new();
        let head = parse(body, self.cfg.device_id.as_str(), N, |slot| {
            if ids.contains(&slot.id) {
                return Err(Error::Malformed);
            }
            ids.push(slot.id.clone())
                .map_err(|_| Error::CapacityExceeded)
        })?;
        // Pass 2: apply (cannot fail: pass 1 saw the same bytes).
        self.slots.clear();
        self.inflight = None;
        self.failures = 0;
        self.next_sync_at = 0;
        self.seq = head.seq.max(1);
        self.global_version = head.global_version;
        self.auth_restored = Some(head.auth_counter);
        self.auth_counter = head
            .auth_counter
            .saturating_add(crate::transport::auth::COUNTER_WINDOW);
        let slots = &mut self.slots;
        parse(body, self.cfg.device_id.as_str(), N, |slot| {
            slots.push(slot).map_err(|_| Error::CapacityExceeded)
        })?;
        Ok(())
    }
}

/// Walks a snapshot body: checks the head against `device_id` and `n`
/// slots, builds each slot and hands it to `visit`, and rejects trailing
/// bytes. Returns the head.
fn parse<'a>(
    body: &'a [u8],
    device_id: &str,
    n: usize,
    mut visit: impl FnMut(Slot) -> Result<()>,
) -> Result<Head<'a>> {
    let (head, mut rest) = match body.split_first() {
        Some((&LAYOUT_2, b)) => postcard::take_from_bytes::<Head>(b)?,
        Some((1..=64, _)) => {
            let (h, rest) = postcard::take_from_bytes::<HeadV1>(body)?;
            let head = Head {
                device_id: h.device_id,
                seq: h.seq,
                global_version: h.global_version,
                auth_counter: 0,
                count: h.count,
            };
            (head, rest)
        }
        _ => return Err(Error::UnsupportedVersion),
    };
    if head.device_id != device_id {
        return Err(Error::ProtocolViolation);
    }
    if usize::from(head.count) > n {
        return Err(Error::CapacityExceeded);
    }
    for _ in 0..head.count {
        let (sh, r) = postcard::take_from_bytes::<SlotHead>(rest)?;
        rest = r;
        let mut acked: Codes = [0; DIM];
        for c in acked.iter_mut() {
            let (v, r) = postcard::take_from_bytes::<i16>(rest)?;
            *c = v;
            rest = r;
        }
        crate::types::check_rate(sh.success_rate)?;
        visit(Slot {
            id: PatternId::new(sh.id)?,
            current: acked,
            acked,
            rev: sh.rev,
            acked_valid: sh.acked_valid,
            success_rate: sh.success_rate,
            sample_count: sh.sample_count,
            category: Category::new(sh.category)?,
            // A base the device could not delta against must be re-sent.
            dirty: !sh.acked_valid,
            removed: false,
            changed_at: 0,
        })?;
    }
    if !rest.is_empty() {
        return Err(Error::TrailingBytes);
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::minilm_v1;
    use crate::wire::{crc32, HEADER_LEN, TRAILER_LEN};

    /// The formula the README and `max_snapshot_len`'s docs state (the
    /// README once said 88 for the head).
    #[test]
    fn documented_snapshot_bound() {
        for n in [0, 1, 8, 64, 1000] {
            assert_eq!(max_snapshot_len(n), 13 + 1 + 99 + n * 1201, "n = {n}");
        }
        assert_eq!(max_snapshot_len(64), 76_977);
    }

    /// A layout-1 snapshot (no layout byte, no counter) still restores, and
    /// resumes signing at the window.
    #[test]
    fn layout_1_still_restores() {
        let cfg = Config::new(DeviceId::new("tv-old").unwrap());
        let mut c: SyncClient<'_, 4> = SyncClient::new(minilm_v1().unwrap(), cfg.clone());
        c.seq = 9;
        c.global_version = 77;
        let mut buf = [0u8; 256];
        let n = c.snapshot(&mut buf).unwrap();
        // Rewrite the body as layout 1.
        let mut v1 = std::vec::Vec::from(&buf[..HEADER_LEN + 1]);
        let head = HeadV1 {
            device_id: "tv-old",
            seq: 9,
            global_version: 77,
            count: 0,
        };
        let mut tmp = [0u8; 128];
        v1.extend_from_slice(postcard::to_slice(&head, &mut tmp).unwrap());
        let crc = crc32(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        assert!(v1.len() < n);
        let _ = TRAILER_LEN;
        let mut r: SyncClient<'_, 4> = SyncClient::new(minilm_v1().unwrap(), cfg);
        r.restore_into(&v1).unwrap();
        assert_eq!((r.seq(), r.global_version()), (9, 77));
        assert_eq!(r.auth_counter(), crate::transport::auth::COUNTER_WINDOW);
        // And a body that is neither layout is refused.
        let mut bad = v1.clone();
        bad[HEADER_LEN + 1] = 0x81;
        let end = bad.len() - 4;
        let crc = crc32(&bad[..end]);
        bad[end..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(r.restore_into(&bad), Err(Error::UnsupportedVersion));
    }
}
