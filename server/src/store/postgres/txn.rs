//! One transaction on a connection (`PgTxn`), and rows to records.

use super::*;

/// One transaction: a read snapshot (`REPEATABLE READ READ ONLY`) or a write
/// transaction (`READ COMMITTED` with a row lock per device it touches).
/// With several databases it is one transaction on each database it
/// touches, begun on first use: a device's rows are on its own database
/// ([`shard::database_of`]), the global tables on database 0.
pub(super) struct PgTxn<'s> {
    pub(super) shared: &'s Shared,
    /// One connection per database, taken on first use.
    pub(super) conns: RefCell<Vec<Option<Conn>>>,
    pub(super) write: bool,
    pub(super) locked: RefCell<HashSet<String>>,
    pub(super) fenced: Cell<bool>,
}

impl<'s> PgTxn<'s> {
    pub(super) fn new(shared: &'s Shared, write: bool) -> Self {
        PgTxn {
            shared,
            conns: RefCell::new(vec![None; shared.urls.len()]),
            write,
            locked: RefCell::new(HashSet::new()),
            fenced: Cell::new(false),
        }
    }

    /// The database that holds `device`'s rows.
    pub(super) fn db_of(&self, device: &str) -> usize {
        shard::database_of(device, self.shared.urls.len())
    }

    /// Checks, once per transaction and holding the row until commit, that
    /// `meta.leader_term` is still this node's term (see the module docs).
    pub(super) fn fence(&self) -> StoreResult<()> {
        if self.fenced.get() {
            return Ok(());
        }
        let mine = *self.shared.term.lock().map_err(|_| StoreError::Closed)?;
        let rows = self.rows(None, |s| &s.leader_term, Vec::new())?;
        let stored = match rows.first() {
            Some(r) => Some(get::<i64>(r, 0, "meta leader_term")? as u64),
            None => None,
        };
        if mine.is_none() || stored != mine {
            return Err(StoreError::Backend(
                "not the aggregation leader (another node took over)".into(),
            ));
        }
        self.fenced.set(true);
        Ok(())
    }

    /// Commits (`true`) or rolls back, and returns the connections. With
    /// several databases, database 0 (the global tables, the leader's
    /// fence) commits first, then the others in order; when one commit
    /// fails, the databases not yet committed are rolled back. Each
    /// device's rows are on one database, so each device's writes commit
    /// or roll back as one (a batch of several devices may commit in part:
    /// the works of it are then told it failed, and a retried sync replays
    /// what was stored).
    pub(super) fn end(self, commit: bool) -> StoreResult<()> {
        let conns = std::mem::take(&mut *self.conns.borrow_mut());
        let mut outcome = Ok(());
        for (db, conn) in conns.into_iter().enumerate() {
            let Some(conn) = conn else { continue };
            let commit_this = commit && outcome.is_ok();
            let client = conn.client.clone();
            let sql = if commit_this { "COMMIT" } else { "ROLLBACK" };
            let r = self
                .shared
                .bridge
                .run(async move { client.batch_execute(sql).await })
                .and_then(|r| r.map_err(pg_err));
            if r.is_ok() || !commit_this {
                self.shared.give_back(db, conn);
            }
            if commit_this {
                outcome = r;
            }
        }
        outcome
    }

    /// Runs `stmt` with `params` on the database of `device` (database 0
    /// without one). Sent in one pipeline with it, when needed: the `BEGIN`
    /// of the transaction there, and (writes) the lock of `device`'s row,
    /// whose row is returned first.
    pub(super) fn query(
        &self,
        device: Option<&str>,
        stmt: Option<fn(&Stmts) -> &Statement>,
        params: Vec<Param>,
    ) -> StoreResult<(Option<Row>, Vec<Row>)> {
        let db = device.map_or(0, |d| self.db_of(d));
        self.query_at(db, device, stmt, params)
    }

