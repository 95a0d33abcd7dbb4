//! The sync journal: a group's writes made durable as one small record
//! instead of a redb commit, and folded into the database in rare, large
//! commits.
//!
//! A redb commit writes every page the group dirtied where it lives in the
//! file (~30 `pwrite` calls for a group of syncs with one changed pattern
//! each) and `fdatasync`s the file. In journal mode the writer instead keeps
//! one write transaction open across groups. A group's works run in it, and
//! every row they write is recorded as an [`Op`] (table, key, value: a
//! stored pattern ~0.8 KB, the device's record, its change block). The ops
//! go to `<db>.journal` as one checksummed record, written with one `pwrite`
//! and made durable with one `fdatasync`. Only then are the group's callers
//! answered. The open transaction is committed, a *fold*, when it is
//! [`RedbOptions::fold_every`](super::RedbOptions::fold_every) old, when the
//! journal holds [`RedbOptions::fold_bytes`](super::RedbOptions::fold_bytes),
//! when the store closes, and at once for a group that wrote a table the
//! journal does not carry (aggregation's contributions, aggregates and
//! changelog: rare, large groups whose commit is the journal's fold). A
//! fold commits, with the rows, the next epoch (`journal_epoch + 1`) and a
//! new random 64-bit `journal_salt`. Later records carry the new salt and
//! start again at offset 0.
//!
//! Record: `magic "OTJ1" | salt u64 | body length u32 | crc32 u32 | body`,
//! zero-padded to the next multiple of [`ALIGN`] (little-endian; the CRC
//! covers salt, length and body; the body is the group's ops, each a tag
//! byte and its fields: strings and bytes as `u32` length and data,
//! integers little-endian).
//! On open, the records from offset 0 that carry the database's salt, up to
//! the first torn, flipped, short or other-salt one, are the groups
//! acknowledged since the last fold. They are written again in order and
//! folded (with a new salt, as at every open) before the store serves. A
//! record with another salt is already in the file, or belongs to no
//! database: the fold that made it stale committed a new salt. The salt is
//! random, not a count, so that bytes a device uploaded (its codes are
//! stored verbatim in a record body, which may be left in the file after a
//! fold) can never form a record a replay accepts, nor can a journal left
//! beside another database file. Each record starts on its own 4 KiB
//! block, so writing the next one never rewrites a block that holds an
//! acknowledged record.
//!
//! Readers see the acknowledged groups before they are folded through the
//! [`Overlay`]: the rows of the journaled tables (devices, patterns,
//! revision floors, enrolments, `meta`, the aggregation queue's blocks),
//! one generation per journal epoch, dropped once its fold committed. A
//! reader sees the snapshot its read transaction began on plus every
//! journaled row of that epoch acknowledged until it reads it: the tables
//! the journal does not carry are the snapshot's (a group that writes them
//! ends the epoch), the journaled rows at least that new. Only durable rows
//! are ever seen.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::store::{StoreError, StoreResult};

/// One row written by a journaled group.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Op {
    /// `devices[id] = bytes`; `new`: the id had no row before (counted by
    /// [`ReadTxn::device_count`](crate::store::ReadTxn::device_count)).
    Device(String, Vec<u8>, bool),
    /// `patterns[(device, pattern)] = bytes`, or removed.
    Pattern(String, String, Option<Vec<u8>>),
    /// `revision_floors[device] = floor`.
    Floor(String, u32),
    /// `auth_devices[device] = bytes` (the request counter moves every sync).
    Enrolment(String, Vec<u8>),
    /// `meta[key] = value`.
    Meta(String, u64),
    /// `device_change_blocks[first] = block`.
    Block(u64, Vec<u8>),
}

/// The journal file's name beside the database: `<db>.journal`.
pub fn journal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".journal");
    PathBuf::from(s)
}

const MAGIC: [u8; 4] = *b"OTJ1";
const HEADER: usize = 20;
/// Every record starts at a multiple of this (module docs).
pub(super) const ALIGN: usize = 4096;

fn crc(salt: u64, len: u32, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&salt.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// A new random salt (never 0).
pub(super) fn new_salt() -> StoreResult<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| StoreError::Backend(e.to_string()))?;
    Ok(u64::from_le_bytes(b).max(1))
}

