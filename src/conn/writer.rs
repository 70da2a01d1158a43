//! The writer task: the only code that writes to a client's socket. It drains
//! the connection's outbound queue in batches (one syscall and, for gzip, one
//! sync flush per batch), and ends with the gzip trailer and TLS close_notify.

use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::gzip::{Flush, GzipEncoder};
use crate::proto::reply;
use crate::router::{Closer, OutFrame, Receiver};
use crate::store::message_log::MessageLog;
use prometheus_client::metrics::counter::Counter;

/// Most bytes gathered into one write.
pub(crate) const BATCH_BYTES: usize = 64 * 1024;

/// Most bytes a held writer (history on) takes for one sync, written
/// [`BATCH_BYTES`] at a time. All of it waits for the same sync, as a group
/// commit's callers do: a held writer that took one write's worth per sync
/// wrote at most 64 KiB each time the runtime came round to it, and under
/// chatbench's pairs with history a receiver's relays queued up behind it
/// (2.3 MB each, p50 2.4–3.0 s; bench/README.md, twenty-fifth round).
const HELD_BATCH_BYTES: usize = 1024 * 1024;

/// How the writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A `Close` frame: everything queued was written.
    Drained,
    /// Forced close (slow consumer, kick): a final `bye` was written.
    Forced,
    /// Forced close while a write was blocked: nothing more was written.
    Cut,
    /// Hard stop at the end of the shutdown grace period.
    Aborted,
    /// Every sender is gone without a `Close`.
    Orphaned,
    /// A write failed or timed out (the peer is gone or stalled).
    WriteFailed,
    /// The message log failed to sync: what was taken may relay a message
    /// that is not on disk, so it is not written.
    Unsynced,
}

impl Ended {
    /// Short text for the connection's close log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Drained => "flushed",
            Ended::Forced => "forced",
            Ended::Cut => "cut mid-write",
            Ended::Aborted => "aborted at shutdown",
            Ended::Orphaned => "orphaned",
            Ended::WriteFailed => "write failed",
            Ended::Unsynced => "message log failed",
        }
    }
}

/// Writer settings.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// `Some(level)` for a gzip session.
    pub gzip_level: Option<u32>,
    /// Longest a single socket write may take.
    pub write_timeout: Duration,
    /// Counts the packets written.
    pub packets_out: Counter,
    /// What each batch is held for: no relay or `ack` of a kept message
    /// leaves before the message is synced (`None`: nothing is held).
    pub hold: Option<MessageLog>,
}

/// Drains `rx` into `wr` until a `Close` frame, a forced close or a hard stop.
pub async fn run<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: Receiver,
    closer: Arc<Closer>,
    hard_stop: CancellationToken,
    cfg: WriterConfig,
) -> Ended {
    let mut gzip = cfg.gzip_level.map(GzipEncoder::new);
    // A gzip batch is compressed into `buf`; a plain one is the queued
    // packets themselves, handed to TLS as they are (one copy fewer: TLS
    // copies them into its records anyway).
    let mut buf: Vec<u8> = Vec::new();
    let mut frames: Vec<Bytes> = Vec::new();
    let ended = loop {
        buf.clear();
        frames.clear();
        let taken = next_batch(
            &mut rx,
            &closer,
            &hard_stop,
            cfg.hold.as_ref(),
            |bytes, secret| match gzip.as_mut() {
                Some(z) => compress(z, &bytes, secret, &mut buf),
                None => frames.push(bytes),
            },
        );
        let Batch { packets, close } = match taken.await {
            Ok(batch) => batch,
            Err(ended) => break ended,
        };
        if let Some(z) = gzip.as_mut() {
            if close {
                z.finish(&mut buf);
            } else {
                z.flush(Flush::Sync, &mut buf);
            }
        }
        // A write at a time of at most `BATCH_BYTES` (or one larger
        // frame), each under the write timeout.
        let written = Box::pin(async {
            match gzip {
                Some(_) => {
                    for chunk in buf.chunks(BATCH_BYTES) {
                        let write = async {
                            wr.write_all(chunk).await?;
                            wr.flush().await
                        };
                        guarded(&closer, &hard_stop, cfg.write_timeout, write).await?;
                    }
                }
                None => {
                    for chunk in in_writes(&frames, Bytes::len) {
                        let write = async {
                            write_frames(&mut wr, chunk).await?;
                            wr.flush().await
                        };
                        guarded(&closer, &hard_stop, cfg.write_timeout, write).await?;
                    }
                }
            }
            Ok::<(), Ended>(())
        });
        // Boxed: a task is as large as its largest state for its whole
        // life, and a writer spends most of it waiting for the next batch.
        if let Err(ended) = written.await {
            break ended;
        }
        cfg.packets_out.inc_by(packets as u64);
        if close {
            break Ended::Drained;
        }
        if rx.shrink_if_idle() {
            // Nothing waiting: an idle connection keeps no write buffers.
            buf = Vec::new();
            frames = Vec::new();
        }
    };
    if ended == Ended::Forced {
        // Skip whatever is queued: tell the client why, then go.
        if let Some((code, message)) = closer.reason() {
            buf.clear();
            let bye = reply::bye(*code, message.clone()).to_line();
            match gzip.as_mut() {
                Some(z) => {
                    z.write(&bye, &mut buf);
                    z.finish(&mut buf);
                }
                None => buf.extend_from_slice(&bye),
            }
            let _ = tokio::time::timeout(cfg.write_timeout, wr.write_all(&buf)).await;
        }
    }
    if matches!(ended, Ended::Drained | Ended::Forced) {
        // close_notify, so the client can tell a clean close from a cut.
        let _ = tokio::time::timeout(cfg.write_timeout, wr.shutdown()).await;
    }
    ended
}

