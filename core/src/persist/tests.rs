//! Power-cut tests on a simulated NOR flash.

extern crate std;

use super::*;
use core::future::Future;
use core::pin::pin;
use core::task::{Context, Poll, Waker};
use embedded_storage_async::nor_flash::{ErrorType, NorFlashErrorKind, ReadNorFlash};
use std::vec;
use std::vec::Vec;

const WORD: usize = 4;
const PAGE: usize = 1024;
const PAGES: usize = 4;
const RANGE: Range<u32> = 0..(PAGE * PAGES) as u32;

/// How an operation behaves when power fails during it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cut {
    /// Power fails before the operation changes anything.
    Before,
    /// Power fails half-way: a write leaves its first half of words
    /// programmed and the next word half-programmed; an erase leaves the
    /// first half of the range erased.
    Torn,
}

/// A NOR flash in RAM: erase sets 0xff, a write may only program erased
/// words (strict once-only, like flash with ECC), all accesses are checked
/// for alignment and bounds. Power fails during operation number
/// `cut_at` (1-based, writes and erases counted alike); every operation
/// after that fails, as the device is off.
#[derive(Clone)]
struct SimFlash {
    data: Vec<u8>,
    ops: usize,
    cut_at: Option<usize>,
    cut: Cut,
    dead: bool,
    /// Writes to words that were not erased. Legal on NOR flash that
    /// programs by clearing bits (SPI NOR, nRF52, RP2040), illegal on flash
    /// with per-word ECC (STM32L4/G4/H7): counted and reported.
    reprograms: usize,
    /// Writes that would need a bit to go from 0 to 1 without an erase: a
    /// bug in the storage layer on any flash.
    violations: usize,
}

impl SimFlash {
    fn new() -> Self {
        SimFlash {
            data: vec![0xff; PAGE * PAGES],
            ops: 0,
            cut_at: None,
            cut: Cut::Before,
            dead: false,
            reprograms: 0,
            violations: 0,
        }
    }

    /// The same flash bytes after a reboot: a fresh driver, no cut pending.
    fn reboot(&self) -> Self {
        SimFlash {
            data: self.data.clone(),
            ..SimFlash::new()
        }
    }

    fn with_cut(&self, n: usize, cut: Cut) -> Self {
        let mut f = self.reboot();
        f.cut_at = Some(n);
        f.cut = cut;
        f
    }

    /// Counts an operation; returns true when power fails during it.
    fn tick(&mut self) -> core::result::Result<bool, NorFlashErrorKind> {
        if self.dead {
            return Err(NorFlashErrorKind::Other);
        }
        self.ops += 1;
        Ok(self.cut_at == Some(self.ops))
    }

    fn check(
        &self,
        offset: u32,
        len: usize,
        align: usize,
    ) -> core::result::Result<usize, NorFlashErrorKind> {
        let o = offset as usize;
        if o % align != 0 || len % align != 0 {
            return Err(NorFlashErrorKind::NotAligned);
        }
        if o.checked_add(len).is_none_or(|end| end > self.data.len()) {
            return Err(NorFlashErrorKind::OutOfBounds);
        }
        Ok(o)
    }
}

impl ErrorType for SimFlash {
    type Error = NorFlashErrorKind;
}

impl ReadNorFlash for SimFlash {
    const READ_SIZE: usize = 1;

    async fn read(
        &mut self,
        offset: u32,
        bytes: &mut [u8],
    ) -> core::result::Result<(), Self::Error> {
        if self.dead {
            return Err(NorFlashErrorKind::Other);
        }
        let o = self.check(offset, bytes.len(), 1)?;
        bytes.copy_from_slice(&self.data[o..o + bytes.len()]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.data.len()
    }
}

impl NorFlash for SimFlash {
    const WRITE_SIZE: usize = WORD;
    const ERASE_SIZE: usize = PAGE;

    async fn erase(&mut self, from: u32, to: u32) -> core::result::Result<(), Self::Error> {
        let len = (to as usize).saturating_sub(from as usize);
        let o = self.check(from, len, PAGE)?;
        let cut = self.tick()?;
        let done = match (cut, self.cut) {
            (false, _) => len,
            (true, Cut::Before) => 0,
            (true, Cut::Torn) => len / 2,
        };
        self.data[o..o + done].fill(0xff);
        if cut {
            self.dead = true;
            return Err(NorFlashErrorKind::Other);
        }
        Ok(())
    }

