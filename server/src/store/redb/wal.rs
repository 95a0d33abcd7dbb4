//! The redb file's storage with a write-ahead log beside it (`<db>-wal`).
//!
//! redb makes a commit durable by writing each dirty page where it lives in
//! the file and calling `fdatasync` on the file: a group of ~13 syncs
//! dirties ~30 pages scattered over the file, each written with a `pwrite`
//! of its own and written back by the kernel on its own. [`LoggedFile`] is
//! the [`StorageBackend`] redb runs on instead. A write is kept in memory,
//! page by page (the overlay: reads see it over the file), and appended to
//! the pending record; when redb asks for durability
//! ([`StorageBackend::sync_data`]) the pending record goes to the log (one
//! `pwrite`, one `fdatasync` of one sequential range). Once the log holds
//! the checkpoint size ([`LoggedFile::open`]), the overlay's pages go to the
//! database file (each page once however often it was written since, in
//! runs of adjacent pages), the file is synced once and the log starts over
//! (a checkpoint).
//!
//! A record: `magic u32 | epoch u64 | seq u64 | body length u32 | crc32 u32`
//! then the body, a list of entries `1 | offset u64 | length u32 | bytes`
//! (a write) or `2 | length u64` (a new file length); integers little
//! endian; the CRC (IEEE) covers epoch, seq, length and body. Each epoch
//! starts at offset 0 with seq 0; the first epoch of an open is a random
//! number, and a checkpoint starts the next one only after the old first
//! header is zeroed and that is synced.
//!
//! Opening replays the log into the database file before redb sees it: the
//! records from offset 0 while each is whole (its CRC holds), has the
//! first record's epoch and the next seq; then the database file is synced
//! and the log emptied. Every `sync_data` that returned had its record
//! durable, so the file after the replay holds every write redb was told is
//! durable, in order; writes after the last such call are lost, as redb
//! expects of a crash, and redb's own recovery (checksums, the previous
//! commit slot) deals with the rest. Old records past the end of the
//! current epoch fail the epoch or seq check and are never applied. After
//! a checkpoint the old epoch cannot be replayed at all (its first header
//! is gone): replaying a prefix of it over the checkpointed file would
//! bring older pages back. A checkpoint whose file writes fail leaves the
//! log whole and is tried again later; any other failed write makes every
//! later call fail (redb then takes the database out of service and the
//! server opens it again), and a record whose write failed is cut off the
//! log, so that a commit redb was told failed is not replayed by that
//! reopening.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use ::redb::backends::FileBackend;
use ::redb::StorageBackend;

/// First bytes of every record.
const MAGIC: u32 = u32::from_le_bytes(*b"OTWL");
/// Bytes of a record's header.
const HEADER: usize = 4 + 8 + 8 + 4 + 4;
/// Entry kind: a write.
const WRITE: u8 = 1;
/// Entry kind: a new file length.
const SET_LEN: u8 = 2;
/// The overlay's unit: redb's page size.
const PAGE: u64 = 4096;

/// Where the log of the database file at `db` lives: `<db>-wal`.
pub fn log_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

/// The log's state (redb writes from one thread at a time, but the trait
/// is `Sync`).
#[derive(Debug)]
struct Log {
    file: File,
    /// The next record: room for its header, then the entries written
    /// since the last `sync_data`.
    pending: Vec<u8>,
    /// Where the next record goes.
    end: u64,
    epoch: u64,
    seq: u64,
    /// Log size at which the next checkpoint starts (later after one failed).
    checkpoint_at: u64,
    /// Checkpoints failed in a row since the last one that succeeded.
    checkpoint_failures: u32,
    /// A checkpoint succeeded but could not clear the old epoch's first
    /// header: the next sync clears it before writing at offset 0.
    reset_pending: bool,
    /// A write to the log or the overlay failed: every later call fails
    /// (redb takes the database out of service and opens it again, which
    /// replays what was durable) and closing writes nothing to the file.
    failed: bool,
}

