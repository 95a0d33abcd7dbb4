//! Tests of `persist` on a simulated NOR flash. This file holds the flash
//! and the fixtures (a real client's snapshots); `layout` checks sizes,
//! bounds and errors, `power_cut` cuts power at every flash operation.

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

mod layout;
mod power_cut;

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
        let n = c.prepare(&mut tx).unwrap();
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
            signature: None,
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
