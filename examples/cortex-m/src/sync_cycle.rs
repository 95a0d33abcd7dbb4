//! The device's full sync cycle on the target, for each codebook profile,
//! with zstd off and (feature `zstd`) on:
//!
//! 1. upsert [`PATTERNS`] patterns from the compiled-in real vectors;
//! 2. `prepare` an upload frame, compared byte for byte with the one the
//!    host's client prepared at build time (`build.rs`): quantisation and
//!    entropy coding are bit-exact across platforms;
//! 3. a corrupted copy of the recorded response is refused and changes
//!    nothing (the request stays in flight);
//! 4. `apply` (or `apply_zstd` through `ZstdBuffers` over a static workspace)
//!    the recorded server response: acks, a conflict with the server's
//!    state, a global removal, global upserts, trends;
//! 5. check the acked state (revisions, codes against the target's own
//!    quantisation, sequence, cursor, next sync time) and what reached the
//!    sink;
//! 6. snapshot (compared with the host's), restore, and save/load it
//!    through the `flash` feature (chunked: it is larger than a flash page).

use omega_tv_sync::codec::{minilm_small_v1, minilm_v1, Codebook};
use omega_tv_sync::sync::{persist, GlobalSink, Outcome, Summary, SyncClient};
use omega_tv_sync::{Error, GlobalPattern, Response, TrendSignal};
use static_cell::{ConstStaticCell, StaticCell};

use crate::ramflash::{RamFlash, PAGE, PAGES};
use crate::scenario::*;
use crate::stack::measure;
use crate::workload::block_on;
use crate::Checks;

/// The client type of the scenario.
pub type Client = SyncClient<'static, N>;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(env!("OUT_DIR"), "/", $name))
    };
}

/// What the host recorded for one profile and one zstd setting.
struct Fixture {
    upload: &'static [u8],
    auth: &'static [u8],
    response: &'static [u8],
    /// The response's `X-OTS-Signature` (64 hex digits).
    sig: &'static [u8],
    snapshot: &'static [u8],
}

static V1_PLAIN: Fixture = Fixture {
    upload: fixture!("upload-v1-plain.bin"),
    response: fixture!("response-v1-plain.bin"),
    sig: fixture!("sig-v1-plain.txt"),
    auth: fixture!("auth-v1-plain.txt"),
    snapshot: fixture!("snapshot-v1-plain.bin"),
};
static SMALL_PLAIN: Fixture = Fixture {
    upload: fixture!("upload-small-plain.bin"),
    response: fixture!("response-small-plain.bin"),
    sig: fixture!("sig-small-plain.txt"),
    auth: fixture!("auth-small-plain.txt"),
    snapshot: fixture!("snapshot-small-plain.bin"),
};
#[cfg(feature = "zstd")]
static V1_ZSTD: Fixture = Fixture {
    upload: fixture!("upload-v1-zstd.bin"),
    response: fixture!("response-v1-zstd.bin"),
    sig: fixture!("sig-v1-zstd.txt"),
    auth: fixture!("auth-v1-zstd.txt"),
    snapshot: fixture!("snapshot-v1-zstd.bin"),
};
#[cfg(feature = "zstd")]
static SMALL_ZSTD: Fixture = Fixture {
    upload: fixture!("upload-small-zstd.bin"),
    response: fixture!("response-small-zstd.bin"),
    sig: fixture!("sig-small-zstd.txt"),
    auth: fixture!("auth-small-zstd.txt"),
    snapshot: fixture!("snapshot-small-zstd.bin"),
};

/// A codebook profile: name, constructor, recorded fixture.
type Profile = (
    &'static str,
    fn() -> Result<Codebook<'static>, Error>,
    &'static Fixture,
);

/// Upload buffer: holds the upload of [`PATTERNS`] patterns.
const TX: usize = 8 * 1024;
/// Response buffer (`caps.max_bytes` of the default config).
const RX: usize = 16 * 1024;

/// Caller-owned buffers of the cycle, all static (constant-initialised:
/// no stack temporary).
pub struct Memory {
    tx: [u8; TX],
    rx: [u8; RX],
    snapshot: [u8; Client::MAX_SNAPSHOT_LEN],
    flash: [u8; PAGE * PAGES],
    #[cfg(feature = "zstd")]
    dctx: [u64; omega_tv_sync::wire::zstd::DCTX_WORKSPACE_WORDS],
}