/// The writes since the last checkpoint, by page, over the file.
#[derive(Debug)]
struct Overlay {
    /// Page number -> its [`PAGE`] bytes as last written.
    pages: HashMap<u64, Box<[u8]>>,
    /// The storage's length as redb sees it.
    len: u64,
    /// The database file's length.
    file_len: u64,
}

/// redb's storage: the database file, the writes since the last
/// checkpoint in memory and its write-ahead log (module docs).
#[derive(Debug)]
pub struct LoggedFile {
    /// The database file through redb's own backend, which holds the lock
    /// against a second opener; used for nothing else.
    _lock: FileBackend,
    /// The database file.
    data: File,
    log: Mutex<Log>,
    overlay: RwLock<Overlay>,
    /// Log size after which the next `sync_data` checkpoints.
    checkpoint_bytes: u64,
    /// Bytes appended to the log so far, for the caller's statistics.
    logged: Arc<AtomicU64>,
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn poisoned() -> io::Error {
    io::Error::other("write-ahead log lock poisoned")
}

fn failed() -> io::Error {
    io::Error::other("an earlier write-ahead log write failed; reopen the database")
}

/// Checkpoints that may fail in a row before the next sync fails (and the
/// database is opened again, which replays the log into the file).
const MAX_CHECKPOINT_FAILURES: u32 = 8;

/// Zeroes the log's first record header and syncs: an epoch that started
/// at offset 0 can no longer be replayed.
fn clear_start(log: &File) -> io::Result<()> {
    log.write_all_at(&[0; HEADER], 0)?;
    log.sync_data()
}

impl Log {
    /// Starts the next epoch at offset 0.
    fn restart(&mut self, checkpoint_bytes: u64) {
        self.epoch = self.epoch.wrapping_add(1);
        self.seq = 0;
        self.end = 0;
        self.checkpoint_at = checkpoint_bytes;
    }
}

/// Largest offset the storage takes (redb's files are far smaller): keeps
/// page arithmetic far from overflow.
const MAX_LEN: u64 = 1 << 56;

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

impl LoggedFile {
    /// Opens (or creates) the database file `db` and its log, replays the
    /// log into the file (module docs) and returns the backend. The log
    /// reaching `checkpoint_bytes` starts a checkpoint: this bounds the log,
    /// the overlay's memory and the replay after a crash. Every record
    /// appended adds its bytes to `logged`.
    pub fn open(
        db: &Path,
        checkpoint_bytes: u64,
        logged: Arc<AtomicU64>,
    ) -> io::Result<LoggedFile> {
        let lock = FileBackend::new(open_rw(db)?).map_err(io::Error::other)?;
        let data = open_rw(db)?;
        let log_file = open_rw(&log_path(db))?;
        // Both names durable before anything is acknowledged through them.
        let parent = match db.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent)?.sync_all()?;
        let replayed = replay(&log_file, &data)?;
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                "write-ahead log replayed into the database file"
            );
        }
        // The replayed writes are durable in the file: the log may go.
        data.sync_data()?;
        log_file.set_len(0)?;
        log_file.sync_data()?;
        let file_len = data.metadata()?.len();
        // Epochs start at a random number: bytes left from another run or
        // another epoch cannot continue this one's chain by chance.
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(LoggedFile {
            _lock: lock,
            data,
            log: Mutex::new(Log {
                file: log_file,
                pending: vec![0; HEADER],
                end: 0,
                epoch: u64::from_le_bytes(seed),
                seq: 0,
                checkpoint_at: checkpoint_bytes,
                checkpoint_failures: 0,
                reset_pending: false,
                failed: false,
            }),
            overlay: RwLock::new(Overlay {
                pages: HashMap::new(),
                len: file_len,
                file_len,
            }),
            checkpoint_bytes,
            logged,
        })
    }

    /// Writes the overlay's pages to the database file, syncs it and
    /// empties the overlay.
    fn checkpoint(&self) -> io::Result<()> {
        let mut written_end = 0;
        {
            let ov = self.overlay.read().map_err(|_| poisoned())?;
            let mut numbers: Vec<u64> = ov.pages.keys().copied().collect();
            numbers.sort_unstable();
            let mut run: Vec<u8> = Vec::new();
            let mut i = 0;
            while i < numbers.len() {
                let first = numbers[i];
                run.clear();
                while i < numbers.len() && numbers[i] == first + (run.len() as u64 / PAGE) {
                    run.extend_from_slice(&ov.pages[&numbers[i]]);
                    i += 1;
                }
                // Nothing past the storage's length (a last, partial page).
                let start = first * PAGE;
                let keep = ov.len.saturating_sub(start).min(run.len() as u64) as usize;
                self.data.write_all_at(&run[..keep], start)?;
                written_end = written_end.max(start + keep as u64);
            }
            self.data.sync_data()?;
        }
        let mut ov = self.overlay.write().map_err(|_| poisoned())?;
        ov.pages.clear();
        ov.file_len = ov.file_len.max(written_end);
        Ok(())
    }

    /// [`StorageBackend::write`] under the log's lock.
    fn write_logged(&self, log: &mut Log, offset: u64, data: &[u8]) -> io::Result<()> {
        let len = u32::try_from(data.len()).map_err(|_| corrupt("write over 4 GiB"))?;
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= MAX_LEN)
            .ok_or_else(|| corrupt("write past the largest storage"))?;
        log.pending.push(WRITE);
        log.pending.extend_from_slice(&offset.to_le_bytes());
        log.pending.extend_from_slice(&len.to_le_bytes());
        log.pending.extend_from_slice(data);
        let mut ov = self.overlay.write().map_err(|_| poisoned())?;
        let mut n = offset / PAGE;
        while n * PAGE < end {
            let (start, stop) = ((n * PAGE).max(offset), ((n + 1) * PAGE).min(end));
            let src = &data[(start - offset) as usize..(stop - offset) as usize];
            if src.len() as u64 == PAGE {
                match ov.pages.get_mut(&n) {
                    Some(p) => p.copy_from_slice(src),
                    None => {
                        ov.pages.insert(n, src.into());
                    }
                }
            } else {
                let mut p = ov.page(n, &self.data)?;
                p[(start - n * PAGE) as usize..(stop - n * PAGE) as usize].copy_from_slice(src);
                ov.pages.insert(n, p);
            }
            n += 1;
        }
        ov.len = ov.len.max(end);
        Ok(())
    }

    /// [`StorageBackend::set_len`] under the log's lock.
    fn set_len_logged(&self, log: &mut Log, len: u64) -> io::Result<()> {
        if len > MAX_LEN {
            return Err(corrupt("length past the largest storage"));
        }
        log.pending.push(SET_LEN);
        log.pending.extend_from_slice(&len.to_le_bytes());
        let mut ov = self.overlay.write().map_err(|_| poisoned())?;
        self.data.set_len(len)?;
        ov.file_len = len;
        ov.len = len;
        // Pages past the new end go; the part of the last one past it reads
        // as zeros should the storage grow again.
        ov.pages.retain(|&n, _| n * PAGE < len);
        if let Some(p) = ov.pages.get_mut(&(len / PAGE)) {
            p[(len % PAGE) as usize..].fill(0);
        }
        Ok(())
    }

    /// [`StorageBackend::sync_data`] under the log's lock.
    fn sync_logged(&self, log: &mut Log) -> io::Result<()> {
        if log.pending.len() <= HEADER {
            return Ok(());
        }
        if log.checkpoint_failures >= MAX_CHECKPOINT_FAILURES {
            // Nothing of this record is written; reopening replays the log
            // into the file with bounded memory, or fails and is retried.
            return Err(io::Error::other(
                "write-ahead log checkpoints keep failing; reopen the database",
            ));
        }
        if log.reset_pending {
            // The last checkpoint could not clear the old epoch: clear it
            // now, before anything is written at offset 0.
            clear_start(&log.file)?;
            log.reset_pending = false;
            log.restart(self.checkpoint_bytes);
        }
        let len =
            u32::try_from(log.pending.len() - HEADER).map_err(|_| corrupt("record over 4 GiB"))?;
        let (header, body) = log.pending.split_at_mut(HEADER);
        header[..4].copy_from_slice(&MAGIC.to_le_bytes());
        header[4..12].copy_from_slice(&log.epoch.to_le_bytes());
        header[12..20].copy_from_slice(&log.seq.to_le_bytes());
        header[20..24].copy_from_slice(&len.to_le_bytes());
        let crc = checksum(&header[4..24], body);
        header[24..28].copy_from_slice(&crc.to_le_bytes());
        let written = log
            .file
            .write_all_at(&log.pending, log.end)
            .and_then(|()| log.file.sync_data());
        if let Err(e) = written {
            // The record may sit whole in the page cache: cut it off (or at
            // least its header), so that reopening in this process does not
            // replay a commit redb was told failed.
            if log.file.set_len(log.end).is_err() {
                let _ = log.file.write_all_at(&[0; HEADER], log.end);
            }
            return Err(e);
        }
        let n = log.pending.len() as u64;
        log.pending.truncate(HEADER);
        log.end += n;
        log.seq += 1;
        self.logged.fetch_add(n, Ordering::Relaxed);
        if log.end >= log.checkpoint_at {
            // Everything logged goes to the database file; once that is
            // durable, the log may start over. The record is durable
            // whatever happens here, so this call succeeds: a failed
            // checkpoint leaves the log whole and is tried again one
            // checkpoint size later ([`MAX_CHECKPOINT_FAILURES`] in a row
            // fail the next sync).
            if let Err(e) = self.checkpoint() {
                tracing::warn!(error = %e, log_bytes = log.end, "write-ahead log checkpoint failed; the log keeps every write");
                log.checkpoint_failures += 1;
                log.checkpoint_at = log.end.saturating_add(self.checkpoint_bytes);
                return Ok(());
            }
            log.checkpoint_failures = 0;
            // The old epoch made unreachable, durably, before the new one
            // overwrites it from offset 0: a new record torn by a power cut
            // could otherwise leave the old first record whole and the
            // second broken, and replaying a prefix of the old epoch over
            // the checkpointed file would bring older pages back. Should
            // that fail, the first header's state is unknown: nothing more
            // is appended after it, and the next sync clears it first.
            match clear_start(&log.file) {
                Ok(()) => log.restart(self.checkpoint_bytes),
                Err(e) => {
                    tracing::warn!(error = %e, "write-ahead log reset failed; retried at the next commit");
                    log.reset_pending = true;
                }
            }
        }
        Ok(())
    }

    /// Runs `f` under the log's lock unless a write failed before; a
    /// failure makes every later call fail ([`Log::failed`]).
    fn logged<R>(&self, f: impl FnOnce(&mut Log) -> io::Result<R>) -> io::Result<R> {
        let mut log = self.log.lock().map_err(|_| poisoned())?;
        if log.failed {
            return Err(failed());
        }
        let r = f(&mut log);
        if r.is_err() {
            log.failed = true;
        }
        r
    }
}

