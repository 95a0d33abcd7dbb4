//! The run's main phase: TVs on a virtual clock, each syncing when the
//! server says, scheduled by due time with a bounded number of exchanges in
//! flight. The pieces: `config` (settings and results), `tv` (the TV),
//! `exchange` (one exchange), `ledger` (what sessions were told), `twin`
//! (stale twin boxes) and `settle` (the phase after the run).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use super::nodes::Nodes as Net;
use omega_tv_sync::codec::Codebook;

use super::config::{RunContext, SimConfig, SimResult, Tally};
use super::exchange::{feed_page, Session, Step, MAX_PAGES, TX_BYTES};
use super::faults::{Exchange, Faulty};
use super::model::Catalog;
use super::rng::Rng;
use super::tv::{Client, Tv};
use super::twin::run_twin;

/// Per-task result.
struct Done {
    index: usize,
    tv: Box<Tv>,
    tally: Tally,
    synced: bool,
}

/// One scheduled step of one TV: a pending stale twin syncs first, then the
/// TV lives until `due`, syncs (or resends its request in flight), and
/// fetches further pages while the server says `more`.
///
/// Everything random here comes from the TV's own streams, so a TV's
/// behaviour depends on the seed and the server's answers, not on how the
/// scheduler interleaves TVs.
async fn step(mut tv: Box<Tv>, i: usize, due: u64, ctx: RunContext, net: Net) -> Done {
    let RunContext { cat, cfg, t0, .. } = &ctx;
    let mut tally = Tally::default();
    let idle = tv.client.in_flight().is_none();
    if idle && tv.twin.as_ref().is_some_and(|t| tv.synced >= t.1 + 2) {
        if let Some((snap, _)) = tv.twin.take() {
            run_twin(&ctx, &mut tv, &snap, due, net.clone(), &mut tally).await;
        }
    }
    if idle {
        tv.live_until(cat, due, cfg.watch_rate);
    }
    let mut tx = tv.tx.take().unwrap_or_else(|| vec![0u8; TX_BYTES]);
    tv.attempts += 1;
    let mut t = Faulty {
        inner: net,
        drop_p: cfg.faults.drop,
        rng: Rng::new(cfg.seed ^ 0xD0D0, (i as u64) << 32 | u64::from(tv.attempts)),
        last: Exchange::default(),
    };
    let boot = tv.synced == 0;
    let tvr = &mut *tv;
    let (first, mut s) = Session {
        who: "orig",
        client: &mut tvr.client,
        transport: &mut t,
        tx: &mut tx,
        ledger: &mut tvr.ledger,
        globals: &mut tvr.globals,
    }
    .attempt(&mut tally.counters, due, *t0)
    .await;
    s.boot = boot;
    tally.samples.push(s);
    let synced = matches!(first, Step::Synced { .. });
    if let Step::Synced { mut more } = first {
        // Further pages come from the read-only, cacheable feed: no write on
        // the server, and not faulted, so their number (which depends on what
        // the server published meanwhile) cannot shift the TV's fault stream.
        // Feed pages are in the primary codebook: a small-profile TV takes
        // the rest at its next sync, which the server schedules at once.
        let mut pages = 0;
        if tvr.small_profile {
            more = false;
        }
        while more && pages < MAX_PAGES {
            pages += 1;
            match feed_page(&mut tvr.client, &mut t.inner, &mut tvr.globals, *t0).await {
                Some((m, s)) => {
                    more = m;
                    tally.samples.push(s);
                }
                None => break,
            }
        }
        tv.synced += 1;
        let offline = tv.rng.chance(cfg.faults.offline);
        let offline_len = tv.rng.range(3_600_000, 4 * 3_600_000);
        let twin = tv.rng.chance(cfg.faults.twin);
        if offline {
            tv.offline_until = tv.client.next_sync_at() + offline_len;
            tally.counters.offline_periods += 1;
        }
        if twin && tv.twin.is_none() {
            let mut snap = vec![0u8; Client::MAX_SNAPSHOT_LEN];
            if let Ok(n) = tv.client.snapshot(&mut snap) {
                snap.truncate(n);
                tv.twin = Some((snap, tv.synced));
                tally.counters.twins += 1;
            }
        }
    }
    if tv.client.in_flight().is_some() {
        tv.tx = Some(tx);
    }
    Done {
        index: i,
        tv,
        tally,
        synced,
    }
}

/// A pass of the server's aggregation at a virtual time (ms since the run's
/// start): what [`Passes::run`] returns.
pub type PassFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// The server's aggregation on the simulation's clock (the embedded server,
/// its wall-clock loop off): a pass at every multiple of `every_ms` of
/// virtual time, with a barrier. Every step due before a pass time `T` is
/// done (its sync, retries, further pages) before the pass at `T` runs, and
/// no step due at or after `T` starts before it: what is published, and so
/// every download, is a function of the seed, not of the machine's speed.
pub struct Passes {
    /// Virtual milliseconds between passes.
    pub every_ms: u64,
    /// Runs the pass at virtual time `t` (ms).
    pub run: Box<dyn Fn(u64) -> PassFuture + Send + Sync>,
}

