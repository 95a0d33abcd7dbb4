//! A read transaction that keeps the stored patterns it has read, so that
//! preparing a sync ahead of the writer reads each uploaded pattern once:
//! `sync::predecode` reads it to decode the delta against it, and
//! `sync::prebuild` reads it again to decide the answer (`sync::plan`).
//! One snapshot does not change, so the second read can only give what the
//! first gave. Everything else goes straight to the transaction.

use std::cell::RefCell;

use super::{
    Contribution, DeviceChange, DeviceRecord, Enrolment, GlobalAggregate, GlobalChange, Meta,
    ReadTxn, StoreResult, StoredPattern,
};

/// `(device, pattern)` and what the snapshot holds for it.
type Read = ((String, String), Option<StoredPattern>);

/// [`ReadTxn`] over `inner` that remembers every [`ReadTxn::pattern`] it
/// answered (module docs). Meant for one preparation: it holds at most the
/// patterns of one upload.
pub struct Memo<'t> {
    inner: &'t dyn ReadTxn,
    patterns: RefCell<Vec<Read>>,
}

impl<'t> Memo<'t> {
    /// Reads through `inner`, a read snapshot.
    pub fn new(inner: &'t dyn ReadTxn) -> Self {
        Memo {
            inner,
            patterns: RefCell::new(Vec::new()),
        }
    }
}

impl ReadTxn for Memo<'_> {
    fn device(&self, id: &str) -> StoreResult<Option<DeviceRecord>> {
        self.inner.device(id)
    }
    fn pattern(&self, device: &str, pattern: &str) -> StoreResult<Option<StoredPattern>> {
        let known = self
            .patterns
            .borrow()
            .iter()
            .find(|((d, p), _)| d == device && p == pattern)
            .map(|(_, v)| v.clone());
        if let Some(v) = known {
            return Ok(v);
        }
        let v = self.inner.pattern(device, pattern)?;
        self.patterns
            .borrow_mut()
            .push(((device.to_string(), pattern.to_string()), v.clone()));
        Ok(v)
    }
    fn device_patterns(&self, device: &str) -> StoreResult<Vec<(String, StoredPattern)>> {
        self.inner.device_patterns(device)
    }
    fn device_pattern_count(&self, device: &str) -> StoreResult<u64> {
        self.inner.device_pattern_count(device)
    }
    fn revision_floor(&self, device: &str) -> StoreResult<u32> {
        self.inner.revision_floor(device)
    }
    fn meta(&self, key: Meta) -> StoreResult<u64> {
        self.inner.meta(key)
    }
    fn log_after(
        &self,
        after: u64,
        visit: &mut dyn FnMut(u64, GlobalChange) -> StoreResult<bool>,
    ) -> StoreResult<()> {
        self.inner.log_after(after, visit)
    }
    fn device_changes_after(&self, after: u64, limit: usize) -> StoreResult<Vec<DeviceChange>> {
        self.inner.device_changes_after(after, limit)
    }
    fn contribution(&self, device: &str, pattern: &str) -> StoreResult<Option<Contribution>> {
        self.inner.contribution(device, pattern)
    }
    fn device_contributions(&self, device: &str) -> StoreResult<Vec<(String, Contribution)>> {
        self.inner.device_contributions(device)
    }
    fn aggregate(&self, id: u32) -> StoreResult<Option<GlobalAggregate>> {
        self.inner.aggregate(id)
    }
    fn aggregates(&self) -> StoreResult<Vec<(u32, GlobalAggregate)>> {
        self.inner.aggregates()
    }
    fn device_count(&self) -> StoreResult<u64> {
        self.inner.device_count()
    }
    fn enrolment(&self, device: &str) -> StoreResult<Option<Enrolment>> {
        self.inner.enrolment(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb::{RedbOptions, RedbStore};
    use crate::store::{read, write};

    fn stored(revision: u32, fill: i16) -> StoredPattern {
        StoredPattern {
            revision,
            codebook: 7,
            success_rate: 0.5,
            sample_count: 10,
            category: "drama".into(),
            codes: Box::new([fill; omega_tv_sync::DIM]),
        }
    }

    /// Over a real redb snapshot, the memo answers every read as the
    /// snapshot does, repeated reads included, for two devices that hold
    /// the same pattern id with different codes and for a pattern that is
    /// not stored.
    #[tokio::test]
    async fn the_memo_answers_as_the_snapshot_does() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("m.redb"), RedbOptions::default()).unwrap();
        write(&store, |t| {
            t.put_pattern("dev-a", "p", &stored(3, 1))?;
            t.put_pattern("dev-b", "p", &stored(5, -2))?;
            t.put_pattern("dev-a", "q", &stored(1, 4))
        })
        .await
        .unwrap();
        let reads = [
            ("dev-a", "p"),
            ("dev-b", "p"),
            ("dev-a", "p"),
            ("dev-b", "missing"),
            ("dev-a", "q"),
            ("dev-b", "missing"),
            ("dev-b", "p"),
        ];
        read(&store, |t| {
            let memo = Memo::new(t);
            for (d, p) in reads {
                assert_eq!(memo.pattern(d, p)?, t.pattern(d, p)?, "{d}/{p}");
            }
            assert_eq!(memo.pattern("dev-b", "p")?.map(|s| s.revision), Some(5));
            assert_eq!(memo.pattern("dev-b", "missing")?, None);
            // Four distinct reads kept, whatever the repeats.
            assert_eq!(memo.patterns.borrow().len(), 4);
            Ok(())
        })
        .unwrap();
    }
}
