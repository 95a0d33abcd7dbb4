//! The checker's ledger: what each device id's sessions were told (acks
//! with the state acknowledged, conflicts), kept while the run goes and read
//! by `check.rs`.

use std::collections::{btree_map, BTreeMap, HashMap};

use omega_tv_sync::types::PatternId;

use super::faults::Exchange;
use super::tv::Client;

/// What a device id's sessions were told, for the checker.
///
/// Every application of an update gives the pattern the next revision on
/// the server, so an application is identified by (pattern, revision), not
/// by an acknowledgement: one application can be acknowledged to two
/// sessions. That happens when a stale twin and its original, restored from
/// the same snapshot and sharing the device id and sequence numbers, send
/// byte-identical requests under one sequence number (both made the same
/// change): the server cannot tell the second from a retry of the first and
/// replays the first's response, which acknowledges to the second exactly
/// the state it asked for. (Patterns are never removed in the simulation,
/// so a pattern's revisions only grow.)
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// Per pattern id: each revision acknowledged to a session, with a
    /// fingerprint of the state acknowledged at it (codes, rate, samples,
    /// category).
    pub acks: HashMap<String, BTreeMap<u32, u64>>,
    /// Acknowledgements of a revision already acknowledged to a session with
    /// the same state (one application, two sessions told).
    pub shared_acks: u64,
    /// Acknowledgements of a revision already acknowledged with a different
    /// state: two applications were given one revision, so the server lost
    /// one of them (each is a lost update).
    pub reused_revisions: u64,
    /// Patterns with a conflict not yet followed by an ack.
    pub unresolved: HashMap<String, u32>,
    /// Conflicts received.
    pub conflicts: u64,
    /// Conflicts followed by an ack of the resolution.
    pub resolved: u64,
}

impl Ledger {
    /// Records the acks and conflicts of an exchange `client` applied;
    /// `sent` is its request.
    pub(super) fn record(&mut self, ex: &Exchange, client: &Client, sent: &[u8]) {
        for (id, &rev) in ex.acked.iter().zip(&ex.acked_revs) {
            let state = fingerprint(client, sent, id);
            match self.acks.entry(id.clone()).or_default().entry(rev) {
                btree_map::Entry::Vacant(v) => {
                    v.insert(state);
                }
                btree_map::Entry::Occupied(o) if *o.get() == state => self.shared_acks += 1,
                btree_map::Entry::Occupied(_) => self.reused_revisions += 1,
            }
            if let Some(n) = self.unresolved.remove(id) {
                self.resolved += u64::from(n);
            }
        }
        for id in &ex.conflicts {
            self.conflicts += 1;
            *self.unresolved.entry(id.clone()).or_default() += 1;
        }
    }
}

/// The state acknowledged for pattern `id`: the client's acknowledged codes
/// (what it sent, decoded) and the rate, samples and category of the
/// request's record.
fn fingerprint(client: &Client, sent: &[u8], id: &str) -> u64 {
    use omega_tv_sync::wire::{FrameReader, Record};
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let pid = PatternId::new(id).ok();
    if let Some((_, codes)) = pid.as_ref().and_then(|p| client.acked(p)) {
        codes.hash(&mut h);
    }
    if let Ok(f) = FrameReader::parse(sent) {
        for r in f.records().flatten() {
            if let Record::Pattern(p) = r {
                if p.id.as_str() == id {
                    p.success_rate.to_bits().hash(&mut h);
                    p.sample_count.hash(&mut h);
                    p.category.as_str().hash(&mut h);
                }
            }
        }
    }
    h.finish()
}
