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
    // v5: a message's id in its own indexed column, filled for the messages
    // already kept, so an id cursor is one index lookup instead of a scan of
    // the topic's bodies; and an index of the events that are not messages
    // (state changes, a few per account or topic), which redaction reads.
    "ALTER TABLE events ADD COLUMN message_id TEXT;
     UPDATE events SET message_id = json_extract(body, '$.message.id')
        WHERE topic IS NOT NULL AND kind = 'message';
     CREATE INDEX events_message_id ON events (topic, message_id) WHERE message_id IS NOT NULL;
     CREATE INDEX events_state ON events (kind) WHERE topic IS NULL;",
    // Message edits: a redaction finds the edits' events to erase their text.
    "CREATE INDEX events_edits ON events (kind) WHERE kind = 'message.edit';",
    // Message search (store/search.rs): an FTS5 index whose rows are the
    // message events' rowids, negated; retention's deletes reach it by
    // trigger.
    "CREATE VIRTUAL TABLE search USING fts5(
        text,
        content = '', contentless_delete = 1,
        tokenize = 'unicode61 remove_diacritics 2'
     );
     CREATE TRIGGER events_unsearch AFTER DELETE ON events WHEN old.kind = 'message'
     BEGIN
        DELETE FROM search WHERE rowid = -old.rowid;
     END;",
    // Nothing reads events by clock alone any more (an applied message's
    // row comes from its insert): one index less to write per kept message.
    "DROP INDEX events_hlc;",
    // A message's id alone, not (topic, id): each node mints ids in time
    // order, so a group commit's new entries go at the index's end (one
    // place per origin) instead of one place per topic, the pages a group
    // touches. Lookups by topic and id read the id's entries and check the
    // topic. chatbench's pairs with history, 200 topics: 12% more kept
    // messages a second.
    "DROP INDEX events_message_id;
     CREATE INDEX events_message_ids ON events (message_id) WHERE message_id IS NOT NULL;",
    // A password change, a deletion or a registration drops the account's
    // tickets (store/tickets.rs): by this index, not a scan of every live
    // ticket while the store's writer waits.
    "CREATE INDEX tickets_account ON tickets (account);",
    // Search behind the message log's index (store/search.rs): the
    // message origin's messages past `seq` have no search entry yet, and
    // a pass writes them when the store has time. Retention's deletes of
    // those have none to drop.
    "CREATE TABLE search_behind (
        origin      TEXT NOT NULL,
        incarnation TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        PRIMARY KEY (origin, incarnation)
     ) STRICT, WITHOUT ROWID;
     DROP TRIGGER events_unsearch;
     CREATE TRIGGER events_unsearch AFTER DELETE ON events WHEN old.kind = 'message'
        AND NOT EXISTS (SELECT 1 FROM search_behind b
            WHERE b.origin = old.origin AND b.incarnation = old.incarnation AND old.seq > b.seq)
     BEGIN
        DELETE FROM search WHERE rowid = -old.rowid;
     END;",
    // Blocks (store/blocks.rs): this node's kept messages, one row per
    // topic per index transaction pointing into the message log, instead
    // of a row each; `batch` is the first seq of the transaction that
    // wrote a block (seq order is batch by batch). `rewrites` journals
    // the redactions of records in the log, done again at open if a crash
    // tore them. `pruned` is each topic's retention floor: history order
    // positions at or under it are gone.
    "CREATE TABLE blocks (
        block     INTEGER PRIMARY KEY AUTOINCREMENT,
        batch     INTEGER NOT NULL,
        topic     TEXT NOT NULL,
        segment   INTEGER NOT NULL,
        first_seq INTEGER NOT NULL,
        last_seq  INTEGER NOT NULL,
        first_hlc INTEGER NOT NULL,
        last_hlc  INTEGER NOT NULL,
        last_id   BLOB NOT NULL,
        entries   BLOB NOT NULL
     ) STRICT;
     CREATE INDEX blocks_topic ON blocks (topic, last_hlc);
     CREATE INDEX blocks_ids ON blocks (topic, last_id);
     CREATE INDEX blocks_batch ON blocks (batch);
     CREATE TABLE rewrites (
        segment INTEGER NOT NULL,
        offset  INTEGER NOT NULL,
        seq     INTEGER NOT NULL,
        hlc     INTEGER NOT NULL,
        body    BLOB NOT NULL,
        PRIMARY KEY (segment, offset)
     ) STRICT, WITHOUT ROWID;
     CREATE TABLE pruned (
        topic       TEXT PRIMARY KEY,
        hlc         INTEGER NOT NULL,
        origin      TEXT NOT NULL,
        incarnation TEXT NOT NULL,
        seq         INTEGER NOT NULL
     ) STRICT, WITHOUT ROWID;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// WAL pages past which a commit checkpoints the WAL (see [`migrate`]).
