//! The settle phase after the run: every TV syncs, without new watching or
//! faults, until it has nothing left, so the checker compares final states.

use std::time::Instant;

use super::nodes::Nodes as Net;

use super::config::SimResult;
use super::exchange::{feed_page, Session, Step, MAX_PAGES, TX_BYTES};
use super::faults::{Exchange, Faulty};
use super::rng::Rng;

/// After the run: every TV syncs, without new watching or faults, until it
/// has nothing left to upload and its last exchange was applied (at most
/// `max_attempts` exchanges each). Returns how many TVs did not settle.
pub async fn settle<F>(result: &mut SimResult, transport: F, max_attempts: u32) -> usize
where
    F: Fn() -> Net,
{
    let t0 = Instant::now();
    let mut unsettled = 0;
    for tv in result.tvs.iter_mut() {
        let mut t = Faulty {
            inner: transport(),
            drop_p: 0.0,
            rng: Rng::new(1, 1),
            last: Exchange::default(),
        };
        let mut tx = tv.tx.take().unwrap_or_else(|| vec![0u8; TX_BYTES]);
        let mut now = tv.client.next_sync_at();
        let mut ok = false;
        for _ in 0..max_attempts {
            tv.hand_over(now);
            let (step, _) = Session {
                who: "settle",
                client: &mut tv.client,
                transport: &mut t,
                tx: &mut tx,
                ledger: &mut tv.ledger,
                globals: &mut tv.globals,
            }
            .attempt(&mut result.counters, now, t0)
            .await;
            let mut synced = matches!(step, Step::Synced { .. });
            let mut more = matches!(step, Step::Synced { more: true });
            // Feed pages are in the primary codebook: a small-profile TV
            // takes further pages by syncing again (the next attempt).
            for _ in 0..MAX_PAGES {
                if !more || tv.small_profile {
                    break;
                }
                match feed_page(&mut tv.client, &mut t.inner, &mut tv.globals, t0).await {
                    Some((m, _)) => more = m,
                    None => {
                        synced = false;
                        break;
                    }
                }
            }
            if synced && !more && tv.client.pending() == 0 && tv.client.in_flight().is_none() {
                ok = true;
                break;
            }
            now = tv.client.next_sync_at().max(now + 1);
        }
        if !ok {
            unsettled += 1;
        }
    }
    unsettled
}

/// After the last aggregation: every TV takes what it published, until the
/// server has nothing more for it (at most `max_pages` pages each): feed
/// pages for TVs on the primary codebook, syncs (uploading nothing) for
/// small-profile TVs, whose pages come through the sync endpoint. Returns
/// how many TVs did not get to the end.
pub async fn catch_up<F>(result: &mut SimResult, transport: F, max_pages: u32) -> usize
where
    F: Fn() -> Net,
{
    let t0 = Instant::now();
    let mut behind = 0;
    for tv in result.tvs.iter_mut() {
        let mut t = Faulty {
            inner: transport(),
            drop_p: 0.0,
            rng: Rng::new(1, 2),
            last: Exchange::default(),
        };
        let mut tx = tv.tx.take().unwrap_or_else(|| vec![0u8; TX_BYTES]);
        let mut now = tv.client.next_sync_at();
        let mut done = false;
        for _ in 0..max_pages {
            let more = if tv.small_profile {
                let (step, _) = Session {
                    who: "settle",
                    client: &mut tv.client,
                    transport: &mut t,
                    tx: &mut tx,
                    ledger: &mut tv.ledger,
                    globals: &mut tv.globals,
                }
                .attempt(&mut result.counters, now, t0)
                .await;
                now = tv.client.next_sync_at().max(now + 1);
                match step {
                    Step::Synced { more } => more,
                    Step::Retry => true,
                }
            } else {
                feed_page(&mut tv.client, &mut t.inner, &mut tv.globals, t0)
                    .await
                    .is_none_or(|(more, _)| more)
            };
            if !more {
                done = true;
                break;
            }
        }
        if !done {
            behind += 1;
        }
    }
    behind
}
