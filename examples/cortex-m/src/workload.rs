//! What the firmware runs, step by step; every step checks its result.

use core::future::Future;
use core::pin::pin;
use core::task::{Context, Poll, Waker};

use omega_tv_sync::sync::persist;
use omega_tv_sync::types::Name;
use omega_tv_sync::{Category, DeviceId, Embedding, Error, Pattern, PatternId, QualityFilter, DIM};
use postcard::experimental::max_size::MaxSize;
use serde::{Deserialize, Serialize};
use static_cell::StaticCell;

use crate::ramflash::{RamFlash, PAGE, PAGES};
use crate::Checks;

use crate::patterns::expected::{NEAREST, NEXT_COS, ROWS};
use crate::patterns::{row, PATTERNS};

/// Prints the target's sizes of the core's per-pattern values (for
/// `docs/memory.md`).
pub fn print_sizes() {
    use core::mem::size_of;
    use omega_tv_sync::sync::SyncClient;
    cortex_m_semihosting::hprintln!(
        "size_of Pattern={} Embedding={} DeviceId={} record_postcard_max={}",
        size_of::<Pattern>(),
        size_of::<Embedding>(),
        size_of::<DeviceId>(),
        Record::POSTCARD_MAX_SIZE
    );
    cortex_m_semihosting::hprintln!(
        "size_of SyncClient<1>={} <8>={} <64>={}; MAX_SNAPSHOT_LEN <1>={} <8>={} <64>={}",
        size_of::<SyncClient<'static, 1>>(),
        size_of::<SyncClient<'static, 8>>(),
        size_of::<SyncClient<'static, 64>>(),
        SyncClient::<'static, 1>::MAX_SNAPSHOT_LEN,
        SyncClient::<'static, 8>::MAX_SNAPSHOT_LEN,
        SyncClient::<'static, 64>::MAX_SNAPSHOT_LEN,
    );
    cortex_m_semihosting::hprintln!(
        "persist: work_len={} chunk_len={} region_len(MAX_SNAPSHOT_LEN <8>)={} (1 KiB pages)",
        persist::work_len::<RamFlash>(),
        persist::chunk_len::<RamFlash>(),
        persist::region_len::<RamFlash>(SyncClient::<'static, 8>::MAX_SNAPSHOT_LEN),
    );
}

/// Runs every step.
pub fn run(c: &mut Checks) {
    embeddings(c);
    patterns_and_filter(c);
    postcard_round_trip(c);
    persistence(c);
    // The sync cycle's own stack peak: paint the stack again first. Every
    // step is `#[inline(never)]`, so that the frames of the steps before do
    // not count towards the sync cycle's peak.
    crate::stack::repaint();
    crate::sync_cycle::run(c, PATTERNS);
    cortex_m_semihosting::hprintln!("sync_cycle_stack_peak_bytes={}", crate::stack::peak_bytes());
}

/// Decodes row `i` (validated). Returns the error for a bad row.
fn embedding(i: usize) -> Result<Embedding, Error> {
    Embedding::from_le_bytes(row(i))
}

#[inline(never)]
fn embeddings(c: &mut Checks) {
    let mut valid = 0;
    let mut cos_ok = true;
    for (i, &want) in NEXT_COS.iter().enumerate() {
        let (Ok(a), Ok(b)) = (embedding(i), embedding((i + 1) % ROWS)) else {
            continue;
        };
        valid += 1;
        cos_ok &= (a.dot(&b) as f64 - want).abs() < 1e-5;
    }
    c.check("16 real embeddings validate", valid == ROWS);
    c.check("f32 cosines match the host's f64 within 1e-5", cos_ok);

    // Nearest neighbour of each row, where the host saw a clear margin.
    let mut nn_ok = true;
    let mut nn_checked = 0;
    for (i, &want) in NEAREST.iter().enumerate() {
        if want == usize::MAX {
            continue;
        }
        let Ok(a) = embedding(i) else {
            nn_ok = false;
            continue;
        };
        let mut best = (f32::MIN, usize::MAX);
        for j in (0..ROWS).filter(|&j| j != i) {
            if let Ok(b) = embedding(j) {
                let s = a.dot(&b);
                if s > best.0 {
                    best = (s, j);
                }
            }
        }
        nn_ok &= best.1 == want;
        nn_checked += 1;
    }
    c.check("nearest neighbours match the host", nn_ok && nn_checked > 0);

    // Corrupted copies are rejected with the right error.
    let mut buf = [0u8; DIM * 4];
    buf.copy_from_slice(row(3));
    buf[40..44].copy_from_slice(&f32::NAN.to_le_bytes());
    c.check(
        "NaN rejected",
        Embedding::from_le_bytes(&buf).err() == Some(Error::NonFinite),
    );
    buf.copy_from_slice(row(3));
    for ch in buf.chunks_exact_mut(4) {
        let x = f32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]) * 1.01;
        ch.copy_from_slice(&x.to_le_bytes());
    }
    c.check(
        "norm 1.01 rejected",
        Embedding::from_le_bytes(&buf).err() == Some(Error::NotUnitNorm),
    );
    c.check(
        "short row rejected",
        Embedding::from_le_bytes(&buf[..DIM * 4 - 4]).err() == Some(Error::WrongLength),
    );
}

