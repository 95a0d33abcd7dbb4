//! Power-loss-safe storage of the sync-state snapshot on NOR flash
//! (feature `flash`).
//!
//! The sync state machine serialises its state (device id, sync sequence,
//! acked codes, global cursor) into an opaque blob; this module keeps the
//! latest blob on flash so that a power cut at any moment leaves either the
//! previous blob or the new one, never a mix and never nothing (once a first
//! save has completed).
//!
//! ## How
//! [sequential-storage]'s map, with a single key, on any
//! [`embedded_storage_async::nor_flash::NorFlash`]. A save appends a new item
//! (header with length and CRC, data with CRC) after the previous one; a load
//! returns the last item whose CRCs check. A torn write therefore fails its
//! CRC and the previous item stays the answer. When a page fills, the map
//! moves on to the next page and, before erasing the oldest one, migrates the
//! live item, so there is always one complete copy on flash. Pages are used
//! in turn (wear levelling); an unchanged snapshot costs one item per save.
//!
//! Why sequential-storage rather than ekv: ekv is a log-structured database
//! with transactions, a RAM page cache and a minimum footprint of several
//! pages per file; the device stores one small blob and needs none of that.
//! sequential-storage needs no RAM beyond the caller's buffer (no cache is
//! used here), two erase pages of flash, and documents power-fail safety
//! and auto-repair, which the power-cut test in this module checks at every
//! write.
//!
//! ## Sizes
//! | what | bound |
//! |---|---|
//! | flash range | >= 2 erase pages, page-aligned; more pages = less wear |
//! | snapshot | <= [`max_snapshot_len`]`::<S>()`: one item must fit a page (page - 2 state words - item header), and <= [`MAX_SNAPSHOT`] |
//! | `buf` | >= [`buffer_len`]`::<S>(snapshot_len)`: 1 key byte + the snapshot, rounded up to the flash word |
//!
//! Every function is `async` and must not be cancelled mid-way on real
//! hardware (a cancelled save behaves like a power cut: old or new value).
//!
//! [sequential-storage]: https://docs.rs/sequential-storage

use core::ops::Range;

use embedded_storage_async::nor_flash::NorFlash;
use sequential_storage::cache::{Cache, Uncached};
use sequential_storage::map::{MapConfig, MapStorage};

use crate::{Error, Result};

/// The map key the snapshot is stored under.
const SNAPSHOT_KEY: u8 = 0x5a;

/// Absolute upper bound on a snapshot, whatever the page size (the item
/// length on flash is a `u16`).
pub const MAX_SNAPSHOT: usize = 0xffff - 1;

/// Item header of sequential-storage (length u16 + length CRC u16 + data
/// CRC u32), before word alignment.
const ITEM_HEADER: usize = 8;

const fn round_up(n: usize, word: usize) -> usize {
    if word <= 1 {
        n
    } else {
        n.div_ceil(word) * word
    }
}

/// Size of the work buffer `save` and `load` need for a snapshot of
/// `snapshot_len` bytes on flash `S`: one key byte plus the snapshot,
/// rounded up to `S::WRITE_SIZE`.
pub const fn buffer_len<S: NorFlash>(snapshot_len: usize) -> usize {
    round_up(1 + snapshot_len, S::WRITE_SIZE)
}

/// Largest snapshot flash `S` can hold: an item must fit in one erase page
/// beside the two page-state words and the item header.
pub const fn max_snapshot_len<S: NorFlash>() -> usize {
    let w = if S::WRITE_SIZE == 0 { 1 } else { S::WRITE_SIZE };
    let overhead = 2 * w + round_up(ITEM_HEADER, w) + w; // + key byte's word
    let fit = S::ERASE_SIZE.saturating_sub(overhead);
    if fit < MAX_SNAPSHOT {
        fit
    } else {
        MAX_SNAPSHOT
    }
}

type NoCache = Cache<Uncached, Uncached, Uncached, u8>;

fn map<S: NorFlash>(flash: &mut S, range: Range<u32>) -> Result<MapStorage<u8, &mut S, NoCache>> {
    let config = MapConfig::<&mut S>::try_new(range).map_err(|_| Error::OutOfRange)?;
    Ok(MapStorage::new(flash, config, Cache::new_uncached()))
}

