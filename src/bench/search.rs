//! The search workload: a store filled directly through [`Db`] (no server,
//! no wire) with one topic of N kept messages of generated text, then Q
//! two-word queries timed as the `search` handler's store work runs them
//! (the query, the current text, the senders' names).

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use serde_json::{Map, Value};
use uuid::Uuid;

use super::{Report, percentile};
use crate::change::{Change, ExJson, Message};
use crate::store::search::Query;
use crate::store::{Db, Error};

/// Messages per transaction while filling.
const FILL_BATCH: usize = 10_000;
/// Accounts the messages come from.
const SENDERS: usize = 50;

/// The search workload's size.
#[derive(Debug, Clone, Copy)]
pub struct SearchLoad {
    /// Kept messages in the topic.
    pub messages: u64,
    /// Queries timed.
    pub queries: usize,
    /// Distinct words in the generated text.
    pub vocabulary: usize,
    /// Results per page, as a client would ask.
    pub limit: usize,
    /// Index matches examined per page (`history.search_scan`).
    pub scan: usize,
}

/// A small deterministic generator (xorshift64*), so runs compare.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A word rank, log-uniform in `[0, n)`: a few words are everywhere,
    /// most are rare, as in chat.
    fn rank(&mut self, n: usize) -> usize {
        let r = (n as f64).powf(self.unit()) as usize;
        r.saturating_sub(1).min(n.saturating_sub(1))
    }
}

/// The word of rank `i`: syllables, so words tokenize as words.
fn word(i: usize) -> String {
    const SYLLABLES: [&str; 16] = [
        "ka", "lo", "mi", "ne", "ru", "sa", "te", "vo", "bi", "do", "fu", "ge", "ha", "ji", "pe",
        "zu",
    ];
    let mut out = String::new();
    let mut n = i + 16;
    while n > 0 {
        out.push_str(SYLLABLES[n % 16]);
        n /= 16;
    }
    out
}

/// Fills `db` with one topic of `load.messages` messages; returns the topic.
fn fill(db: &mut Db, load: &SearchLoad, rng: &mut Rng) -> Result<Uuid, Error> {
    let topic = Uuid::now_v7();
    let senders: Vec<Uuid> = (0..SENDERS).map(|_| Uuid::now_v7()).collect();
    let mut left = load.messages;
    let mut n = 0u64;
    while left > 0 {
        let batch = left.min(FILL_BATCH as u64);
        let changes = (0..batch)
            .map(|_| {
                n += 1;
                let words = 6 + (rng.next() % 9) as usize;
                let body: Vec<String> = (0..words)
                    .map(|_| word(rng.rank(load.vocabulary)))
                    .collect();
                let ex = Map::from_iter([("body".to_owned(), Value::from(body.join(" ")))]);
                Ok(Change::message(Message {
                    topic,
                    id: format!("bench-{n}"),
                    ts: 0,
                    sender: senders[(rng.next() % SENDERS as u64) as usize],
                    ex: ExJson::from_map(&ex).map_err(|e| Error::Corrupt(e.to_string()))?,
                }))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        db.append_all(changes)?;
        left -= batch;
    }
    Ok(topic)
}

/// Runs the workload in `dir`: fills it unless it already holds a topic
/// with history (from an earlier run), then times the queries.
pub fn search(dir: &Path, load: SearchLoad) -> Result<Report, Error> {
    let mut db = Db::open(dir, "bench")?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    let (topic, filled) = match db.topics_with_history()?.first() {
        Some(t) => (*t, false),
        None => (fill(&mut db, &load, &mut rng)?, true),
    };
    let fill_seconds = started.elapsed().as_secs_f64();
    // Queries come from their own generator: the same ones whether or not
    // this run filled the store.
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut times = Vec::with_capacity(load.queries);
    let mut slowest: Vec<(u64, String, usize)> = Vec::new();
    let mut results = 0usize;
    let mut empty = 0usize;
    let run = Instant::now();
    for _ in 0..load.queries {
        let terms = vec![
            word(rng.rank(load.vocabulary)),
            word(rng.rank(load.vocabulary)),
        ];
        let query = Query {
            terms,
            topics: HashSet::from([topic]),
            topic: Some(topic),
            sender: None,
            since_ms: None,
            until_ms: None,
            cursor: None,
            limit: load.limit,
            scan: load.scan,
        };
        let shown = query.terms.join(" ");
        let t0 = Instant::now();
        let mut found = db.search(&query)?;
        db.current_text(&mut found.messages)?;
        let senders: Vec<Uuid> = found.messages.iter().map(|m| m.sender).collect();
        db.account_names(&senders)?;
        let took = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        times.push(took);
        slowest.push((took, shown, found.messages.len()));
        slowest.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
        slowest.truncate(3);
        results += found.messages.len();
        empty += usize::from(found.messages.is_empty());
    }
    let seconds = run.elapsed().as_secs_f64();
    times.sort_unstable();
    let (p50, p99) = (percentile(&times, 0.50), percentile(&times, 0.99));
    let max = times.last().copied().unwrap_or(0) as f64 / 1e6;
    let db_bytes = std::fs::metadata(dir.join(crate::store::DB_FILE)).map_or(0, |m| m.len());
    let notes = vec![
        (
            "fill".to_owned(),
            match filled {
                true => format!("{} messages in {fill_seconds:.1} s", load.messages),
                false => "reused the store from an earlier run".to_owned(),
            },
        ),
        ("store size".to_owned(), format!("{} MiB", db_bytes >> 20)),
        (
            "query latency".to_owned(),
            format!("p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"),
        ),
        (
            "results".to_owned(),
            format!(
                "{:.1} per query (limit {}), {empty} of {} queries found nothing",
                results as f64 / load.queries.max(1) as f64,
                load.limit,
                load.queries
            ),
        ),
        (
            "slowest".to_owned(),
            slowest
                .iter()
                .map(|(ns, q, n)| format!("{q:?} {:.2} ms ({n} found)", *ns as f64 / 1e6))
                .collect::<Vec<_>>()
                .join(", "),
        ),
    ];
    Ok(Report {
        workload: format!(
            "search, {} kept messages in one topic, {} two-word queries",
            load.messages, load.queries
        ),
        seconds,
        p50_ms: p50,
        p99_ms: p99,
        max_ms: max,
        notes,
        ..Report::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_run_fills_and_queries() {
        let dir = tempfile::tempdir().unwrap();
        let load = SearchLoad {
            messages: 2_000,
            queries: 20,
            vocabulary: 200,
            limit: 20,
            scan: 5000,
        };
        let report = search(dir.path(), load).unwrap();
        assert!(
            report
                .notes
                .iter()
                .any(|(k, v)| k == "fill" && v.starts_with("2000"))
        );
        // A second run reuses the store.
        let again = search(dir.path(), load).unwrap();
        assert!(again.notes.iter().any(|(_, v)| v.contains("reused")));
        assert_ne!(word(0), word(1));
    }
}