static MEMORY: ConstStaticCell<Memory> = ConstStaticCell::new(Memory {
    tx: [0; TX],
    rx: [0; RX],
    snapshot: [0; Client::MAX_SNAPSHOT_LEN],
    // Zero here so that all of it lands in .bss; `RamFlash::new` erases it.
    flash: [0; PAGE * PAGES],
    #[cfg(feature = "zstd")]
    dctx: [0; omega_tv_sync::wire::zstd::DCTX_WORKSPACE_WORDS],
});
/// The client; created once, then [`SyncClient::reset`] in place per cycle.
static CLIENT: StaticCell<Client> = StaticCell::new();
/// The client restored from the snapshot ([`SyncClient::restore_into`]).
static RESTORED: StaticCell<Client> = StaticCell::new();

/// Counts what the response brought down and checks the global patterns.
struct Sink {
    rows: &'static [u8],
    upserts: usize,
    upserts_ok: bool,
    removed: Option<(u32, u64)>,
    trends: usize,
    trends_ok: bool,
}

impl GlobalSink for Sink {
    fn global_upsert(&mut self, g: &GlobalPattern) {
        let k = self.upserts;
        self.upserts += 1;
        let Some(&(gid, r)) = GLOBAL_ROWS.get(k) else {
            self.upserts_ok = false;
            return;
        };
        // The reconstruction is close to the row the server quantised.
        let cos = row(self.rows, r)
            .map(|e| e.dot(&g.embedding))
            .unwrap_or(0.0);
        self.upserts_ok &= g.id == gid && g.version == VERSIONS[1 + k] && cos > 0.97;
    }

    fn global_remove(&mut self, id: u32, version: u64) {
        self.removed = Some((id, version));
    }

    fn trend(&mut self, signal: &TrendSignal, version: u64) {
        let k = self.trends;
        self.trends += 1;
        self.trends_ok &= trend(k).is_ok_and(|t| &t == signal) && version == VERSIONS[3 + k];
    }
}

/// Runs every profile with zstd off, and on with feature `zstd`.
#[inline(never)]
pub fn run(c: &mut Checks, rows: &'static [u8]) {
    let m = MEMORY.take();
    let (Ok(cb0), Ok(cfg0)) = (minilm_small_v1(), config(false)) else {
        c.check("codebook and config", false);
        return;
    };
    let mut cs = CoreStack::default();
    let client = CLIENT.init_with(|| SyncClient::new(cb0, cfg0.clone()));
    let restored = RESTORED.init_with(|| SyncClient::new(cb0, cfg0));
    let profiles: [Profile; 2] = [
        ("minilm_v1", minilm_v1, &V1_PLAIN),
        ("minilm_small_v1", minilm_small_v1, &SMALL_PLAIN),
    ];
    for (name, cb, fx) in profiles {
        match cb() {
            Ok(cb) => {
                cortex_m_semihosting::hprintln!(
                    "sync cycle: {} ({} B codebook), zstd off",
                    name,
                    cb.flash_bytes()
                );
                cycle(c, &mut cs, m, client, restored, cb, fx, false, rows);
            }
            Err(_) => c.check("codebook loads", false),
        }
    }
    #[cfg(feature = "zstd")]
    {
        let zprofiles: [Profile; 2] = [
            ("minilm_v1", minilm_v1, &V1_ZSTD),
            ("minilm_small_v1", minilm_small_v1, &SMALL_ZSTD),
        ];
        for (name, cb, fx) in zprofiles {
            match cb() {
                Ok(cb) => {
                    cortex_m_semihosting::hprintln!("sync cycle: {}, zstd on", name);
                    cycle(c, &mut cs, m, client, restored, cb, fx, true, rows);
                }
                Err(_) => c.check("codebook loads", false),
            }
        }
    }
    cortex_m_semihosting::hprintln!(
        "core_stack_bytes upsert={} prepare={} sign={} apply={} apply_zstd={} snapshot={} restore_into={} flash_save_load={}",
        cs.upsert,
        cs.prepare,
        cs.sign,
        cs.apply,
        cs.apply_zstd,
        cs.snapshot,
        cs.restore,
        cs.flash
    );
}