    async fn write(&mut self, offset: u32, bytes: &[u8]) -> core::result::Result<(), Self::Error> {
        let o = self.check(offset, bytes.len(), WORD)?;
        let cut = self.tick()?;
        for w in (0..bytes.len()).step_by(WORD) {
            let old = &self.data[o + w..o + w + WORD];
            if old.iter().any(|&b| b != 0xff) {
                self.reprograms += 1;
                if old
                    .iter()
                    .zip(&bytes[w..w + WORD])
                    .any(|(&d, &s)| d & s != s)
                {
                    // Would need a 0 -> 1 transition: impossible without an erase.
                    self.violations += 1;
                }
            }
        }
        let (full_words, partial) = match (cut, self.cut) {
            (false, _) => (bytes.len() / WORD, false),
            (true, Cut::Before) => (0, false),
            (true, Cut::Torn) => (bytes.len() / WORD / 2, true),
        };
        let full = full_words * WORD;
        for (d, s) in self.data[o..o + full].iter_mut().zip(&bytes[..full]) {
            *d &= *s;
        }
        if partial && full < bytes.len() {
            // Half a word programmed: its first two bytes only.
            for i in 0..WORD / 2 {
                self.data[o + full + i] &= bytes[full + i];
            }
        }
        if cut {
            self.dead = true;
            return Err(NorFlashErrorKind::Other);
        }
        Ok(())
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// A snapshot-like blob as the sync module will write it: format byte,
/// device id, sync sequence, global cursor, then acked integer codes. Its
/// length varies with `seq` so that old and new differ in size too.
fn snapshot(seq: u64) -> Vec<u8> {
    let device = b"tv-0123456789abcdef";
    let mut v = vec![1u8, device.len() as u8];
    v.extend_from_slice(device);
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&(seq * 7 + 3).to_le_bytes()); // global cursor
    let codes = 60 + (seq as usize * 37) % 140;
    for i in 0..codes {
        let c = ((i as i64 * 131 + seq as i64 * 17) % 2001 - 1000) as i16;
        v.extend_from_slice(&c.to_le_bytes());
    }
    v
}

const BUF: usize = 512;

fn save_ok(f: &mut SimFlash, blob: &[u8]) {
    let mut buf = [0u8; BUF];
    block_on(save(f, RANGE, &mut buf, blob)).unwrap();
}

fn load_now(f: &mut SimFlash) -> Result<Option<Vec<u8>>> {
    let mut buf = [0u8; BUF];
    let mut out = [0u8; BUF];
    block_on(load(f, RANGE, &mut buf, &mut out)).map(|o| o.map(|n| out[..n].to_vec()))
}

#[test]
fn round_trip_blank_and_erase() {
    let mut f = SimFlash::new();
    assert_eq!(load_now(&mut f), Ok(None));
    for seq in 0..50 {
        let s = snapshot(seq);
        save_ok(&mut f, &s);
        assert_eq!(load_now(&mut f.reboot()).unwrap().unwrap(), s);
    }
    assert_eq!((f.reprograms, f.violations), (0, 0));
    block_on(erase(&mut f, RANGE)).unwrap();
    assert_eq!(load_now(&mut f), Ok(None));
}

#[test]
fn bounds_are_checked() {
    let mut f = SimFlash::new();
    let s = snapshot(1);
    let mut small = [0u8; 16];
    assert_eq!(
        block_on(save(&mut f, RANGE, &mut small, &s)),
        Err(Error::BufferTooSmall)
    );
    let max = max_snapshot_len::<SimFlash>();
    assert!(max > 900 && max < PAGE, "{max}");
    let huge = vec![7u8; max + 1];
    let mut big = vec![0u8; buffer_len::<SimFlash>(max + 1)];
    assert_eq!(
        block_on(save(&mut f, RANGE, &mut big, &huge)),
        Err(Error::CapacityExceeded)
    );
    // The largest allowed snapshot really fits.
    let largest = vec![9u8; max];
    let mut out = vec![0u8; max];
    block_on(save(&mut f, RANGE, &mut big, &largest)).unwrap();
    assert_eq!(
        block_on(load(&mut f, RANGE, &mut big, &mut out)),
        Ok(Some(max))
    );
    assert_eq!(out, largest);
    // Output buffer too small for the stored snapshot.
    let mut tiny_out = [0u8; 8];
    assert_eq!(
        block_on(load(&mut f, RANGE, &mut big, &mut tiny_out)),
        Err(Error::BufferTooSmall)
    );
    // Misaligned or too small ranges.
    let mut buf = [0u8; BUF];
    let mut out = [0u8; BUF];
    assert_eq!(
        block_on(load(&mut f, 100..4096, &mut buf, &mut out)),
        Err(Error::OutOfRange)
    );
    assert_eq!(
        block_on(load(&mut f, 0..1024, &mut buf, &mut out)),
        Err(Error::OutOfRange)
    );
    assert_eq!(buffer_len::<SimFlash>(10), 12);
    assert_eq!(buffer_len::<SimFlash>(11), 12);
    assert_eq!(buffer_len::<SimFlash>(12), 16);
}

#[test]
fn flash_driver_errors_are_reported() {
    let mut f = SimFlash::new();
    save_ok(&mut f, &snapshot(1));
    f.dead = true;
    let mut buf = [0u8; BUF];
    assert_eq!(
        block_on(save(&mut f, RANGE, &mut buf, &snapshot(2))),
        Err(Error::Flash)
    );
}

/// Cuts power at every flash operation of a save, for many fill states of
/// the flash (so that plain appends, page changes, migrations and erases
/// are all among the cut points), in both cut modes. After each cut the
/// device reboots and loads: the result must be exactly the old snapshot
/// or exactly the new one, and saving again must work.
#[test]
fn power_cut_at_every_write_recovers_old_or_new() {
    let mut cut_points = 0usize;
    let mut saw_old = 0usize;
    let mut saw_new = 0usize;
    let mut max_ops = 0usize;
    let mut erase_saves = 0usize;
    let mut reprograms = 0usize;

    // First save ever, on blank flash: nothing or the new snapshot.
    let blank = SimFlash::new();
    let first = snapshot(0);
    let mut dry = blank.reboot();
    save_ok(&mut dry, &first);
    for n in 1..=dry.ops {
        for cut in [Cut::Before, Cut::Torn] {
            let mut f = blank.with_cut(n, cut);
            let mut buf = [0u8; BUF];
            assert!(block_on(save(&mut f, RANGE, &mut buf, &first)).is_err());
            let got = load_now(&mut f.reboot()).unwrap();
            assert!(got.is_none() || got.as_deref() == Some(&first[..]));
            cut_points += 1;
        }
    }

    // Then every later save, through several wraps of the page ring.
    let mut base = SimFlash::new();
    save_ok(&mut base, &first);
    for seq in 1..40u64 {
        let old = snapshot(seq - 1);
        let new = snapshot(seq);
        let mut dry = base.reboot();
        save_ok(&mut dry, &new);
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
                let mut buf = [0u8; BUF];
                let r = block_on(save(&mut f, RANGE, &mut buf, &new));
                assert!(r.is_err(), "seq {seq}: cut at op {n} of {ops} not reported");
                let mut rebooted = f.reboot();
                let got = load_now(&mut rebooted);
                let got = match got {
                    Ok(Some(g)) => g,
                    other => panic!("seq {seq}, cut {cut:?} at op {n}/{ops}: {other:?}"),
                };
                if got == old {
                    saw_old += 1;
                } else if got == new {
                    saw_new += 1;
                } else {
                    panic!("seq {seq}, cut {cut:?} at op {n}/{ops}: a mix of old and new");
                }
                // The device keeps working: the next save and load succeed.
                let next = snapshot(seq + 1000);
                save_ok(&mut rebooted, &next);
                assert_eq!(load_now(&mut rebooted.reboot()).unwrap().unwrap(), next);
                assert_eq!(rebooted.violations, 0, "seq {seq}: a 0 bit had to become 1");
                assert_eq!(f.violations, 0);
                reprograms += rebooted.reprograms + f.reprograms;
                cut_points += 1;
            }
        }
        base = dry.reboot();
    }
    std::println!(
        "power-cut: {cut_points} cut points (writes and erases, clean and torn), \
         {saw_old} recovered old, {saw_new} recovered new, up to {max_ops} flash ops per save, \
         {erase_saves} saves erased a page, {reprograms} torn words re-programmed on recovery"
    );
    assert!(saw_old > 0 && saw_new > 0);
    assert!(
        erase_saves > 0,
        "no save reached a page erase: flash too large for the test"
    );
}