    /// [`query`](Self::query) on database `db`, locking `device`'s row
    /// there (writes) unless this transaction already holds it.
    pub(super) fn query_at(
        &self,
        db: usize,
        device: Option<&str>,
        stmt: Option<fn(&Stmts) -> &Statement>,
        params: Vec<Param>,
    ) -> StoreResult<(Option<Row>, Vec<Row>)> {
        let (conn, begun) = {
            let mut conns = self.conns.borrow_mut();
            let slot = conns
                .get_mut(db)
                .ok_or(StoreError::Corrupt("database index"))?;
            match slot {
                Some(c) => (c.clone(), true),
                None => {
                    let c = self.shared.take(db)?;
                    *slot = Some(c.clone());
                    (c, false)
                }
            }
        };
        let begin = (!begun).then_some(if self.write {
            "BEGIN ISOLATION LEVEL READ COMMITTED"
        } else {
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
        });
        let lock = match device {
            Some(d) if self.write && !self.locked.borrow().contains(d) => Some(d.to_string()),
            _ => None,
        };
        let fut = async move {
            let c = &conn.client;
            let refs: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|b| &**b as &(dyn ToSql + Sync)).collect();
            let b = async {
                match begin {
                    Some(sql) => c.batch_execute(sql).await,
                    None => Ok(()),
                }
            };
            let l = async {
                match &lock {
                    Some(d) => {
                        let (i, s) = join(
                            c.execute(&conn.st.lock_insert, &[d]),
                            c.query_opt(&conn.st.lock_select, &[d]),
                        )
                        .await;
                        i?;
                        s
                    }
                    None => Ok(None),
                }
            };
            let q = async {
                match stmt {
                    Some(s) => c.query(s(&conn.st), &refs).await,
                    None => Ok(Vec::new()),
                }
            };
            let (b, l, q) = join3(b, l, q).await;
            b?;
            let l = l?;
            Ok::<_, tokio_postgres::Error>((lock, l, q?))
        };
        let (lock, row, rows) = self.shared.bridge.run(fut)?.map_err(pg_err)?;
        if let Some(d) = lock {
            self.locked.borrow_mut().insert(d);
        }
        Ok((row, rows))
    }

    /// Rows of `stmt` on database `db`, without a device lock.
    pub(super) fn rows_at(
        &self,
        db: usize,
        stmt: fn(&Stmts) -> &Statement,
        params: Vec<Param>,
    ) -> StoreResult<Vec<Row>> {
        Ok(self.query_at(db, None, Some(stmt), params)?.1)
    }

    pub(super) fn rows(
        &self,
        device: Option<&str>,
        stmt: fn(&Stmts) -> &Statement,
        params: Vec<Param>,
    ) -> StoreResult<Vec<Row>> {
        Ok(self.query(device, Some(stmt), params)?.1)
    }

    pub(super) fn exec(
        &self,
        device: Option<&str>,
        stmt: fn(&Stmts) -> &Statement,
        params: Vec<Param>,
    ) -> StoreResult<()> {
        self.query(device, Some(stmt), params).map(|_| ())
    }
}

pub(super) fn get<'r, T: tokio_postgres::types::FromSql<'r>>(
    row: &'r Row,
    i: usize,
    what: &'static str,
) -> StoreResult<T> {
    row.try_get(i).map_err(|_| StoreError::Corrupt(what))
}

pub(super) fn device_record(row: &Row) -> StoreResult<Option<DeviceRecord>> {
    let Some(last_seq) = get::<Option<i64>>(row, 0, "device")? else {
        return Ok(None);
    };
    let sha: Vec<u8> = get::<Option<Vec<u8>>>(row, 1, "device")?.unwrap_or_default();
    let body_sha256: [u8; 32] = sha.try_into().map_err(|_| StoreError::Corrupt("device"))?;
    Ok(Some(DeviceRecord {
        last_seq: last_seq as u64,
        body_sha256,
        response: get::<Option<Vec<u8>>>(row, 2, "device")?.unwrap_or_default(),
        snapshot_horizon: get::<Option<i64>>(row, 3, "device")?.map(|h| h as u64),
        syncs: get::<i64>(row, 4, "device")? as u64,
    }))
}

/// A pattern row from column `at` on (the [`PATTERN_COLS`] order).
pub(super) fn pattern_row(row: &Row, at: usize) -> StoreResult<StoredPattern> {
    let w = "pattern";
    let codes: &[u8] = get(row, at + 5, w)?;
    Ok(StoredPattern {
        revision: u32::try_from(get::<i64>(row, at, w)?).map_err(|_| StoreError::Corrupt(w))?,
        codebook: u32::try_from(get::<i64>(row, at + 1, w)?).map_err(|_| StoreError::Corrupt(w))?,
        success_rate: get(row, at + 2, w)?,
        sample_count: u32::try_from(get::<i64>(row, at + 3, w)?)
            .map_err(|_| StoreError::Corrupt(w))?,
        category: get(row, at + 4, w)?,
        codes: decode_codes(codes)?,
    })
}

/// Codes as stored: each `i16` zigzag-mapped and written as a LEB128
/// varint (most codes are small: one byte each instead of two).
pub fn encode_codes(codes: &Codes) -> Vec<u8> {
    let mut out = Vec::with_capacity(DIM + DIM / 4);
    for &c in codes.iter() {
        let mut z = ((c << 1) ^ (c >> 15)) as u16;
        loop {
            let b = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
    }
    out
}

/// Reads what [`encode_codes`] wrote.
pub fn decode_codes(b: &[u8]) -> StoreResult<Box<Codes>> {
    let bad = || StoreError::Corrupt("pattern codes");
    let mut codes: Box<Codes> = Box::new([0; DIM]);
    let mut it = b.iter();
    for c in codes.iter_mut() {
        let mut z: u32 = 0;
        let mut shift = 0;
        loop {
            let &byte = it.next().ok_or_else(bad)?;
            z |= u32::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 14 {
                return Err(bad());
            }
        }
        let z = u16::try_from(z).map_err(|_| bad())?;
        *c = ((z >> 1) as i16) ^ -((z & 1) as i16);
    }
    if it.next().is_some() {
        return Err(bad());
    }
    Ok(codes)
}

pub(super) fn i(v: u64) -> i64 {
    v as i64
}
