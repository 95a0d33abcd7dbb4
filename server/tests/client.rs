//! The device's real sync state machine (`omega_tv_sync::sync::SyncClient`)
//! over the std transport against the real server: what the device believes
//! acknowledged is exactly what the server stored.

mod common;

use common::*;
use omega_tv_sync::sync::{Config as ClientConfig, GlobalSink, Outcome, SyncClient};
use omega_tv_sync::{Category, DeviceId, GlobalPattern, Pattern, PatternId, TrendSignal};
use omega_tv_sync_http::HttpTransport;

#[derive(Default)]
struct Sink {
    globals: usize,
    trends: usize,
    resets: usize,
}

impl GlobalSink for Sink {
    fn reset(&mut self) {
        self.resets += 1;
    }
    fn global_upsert(&mut self, _p: &GlobalPattern) {
        self.globals += 1;
    }
    fn trend(&mut self, _s: &TrendSignal, _v: u64) {
        self.trends += 1;
    }
}

const N: usize = 16;

fn pattern(id: usize, e: &omega_tv_sync::Embedding, samples: u32) -> Pattern {
    Pattern::new(
        PatternId::new(&format!("p{id}")).unwrap(),
        e.clone(),
        0.8,
        samples,
        Category::new("drama").unwrap(),
    )
    .unwrap()
}

/// Syncs until nothing is pending and no page waits (bounded).
async fn settle(
    c: &mut SyncClient<'static, N>,
    t: &mut HttpTransport,
    sink: &mut Sink,
    now: &mut u64,
) {
    let mut tx = vec![0u8; omega_tv_sync::wire::MAX_UPLOAD_FRAME];
    let mut rx = vec![0u8; c.config().caps.max_bytes as usize];
    for _ in 0..50 {
        *now += 1000;
        match c.exchange(t, &mut tx, &mut rx, *now, sink).await {
            Ok(Outcome::Synced(s)) if !s.more && c.pending() == 0 => return,
            Ok(_) => {}
            Err(e) => panic!("exchange failed: {e:?}"),
        }
    }
    panic!("did not settle");
}

