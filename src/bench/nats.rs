//! The same fanout and pairs workloads against nats-server, over TLS with
//! NATS's text protocol (`CONNECT` with echo off, `SUB`, `PUB`, `MSG`), so
//! `bench/compare.sh` can put both servers side by side in one run.
//!
//! nats-server 2.9 sends `INFO` in plain text before TLS; the client reads it,
//! then upgrades the connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{BenchError, Counted, Load, Observed, Pacer, Report, Tally, Target, tag};
use crate::tls;

const DRAIN: Duration = Duration::from_secs(10);
/// Largest message payload accepted (nats-server's default max_payload is 1 MiB).
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

type Reader = BufReader<ReadHalf<TlsStream<TcpStream>>>;
type Writer = WriteHalf<TlsStream<TcpStream>>;

fn io(what: &str) -> impl FnOnce(std::io::Error) -> BenchError + '_ {
    move |e| BenchError::Refused(format!("nats {what}: {e}"))
}

/// Connects, upgrades to TLS after `INFO`, sends `CONNECT`, and waits for
/// the `PONG` that follows it.
async fn connect(t: &Target, addr: &str) -> Result<(Reader, Writer), BenchError> {
    let mut tcp = TcpStream::connect(addr).await.map_err(io("connect"))?;
    let _ = tcp.set_nodelay(true);
    // INFO {...}\r\n arrives before TLS.
    let mut info = Vec::new();
    let mut byte = [0u8; 1];
    while !info.ends_with(b"\r\n") {
        tcp.read_exact(&mut byte)
            .await
            .map_err(io("reading INFO"))?;
        info.push(byte[0]);
        if info.len() > 64 * 1024 {
            return Err(BenchError::Refused("nats INFO too long".into()));
        }
    }
    let config = tls::client_config(&t.options.trust, &[])
        .map_err(|e| BenchError::Refused(e.to_string()))?;
    let name = ServerName::try_from(t.options.server_name.clone())
        .map_err(|_| BenchError::Refused("bad server name".into()))?;
    let stream = TlsConnector::from(Arc::clone(&config))
        .connect(name, tcp)
        .await
        .map_err(io("TLS"))?;
    let (rd, mut wr) = tokio::io::split(stream);
    let mut rd = BufReader::new(rd);
    wr.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false,\"tls_required\":true}\r\nPING\r\n")
        .await
        .map_err(io("CONNECT"))?;
    wr.flush().await.map_err(io("CONNECT"))?;
    wait_pong(&mut rd).await?;
    Ok((rd, wr))
}

async fn wait_pong(rd: &mut Reader) -> Result<(), BenchError> {
    let mut line = String::new();
    loop {
        line.clear();
        let n = tokio::time::timeout(DRAIN, rd.read_line(&mut line))
            .await
            .map_err(|_| BenchError::Refused("nats: no PONG".into()))?
            .map_err(io("reading"))?;
        if n == 0 {
            return Err(BenchError::Refused("nats closed the connection".into()));
        }
        if line.starts_with("PONG") {
            return Ok(());
        }
        if line.starts_with("-ERR") {
            return Err(BenchError::Refused(format!("nats: {}", line.trim())));
        }
    }
}

/// Counts `MSG`s until `expected` or a quiet `DRAIN`, answering server PINGs.
async fn receive(
    mut rd: Reader,
    mut wr: Writer,
    expected: u64,
    epoch: Instant,
    dedup: bool,
) -> Counted {
    let mut tally = Tally::new(epoch, expected, dedup);
    let mut line = String::new();
    let mut payload = Vec::new();
    // As for tenthbit's receivers: the clock is read when bytes arrive, not
    // for every message that arrived with them.
    let mut arrived = Duration::ZERO;
    while tally.count < expected {
        line.clear();
        // Wait (at most DRAIN) only when no whole line is buffered.
        let buffered = rd.buffer().contains(&b'\n');
        let read = match buffered {
            true => rd.read_line(&mut line).await.ok(),
            false => tokio::time::timeout(DRAIN, rd.read_line(&mut line))
                .await
                .ok()
                .and_then(Result::ok),
        };
        if read.is_none_or(|n| n == 0) {
            break;
        }
        if !buffered {
            arrived = epoch.elapsed();
        }
        if line.starts_with("PING") {
            let _ = wr.write_all(b"PONG\r\n").await;
            continue;
        }
        // MSG <subject> <sid> <bytes>\r\n<payload>\r\n
        let Some(len) = line
            .strip_prefix("MSG ")
            .and_then(|rest| rest.split_whitespace().last())
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        // The length comes off the wire: bound it before allocating.
        if len > MAX_PAYLOAD {
            break;
        }
        payload.resize(len + 2, 0);
        let waits = rd.buffer().len() < payload.len();
        if rd.read_exact(&mut payload).await.is_err() {
            break;
        }
        if waits {
            arrived = epoch.elapsed();
        }
        let stamp = payload
            .split(|&b| b == b' ')
            .next()
            .and_then(|t| std::str::from_utf8(t).ok())
            .and_then(|t| t.parse::<u64>().ok());
        tally.delivered(stamp, arrived);
    }
    tally.finish()
}

