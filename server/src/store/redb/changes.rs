//! The aggregation queue of device-pattern changes, stored in blocks.
//!
//! Every stored or removed pattern is a change with a commit-ordered
//! sequence number, read by aggregation ([`ReadTxn::device_changes_after`])
//! and dropped once consumed ([`WriteTxn::drop_device_changes`]). One row
//! per change made the queue the writer's largest cost: a B-tree insert per
//! change, and a delete per change when a pass consumed it (redb rebuilds a
//! leaf page for each). So a write transaction collects its changes in
//! memory ([`Pending`]) and stores them as one row, a *block*, keyed by the
//! sequence number of its first change (the others follow it without gaps);
//! a pass then drops whole blocks, and rewrites at most the one it consumed
//! part of.
//!
//! Block value: for each change, `u16` device id length, the id, `u16`
//! pattern id length, the id (little-endian). A block holds at most
//! [`BLOCK_MAX`] changes.
//!
//! [`ReadTxn::device_changes_after`]: crate::store::ReadTxn::device_changes_after
//! [`WriteTxn::drop_device_changes`]: crate::store::WriteTxn::drop_device_changes

use ::redb::{ReadableTable, Table, TableDefinition};

use super::be;
use crate::store::{DeviceChange, StoreError, StoreResult};

/// The queue: first sequence number of a block -> the block.
pub(super) const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("device_change_blocks");

/// The queue before blocks, one row per change: read once by
/// [`migrate`] and deleted.
const ROWS: TableDefinition<u64, (&str, &str)> = TableDefinition::new("device_changes");

/// Most changes in one block; a transaction with more stores several.
pub(super) const BLOCK_MAX: usize = 4096;

/// Changes of a write transaction not yet stored as a block.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Sequence number of the first change in `changes`.
    first: u64,
    /// The encoded changes (block format).
    bytes: Vec<u8>,
    /// How many changes `bytes` holds.
    count: usize,
    /// The last sequence number given out in this transaction, once one was.
    last: Option<u64>,
}

impl Pending {
    /// The sequence number the next change gets, given the stored one
    /// (`Meta::ChangeSeq`) for the first change of the transaction.
    pub(super) fn next_seq(&self, stored: impl FnOnce() -> StoreResult<u64>) -> StoreResult<u64> {
        match self.last {
            Some(l) => Ok(l + 1),
            None => Ok(stored()? + 1),
        }
    }

    /// Adds the change numbered `seq` (from [`Pending::next_seq`]).
    /// Returns true when the block is full and should be stored.
    pub(super) fn push(&mut self, seq: u64, device: &str, pattern: &str) -> StoreResult<bool> {
        if self.count == 0 {
            self.first = seq;
        }
        put_str(&mut self.bytes, device)?;
        put_str(&mut self.bytes, pattern)?;
        self.count += 1;
        self.last = Some(seq);
        Ok(self.count >= BLOCK_MAX)
    }

    /// The block [`Pending::store`] would store now: its first sequence
    /// number and bytes (`None` when no change is collected).
    pub(super) fn block(&self) -> Option<(u64, Vec<u8>)> {
        (self.count > 0).then(|| (self.first, self.bytes.clone()))
    }

    /// The last sequence number given out, when this transaction gave one.
    pub(super) fn last(&self) -> Option<u64> {
        self.last
    }

    /// Stores the collected changes as one block (nothing when none).
    pub(super) fn store(&mut self, t: &mut Table<'_, u64, &'static [u8]>) -> StoreResult<()> {
        if self.count == 0 {
            return Ok(());
        }
        t.insert(self.first, self.bytes.as_slice()).map_err(be)?;
        self.bytes.clear();
        self.count = 0;
        Ok(())
    }

