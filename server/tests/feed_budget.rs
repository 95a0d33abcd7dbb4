//! The public feed's visit budget: `GET /api/v1/global?limit=0&since=<any>`
//! visits at most `download::FEED_MAX_VISITED` changelog entries per
//! request, whatever the changelog holds; a page cut by it carries the
//! continue cursor. Asserted through the page heads and the server's
//! visit metrics, never through timing.

mod common;

use common::*;
use constellation::download::FEED_MAX_VISITED;
use constellation::store::{self, GlobalChange};

fn feed(addr: std::net::SocketAddr, q: &str) -> Raw {
    raw(addr, "GET", &format!("/api/v1/global?{q}"), &[], &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_0_feed_request_visits_a_bounded_number_of_entries() {
    let (_dir, db) = temp_db();
    let srv = start(&db).await;
    let addr = srv.local_addr();
    // A changelog of three budgets and a bit, in one transaction.
    let n = (3 * FEED_MAX_VISITED + 10) as u64;
    store::write(&*srv.state().store, move |t| {
        for i in 0..n {
            t.publish(&GlobalChange::Trend {
                content_id: format!("item-{i}"),
                score: 1.5,
                region: *b"US",
                category: "drama".into(),
                calculated_at: 1_700_000_000,
            })?;
        }
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(srv.global_version().unwrap(), n);

    // Random and stale cursors: each request is cut at the budget.
    for since in [0u64, 1, 17, n / 2, n + 987_654, u64::MAX / 3] {
        let r = feed(addr, &format!("limit=0&since={since}"));
        assert_eq!(r.status, 200, "since={since}");
        let h = head(&r.body);
        assert!(records(&r.body).len() == 1, "limit=0: the head only");
        if since < n - FEED_MAX_VISITED as u64 || since > n {
            assert!(h.more, "since={since}: cut, more to come");
            let from = if since > n { 0 } else { since };
            assert_eq!(h.global_version, from + FEED_MAX_VISITED as u64);
        }
    }
    let max = metric(addr, "constellation_feed_visited_max");
    assert!(
        max >= 1.0 && max <= FEED_MAX_VISITED as f64,
        "one request visited {max} entries (budget {FEED_MAX_VISITED})"
    );
    assert!(metric(addr, "constellation_feed_visit_cut_total") >= 4.0);

    // The continue cursor walks the whole changelog, budget by budget.
    let (mut since, mut pages) = (0u64, 0);
    loop {
        let r = feed(addr, &format!("limit=0&since={since}"));
        let h = head(&r.body);
        pages += 1;
        assert!(h.global_version > since || !h.more);
        since = h.global_version;
        if !h.more {
            break;
        }
        assert!(pages < 100, "bounded");
    }
    assert_eq!(since, n);
    assert_eq!(pages, n.div_ceil(FEED_MAX_VISITED as u64) as usize);
    let max = metric(addr, "constellation_feed_visited_max");
    assert!(max <= FEED_MAX_VISITED as f64, "{max}");
    srv.shutdown().await;
}