/// Reads the records of the log's current epoch and applies them to the
/// database file `data` in order; returns how many it applied.
fn replay(log: &File, data: &File) -> io::Result<u64> {
    let size = log.metadata()?.len();
    let mut at = 0u64;
    let mut first: Option<u64> = None;
    let mut seq = 0u64;
    let mut header = [0u8; HEADER];
    while at + HEADER as u64 <= size {
        log.read_exact_at(&mut header, at)?;
        let word = |a: usize, n: usize| -> u64 {
            let mut b = [0u8; 8];
            b[..n].copy_from_slice(&header[a..a + n]);
            u64::from_le_bytes(b)
        };
        let (magic, epoch, rseq) = (word(0, 4) as u32, word(4, 8), word(12, 8));
        let (len, crc) = (word(20, 4), word(24, 4) as u32);
        if magic != MAGIC || first.is_some_and(|e| e != epoch) || rseq != seq {
            break;
        }
        if at + HEADER as u64 + len > size {
            break;
        }
        let mut body = vec![0u8; len as usize];
        log.read_exact_at(&mut body, at + HEADER as u64)?;
        if checksum(&header[4..24], &body) != crc {
            break;
        }
        apply(&body, data)?;
        first = Some(epoch);
        seq += 1;
        at += HEADER as u64 + len;
    }
    Ok(seq)
}

