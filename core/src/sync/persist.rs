//! Power-loss-safe storage of the sync-state snapshot on NOR flash
//! (feature `flash`).
//!
//! The sync state machine serialises its state (device id, sync sequence,
//! acked codes, global cursor) into one snapshot frame
//! ([`SyncClient::snapshot`](crate::sync::SyncClient::snapshot), up to
//! `SyncClient::<N>::MAX_SNAPSHOT_LEN` bytes: tens of KB). This module keeps
//! the latest snapshot on flash so that a power cut at any moment leaves
//! either the previous snapshot or the new one, never a mix and never
//! nothing (once a first save has completed).
//!
//! ## How
//! [sequential-storage]'s map on any
//! [`embedded_storage_async::nor_flash::NorFlash`]. One map item must fit in
//! one erase page, and a snapshot is larger than a page, so a save writes:
//!
//! 1. the snapshot in chunks of at most [`chunk_len`]`::<S>()` bytes, chunk
//!    `i` under key `slot << 14 | i`, where `slot` is the low bit of the new
//!    *generation* (the previous generation's chunks, under the other slot,
//!    are left alone); each chunk carries its generation number;
//! 2. then, last, a *commit record* (magic, generation, length, chunk count,
//!    CRC-32 of the whole snapshot) under its own key.
//!
//! A load reads the commit record, then the chunks of that generation under
//! its slot, checks each chunk's generation and the CRC-32 of the
//! reassembled snapshot. A cut before the commit record is complete leaves
//! the previous commit record the latest one (sequential-storage checks each
//! item's CRC and ignores a torn one), and the previous generation's chunks
//! were not touched: the old snapshot loads. A cut after it: the new one.
//! When a page fills, the map moves to the next one and, before erasing the
//! oldest, migrates its live items (the latest item of each key), so both
//! generations stay complete on flash. Pages are used in turn (wear
//! levelling).
//!
//! Why sequential-storage rather than ekv: ekv is a log-structured database
//! with transactions, a RAM page cache and a minimum footprint of several
//! pages per file; the device stores one snapshot and needs none of that.
//! sequential-storage needs no RAM beyond the caller's buffer (no cache is
//! used here) and documents power-fail safety and auto-repair, which the
//! power-cut test of this module checks at every flash write and erase of
//! saving a real sync client's snapshot.
//!
//! ## Sizes
//! | what | bound |
//! |---|---|
//! | work buffer `buf` | >= [`WORK_LEN_MAX`] or exactly [`work_len`]`::<S>()`: one chunk item (two fit in a page) |
//! | chunk | [`chunk_len`]`::<S>()` snapshot bytes per map item |
//! | flash range | >= [`region_len`]`::<S>(max snapshot)` bytes, page-aligned: two generations of chunks, the commit record and two spare pages; more pages = less wear |
//! | snapshot | <= [`MAX_SNAPSHOT`] and what the range holds ([`Error::CapacityExceeded`] otherwise) |
//!
//! Every function is `async` and must not be cancelled mid-way on real
//! hardware (a cancelled save behaves like a power cut: old or new value).
//!
//! [sequential-storage]: https://docs.rs/sequential-storage

use core::ops::Range;

use embedded_storage_async::nor_flash::NorFlash;
use sequential_storage::cache::{Cache, Uncached};
use sequential_storage::map::{MapConfig, MapStorage, SerializationError, Value};

use crate::wire::crc32;
use crate::{Error, Result};

/// The key of the commit record.
const COMMIT_KEY: u16 = 0xc000;
/// Chunk index bits of a chunk key (`slot << 14 | index`).
const INDEX_BITS: u32 = 14;
/// Most chunks one snapshot may have.
pub const MAX_CHUNKS: usize = 1 << INDEX_BITS;
/// First byte of a commit record (format of this module).
const COMMIT_MAGIC: u8 = 0xc5;
/// Serialised commit record: magic u8, generation u32, length u32, chunks
/// u16, CRC-32 u32.
const COMMIT_LEN: usize = 1 + 4 + 4 + 2 + 4;
/// Bytes before the data in a chunk item: its generation (u32).
const CHUNK_HEAD: usize = 4;
/// Bytes of a map key (u16).
const KEY_LEN: usize = 2;
/// Item header of sequential-storage (length u16 + length CRC u16 + data
/// CRC u32), before word alignment.
const ITEM_HEADER: usize = 8;

