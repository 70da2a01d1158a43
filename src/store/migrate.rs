//! Schema versions, applied in order at open (tracked in `user_version`),
//! and the connection pragmas.

use rusqlite::Connection;

/// Each entry upgrades the schema by one version.
const MIGRATIONS: &[&str] = &[
    // v1: node identity, the event log and the register fold.
    "CREATE TABLE node (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
     ) STRICT;
     CREATE TABLE events (
        origin      TEXT NOT NULL,
        incarnation TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        hlc         INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        body        TEXT NOT NULL,
        PRIMARY KEY (origin, incarnation, seq)
     ) STRICT;
     CREATE INDEX events_hlc ON events (hlc);
     CREATE TABLE registers (
        entity TEXT NOT NULL,
        field  TEXT NOT NULL,
        value  TEXT NOT NULL,
        lookup TEXT,
        hlc    INTEGER NOT NULL,
        origin TEXT NOT NULL,
        PRIMARY KEY (entity, field)
     ) STRICT, WITHOUT ROWID;
     CREATE INDEX registers_lookup ON registers (field, lookup) WHERE lookup IS NOT NULL;",
    // v2: login tickets. Not replicated (DESIGN.md §4a): only the issuing
    // node redeems a ticket, so it lives outside the event log.
    "CREATE TABLE tickets (
        hash       BLOB PRIMARY KEY,
        account    TEXT NOT NULL,
        bound_to   TEXT,
        expires_ms INTEGER NOT NULL
     ) STRICT;
     CREATE INDEX tickets_expiry ON tickets (expires_ms);",
    // v3: topic history. Messages are events; this column indexes them by
    // topic, in history order.
    "ALTER TABLE events ADD COLUMN topic TEXT;
     CREATE INDEX events_topic ON events (topic, hlc, origin, incarnation, seq) WHERE topic IS NOT NULL;",
    // v4: the version vector: the highest seq held of each origin, apart
    // from the events so that pruning history never lowers it (mesh links
    // are cursors over it, and a node's own next seq comes from it).
    "CREATE TABLE vv (
        origin      TEXT NOT NULL,
        incarnation TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        PRIMARY KEY (origin, incarnation)
     ) STRICT, WITHOUT ROWID;
     INSERT INTO vv (origin, incarnation, seq)
        SELECT origin, incarnation, MAX(seq) FROM events GROUP BY origin, incarnation;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Sets pragmas and brings the schema up to date.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<i64> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL in WAL mode loses no committed transaction on a process crash;
    // FULL also survives power loss, which an acknowledged change must.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(current).unwrap_or(0))
    {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(current)
}