#[inline(never)]
fn patterns_and_filter(c: &mut Checks) {
    let filter = QualityFilter::DEFAULT;
    let mut built = 0;
    let mut passing = 0;
    let mut ids_ok = true;
    for i in 0..ROWS {
        let mut id = [b'p', b'-', b'0', b'0'];
        id[2] += (i / 10) as u8;
        id[3] += (i % 10) as u8;
        let Ok(id_str) = core::str::from_utf8(&id) else {
            ids_ok = false;
            continue;
        };
        let (Ok(id), Ok(cat), Ok(e)) = (
            PatternId::new(id_str),
            Category::new(if i % 2 == 0 { "drama" } else { "comedy" }),
            embedding(i),
        ) else {
            ids_ok = false;
            continue;
        };
        // Rates 0, 1/15, ..., 1; samples 0, 2, ..., 30.
        let rate = i as f32 / (ROWS - 1) as f32;
        if let Ok(p) = Pattern::new(id, e, rate, 2 * i as u32, cat) {
            built += 1;
            if filter.passes(&p) {
                passing += 1;
            }
        }
    }
    // rate >= 0.7 needs i >= 10.5 -> i in 11..=15; samples >= 10 needs i >= 5.
    c.check("16 patterns built", built == ROWS && ids_ok);
    c.check("quality filter passes exactly 5", passing == 5);
    let bad_rate = embedding(0)
        .and_then(|e| Pattern::new(PatternId::new("x")?, e, 1.5, 10, Category::new("drama")?));
    c.check(
        "rate 1.5 rejected",
        bad_rate.err() == Some(Error::RateOutOfRange),
    );
    c.check(
        "id with a space rejected",
        PatternId::new("a b").err() == Some(Error::InvalidChar),
    );
}

/// A record shaped like what the device persists (device id, sequence,
/// per-pattern metadata), for the postcard round trip.
#[derive(Serialize, Deserialize, MaxSize, PartialEq, Debug)]
struct Record {
    device: DeviceId,
    seq: u64,
    pattern: PatternId,
    category: Category,
    success_rate: f32,
    sample_count: u32,
    first_values: [f32; 4],
}

fn record(seq: u64) -> Result<Record, Error> {
    let e = embedding((seq as usize) % ROWS)?;
    let v = e.as_array();
    Ok(Record {
        device: DeviceId::new("stb-0001-qemu-mps2-an386")?,
        seq,
        pattern: PatternId::new("p-07")?,
        category: Name::new("documentary")?,
        success_rate: 0.75,
        sample_count: 42,
        first_values: [v[0], v[1], v[2], v[3]],
    })
}

#[inline(never)]
fn postcard_round_trip(c: &mut Checks) {
    let mut buf = [0u8; Record::POSTCARD_MAX_SIZE];
    let ok = record(7).ok().is_some_and(|r| {
        postcard::to_slice(&r, &mut buf)
            .ok()
            .and_then(|bytes| postcard::from_bytes::<Record>(bytes).ok())
            .is_some_and(|back| back == r)
    });
    c.check("postcard round trip in a MaxSize buffer", ok);
    // A truncated encoding is an error, not a panic.
    let trunc = record(7)
        .ok()
        .and_then(|r| postcard::to_slice(&r, &mut buf).ok().map(|b| b.len()))
        .is_some_and(|n| postcard::from_bytes::<Record>(&buf[..n - 1]).is_err());
    c.check("truncated postcard rejected", trunc);
}

/// Polls a future that never waits (RAM flash) to completion.
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// Largest snapshot in this run.
const SNAP: usize = 256;

fn snapshot(seq: u64, out: &mut [u8; SNAP]) -> usize {
    let Ok(r) = record(seq) else { return 0 };
    let n = postcard::to_slice(&r, out).map(|b| b.len()).unwrap_or(0);
    // Acked codes stand-in: deterministic bytes after the record.
    let end = n + 64 + (seq as usize % 64);
    for (i, b) in out[n..end].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37) ^ seq as u8;
    }
    end
}

#[inline(never)]
fn persistence(c: &mut Checks) {
    static FLASH: StaticCell<[u8; PAGE * PAGES]> = StaticCell::new();
    let mut flash = RamFlash::new(FLASH.init([0xff; PAGE * PAGES]));
    let range = 0..(PAGE * PAGES) as u32;
    let mut work = [0u8; persist::work_len::<RamFlash>()];
    let mut out = [0u8; SNAP];
    c.check(
        "blank flash loads None",
        block_on(persist::load(
            &mut flash,
            range.clone(),
            &mut work,
            &mut out,
        )) == Ok(None),
    );
    let mut ok = true;
    let mut snap = [0u8; SNAP];
    for seq in 0..40 {
        let n = snapshot(seq, &mut snap);
        ok &= n > 0
            && block_on(persist::save(
                &mut flash,
                range.clone(),
                &mut work,
                &snap[..n],
            ))
            .is_ok();
        let got = block_on(persist::load(
            &mut flash,
            range.clone(),
            &mut work,
            &mut out,
        ));
        ok &= got == Ok(Some(n)) && out[..n] == snap[..n];
    }
    c.check("40 snapshots saved and loaded back (page ring wraps)", ok);
}
