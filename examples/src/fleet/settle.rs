//! The settle phase after the run: every TV syncs, without new watching or
//! faults, until it has nothing left, so the checker compares final states.

use std::time::Instant;

use omega_tv_sync_http::HttpTransport as Net;

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
            }
            .attempt(&mut result.counters, now, t0)
            .await;
            let mut synced = matches!(step, Step::Synced { .. });
            let mut more = matches!(step, Step::Synced { more: true });
            for _ in 0..MAX_PAGES {
                if !more {
                    break;
                }
                match feed_page(&mut tv.client, &mut t.inner, t0).await {
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
