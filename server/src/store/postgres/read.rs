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
        let rows = self.rows_at(self.db_of(id), |s| &s.device, vec![p(id.to_string())])?;
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

    /// The oldest rows present on each database, up to `limit` in all
    /// (taken from the databases in turn, so none is starved). With one
    /// database each change reports its own `seq`; with several, its place
    /// in this answer (1, 2, ...), which [`WriteTxn::drop_device_changes`]
    /// maps back.
    fn device_changes_after(&self, _after: u64, limit: usize) -> StoreResult<Vec<DeviceChange>> {
        let dbs = self.shared.urls.len();
        let lim = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut per_db: Vec<VecDeque<(i64, String, String)>> = Vec::with_capacity(dbs);
        for db in 0..dbs {
            let rows = self.rows_at(db, |s| &s.changes, vec![p(lim)])?;
            let mut q = VecDeque::with_capacity(rows.len());
            for r in &rows {
                q.push_back((
                    get::<i64>(r, 0, "device change")?,
                    get::<String>(r, 1, "device change")?,
                    get::<String>(r, 2, "device change")?,
                ));
            }
            per_db.push(q);
        }
        let mut out = Vec::new();
        let mut consumed = Vec::new();
        'fill: while out.len() < limit {
            let mut any = false;
            for (db, q) in per_db.iter_mut().enumerate() {
                if out.len() >= limit {
                    break 'fill;
                }
                let Some((seq, device, pattern)) = q.pop_front() else {
                    continue;
                };
                any = true;
                let reported = if dbs == 1 {
                    seq as u64
                } else {
                    out.len() as u64 + 1
                };
                consumed.push((reported, db, seq));
                out.push(DeviceChange {
                    seq: reported,
                    device,
                    pattern,
                });
            }
            if !any {
                break;
            }
        }
        *self
            .shared
            .consumed
            .lock()
            .map_err(|_| StoreError::Closed)? = consumed;
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
        let mut n = 0;
        for db in 0..self.shared.urls.len() {
            let rows = self.rows_at(db, |s| &s.device_count, Vec::new())?;
            if let Some(r) = rows.first() {
                n += get::<i64>(r, 0, "device count")? as u64;
            }
        }
        Ok(n)
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
