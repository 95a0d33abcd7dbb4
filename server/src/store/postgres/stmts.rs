//! The prepared statements of one connection.

use super::*;

/// The statements, prepared once per connection.
pub(super) struct Stmts {
    pub(super) lock_insert: Statement,
    pub(super) lock_select: Statement,
    pub(super) device: Statement,
    pub(super) put_device: Statement,
    pub(super) pattern: Statement,
    pub(super) device_patterns: Statement,
    pub(super) put_pattern: Statement,
    pub(super) remove_pattern: Statement,
    pub(super) revision_floor: Statement,
    pub(super) meta: Statement,
    pub(super) set_meta: Statement,
    pub(super) log_after: Statement,
    pub(super) changes: Statement,
    pub(super) drop_changes: Statement,
    pub(super) contribution: Statement,
    pub(super) device_contributions: Statement,
    pub(super) put_contribution: Statement,
    pub(super) del_contribution: Statement,
    pub(super) aggregate: Statement,
    pub(super) aggregates: Statement,
    pub(super) put_aggregate: Statement,
    pub(super) del_aggregate: Statement,
    pub(super) device_count: Statement,
    pub(super) enrolment: Statement,
    pub(super) put_enrolment: Statement,
    pub(super) publish: Statement,
    pub(super) prune: Statement,
    pub(super) drop_tombstone: Statement,
    pub(super) raise_horizon: Statement,
    pub(super) leader_term: Statement,
}

pub(super) const DEVICE_COLS: &str = "last_seq, body_sha256, response, snapshot_horizon, syncs";
pub(super) const PATTERN_COLS: &str =
    "revision, codebook, success_rate, sample_count, category, codes";

