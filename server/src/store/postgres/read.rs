//! `ReadTxn` on PostgreSQL.

use super::*;

impl ReadTxn for PgTxn<'_> {
    fn device(&self, id: &str) -> StoreResult<Option<DeviceRecord>> {
        if self.write && !self.locked.borrow().contains(id) {
            let (row, _) = self.query(Some(id), None, Vec::new())?;
            return row
                .as_ref()
                .map(device_record)
                .transpose()
                .map(Option::flatten);
        }
        let rows = self.rows(None, |s| &s.device, vec![p(id.to_string())])?;
        rows.first()
            .map(device_record)
            .transpose()
            .map(Option::flatten)
    }

    fn pattern(&self, device: &str, pattern: &str) -> StoreResult<Option<StoredPattern>> {
        let rows = self.rows(
            Some(device),
            |s| &s.pattern,
            vec![p(device.to_string()), p(pattern.to_string())],
        )?;
        rows.first().map(|r| pattern_row(r, 0)).transpose()
    }

    fn device_patterns(&self, device: &str) -> StoreResult<Vec<(String, StoredPattern)>> {
        let rows = self.rows(
            Some(device),
            |s| &s.device_patterns,
            vec![p(device.to_string())],
        )?;
        rows.iter()
            .map(|r| Ok((get::<String>(r, 0, "pattern")?, pattern_row(r, 1)?)))
            .collect()
    }

    fn revision_floor(&self, device: &str) -> StoreResult<u32> {
        let rows = self.rows(
            Some(device),
            |s| &s.revision_floor,
            vec![p(device.to_string())],
        )?;
        match rows.first() {
            Some(r) => u32::try_from(get::<i64>(r, 0, "revision floor")?)
                .map_err(|_| StoreError::Corrupt("revision floor")),
            None => Ok(0),
        }
    }

    fn meta(&self, key: Meta) -> StoreResult<u64> {
        let rows = self.rows(None, |s| &s.meta, vec![p(key.key())])?;
        Ok(match rows.first() {
            Some(r) => get::<i64>(r, 0, "meta")? as u64,
            None => 0,
        })
    }

    fn log_after(
        &self,
        after: u64,
        visit: &mut dyn FnMut(u64, GlobalChange) -> StoreResult<bool>,
    ) -> StoreResult<()> {
        const CHUNK: i64 = 256;
        let mut from = after;
        loop {
            let rows = self.rows(None, |s| &s.log_after, vec![p(i(from)), p(CHUNK)])?;
            for r in &rows {
                let v = get::<i64>(r, 0, "changelog entry")? as u64;
                let c = GlobalChange::from_bytes(get(r, 1, "changelog entry")?)?;
                if !visit(v, c)? {
                    return Ok(());
                }
                from = v;
            }
            if (rows.len() as i64) < CHUNK {
                return Ok(());
            }
        }
    }

    fn device_changes_after(&self, _after: u64, limit: usize) -> StoreResult<Vec<DeviceChange>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.rows(None, |s| &s.changes, vec![p(limit)])?;
        let mut out = Vec::with_capacity(rows.len());
        let mut seqs = Vec::with_capacity(rows.len());
        for r in &rows {
            let seq: i64 = get(r, 0, "device change")?;
            seqs.push(seq);
            out.push(DeviceChange {
                seq: seq as u64,
                device: get(r, 1, "device change")?,
                pattern: get(r, 2, "device change")?,
            });
        }
        *self
            .shared
            .consumed
            .lock()
            .map_err(|_| StoreError::Closed)? = seqs;
        Ok(out)
    }

    fn contribution(&self, device: &str, pattern: &str) -> StoreResult<Option<Contribution>> {
        let rows = self.rows(
            None,
            |s| &s.contribution,
            vec![p(device.to_string()), p(pattern.to_string())],
        )?;
        rows.first()
            .map(|r| Contribution::from_bytes(get(r, 0, "contribution")?))
            .transpose()
    }

    fn device_contributions(&self, device: &str) -> StoreResult<Vec<(String, Contribution)>> {
        let rows = self.rows(
            None,
            |s| &s.device_contributions,
            vec![p(device.to_string())],
        )?;
        rows.iter()
            .map(|r| {
                Ok((
                    get::<String>(r, 0, "contribution")?,
                    Contribution::from_bytes(get(r, 1, "contribution")?)?,
                ))
            })
            .collect()
    }

    fn aggregate(&self, id: u32) -> StoreResult<Option<GlobalAggregate>> {
        let rows = self.rows(None, |s| &s.aggregate, vec![p(i64::from(id))])?;
        rows.first()
            .map(|r| {
                postcard::from_bytes(get(r, 0, "aggregate")?)
                    .map_err(|_| StoreError::Corrupt("aggregate"))
            })
            .transpose()
    }

    fn aggregates(&self) -> StoreResult<Vec<(u32, GlobalAggregate)>> {
        let rows = self.rows(None, |s| &s.aggregates, Vec::new())?;
        rows.iter()
            .map(|r| {
                let id = u32::try_from(get::<i64>(r, 0, "aggregate")?)
                    .map_err(|_| StoreError::Corrupt("aggregate"))?;
                let a = postcard::from_bytes(get(r, 1, "aggregate")?)
                    .map_err(|_| StoreError::Corrupt("aggregate"))?;
                Ok((id, a))
            })
            .collect()
    }

    fn device_count(&self) -> StoreResult<u64> {
        let rows = self.rows(None, |s| &s.device_count, Vec::new())?;
        Ok(match rows.first() {
            Some(r) => get::<i64>(r, 0, "device count")? as u64,
            None => 0,
        })
    }

    fn enrolment(&self, device: &str) -> StoreResult<Option<Enrolment>> {
        let rows = self.rows(Some(device), |s| &s.enrolment, vec![p(device.to_string())])?;
        rows.first()
            .map(|r| {
                let w = "enrolment";
                Ok(Enrolment {
                    generation: u32::try_from(get::<i64>(r, 0, w)?)
                        .map_err(|_| StoreError::Corrupt(w))?,
                    enrolled_at: get::<i64>(r, 1, w)? as u64,
                    revoked: get(r, 2, w)?,
                    last_counter: get::<i64>(r, 3, w)? as u64,
                })
            })
            .transpose()
    }
}