/// Applies one record's entries to the database file. A record whose CRC
/// holds was written by [`LoggedFile`]; entries that do not parse are
/// refused whole.
fn apply(mut body: &[u8], data: &File) -> io::Result<()> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> io::Result<&'a [u8]> {
        if b.len() < n {
            return Err(corrupt("write-ahead log entry cut short"));
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Ok(h)
    }
    fn u64_of(b: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        a[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(a)
    }
    while !body.is_empty() {
        match take(&mut body, 1)?[0] {
            WRITE => {
                let offset = u64_of(take(&mut body, 8)?);
                let len = u64_of(take(&mut body, 4)?) as usize;
                data.write_all_at(take(&mut body, len)?, offset)?;
            }
            SET_LEN => data.set_len(u64_of(take(&mut body, 8)?))?,
            _ => return Err(corrupt("unknown write-ahead log entry")),
        }
    }
    Ok(())
}

/// CRC-32 (IEEE) of the record's header fields and body.
fn checksum(fields: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(fields);
    h.update(body);
    h.finalize()
}

impl Overlay {
    /// Page `n` as the storage holds it: the overlay's, else the file's
    /// (zeros past its end).
    fn page(&self, n: u64, data: &File) -> io::Result<Box<[u8]>> {
        if let Some(p) = self.pages.get(&n) {
            return Ok(p.clone());
        }
        let mut p = vec![0u8; PAGE as usize].into_boxed_slice();
        let start = n * PAGE;
        let have = self.file_len.saturating_sub(start).min(PAGE) as usize;
        data.read_exact_at(&mut p[..have], start)?;
        Ok(p)
    }
}