/// Absolute upper bound on a snapshot, whatever the flash (the commit
/// record's length field is a `u32`; frames are far smaller).
pub const MAX_SNAPSHOT: usize = 1 << 20;

/// Largest work buffer any flash needs (a 64 KiB page).
pub const WORK_LEN_MAX: usize = 1 << 15;

const fn word<S: NorFlash>() -> usize {
    if S::WRITE_SIZE == 0 {
        1
    } else {
        S::WRITE_SIZE
    }
}

const fn round_up(n: usize, word: usize) -> usize {
    if word <= 1 {
        n
    } else {
        n.div_ceil(word) * word
    }
}

const fn round_down(n: usize, word: usize) -> usize {
    if word <= 1 {
        n
    } else {
        n / word * word
    }
}

/// Size of the work buffer [`save`] and [`load`] need on flash `S`: one
/// chunk item (key, generation, data), rounded up to `S::WRITE_SIZE`. Chunks
/// are sized so that two items fill one erase page.
pub const fn work_len<S: NorFlash>() -> usize {
    let w = word::<S>();
    // Page minus the two page-state words, halved, minus one item header.
    let half = S::ERASE_SIZE.saturating_sub(2 * w) / 2;
    round_down(half.saturating_sub(round_up(ITEM_HEADER, w)), w)
}

/// Snapshot bytes per chunk on flash `S` (0 when a page is too small to
/// hold two chunk items of at least one byte).
pub const fn chunk_len<S: NorFlash>() -> usize {
    work_len::<S>().saturating_sub(KEY_LEN + CHUNK_HEAD)
}

/// Flash bytes a range needs to hold snapshots of up to `snapshot_len`
/// bytes: two generations of chunks (two per page), one page for commit
/// records, and two spare pages the map migrates into.
pub const fn region_len<S: NorFlash>(snapshot_len: usize) -> usize {
    let c = chunk_len::<S>();
    let chunks = if c == 0 { 0 } else { snapshot_len.div_ceil(c) };
    (2 * chunks.div_ceil(2) + 3) * S::ERASE_SIZE
}

/// Largest snapshot `range` holds on flash `S` (the inverse of
/// [`region_len`]).
pub const fn max_snapshot_len<S: NorFlash>(range: &Range<u32>) -> usize {
    let pages = (range.end.saturating_sub(range.start) as usize) / S::ERASE_SIZE;
    let gen_pages = pages.saturating_sub(3) / 2;
    let n = gen_pages * 2 * chunk_len::<S>();
    let n = if n < MAX_SNAPSHOT { n } else { MAX_SNAPSHOT };
    let c = MAX_CHUNKS * chunk_len::<S>();
    if n < c {
        n
    } else {
        c
    }
}

/// The commit record: which generation is complete and how to check it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Commit {
    generation: u32,
    len: u32,
    chunks: u16,
    crc: u32,
}

impl<'a> Value<'a> for Commit {
    fn serialize_into(&self, buffer: &mut [u8]) -> core::result::Result<usize, SerializationError> {
        let b = buffer
            .get_mut(..COMMIT_LEN)
            .ok_or(SerializationError::BufferTooSmall)?;
        b[0] = COMMIT_MAGIC;
        b[1..5].copy_from_slice(&self.generation.to_le_bytes());
        b[5..9].copy_from_slice(&self.len.to_le_bytes());
        b[9..11].copy_from_slice(&self.chunks.to_le_bytes());
        b[11..15].copy_from_slice(&self.crc.to_le_bytes());
        Ok(COMMIT_LEN)
    }

    fn deserialize_from(
        buffer: &'a [u8],
    ) -> core::result::Result<(Self, usize), SerializationError> {
        let b = buffer
            .get(..COMMIT_LEN)
            .ok_or(SerializationError::InvalidFormat)?;
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        if b[0] != COMMIT_MAGIC || buffer.len() != COMMIT_LEN {
            return Err(SerializationError::InvalidFormat);
        }
        Ok((
            Commit {
                generation: u32_at(1),
                len: u32_at(5),
                chunks: u16::from_le_bytes([b[9], b[10]]),
                crc: u32_at(11),
            },
            COMMIT_LEN,
        ))
    }
}

/// One chunk item: the generation it belongs to, then snapshot bytes.
struct Chunk<'a> {
    generation: u32,
    data: &'a [u8],
}

