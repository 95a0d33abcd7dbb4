//! Sizes that follow the page, bounds, driver errors, damaged chunks.

use super::*;

#[test]
fn sizes_follow_the_page() {
    // 1 KiB pages, 4-byte words: two chunk items per page.
    assert_eq!(work_len::<SimFlash>(), 500);
    assert_eq!(chunk_len::<SimFlash>(), 494);
    assert_eq!(region_len::<SimFlash>(494 * 4), 7 * PAGE);
    assert_eq!(region_len::<SimFlash>(494 * 4 + 1), 9 * PAGE);
    assert_eq!(max_snapshot_len::<SimFlash>(&RANGE), 6 * 494 * 2);
    assert_eq!(max_snapshot_len::<SimFlash>(&(0..2 * PAGE as u32)), 0);
    // A real client's snapshot spans several pages.
    let s = snapshots(1);
    assert!(s[0].len() > 3 * PAGE, "{}", s[0].len());
}

#[test]
fn round_trip_blank_and_erase() {
    let mut f = SimFlash::new();
    assert_eq!(load_now(&mut f), Ok(None));
    let snaps = snapshots(6);
    for _ in 0..4 {
        for s in &snaps {
            save_ok(&mut f, s);
            assert_eq!(load_now(&mut f.reboot()).unwrap().unwrap(), *s);
        }
    }
    assert_eq!((f.reprograms, f.violations), (0, 0));
    // Smaller after larger: the stale chunks of the larger one are ignored.
    let small: Vec<u8> = snaps[0][..100].to_vec();
    save_ok(&mut f, &small);
    assert_eq!(load_now(&mut f).unwrap().unwrap(), small);
    block_on(erase(&mut f, RANGE)).unwrap();
    assert_eq!(load_now(&mut f), Ok(None));
}

#[test]
fn bounds_are_checked() {
    let mut f = SimFlash::new();
    let s = snapshots(1).remove(0);
    let mut small = [0u8; 16];
    assert_eq!(
        block_on(save(&mut f, RANGE, &mut small, &s)),
        Err(Error::BufferTooSmall)
    );
    let max = max_snapshot_len::<SimFlash>(&RANGE);
    let huge = vec![7u8; max + 1];
    assert_eq!(
        block_on(save(&mut f, RANGE, &mut work(), &huge)),
        Err(Error::CapacityExceeded)
    );
    assert_eq!(
        block_on(save(&mut f, RANGE, &mut work(), &[])),
        Err(Error::CapacityExceeded)
    );
    // The largest allowed snapshot really fits, again and again.
    for fill in 0..3u8 {
        let largest = vec![9u8 ^ fill; max];
        save_ok(&mut f, &largest);
        let mut out = vec![0u8; max];
        assert_eq!(
            block_on(load(&mut f, RANGE, &mut work(), &mut out)),
            Ok(Some(max))
        );
        assert_eq!(out, largest);
    }
    // Output buffer too small for the stored snapshot.
    let mut tiny_out = [0u8; 8];
    assert_eq!(
        block_on(load(&mut f, RANGE, &mut work(), &mut tiny_out)),
        Err(Error::BufferTooSmall)
    );
    // Misaligned or too small ranges.
    let mut out = vec![0u8; max];
    assert_eq!(
        block_on(load(&mut f, 100..4096, &mut work(), &mut out)),
        Err(Error::OutOfRange)
    );
    assert_eq!(
        block_on(load(&mut f, 0..1024, &mut work(), &mut out)),
        Err(Error::OutOfRange)
    );
}

#[test]
fn flash_driver_errors_are_reported() {
    let s = snapshots(2);
    let mut f = SimFlash::new();
    save_ok(&mut f, &s[0]);
    f.dead = true;
    assert_eq!(
        block_on(save(&mut f, RANGE, &mut work(), &s[1])),
        Err(Error::Flash)
    );
}

#[test]
fn a_damaged_chunk_is_an_error_not_a_partial_snapshot() {
    let s = snapshots(1).remove(0);
    let mut f = SimFlash::new();
    save_ok(&mut f, &s);
    // Flip one data bit in the middle of the first chunk item: its item CRC
    // fails, the chunk is missing, and load refuses the snapshot.
    let at = f.data.iter().position(|&b| b != 0xff).unwrap() + 40;
    f.data[at] ^= 0x10;
    assert_eq!(load_now(&mut f.reboot()), Err(Error::StorageCorrupt));
}