/// Publishes `load.messages` messages of `load.size` bytes on `subject`.
async fn publish(mut wr: Writer, subject: String, load: Load, epoch: Instant) {
    let pad = "x".repeat(load.size.saturating_sub(21));
    let line = |epoch: Instant| {
        let t = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let body = format!("{t:020} {pad}");
        format!("PUB {subject} {}\r\n{body}\r\n", body.len())
    };
    let mut pacer = Pacer::new(&load);
    let mut buf = String::new();
    while pacer
        .next_batch(&mut buf, |b| b.push_str(&line(epoch)))
        .await
    {
        if !buf.is_empty() && wr.write_all(buf.as_bytes()).await.is_err() {
            return;
        }
    }
    let _ = wr.flush().await;
    // Hold the connection open until the run aborts this task.
    std::future::pending::<()>().await;
}

/// Groups of (subject, publishers, subscribers), run at once.
async fn run(
    t: &Target,
    name: String,
    groups: Vec<(usize, usize)>,
    load: Load,
) -> Result<Report, BenchError> {
    let tag = tag();
    let epoch = Instant::now();
    let mut receivers = Vec::new();
    let mut publishers = Vec::new();
    let mut expected = 0;
    for (g, (pubs, subs)) in groups.into_iter().enumerate() {
        let subject = format!("bench.{tag}.{g}");
        let per = load.messages * pubs as u64;
        expected += per * subs as u64;
        for sid in 0..subs {
            // Subscriber sid of group g sits on server (g + sid) mod servers.
            let (mut rd, mut wr) = connect(t, t.addr_for(g + sid)).await?;
            wr.write_all(format!("SUB {subject} {sid}\r\nPING\r\n").as_bytes())
                .await
                .map_err(io("SUB"))?;
            wait_pong(&mut rd).await?;
            let dedup = !t.spread.is_empty() && pubs == 1;
            receivers.push(tokio::spawn(receive(rd, wr, per, epoch, dedup)));
        }
        for _ in 0..pubs {
            let (_rd, wr) = connect(t, &t.addr).await?;
            publishers.push((subject.clone(), wr));
        }
    }
    let before = t.sample();
    let start = epoch.elapsed();
    let mut pub_tasks = Vec::new();
    for (subject, wr) in publishers {
        pub_tasks.push(tokio::spawn(publish(wr, subject, load, epoch)));
    }
    let mut latencies = Vec::new();
    let (mut deliveries, mut duplicates) = (0, 0);
    let mut last = start;
    for r in receivers {
        let (count, lat, at, dup) = r.await.unwrap_or_default();
        deliveries += count;
        duplicates += dup;
        latencies.extend(lat);
        last = last.max(at);
    }
    let after = t.sample();
    let mut notes = Vec::new();
    if !t.spread.is_empty() {
        notes.push(("duplicated".to_owned(), duplicates.to_string()));
    }
    for p in pub_tasks {
        p.abort();
    }
    Ok(Report::from_observed(Observed {
        name,
        deliveries,
        expected,
        latencies,
        elapsed: last.saturating_sub(start),
        before,
        after,
        notes,
    }))
}

/// Fanout against nats-server.
pub async fn fanout(
    t: &Target,
    subscribers: usize,
    publishers: usize,
    load: Load,
) -> Result<Report, BenchError> {
    let name = format!(
        "nats fanout: {subscribers} subscribers, {} publisher(s), {} messages of {} bytes each, {}",
        publishers.max(1),
        load.messages,
        load.size,
        load.rate.map_or("unthrottled".to_owned(), |r| format!(
            "{r} msg/s per publisher"
        ))
    );
    run(t, name, vec![(publishers.max(1), subscribers)], load).await
}

/// Pairs against nats-server.
pub async fn pairs(t: &Target, pairs: usize, load: Load) -> Result<Report, BenchError> {
    let name = format!(
        "nats pairs: {pairs} pairs, {} messages of {} bytes each, unthrottled",
        load.messages, load.size
    );
    run(t, name, vec![(1, 1); pairs], Load { rate: None, ..load }).await
}
