//! The tables and the two transaction kinds over them: [`RedbRead`] opens
//! each table on first use, [`RedbWrite`] opens every table once for the
//! whole group. The read half is written once for both (`impl_read!`).

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use ::redb::{
    Database, ReadOnlyTable, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
    WriteTransaction,
};
use serde::Serialize;

use super::be;
use super::changes::{self, BLOCKS};
use super::journal::{newest, read, Generation, Op};
use crate::store::{
    Contribution, DeviceChange, DeviceRecord, Enrolment, GlobalAggregate, GlobalChange, Meta,
    ReadTxn, StoreError, StoreResult, StoredPattern, WriteTxn,
};

const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
const PATTERNS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("patterns");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("global_log");
const ITEMS: TableDefinition<&str, u64> = TableDefinition::new("global_items");
const CONTRIB: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("contributions");
const AGG: TableDefinition<u32, &[u8]> = TableDefinition::new("aggregates");
const AUTH: TableDefinition<&str, &[u8]> = TableDefinition::new("auth_devices");
const FLOORS: TableDefinition<&str, u32> = TableDefinition::new("revision_floors");

/// The `meta` keys of the journal's epoch and salt (`journal`): the
/// overlay generation, and the salt, of the records not yet folded into
/// this file.
const JOURNAL_EPOCH: &str = "journal_epoch";
const JOURNAL_SALT: &str = "journal_salt";

/// The database's journal epoch and salt.
pub(super) fn journal_state(txn: &WriteTransaction) -> StoreResult<(u64, u64)> {
    let t = txn.open_table(META).map_err(be)?;
    let get =
        |k: &str| -> StoreResult<u64> { Ok(t.get(k).map_err(be)?.map(|g| g.value()).unwrap_or(0)) };
    Ok((get(JOURNAL_EPOCH)?, get(JOURNAL_SALT)?))
}

/// Sets the journal epoch and salt in `txn` (a fold commits the next ones).
pub(super) fn set_journal_state(txn: &WriteTransaction, epoch: u64, salt: u64) -> StoreResult<()> {
    let mut t = txn.open_table(META).map_err(be)?;
    t.insert(JOURNAL_EPOCH, epoch).map_err(be)?;
    t.insert(JOURNAL_SALT, salt).map_err(be)?;
    Ok(())
}

/// Creates every table (a new file), so that read transactions find them.
pub(super) fn create_tables(db: &Database) -> StoreResult<()> {
    let txn = db.begin_write().map_err(be)?;
    RedbWrite::open(&txn)?;
    changes::migrate(&txn)?;
    txn.commit().map_err(be)
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8], what: &'static str) -> StoreResult<T> {
    postcard::from_bytes(b).map_err(|_| StoreError::Corrupt(what))
}

fn encode<T: Serialize>(v: &T) -> StoreResult<Vec<u8>> {
    postcard::to_stdvec(v).map_err(be)
}

type Bytes = &'static [u8];
type Str = &'static str;
type Pair = (&'static str, &'static str);

fn lazy<'c, K: ::redb::Key + 'static, V: ::redb::Value + 'static>(
    cell: &'c OnceCell<ReadOnlyTable<K, V>>,
    txn: &::redb::ReadTransaction,
    def: TableDefinition<'static, K, V>,
) -> StoreResult<&'c ReadOnlyTable<K, V>> {
    if cell.get().is_none() {
        let t = txn.open_table(def).map_err(be)?;
        let _ = cell.set(t);
    }
    cell.get().ok_or(StoreError::Closed)
}

