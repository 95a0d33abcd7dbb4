//! Only changed patterns that pass the quality filter go up, counted on the
//! wire, against the real server (loopback, temp redb file).

use omega_tv_sync::codec::minilm_v1;
use omega_tv_sync::sync::{Config, Outcome, SyncClient};
use omega_tv_sync::types::{DeviceId, Embedding, Pattern};
use omega_tv_sync::wire::{FrameReader, Record};
use omega_tv_sync::{Request, Response, Transport};
use omega_tv_sync_http::HttpTransport;
use omega_tv_sync_testkit::vectors;

/// Counts the pattern records of every request it forwards.
struct Counting {
    inner: HttpTransport,
    ids: Vec<String>,
}

impl Transport for Counting {
    type Error = omega_tv_sync_http::HttpError;
    async fn send(&mut self, req: Request<'_>, buf: &mut [u8]) -> Result<Response, Self::Error> {
        self.ids.clear();
        if let Ok(f) = FrameReader::parse(req.body) {
            for r in f.records().flatten() {
                if let Record::Pattern(p) = r {
                    self.ids.push(p.id.as_str().to_string());
                }
            }
        }
        self.inner.send(req, buf).await
    }
}

/// A valid `drama` pattern.
fn pattern(id: &str, e: &Embedding, rate: f32, samples: u32) -> Pattern {
    omega_tv_sync_testkit::pattern(id, e, rate, samples, "drama")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_changed_filtered_patterns_are_uploaded() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = constellation::Config::new();
    cfg.db = Some(dir.path().join("c.redb"));
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.codebooks = constellation::codebooks::default_codebooks();
    cfg.min_sync_interval_s = 0; // one client syncing back to back
    let srv = constellation::Server::start(cfg).await.unwrap();
    let v = vectors();
    // Authentication is on by default: enrol the device, sign with its key.
    let mut ccfg = Config::new(DeviceId::new("tv-filter").unwrap());
    ccfg.auth_key = Some(srv.enrol("tv-filter").await.unwrap());
    let mut c: SyncClient<'static, 16> = SyncClient::new(minilm_v1().unwrap(), ccfg);
    let mut t = Counting {
        inner: HttpTransport::new(&srv.url()).unwrap(),
        ids: Vec::new(),
    };
    let (mut tx, mut rx) = (vec![0u8; 16384], vec![0u8; 16384]);
    let mut sync = async |c: &mut SyncClient<'static, 16>, t: &mut Counting, now: u64| {
        let out = c.exchange(t, &mut tx, &mut rx, now, &mut ()).await.unwrap();
        assert!(matches!(out, Outcome::Synced(_)), "{out:?}");
        let mut ids = t.ids.clone();
        ids.sort();
        ids
    };
    // Four pass the filter (>= 0.7 and >= 10), two do not.
    c.upsert(&pattern("a", &v[0], 0.9, 30), 1).unwrap();
    c.upsert(&pattern("b", &v[1], 0.7, 10), 1).unwrap();
    c.upsert(&pattern("c", &v[2], 0.8, 12), 1).unwrap();
    c.upsert(&pattern("d", &v[3], 0.95, 100), 1).unwrap();
    c.upsert(&pattern("low-rate", &v[4], 0.69, 50), 1).unwrap();
    c.upsert(&pattern("few", &v[5], 0.9, 9), 1).unwrap();
    assert_eq!(sync(&mut c, &mut t, 10).await, ["a", "b", "c", "d"]);
    let held = |srv: &constellation::ServerHandle| {
        let mut p: Vec<(String, u32)> = srv
            .device_state("tv-filter")
            .unwrap()
            .patterns
            .into_iter()
            .map(|p| (p.id, p.revision))
            .collect();
        p.sort();
        p
    };
    assert_eq!(held(&srv).len(), 4);
    // Nothing changed: nothing goes up.
    assert!(sync(&mut c, &mut t, 20).await.is_empty());
    // One passing pattern changes, one failing rises above the filter, one
    // failing changes but stays below it: two go up.
    c.upsert(&pattern("c", &v[6], 0.8, 13), 30).unwrap();
    c.upsert(&pattern("few", &v[5], 0.9, 10), 30).unwrap();
    c.upsert(&pattern("low-rate", &v[7], 0.6, 51), 30).unwrap();
    assert_eq!(sync(&mut c, &mut t, 40).await, ["c", "few"]);
    let want: Vec<(String, u32)> = [("a", 1), ("b", 1), ("c", 2), ("d", 1), ("few", 1)]
        .iter()
        .map(|(i, r)| (i.to_string(), *r))
        .collect();
    assert_eq!(held(&srv), want);
    srv.shutdown().await;
}