    /// Appends the collected changes numbered above `after` to `out`, up
    /// to `limit` in all.
    pub(super) fn after(
        &self,
        after: u64,
        limit: usize,
        out: &mut Vec<DeviceChange>,
    ) -> StoreResult<()> {
        if self.count == 0 {
            return Ok(());
        }
        read_block(self.first, &self.bytes, after, limit, out)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) -> StoreResult<()> {
    let n = u16::try_from(s.len()).map_err(|_| StoreError::Backend("id too long".into()))?;
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn take_str<'a>(b: &mut &'a [u8]) -> StoreResult<&'a str> {
    let corrupt = || StoreError::Corrupt("change block");
    let (n, rest) = b.split_first_chunk::<2>().ok_or_else(corrupt)?;
    let n = usize::from(u16::from_le_bytes(*n));
    let (s, rest) = rest.split_at_checked(n).ok_or_else(corrupt)?;
    *b = rest;
    std::str::from_utf8(s).map_err(|_| corrupt())
}

/// The changes of the block that starts at `first`, each with its sequence
/// number, in order.
fn entries(first: u64, mut b: &[u8]) -> impl Iterator<Item = StoreResult<(u64, &str, &str)>> {
    let mut seq = first;
    std::iter::from_fn(move || {
        if b.is_empty() {
            return None;
        }
        let r = take_str(&mut b).and_then(|d| Ok((seq, d, take_str(&mut b)?)));
        if r.is_err() {
            b = &[];
        }
        seq += 1;
        Some(r)
    })
}

/// Appends the changes of a block numbered above `after` to `out`, up to
/// `limit` in all.
pub(super) fn read_block(
    first: u64,
    block: &[u8],
    after: u64,
    limit: usize,
    out: &mut Vec<DeviceChange>,
) -> StoreResult<()> {
    for e in entries(first, block) {
        if out.len() >= limit {
            break;
        }
        let (seq, device, pattern) = e?;
        if seq > after {
            out.push(DeviceChange {
                seq,
                device: device.to_string(),
                pattern: pattern.to_string(),
            });
        }
    }
    Ok(())
}

/// Up to `limit` stored changes numbered above `after`, in order.
pub(super) fn after(
    t: &impl ReadableTable<u64, &'static [u8]>,
    after: u64,
    limit: usize,
) -> StoreResult<Vec<DeviceChange>> {
    let mut out = Vec::new();
    let Some(from) = after.checked_add(1) else {
        return Ok(out);
    };
    // The block holding `from` starts at or before it.
    let start = match t.range(..=from).map_err(be)?.next_back() {
        Some(e) => e.map_err(be)?.0.value(),
        None => from,
    };
    for e in t.range(start..).map_err(be)? {
        if out.len() >= limit {
            break;
        }
        let (k, v) = e.map_err(be)?;
        read_block(k.value(), v.value(), after, limit, &mut out)?;
    }
    Ok(out)
}

/// Drops the stored changes numbered up to `upto`: whole blocks, and the
/// consumed head of the block `upto` falls in (its rest stored again
/// under its new first number).
pub(super) fn drop_upto(t: &mut Table<'_, u64, &'static [u8]>, upto: u64) -> StoreResult<()> {
    let mut whole = Vec::new();
    let mut split: Option<(u64, u64, Vec<u8>)> = None;
    for e in t.range(..=upto).map_err(be)? {
        let (k, v) = e.map_err(be)?;
        let first = k.value();
        let mut rest = Vec::new();
        let mut rest_first = None;
        for c in entries(first, v.value()) {
            let (seq, d, p) = c?;
            if seq > upto {
                rest_first.get_or_insert(seq);
                put_str(&mut rest, d)?;
                put_str(&mut rest, p)?;
            }
        }
        match rest_first {
            None => whole.push(first),
            Some(rf) => split = Some((first, rf, rest)),
        }
    }
    for k in whole {
        t.remove(k).map_err(be)?;
    }
    if let Some((old, new, rest)) = split {
        t.remove(old).map_err(be)?;
        t.insert(new, rest.as_slice()).map_err(be)?;
    }
    Ok(())
}