impl Stmts {
    pub(super) async fn prepare(c: &Client) -> Result<Self, tokio_postgres::Error> {
        Ok(Stmts {
            lock_insert: c
                .prepare("INSERT INTO devices (device_id) VALUES ($1) ON CONFLICT DO NOTHING")
                .await?,
            lock_select: c
                .prepare(&format!(
                    "SELECT {DEVICE_COLS} FROM devices WHERE device_id = $1 FOR UPDATE"
                ))
                .await?,
            device: c
                .prepare(&format!(
                    "SELECT {DEVICE_COLS} FROM devices WHERE device_id = $1"
                ))
                .await?,
            put_device: c
                .prepare(
                    "INSERT INTO devices (device_id, last_seq, body_sha256, response, \
                     snapshot_horizon, syncs) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (device_id) DO UPDATE SET last_seq = EXCLUDED.last_seq, \
                     body_sha256 = EXCLUDED.body_sha256, response = EXCLUDED.response, \
                     snapshot_horizon = EXCLUDED.snapshot_horizon, syncs = EXCLUDED.syncs",
                )
                .await?,
            pattern: c
                .prepare(&format!(
                    "SELECT {PATTERN_COLS} FROM patterns WHERE device_id = $1 AND pattern_id = $2"
                ))
                .await?,
            device_patterns: c
                .prepare(&format!(
                    "SELECT pattern_id, {PATTERN_COLS} FROM patterns WHERE device_id = $1 \
                     ORDER BY pattern_id"
                ))
                .await?,
            put_pattern: c
                .prepare(
                    "WITH p AS (INSERT INTO patterns (device_id, pattern_id, revision, codebook, \
                     success_rate, sample_count, category, codes) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (device_id, pattern_id) DO UPDATE SET \
                     revision = EXCLUDED.revision, codebook = EXCLUDED.codebook, \
                     success_rate = EXCLUDED.success_rate, sample_count = EXCLUDED.sample_count, \
                     category = EXCLUDED.category, codes = EXCLUDED.codes) \
                     INSERT INTO device_changes (device_id, pattern_id) VALUES ($1, $2)",
                )
                .await?,
            remove_pattern: c
                .prepare(
                    "WITH d AS (DELETE FROM patterns WHERE device_id = $1 AND pattern_id = $2 \
                     RETURNING revision), \
                     f AS (INSERT INTO revision_floors (device_id, floor) \
                     SELECT $1, revision FROM d ON CONFLICT (device_id) DO UPDATE \
                     SET floor = GREATEST(revision_floors.floor, EXCLUDED.floor)) \
                     INSERT INTO device_changes (device_id, pattern_id) VALUES ($1, $2)",
                )
                .await?,
            revision_floor: c
                .prepare("SELECT floor FROM revision_floors WHERE device_id = $1")
                .await?,
            meta: c.prepare("SELECT value FROM meta WHERE key = $1").await?,
            set_meta: c
                .prepare(
                    "INSERT INTO meta (key, value) VALUES ($1, $2) \
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                )
                .await?,
            log_after: c
                .prepare(
                    "SELECT version, entry FROM global_log WHERE version > $1 \
                     ORDER BY version LIMIT $2",
                )
                .await?,
            changes: c
                .prepare(
                    "SELECT seq, device_id, pattern_id FROM device_changes ORDER BY seq LIMIT $1",
                )
                .await?,
            drop_changes: c
                .prepare("DELETE FROM device_changes WHERE seq = ANY($1)")
                .await?,
            contribution: c
                .prepare("SELECT data FROM contributions WHERE device_id = $1 AND pattern_id = $2")
                .await?,
            device_contributions: c
                .prepare(
                    "SELECT pattern_id, data FROM contributions WHERE device_id = $1 \
                     ORDER BY pattern_id",
                )
                .await?,
            put_contribution: c
                .prepare(
                    "INSERT INTO contributions (device_id, pattern_id, data) VALUES ($1, $2, $3) \
                     ON CONFLICT (device_id, pattern_id) DO UPDATE SET data = EXCLUDED.data",
                )
                .await?,
            del_contribution: c
                .prepare("DELETE FROM contributions WHERE device_id = $1 AND pattern_id = $2")
                .await?,
            aggregate: c
                .prepare("SELECT data FROM aggregates WHERE id = $1")
                .await?,
            aggregates: c
                .prepare("SELECT id, data FROM aggregates ORDER BY id")
                .await?,
            put_aggregate: c
                .prepare(
                    "INSERT INTO aggregates (id, data) VALUES ($1, $2) \
                     ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data",
                )
                .await?,
            del_aggregate: c.prepare("DELETE FROM aggregates WHERE id = $1").await?,
            device_count: c
                .prepare("SELECT count(*) FROM devices WHERE last_seq IS NOT NULL")
                .await?,
            enrolment: c
                .prepare(
                    "SELECT generation, enrolled_at, revoked, last_counter FROM enrolments \
                     WHERE device_id = $1",
                )
                .await?,
            put_enrolment: c
                .prepare(
                    "INSERT INTO enrolments (device_id, generation, enrolled_at, revoked, \
                     last_counter) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device_id) DO UPDATE \
                     SET generation = EXCLUDED.generation, enrolled_at = EXCLUDED.enrolled_at, \
                     revoked = EXCLUDED.revoked, last_counter = EXCLUDED.last_counter",
                )
                .await?,
            publish: c
                .prepare(
                    "WITH v AS (UPDATE meta SET value = value + 1 WHERE key = 'global_version' \
                     RETURNING value) \
                     INSERT INTO global_log (version, item_key, tombstone, entry) \
                     SELECT value, $1, $2, $3 FROM v \
                     ON CONFLICT (item_key) DO UPDATE SET version = EXCLUDED.version, \
                     tombstone = EXCLUDED.tombstone, entry = EXCLUDED.entry \
                     RETURNING version",
                )
                .await?,
            prune: c
                .prepare("DELETE FROM global_log WHERE version < $1 AND tombstone")
                .await?,
            drop_tombstone: c
                .prepare("DELETE FROM global_log WHERE version = $1 AND tombstone")
                .await?,
            leader_term: c
                .prepare("SELECT value FROM meta WHERE key = 'leader_term' FOR SHARE")
                .await?,
            raise_horizon: c
                .prepare(
                    "INSERT INTO meta (key, value) VALUES ('horizon', $1) ON CONFLICT (key) \
                     DO UPDATE SET value = GREATEST(meta.value, EXCLUDED.value)",
                )
                .await?,
        })
    }
}
