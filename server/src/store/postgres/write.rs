//! `WriteTxn` on PostgreSQL (aggregation writes fenced by the leader term).

use super::*;

impl WriteTxn for PgTxn<'_> {
    fn put_enrolment(&mut self, device: &str, e: &Enrolment) -> StoreResult<()> {
        self.exec(
            Some(device),
            |s| &s.put_enrolment,
            vec![
                p(device.to_string()),
                p(i64::from(e.generation)),
                p(i(e.enrolled_at)),
                p(e.revoked),
                p(i(e.last_counter)),
            ],
        )
    }

    fn put_device(&mut self, id: &str, rec: &DeviceRecord) -> StoreResult<()> {
        self.exec(
            Some(id),
            |s| &s.put_device,
            vec![
                p(id.to_string()),
                p(i(rec.last_seq)),
                p(rec.body_sha256.to_vec()),
                p(rec.response.clone()),
                p(rec.snapshot_horizon.map(i)),
                p(i(rec.syncs)),
            ],
        )
    }

    fn put_pattern(&mut self, device: &str, pattern: &str, s: &StoredPattern) -> StoreResult<()> {
        self.exec(
            Some(device),
            |st| &st.put_pattern,
            vec![
                p(device.to_string()),
                p(pattern.to_string()),
                p(i64::from(s.revision)),
                p(i64::from(s.codebook)),
                p(s.success_rate),
                p(i64::from(s.sample_count)),
                p(s.category.clone()),
                p(encode_codes(&s.codes)),
            ],
        )
    }

    fn remove_pattern(&mut self, device: &str, pattern: &str) -> StoreResult<()> {
        self.exec(
            Some(device),
            |s| &s.remove_pattern,
            vec![p(device.to_string()), p(pattern.to_string())],
        )
    }

    fn set_meta(&mut self, key: Meta, value: u64) -> StoreResult<()> {
        self.fence()?;
        self.exec(None, |s| &s.set_meta, vec![p(key.key()), p(i(value))])
    }

    fn publish(&mut self, change: &GlobalChange) -> StoreResult<u64> {
        self.fence()?;
        let rows = self.rows(
            None,
            |s| &s.publish,
            vec![
                p(change.item_key()),
                p(change.is_tombstone()),
                p(change.to_bytes()),
            ],
        )?;
        match rows.first() {
            Some(r) => Ok(get::<i64>(r, 0, "changelog entry")? as u64),
            None => Err(StoreError::Corrupt("meta global_version")),
        }
    }

    fn drop_tombstone(&mut self, version: u64, _item: &str) -> StoreResult<()> {
        // The row is the item's key too (`item_key` is its primary key).
        self.fence()?;
        self.exec(None, |s| &s.drop_tombstone, vec![p(i(version))])
    }

    /// One statement instead of the default's scan: every tombstone below
    /// the horizon, then the horizon.
    fn prune_tombstones(&mut self, horizon: u64) -> StoreResult<()> {
        self.fence()?;
        self.exec(None, |s| &s.prune, vec![p(i(horizon))])?;
        self.exec(None, |s| &s.raise_horizon, vec![p(i(horizon))])
    }

    fn put_contribution(
        &mut self,
        device: &str,
        pattern: &str,
        c: Option<&Contribution>,
    ) -> StoreResult<()> {
        self.fence()?;
        match c {
            Some(c) => self.exec(
                None,
                |s| &s.put_contribution,
                vec![
                    p(device.to_string()),
                    p(pattern.to_string()),
                    p(c.to_bytes()?),
                ],
            ),
            None => self.exec(
                None,
                |s| &s.del_contribution,
                vec![p(device.to_string()), p(pattern.to_string())],
            ),
        }
    }

    fn put_aggregate(&mut self, id: u32, a: Option<&GlobalAggregate>) -> StoreResult<()> {
        self.fence()?;
        match a {
            Some(a) => {
                let bytes =
                    postcard::to_stdvec(a).map_err(|e| StoreError::Backend(e.to_string()))?;
                self.exec(None, |s| &s.put_aggregate, vec![p(i64::from(id)), p(bytes)])
            }
            None => self.exec(None, |s| &s.del_aggregate, vec![p(i64::from(id))]),
        }
    }

    fn drop_device_changes(&mut self, upto: u64) -> StoreResult<()> {
        self.fence()?;
        let done: Vec<(u64, usize, i64)> = {
            let mut consumed = self
                .shared
                .consumed
                .lock()
                .map_err(|_| StoreError::Closed)?;
            let (done, keep) = consumed.iter().partition(|&&(r, _, _)| r <= upto);
            *consumed = keep;
            done
        };
        // Database 0 first, in this transaction's order of commit.
        for db in 0..self.shared.urls.len() {
            let seqs: Vec<i64> = done
                .iter()
                .filter(|&&(_, d, _)| d == db)
                .map(|&(_, _, s)| s)
                .collect();
            if !seqs.is_empty() {
                self.query_at(db, None, Some(|s| &s.drop_changes), vec![p(seqs)])?;
            }
        }
        Ok(())
    }
}