/// Appends `b` with its `u32` length.
fn put(out: &mut Vec<u8>, b: &[u8]) -> StoreResult<()> {
    let n = u32::try_from(b.len()).map_err(|_| StoreError::Backend("row too large".into()))?;
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(b);
    Ok(())
}

/// Appends the body of a record: per op a tag byte, then its fields;
/// strings and bytes as `u32` length and data, integers little-endian.
fn encode(ops: &[Op], out: &mut Vec<u8>) -> StoreResult<()> {
    for op in ops {
        match op {
            Op::Device(id, v, new) => {
                out.push(1);
                put(out, id.as_bytes())?;
                put(out, v)?;
                out.push(u8::from(*new));
            }
            Op::Pattern(d, p, v) => {
                out.push(if v.is_some() { 2 } else { 3 });
                put(out, d.as_bytes())?;
                put(out, p.as_bytes())?;
                if let Some(v) = v {
                    put(out, v)?;
                }
            }
            Op::Floor(d, f) => {
                out.push(4);
                put(out, d.as_bytes())?;
                out.extend_from_slice(&f.to_le_bytes());
            }
            Op::Enrolment(d, v) => {
                out.push(5);
                put(out, d.as_bytes())?;
                put(out, v)?;
            }
            Op::Meta(k, v) => {
                out.push(6);
                put(out, k.as_bytes())?;
                out.extend_from_slice(&v.to_le_bytes());
            }
            Op::Block(first, b) => {
                out.push(7);
                out.extend_from_slice(&first.to_le_bytes());
                put(out, b)?;
            }
        }
    }
    Ok(())
}

/// The ops of a body [`encode`] wrote; `None` when it is not one.
fn decode(mut b: &[u8]) -> Option<Vec<Op>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (x, rest) = b.split_at_checked(n)?;
        *b = rest;
        Some(x)
    }
    fn int<const N: usize>(b: &mut &[u8]) -> Option<[u8; N]> {
        take(b, N)?.try_into().ok()
    }
    fn bytes(b: &mut &[u8]) -> Option<Vec<u8>> {
        let n = u32::from_le_bytes(int(b)?) as usize;
        Some(take(b, n)?.to_vec())
    }
    fn string(b: &mut &[u8]) -> Option<String> {
        String::from_utf8(bytes(b)?).ok()
    }
    let mut ops = Vec::new();
    while let Some((&tag, rest)) = b.split_first() {
        b = rest;
        ops.push(match tag {
            1 => Op::Device(string(&mut b)?, bytes(&mut b)?, int::<1>(&mut b)?[0] != 0),
            2 => Op::Pattern(string(&mut b)?, string(&mut b)?, Some(bytes(&mut b)?)),
            3 => Op::Pattern(string(&mut b)?, string(&mut b)?, None),
            4 => Op::Floor(string(&mut b)?, u32::from_le_bytes(int(&mut b)?)),
            5 => Op::Enrolment(string(&mut b)?, bytes(&mut b)?),
            6 => Op::Meta(string(&mut b)?, u64::from_le_bytes(int(&mut b)?)),
            7 => Op::Block(u64::from_le_bytes(int(&mut b)?), bytes(&mut b)?),
            _ => return None,
        });
    }
    Some(ops)
}

