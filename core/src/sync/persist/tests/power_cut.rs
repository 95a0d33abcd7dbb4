//! Power cut at every flash operation of a save: the old or the new state survives.

use super::*;

/// Cuts power at every flash operation (write or erase) of saving a real
/// sync client's snapshot, for many fill states of the flash (so that chunk
/// appends, page changes, migrations and erases are all among the cut
/// points), in both cut modes. After each cut the device reboots, loads and
/// restores a `SyncClient`: its sequence, global version and acked
/// revisions and codes must be exactly the old state or exactly the new
/// one; then saving again must work.
#[test]
fn power_cut_at_every_write_recovers_old_or_new() {
    let snaps = snapshots(8);
    let states: Vec<State> = snaps.iter().map(|s| state_of(s)).collect();
    for w in states.windows(2) {
        assert!(w[0].0 < w[1].0 && w[0].1 < w[1].1 && w[0].2 != w[1].2);
    }
    let mut cut_points = 0usize;
    let mut saw_old = 0usize;
    let mut saw_new = 0usize;
    let mut saw_none = 0usize;
    let mut max_ops = 0usize;
    let mut erase_saves = 0usize;
    let mut reprograms = 0usize;

    // First save ever, on blank flash: nothing or the new snapshot.
    let blank = SimFlash::new();
    let mut dry = blank.reboot();
    save_ok(&mut dry, &snaps[0]);
    for n in 1..=dry.ops {
        for cut in [Cut::Before, Cut::Torn] {
            let mut f = blank.with_cut(n, cut);
            assert!(block_on(save(&mut f, RANGE, &mut work(), &snaps[0])).is_err());
            match load_now(&mut f.reboot()).unwrap() {
                None => saw_none += 1,
                Some(g) => {
                    assert_eq!(state_of(&g), states[0]);
                    saw_new += 1;
                }
            }
            cut_points += 1;
        }
    }

    // Then every later save, through several wraps of the page ring.
    let mut base = SimFlash::new();
    save_ok(&mut base, &snaps[0]);
    let mut i = 0usize;
    for round in 0..3 {
        for k in 1..snaps.len() {
            i += 1;
            let (old, new) = (&snaps[k - 1], &snaps[k]);
            let mut dry = base.reboot();
            save_ok(&mut dry, new);
            assert_eq!((dry.reprograms, dry.violations), (0, 0));
            let ops = dry.ops;
            max_ops = max_ops.max(ops);
            if dry
                .data
                .chunks(PAGE)
                .zip(base.data.chunks(PAGE))
                .any(|(a, b)| a.iter().all(|&x| x == 0xff) && b.iter().any(|&x| x != 0xff))
            {
                erase_saves += 1;
            }
            for n in 1..=ops {
                for cut in [Cut::Before, Cut::Torn] {
                    let mut f = base.with_cut(n, cut);
                    let r = block_on(save(&mut f, RANGE, &mut work(), new));
                    assert!(r.is_err(), "save {i}: cut at op {n} of {ops} not reported");
                    let mut rebooted = f.reboot();
                    let got = match load_now(&mut rebooted) {
                        Ok(Some(g)) => g,
                        other => panic!("save {i}, cut {cut:?} at op {n}/{ops}: {other:?}"),
                    };
                    // Byte-exact, and the restored client is exactly one state.
                    let st = state_of(&got);
                    if got == *old && st == states[k - 1] {
                        saw_old += 1;
                    } else if got == *new && st == states[k] {
                        saw_new += 1;
                    } else {
                        panic!("save {i}, cut {cut:?} at op {n}/{ops}: neither old nor new");
                    }
                    // The device keeps working: the next save and load succeed.
                    let next = &snaps[(k + 1) % snaps.len()];
                    save_ok(&mut rebooted, next);
                    assert_eq!(load_now(&mut rebooted.reboot()).unwrap().unwrap(), *next);
                    assert_eq!(rebooted.violations, 0, "save {i}: a 0 bit had to become 1");
                    assert_eq!(f.violations, 0);
                    reprograms += rebooted.reprograms + f.reprograms;
                    cut_points += 1;
                }
            }
            base = dry.reboot();
        }
        // Wrap around: the last snapshot is followed by the first again.
        if round < 2 {
            save_ok(&mut base, &snaps[0]);
        }
    }
    std::println!(
        "power-cut: {cut_points} cut points (every write and erase of {} saves of a \
         real SyncClient snapshot of {}..{} B in {}-B chunks, clean and torn), \
         {saw_old} recovered old, {saw_new} recovered new, {saw_none} nothing (first save), \
         up to {max_ops} flash ops per save, {erase_saves} saves erased a page, \
         {reprograms} torn words re-programmed on recovery",
        i + 1,
        snaps.iter().map(|s| s.len()).min().unwrap_or(0),
        snaps.iter().map(|s| s.len()).max().unwrap_or(0),
        chunk_len::<SimFlash>(),
    );
    assert!(saw_old > 0 && saw_new > 0 && saw_none > 0);
    assert!(
        erase_saves > 0,
        "no save reached a page erase: flash too large for the test"
    );
}