impl<'a> Value<'a> for Chunk<'a> {
    fn serialize_into(&self, buffer: &mut [u8]) -> core::result::Result<usize, SerializationError> {
        let n = CHUNK_HEAD + self.data.len();
        let b = buffer
            .get_mut(..n)
            .ok_or(SerializationError::BufferTooSmall)?;
        b[..CHUNK_HEAD].copy_from_slice(&self.generation.to_le_bytes());
        b[CHUNK_HEAD..].copy_from_slice(self.data);
        Ok(n)
    }

    fn deserialize_from(
        buffer: &'a [u8],
    ) -> core::result::Result<(Self, usize), SerializationError> {
        match buffer {
            [a, b, c, d, data @ ..] => Ok((
                Chunk {
                    generation: u32::from_le_bytes([*a, *b, *c, *d]),
                    data,
                },
                buffer.len(),
            )),
            _ => Err(SerializationError::InvalidFormat),
        }
    }
}

const fn chunk_key(generation: u32, index: usize) -> u16 {
    (((generation & 1) as u16) << INDEX_BITS) | (index as u16 & (MAX_CHUNKS as u16 - 1))
}

type NoCache = Cache<Uncached, Uncached, Uncached, u16>;
type Map<'f, S> = MapStorage<u16, &'f mut S, NoCache>;

fn map<S: NorFlash>(flash: &mut S, range: Range<u32>) -> Result<Map<'_, S>> {
    let config = MapConfig::<&mut S>::try_new(range).map_err(|_| Error::OutOfRange)?;
    Ok(MapStorage::new(flash, config, Cache::new_uncached()))
}

fn storage_err<E>(e: sequential_storage::Error<E>) -> Error {
    use sequential_storage::Error as E;
    match e {
        E::Storage { .. } => Error::Flash,
        E::FullStorage | E::ItemTooBig => Error::CapacityExceeded,
        E::BufferTooSmall(_) | E::BufferTooBig => Error::BufferTooSmall,
        E::SerializationError(SerializationError::BufferTooSmall) => Error::BufferTooSmall,
        _ => Error::StorageCorrupt,
    }
}

fn work<S: NorFlash>(buf: &mut [u8]) -> Result<&mut [u8]> {
    if chunk_len::<S>() == 0 {
        return Err(Error::OutOfRange);
    }
    buf.get_mut(..work_len::<S>()).ok_or(Error::BufferTooSmall)
}

async fn commit<S: NorFlash>(m: &mut Map<'_, S>, buf: &mut [u8]) -> Result<Option<Commit>> {
    m.fetch_item::<Commit>(buf, &COMMIT_KEY)
        .await
        .map_err(storage_err)
}

/// Stores `snapshot` as the new state, replacing the previous one
/// atomically with respect to power loss.
///
/// `range` is the flash region reserved for the snapshot (page-aligned, at
/// least [`region_len`]`::<S>(largest snapshot)` bytes; [`Error::OutOfRange`]
/// when not page-aligned or shorter than two pages); `buf` is a work buffer
/// of at least [`work_len`]`::<S>()` bytes.
///
/// The snapshot is read back before `save` returns. When it does not read
/// back (the range held bytes this module did not write, and the new items
/// went over them), the range is erased and the snapshot stored again: a
/// power cut in that window leaves no snapshot, which the protocol recovers
/// from (the server answers the reused sequence with 409).
///
/// Errors: [`Error::BufferTooSmall`], [`Error::CapacityExceeded`] (the
/// snapshot exceeds [`max_snapshot_len`] of `range`, or the map ran out of
/// space), [`Error::Flash`] (the driver failed; [`load`] then returns the
/// old snapshot, or the new one if the failure came after its commit record
/// was complete), [`Error::StorageCorrupt`] (it did not read back even
/// after the erase).
pub async fn save<S: NorFlash>(
    flash: &mut S,
    range: Range<u32>,
    buf: &mut [u8],
    snapshot: &[u8],
) -> Result<()> {
    let buf = work::<S>(buf)?;
    if snapshot.is_empty() || snapshot.len() > max_snapshot_len::<S>(&range) {
        return Err(Error::CapacityExceeded);
    }
    let mut m = map(flash, range)?;
    let generation = match commit(&mut m, buf).await? {
        Some(c) => c.generation.wrapping_add(1),
        None => 1,
    };
    store(&mut m, buf, snapshot, generation).await?;
    if reads_back(&mut m, buf, snapshot, generation).await? {
        return Ok(());
    }
    // The snapshot did not land: the range holds bytes the map did not
    // write (another firmware's data, or damage) and the new items went
    // over them. Start the range afresh rather than report a save that no
    // load returns.
    warn!("snapshot did not read back; erasing the snapshot range");
    m.erase_all().await.map_err(storage_err)?;
    store(&mut m, buf, snapshot, 1).await?;
    if reads_back(&mut m, buf, snapshot, 1).await? {
        Ok(())
    } else {
        Err(Error::StorageCorrupt)
    }
}