pub const CHECKPOINT_PAGES: i64 = 10_000;

/// The page size of a new database, in bytes.
pub const PAGE_SIZE: i64 = 8192;

/// Sets pragmas and brings the schema up to date.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<i64> {
    // Takes effect on a new database only (before WAL mode, before any
    // table); one made with 4 KiB pages keeps them. A group commit of kept
    // messages writes fewer, fuller pages: chatbench's pairs with history
    // did 7-9% more a second than with SQLite's 4 KiB (bench/README.md,
    // seventh round).
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL in WAL mode loses no committed transaction on a process crash;
    // FULL also survives power loss, which an acknowledged change must.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // A group commit of kept messages touches a page of each topic's
    // history index: with SQLite's 2 MiB default the cache spilled in the
    // middle of a commit and read pages back. A bound, not an allocation.
    conn.pragma_update(None, "cache_size", -32_768)?;
    // Checkpoint every 10,000 WAL pages rather than 1,000: pages rewritten by
    // consecutive commits are copied to the database once.
    conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn page_size(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_new_database_gets_larger_pages_and_an_older_one_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let mut new = Connection::open(dir.path().join("new.db")).unwrap();
        migrate(&mut new).unwrap();
        assert_eq!(page_size(&new), PAGE_SIZE);
        // A database made before, with 4 KiB pages and some of the schema.
        let mut old = Connection::open(dir.path().join("old.db")).unwrap();
        old.pragma_update(None, "page_size", 4096).unwrap();
        old.execute_batch(MIGRATIONS[0]).unwrap();
        old.pragma_update(None, "user_version", 1).unwrap();
        assert_eq!(migrate(&mut old).unwrap(), 1);
        assert_eq!(page_size(&old), 4096);
        let version: i64 = old
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        // Opened again, each keeps what it has.
        drop((new, old));
        for (name, size) in [("new.db", PAGE_SIZE), ("old.db", 4096)] {
            let mut conn = Connection::open(dir.path().join(name)).unwrap();
            migrate(&mut conn).unwrap();
            assert_eq!(page_size(&conn), size, "{name}");
        }
    }

    #[test]
    fn an_accounts_tickets_are_dropped_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("t.db")).unwrap();
        migrate(&mut conn).unwrap();
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN DELETE FROM tickets WHERE account = 'a'",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("tickets_account"), "{plan}");
    }

    #[test]
    fn v5_fills_the_message_id_of_messages_already_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("t.db")).unwrap();
        // A store as version 4 left it, with one message and one state event.
        for sql in &MIGRATIONS[..4] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 4).unwrap();
        conn.execute_batch(
            r#"INSERT INTO events (origin, incarnation, seq, hlc, kind, body, topic) VALUES
                 ('n', 'i', 1, 1, 'account.create', '{"kind":"account.create","writes":[]}', NULL),
                 ('n', 'i', 2, 2, 'message', '{"kind":"message","writes":[],"message":{"topic":"t","id":"abc","ts":0,"sender":"s","ex":{}}}', 't');"#,
        )
        .unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), 4);
        let ids: Vec<Option<String>> = conn
            .prepare("SELECT message_id FROM events ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ids, [None, Some("abc".to_owned())]);
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT hlc FROM events WHERE topic = 't' AND message_id = 'abc'",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("events_message_ids"), "{plan}");
    }
}
