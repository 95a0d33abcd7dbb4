//! Stale twins: a second box restored from a TV's older state (as after a
//! restore from backup, or a cloned box) syncs on stale bases under the
//! same device id.

use super::nodes::Nodes as Net;

use super::config::{device_config, RunContext, SyncSample, Tally};
use super::exchange::{Session, Step, TX_BYTES};
use super::faults::{Exchange, Faulty};
use super::model::watch;
use super::rng::Rng;
use super::tv::{Client, Globals, Tv};

/// A second box restored from `tv`'s older state: it learns a little on its
/// own and syncs, on stale bases, until the server has taken it.
/// Its exchanges go to `tally`.
pub async fn run_twin(
    ctx: &RunContext,
    tv: &mut Tv,
    snap: &[u8],
    at: u64,
    net: Net,
    tally: &mut Tally,
) {
    let RunContext { cat, cfg, t0, .. } = ctx;
    let Tally { samples, counters } = tally;
    let index: usize = tv.id.as_str()[3..].parse().unwrap_or(0);
    let cb = *tv.client.codebook();
    let Ok(mut client) = Client::restore(cb, device_config(tv.id.clone(), cfg, index), snap) else {
        return;
    };
    let mut rng = Rng::new(
        cfg.seed ^ 0x7717,
        (index as u64) << 32 | u64::from(tv.synced),
    );
    let mut patterns = tv.patterns.clone();
    for _ in 0..3 {
        watch(cat, &mut rng, &mut patterns);
    }
    for p in patterns.iter().filter(|p| p.changed) {
        let _ = client.upsert(&p.to_pattern(), at);
    }
    let mut t = Faulty {
        inner: net,
        drop_p: 0.0,
        rng,
        last: Exchange::default(),
    };
    let mut tx = vec![0u8; TX_BYTES];
    // What the stale box receives of the global patterns is its own.
    let mut globals = Globals::default();
    let mut now = at;
    // Eight answered exchanges at most. A request lost in transit (the
    // server may have applied it) is re-sent until the server answers, as a
    // real box would: giving it up would leave an application no session
    // was told about. At most 1,000 exchanges in all, 5 ms of wall time
    // apart after a transport error (at least 5 s of outage).
    let (mut answered, mut total) = (0, 0);
    while answered < 8 && total < 1000 {
        total += 1;
        let transport_errors = counters.transport_errors;
        let (step, s) = Session {
            who: "twin",
            client: &mut client,
            transport: &mut t,
            tx: &mut tx,
            ledger: &mut tv.ledger,
            globals: &mut globals,
        }
        .attempt(counters, now, *t0)
        .await;
        samples.push(SyncSample { extra: true, ..s });
        let in_transit =
            counters.transport_errors > transport_errors && client.in_flight().is_some();
        if in_transit {
            // Virtual time does not pass for the server: give a restarting
            // one a moment of wall time, so 1,000 tries cover an outage.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        } else {
            answered += 1;
        }
        if matches!(step, Step::Synced { more: false }) && client.pending() == 0 {
            break;
        }
        now = client.next_sync_at().max(now + 1);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::fleet::check;
    use crate::fleet::config::device_id;
    use crate::fleet::config::Counters;
    use crate::fleet::ledger::Ledger;
    use crate::fleet::model::Catalog;

    /// One exchange of `client` until the server applies it (a restored
    /// twin's counter is ahead of the original's: the original's first
    /// signed request gets `401 replayed_counter` and is re-sent).
    async fn sync(
        who: &str,
        client: &mut Client,
        net: &Net,
        ledger: &mut Ledger,
        now: u64,
    ) -> Exchange {
        let mut t = Faulty {
            inner: net.clone(),
            drop_p: 0.0,
            rng: Rng::new(1, 1),
            last: Exchange::default(),
        };
        let mut tx = vec![0u8; TX_BYTES];
        let mut c = Counters::default();
        for _ in 0..4 {
            let t0 = Instant::now();
            let (step, _) = Session {
                who,
                client,
                transport: &mut t,
                tx: &mut tx,
                ledger,
                globals: &mut Globals::default(),
            }
            .attempt(&mut c, now, t0)
            .await;
            assert!(c.fatal.is_none(), "{:?}", c.fatal);
            if matches!(step, Step::Synced { .. }) {
                return t.last;
            }
        }
        panic!("{who} did not sync");
    }

    /// A stale twin and its original, restored from one snapshot, make the
    /// same change (a watch that did not complete: one more sample, same
    /// direction) and send byte-identical requests under one sequence
    /// number. The server cannot tell the second from a retry of the first
    /// and replays the first's response: one application, acknowledged to
    /// both sessions, with the state each of them sent. Counting acks as
    /// applications (the ledger before) made that a lost update; it is one
    /// revision acknowledged twice, and the checker finds nothing lost. The
    /// same ledger with an acknowledged revision the server does not hold,
    /// a revision no session was told about, or one revision acknowledged
    /// with two different states is caught.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_application_acknowledged_to_two_sessions_is_not_a_lost_update() {
        let server = crate::fleet::start_embedded(5, false, None).await.unwrap();
        let id = device_id(0);
        let keys = server
            .handle
            .enrol_many(std::slice::from_ref(&id))
            .await
            .unwrap();
        let cat = Arc::new(Catalog::load().unwrap());
        let cb = omega_tv_sync::codec::minilm_v1().unwrap();
        let mut cfg = crate::fleet::Args::default().sim;
        cfg.devices = 1;
        cfg.keys = Some(Arc::new([(id.clone(), keys[0].clone())].into()));
        let net = Net::new(&server.handle.url()).unwrap();
        let mut tv = Tv::new(&cat, cb, &cfg, 0);
        for p in tv.patterns.iter_mut() {
            // Every pattern passes the quality filter.
            (p.samples, p.hits) = (20, 18);
            p.changed = true;
        }
        tv.hand_over(0);
        let mut ledger = Ledger::default();
        sync("orig", &mut tv.client, &net, &mut ledger, 0).await;
        let mut snap = vec![0u8; Client::MAX_SNAPSHOT_LEN];
        let n = tv.client.snapshot(&mut snap).unwrap();
        let mut twin =
            Client::restore(cb, device_config(tv.id.clone(), &cfg, 0), &snap[..n]).unwrap();
        assert_eq!(twin.seq(), tv.client.seq());

        // The same change on both boxes.
        tv.patterns[0].samples += 1;
        let changed = tv.patterns[0].to_pattern();
        twin.upsert(&changed, 1_000).unwrap();
        tv.client.upsert(&changed, 1_000).unwrap();
        let a = sync("twin", &mut twin, &net, &mut ledger, 1_000).await;
        let b = sync("orig", &mut tv.client, &net, &mut ledger, 1_000).await;
        let pid = tv.patterns[0].id.as_str().to_string();
        assert_eq!(
            (a.seq, a.body_crc),
            (b.seq, b.body_crc),
            "byte-identical requests"
        );
        assert_eq!(a.acked, vec![pid.clone()]);
        assert_eq!(
            (a.acked_revs.clone(), b.acked_revs.clone()),
            (vec![2], vec![2]),
            "one revision, told twice"
        );
        assert_eq!(ledger.shared_acks, 1);
        assert_eq!(ledger.reused_revisions, 0);

        let admin = format!("http://{}", server.handle.admin_addr().unwrap());
        let mut t = Net::new(&admin).unwrap();
        let srv = check::read_device(&mut t, &id, &server.token)
            .await
            .unwrap();
        let srv_rev = srv.patterns.iter().find(|p| p.id == pid).unwrap().revision;
        assert_eq!(srv_rev, 2, "applied once");
        assert_eq!(tv.client.acked(&tv.patterns[0].id).unwrap().0, 2);
        // Three acks for two applications: counting acks called this lost.
        let acks: usize = ledger.acks[&pid].len() + ledger.shared_acks as usize;
        assert_eq!(acks, 3);

        let verdict = |tv: &Tv| {
            let mut v = check::Verdict::default();
            check::check_device(&cb, tv, &srv, &mut v, &mut 0.0);
            (v.lost_updates, v.duplicates_applied, v.shared_acks)
        };
        tv.ledger = ledger.clone();
        assert_eq!(verdict(&tv), (0, 0, 1));
        // The checker still fails what it must.
        let mut l = ledger.clone();
        l.acks.get_mut(&pid).unwrap().insert(3, 0);
        tv.ledger = l;
        assert_eq!(
            verdict(&tv).0,
            1,
            "an acknowledged revision the server does not hold"
        );
        let mut l = ledger.clone();
        l.acks.get_mut(&pid).unwrap().remove(&2);
        tv.ledger = l;
        assert_eq!(
            verdict(&tv).1,
            1,
            "an application no session was told about"
        );
        // The second ack recorded again without the request's rate, samples
        // and category: the same revision with another state.
        let mut l = ledger.clone();
        l.record(&b, &twin, &[]);
        tv.ledger = l;
        assert_eq!(
            verdict(&tv).0,
            1,
            "one revision acknowledged with two states"
        );
        server.handle.shutdown().await;
    }
}
