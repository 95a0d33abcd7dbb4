//! `flash`: loading the snapshot from an arbitrary NOR flash image.

use omega_tv_sync::Error;

use crate::fixtures::{book, config, snapshot_of, Client};
use crate::ram_flash::{block_on, RamFlash, PAGE, PAGES};

/// `flash`: [`persist::load`](omega_tv_sync::sync::persist::load) from an
/// arbitrary flash image (the input, 16 KiB at most, padded with erased bytes), as after
/// any power cut or corruption, then `restore` of what it returns. When the
/// image loads, saving a real snapshot over it must load back exactly.
/// Accepted means: a snapshot was found and restored.
#[cfg(feature = "flash")]
pub fn flash(data: &[u8]) -> Result<(), Error> {
    use omega_tv_sync::sync::persist;
    let mut image = vec![0xffu8; PAGE * PAGES];
    let n = data.len().min(image.len());
    image[..n].copy_from_slice(&data[..n]);
    let mut f = RamFlash(image);
    let range = 0..(PAGE * PAGES) as u32;
    let mut buf = vec![0u8; persist::work_len::<RamFlash>()];
    let mut out = vec![0u8; 8 * PAGE];
    let loaded = block_on(persist::load(&mut f, range.clone(), &mut buf, &mut out))?;
    let restored = match loaded {
        Some(len) => {
            assert!(len <= out.len());
            Client::restore(book(), config(), &out[..len]).map(|_| ())
        }
        None => Err(Error::Truncated),
    };
    // A small real snapshot (an empty client's) fits a page.
    let snap = snapshot_of(&Client::new(book(), config()));
    if block_on(persist::save(&mut f, range.clone(), &mut buf, &snap)).is_ok() {
        let got =
            block_on(persist::load(&mut f, range, &mut buf, &mut out)).expect("loads after a save");
        assert_eq!(got.map(|n| &out[..n]), Some(&snap[..]), "saved != loaded");
    }
    restored
}
