//! A simulated TV: its learned patterns, its sync client, its random
//! stream and what its sessions were told.

use std::sync::Arc;

use omega_tv_sync::codec::Codebook;
use omega_tv_sync::sync::SyncClient;
use omega_tv_sync::types::DeviceId;

use super::config::{device_config, device_id, SimConfig};
use super::ledger::Ledger;
use super::model::{initial_patterns, watch, Catalog, TvPattern};
use super::rng::Rng;

/// Pattern slots per simulated TV.
pub const CAPACITY: usize = 24;

/// A simulated TV's sync client.
pub type Client = SyncClient<'static, CAPACITY>;

/// A simulated TV.
pub struct Tv {
    /// Device id (`tv-000042`).
    pub id: DeviceId,
    /// What it has learned, in floats.
    pub patterns: Vec<TvPattern>,
    /// Its sync client.
    pub client: Client,
    pub(super) rng: Rng,
    /// Successful syncs.
    pub synced: u32,
    /// Exchanges attempted.
    pub attempts: u32,
    pub(super) offline_until: u64,
    pub(super) last_watch_at: u64,
    /// Acks and conflicts seen by this TV and any twin of it.
    pub ledger: Ledger,
    /// A copy of the persisted state taken after sync `.1`: a stale twin
    /// box restored from it syncs before this TV's sync `.1 + 2`.
    pub(super) twin: Option<(Vec<u8>, u32)>,
    pub(super) tx: Option<Vec<u8>>,
}

impl Tv {
    pub(super) fn new(cat: &Catalog, cb: Codebook<'static>, cfg: &SimConfig, index: usize) -> Tv {
        let mut rng = Rng::new(cfg.seed, index as u64);
        let n = rng.range(cfg.patterns.0 as u64, cfg.patterns.1 as u64) as usize;
        let patterns = initial_patterns(cat, &mut rng, n.min(CAPACITY));
        let id = DeviceId::new(&device_id(index)).expect("short id");
        let client = SyncClient::new(cb, device_config(id.clone(), cfg, index));
        Tv {
            id,
            patterns,
            client,
            rng,
            synced: 0,
            attempts: 0,
            offline_until: 0,
            last_watch_at: 0,
            ledger: Ledger::default(),
            twin: None,
            tx: None,
        }
    }

    /// Lets the TV watch for the virtual time since it last did, then hands
    /// changed patterns to the client.
    pub(super) fn live_until(&mut self, cat: &Arc<Catalog>, now_ms: u64, watch_rate: f64) {
        let minutes = now_ms.saturating_sub(self.last_watch_at) as f64 / 60_000.0;
        self.last_watch_at = now_ms;
        let events = self.rng.poisson((watch_rate * minutes / 10.0).min(50.0));
        for _ in 0..events {
            watch(cat, &mut self.rng, &mut self.patterns);
        }
        self.hand_over(now_ms);
    }

    pub(super) fn hand_over(&mut self, now_ms: u64) {
        for p in self.patterns.iter_mut().filter(|p| p.changed) {
            self.client
                .upsert(&p.to_pattern(), now_ms)
                .expect("capacity covers every pattern");
            p.changed = false;
        }
    }
}
