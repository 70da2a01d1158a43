//! The kept-message workload, as the store alone sees it: chatbench's pairs
//! with history without a server or a wire. Messages of chatbench's shape
//! (a stamp of their own, padded to 100 bytes, so each brings a new word
//! to the search index) go to T topics in turn, one sender each, and are
//! appended as the store thread's group commits append them
//! ([`Db::commit_group`], in groups of G, as under load), each synced as
//! it commits: the daemon syncs behind the next commit instead
//! (`store::wal`), which saves waiting, not instructions.
//!
//! Run under `valgrind --tool=cachegrind` it counts instructions, which
//! this machine's noise does not move: run it for M and 2M messages and the
//! difference, over M, is what one more kept message costs (bench/README.md,
//! "Eighth round").

use std::path::Path;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::Report;
use crate::change::{Change, ExJson, Message};
use crate::procfs as proc;
use crate::proto::id::new_uuid;
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
    /// Changes per group commit (the store thread's cap under load: 16,384).
    pub group: usize,
}

/// The `n`th message to `topic`: chatbench's stamp (`%T<µs>.<sender>.`)
/// padded with `x` to its payload size, as the `ex` a kept send stores.
/// Built plainly (the text needs no escaping), so that under cachegrind
/// the store's instructions are not lost among the generator's.
fn message(topic: Uuid, sender: Uuid, n: u64, pair: usize) -> Result<Change, Error> {
    let stamp = format!("%T{}.{pair}.", 1_000_000 + n);
    let pad = PAYLOAD.saturating_sub(stamp.len());
    let ex = format!(r#"{{"message":"{stamp}{:x<pad$}"}}"#, "");
    Ok(Change::message(Message {
        topic,
        id: new_uuid().to_string(),
        ts: 0,
        sender,
        ex: ExJson::from_text(ex).map_err(|e| Error::Corrupt(e.to_string()))?,
    }))
}

/// Runs the workload on a new store in `dir`, which must not hold one.
pub fn keep(dir: &Path, load: KeepLoad) -> Result<Report, Error> {
    let mut db = Db::open(dir, "bench")?;
    let pairs = load.topics.max(1);
    let group = load.group.max(1);
    let topics: Vec<(Uuid, Uuid)> = (0..pairs).map(|_| (new_uuid(), new_uuid())).collect();
    let before = proc::sample(std::process::id());
    let started = Instant::now();
    let (mut sent, mut groups, mut committing) = (0u64, 0u64, Duration::ZERO);
    while sent < load.messages {
        let n = (load.messages - sent).min(group as u64);
        let changes = (sent..sent + n)
            .map(|k| {
                let pair = usize::try_from(k).unwrap_or(0) % pairs;
                let (topic, sender) = topics.get(pair).copied().unwrap_or_default();
                message(topic, sender, k, pair)
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let t0 = Instant::now();
        for result in db.commit_group(changes)? {
            result?;
        }
        committing += t0.elapsed();
        sent += n;
        groups += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = proc::sample(std::process::id());
    let cpu = before
        .zip(after)
        .map(|(b, a)| a.cpu_seconds - b.cpu_seconds);
    let per_message = |s: f64| s * 1e6 / sent.max(1) as f64;
    let db_bytes = std::fs::metadata(dir.join(crate::store::DB_FILE)).map_or(0, |m| m.len());
    Ok(Report {
        workload: format!(
            "store: {sent} kept messages to {pairs} topics in turn, group commits of {group}"
        ),
        seconds,
        server_cpu_seconds: cpu,
        notes: vec![
            (
                "group commits".to_owned(),
                format!(
                    "{groups} in {:.3} s: {:.2} µs a message, {:.0} messages/s",
                    committing.as_secs_f64(),
                    per_message(committing.as_secs_f64()),
                    sent as f64 / committing.as_secs_f64().max(1e-9)
                ),
            ),
            (
                "process cpu".to_owned(),
                cpu.map_or("unknown".to_owned(), |c| {
                    format!("{c:.3} s: {:.2} µs a message", per_message(c))
                }),
            ),
            ("store size".to_owned(), format!("{} MiB", db_bytes >> 20)),
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