/// What [`next_batch`] took from the queue.
pub(crate) struct Batch {
    /// Packets taken.
    pub packets: usize,
    /// A `Close` frame ended the batch: it is the last.
    pub close: bool,
}

/// Waits for the next frames and hands each buffer of packets (and
/// whether it holds a secret) to `take`, up to [`BATCH_BYTES`] at once
/// ([`HELD_BATCH_BYTES`] with `hold`);
/// `Err` says how the writer ends instead. With `hold`, returns only once
/// every message appended to the log by the time the frames were taken is
/// synced: a relay or `ack` of a kept message is queued after its append,
/// so whatever the batch carries is on disk when it is written.
pub(crate) async fn next_batch(
    rx: &mut Receiver,
    closer: &Closer,
    hard_stop: &CancellationToken,
    hold: Option<&MessageLog>,
    mut take: impl FnMut(Bytes, bool),
) -> Result<Batch, Ended> {
    let first = tokio::select! {
        biased;
        _ = hard_stop.cancelled() => return Err(Ended::Aborted),
        _ = closer.closed() => return Err(Ended::Forced),
        f = rx.recv() => f,
    };
    let Some(first) = first else {
        return Err(Ended::Orphaned);
    };
    let mut batch = Batch {
        packets: 0,
        close: false,
    };
    let most = if hold.is_some() {
        HELD_BATCH_BYTES
    } else {
        BATCH_BYTES
    };
    let mut size = 0;
    let mut next = Some(first);
    while let Some(frame) = next.take() {
        let OutFrame::Lines {
            bytes,
            secret,
            count,
        } = frame
        else {
            batch.close = true;
            break;
        };
        size += bytes.len();
        batch.packets += count;
        take(bytes, secret);
        if size < most {
            next = rx.try_recv();
        }
    }
    if let Some(log) = hold {
        // One atomic read each when nothing waits for a sync.
        let appended = log.appended();
        if log.synced() < appended {
            tokio::select! {
                biased;
                _ = hard_stop.cancelled() => return Err(Ended::Aborted),
                synced = log.wait_synced(appended) => {
                    if synced.is_err() {
                        return Err(Ended::Unsynced);
                    }
                }
            }
        }
    }
    Ok(batch)
}

/// Runs one batch's `write` under the write timeout, the forced close and
/// the hard stop; `Err` says how the writer ends.
pub(crate) async fn guarded<E>(
    closer: &Closer,
    hard_stop: &CancellationToken,
    timeout: Duration,
    write: impl Future<Output = Result<(), E>>,
) -> Result<(), Ended> {
    tokio::select! {
        biased;
        _ = hard_stop.cancelled() => Err(Ended::Aborted),
        // Cut while blocked mid-batch: a `bye` after half a batch would
        // corrupt the stream, so go without one.
        _ = closer.closed() => Err(Ended::Cut),
        r = tokio::time::timeout(timeout, write) => match r {
            Ok(Ok(())) => Ok(()),
            _ => Err(Ended::WriteFailed),
        },
    }
}