/// Moves the changes of a database written before blocks (one row per
/// change) into blocks and deletes the old table; nothing when it has none.
pub(super) fn migrate(txn: &::redb::WriteTransaction) -> StoreResult<()> {
    let mut pending = Pending::default();
    let mut blocks = txn.open_table(BLOCKS).map_err(be)?;
    {
        let rows = txn.open_table(ROWS).map_err(be)?;
        for e in rows.iter().map_err(be)? {
            let (k, v) = e.map_err(be)?;
            let (d, p) = v.value();
            let seq = k.value();
            // Rows may have gaps (a pass dropped a prefix): a gap starts a block.
            if pending.last().is_some_and(|l| l + 1 != seq) {
                pending.store(&mut blocks)?;
            }
            if pending.push(seq, d, p)? {
                pending.store(&mut blocks)?;
            }
        }
    }
    pending.store(&mut blocks)?;
    drop(blocks);
    txn.delete_table(ROWS).map_err(be)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::redb::ReadableTableMetadata;

    fn changes(v: &[DeviceChange]) -> Vec<(u64, String, String)> {
        v.iter()
            .map(|c| (c.seq, c.device.clone(), c.pattern.clone()))
            .collect()
    }

    #[test]
    fn blocks_read_after_any_cursor_and_drop_exactly_the_consumed_changes() {
        let dir = tempfile::tempdir().unwrap();
        let db = ::redb::Database::create(dir.path().join("q.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(BLOCKS).unwrap();
            // Three transactions' blocks: 1..=3, 4..=4, 5..=9.
            let mut seq = 0u64;
            for n in [3usize, 1, 5] {
                let mut p = Pending::default();
                for _ in 0..n {
                    seq = p.next_seq(|| Ok(seq)).unwrap();
                    p.push(seq, &format!("tv-{seq}"), &format!("p{}", seq % 2))
                        .unwrap();
                }
                p.store(&mut t).unwrap();
            }
            assert_eq!(t.len().unwrap(), 3);
            let all = after(&t, 0, 100).unwrap();
            assert_eq!(
                all.iter().map(|c| c.seq).collect::<Vec<_>>(),
                (1..=9).collect::<Vec<_>>()
            );
            assert_eq!(all[6].device, "tv-7");
            assert_eq!(all[6].pattern, "p1");
            // From inside a block, with a limit crossing blocks.
            let mid = after(&t, 2, 3).unwrap();
            assert_eq!(mid.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
            // Dropping up to the middle of the last block keeps its tail.
            drop_upto(&mut t, 6).unwrap();
            assert_eq!(t.len().unwrap(), 1);
            let rest = after(&t, 0, 100).unwrap();
            assert_eq!(
                changes(&rest),
                (7..=9)
                    .map(|s| (s, format!("tv-{s}"), format!("p{}", s % 2)))
                    .collect::<Vec<_>>()
            );
            assert_eq!(changes(&after(&t, 7, 100).unwrap()).len(), 2);
            drop_upto(&mut t, 9).unwrap();
            assert!(t.is_empty().unwrap());
            assert!(after(&t, 0, 100).unwrap().is_empty());
        }
        txn.commit().unwrap();
    }

    #[test]
    fn a_full_block_is_stored_and_a_corrupt_one_is_an_error() {
        let mut p = Pending::default();
        let mut full = false;
        for s in 1..=BLOCK_MAX as u64 {
            full = p.push(s, "tv", "p").unwrap();
        }
        assert!(full, "the block is full at BLOCK_MAX changes");
        let mut out = Vec::new();
        read_block(1, &[5, 0, b'a'], 0, 10, &mut out).unwrap_err();
        assert!(out.is_empty());
    }

    #[test]
    fn rows_of_an_older_database_move_into_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let db = ::redb::Database::create(dir.path().join("old.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut rows = txn.open_table(ROWS).unwrap();
            for s in [3u64, 4, 5, 9, 10] {
                rows.insert(s, ("tv-1", format!("p{s}").as_str())).unwrap();
            }
        }
        txn.commit().unwrap();
        let txn = db.begin_write().unwrap();
        migrate(&txn).unwrap();
        txn.commit().unwrap();
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(BLOCKS).unwrap();
        // The gap between 5 and 9 starts a second block.
        assert_eq!(t.len().unwrap(), 2);
        let all = after(&t, 0, 100).unwrap();
        assert_eq!(
            all.iter().map(|c| c.seq).collect::<Vec<_>>(),
            vec![3, 4, 5, 9, 10]
        );
        assert_eq!(all[3].pattern, "p9");
        assert!(txn.open_table(ROWS).is_err(), "the old table is gone");
    }
}
