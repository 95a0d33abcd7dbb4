//! A backlog of device changes drains at the pass's own rate: a pass that
//! read a full batch is followed by the next at once, not after `interval`.
//! (With one pass per interval, the default settings capped the drain at
//! `batch` = 4,096 changes per second whatever the CPU; a redb node under
//! load produces several times that.) Real server on loopback, real redb,
//! real MiniLM patterns.

mod common;

use std::time::{Duration, Instant};

use common::*;
use constellation::store::{self, Meta};
use constellation::{Server, ServerHandle};

/// Device changes not yet consumed by a pass.
fn waiting(srv: &ServerHandle) -> usize {
    store::read(&*srv.state().store, |t| {
        let cursor = t.meta(Meta::AggregateCursor)?;
        Ok(t.device_changes_after(cursor, 10_000)?.len())
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_drained_by_back_to_back_passes() {
    let (_dir, db) = temp_db();
    let mut c = config(&db);
    // 8 changes per pass, a pass every 3 s: 96 changes take 12 passes, 36 s
    // at one pass per interval.
    c.aggregate.batch = 8;
    c.aggregate.interval = Duration::from_secs(3);
    let srv = Server::start(c).await.expect("server starts");
    let addr = srv.local_addr();
    let v = patterns();
    let start = Instant::now();
    tokio::task::spawn_blocking(move || {
        for d in 0..12 {
            let items: Vec<Up> = (0..8)
                .map(|j| {
                    let id: &'static str = format!("p{j}").leak();
                    Up::abs(id, quantize(&v[d * 8 + j]))
                })
                .collect();
            let r = post_sync(addr, &format!("tv-{d}"), "0", &upload(1, 0, &items));
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        }
    })
    .await
    .unwrap();
    let queued = waiting(&srv);
    assert!(
        queued > 16,
        "the uploads outran the first pass ({queued} changes waiting after {:?})",
        start.elapsed()
    );
    // Three intervals: one pass per interval would have consumed at most 24.
    let deadline = start + Duration::from_secs(9);
    while Instant::now() < deadline && waiting(&srv) > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = waiting(&srv);
    println!(
        "{queued} changes waiting after the uploads, {left} left after {:?}",
        start.elapsed()
    );
    assert_eq!(left, 0, "the backlog drains in back-to-back passes");
    srv.shutdown().await;
}