/// Compresses one packet into the batch; a secret is isolated from the
/// compression window by full flushes on both sides.
fn compress(z: &mut GzipEncoder, bytes: &[u8], secret: bool, buf: &mut Vec<u8>) {
    if secret {
        z.flush(Flush::Full, buf);
        z.write(bytes, buf);
        z.flush(Flush::Full, buf);
    } else {
        z.write(bytes, buf);
    }
}

/// `items` cut into runs of at most [`BATCH_BYTES`] by `len` (a larger
/// item is a run of its own), in order: one write each.
pub(crate) fn in_writes<T>(items: &[T], len: impl Fn(&T) -> usize) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut size = 0;
        let n = rest
            .iter()
            .take_while(|f| {
                size += len(f);
                size <= BATCH_BYTES
            })
            .count()
            .max(1);
        let (run, after) = rest.split_at(n.min(rest.len()));
        rest = after;
        Some(run)
    })
}

/// Writes the packets of a plain batch with vectored writes: TLS gathers
/// them into records without an intermediate buffer.
async fn write_frames<W: AsyncWrite + Unpin>(wr: &mut W, frames: &[Bytes]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = frames.iter().map(|b| IoSlice::new(b)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = wr.write_vectored(rest).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Packet;
    use crate::router::Outbound;
    use std::io::Write;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn batches_secrets_and_close_make_one_valid_gzip_stream() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (out, rx, closer) = Outbound::channel(64, 1 << 20);
        out.push(&Packet::server("ping")).unwrap();
        out.push_secret(&Packet::server("ack").with("ticket", "OHMY"))
            .unwrap();
        out.push(&Packet::server("pong")).unwrap();
        out.push_close().unwrap();
        let cfg = WriterConfig {
            gzip_level: Some(6),
            write_timeout: Duration::from_secs(5),
            packets_out: Counter::default(),
            hold: None,
        };
        let ended = run(server, rx, closer, CancellationToken::new(), cfg).await;
        assert_eq!(ended, Ended::Drained);
        let mut wire = Vec::new();
        let mut client = client;
        client.read_to_end(&mut wire).await.unwrap();
        let mut d = flate2::write::GzDecoder::new(Vec::new());
        d.write_all(&wire).unwrap();
        let text = String::from_utf8(d.finish().unwrap()).unwrap();
        let ops: Vec<String> = text
            .lines()
            .map(|l| Packet::decode(l.as_bytes(), 8).unwrap().op)
            .collect();
        assert_eq!(ops, ["ping", "ack", "pong"]);
    }

    /// A batch taken after a message's append waits for its sync, and
    /// takes everything queued by then (past one write's worth): it all
    /// waits for the same sync.
    #[tokio::test]
    async fn a_batch_waits_for_what_was_appended_before_it() {
        use crate::store::message_log::{Entry, Limits, MessageLog};
        use futures_util::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        // The log thread stops in its first group's hand-off until told.
        let (entered, in_hand_off) = std::sync::mpsc::channel();
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let start = Entry { seq: 0, hlc: 0 };
        let (log, thread) = MessageLog::open(dir.path(), Limits::default(), start, move |_| {
            let _ = entered.send(());
            let _ = wait.recv();
        })
        .unwrap();
        // Dropped before the log's thread, which waits on it: a failed
        // assertion must not leave the join waiting.
        let go = go;
        log.append_body(|_| b"kept".to_vec()).unwrap();
        in_hand_off.recv().unwrap();
        // Its relay, queued after the append, and three writes' worth
        // more.
        let (out, mut rx, closer) = Outbound::channel(1024, 1 << 22);
        out.push(&Packet::server("msg")).unwrap();
        let (more, size) = queue_bytes(&out, 3 * BATCH_BYTES);
        let hard_stop = CancellationToken::new();
        let mut taken = Vec::new();
        let batch = {
            let mut batch = std::pin::pin!(next_batch(
                &mut rx,
                &closer,
                &hard_stop,
                Some(&log),
                |b, _| taken.push(b)
            ));
            assert!((&mut batch).now_or_never().is_none(), "held until synced");
            go.send(()).unwrap();
            batch.await.unwrap()
        };
        assert_eq!(batch.packets, 1 + more);
        assert!(taken.iter().map(Bytes::len).sum::<usize>() > size);
        drop(go);
        thread.finish();
    }

    /// Queues packets of about 1 KiB until `bytes` are queued: how many.
    fn queue_bytes(out: &Outbound, bytes: usize) -> (usize, usize) {
        let text = "x".repeat(1000);
        let (mut count, mut size) = (0, 0);
        while size < bytes {
            let packet = Packet::server("msg").with("text", text.as_str());
            size += packet.to_line().len();
            out.push(&packet).unwrap();
            count += 1;
        }
        (count, size)
    }

    /// A held batch larger than one write goes out whole (in several
    /// writes), plain or compressed.
    #[tokio::test]
    async fn a_held_batch_past_one_write_goes_out_whole() {
        use crate::store::message_log::{Entry, Limits, MessageLog};
        let dir = tempfile::tempdir().unwrap();
        // Nothing appended: nothing to wait for.
        let start = Entry { seq: 0, hlc: 0 };
        let (log, thread) = MessageLog::open(dir.path(), Limits::default(), start, |_| {}).unwrap();
        for gzip_level in [None, Some(6)] {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let (out, rx, closer) = Outbound::channel(1024, 1 << 22);
            let (queued, _) = queue_bytes(&out, 3 * BATCH_BYTES);
            out.push_close().unwrap();
            let cfg = WriterConfig {
                gzip_level,
                write_timeout: Duration::from_secs(5),
                packets_out: Counter::default(),
                hold: Some(log.clone()),
            };
            let writer = tokio::spawn(run(server, rx, closer, CancellationToken::new(), cfg));
            let mut wire = Vec::new();
            let mut client = client;
            client.read_to_end(&mut wire).await.unwrap();
            assert_eq!(writer.await.unwrap(), Ended::Drained);
            if gzip_level.is_some() {
                let mut d = flate2::write::GzDecoder::new(Vec::new());
                d.write_all(&wire).unwrap();
                wire = d.finish().unwrap();
            }
            let text = String::from_utf8(wire).unwrap();
            assert_eq!(text.lines().count(), queued, "{gzip_level:?}");
            assert!(
                text.lines()
                    .all(|l| Packet::decode(l.as_bytes(), 8).is_ok())
            );
        }
        drop(log);
        thread.finish();
    }

    /// Unheld, a batch is one write's worth.
    #[tokio::test]
    async fn an_unheld_batch_is_one_write() {
        let (out, mut rx, closer) = Outbound::channel(1024, 1 << 22);
        let (queued, _) = queue_bytes(&out, 3 * BATCH_BYTES);
        let mut taken = Vec::new();
        let batch = next_batch(&mut rx, &closer, &CancellationToken::new(), None, |b, _| {
            taken.push(b)
        })
        .await
        .unwrap();
        let size: usize = taken.iter().map(Bytes::len).sum();
        assert!(batch.packets < queued);
        assert!((BATCH_BYTES..BATCH_BYTES + 2048).contains(&size), "{size}");
    }

    /// Frames go out in order, in writes of at most `BATCH_BYTES` each but
    /// for a larger frame, which is a write of its own.
    #[test]
    fn frames_are_cut_into_writes() {
        let frame = |n: usize| Bytes::from(vec![b'x'; n]);
        let third = BATCH_BYTES / 3;
        let frames = [
            frame(third),
            frame(third),
            frame(third),
            frame(third),
            frame(BATCH_BYTES + 1),
            frame(1),
        ];
        let writes: Vec<Vec<usize>> = in_writes(&frames, Bytes::len)
            .map(|w| w.iter().map(Bytes::len).collect())
            .collect();
        assert_eq!(
            writes,
            [
                vec![third, third, third],
                vec![third],
                vec![BATCH_BYTES + 1],
                vec![1]
            ]
        );
        assert_eq!(in_writes(&[], Bytes::len).count(), 0);
    }

    #[tokio::test]
    async fn forced_close_skips_the_queue_and_says_why() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (out, rx, closer) = Outbound::channel(16, 1 << 20);
        // Fill the queue past its bound: the destination is cut.
        let mut overflowed = false;
        for _ in 0..17 {
            overflowed |= out.push(&Packet::server("ping")).is_err();
        }
        assert!(overflowed);
        let cfg = WriterConfig {
            gzip_level: None,
            write_timeout: Duration::from_secs(5),
            packets_out: Counter::default(),
            hold: None,
        };
        let ended = run(server, rx, closer, CancellationToken::new(), cfg).await;
        assert_eq!(ended, Ended::Forced);
        let mut text = String::new();
        let mut client = client;
        client.read_to_string(&mut text).await.unwrap();
        let last = Packet::decode(text.trim_end().as_bytes(), 8).unwrap();
        assert_eq!(last.op, "bye");
        assert_eq!(last.ex_str("code"), Some("session/sendq-exceeded"));
        assert_eq!(text.lines().count(), 1, "queued packets are skipped");
    }
}