/// The two transaction kinds over the same tables, each table named once:
/// [`RedbRead`] opens a table on first use, [`RedbWrite`] opens every table
/// once for the whole group (and `items_t`, which only it writes); both get
/// the same accessor per table, so the read half is written once
/// (`impl_read!`).
macro_rules! transactions {
    ($($t:ident: $def:ident, $k:ty => $v:ty;)*) => {
        /// A read transaction; each table is opened on first use.
        pub(super) struct RedbRead {
            txn: ::redb::ReadTransaction,
            /// The journal's acknowledged rows not yet folded into `txn`'s
            /// snapshot, oldest first.
            gens: Vec<Arc<Generation>>,
            $($t: OnceCell<ReadOnlyTable<$k, $v>>,)*
        }

        impl RedbRead {
            /// A read of `txn`'s snapshot and of the journal's generations
            /// `gens`, without those the snapshot already holds (older than
            /// its epoch: see `journal::Overlay::pair`).
            pub(super) fn new(
                txn: ::redb::ReadTransaction,
                gens: Vec<Arc<Generation>>,
            ) -> StoreResult<Self> {
                let mut r = RedbRead {
                    txn,
                    gens: Vec::new(),
                    $($t: OnceCell::new(),)*
                };
                if !gens.is_empty() {
                    let t = r.meta_t()?;
                    let snap = t.get(JOURNAL_EPOCH).map_err(be)?.map_or(0, |g| g.value());
                    r.gens = gens.into_iter().filter(|g| g.epoch >= snap).collect();
                }
                Ok(r)
            }
            $(fn $t(&self) -> StoreResult<&ReadOnlyTable<$k, $v>> {
                lazy(&self.$t, &self.txn, $def)
            })*
        }

        /// A write transaction with every table opened once for the whole group.
        pub(super) struct RedbWrite<'t> {
            /// Changes of this transaction not yet stored as a block
            /// ([`RedbWrite::store_changes`]).
            pending: changes::Pending,
            /// The rows this group wrote, for the journal (`None`: not
            /// recorded).
            ops: Option<Vec<Op>>,
            /// The group wrote a table the journal does not carry: it must
            /// be committed (folded), not journaled.
            unjournaled: bool,
            items_t: Table<'t, Str, u64>,
            $($t: Table<'t, $k, $v>,)*
        }

        impl<'t> RedbWrite<'t> {
            pub(super) fn open(txn: &'t WriteTransaction) -> StoreResult<Self> {
                Ok(RedbWrite {
                    pending: changes::Pending::default(),
                    ops: None,
                    unjournaled: false,
                    items_t: txn.open_table(ITEMS).map_err(be)?,
                    $($t: txn.open_table($def).map_err(be)?,)*
                })
            }
        }

        impl RedbWrite<'_> {
            $(fn $t(&self) -> StoreResult<&Table<'_, $k, $v>> {
                Ok(&self.$t)
            })*
        }
    };
}

transactions! {
    devices_t: DEVICES, Str => Bytes;
    patterns_t: PATTERNS, Pair => Bytes;
    meta_t: META, Str => u64;
    log_t: LOG, u64 => Bytes;
    blocks_t: BLOCKS, u64 => Bytes;
    contrib_t: CONTRIB, Pair => Bytes;
    agg_t: AGG, u32 => Bytes;
    auth_t: AUTH, Str => Bytes;
    floors_t: FLOORS, Str => u32;
}

/// The entries of a table keyed by (device id, pattern id) for `device`,
/// by pattern id, each read by `decode`.
fn by_device<V>(
    t: &impl ReadableTable<Pair, Bytes>,
    device: &str,
    decode: fn(&[u8]) -> StoreResult<V>,
) -> StoreResult<Vec<(String, V)>> {
    let mut out = Vec::new();
    for e in t.range((device, "")..).map_err(be)? {
        let (k, v) = e.map_err(be)?;
        let (d, p) = k.value();
        if d != device {
            break;
        }
        out.push((p.to_string(), decode(v.value())?));
    }
    Ok(out)
}