fn assert_same(srv: &constellation::ServerHandle, c: &SyncClient<'static, N>, dev: &str) {
    let st = srv.device_state(dev).unwrap();
    assert_eq!(st.patterns.len(), c.len(), "{dev}: pattern count");
    for p in &st.patterns {
        let id = PatternId::new(&p.id).unwrap();
        let (rev, codes) = c.acked(&id).expect("device knows the pattern");
        assert_eq!(rev, p.revision, "{dev}/{}: revision", p.id);
        assert_eq!(codes.to_vec(), p.codes, "{dev}/{}: codes", p.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_state_machine_and_server_agree() {
    let (_dir, db) = temp_db();
    let srv = start(&db).await;
    let v = patterns();
    let book = book();
    let mut now = 1_000u64;
    let mut devices = Vec::new();
    for d in 0..6usize {
        let name = format!("tv-{d}");
        let mut cfg = ClientConfig::new(DeviceId::new(&name).unwrap());
        cfg.accept_zstd = false;
        let mut c: SyncClient<'static, N> = SyncClient::new(book, cfg);
        for i in 0..8 {
            c.upsert(&pattern(i, &v[i * 11], 20), now).unwrap();
        }
        devices.push((
            name,
            c,
            HttpTransport::new(&srv.url()).unwrap(),
            Sink::default(),
        ));
    }
    for (name, c, t, sink) in devices.iter_mut() {
        settle(c, t, sink, &mut now).await;
        assert_same(&srv, c, name);
    }
    // Drift: three patterns move; closed-loop deltas.
    for (name, c, t, sink) in devices.iter_mut() {
        for i in 0..3 {
            c.upsert(&pattern(i, &v[500 + i], 30), now).unwrap();
        }
        settle(c, t, sink, &mut now).await;
        assert_same(&srv, c, name);
        let st = srv.device_state(name).unwrap();
        assert!(st.patterns.iter().filter(|p| p.revision == 2).count() == 3);
    }
    // Six devices share eight patterns: aggregation publishes; every device
    // downloads every change and reaches the server's version.
    let published = srv.aggregate_now().await.unwrap();
    assert!(published > 0);
    let version = srv.global_version().unwrap();
    for (name, c, t, sink) in devices.iter_mut() {
        c.upsert(&pattern(9, &v[900], 20), now).unwrap();
        settle(c, t, sink, &mut now).await;
        assert_eq!(c.global_version(), version, "{name}");
        assert!(sink.globals >= 8, "{name}: {} globals", sink.globals);
        assert_same(&srv, c, name);
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloned_box_resequences_and_resolves_conflicts() {
    let (_dir, db) = temp_db();
    let srv = start(&db).await;
    let v = patterns();
    let book = book();
    let mut now = 1_000u64;
    let id = DeviceId::new("tv-clone").unwrap();
    let mut a: SyncClient<'static, N> = SyncClient::new(book, ClientConfig::new(id.clone()));
    let mut ta = HttpTransport::new(&srv.url()).unwrap();
    let mut sa = Sink::default();
    for (i, e) in v.iter().take(4).enumerate() {
        a.upsert(&pattern(i, e, 20), now).unwrap();
    }
    settle(&mut a, &mut ta, &mut sa, &mut now).await;
    // The clone starts from the same state (a restored backup), then both move on.
    let mut b: SyncClient<'static, N> = SyncClient::new(book, ClientConfig::new(id.clone()));
    let mut tb = HttpTransport::new(&srv.url()).unwrap();
    let mut sb = Sink::default();
    for (i, e) in v.iter().take(4).enumerate() {
        b.upsert(&pattern(i, e, 20), now).unwrap();
    }
    a.upsert(&pattern(0, &v[100], 40), now).unwrap();
    settle(&mut a, &mut ta, &mut sa, &mut now).await;
    b.upsert(&pattern(0, &v[200], 40), now).unwrap();
    // B's sequence is behind (409, resequenced) and its bases are stale
    // (conflicts, merged by sample weight): it still settles.
    settle(&mut b, &mut tb, &mut sb, &mut now).await;
    assert!(b.stats().resequenced >= 1, "{:?}", b.stats());
    assert!(b.stats().conflicts >= 1, "{:?}", b.stats());
    assert_same(&srv, &b, "tv-clone");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_responses_on_request() {
    use omega_tv_sync::sync::ZstdBuffers;
    use omega_tv_sync::wire::zstd::DCTX_WORKSPACE_WORDS;
    use omega_tv_sync::{Method, Request, Transport};
    let (_dir, db) = temp_db();
    let srv = start(&db).await;
    let v = patterns();
    // Seed globals so a first sync's response is large and compressible.
    let addr = srv.local_addr();
    for d in 0..6 {
        let items: Vec<Up> = (0..8)
            .map(|i| {
                Up::abs(
                    ["a", "b", "c", "d", "e", "f", "g", "h"][i],
                    quantize(&v[i * 7]),
                )
            })
            .collect();
        assert_eq!(
            post_sync(addr, &format!("seed-{d}"), "0", &upload(1, 0, &items)).status,
            200
        );
    }
    srv.aggregate_now().await.unwrap();
    let mut cfg = ClientConfig::new(DeviceId::new("tv-z").unwrap());
    cfg.accept_zstd = true;
    let mut c: SyncClient<'static, N> = SyncClient::new(book(), cfg);
    c.upsert(&pattern(0, &v[3], 20), 1).unwrap();
    let mut tx = vec![0u8; omega_tv_sync::wire::MAX_UPLOAD_FRAME];
    let n = c.prepare(&mut tx).unwrap();
    let mut t = HttpTransport::new(&srv.url()).unwrap();
    let mut rx = vec![0u8; c.config().caps.max_bytes as usize];
    let headers = [("X-Device-ID", "tv-z"), ("X-Sync-Version", "0")];
    let req = Request {
        method: Method::Post,
        path: "/api/v1/sync",
        headers: &headers,
        body: &tx[..n],
    };
    let r = t.send(req, &mut rx).await.unwrap();
    assert_eq!(r.status, 200);
    let frame = omega_tv_sync::wire::FrameReader::parse(&rx[..r.body_len]).unwrap();
    assert!(frame.is_compressed(), "a response with globals compresses");
    // A retry gets the same bytes.
    let mut rx2 = vec![0u8; rx.len()];
    let r2 = t.send(req, &mut rx2).await.unwrap();
    assert_eq!(rx2[..r2.body_len], rx[..r.body_len]);
    let mut ws = vec![0u64; DCTX_WORKSPACE_WORDS];
    let mut scratch = vec![0u8; rx.len()];
    let mut z = ZstdBuffers::new(&mut ws, &mut scratch).unwrap();
    let mut sink = Sink::default();
    let out = c
        .apply_zstd(&tx[..n], r, &rx[..r.body_len], &mut z, 2, &mut sink)
        .unwrap();
    assert!(matches!(out, Outcome::Synced(_)));
    assert!(sink.globals > 0);
    assert_same(&srv, &c, "tv-z");
    srv.shutdown().await;
}