impl StorageBackend for LoggedFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.overlay.read().map_err(|_| poisoned())?.len)
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let ov = self.overlay.read().map_err(|_| poisoned())?;
        let end = offset
            .checked_add(len as u64)
            .filter(|&e| e <= ov.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        let mut out = vec![0u8; len];
        let pages = offset / PAGE..end.div_ceil(PAGE);
        if ov.pages.is_empty() || !pages.clone().all(|n| ov.pages.contains_key(&n)) {
            let from_file = ov.file_len.saturating_sub(offset).min(len as u64) as usize;
            self.data.read_exact_at(&mut out[..from_file], offset)?;
        }
        if !ov.pages.is_empty() {
            for n in pages {
                if let Some(p) = ov.pages.get(&n) {
                    let (start, stop) = ((n * PAGE).max(offset), ((n + 1) * PAGE).min(end));
                    let src = &p[(start - n * PAGE) as usize..(stop - n * PAGE) as usize];
                    out[(start - offset) as usize..(stop - offset) as usize].copy_from_slice(src);
                }
            }
        }
        Ok(out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.logged(|log| self.set_len_logged(log, len))
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.logged(|log| self.write_logged(log, offset, data))
    }

    /// Makes every write so far durable: one log record and one `fdatasync`
    /// of the log; at the checkpoint size, a checkpoint and a new epoch.
    fn sync_data(&self, _eventual: bool) -> io::Result<()> {
        self.logged(|log| self.sync_logged(log))
    }
}