/// Runs the fleet. `transport` makes the transport of each step (clones of
/// one HTTP client share its connection pool). `progress` is called with the
/// number of scheduled syncs applied so far. The server aggregates on its
/// own (see [`run_with_passes`]).
pub async fn run<F>(
    cat: Arc<Catalog>,
    cb: Codebook<'static>,
    cfg: SimConfig,
    transport: F,
    progress: &(dyn Fn(u64) + Sync),
) -> SimResult
where
    F: Fn() -> Net,
{
    run_with_passes(cat, cb, cfg, transport, progress, None).await
}

/// [`run`], with the server's aggregation on the simulation's clock when
/// `passes` is given ([`Passes`]).
pub async fn run_with_passes<F>(
    cat: Arc<Catalog>,
    cb: Codebook<'static>,
    cfg: SimConfig,
    transport: F,
    progress: &(dyn Fn(u64) + Sync),
    passes: Option<Passes>,
) -> SimResult
where
    F: Fn() -> Net,
{
    let small = omega_tv_sync::codec::minilm_small_v1().expect("the small codebook loads");
    // The TVs decode through each codebook's slot-to-symbol index (57 KB,
    // built once per process): the same codes as the binary search a device
    // without that RAM runs, in fewer instructions, so that a large run's
    // limit is the server rather than the simulated TVs' decoding. The same
    // call attaches the float basis (576 KiB, shared): reconstructions on
    // request, bit for bit the blob's.
    let ctx = RunContext {
        cat,
        cb: constellation::codebooks::indexed(cb),
        small: constellation::codebooks::indexed(small),
        cfg,
        t0: Instant::now(),
    };
    let RunContext { cat, cfg, t0, .. } = &ctx;
    let mut tvs: Vec<Option<Box<Tv>>> = (0..cfg.devices)
        .map(|i| Some(Box::new(Tv::new(cat, ctx.codebook(i), cfg, i))))
        .collect();
    let mut queue: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut start_rng = Rng::new(cfg.seed, u64::MAX);
    for i in 0..cfg.devices {
        // Boxes boot over the first five virtual minutes.
        queue.push(Reverse((start_rng.range(0, 300_000), i)));
    }
    let mut tally = Tally::default();
    let mut synced_total = 0u64;
    let mut virtual_now = 0u64;
    let mut running = tokio::task::JoinSet::new();
    let every = passes.as_ref().map(|p| p.every_ms.max(1));
    let mut next_pass = every.unwrap_or(u64::MAX);
    let mut pass_count = 0u64;
    loop {
        while running.len() < cfg.concurrency {
            // The barrier: nothing due at or after the next pass starts
            // before it.
            if queue
                .peek()
                .is_none_or(|Reverse((due, _))| *due >= next_pass)
            {
                break;
            }
            let Some(Reverse((due, i))) = queue.pop() else {
                break;
            };
            virtual_now = virtual_now.max(due);
            let Some(tv) = tvs[i].take() else {
                continue;
            };
            if tv.offline_until > due {
                queue.push(Reverse((tv.offline_until, i)));
                tvs[i] = Some(tv);
                continue;
            }
            running.spawn(step(tv, i, due, ctx.clone(), transport()));
        }
        if running.is_empty() {
            if queue.is_empty() {
                break;
            }
            // Nothing in flight, nothing due before the pass: run it.
            if let (Some(p), Some(every)) = (&passes, every) {
                if let Err(e) = (p.run)(next_pass).await {
                    tally.counters.fatal = Some(format!("aggregation pass: {e}"));
                    break;
                }
                pass_count += 1;
                next_pass += every;
                continue;
            }
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        let done = done.expect("sync task panicked");
        let i = done.index;
        if done.synced {
            synced_total += 1;
            progress(synced_total);
        }
        tally.samples.extend(done.tally.samples);
        tally.counters.add(&done.tally.counters);
        let tv = done.tv;
        let next = tv.client.next_sync_at().max(tv.offline_until);
        let done_rounds = tv.synced >= cfg.rounds && tv.client.in_flight().is_none();
        // A TV that needs 20 exchanges per applied sync is stuck: stop it
        // (the report says how many) rather than loop.
        let stuck = tv.attempts > cfg.rounds.saturating_mul(20) + 50;
        if stuck && !done_rounds {
            tally.counters.stuck += 1;
        }
        tvs[i] = Some(tv);
        if tally.counters.fatal.is_some() {
            queue.clear();
        } else if !done_rounds && !stuck {
            queue.push(Reverse((next, i)));
        }
    }
    // Twins still pending sync now, before the settle phase, so every
    // original syncs after its twin.
    let net = transport();
    for tv in tvs.iter_mut().flatten() {
        if let Some((snap, _)) = tv.twin.take() {
            let at = tv.client.next_sync_at();
            run_twin(&ctx, tv, &snap, at, net.clone(), &mut tally).await;
        }
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let tvs: Vec<Tv> = tvs
        .into_iter()
        .map(|t| *t.expect("every TV returned"))
        .collect();
    SimResult {
        tvs,
        samples: tally.samples,
        counters: tally.counters,
        wall_s,
        virtual_s: virtual_now as f64 / 1000.0,
        passes: pass_count,
        next_pass_ms: every.map(|_| next_pass),
    }
}
