//! An in-memory backend: the same semantics as the durable one, without
//! durability. For unit tests and quick experiments.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;

/// Everything a backend stores, in ordered maps.
#[derive(Clone, Default, Debug)]
pub struct MemState {
    devices: BTreeMap<String, DeviceRecord>,
    patterns: BTreeMap<(String, String), StoredPattern>,
    meta: BTreeMap<&'static str, u64>,
    log: BTreeMap<u64, GlobalChange>,
    items: BTreeMap<String, u64>,
    changes: BTreeMap<u64, (String, String)>,
    contributions: BTreeMap<(String, String), Contribution>,
    aggregates: BTreeMap<u32, GlobalAggregate>,
    enrolments: BTreeMap<String, Enrolment>,
    floors: BTreeMap<String, u32>,
}

impl MemState {
    fn record_change(&mut self, device: &str, pattern: &str) {
        let seq = self.meta(Meta::ChangeSeq).unwrap_or(0) + 1;
        self.meta.insert(Meta::ChangeSeq.key(), seq);
        self.changes
            .insert(seq, (device.to_string(), pattern.to_string()));
    }
}

impl ReadTxn for MemState {
    fn enrolment(&self, device: &str) -> StoreResult<Option<Enrolment>> {
        Ok(self.enrolments.get(device).cloned())
    }
    fn device(&self, id: &str) -> StoreResult<Option<DeviceRecord>> {
        Ok(self.devices.get(id).cloned())
    }
    fn pattern(&self, device: &str, pattern: &str) -> StoreResult<Option<StoredPattern>> {
        Ok(self
            .patterns
            .get(&(device.to_string(), pattern.to_string()))
            .cloned())
    }
    fn device_patterns(&self, device: &str) -> StoreResult<Vec<(String, StoredPattern)>> {
        Ok(self
            .patterns
            .range((device.to_string(), String::new())..)
            .take_while(|((d, _), _)| d == device)
            .map(|((_, p), s)| (p.clone(), s.clone()))
            .collect())
    }
    fn revision_floor(&self, device: &str) -> StoreResult<u32> {
        Ok(self.floors.get(device).copied().unwrap_or(0))
    }
    fn meta(&self, key: Meta) -> StoreResult<u64> {
        Ok(self.meta.get(key.key()).copied().unwrap_or(0))
    }
    fn log_after(
        &self,
        after: u64,
        visit: &mut dyn FnMut(u64, GlobalChange) -> StoreResult<bool>,
    ) -> StoreResult<()> {
        for (v, c) in self.log.range(after.saturating_add(1)..) {
            if !visit(*v, c.clone())? {
                break;
            }
        }
        Ok(())
    }
    fn device_changes_after(&self, after: u64, limit: usize) -> StoreResult<Vec<DeviceChange>> {
        Ok(self
            .changes
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(s, (d, p))| DeviceChange {
                seq: *s,
                device: d.clone(),
                pattern: p.clone(),
            })
            .collect())
    }
    fn contribution(&self, device: &str, pattern: &str) -> StoreResult<Option<Contribution>> {
        Ok(self
            .contributions
            .get(&(device.to_string(), pattern.to_string()))
            .cloned())
    }
    fn device_contributions(&self, device: &str) -> StoreResult<Vec<(String, Contribution)>> {
        Ok(self
            .contributions
            .range((device.to_string(), String::new())..)
            .take_while(|((d, _), _)| d == device)
            .map(|((_, p), c)| (p.clone(), c.clone()))
            .collect())
    }
    fn aggregate(&self, id: u32) -> StoreResult<Option<GlobalAggregate>> {
        Ok(self.aggregates.get(&id).cloned())
    }
    fn aggregates(&self) -> StoreResult<Vec<(u32, GlobalAggregate)>> {
        Ok(self
            .aggregates
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect())
    }
    fn device_count(&self) -> StoreResult<u64> {
        Ok(self.devices.len() as u64)
    }
}

impl WriteTxn for MemState {
    fn put_enrolment(&mut self, device: &str, e: &Enrolment) -> StoreResult<()> {
        self.enrolments.insert(device.to_string(), e.clone());
        Ok(())
    }
    fn put_device(&mut self, id: &str, rec: &DeviceRecord) -> StoreResult<()> {
        self.devices.insert(id.to_string(), rec.clone());
        Ok(())
    }
    fn put_pattern(&mut self, device: &str, pattern: &str, p: &StoredPattern) -> StoreResult<()> {
        self.patterns
            .insert((device.to_string(), pattern.to_string()), p.clone());
        self.record_change(device, pattern);
        Ok(())
    }
    fn remove_pattern(&mut self, device: &str, pattern: &str) -> StoreResult<()> {
        if let Some(old) = self
            .patterns
            .remove(&(device.to_string(), pattern.to_string()))
        {
            let f = self.floors.entry(device.to_string()).or_insert(0);
            *f = (*f).max(old.revision);
        }
        self.record_change(device, pattern);
        Ok(())
    }
    fn set_meta(&mut self, key: Meta, value: u64) -> StoreResult<()> {
        self.meta.insert(key.key(), value);
        Ok(())
    }
    fn publish(&mut self, change: &GlobalChange) -> StoreResult<u64> {
        let v = self.meta(Meta::GlobalVersion)? + 1;
        let key = change.item_key();
        if let Some(old) = self.items.insert(key, v) {
            self.log.remove(&old);
        }
        self.log.insert(v, change.clone());
        self.meta.insert(Meta::GlobalVersion.key(), v);
        Ok(v)
    }
    fn drop_tombstone(&mut self, version: u64, item: &str) -> StoreResult<()> {
        self.log.remove(&version);
        self.items.remove(item);
        Ok(())
    }
    fn put_contribution(
        &mut self,
        device: &str,
        pattern: &str,
        c: Option<&Contribution>,
    ) -> StoreResult<()> {
        let k = (device.to_string(), pattern.to_string());
        match c {
            Some(c) => self.contributions.insert(k, c.clone()),
            None => self.contributions.remove(&k),
        };
        Ok(())
    }
    fn drop_device_changes(&mut self, upto: u64) -> StoreResult<()> {
        self.changes = self.changes.split_off(&upto.saturating_add(1));
        Ok(())
    }
    fn put_aggregate(&mut self, id: u32, a: Option<&GlobalAggregate>) -> StoreResult<()> {
        match a {
            Some(a) => self.aggregates.insert(id, a.clone()),
            None => self.aggregates.remove(&id),
        };
        Ok(())
    }
}

/// The in-memory [`Store`]: each work item runs alone, atomically.
#[derive(Default)]
pub struct MemStore {
    state: Mutex<MemState>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemStore {
    fn submit(&self, work: Work) -> StoreResult<()> {
        let mut guard = self.state.lock().map_err(|_| StoreError::Closed)?;
        let mut scratch = guard.clone();
        let (finish, status) = work(&mut scratch);
        if status.is_ok() {
            *guard = scratch;
        }
        drop(guard);
        finish(status);
        Ok(())
    }
    fn read(&self, f: &mut dyn FnMut(&dyn ReadTxn) -> StoreResult<()>) -> StoreResult<()> {
        let guard = self.state.lock().map_err(|_| StoreError::Closed)?;
        f(&*guard)
    }
    /// Memory.
    fn local_reads(&self) -> bool {
        true
    }

    fn queue_depth(&self) -> usize {
        0
    }
}