/// One record of `salt`: header, body and padding to [`ALIGN`].
pub(super) fn record(salt: u64, ops: &[Op]) -> StoreResult<Vec<u8>> {
    let mut out = Vec::with_capacity(ALIGN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&salt.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    encode(ops, &mut out)?;
    let body = &out[HEADER..];
    let len =
        u32::try_from(body.len()).map_err(|_| StoreError::Backend("group too large".into()))?;
    let c = crc(salt, len, body);
    out[12..16].copy_from_slice(&len.to_le_bytes());
    out[16..20].copy_from_slice(&c.to_le_bytes());
    out.resize(out.len().next_multiple_of(ALIGN), 0);
    Ok(out)
}

/// The ops of every intact record of `salt` from the start of `bytes`, in
/// order, up to the first record that is not one (module docs).
pub(super) fn parse(bytes: &[u8], salt: u64) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut at = 0usize;
    while let Some(h) = bytes.get(at..).and_then(|b| b.first_chunk::<HEADER>()) {
        let word = |i: usize, n: usize| {
            let mut b = [0u8; 8];
            b[..n].copy_from_slice(&h[i..i + n]);
            u64::from_le_bytes(b)
        };
        let (s, len, c) = (word(4, 8), word(12, 4) as u32, word(16, 4) as u32);
        if h[..4] != MAGIC || s != salt {
            break;
        }
        let start = at + HEADER;
        let Some(body) = start
            .checked_add(len as usize)
            .and_then(|end| bytes.get(start..end))
        else {
            break;
        };
        if crc(s, len, body) != c {
            break;
        }
        match decode(body) {
            Some(group) => ops.extend(group),
            None => break,
        }
        at = (start + body.len()).next_multiple_of(ALIGN);
    }
    ops
}

/// The journal file, owned by the writer thread.
pub(super) struct Journal {
    file: File,
    /// The database's `journal_epoch`: the overlay generation of the
    /// records written now.
    pub(super) epoch: u64,
    /// The database's `journal_salt`, carried by the records written now.
    pub(super) salt: u64,
    /// Bytes of acknowledged records of this epoch (where the next goes).
    pub(super) len: u64,
    /// Ops of those records, to write again into a new transaction when the
    /// open one is abandoned.
    pub(super) window: Vec<Op>,
    /// Tests: the next append writes its record whole and durably, then
    /// fails as if its `fdatasync` had, and leaves it in place (as when
    /// cutting it off failed too).
    #[cfg(test)]
    pub(super) fail_next: Arc<std::sync::atomic::AtomicBool>,
}

impl Journal {
    /// Opens (creating, mode 0600) the journal of the database at `db`.
    /// Folds do not shrink the file: after the first epochs an append
    /// rewrites blocks the file already has, and its `fdatasync` flushes
    /// data only, not a new size.
    pub(super) fn open(db: &Path, epoch: u64, salt: u64) -> io::Result<Self> {
        let mut o = OpenOptions::new();
        o.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        let j = Journal {
            file: o.open(journal_path(db))?,
            epoch,
            salt,
            len: 0,
            window: Vec::new(),
            #[cfg(test)]
            fail_next: Arc::default(),
        };
        // The file's name must survive a power cut with the records in it.
        if let Some(dir) = journal_path(db).parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            File::open(dir)?.sync_all()?;
        }
        Ok(j)
    }

    /// The file's bytes (replay on open).
    pub(super) fn read_all(db: &Path) -> io::Result<Vec<u8>> {
        match std::fs::read(journal_path(db)) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Appends `rec` (a [`record`] of this salt) and makes it durable.
    /// On failure the file is cut back to the acknowledged records (or,
    /// when that fails, the record's header is overwritten with zeros), so
    /// that nothing of `rec` is replayed; the caller then folds, which
    /// retires this salt whatever is left in the file.
    pub(super) fn append(&mut self, rec: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if self
            .fail_next
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            self.file.write_all_at(rec, self.len)?;
            self.file.sync_data()?;
            return Err(io::Error::other(
                "injected: the record is on disk, its append failed",
            ));
        }
        let r = self
            .file
            .write_all_at(rec, self.len)
            .and_then(|()| self.file.sync_data());
        match r {
            Ok(()) => {
                self.len += rec.len() as u64;
                Ok(())
            }
            Err(e) => {
                let cut = self
                    .file
                    .set_len(self.len)
                    .and_then(|()| self.file.sync_data())
                    .or_else(|_| {
                        self.file
                            .write_all_at(&[0u8; HEADER], self.len)
                            .and_then(|()| self.file.sync_data())
                    });
                if let Err(cut) = cut {
                    tracing::error!(error = %cut, "cannot cut a failed record off the journal");
                }
                Err(e)
            }
        }
    }

    /// After a fold committed `epoch` and `salt`: the records written so
    /// far are in the database; the next record starts at offset 0.
    pub(super) fn folded(&mut self, epoch: u64, salt: u64) {
        self.epoch = epoch;
        self.salt = salt;
        self.len = 0;
        self.window.clear();
    }

    /// Empties the file (after the last fold: a clean stop leaves an empty
    /// journal). Best effort: an old salt's records are ignored anyway.
    pub(super) fn clear(&mut self) {
        if self.len == 0 {
            let _ = self.file.set_len(0).and_then(|()| self.file.sync_data());
        }
    }
}

