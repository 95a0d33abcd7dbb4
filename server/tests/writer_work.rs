//! Work kept off the writer and bounded per request: the public feed's
//! visit budget (`GET /api/v1/global?limit=0&since=<any>` visits at most
//! `download::FEED_MAX_VISITED` changelog entries, a page cut by it carries
//! the continue cursor), and the idempotency record of a large response
//! (kept as a recipe, not the frame; its replay rebuilt byte for byte).
//! Asserted through page heads, stored records and metrics, never timing.

mod common;

use common::*;
use constellation::download::FEED_MAX_VISITED;
use constellation::store::{self, GlobalChange};
use constellation::sync::REPLAY_INLINE;
use omega_tv_sync::wire::Caps;

fn trend(i: u64, score: f32) -> GlobalChange {
    GlobalChange::Trend {
        content_id: format!("item-{i}"),
        score,
        region: *b"US",
        category: "drama".into(),
        calculated_at: 1_700_000_000,
    }
}

fn feed(addr: std::net::SocketAddr, q: &str) -> Raw {
    raw(addr, "GET", &format!("/api/v1/global?{q}"), &[], &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_requests_visit_a_bounded_number_of_entries_and_limit_0_none() {
    let (_dir, db) = temp_db();
    let srv = start(&db).await;
    let addr = srv.local_addr();
    let admin = srv.admin_addr().expect("admin listener");
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

    // limit=0 with random and stale cursors: no records, the current
    // version, and not one entry visited.
    for since in [0u64, 1, 17, n / 2, n + 987_654, u64::MAX / 3] {
        let r = feed(addr, &format!("limit=0&since={since}"));
        assert_eq!(r.status, 200, "since={since}");
        let h = head(&r.body);
        assert_eq!(records(&r.body).len(), 1, "limit=0: the head only");
        assert_eq!((h.global_version, h.more), (n, false), "since={since}");
    }
    assert_eq!(metric(admin, "constellation_feed_visited_max"), 0.0);

    // Pages that take records: each request is cut at the budget.
    for since in [0u64, 1, 17, n / 2, n + 987_654, u64::MAX / 3] {
        let r = feed(addr, &format!("limit=65535&since={since}"));
        assert_eq!(r.status, 200, "since={since}");
        let h = head(&r.body);
        if since < n - FEED_MAX_VISITED as u64 || since > n {
            assert!(h.more, "since={since}: cut, more to come");
            let from = if since > n { 0 } else { since };
            assert_eq!(h.global_version, from + FEED_MAX_VISITED as u64);
            assert_eq!(records(&r.body).len(), FEED_MAX_VISITED + 1);
        }
    }
    let max = metric(admin, "constellation_feed_visited_max");
    assert_eq!(max, FEED_MAX_VISITED as f64, "budget {FEED_MAX_VISITED}");
    assert!(metric(admin, "constellation_feed_visit_cut_total") >= 4.0);

    // The continue cursor walks the whole changelog, budget by budget.
    let (mut since, mut pages, mut got) = (0u64, 0, 0);
    loop {
        let r = feed(addr, &format!("limit=65535&since={since}"));
        let h = head(&r.body);
        pages += 1;
        got += records(&r.body).len() - 1;
        assert!(h.global_version > since || !h.more);
        since = h.global_version;
        if !h.more {
            break;
        }
        assert!(pages < 100, "bounded");
    }
    assert_eq!((since, got as u64), (n, n));
    assert_eq!(pages, n.div_ceil(FEED_MAX_VISITED as u64) as usize);
    let max = metric(admin, "constellation_feed_visited_max");
    assert!(max <= FEED_MAX_VISITED as f64, "{max}");
    srv.shutdown().await;
}

/// A sync whose response is larger than `REPLAY_INLINE`: the idempotency
/// record keeps a small recipe, not the frame, and the retry is answered
/// byte for byte the same; after an entry it carried was replaced, the
/// replay keeps its head (cursor) and carries what is there now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_response_is_replayed_byte_for_byte_from_a_small_record() {
    let (_dir, db) = temp_db();
    let srv = start(&db).await;
    let addr = srv.local_addr();
    let n = 1500u64;
    store::write(&*srv.state().store, move |t| {
        for i in 0..n {
            t.publish(&trend(i, 1.5))?;
        }
        Ok(())
    })
    .await
    .unwrap();
    let caps = Caps {
        max_globals: 64,
        max_trends: 1000,
        max_bytes: 1 << 20,
    };
    let v = patterns();
    let body = upload_with(book().id(), 1, 0, caps, &[Up::abs("p1", quantize(&v[0]))]);
    let first = post_sync(addr, "tv-1", "0", &body);
    assert_eq!(first.status, 200);
    assert!(first.body.len() > REPLAY_INLINE, "{}", first.body.len());
    let h = head(&first.body);
    assert!(h.more);
    let rec = store::read(&*srv.state().store, |t| t.device("tv-1"))
        .unwrap()
        .unwrap();
    assert!(
        rec.response.len() < 1024 && rec.response.starts_with(b"RP"),
        "the record keeps {} bytes",
        rec.response.len()
    );

    let again = post_sync(addr, "tv-1", "0", &body);
    assert_eq!(
        (again.status, again.header("x-replayed")),
        (200, Some("true"))
    );
    assert!(again.body == first.body, "replay differs");

    // An entry of the page is replaced (a newer version of item 5): the
    // replay keeps its head, leaves the moved entry for the next page.
    store::write(&*srv.state().store, |t| {
        t.publish(&trend(5, 2.5)).map(|_| ())
    })
    .await
    .unwrap();
    let third = post_sync(addr, "tv-1", "0", &body);
    assert_eq!(third.status, 200);
    assert_eq!(head(&third.body), h);
    assert_eq!(records(&third.body).len(), records(&first.body).len() - 1);
    srv.shutdown().await;
}