/// The read half, written once for both transaction kinds.
macro_rules! impl_read {
    ($t:ty) => {
        impl ReadTxn for $t {
            fn device(&self, id: &str) -> StoreResult<Option<DeviceRecord>> {
                if let Some(v) = newest(self.gens(), |r| {
                    r.devices.get(id).map(|b| decode(b, "device"))
                }) {
                    return v.map(Some);
                }
                let t = self.devices_t()?;
                let r = t.get(id).map_err(be)?;
                r.map(|g| decode(g.value(), "device")).transpose()
            }
            fn pattern(&self, device: &str, pattern: &str) -> StoreResult<Option<StoredPattern>> {
                if let Some(v) = newest(self.gens(), |r| {
                    r.patterns
                        .get(device)
                        .and_then(|m| m.get(pattern))
                        .map(|v| v.as_deref().map(StoredPattern::from_bytes).transpose())
                }) {
                    return v;
                }
                let t = self.patterns_t()?;
                let r = t.get((device, pattern)).map_err(be)?;
                r.map(|g| StoredPattern::from_bytes(g.value())).transpose()
            }
            fn device_patterns(&self, device: &str) -> StoreResult<Vec<(String, StoredPattern)>> {
                let stored = by_device(self.patterns_t()?, device, StoredPattern::from_bytes)?;
                merged(self.gens(), device, stored, StoredPattern::from_bytes)
            }
            fn device_pattern_count(&self, device: &str) -> StoreResult<u64> {
                if touched(self.gens(), device) {
                    return Ok(self.device_patterns(device)?.len() as u64);
                }
                // Keys only: no pattern is decoded.
                let t = self.patterns_t()?;
                let mut n = 0u64;
                for e in t.range((device, "")..).map_err(be)? {
                    let (k, _) = e.map_err(be)?;
                    if k.value().0 != device {
                        break;
                    }
                    n += 1;
                }
                Ok(n)
            }
            fn revision_floor(&self, device: &str) -> StoreResult<u32> {
                if let Some(f) = newest(self.gens(), |r| r.floors.get(device).copied()) {
                    return Ok(f);
                }
                let t = self.floors_t()?;
                let r = t.get(device).map_err(be)?;
                Ok(r.map(|g| g.value()).unwrap_or(0))
            }
            fn meta(&self, key: Meta) -> StoreResult<u64> {
                if let Some(v) = newest(self.gens(), |r| r.meta.get(key.key()).copied()) {
                    return Ok(v);
                }
                let t = self.meta_t()?;
                let r = t.get(key.key()).map_err(be)?;
                Ok(r.map(|g| g.value()).unwrap_or(0))
            }
            fn log_after(
                &self,
                after: u64,
                visit: &mut dyn FnMut(u64, GlobalChange) -> StoreResult<bool>,
            ) -> StoreResult<()> {
                let Some(from) = after.checked_add(1) else {
                    return Ok(());
                };
                let t = self.log_t()?;
                for e in t.range(from..).map_err(be)? {
                    let (k, v) = e.map_err(be)?;
                    if !visit(k.value(), GlobalChange::from_bytes(v.value())?)? {
                        break;
                    }
                }
                Ok(())
            }
            fn device_changes_after(
                &self,
                after: u64,
                limit: usize,
            ) -> StoreResult<Vec<DeviceChange>> {
                let mut out = changes::after(self.blocks_t()?, after, limit)?;
                self.pending_after(after, limit, &mut out)?;
                Ok(out)
            }
            fn contribution(
                &self,
                device: &str,
                pattern: &str,
            ) -> StoreResult<Option<Contribution>> {
                // Not journaled: a group that writes contributions is folded
                // before it is acknowledged.
                let t = self.contrib_t()?;
                let r = t.get((device, pattern)).map_err(be)?;
                r.map(|g| Contribution::from_bytes(g.value())).transpose()
            }
            fn device_contributions(
                &self,
                device: &str,
            ) -> StoreResult<Vec<(String, Contribution)>> {
                by_device(self.contrib_t()?, device, Contribution::from_bytes)
            }
            fn aggregate(&self, id: u32) -> StoreResult<Option<GlobalAggregate>> {
                let t = self.agg_t()?;
                let r = t.get(id).map_err(be)?;
                r.map(|g| decode(g.value(), "aggregate")).transpose()
            }
            fn aggregates(&self) -> StoreResult<Vec<(u32, GlobalAggregate)>> {
                let t = self.agg_t()?;
                let mut out = Vec::new();
                for e in t.iter().map_err(be)? {
                    let (k, v) = e.map_err(be)?;
                    out.push((
                        k.value(),
                        decode::<GlobalAggregate>(v.value(), "aggregate")?,
                    ));
                }
                Ok(out)
            }
            fn device_count(&self) -> StoreResult<u64> {
                let t = self.devices_t()?;
                Ok(t.len().map_err(be)? + self.unfolded_devices())
            }
            fn enrolment(&self, device: &str) -> StoreResult<Option<Enrolment>> {
                if let Some(v) = newest(self.gens(), |r| {
                    r.enrolments.get(device).map(|b| decode(b, "enrolment"))
                }) {
                    return v.map(Some);
                }
                let t = self.auth_t()?;
                let r = t.get(device).map_err(be)?;
                r.map(|g| decode(g.value(), "enrolment")).transpose()
            }
        }
    };
}

