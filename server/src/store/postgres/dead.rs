//! A transaction that could not begin: every call returns its error.

use super::*;

/// A transaction whose every call fails with the same error.
pub(super) struct DeadTxn(pub(super) StoreError);

impl ReadTxn for DeadTxn {
    fn device(&self, _: &str) -> StoreResult<Option<DeviceRecord>> {
        Err(self.0.clone())
    }
    fn pattern(&self, _: &str, _: &str) -> StoreResult<Option<StoredPattern>> {
        Err(self.0.clone())
    }
    fn device_patterns(&self, _: &str) -> StoreResult<Vec<(String, StoredPattern)>> {
        Err(self.0.clone())
    }
    fn revision_floor(&self, _: &str) -> StoreResult<u32> {
        Err(self.0.clone())
    }
    fn meta(&self, _: Meta) -> StoreResult<u64> {
        Err(self.0.clone())
    }
    fn log_after(
        &self,
        _: u64,
        _: &mut dyn FnMut(u64, GlobalChange) -> StoreResult<bool>,
    ) -> StoreResult<()> {
        Err(self.0.clone())
    }
    fn device_changes_after(&self, _: u64, _: usize) -> StoreResult<Vec<DeviceChange>> {
        Err(self.0.clone())
    }
    fn contribution(&self, _: &str, _: &str) -> StoreResult<Option<Contribution>> {
        Err(self.0.clone())
    }
    fn device_contributions(&self, _: &str) -> StoreResult<Vec<(String, Contribution)>> {
        Err(self.0.clone())
    }
    fn aggregate(&self, _: u32) -> StoreResult<Option<GlobalAggregate>> {
        Err(self.0.clone())
    }
    fn aggregates(&self) -> StoreResult<Vec<(u32, GlobalAggregate)>> {
        Err(self.0.clone())
    }
    fn device_count(&self) -> StoreResult<u64> {
        Err(self.0.clone())
    }
    fn enrolment(&self, _: &str) -> StoreResult<Option<Enrolment>> {
        Err(self.0.clone())
    }
}

impl WriteTxn for DeadTxn {
    fn put_enrolment(&mut self, _: &str, _: &Enrolment) -> StoreResult<()> {
        Err(self.0.clone())
    }
    fn put_device(&mut self, _: &str, _: &DeviceRecord) -> StoreResult<()> {
        Err(self.0.clone())
    }
    fn put_pattern(&mut self, _: &str, _: &str, _: &StoredPattern) -> StoreResult<()> {
        Err(self.0.clone())
    }
    fn remove_pattern(&mut self, _: &str, _: &str) -> StoreResult<()> {
        Err(self.0.clone())
    }
    fn set_meta(&mut self, _: Meta, _: u64) -> StoreResult<()> {
        Err(self.0.clone())
    }
    fn publish(&mut self, _: &GlobalChange) -> StoreResult<u64> {
        Err(self.0.clone())
    }
    fn drop_tombstone(&mut self, _: u64, _: &str) -> StoreResult<()> {
        Err(self.0.clone())
    }
    fn prune_tombstones(&mut self, _: u64) -> StoreResult<()> {
        Err(self.0.clone())
    }
    fn put_contribution(&mut self, _: &str, _: &str, _: Option<&Contribution>) -> StoreResult<()> {
        Err(self.0.clone())
    }
    fn put_aggregate(&mut self, _: u32, _: Option<&GlobalAggregate>) -> StoreResult<()> {
        Err(self.0.clone())
    }
    fn drop_device_changes(&mut self, _: u64) -> StoreResult<()> {
        Err(self.0.clone())
    }
}