impl Drop for LoggedFile {
    /// A clean close: the writes in the database file, synced, and the log
    /// emptied. Only when every write was logged: writes after the last
    /// `sync_data` (a commit that failed) never reach the file, and the log
    /// stays for the next open to replay; so does it when this fails.
    fn drop(&mut self) {
        let synced = self
            .log
            .get_mut()
            .is_ok_and(|log| !log.failed && log.pending.len() <= HEADER);
        if synced && self.checkpoint().is_ok() {
            if let Ok(log) = self.log.get_mut() {
                if log.file.set_len(0).is_ok() {
                    let _ = log.file.sync_data();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Power cuts on the real redb file: the disk after a cut holds the
    //! database file as of its last `fdatasync` and the log as of its last
    //! one; these tests copy such a pair aside while the database runs and
    //! open the copy.

    use super::*;
    use ::redb::{Database, ReadableTable, TableDefinition};

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    fn open(path: &Path, checkpoint: u64) -> Database {
        let file =
            LoggedFile::open(path, checkpoint, Arc::default()).expect("open the logged file");
        Database::builder()
            .create_with_backend(file)
            .expect("redb opens")
    }

    /// Commits `value` under keys `0..keys`, durably.
    fn commit(db: &Database, keys: u64, value: u64) {
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(T).unwrap();
            for k in 0..keys {
                t.insert(k, value).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    /// Every key's value in the database at `path`, opened as after a cut.
    fn values(path: &Path) -> Vec<(u64, u64)> {
        let db = open(path, u64::MAX);
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(T).unwrap();
        t.iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                (k.value(), v.value())
            })
            .collect()
    }

    /// The disk after a cut: `main` as the database file, the live log
    /// (cut to `log_len` bytes when given) beside it, in a new directory.
    fn cut(dir: &Path, name: &str, main: &[u8], live: &Path, log_len: Option<u64>) -> PathBuf {
        let d = dir.join(name);
        std::fs::create_dir(&d).unwrap();
        let db = d.join("db");
        std::fs::write(&db, main).unwrap();
        let mut log = std::fs::read(log_path(live)).unwrap();
        if let Some(n) = log_len {
            log.truncate(n as usize);
        }
        std::fs::write(log_path(&db), log).unwrap();
        db
    }

    #[test]
    fn a_cut_before_the_file_is_synced_loses_no_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        // Opening synced the new file while it was empty: that is what a
        // cut leaves of it, every later write (redb's own initialisation
        // included) being only in the page cache and the log.
        let db = open(&path, u64::MAX);
        let synced: Vec<u8> = Vec::new();
        for v in 1..=20 {
            commit(&db, 50, v);
        }
        let log_len = std::fs::metadata(log_path(&path)).unwrap().len();
        assert!(log_len > 0, "the commits went through the log");
        let copy = cut(dir.path(), "cut", &synced, &path, None);
        let got = values(&copy);
        assert_eq!(got, (0..50).map(|k| (k, 20)).collect::<Vec<_>>());
        // The replay emptied the copy's log and synced its file.
        assert_eq!(std::fs::metadata(log_path(&copy)).unwrap().len(), 0);
        drop(db);
    }

    #[test]
    fn a_torn_last_record_loses_only_the_commit_it_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let db = open(&path, u64::MAX);
        let synced: Vec<u8> = Vec::new();
        for v in 1..=5 {
            commit(&db, 10, v);
        }
        let before_last = std::fs::metadata(log_path(&path)).unwrap().len();
        commit(&db, 10, 6);
        let after_last = std::fs::metadata(log_path(&path)).unwrap().len();
        assert!(after_last > before_last + HEADER as u64);
        // The last record cut in its header, then in its body: never
        // applied; the commit before it stands.
        for (i, keep) in [
            before_last + 10,
            (before_last + after_last) / 2,
            after_last - 1,
        ]
        .into_iter()
        .enumerate()
        {
            let copy = cut(dir.path(), &format!("torn{i}"), &synced, &path, Some(keep));
            assert_eq!(values(&copy), (0..10).map(|k| (k, 5)).collect::<Vec<_>>());
        }
        // A byte flipped inside the last record's body: its CRC fails.
        let copy = cut(dir.path(), "flipped", &synced, &path, None);
        let mut log = std::fs::read(log_path(&copy)).unwrap();
        let mid = ((before_last + after_last) / 2) as usize;
        log[mid] ^= 0x40;
        std::fs::write(log_path(&copy), log).unwrap();
        assert_eq!(values(&copy), (0..10).map(|k| (k, 5)).collect::<Vec<_>>());
        drop(db);
    }

    #[test]
    fn checkpoints_keep_the_log_bounded_and_old_records_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        // A checkpoint every ~64 KiB of log: many epochs, each shorter or
        // longer than the one before, old records left past each end.
        let db = open(&path, 64 << 10);
        let unbounded = dir.path().join("unbounded");
        let whole = open(&unbounded, u64::MAX);
        for v in 1..=200 {
            commit(&db, 1 + v % 40, v);
            commit(&whole, 1 + v % 40, v);
        }
        let log_len = std::fs::metadata(log_path(&path)).unwrap().len();
        let whole_len = std::fs::metadata(log_path(&unbounded)).unwrap().len();
        assert!(
            log_len * 4 < whole_len,
            "log of {log_len} B with checkpoints, {whole_len} B without"
        );
        // A cut where every write reached the file (a killed process):
        // replaying the current epoch over it keeps the newest values; an
        // old record applied would bring an older value back.
        let main = std::fs::read(&path).unwrap();
        let copy = cut(dir.path(), "killed", &main, &path, None);
        let want: Vec<(u64, u64)> = (0..40)
            .map(|k| {
                let last = (1..=200u64).rev().find(|v| k < 1 + v % 40).unwrap();
                (k, last)
            })
            .collect();
        assert_eq!(values(&copy), want);
        drop(db);
    }

    /// The storage against a plain vector: random writes (whole pages and
    /// pieces of pages), lengths, reads and syncs with a checkpoint every
    /// few records; after a sync, a cut (the database file and the log as
    /// they are on disk) opens to exactly the vector.
    #[test]
    fn the_storage_reads_what_was_written_through_checkpoints_and_cuts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let file = LoggedFile::open(&path, 48 << 10, Arc::default()).unwrap();
        let mut model: Vec<u8> = Vec::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n.max(1)
        };
        let mut cuts = 0;
        for step in 0..3000u64 {
            match next(10) {
                0..=4 => {
                    let (offset, len) = if next(2) == 0 {
                        (next(24) * PAGE, (1 + next(3)) * PAGE)
                    } else {
                        (next(100_000), 1 + next(9_000))
                    };
                    let bytes: Vec<u8> = (0..len).map(|i| (step + i) as u8 | 1).collect();
                    file.write(offset, &bytes).unwrap();
                    let end = (offset + len) as usize;
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                    model[offset as usize..end].copy_from_slice(&bytes);
                }
                5 => {
                    let len = next(110_000);
                    file.set_len(len).unwrap();
                    model.resize(len as usize, 0);
                }
                6..=8 => {
                    let len = model.len() as u64;
                    assert_eq!(file.len().unwrap(), len);
                    let offset = next(len + 1);
                    let n = next(len - offset + 1) as usize;
                    let got = file.read(offset, n).unwrap();
                    assert!(
                        got == model[offset as usize..offset as usize + n],
                        "step {step}"
                    );
                    assert!(file.read(len, 1).is_err(), "a read past the end");
                }
                _ => {
                    file.sync_data(false).unwrap();
                    if next(4) == 0 {
                        cuts += 1;
                        let d = dir.path().join(format!("cut{cuts}"));
                        std::fs::create_dir(&d).unwrap();
                        std::fs::copy(&path, d.join("db")).unwrap();
                        std::fs::copy(log_path(&path), log_path(&d.join("db"))).unwrap();
                        let copy =
                            LoggedFile::open(&d.join("db"), u64::MAX, Arc::default()).unwrap();
                        assert_eq!(copy.len().unwrap(), model.len() as u64);
                        assert!(copy.read(0, model.len()).unwrap() == model, "cut {cuts}");
                    }
                }
            }
        }
        assert!(cuts > 20, "{cuts} cuts");
        file.sync_data(false).unwrap();
        drop(file);
        // A clean close: the file alone holds everything, the log is empty.
        assert!(std::fs::read(&path).unwrap() == model);
        assert_eq!(std::fs::metadata(log_path(&path)).unwrap().len(), 0);
    }

    /// A power cut while the first record after a checkpoint is written,
    /// the disk keeping some of its later sectors but not its first: the
    /// old epoch's first record is then whole and its second broken. The
    /// old epoch must not replay (a prefix of it would write older bytes
    /// over the checkpointed file).
    #[test]
    fn a_torn_first_record_after_a_checkpoint_brings_nothing_old_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let file = LoggedFile::open(&path, 1024, Arc::default()).unwrap();
        file.write(0, &[1; 8]).unwrap();
        file.sync_data(false).unwrap();
        let first = std::fs::metadata(log_path(&path)).unwrap().len();
        assert!(first < 1024, "no checkpoint yet");
        let first_header = std::fs::read(log_path(&path)).unwrap()[..HEADER].to_vec();
        // Past 1 KiB of log: this record is followed by a checkpoint.
        file.write(0, &[2; 8]).unwrap();
        file.write(4096, &[3; 1000]).unwrap();
        file.sync_data(false).unwrap();
        let checkpointed = std::fs::read(&path).unwrap();
        assert_eq!(checkpointed[..8], [2; 8], "the checkpoint wrote the file");
        let old_log = std::fs::read(log_path(&path)).unwrap();
        assert!(old_log.len() as u64 > first + 1000);
        // The new epoch's first record, longer than the old first one.
        file.write(8192, &[4; 900]).unwrap();
        file.sync_data(false).unwrap();
        let new_log = std::fs::read(log_path(&path)).unwrap();
        assert!(new_log.len() >= 1024);
        // The disk: the file as checkpointed, the log as after the
        // checkpoint with bytes 512..1024 of the new record on top.
        let mut disk_log = old_log.clone();
        disk_log[512..1024].copy_from_slice(&new_log[512..1024]);
        let d = dir.path().join("cut");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("db"), &checkpointed).unwrap();
        std::fs::write(log_path(&d.join("db")), disk_log).unwrap();
        let copy = LoggedFile::open(&d.join("db"), u64::MAX, Arc::default()).unwrap();
        assert_eq!(copy.read(0, 8).unwrap(), [2; 8], "an old value came back");
        assert_eq!(copy.read(4096, 1000).unwrap(), [3; 1000]);
        // A cut after the checkpoint synced the file but before the old
        // first header was cleared: the whole old epoch replays over the
        // checkpointed file, and changes nothing.
        let mut disk_log = old_log;
        disk_log[..HEADER].copy_from_slice(&first_header);
        let d = dir.path().join("cut-before-clear");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("db"), &checkpointed).unwrap();
        std::fs::write(log_path(&d.join("db")), disk_log).unwrap();
        let copy = LoggedFile::open(&d.join("db"), u64::MAX, Arc::default()).unwrap();
        assert_eq!(copy.read(0, 8).unwrap(), [2; 8]);
        assert_eq!(copy.read(4096, 1000).unwrap(), [3; 1000]);
        drop(file);
    }

    /// A commit whose `sync_data` never came (it failed, or redb never got
    /// there) leaves nothing in the database file on close: the next open
    /// finds the last durable state.
    #[test]
    fn writes_after_the_last_sync_never_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let file = LoggedFile::open(&path, u64::MAX, Arc::default()).unwrap();
        file.write(0, &[1; 8192]).unwrap();
        file.sync_data(false).unwrap();
        file.write(4096, &[2; 8192]).unwrap();
        file.set_len(100).unwrap();
        drop(file);
        let file = LoggedFile::open(&path, u64::MAX, Arc::default()).unwrap();
        assert_eq!(file.len().unwrap(), 8192);
        assert!(file.read(0, 8192).unwrap() == [1; 8192]);
    }

    #[test]
    fn a_second_opener_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let _db = open(&path, u64::MAX);
        assert!(LoggedFile::open(&path, u64::MAX, Arc::default()).is_err());
    }
}
