//! The PostgreSQL schema, as numbered migrations applied at start.
//!
//! [`migrate`] takes a session advisory lock (so nodes starting together
//! apply each migration once), creates `schema_version` if missing, applies
//! every migration newer than the highest recorded version, each in its own
//! transaction together with its `schema_version` row, and releases the lock.
//! A database whose schema is newer than this binary knows is refused.

use tokio_postgres::Client;

/// One schema step.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// Its version: 1, 2, ... in order, never reused.
    pub version: i32,
    /// The SQL that takes the schema from `version - 1` to `version`.
    pub sql: &'static str,
}

/// Key of the advisory lock migrations run under ("constellation schema").
pub const MIGRATION_LOCK: i64 = 0x0c05_7e11_a710_0001;

/// Version 1: every table of the store.
///
/// Text keys use the "C" collation: byte order, the order redb keeps them
/// in, and cheaper comparisons. Device-keyed tables (`devices`,
/// `enrolments`, `patterns`, `device_changes`, `contributions`) are keyed
/// by `device_id` first, so they can be distributed by it (Citus) or live on
/// the device's own database.
pub const V1: &str = r#"
CREATE TABLE devices (
    device_id        text COLLATE "C" PRIMARY KEY,
    last_seq         bigint,
    body_sha256      bytea,
    response         bytea,
    snapshot_horizon bigint,
    syncs            bigint NOT NULL DEFAULT 0
);
CREATE TABLE enrolments (
    device_id    text COLLATE "C" PRIMARY KEY,
    generation   bigint  NOT NULL,
    enrolled_at  bigint  NOT NULL,
    revoked      boolean NOT NULL,
    last_counter bigint  NOT NULL
);
CREATE TABLE patterns (
    device_id    text COLLATE "C" NOT NULL,
    pattern_id   text COLLATE "C" NOT NULL,
    revision     bigint NOT NULL,
    codebook     bigint NOT NULL,
    success_rate real   NOT NULL,
    sample_count bigint NOT NULL,
    category     text   NOT NULL,
    codes        bytea  NOT NULL,
    PRIMARY KEY (device_id, pattern_id)
);
CREATE TABLE device_changes (
    seq        bigserial PRIMARY KEY,
    device_id  text COLLATE "C" NOT NULL,
    pattern_id text COLLATE "C" NOT NULL
);
CREATE TABLE contributions (
    device_id  text COLLATE "C" NOT NULL,
    pattern_id text COLLATE "C" NOT NULL,
    data       bytea NOT NULL,
    PRIMARY KEY (device_id, pattern_id)
);
CREATE TABLE meta (
    key   text COLLATE "C" PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO meta (key, value) VALUES
    ('global_version', 0), ('horizon', 0), ('change_seq', 0),
    ('aggregate_cursor', 0), ('global_id', 0);
CREATE TABLE global_log (
    item_key  text COLLATE "C" PRIMARY KEY,
    version   bigint  NOT NULL UNIQUE,
    tombstone boolean NOT NULL,
    entry     bytea   NOT NULL
);
CREATE TABLE aggregates (
    id   bigint PRIMARY KEY,
    data bytea NOT NULL
);
"#;

/// Version 2: each device's revision floor (`ReadTxn::revision_floor`),
/// the highest revision of any pattern it removed, so that a pattern id
/// re-created after a removal continues above every revision it had.
/// Keyed by `device_id` like the other device tables. Nothing is derived
/// from the version 1 data: revisions of patterns removed before the
/// upgrade are not known (their rows are gone); floors start at 0 and rise
/// with the first removal after it.
pub const V2: &str = r#"
CREATE TABLE revision_floors (
    device_id text COLLATE "C" PRIMARY KEY,
    floor     bigint NOT NULL CHECK (floor >= 0)
);
"#;

/// Every migration this binary knows, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: V1,
    },
    Migration {
        version: 2,
        sql: V2,
    },
];

/// Applies `migrations` newer than the database's version; returns the
/// version the database is at afterwards.
pub async fn migrate(client: &Client, migrations: &[Migration]) -> Result<i32, String> {
    let e = |e: tokio_postgres::Error| format!("migrating the schema: {e}");
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(e)?;
    let r = migrate_locked(client, migrations).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(e);
    let v = r?;
    unlocked?;
    Ok(v)
}

async fn migrate_locked(client: &Client, migrations: &[Migration]) -> Result<i32, String> {
    let e = |e: tokio_postgres::Error| format!("migrating the schema: {e}");
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_version (
                version    integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(e)?;
    let row = client
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await
        .map_err(e)?;
    let mut current: i32 = row.get(0);
    let known = migrations.last().map_or(0, |m| m.version);
    if current > known {
        return Err(format!(
            "the database schema is version {current}, newer than this server knows ({known}); \
             upgrade the server"
        ));
    }
    let from = current;
    for m in migrations.iter().filter(|m| m.version > from) {
        if m.version != current + 1 {
            return Err(format!(
                "migration {} does not follow version {current}",
                m.version
            ));
        }
        let sql = format!(
            "BEGIN;\n{}\nINSERT INTO schema_version (version) VALUES ({});\nCOMMIT;",
            m.sql, m.version
        );
        if let Err(err) = client.batch_execute(&sql).await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(format!("applying schema version {}: {err}", m.version));
        }
        tracing::info!(version = m.version, "applied schema migration");
        current = m.version;
    }
    Ok(current)
}