fn storage_err<E>(e: sequential_storage::Error<E>) -> Error {
    use sequential_storage::Error as E;
    match e {
        E::Storage { .. } => Error::Flash,
        E::FullStorage | E::ItemTooBig => Error::CapacityExceeded,
        E::BufferTooSmall(_) | E::BufferTooBig => Error::BufferTooSmall,
        E::SerializationError(_) => Error::BufferTooSmall,
        _ => Error::StorageCorrupt,
    }
}

/// Stores `snapshot` as the new state, replacing the previous one
/// atomically with respect to power loss.
///
/// `range` is the flash region reserved for the snapshot (page-aligned, at
/// least two erase pages; [`Error::OutOfRange`] otherwise); `buf` is a work
/// buffer of at least [`buffer_len`]`::<S>(snapshot.len())` bytes.
///
/// The new item is read back before `save` returns. When it does not read
/// back (the range held bytes this module did not write, so the item went
/// over them), the range is erased and the snapshot stored again: a power
/// cut in that window leaves no snapshot, which the protocol recovers from
/// (the server answers the reused sequence with 409).
///
/// Errors: [`Error::BufferTooSmall`], [`Error::CapacityExceeded`] (the
/// snapshot exceeds [`max_snapshot_len`]), [`Error::Flash`] (the driver
/// failed; the old snapshot is still the one [`load`] returns, or the new
/// one if the failure came after the new item was complete),
/// [`Error::StorageCorrupt`] (it did not read back even after the erase).
pub async fn save<S: NorFlash>(
    flash: &mut S,
    range: Range<u32>,
    buf: &mut [u8],
    snapshot: &[u8],
) -> Result<()> {
    if snapshot.len() > max_snapshot_len::<S>() {
        return Err(Error::CapacityExceeded);
    }
    if buf.len() < buffer_len::<S>(snapshot.len()) {
        return Err(Error::BufferTooSmall);
    }
    let mut m = map(flash, range)?;
    m.store_item::<&[u8]>(buf, &SNAPSHOT_KEY, &snapshot)
        .await
        .map_err(storage_err)?;
    if reads_back(&mut m, buf, snapshot).await? {
        return Ok(());
    }
    // The item did not land: the range holds bytes the map did not write
    // (another firmware's data, or damage), and the new item went over
    // them. Start the range afresh rather than report a save that no load
    // would return.
    warn!("snapshot did not read back; erasing the snapshot range");
    m.erase_all().await.map_err(storage_err)?;
    m.store_item::<&[u8]>(buf, &SNAPSHOT_KEY, &snapshot)
        .await
        .map_err(storage_err)?;
    if reads_back(&mut m, buf, snapshot).await? {
        Ok(())
    } else {
        Err(Error::StorageCorrupt)
    }
}

/// True when the map's current snapshot is `snapshot`.
async fn reads_back<S: NorFlash>(
    m: &mut MapStorage<u8, &mut S, NoCache>,
    buf: &mut [u8],
    snapshot: &[u8],
) -> Result<bool> {
    let item = m
        .fetch_item::<&[u8]>(buf, &SNAPSHOT_KEY)
        .await
        .map_err(storage_err)?;
    Ok(item == Some(snapshot))
}

/// Reads the last completely saved snapshot into `out` and returns its
/// length, or `None` when none was ever saved (blank or foreign flash).
///
/// `buf` must hold [`buffer_len`]`::<S>(n)` bytes for the largest snapshot
/// `n` ever saved in this range; `out` must hold the snapshot
/// ([`Error::BufferTooSmall`] otherwise). Damage left by a power cut is
/// repaired on the way.
pub async fn load<S: NorFlash>(
    flash: &mut S,
    range: Range<u32>,
    buf: &mut [u8],
    out: &mut [u8],
) -> Result<Option<usize>> {
    let mut m = map(flash, range)?;
    let item = m
        .fetch_item::<&[u8]>(buf, &SNAPSHOT_KEY)
        .await
        .map_err(storage_err)?;
    match item {
        None => Ok(None),
        Some(bytes) => {
            let dst = out.get_mut(..bytes.len()).ok_or(Error::BufferTooSmall)?;
            dst.copy_from_slice(bytes);
            Ok(Some(bytes.len()))
        }
    }
}

/// Erases the whole range (factory reset): afterwards [`load`] returns
/// `None`.
pub async fn erase<S: NorFlash>(flash: &mut S, range: Range<u32>) -> Result<()> {
    let mut m = map(flash, range)?;
    m.erase_all().await.map_err(storage_err)
}

#[cfg(test)]
mod tests;
