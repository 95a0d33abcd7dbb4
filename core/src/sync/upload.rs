//! Recording what the device learned and writing the upload frame:
//! [`upsert`](SyncClient::upsert), [`remove`](SyncClient::remove),
//! [`prepare`](SyncClient::prepare).

use super::{InFlight, Slot, SyncClient};
use crate::codec::MAX_CODED_LEN;
use crate::types::{Pattern, PatternId};
use crate::wire::{
    Coding, FrameWriter, Kind, PatternRemoval, PatternUpdate, Record, UploadHead,
    MAX_UPLOAD_PATTERNS,
};
use crate::{Error, Result};

impl<'cb, const N: usize> SyncClient<'cb, N> {
    /// Records the current state of a pattern (validated, then quantised).
    /// A new id takes a free slot ([`Error::CapacityExceeded`] when all `N`
    /// are used). The pattern becomes dirty if anything changed.
    #[inline(never)] // own frame: see "Memory" above
    pub fn upsert(&mut self, p: &Pattern, now_ms: u64) -> Result<()> {
        p.validate()?;
        let codes = self.cb.quantize(&p.embedding);
        match self.slots.iter_mut().find(|s| s.id == p.id) {
            Some(s) => {
                let changed = s.removed
                    || s.current != codes
                    || s.success_rate != p.success_rate
                    || s.sample_count != p.sample_count
                    || s.category != p.category;
                if changed {
                    s.current = codes;
                    s.success_rate = p.success_rate;
                    s.sample_count = p.sample_count;
                    s.category = p.category.clone();
                    s.removed = false;
                    if !s.dirty {
                        s.dirty = true;
                        s.changed_at = now_ms;
                    }
                }
            }
            None => {
                let slot = Slot {
                    id: p.id.clone(),
                    current: codes,
                    acked: [0; crate::DIM],
                    rev: 0,
                    acked_valid: false,
                    success_rate: p.success_rate,
                    sample_count: p.sample_count,
                    category: p.category.clone(),
                    dirty: true,
                    removed: false,
                    changed_at: now_ms,
                };
                self.slots.push(slot).map_err(|_| Error::CapacityExceeded)?;
            }
        }
        Ok(())
    }

    /// Drops a pattern: a removal is uploaded if the server has it, and the
    /// slot is freed once that is acknowledged (at once if the server never
    /// had it). [`Error::NotFound`] for an unknown id.
    pub fn remove(&mut self, id: &PatternId, now_ms: u64) -> Result<()> {
        let i = self
            .slots
            .iter()
            .position(|s| &s.id == id)
            .ok_or(Error::NotFound)?;
        if self.slots[i].rev == 0 && self.inflight.is_none() {
            self.slots.swap_remove(i);
            return Ok(());
        }
        let s = &mut self.slots[i];
        s.removed = true;
        if !s.dirty {
            s.dirty = true;
            s.changed_at = now_ms;
        }
        Ok(())
    }

    pub(super) fn uploadable(&self, s: &Slot) -> bool {
        s.dirty && (s.removed || self.cfg.filter.accepts(s.success_rate, s.sample_count))
    }

    /// Writes the next upload frame into `buf` and returns its length: the
    /// head, then the uploadable patterns oldest change first, as many as fit
    /// `buf` and [`MAX_UPLOAD_PATTERNS`] (the rest go next time). A frame
    /// with no pattern still asks for global changes. It takes no clock:
    /// "oldest" is the time `upsert` or `remove` recorded for each change.
    ///
    /// `buf` needs at least `OVERHEAD + max_len::UPLOAD_HEAD` (45) bytes;
    /// ~150 bytes per changed pattern is typical, `max_len::PATTERN` the
    /// worst case. Keep the bytes until the exchange is applied: a retry
    /// sends them again. [`Error::Busy`] while a request is in flight.
    #[inline(never)] // own frame: see "Memory" above
    pub fn prepare(&mut self, buf: &mut [u8]) -> Result<usize> {
        if self.inflight.is_some() {
            return Err(Error::Busy);
        }
        let mut order: heapless::Vec<(u64, u16), N> = heapless::Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            if self.uploadable(s) {
                // Cannot fail: at most N slots.
                let _ = order.push((s.changed_at, i as u16));
            }
        }
        order.sort_unstable();

        let mut w = FrameWriter::new(buf, Kind::Upload, self.cb.id())?;
        if self.cfg.accept_zstd {
            w.accept_zstd();
        }
        w.push(&Record::UploadHead(UploadHead {
            seq: self.seq,
            since: self.global_version,
            caps: self.cfg.caps,
        }))?;
        let mut code = [0u8; MAX_CODED_LEN];
        let mut sent = 0usize;
        for &(_, i) in order.iter() {
            if sent >= MAX_UPLOAD_PATTERNS {
                break;
            }
            let Some(s) = self.slots.get(i as usize) else {
                continue;
            };
            let record = if s.removed {
                Record::Removal(PatternRemoval {
                    id: s.id.clone(),
                    base_rev: s.rev,
                })
            } else {
                let delta = s.rev > 0 && s.acked_valid;
                let base = if delta { Some(&s.acked) } else { None };
                let n = self.cb.encode(&s.current, base, &mut code)?;
                Record::Pattern(PatternUpdate {
                    id: s.id.clone(),
                    base_rev: s.rev,
                    success_rate: s.success_rate,
                    sample_count: s.sample_count,
                    category: s.category.clone(),
                    coding: if delta {
                        Coding::Delta
                    } else {
                        Coding::Absolute
                    },
                    code: code.get(..n).ok_or(Error::BufferTooSmall)?,
                })
            };
            match w.push(&record) {
                Ok(()) => sent += 1,
                Err(Error::BufferTooSmall) => break,
                Err(e) => return Err(e),
            }
        }
        let len = w.finish()?.len();
        self.inflight = Some(InFlight { seq: self.seq, len });
        debug!("prepared seq {} with {} patterns", self.seq, sent);
        Ok(len)
    }
}
