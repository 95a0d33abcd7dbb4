//! The sync mode (`--syncs N`): the real `SyncClient` against
//! Constellation, then the server's state read back and compared.

use omega_tv_sync::codec::minilm_v1;
use omega_tv_sync::sync::{Config as SyncConfig, Outcome, SyncClient, SyncError};
use omega_tv_sync::{Category, DeviceId, Embedding, Pattern, PatternId, Transport, DIM};
use omega_tv_sync_embassy::{
    Buffers, Config as NetConfig, EmbassyTransport, Error, RECOMMENDED_HEADER_BUFFER,
    RECOMMENDED_TCP_BUFFER,
};

use crate::checks::Checks;

/// Patterns the sync mode keeps (real vectors, rows `0..SYNC_PATTERNS`).
pub const SYNC_PATTERNS: usize = 6;
/// Device id of the sync mode (default of `--device`).
pub const SYNC_DEVICE: &str = "stb-netns-embassy-0001";

/// The first `n` rows of `data/minilm/<name>` as embeddings.
fn rows(name: &str, n: usize) -> Result<Vec<Embedding>, String> {
    let path = omega_tv_sync_testkit::data::data_dir().join(name);
    let rows = omega_tv_sync_testkit::read_rows(&path).map_err(|e| e.to_string())?;
    rows.into_iter()
        .take(n)
        .map(|r| Embedding::new(r).map_err(|e| format!("{}: {e:?}", path.display())))
        .collect()
}

/// Pattern `i` at sync `k`: row `i`, pulled towards item `k` (one more
/// watched item per sync), with more samples each time.
fn drifted(pats: &[Embedding], items: &[Embedding], i: usize, k: usize) -> Option<Pattern> {
    let mut v = [0f32; DIM];
    let w = if k == 0 { 0.0 } else { 0.25 };
    for (d, x) in v.iter_mut().enumerate() {
        *x = pats[i].as_array()[d] + w * items[(i * 7 + k) % items.len()].as_array()[d];
    }
    Pattern::new(
        PatternId::new(&format!("pattern-{i}")).ok()?,
        Embedding::normalize(v).ok()?,
        0.8,
        20 + k as u32,
        Category::new("drama").ok()?,
    )
    .ok()
}

/// Where the server's admin listener is: the stack to reach it, its
/// address and port, and the bearer token of its device read-back.
pub struct Admin<'a> {
    /// The network stack.
    pub stack: embassy_net::Stack<'static>,
    /// The server's address.
    pub ip: embassy_net::Ipv4Address,
    /// The admin listener's port.
    pub port: u16,
    /// The admin bearer token.
    pub token: &'a str,
}

impl Admin<'_> {
    /// `GET path` on the admin listener with the bearer token (plain HTTP,
    /// its own connection and buffers); `(status, body)`.
    async fn get(&self, path: &str, buf: &mut [u8]) -> Result<(u16, usize), Error> {
        let mut tcp_rx = vec![0u8; RECOMMENDED_TCP_BUFFER];
        let mut tcp_tx = vec![0u8; RECOMMENDED_TCP_BUFFER];
        let mut header = vec![0u8; RECOMMENDED_HEADER_BUFFER];
        let host = format!("{}:{}", self.ip, self.port);
        let mut cfg = NetConfig::new((self.ip, self.port).into(), &host);
        cfg.timeout = embassy_time::Duration::from_secs(5);
        let mut t = EmbassyTransport::new(
            self.stack,
            cfg,
            Buffers {
                tcp_rx: &mut tcp_rx,
                tcp_tx: &mut tcp_tx,
                header: &mut header,
            },
        );
        let bearer = format!("Bearer {}", self.token);
        let headers = [("Authorization", bearer.as_str())];
        let req = omega_tv_sync::Request {
            headers: &headers,
            ..omega_tv_sync_testkit::get(path)
        };
        let r = t.send(req, buf).await?;
        Ok((r.status, r.body_len))
    }
}

