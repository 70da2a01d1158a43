//! The kept-message workload, as the store alone sees it: chatbench's pairs
//! with history without a server or a wire. Messages of chatbench's shape
//! (a stamp of their own, padded to 100 bytes, so each brings a new word
//! to the search index) go to T topics in turn, one sender each, as the
//! message log's records ([`Kept`], as a session appends them), and are indexed as
//! the store thread indexes what the log has synced ([`Db::index_messages`],
//! runs of G records, as under load). The log's own write and sync are
//! left out: the index is what bounds history on (bench/README.md,
//! nineteenth and twentieth rounds). Before the twentieth round this timed
//! the store's group commit, which kept messages no
//! longer take.
//!
//! Run under `valgrind --tool=cachegrind` it counts instructions, which
//! this machine's noise does not move: run it for M and 2M messages and the
//! difference, over M, is what one more kept message costs (bench/README.md,
//! "Eighth round").

use std::path::Path;
use std::time::{Duration, Instant};

use super::Report;
use crate::procfs as proc;
use crate::proto::id::{new_uuid, now_ms};
use crate::store::log::next_hlc;
use crate::store::message_log::{Entry, SyncedRecord};
use crate::store::record::Kept;
use crate::store::segment;
use crate::store::{Db, Error};

/// chatbench's default payload, in bytes.
const PAYLOAD: usize = 100;

/// The kept-message workload's size.
#[derive(Debug, Clone, Copy)]
pub struct KeepLoad {
    /// Topics, each with one sender (chatbench's pairs: 200).
    pub topics: usize,
    /// Messages in all.
    pub messages: u64,
    /// Records per index transaction (the store thread's cap: 16,384).
    pub group: usize,
}

/// The `n`th message to `topic` as the message log records it:
/// chatbench's stamp (`%T<µs>.<sender>.`) padded with `x` to its payload
/// size, as the `ex` of a kept send. Built by pushing pieces (`format!`'s
/// padding was a tenth of the instructions counted), so that under
/// cachegrind the store's instructions are not lost among the
/// generator's.
fn record(topic: uuid::Uuid, sender: uuid::Uuid, n: u64, pair: usize) -> Vec<u8> {
    /// Padding to cut from.
    const XS: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
    let mut ex = String::with_capacity(PAYLOAD + 16);
    ex.push_str(r#"{"message":"%T"#);
    ex.push_str(itoa::Buffer::new().format(1_000_000 + n));
    ex.push('.');
    ex.push_str(itoa::Buffer::new().format(pair));
    ex.push('.');
    let stamp = ex.len() - r#"{"message":""#.len();
    ex.push_str(XS.get(..PAYLOAD.saturating_sub(stamp)).unwrap_or_default());
    ex.push_str(r#""}"#);
    Kept {
        topic,
        id: new_uuid(),
        ts: 0,
        sender,
        ex: &ex,
    }
    .encode()
}

/// Runs the workload on a new store in `dir`, which must not hold one.
pub fn keep(dir: &Path, load: KeepLoad) -> Result<Report, Error> {
    let mut db = Db::open(dir, "bench")?;
    let pairs = load.topics.max(1);
    let group_size = load.group.max(1);
    let topics: Vec<(uuid::Uuid, uuid::Uuid)> =
        (0..pairs).map(|_| (new_uuid(), new_uuid())).collect();
    let before = proc::sample(std::process::id());
    let started = Instant::now();
    let (mut sent, mut groups, mut indexing) = (0u64, 0u64, Duration::ZERO);
    // The records are written to a message log first, untimed: blocks
    // point into it, and history reads the bodies from it.
    let mut log = segment::Writer::open(&dir.join(crate::store::MESSAGE_LOG_DIR), 64 << 20)?.writer;
    let mut group = segment::Group::default();
    let mut hlc = 0u64;
    while sent < load.messages {
        let n = (load.messages - sent).min(group_size as u64);
        group.clear();
        for k in sent..sent + n {
            let pair = usize::try_from(k).unwrap_or(0) % pairs;
            let Some(&(topic, sender)) = topics.get(pair) else {
                continue;
            };
            let body = record(topic, sender, k, pair);
            hlc = next_hlc(hlc, u64::try_from(now_ms()).unwrap_or(0));
            group.push(k + 1, hlc, |out| out.extend_from_slice(&body))?;
        }
        let appended = log.append_group(&mut group)?;
        let end = appended.end;
        let t0 = Instant::now();
        let synced = group
            .records()
            .zip(&appended.positions)
            .map(|(r, at)| SyncedRecord {
                entry: Entry {
                    seq: r.seq,
                    hlc: r.hlc,
                },
                at: *at,
                body: r.body,
            });
        db.index_messages(synced, end)?;
        indexing += t0.elapsed();
        sent += n;
        groups += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = proc::sample(std::process::id());
    let cpu = before
        .zip(after)
        .map(|(b, a)| a.cpu_seconds - b.cpu_seconds);
    let per_message = |s: f64| s * 1e6 / sent.max(1) as f64;
    // With its WAL: the index's transactions leave their pages there until
    // a checkpoint.
    let db_file = dir.join(crate::store::DB_FILE);
    let wal_file = crate::store::wal::wal_path(&db_file);
    let db_bytes: u64 = [db_file, wal_file]
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    Ok(Report {
        workload: format!(
            "store: {sent} kept messages to {pairs} topics in turn, indexed {group_size} a transaction"
        ),
        seconds,
        server_cpu_seconds: cpu,
        notes: vec![
            (
                "index transactions".to_owned(),
                format!(
                    "{groups} in {:.3} s: {:.2} µs a message, {:.0} messages/s",
                    indexing.as_secs_f64(),
                    per_message(indexing.as_secs_f64()),
                    sent as f64 / indexing.as_secs_f64().max(1e-9)
                ),
            ),
            (
                "process cpu".to_owned(),
                cpu.map_or("unknown".to_owned(), |c| {
                    format!("{c:.3} s: {:.2} µs a message", per_message(c))
                }),
            ),
            (
                "store size, with its WAL".to_owned(),
                format!("{} MiB", db_bytes >> 20),
            ),
        ],
        ..Report::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_is_kept_and_readable_in_its_topic() {
        let dir = tempfile::tempdir().unwrap();
        let load = KeepLoad {
            topics: 3,
            messages: 10,
            group: 4,
        };
        let report = keep(dir.path(), load).unwrap();
        assert!(report.workload.contains("10 kept messages to 3 topics"));
        assert!(report.workload.contains("indexed 4 a transaction"));
        let db = Db::open(dir.path(), "bench").unwrap();
        let topics = db.topics_with_history().unwrap();
        assert_eq!(topics.len(), 3);
        let mut total = 0;
        for t in topics {
            let page = db.history(t, None, None, 100).unwrap();
            // Round robin: 10 messages over 3 topics are 4, 3 and 3.
            assert!((3..=4).contains(&page.messages.len()));
            for m in &page.messages {
                assert_eq!(m.ex.get().len(), r#"{"message":""}"#.len() + PAYLOAD);
            }
            total += page.messages.len();
        }
        assert_eq!(total, 10);
    }
}