/// The rows of one journal epoch's acknowledged groups, as readers see them.
#[derive(Debug, Default)]
pub(super) struct Rows {
    pub(super) devices: HashMap<String, Vec<u8>>,
    /// Device -> pattern -> row (`None`: removed).
    pub(super) patterns: HashMap<String, BTreeMap<String, Option<Vec<u8>>>>,
    pub(super) floors: HashMap<String, u32>,
    pub(super) enrolments: HashMap<String, Vec<u8>>,
    pub(super) meta: HashMap<String, u64>,
    /// The aggregation queue's blocks, by first sequence number.
    pub(super) blocks: BTreeMap<u64, Vec<u8>>,
    /// Devices stored for the first time in this epoch.
    pub(super) new_devices: u64,
}

impl Rows {
    fn put(&mut self, op: &Op) {
        match op {
            Op::Device(id, v, new) => {
                self.devices.insert(id.clone(), v.clone());
                self.new_devices += u64::from(*new);
            }
            Op::Pattern(d, p, v) => {
                self.patterns
                    .entry(d.clone())
                    .or_default()
                    .insert(p.clone(), v.clone());
            }
            Op::Floor(d, f) => {
                self.floors.insert(d.clone(), *f);
            }
            Op::Enrolment(d, v) => {
                self.enrolments.insert(d.clone(), v.clone());
            }
            Op::Meta(k, v) => {
                self.meta.insert(k.clone(), *v);
            }
            Op::Block(first, b) => {
                self.blocks.insert(*first, b.clone());
            }
        }
    }
}

/// One epoch's rows.
#[derive(Debug)]
pub(super) struct Generation {
    pub(super) epoch: u64,
    pub(super) rows: RwLock<Rows>,
}

/// The acknowledged, unfolded rows (module docs), newest generation last.
#[derive(Debug, Default)]
pub(super) struct Overlay {
    gens: RwLock<Vec<Arc<Generation>>>,
}

/// A lock's guard, also after a panic while it was held (every update
/// under these locks is a single insert or retain: no half-made state).
pub(super) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl Overlay {
    /// Runs `f` (which begins a read transaction) with the generations a
    /// reader must consult, taken together with it: a fold's generation is
    /// dropped only after its commit, so a snapshot from before the commit
    /// is always paired with it. A snapshot from after it may be paired
    /// with it too: the reader drops the generations older than its
    /// snapshot's epoch (`RedbRead::new`).
    pub(super) fn pair<T>(
        &self,
        f: impl FnOnce() -> StoreResult<T>,
    ) -> StoreResult<(T, Vec<Arc<Generation>>)> {
        let g = read(&self.gens);
        Ok((f()?, g.clone()))
    }

    /// Makes a journaled group's rows visible (after its record is durable).
    pub(super) fn publish(&self, epoch: u64, ops: &[Op]) {
        let gen = {
            let mut g = write(&self.gens);
            match g.last() {
                Some(last) if last.epoch == epoch => last.clone(),
                _ => {
                    let n = Arc::new(Generation {
                        epoch,
                        rows: RwLock::new(Rows::default()),
                    });
                    g.push(n.clone());
                    n
                }
            }
        };
        let mut rows = write(&gen.rows);
        for op in ops {
            rows.put(op);
        }
    }

    /// Drops the generations of epochs up to `epoch`, whose fold committed.
    pub(super) fn retire(&self, epoch: u64) {
        write(&self.gens).retain(|x| x.epoch > epoch);
    }

    /// Drops every generation (the database was reopened, the journal
    /// replayed and folded into it).
    pub(super) fn clear(&self) {
        write(&self.gens).clear();
    }
}

