//! A simulated TV: its learned patterns, its sync client, its random
//! stream and what its sessions were told.

use std::collections::BTreeMap;
use std::sync::Arc;

use omega_tv_sync::codec::{minilm_small_v1, minilm_v1, Codebook, Codes};
use omega_tv_sync::sync::{CodedGlobal, GlobalSink, SyncClient};
use omega_tv_sync::types::DeviceId;
use omega_tv_sync::Embedding;

use super::config::{device_config, device_id, small_profile, SimConfig};
use super::ledger::Ledger;
use super::model::{initial_patterns, watch, Catalog, TvPattern};
use super::rng::Rng;

/// Pattern slots per simulated TV.
pub const CAPACITY: usize = 24;

/// A simulated TV's sync client.
pub type Client = SyncClient<'static, CAPACITY>;

/// The global patterns a TV holds, as its sessions applied them (its
/// [`GlobalSink`]): the version of each live id and, when asked for (the
/// small-profile TVs, whose copies are transcoded by the server), its codes.
/// Like firmware that scores in the code domain, it takes globals as codes
/// and reconstructs nothing while syncing ([`GlobalSink::RECONSTRUCT`] is
/// `false`); [`Globals::embeddings`] reconstructs on request.
#[derive(Clone, Debug, Default)]
pub struct Globals {
    /// Live global pattern ids and the version of the state held.
    pub versions: BTreeMap<u32, u64>,
    /// The codes of each, with the id of their codebook, when kept.
    pub codes: Option<BTreeMap<u32, (u32, Box<Codes>)>>,
}

impl Globals {
    /// The kept globals reconstructed, by id (those whose codebook is not
    /// one of the shipped ones are left out).
    pub fn embeddings(&self) -> Vec<(u32, Embedding)> {
        let books: Vec<Codebook<'static>> = [minilm_v1(), minilm_small_v1()]
            .into_iter()
            .flatten()
            .collect();
        let Some(codes) = &self.codes else {
            return Vec::new();
        };
        codes
            .iter()
            .filter_map(|(&id, (book, c))| {
                let cb = books.iter().find(|b| b.id() == *book)?;
                Some((id, cb.reconstruct(c).ok()?))
            })
            .collect()
    }
}

impl GlobalSink for Globals {
    const RECONSTRUCT: bool = false;
    fn reset(&mut self) {
        self.versions.clear();
        if let Some(c) = &mut self.codes {
            c.clear();
        }
    }
    fn global_codes(&mut self, p: &CodedGlobal<'_, '_>) {
        self.versions.insert(p.id, p.version);
        if let Some(c) = &mut self.codes {
            c.insert(p.id, (p.codebook.id(), Box::new(*p.codes)));
        }
    }
    fn global_remove(&mut self, id: u32, _version: u64) {
        self.versions.remove(&id);
        if let Some(c) = &mut self.codes {
            c.remove(&id);
        }
    }
}

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
    /// The global patterns it holds.
    pub globals: Globals,
    /// On the small-flash codebook (`minilm-small-v1`).
    pub small_profile: bool,
    /// A copy of the persisted state taken after sync `.1`: a stale twin
    /// box restored from it syncs before this TV's sync `.1 + 2`.
    pub(super) twin: Option<(Vec<u8>, u32)>,
    pub(super) tx: Option<Vec<u8>>,
}

impl Tv {
    /// TV number `index`, on codebook `cb`.
    pub(super) fn new(cat: &Catalog, cb: Codebook<'static>, cfg: &SimConfig, index: usize) -> Tv {
        let mut rng = Rng::new(cfg.seed, index as u64);
        let n = rng.range(cfg.patterns.0 as u64, cfg.patterns.1 as u64) as usize;
        let patterns = initial_patterns(cat, &mut rng, n.min(CAPACITY));
        let id = DeviceId::new(&device_id(index)).expect("short id");
        let client = SyncClient::new(cb, device_config(id.clone(), cfg, index));
        let small = small_profile(cfg, index);
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
            globals: Globals {
                versions: BTreeMap::new(),
                codes: small.then(BTreeMap::new),
            },
            small_profile: small,
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