/// Largest stack use of each core call, over all cycles (bytes beyond the
/// caller's frame, measured by [`crate::stack::measure`]).
#[derive(Default)]
pub struct CoreStack {
    /// `upsert` (quantise one pattern).
    pub upsert: usize,
    /// `prepare` (encode and frame).
    pub prepare: usize,
    /// `apply` (decode, check, apply, reconstruct globals for the sink).
    pub apply: usize,
    /// `apply_zstd` (the same after decompressing).
    pub apply_zstd: usize,
    /// `authorization` (HMAC-SHA256 request signature).
    pub sign: usize,
    /// `snapshot`.
    pub snapshot: usize,
    /// `restore_into`.
    pub restore: usize,
    /// `persist::save` + `persist::load` of the snapshot.
    pub flash: usize,
}

#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn cycle(
    c: &mut Checks,
    cs: &mut CoreStack,
    m: &mut Memory,
    client: &mut Client,
    restored: &mut Client,
    cb: Codebook<'static>,
    fx: &Fixture,
    zstd: bool,
    rows: &'static [u8],
) {
    let Ok(cfg) = config(zstd) else {
        c.check("config", false);
        return;
    };
    let Memory {
        tx,
        rx,
        snapshot,
        flash,
        #[cfg(feature = "zstd")]
        dctx,
    } = m;
    #[cfg(not(feature = "zstd"))]
    let dctx = ();
    client.reset(cb, cfg.clone());

    // 1. Patterns from the real vectors.
    let mut upserted = 0;
    for i in 0..PATTERNS {
        let Ok(p) = pattern(rows, i) else { continue };
        let (r, used) = measure(|| client.upsert(&p, NOW_MS));
        cs.upsert = cs.upsert.max(used);
        if r.is_ok() {
            upserted += 1;
        }
    }
    c.check(
        "  upsert 8 real patterns, all pending",
        upserted == PATTERNS && client.pending() == PATTERNS,
    );

    // 2. The upload frame, byte-exact with the host's.
    let (r, used) = measure(|| client.prepare(tx));
    cs.prepare = cs.prepare.max(used);
    let n = match r {
        Ok(n) => n,
        Err(_) => {
            c.check("  prepare", false);
            return;
        }
    };
    c.check(
        "  upload frame equals the host's byte for byte",
        tx[..n] == *fx.upload,
    );
    // 2b. The request signature, equal to the host's.
    let mut ab = [0u8; omega_tv_sync::transport::auth::HEADER_MAX];
    let (r, used) = measure(|| {
        client
            .authorization(
                omega_tv_sync::Method::Post,
                omega_tv_sync::sync::SYNC_PATH,
                &tx[..n],
                &mut ab,
            )
            .map(|h| h.map(str::len))
    });
    cs.sign = cs.sign.max(used);
    c.check(
        "  Authorization header (HMAC-SHA256) equals the host's",
        matches!(r, Ok(Some(len)) if ab[..len] == *fx.auth) && client.auth_counter() == 2,
    );
    let sent = &tx[..n];
    let resp = Response {
        status: 200,
        body_len: fx.response.len(),
        retry_after_s: None,
        signature: omega_tv_sync::transport::auth::parse_response_header(fx.sig),
    };

    // 3. A corrupted response changes nothing.
    let len = fx.response.len();
    rx[..len].copy_from_slice(fx.response);
    rx[len / 2] ^= 0x20;
    let bad = client.apply(sent, resp, &rx[..len], NOW_MS, &mut ());
    c.check(
        "  corrupted response refused, request still in flight",
        bad == Err(Error::Checksum) && client.in_flight() == Some(n) && client.seq() == 1,
    );

    // 4. The recorded response.
    let mut sink = Sink {
        rows,
        upserts: 0,
        upserts_ok: true,
        removed: None,
        trends: 0,
        trends_ok: true,
    };
    let outcome = apply(
        c,
        cs,
        (dctx, rx),
        client,
        sent,
        resp,
        fx.response,
        zstd,
        &mut sink,
    );
    let want = Summary {
        uploaded: PATTERNS as u16,
        acked: PATTERNS as u16 - 1,
        conflicts: 1,
        globals: 3,
        trends: 2,
        more: false,
    };
    c.check(
        "  response applied: 7 acks, 1 conflict, 3 global changes, 2 trends",
        outcome == Some(Outcome::Synced(want)),
    );

    // 5. The acked state.
    let mut acks_ok = true;
    for i in (0..PATTERNS).filter(|&i| i != CONFLICT) {
        let mine = row(rows, i).map(|e| cb.quantize(&e));
        acks_ok &= matches!(
            (id(i), mine),
            (Ok(id), Ok(q)) if client.acked(&id) == Some((ACK_REV, &q))
        );
    }
    c.check(
        "  acked codes = the target's own quantisation, revision 1",
        acks_ok,
    );
    let srv = row(rows, SERVER_ROW).map(|e| cb.quantize(&e));
    let conflict_ok = matches!(
        (id(CONFLICT), srv),
        (Ok(id), Ok(q)) if client.acked(&id) == Some((SERVER_REV, &q))
    );
    c.check(
        "  conflict: server's codes adopted at its revision, merge pending",
        conflict_ok && client.pending() == 1,
    );
    c.check(
        "  sequence 2, cursor 42, next sync in 600 s",
        client.seq() == 2
            && client.global_version() == GLOBAL_VERSION
            && client.in_flight().is_none()
            && client.next_sync_at() == NOW_MS + u64::from(NEXT_SYNC_S) * 1000,
    );
    c.check(
        "  sink: 1 removal, 2 global patterns (cos > 0.97 to their rows), 2 trends",
        sink.removed == Some((GLOBAL_REMOVED, VERSIONS[0]))
            && sink.upserts == 2
            && sink.upserts_ok
            && sink.trends == 2
            && sink.trends_ok,
    );

    // 6. Snapshot, restore, flash.
    let (r, used) = measure(|| client.snapshot(snapshot));
    cs.snapshot = cs.snapshot.max(used);
    let sn = r.unwrap_or(0);
    c.check(
        "  snapshot equals the host's byte for byte",
        sn > 0 && snapshot[..sn] == *fx.snapshot,
    );
    restored.reset(cb, cfg);
    let (r, used) = measure(|| restored.restore_into(&snapshot[..sn]));
    cs.restore = cs.restore.max(used);
    let ok = r.is_ok();
    let same = ok
        && restored.seq() == client.seq()
        && restored.global_version() == client.global_version()
        && client
            .ids()
            .all(|id| restored.acked(id) == client.acked(id));
    c.check("  restored: same sequence, cursor, acked state", same);

    let (stored, used) = measure(|| store(flash, &snapshot[..sn], rx));
    cs.flash = cs.flash.max(used);
    c.check(
        "  snapshot (several flash pages) saved and loaded back",
        sn > PAGE && stored,
    );
}

