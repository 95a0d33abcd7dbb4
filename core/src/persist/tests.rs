//! Power-cut tests on a simulated NOR flash.

extern crate std;

use super::*;
use core::future::Future;
use core::pin::pin;
use core::task::{Context, Poll, Waker};
use embedded_storage_async::nor_flash::{ErrorType, NorFlashErrorKind, ReadNorFlash};
use std::string::String;
use std::vec;
use std::vec::Vec;

use crate::codec::minilm_v1;
use crate::sync::{Config, Outcome, SyncClient};
use crate::wire::{Ack, DownloadHead, FrameReader, FrameWriter, Kind, Record};
use crate::{Category, DeviceId, Embedding, Pattern, PatternId, Response, DIM};

const WORD: usize = 4;
const PAGE: usize = 1024;
const PAGES: usize = 16;
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

const N: usize = 8;
type Client = SyncClient<'static, N>;

fn vectors() -> Vec<Embedding> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/minilm/patterns_public.f32"
    );
    let bytes = std::fs::read(path).expect("real vectors");
    bytes
        .chunks_exact(DIM * 4)
        .take(64)
        .map(|c| Embedding::from_le_bytes(c).expect("unit vector"))
        .collect()
}

fn config() -> Config {
    Config::new(DeviceId::new("stb-persist-0001").unwrap())
}

/// A real client after `steps` syncs: `N` patterns from the real vectors,
/// drifting (another real vector mixed in) at every step, each step acked
/// by a download frame with the next revisions and a global version that
/// moves by 3. Returns the client's snapshots after every step.
fn snapshots(steps: usize) -> Vec<Vec<u8>> {
    let v = vectors();
    let mut c = Client::new(minilm_v1().unwrap(), config());
    let mut out = Vec::new();
    let mut revs: std::collections::HashMap<String, u32> = Default::default();
    for step in 0..steps {
        for p in 0..N {
            // Pattern p follows vector p, pulled towards vector 8 + step.
            let mut x = [0f32; DIM];
            let k = 1.0 / (1.0 + step as f32);
            for (d, xi) in x.iter_mut().enumerate() {
                *xi = v[p].as_array()[d] + 0.3 * k * v[N + step].as_array()[d];
            }
            let e = Embedding::normalize(x).unwrap();
            let pat = Pattern::new(
                PatternId::new(&std::format!("pat-{p}")).unwrap(),
                e,
                0.8,
                20 + step as u32,
                Category::new("drama").unwrap(),
            )
            .unwrap();
            c.upsert(&pat, step as u64).unwrap();
        }
        let mut tx = vec![0u8; 16 * 1024];
        let n = c.prepare(step as u64, &mut tx).unwrap();
        let req = FrameReader::parse(&tx[..n]).unwrap();
        let mut rx = vec![0u8; 4096];
        let mut w = FrameWriter::new(&mut rx, Kind::Download, req.codebook_id()).unwrap();
        w.push(&Record::DownloadHead(DownloadHead {
            seq: c.seq(),
            global_version: 3 * (step as u64 + 1),
            more: false,
            reset: false,
            next_sync_s: 300,
        }))
        .unwrap();
        for r in req.records() {
            if let Record::Pattern(p) = r.unwrap() {
                let rev = revs.entry(p.id.as_str().into()).or_default();
                *rev += 1;
                w.push(&Record::Ack(Ack {
                    id: p.id.clone(),
                    revision: *rev,
                }))
                .unwrap();
            }
        }
        let body = w.finish().unwrap().to_vec();
        let resp = Response {
            status: 200,
            body_len: body.len(),
            retry_after_s: None,
        };
        let o = c
            .apply(&tx[..n], resp, &body, step as u64, &mut ())
            .unwrap();
        assert!(
            matches!(o, Outcome::Synced(s) if s.acked == N as u16),
            "{o:?}"
        );
        let mut snap = vec![0u8; Client::MAX_SNAPSHOT_LEN];
        let len = c.snapshot(&mut snap).unwrap();
        snap.truncate(len);
        out.push(snap);
    }
    out
}

/// What the sync state must survive: sequence, global version and every
/// pattern's acked revision and codes.
type State = (u64, u64, Vec<(String, u32, Vec<i16>)>);

fn state_of(snapshot: &[u8]) -> State {
    let c = Client::restore(minilm_v1().unwrap(), config(), snapshot).unwrap();
    let mut pats: Vec<(String, u32, Vec<i16>)> = c
        .ids()
        .map(|id| {
            let (rev, codes) = c.acked(id).unwrap();
            (id.as_str().into(), rev, codes.to_vec())
        })
        .collect();
    pats.sort();
    (c.seq(), c.global_version(), pats)
}

fn work() -> Vec<u8> {
    vec![0u8; work_len::<SimFlash>()]
}

fn save_ok(f: &mut SimFlash, blob: &[u8]) {
    block_on(save(f, RANGE, &mut work(), blob)).unwrap();
}

fn load_now(f: &mut SimFlash) -> Result<Option<Vec<u8>>> {
    let mut out = vec![0u8; Client::MAX_SNAPSHOT_LEN];
    block_on(load(f, RANGE, &mut work(), &mut out)).map(|o| o.map(|n| out[..n].to_vec()))
}

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