/// The real sync cycle against Constellation: `n` syncs with drifting
/// patterns, then the server's stored state read back from its admin
/// listener `admin` and compared. Returns `Some(3)` when the server has no
/// codec yet.
pub async fn run_sync<T: Transport<Error = Error>>(
    t: &mut T,
    admin: &Admin<'_>,
    device: &str,
    n: usize,
    key: Option<omega_tv_sync::DeviceKey>,
    checks: &mut Checks,
) -> Option<i32> {
    let (pats, items) = match (
        rows("patterns_public.f32", SYNC_PATTERNS),
        rows("items_public.f32", 64),
    ) {
        (Ok(p), Ok(i)) => (p, i),
        (Err(e), _) | (_, Err(e)) => {
            checks.check(&format!("real vectors: {e}"), false);
            return None;
        }
    };
    let (Ok(cb), Ok(id)) = (minilm_v1(), DeviceId::new(device)) else {
        checks.check("codebook and device id", false);
        return None;
    };
    let mut sync_cfg = SyncConfig::new(id);
    sync_cfg.auth_key = key;
    let mut client: Box<SyncClient<'static, 16>> = Box::new(SyncClient::new(cb, sync_cfg));
    let mut tx = vec![0u8; 32 * 1024];
    let mut rx = vec![0u8; client.config().caps.max_bytes as usize];
    let start = embassy_time::Instant::now();
    for k in 0..n {
        for i in 0..SYNC_PATTERNS {
            match drifted(&pats, &items, i, k) {
                Some(p) => {
                    if client.upsert(&p, start.elapsed().as_millis()).is_err() {
                        checks.check("upsert", false);
                    }
                }
                None => checks.check("pattern", false),
            }
        }
        let pending = client.pending();
        // A bounded number of attempts per sync (a 503 is retried at once:
        // the timing is not what is tested here).
        let mut done = false;
        for _attempt in 0..3 {
            let now = start.elapsed().as_millis();
            match client.exchange(t, &mut tx, &mut rx, now, &mut ()).await {
                Ok(Outcome::Synced(s)) => {
                    checks.check(
                        &format!(
                            "sync {k}: {} uploaded, {} acked, {} conflicts, seq now {}",
                            s.uploaded,
                            s.acked,
                            s.conflicts,
                            client.seq()
                        ),
                        s.uploaded as usize == pending
                            && s.acked as usize == pending
                            && s.conflicts == 0
                            && client.pending() == 0,
                    );
                    done = true;
                    break;
                }
                Ok(other) => println!("sync {k}: {other:?}, again"),
                Err(SyncError::Core(omega_tv_sync::Error::Rejected))
                    if k == 0 && rx.windows(16).any(|w| w == b"unknown_codebook") =>
                {
                    // The error body is still in `rx`.
                    println!("sync {k}: the server has no codec (422 unknown_codebook)");
                    return Some(3);
                }
                Err(e) => {
                    checks.check(&format!("sync {k}: {e:?}"), false);
                    break;
                }
            }
        }
        if !done {
            checks.check(&format!("sync {k} completed"), false);
        }
    }

    // Read back what the server holds.
    let path = format!("/api/v1/devices/{device}/patterns");
    let mut buf = vec![0u8; 256 * 1024];
    let r = admin.get(&path, &mut buf).await;
    let body = match r {
        Ok((200, len)) => &buf[..len],
        other => {
            checks.check(&format!("admin read-back: {other:?}"), false);
            return None;
        }
    };
    let state: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            checks.check(&format!("admin read-back JSON: {e}"), false);
            return None;
        }
    };
    let stored = state["patterns"].as_array().cloned().unwrap_or_default();
    checks.check(
        &format!(
            "server holds {} patterns ({} B read back)",
            stored.len(),
            body.len()
        ),
        stored.len() == SYNC_PATTERNS,
    );
    for i in 0..SYNC_PATTERNS {
        let Ok(pid) = PatternId::new(&format!("pattern-{i}")) else {
            continue;
        };
        let mine = client.acked(&pid);
        let theirs = stored.iter().find(|p| p["id"] == pid.as_str());
        let same = match (mine, theirs) {
            (Some((rev, codes)), Some(p)) => {
                let srv: Vec<i64> = p["codes"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|c| c.as_i64()).collect())
                    .unwrap_or_default();
                p["revision"].as_u64() == Some(u64::from(rev))
                    && srv.len() == DIM
                    && srv
                        .iter()
                        .zip(codes.iter())
                        .all(|(a, b)| *a == i64::from(*b))
            }
            _ => false,
        };
        checks.check(
            &format!(
                "{}: server revision and codes = the client's acked (rev {:?})",
                pid.as_str(),
                mine.map(|m| m.0)
            ),
            same,
        );
    }
    checks.check(
        &format!("server's last_seq = {} syncs", n),
        state["last_seq"].as_u64() == Some(n as u64) && client.seq() == n as u64 + 1,
    );
    None
}