/// The newest answer `f` gives over `gens` (newest first).
pub(super) fn newest<T>(gens: &[Arc<Generation>], f: impl Fn(&Rows) -> Option<T>) -> Option<T> {
    gens.iter().rev().find_map(|g| f(&read(&g.rows)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(n: u8) -> Vec<Op> {
        vec![
            Op::Device(format!("tv-{n}"), vec![n; 40], n.is_multiple_of(2)),
            Op::Pattern(format!("tv-{n}"), "p".into(), Some(vec![n; 900])),
            Op::Pattern(format!("tv-{n}"), "q".into(), None),
            Op::Meta("change_seq".into(), u64::from(n)),
            Op::Block(u64::from(n), vec![1, 2, 3]),
            Op::Floor(format!("tv-{n}"), u32::from(n) << 20),
            Op::Enrolment(format!("tv-{n}"), vec![n; 70]),
        ]
    }

    #[test]
    fn records_of_the_salt_parse_up_to_the_first_bad_one() {
        let (a, b, c) = (
            record(7, &ops(1)).unwrap(),
            record(7, &ops(2)).unwrap(),
            record(7, &ops(3)).unwrap(),
        );
        assert!([&a, &b, &c].iter().all(|r| r.len().is_multiple_of(ALIGN)));
        let mut all = [a.clone(), b.clone(), c.clone()].concat();
        let want: Vec<Op> = [ops(1), ops(2), ops(3)].concat();
        assert_eq!(parse(&all, 7), want);
        // Another salt: nothing of it.
        assert!(parse(&all, 8).is_empty());
        // A torn last record (its body cut): the first two.
        let cut = a.len() + b.len() + HEADER + 100;
        assert_eq!(parse(&all[..cut], 7), [ops(1), ops(2)].concat());
        // A flipped byte in the second: the first only.
        all[a.len() + HEADER + 10] ^= 1;
        assert_eq!(parse(&all, 7), ops(1));
        // An old salt's record after the new one's first: stops there.
        let mixed = [record(8, &ops(4)).unwrap(), b[..].to_vec()].concat();
        assert_eq!(parse(&mixed, 8), ops(4));
        // Zeros (a failed record's header cleared) end the records.
        let zeroed = [a.clone(), vec![0; ALIGN], c.clone()].concat();
        assert_eq!(parse(&zeroed, 7), ops(1));
    }

    #[test]
    fn bodies_decode_to_their_ops_and_cut_or_bad_ones_to_none() {
        let want = [ops(1), ops(2)].concat();
        let mut body = Vec::new();
        encode(&want, &mut body).unwrap();
        assert_eq!(decode(&body), Some(want.clone()));
        // Every cut inside an op, and every unknown tag, is refused; no
        // input panics.
        for n in 0..body.len() {
            if let Some(got) = decode(&body[..n]) {
                assert!(want.starts_with(&got), "a cut decoded to other ops");
            }
        }
        assert_eq!(decode(&[9]), None);
        let mut bad_utf8 = Vec::new();
        encode(&[Op::Meta("k".into(), 1)], &mut bad_utf8).unwrap();
        bad_utf8[5] = 0xff;
        assert_eq!(decode(&bad_utf8), None);
    }

    #[test]
    fn the_overlay_answers_newest_first_and_retires_folded_epochs() {
        let o = Overlay::default();
        o.publish(3, &ops(1));
        o.publish(4, &[Op::Pattern("tv-1".into(), "p".into(), None)]);
        let ((), gens) = o.pair(|| Ok(())).unwrap();
        let p = |gens: &[Arc<Generation>]| {
            newest(gens, |r| {
                r.patterns.get("tv-1").and_then(|m| m.get("p")).cloned()
            })
        };
        assert_eq!(p(&gens), Some(None), "epoch 4 removed it");
        o.retire(3);
        // A reader that took both generations before the retirement keeps them.
        assert_eq!(gens.len(), 2);
        let ((), now) = o.pair(|| Ok(())).unwrap();
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].epoch, 4);
        o.retire(4);
        let ((), now) = o.pair(|| Ok(())).unwrap();
        assert!(p(&now).is_none());
    }
}
