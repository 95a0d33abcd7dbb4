//! Global records and trends reaching the sink; feed pages.

use super::*;

#[test]
fn downloads_reach_the_sink_and_the_cursor_moves_after() {
    #[derive(Default)]
    struct Sink {
        globals: Vec<(u32, u64, f32)>,
        trends: Vec<u64>,
    }
    impl GlobalSink for Sink {
        fn global_upsert(&mut self, g: &GlobalPattern) {
            self.globals
                .push((g.id, g.version, g.embedding.dot(&g.embedding)));
        }
        fn trend(&mut self, _: &TrendSignal, v: u64) {
            self.trends.push(v);
        }
    }
    let mut c = client("tv-7");
    let mut peer = Peer {
        globals: std::vec![(1, 5), (2, 9)],
        trends: std::vec![7],
        ..Peer::default()
    };
    let mut sink = Sink::default();
    let mut tx = [0u8; 4096];
    let mut rx = [0u8; 16384];
    block(c.exchange(&mut Loop(&mut peer), &mut tx, &mut rx, 0, &mut sink)).unwrap();
    assert_eq!(c.global_version(), 9);
    assert_eq!(sink.globals.len(), 2);
    assert!(sink.globals.iter().all(|g| (g.2 - 1.0).abs() < 1e-3));
    assert_eq!(sink.trends, std::vec![7]);
    // Next time only what is newer than 9 comes down.
    peer.globals.push((3, 11));
    block(c.exchange(&mut Loop(&mut peer), &mut tx, &mut rx, 1, &mut sink)).unwrap();
    assert_eq!(sink.globals.len(), 3);
    assert_eq!(c.global_version(), 11);
}

#[test]
fn feed_pages_move_the_cursor_and_refuse_sync_records() {
    let cb = minilm_v1().unwrap();
    let mut c = client("tv-feed");
    let code = {
        let mut buf = [0u8; MAX_CODED_LEN];
        let n = cb.encode(&[5; DIM], None, &mut buf).unwrap();
        buf[..n].to_vec()
    };
    let page = |seq: u64, with_ack: bool| {
        let mut buf = std::vec![0u8; 8192];
        let mut w = FrameWriter::new(&mut buf, Kind::Download, cb.id()).unwrap();
        w.push(&Record::DownloadHead(DownloadHead {
            seq,
            global_version: 40,
            more: true,
            reset: false,
            next_sync_s: 0,
        }))
        .unwrap();
        w.push(&Record::GlobalUpsert(GlobalUpsert {
            id: 9,
            version: 40,
            success_rate: 0.8,
            sample_count: 50,
            contributors: 6,
            category: Category::new("drama").unwrap(),
            code: &code,
        }))
        .unwrap();
        if with_ack {
            w.push(&Record::Ack(Ack {
                id: PatternId::new("x").unwrap(),
                revision: 1,
            }))
            .unwrap();
        }
        w.finish().unwrap().to_vec()
    };
    let mut buf = [0u8; 96];
    assert_eq!(
        c.feed_path(64, 16384, &mut buf),
        "/api/v1/global?since=0&limit=64&max_bytes=16384"
    );
    // A page that carries sync records, or answers a sync, is refused whole.
    assert_eq!(
        c.apply_feed(&page(0, true), &mut ()),
        Err(Error::ProtocolViolation)
    );
    assert_eq!(
        c.apply_feed(&page(3, false), &mut ()),
        Err(Error::ProtocolViolation)
    );
    assert_eq!(c.global_version(), 0);
    #[derive(Default)]
    struct Count(u32);
    impl GlobalSink for Count {
        fn global_upsert(&mut self, _: &GlobalPattern) {
            self.0 += 1;
        }
    }
    let mut sink = Count::default();
    let s = c.apply_feed(&page(0, false), &mut sink).unwrap();
    assert!(s.more && s.globals == 1);
    assert_eq!(sink.0, 1);
    assert_eq!(c.global_version(), 40);
    assert_eq!(
        c.feed_path(500, 65536, &mut buf),
        "/api/v1/global?since=40&limit=500&max_bytes=65536"
    );
    // Not while a sync request is in flight.
    let mut tx = [0u8; 1024];
    c.prepare(&mut tx).unwrap();
    assert_eq!(c.apply_feed(&page(0, false), &mut sink), Err(Error::Busy));
}

/// A sink that asks for codes gets, for each global, the codes the frame
/// carries, and on request exactly the pattern a reconstructing sink gets.
#[test]
fn a_codes_sink_gets_codes_and_reconstructs_on_request() {
    #[derive(Default)]
    struct Full(Vec<GlobalPattern>);
    impl GlobalSink for Full {
        fn global_upsert(&mut self, g: &GlobalPattern) {
            self.0.push(g.clone());
        }
    }
    #[derive(Default)]
    struct ByCodes {
        codes: Vec<(u32, Codes)>,
        patterns: Vec<GlobalPattern>,
        upserts: u32,
    }
    impl GlobalSink for ByCodes {
        const RECONSTRUCT: bool = false;
        fn global_upsert(&mut self, _: &GlobalPattern) {
            self.upserts += 1;
        }
        fn global_codes(&mut self, g: &CodedGlobal<'_, '_>) {
            self.codes.push((g.id, *g.codes));
            self.patterns.push(g.to_pattern().unwrap());
        }
    }
    let cb = minilm_v1().unwrap();
    let peer = || Peer {
        globals: std::vec![(1, 5), (2, 9), (4, 12)],
        ..Peer::default()
    };
    let (mut tx, mut rx) = ([0u8; 4096], [0u8; 16384]);
    let mut full = Full::default();
    let mut c = client("tv-full");
    block(c.exchange(&mut Loop(&mut peer()), &mut tx, &mut rx, 0, &mut full)).unwrap();
    let mut by_codes = ByCodes::default();
    let mut c = client("tv-codes");
    block(c.exchange(&mut Loop(&mut peer()), &mut tx, &mut rx, 0, &mut by_codes)).unwrap();
    assert_eq!(
        by_codes.upserts, 0,
        "nothing reconstructed for a codes sink"
    );
    assert_eq!(full.0.len(), 3);
    assert_eq!(by_codes.patterns, full.0);
    for ((id, codes), g) in by_codes.codes.iter().zip(full.0.iter()) {
        assert_eq!(*id, g.id);
        assert_eq!(cb.reconstruct(codes).unwrap(), g.embedding);
    }
}