/// Writes the chunks of `snapshot` under `generation`, then its commit record.
async fn store<S: NorFlash>(
    m: &mut Map<'_, S>,
    buf: &mut [u8],
    snapshot: &[u8],
    generation: u32,
) -> Result<()> {
    let mut chunks = 0u16;
    for (i, data) in snapshot.chunks(chunk_len::<S>()).enumerate() {
        let chunk = Chunk { generation, data };
        m.store_item(buf, &chunk_key(generation, i), &chunk)
            .await
            .map_err(storage_err)?;
        chunks = chunks.saturating_add(1);
    }
    let c = Commit {
        generation,
        len: snapshot.len() as u32,
        chunks,
        crc: crc32(snapshot),
    };
    m.store_item(buf, &COMMIT_KEY, &c)
        .await
        .map_err(storage_err)
}

/// True when what [`load`] would return is `snapshot` of `generation`,
/// compared chunk by chunk (no output buffer). Only a driver failure is an
/// error; anything unreadable is `false`.
async fn reads_back<S: NorFlash>(
    m: &mut Map<'_, S>,
    buf: &mut [u8],
    snapshot: &[u8],
    generation: u32,
) -> Result<bool> {
    let fail = |e: Error| if e == Error::Flash { Err(e) } else { Ok(false) };
    let c = match commit(m, buf).await {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(false),
        Err(e) => return fail(e),
    };
    if c.generation != generation || c.len as usize != snapshot.len() || c.crc != crc32(snapshot) {
        return Ok(false);
    }
    let mut at = 0usize;
    for i in 0..usize::from(c.chunks) {
        let chunk = match m
            .fetch_item::<Chunk<'_>>(buf, &chunk_key(generation, i))
            .await
        {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(false),
            Err(e) => return fail(storage_err(e)),
        };
        let end = at + chunk.data.len();
        if chunk.generation != generation || snapshot.get(at..end) != Some(chunk.data) {
            return Ok(false);
        }
        at = end;
    }
    Ok(at == snapshot.len())
}

/// Reads the last completely saved snapshot into `out` and returns its
/// length, or `None` when none was ever saved (blank or foreign flash).
///
/// `buf` must hold [`work_len`]`::<S>()` bytes; `out` must hold the snapshot
/// ([`Error::BufferTooSmall`] otherwise). Damage left by a power cut is
/// repaired on the way. [`Error::StorageCorrupt`] when a committed snapshot
/// does not reassemble (a chunk missing or of another generation, or a CRC
/// mismatch): never a partial snapshot.
pub async fn load<S: NorFlash>(
    flash: &mut S,
    range: Range<u32>,
    buf: &mut [u8],
    out: &mut [u8],
) -> Result<Option<usize>> {
    let buf = work::<S>(buf)?;
    let mut m = map(flash, range)?;
    let Some(c) = commit(&mut m, buf).await? else {
        return Ok(None);
    };
    let len = c.len as usize;
    let dst = out.get_mut(..len).ok_or(Error::BufferTooSmall)?;
    let mut at = 0usize;
    for i in 0..usize::from(c.chunks) {
        let chunk = m
            .fetch_item::<Chunk<'_>>(buf, &chunk_key(c.generation, i))
            .await
            .map_err(storage_err)?
            .ok_or(Error::StorageCorrupt)?;
        if chunk.generation != c.generation {
            return Err(Error::StorageCorrupt);
        }
        let end = at
            .checked_add(chunk.data.len())
            .filter(|&e| e <= len)
            .ok_or(Error::StorageCorrupt)?;
        dst[at..end].copy_from_slice(chunk.data);
        at = end;
    }
    if at != len || crc32(dst) != c.crc {
        return Err(Error::StorageCorrupt);
    }
    Ok(Some(len))
}

/// Erases the whole range (factory reset): afterwards [`load`] returns
/// `None`.
pub async fn erase<S: NorFlash>(flash: &mut S, range: Range<u32>) -> Result<()> {
    let mut m = map(flash, range)?;
    m.erase_all().await.map_err(storage_err)
}

#[cfg(test)]
mod tests;