impl_read!(RedbRead);
impl_read!(RedbWrite<'_>);

/// Whether a generation holds a pattern row of `device`.
fn touched(gens: &[Arc<Generation>], device: &str) -> bool {
    newest(gens, |r| r.patterns.contains_key(device).then_some(())).is_some()
}

/// `stored` (a device's rows in the snapshot, by pattern id) with the
/// generations' rows of the device applied, oldest first.
fn merged<V>(
    gens: &[Arc<Generation>],
    device: &str,
    stored: Vec<(String, V)>,
    decode: fn(&[u8]) -> StoreResult<V>,
) -> StoreResult<Vec<(String, V)>> {
    if !touched(gens, device) {
        return Ok(stored);
    }
    let mut all: BTreeMap<String, V> = stored.into_iter().collect();
    for g in gens {
        let rows = read(&g.rows);
        for (p, v) in rows.patterns.get(device).into_iter().flatten() {
            match v {
                Some(b) => {
                    all.insert(p.clone(), decode(b)?);
                }
                None => {
                    all.remove(p);
                }
            }
        }
    }
    Ok(all.into_iter().collect())
}

impl RedbRead {
    /// The journal's changes numbered above `after` and above the last in
    /// `out` (the snapshot's), up to `limit` in all.
    fn pending_after(
        &self,
        after: u64,
        limit: usize,
        out: &mut Vec<DeviceChange>,
    ) -> StoreResult<()> {
        for g in &self.gens {
            let rows = read(&g.rows);
            for (&first, b) in &rows.blocks {
                if out.len() >= limit {
                    return Ok(());
                }
                let from = out.last().map_or(after, |c| c.seq.max(after));
                changes::read_block(first, b, from, limit, out)?;
            }
        }
        Ok(())
    }

    /// The journal's rows not yet in the snapshot.
    fn gens(&self) -> &[Arc<Generation>] {
        &self.gens
    }

    /// Devices stored for the first time by groups not yet folded into the
    /// snapshot (its generations are those of its epoch and later).
    fn unfolded_devices(&self) -> u64 {
        self.gens.iter().map(|g| read(&g.rows).new_devices).sum()
    }
}

impl RedbWrite<'_> {
    /// The writer reads its own transaction: no generation.
    fn gens(&self) -> &[Arc<Generation>] {
        &[]
    }

    /// The writer's transaction holds every row it wrote.
    fn unfolded_devices(&self) -> u64 {
        0
    }

    /// Records the rows this group writes from now on, for the journal.
    pub(super) fn record(&mut self) {
        self.ops = Some(Vec::new());
    }

    /// The rows recorded, and whether the group also wrote a table the
    /// journal does not carry (then it must be folded).
    pub(super) fn take_ops(&mut self) -> (Vec<Op>, bool) {
        (self.ops.take().unwrap_or_default(), self.unjournaled)
    }

    fn note(&mut self, op: impl FnOnce() -> Op) {
        if let Some(ops) = &mut self.ops {
            ops.push(op());
        }
    }

    /// Writes `ops` (a journal's groups) again, row by row, recording nothing.
    pub(super) fn replay(&mut self, ops: &[Op]) -> StoreResult<()> {
        for op in ops {
            match op {
                Op::Device(id, v, _) => {
                    self.devices_t
                        .insert(id.as_str(), v.as_slice())
                        .map_err(be)?;
                }
                Op::Pattern(d, p, Some(v)) => {
                    self.patterns_t
                        .insert((d.as_str(), p.as_str()), v.as_slice())
                        .map_err(be)?;
                }
                Op::Pattern(d, p, None) => {
                    self.patterns_t
                        .remove((d.as_str(), p.as_str()))
                        .map_err(be)?;
                }
                Op::Floor(d, f) => {
                    self.floors_t.insert(d.as_str(), *f).map_err(be)?;
                }
                Op::Enrolment(d, v) => {
                    self.auth_t.insert(d.as_str(), v.as_slice()).map_err(be)?;
                }
                Op::Meta(k, v) => {
                    self.meta_t.insert(k.as_str(), *v).map_err(be)?;
                }
                Op::Block(first, b) => {
                    self.blocks_t.insert(*first, b.as_slice()).map_err(be)?;
                }
            }
        }
        Ok(())
    }

    /// Stores the collected changes as a block, noting it for the journal.
    fn store_block(&mut self) -> StoreResult<()> {
        if self.ops.is_some() {
            if let Some((first, b)) = self.pending.block() {
                self.note(|| Op::Block(first, b));
            }
        }
        self.pending.store(&mut self.blocks_t)
    }

    /// Numbers a change and collects it for this transaction's block.
    fn record_change(&mut self, device: &str, pattern: &str) -> StoreResult<()> {
        let seq = self.pending.next_seq(|| self.meta(Meta::ChangeSeq))?;
        if self.pending.push(seq, device, pattern)? {
            self.store_block()?;
        }
        Ok(())
    }

    /// This transaction's changes not yet stored, numbered above `after`.
    fn pending_after(
        &self,
        after: u64,
        limit: usize,
        out: &mut Vec<DeviceChange>,
    ) -> StoreResult<()> {
        self.pending.after(after, limit, out)
    }

    /// Stores the changes this transaction collected as a block and the
    /// last sequence number given out; call before the commit.
    pub(super) fn store_changes(&mut self) -> StoreResult<()> {
        self.store_block()?;
        if let Some(last) = self.pending.last() {
            self.set_meta(Meta::ChangeSeq, last)?;
        }
        Ok(())
    }
}