/// Saves `snapshot` on the RAM flash and loads it back into `out`.
#[inline(never)]
fn store(flash: &mut [u8; PAGE * PAGES], snapshot: &[u8], out: &mut [u8]) -> bool {
    let mut flash = RamFlash::new(flash);
    let range = 0..(PAGE * PAGES) as u32;
    let mut work = [0u8; persist::work_len::<RamFlash>()];
    let saved = block_on(persist::save(
        &mut flash,
        range.clone(),
        &mut work,
        snapshot,
    ));
    let n = snapshot.len();
    out[..n].fill(0);
    let loaded = block_on(persist::load(&mut flash, range, &mut work, out));
    saved.is_ok() && loaded == Ok(Some(n)) && out[..n] == *snapshot
}

#[cfg(feature = "zstd")]
type Dctx<'a> = &'a mut [u64];
#[cfg(not(feature = "zstd"))]
type Dctx<'a> = ();

#[allow(clippy::too_many_arguments)]
fn apply(
    c: &mut Checks,
    cs: &mut CoreStack,
    (dctx, scratch): (Dctx<'_>, &mut [u8]),
    client: &mut Client,
    sent: &[u8],
    resp: Response,
    body: &[u8],
    zstd: bool,
    sink: &mut Sink,
) -> Option<Outcome> {
    if !zstd {
        let _ = (dctx, scratch);
        let (r, used) = measure(|| client.apply(sent, resp, body, NOW_MS, sink));
        cs.apply = cs.apply.max(used);
        return r.ok();
    }
    #[cfg(feature = "zstd")]
    {
        use omega_tv_sync::sync::ZstdBuffers;
        // Plain apply refuses a compressed body and keeps the request.
        c.check(
            "  compressed response refused by plain apply",
            client.apply(sent, resp, body, NOW_MS, sink) == Err(Error::BadFlags),
        );
        let Ok(mut z) = ZstdBuffers::new(dctx, scratch) else {
            c.check("  zstd workspace", false);
            return None;
        };
        let (r, used) = measure(|| client.apply_zstd(sent, resp, body, &mut z, NOW_MS, sink));
        cs.apply_zstd = cs.apply_zstd.max(used);
        r.ok()
    }
    #[cfg(not(feature = "zstd"))]
    {
        c.check("zstd cycle needs feature zstd", false);
        None
    }
}
