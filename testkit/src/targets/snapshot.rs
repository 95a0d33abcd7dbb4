//! `snapshot`: restoring a client from arbitrary bytes.

use omega_tv_sync::Error;

use crate::fixtures::{book, config, fix_crc, snapshot_of, Client, SLOTS};

/// `snapshot`: [`SyncClient::restore`]. A restored client must snapshot to
/// bytes that restore to a client with the same snapshot.
pub fn snapshot(data: &[u8]) -> Result<(), Error> {
    let data = &fix_crc(data)[..];
    let c = Client::restore(book(), config(), data)?;
    let once = snapshot_of(&c);
    let again = Client::restore(book(), config(), &once).expect("own snapshot restores");
    assert_eq!(snapshot_of(&again), once, "snapshot is not a fixed point");
    assert!(c.len() <= SLOTS);
    Ok(())
}