impl WriteTxn for RedbWrite<'_> {
    fn put_enrolment(&mut self, device: &str, e: &Enrolment) -> StoreResult<()> {
        let bytes = encode(e)?;
        let t = &mut self.auth_t;
        t.insert(device, bytes.as_slice()).map_err(be)?;
        self.note(|| Op::Enrolment(device.to_string(), bytes));
        Ok(())
    }
    fn put_device(&mut self, id: &str, rec: &DeviceRecord) -> StoreResult<()> {
        let bytes = encode(rec)?;
        let t = &mut self.devices_t;
        let new = t.insert(id, bytes.as_slice()).map_err(be)?.is_none();
        self.note(|| Op::Device(id.to_string(), bytes, new));
        Ok(())
    }
    fn put_pattern(&mut self, device: &str, pattern: &str, p: &StoredPattern) -> StoreResult<()> {
        let bytes = p.to_bytes();
        {
            let t = &mut self.patterns_t;
            t.insert((device, pattern), bytes.as_slice()).map_err(be)?;
        }
        self.note(|| Op::Pattern(device.to_string(), pattern.to_string(), Some(bytes)));
        self.record_change(device, pattern)
    }
    fn remove_pattern(&mut self, device: &str, pattern: &str) -> StoreResult<()> {
        let removed = {
            let t = &mut self.patterns_t;
            let old = t.remove((device, pattern)).map_err(be)?;
            old.map(|g| StoredPattern::from_bytes(g.value()))
                .transpose()?
                .map(|p| p.revision)
        };
        if let Some(rev) = removed {
            let floor = self.revision_floor(device)?;
            if rev > floor {
                self.floors_t.insert(device, rev).map_err(be)?;
                self.note(|| Op::Floor(device.to_string(), rev));
            }
        }
        self.note(|| Op::Pattern(device.to_string(), pattern.to_string(), None));
        self.record_change(device, pattern)
    }
    fn set_meta(&mut self, key: Meta, value: u64) -> StoreResult<()> {
        let t = &mut self.meta_t;
        t.insert(key.key(), value).map_err(be)?;
        self.note(|| Op::Meta(key.key().to_string(), value));
        Ok(())
    }
    fn publish(&mut self, change: &GlobalChange) -> StoreResult<u64> {
        self.unjournaled = true;
        let v = self.meta(Meta::GlobalVersion)? + 1;
        let key = change.item_key();
        let old = {
            let items = &mut self.items_t;
            let old = items.insert(key.as_str(), v).map_err(be)?;
            old.map(|g| g.value())
        };
        {
            let log = &mut self.log_t;
            if let Some(old) = old {
                log.remove(old).map_err(be)?;
            }
            log.insert(v, change.to_bytes().as_slice()).map_err(be)?;
        }
        self.set_meta(Meta::GlobalVersion, v)?;
        Ok(v)
    }
    fn drop_tombstone(&mut self, version: u64, item: &str) -> StoreResult<()> {
        self.unjournaled = true;
        self.log_t.remove(version).map_err(be)?;
        self.items_t.remove(item).map_err(be)?;
        Ok(())
    }
    fn put_contribution(
        &mut self,
        device: &str,
        pattern: &str,
        c: Option<&Contribution>,
    ) -> StoreResult<()> {
        self.unjournaled = true;
        let t = &mut self.contrib_t;
        match c {
            Some(c) => {
                t.insert((device, pattern), c.to_bytes()?.as_slice())
                    .map_err(be)?;
            }
            None => {
                t.remove((device, pattern)).map_err(be)?;
            }
        }
        Ok(())
    }
    fn drop_device_changes(&mut self, upto: u64) -> StoreResult<()> {
        self.unjournaled = true;
        self.pending.store(&mut self.blocks_t)?;
        changes::drop_upto(&mut self.blocks_t, upto)
    }
    fn put_aggregate(&mut self, id: u32, a: Option<&GlobalAggregate>) -> StoreResult<()> {
        self.unjournaled = true;
        let t = &mut self.agg_t;
        match a {
            Some(a) => {
                t.insert(id, encode(a)?.as_slice()).map_err(be)?;
            }
            None => {
                t.remove(id).map_err(be)?;
            }
        }
        Ok(())
    }
}
