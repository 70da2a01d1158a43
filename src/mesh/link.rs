//! One mesh link: `mesh.hello` both ways, then a reader (events, acks,
//! routed packets from the peer) and a writer (the cursor over our log,
//! keepalive acks, routed packets for the peer) until either ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::wire::{self, Code, Packet};
use super::{Inner, effects};
use crate::conn::framing::Frame;
use crate::conn::reader::FrameReader;
use crate::proto::id::now_ms;
use crate::store::{Incoming, Received, VersionVector};
use crate::tls::plaintext::SmallSlices;

type Stream = TlsStream<TcpStream>;
/// The link's stream as its halves see it.
type Io = SmallSlices<Stream>;

/// Routed and control packets waiting for a link's writer; beyond this a
/// routed packet is dropped (its sender times out), never queued unbounded.
const CONTROL_QUEUE: usize = 1024;

/// A link as the rest of the mesh sees it.
pub(super) struct Link {
    /// Unique in this process.
    pub id: u64,
    /// The peer's node name.
    pub peer: String,
    /// Dialled by the node with the smaller name (the link kept of two).
    pub preferred: bool,
    /// We dialled it.
    pub dialed: bool,
    /// When hello finished.
    pub since: Instant,
    control: mpsc::Sender<Out>,
    /// What the peer holds, as far as we know: its hello, what it sent us,
    /// and what we sent it. The cursor sends what this lacks.
    sent: Mutex<VersionVector>,
    /// The peer's version vector from its last `mesh.ack`.
    pub acked: Mutex<VersionVector>,
    last_heard: Mutex<Instant>,
    /// Cancelled to end the link; `farewell` says what to tell the peer.
    close: CancellationToken,
    farewell: Mutex<Option<(Code, String)>>,
    /// Events sent, events received and applied, events received again.
    pub events_out: AtomicU64,
    /// See `events_out`.
    pub events_in: AtomicU64,
    /// See `events_out`.
    pub duplicates_in: AtomicU64,
}

impl Link {
    /// How long since the peer last sent anything.
    pub fn silent_for(&self) -> Duration {
        self.last_heard
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    /// Ends the link, telling the peer why.
    pub fn end(&self, code: Code, message: &str) {
        if let Ok(mut f) = self.farewell.lock() {
            f.get_or_insert((code, message.to_owned()));
        }
        self.close.cancel();
    }

    /// Queues a packet for the writer; dropped when the queue is full.
    pub fn send(&self, p: Packet) {
        if self.control.try_send(Out::Packet(Box::new(p))).is_err() {
            debug!(peer = %self.peer, "mesh: control queue full, packet dropped");
        }
    }

    /// Queues an encoded line (newline included) for the writer; false
    /// when the queue is full and it was dropped.
    pub fn send_raw(&self, line: bytes::Bytes) -> bool {
        self.control.try_send(Out::Raw(line)).is_ok()
    }
}

/// What waits for a link's writer.
pub(super) enum Out {
    /// A packet to encode.
    Packet(Box<Packet>),
    /// A line already encoded (a relay, shared by every link).
    Raw(bytes::Bytes),
}

/// How a link ended, for the log line.
enum End {
    /// We end it for this reason (told to the peer).
    Refuse(Code, String),
    /// The peer said why in `mesh.error`.
    PeerSaid(String, String),
    /// The connection closed or failed.
    Closed(String),
}

/// Runs a link over an established TLS stream to `peer` (the node its
/// certificate names) until it ends.
pub(super) async fn run(inner: Arc<Inner>, stream: Stream, peer: String, dialed: bool) {
    let (rd, mut wr) = tokio::io::split(SmallSlices::new(stream));
    // Events that have arrived are gathered into one store transaction
    // with `now_or_never`; a turn's yield would cut the batch short.
    let mut reader = FrameReader::new(rd, false, inner.cfg.max_packet_bytes).batching();
    let (hello, ours) = match handshake(&inner, &mut reader, &mut wr, &peer).await {
        Ok(h) => h,
        Err(End::Refuse(code, message)) => {
            warn!(%peer, %code, reason = %message, "mesh: link refused");
            inner.note_error(&peer, format!("{code}: {message}"));
            farewell(&mut wr, code, &message).await;
            return;
        }
        Err(End::PeerSaid(code, message)) => {
            warn!(%peer, %code, reason = %message, "mesh: peer refused the link");
            inner.note_error(&peer, format!("peer said {code}: {message}"));
            return;
        }
        Err(End::Closed(why)) => {
            debug!(%peer, reason = %why, "mesh: link closed during hello");
            inner.note_error(&peer, why);
            return;
        }
    };
    let dialer_smaller = if dialed {
        inner.node < peer
    } else {
        peer < inner.node
    };
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let link = Arc::new(Link {
        id: inner.next_link.fetch_add(1, Ordering::Relaxed),
        peer: peer.clone(),
        preferred: dialer_smaller,
        dialed,
        since: Instant::now(),
        control,
        sent: Mutex::new({
            // The peer writes its own events and its kept messages: never
            // send them back.
            let mut sent = hello.vv.clone();
            let peer_origin = crate::store::Origin {
                node: hello.node.clone(),
                incarnation: hello.incarnation.clone(),
            };
            sent.raise(&peer_origin.key(), u64::MAX);
            sent.raise(&peer_origin.messages().key(), u64::MAX);
            sent
        }),
        acked: Mutex::new(hello.vv.clone()),
        last_heard: Mutex::new(Instant::now()),
        close: inner.shutdown.child_token(),
        farewell: Mutex::new(None),
        events_out: AtomicU64::new(0),
        events_in: AtomicU64::new(0),
        duplicates_in: AtomicU64::new(0),
    });
    if !inner.register(&link) {
        debug!(%peer, "mesh: a link to this node is already up; closing the new one");
        farewell(
            &mut wr,
            Code::Duplicate,
            "another link to this node is kept",
        )
        .await;
        return;
    }
    inner.learn_node(&peer);
    super::presence::on_link_up(&inner, &link);
    super::admission::on_link_up(&inner, &link);
    // From the hellos: no store read between the handshake and the
    // loops, where a busy store would keep the peer from hearing anything.
    let behind = (ours.ahead_of(&hello.vv), hello.vv.ahead_of(&ours));
    info!(
        %peer,
        link = link.id,
        dialed,
        peer_lacks = behind.0,
        we_lack = behind.1,
        "mesh: link up"
    );
    let (read_end, write_end) = tokio::join!(
        read_loop(&inner, &link, &mut reader),
        write_loop(&inner, &link, &mut wr, control_rx, ours),
    );
    let end = read_end.or(write_end);
    let (reason, code) = match &end {
        Some(End::Refuse(code, m)) => (m.clone(), Some(*code)),
        Some(End::PeerSaid(code, m)) => (format!("peer said {code}: {m}"), None),
        Some(End::Closed(why)) => (why.clone(), None),
        None => ("closed".to_owned(), None),
    };
    let told = link
        .farewell
        .lock()
        .ok()
        .and_then(|mut f| f.take())
        .or_else(|| {
            inner
                .shutdown
                .is_cancelled()
                .then(|| (Code::Shutdown, "the node is shutting down".to_owned()))
        });
    let said = code.map(|c| (c, reason.clone())).or(told);
    if let Some((c, m)) = &said {
        farewell(&mut wr, *c, m).await;
    } else {
        let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
    }
    inner.unregister(&link);
    match said {
        Some((c, m)) if c != Code::Shutdown && c != Code::Duplicate => {
            warn!(%peer, link = link.id, code = %c, reason = %m, "mesh: link down");
            inner.note_error(&peer, format!("{c}: {m}"));
        }
        _ => {
            info!(%peer, link = link.id, reason = %reason, "mesh: link down");
            inner.note_error(&peer, reason);
        }
    }
}

/// Sends our hello, reads and checks the peer's; returns it and the
/// version vector ours carried.
async fn handshake(
    inner: &Inner,
    reader: &mut FrameReader<ReadHalf<Io>>,
    wr: &mut WriteHalf<Io>,
    peer: &str,
) -> Result<(wire::Hello, VersionVector), End> {
    let vv = inner
        .store
        .call(|db| db.version_vector())
        .await
        .map_err(|e| End::Refuse(Code::Internal, e.to_string()))?;
    let ours = Packet::Hello(wire::Hello {
        server: inner.server.clone(),
        node: inner.node.clone(),
        incarnation: inner.incarnation.clone(),
        proto: wire::PROTO,
        vv: vv.clone(),
        now_ms: now_ms(),
    });
    write_packets(wr, &[Out::Packet(Box::new(ours))], &inner.cfg)
        .await
        .map_err(End::Closed)?;
    let packet = tokio::time::timeout(inner.cfg.handshake_timeout(), read_packet(reader))
        .await
        .map_err(|_| End::Closed("no hello in time".into()))??;
    let hello = match packet {
        Packet::Hello(h) => h,
        Packet::Error(r) => return Err(End::PeerSaid(r.code, r.message)),
        _ => {
            return Err(End::Refuse(
                Code::Malformed,
                "the first packet must be mesh.hello".into(),
            ));
        }
    };
    if hello.proto != wire::PROTO {
        return Err(End::Refuse(
            Code::Proto,
            format!("link protocol {} is not {}", hello.proto, wire::PROTO),
        ));
    }
    if !hello.server.eq_ignore_ascii_case(&inner.server) {
        return Err(End::Refuse(
            Code::ServerMismatch,
            format!("this node serves {}, not {}", inner.server, hello.server),
        ));
    }
    if hello.node != peer {
        return Err(End::Refuse(
            Code::NodeMismatch,
            format!(
                "hello says {:?} but the certificate is {peer:?}'s",
                hello.node
            ),
        ));
    }
    let skew = hello.now_ms.abs_diff(now_ms());
    if skew > inner.cfg.max_skew_ms {
        return Err(End::Refuse(
            Code::ClockSkew,
            format!(
                "clocks differ by {skew} ms; at most {} allowed",
                inner.cfg.max_skew_ms
            ),
        ));
    }
    Ok((hello, vv))
}

/// Reads one packet.
async fn read_packet(reader: &mut FrameReader<ReadHalf<Io>>) -> Result<Packet, End> {
    match reader.next_frame().await {
        Ok(Some(Frame::Line(line))) => decode(&line),
        Ok(Some(Frame::TooLong)) => Err(End::Refuse(
            Code::TooLarge,
            "a packet is longer than mesh.max_packet_bytes".into(),
        )),
        Ok(None) => Err(End::Closed("closed by the peer".into())),
        Err(e) => Err(End::Closed(e.to_string())),
    }
}

fn decode(line: &[u8]) -> Result<Packet, End> {
    wire::decode(line).map_err(|e| End::Refuse(Code::Malformed, format!("bad packet: {e}")))
}

/// Reads until the link ends: events go to the store in batches of what
/// arrived together.
async fn read_loop(
    inner: &Arc<Inner>,
    link: &Arc<Link>,
    reader: &mut FrameReader<ReadHalf<Io>>,
) -> Option<End> {
    let end = read_until_end(inner, link, reader).await;
    if let Some(End::Refuse(code, m)) = &end {
        link.end(*code, m);
    } else {
        link.close.cancel();
    }
    end
}

async fn read_until_end(
    inner: &Arc<Inner>,
    link: &Arc<Link>,
    reader: &mut FrameReader<ReadHalf<Io>>,
) -> Option<End> {
    let idle = inner.cfg.idle_timeout();
    let batch_max = inner.cfg.batch_events;
    loop {
        let first = tokio::select! {
            _ = link.close.cancelled() => return None,
            r = tokio::time::timeout(idle, read_packet(reader)) => match r {
                Err(_) => return Some(End::Refuse(Code::Idle, format!("nothing heard for {} ms", idle.as_millis()))),
                Ok(Err(e)) => return Some(e),
                Ok(Ok(p)) => p,
            },
        };
        if let Ok(mut t) = link.last_heard.lock() {
            *t = Instant::now();
        }
        let mut events = Vec::new();
        let mut next = Some(first);
        while let Some(p) = next.take() {
            match p {
                Packet::Event(e) => {
                    events.push(e);
                    if events.len() < batch_max {
                        // What has arrived already joins the batch (one
                        // transaction in the store), waiting for nothing.
                        use futures_util::FutureExt;
                        next = match reader.next_frame().now_or_never() {
                            Some(Ok(Some(Frame::Line(line)))) => match decode(&line) {
                                Ok(p) => Some(p),
                                Err(e) => return Some(e),
                            },
                            Some(Ok(Some(Frame::TooLong))) => {
                                return Some(End::Refuse(
                                    Code::TooLarge,
                                    "a packet is longer than mesh.max_packet_bytes".into(),
                                ));
                            }
                            Some(Ok(None)) | Some(Err(_)) | None => None,
                        };
                    }
                }
                other => {
                    if let Some(end) = receive(inner, link, std::mem::take(&mut events)).await {
                        return Some(end);
                    }
                    if let Some(end) = on_packet(inner, link, other) {
                        return Some(end);
                    }
                }
            }
        }
        if let Some(end) = receive(inner, link, events).await {
            return Some(end);
        }
    }
}

/// A packet other than an event.
fn on_packet(inner: &Arc<Inner>, link: &Arc<Link>, p: Packet) -> Option<End> {
    match p {
        Packet::Ack(a) => {
            if let Ok(mut acked) = link.acked.lock() {
                *acked = a.vv;
            }
            None
        }
        Packet::Route(r) => {
            inner.on_routed(r, link.id);
            None
        }
        Packet::Relay(r) => {
            super::relay::on_relay(inner, link.id, r);
            None
        }
        Packet::Presence(p) => {
            super::presence::on_presence(inner, link.id, p);
            None
        }
        Packet::Error(r) => Some(End::PeerSaid(r.code, r.message)),
        Packet::Hello(_) => Some(End::Refuse(Code::Malformed, "a second mesh.hello".into())),
        Packet::Event(_) => None,
    }
}

/// Hands a batch of events to the store and what they change to this node.
async fn receive(
    inner: &Arc<Inner>,
    link: &Arc<Link>,
    events: Vec<wire::WireEvent>,
) -> Option<End> {
    if events.is_empty() {
        return None;
    }
    // The peer holds what it sent: never send it back (before the store
    // call, since the commit wakes our writer).
    if let Ok(mut sent) = link.sent.lock() {
        for e in &events {
            sent.raise(&crate::store::replica::origin_key(&e.o, &e.i), e.s);
        }
    }
    let batch: Vec<Incoming> = match events
        .into_iter()
        .map(wire::WireEvent::into_incoming)
        .collect::<Result<_, _>>()
    {
        Ok(b) => b,
        Err(e) => return Some(End::Refuse(Code::Malformed, e)),
    };
    let _in_order = inner.applying.lock().await;
    let cache = inner.ctx.topics.clone();
    let received = inner.store.call(move |db| {
        let results = db.receive(batch)?;
        let applied: Vec<&crate::store::Event> = results
            .iter()
            .filter_map(|r| match r {
                Received::Applied(e) => Some(&**e),
                _ => None,
            })
            .collect();
        // The events are in: a failed read leaves the topic table behind
        // (as it was) rather than fail the batch.
        let recached = effects::recache(db, &cache, &applied).unwrap_or_else(|e| {
            warn!(error = %e, "mesh: cannot reload topics");
            Vec::new()
        });
        Ok((results, recached))
    });
    let (results, recached) = match received.await {
        Ok(r) => r,
        Err(e) => return Some(End::Refuse(Code::Internal, format!("store: {e}"))),
    };
    let mut applied = Vec::new();
    let mut end = None;
    for r in results {
        match r {
            Received::Applied(e) => applied.push(*e),
            Received::Duplicate => {
                link.duplicates_in.fetch_add(1, Ordering::Relaxed);
            }
            Received::Gap { origin, have, prev } => {
                end.get_or_insert(End::Refuse(
                    Code::Gap,
                    format!(
                        "an event of {origin} follows seq {prev}, but this node holds up to {have}"
                    ),
                ));
            }
            Received::OwnOrigin => {
                end.get_or_insert(End::Refuse(
                    Code::OwnOrigin,
                    "an event claims this node's own origin".into(),
                ));
            }
        }
    }
    link.events_in
        .fetch_add(applied.len() as u64, Ordering::Relaxed);
    for e in &applied {
        inner.learn_node(&e.node);
    }
    if !applied.is_empty() {
        effects::apply(&inner.ctx, &applied, recached).await;
        // After the messages they may name.
        super::messages::relay(&inner.ctx, &applied).await;
    }
    end
}

/// Sends what the peer lacks, then each new event, keepalive acks and
/// queued packets, until the link ends.
async fn write_loop(
    inner: &Arc<Inner>,
    link: &Arc<Link>,
    wr: &mut WriteHalf<Io>,
    mut control: mpsc::Receiver<Out>,
    held: VersionVector,
) -> Option<End> {
    let end = write_until_end(inner, link, wr, &mut control, held).await;
    link.close.cancel();
    end
}

async fn write_until_end(
    inner: &Arc<Inner>,
    link: &Arc<Link>,
    wr: &mut WriteHalf<Io>,
    control: &mut mpsc::Receiver<Out>,
    // What this node holds, as last read (first, from its hello).
    mut held: VersionVector,
) -> Option<End> {
    let mut log = inner.store.watch_log();
    let mut tick = tokio::time::interval(inner.cfg.keepalive_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Catch up: everything the peer lacks, a batch at a time.
        loop {
            let sent = link.sent.lock().map(|s| s.clone()).unwrap_or_default();
            let limit = inner.cfg.batch_events;
            let read = inner.store.call(move |db| db.catch_up(&sent, limit));
            let (now_held, batch) =
                match keep_alive_while(read, link, wr, &mut tick, &held, &inner.cfg).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        return Some(End::Refuse(Code::Internal, format!("store: {e}")));
                    }
                    Err(end) => return end,
                };
            held = now_held;
            let mut packets: Vec<Out> = Vec::with_capacity(4);
            if !batch.is_empty() {
                let mut lines =
                    Vec::with_capacity(batch.iter().map(|(e, _)| e.body.len() + 128).sum());
                if let Ok(mut sent) = link.sent.lock() {
                    for (event, prev) in &batch {
                        sent.raise(
                            &crate::store::replica::origin_key(&event.node, &event.incarnation),
                            event.seq,
                        );
                        wire::write_event(&mut lines, event, *prev);
                    }
                }
                packets.push(Out::Raw(bytes::Bytes::from(lines)));
            }
            let n = batch.len() as u64;
            // Routed packets are not starved by a long catch-up.
            while let Ok(p) = control.try_recv() {
                packets.push(p);
            }
            if packets.is_empty() {
                break;
            }
            if let Err(e) = write_packets(wr, &packets, &inner.cfg).await {
                return Some(End::Closed(e));
            }
            link.events_out.fetch_add(n, Ordering::Relaxed);
            if n == 0 {
                break;
            }
        }
        tokio::select! {
            biased;
            _ = link.close.cancelled() => return None,
            p = control.recv() => {
                let p = p?;
                if let Err(e) = write_packets(wr, &[p], &inner.cfg).await {
                    return Some(End::Closed(e));
                }
            }
            changed = log.changed() => {
                if changed.is_err() {
                    return None;
                }
            }
            _ = tick.tick() => {
                if let Err(e) = write_ack(wr, &held, &inner.cfg).await {
                    return Some(e);
                }
            }
        }
    }
}

/// Awaits `work` (a read from the store), writing a keepalive ack at each
/// tick meanwhile: a store busy for longer than the peer's idle timeout (a
/// long group commit, a slow disk) must not cost the link. `Err` when the
/// link ends first (`None`: closed here, without a reason to give).
async fn keep_alive_while<T>(
    work: impl std::future::Future<Output = T>,
    link: &Link,
    wr: &mut WriteHalf<Io>,
    tick: &mut tokio::time::Interval,
    held: &VersionVector,
    cfg: &super::config::MeshConfig,
) -> Result<T, Option<End>> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            out = &mut work => return Ok(out),
            _ = link.close.cancelled() => return Err(None),
            _ = tick.tick() => write_ack(wr, held, cfg).await.map_err(Some)?,
        }
    }
}

/// Writes a keepalive: an ack of what this node holds.
async fn write_ack(
    wr: &mut WriteHalf<Io>,
    held: &VersionVector,
    cfg: &super::config::MeshConfig,
) -> Result<(), End> {
    let ack = Out::Packet(Box::new(Packet::Ack(wire::Ack { vv: held.clone() })));
    write_packets(wr, &[ack], cfg).await.map_err(End::Closed)
}

/// How much of a write must go within the idle deadline: a catch-up batch
/// (up to thousands of events) may take longer than that on a slow link,
/// which is not a peer that stopped reading.
const WRITE_PROGRESS_BYTES: usize = 64 * 1024;

/// Writes packets as lines; each [`WRITE_PROGRESS_BYTES`] of them under the
/// idle deadline (a peer that stops reading for that long is dropped; it
/// catches up when it comes back).
async fn write_packets(
    wr: &mut (impl tokio::io::AsyncWrite + Unpin),
    packets: &[Out],
    cfg: &super::config::MeshConfig,
) -> Result<(), String> {
    let mut buf = Vec::new();
    for p in packets {
        match p {
            Out::Packet(p) => wire::encode(p, &mut buf),
            Out::Raw(line) => buf.extend_from_slice(line),
        }
    }
    let idle = cfg.idle_timeout();
    let mut pieces = buf.chunks(WRITE_PROGRESS_BYTES);
    loop {
        let piece = pieces.next();
        let write = async {
            match piece {
                Some(piece) => wr.write_all(piece).await,
                None => wr.flush().await,
            }
        };
        match tokio::time::timeout(idle, write).await {
            Ok(Ok(())) if piece.is_none() => return Ok(()),
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("write failed: {e}")),
            Err(_) => return Err("the peer stopped reading".into()),
        }
    }
}

/// Tells the peer why the link ends, then closes it (bounded in time).
async fn farewell(wr: &mut WriteHalf<Io>, code: Code, message: &str) {
    let p = Packet::Error(wire::Refusal {
        code: code.as_str().to_owned(),
        message: message.to_owned(),
    });
    let mut buf = Vec::new();
    wire::encode(&p, &mut buf);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        wr.write_all(&buf).await?;
        wr.flush().await?;
        wr.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A peer that reads slowly but steadily is not one that stopped
    /// reading, however long the whole write takes.
    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_is_kept() {
        let cfg = super::super::config::MeshConfig {
            idle_timeout_ms: 2_000,
            ..Default::default()
        };
        let (mut wr, mut rd) = tokio::io::duplex(WRITE_PROGRESS_BYTES);
        let total = 12 * WRITE_PROGRESS_BYTES;
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = vec![0u8; WRITE_PROGRESS_BYTES];
            while got < total {
                // The peer's pace: a piece every quarter second, the whole
                // write half again longer than the idle deadline.
                tokio::time::sleep(Duration::from_millis(250)).await;
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            got
        });
        let line = bytes::Bytes::from(vec![b'x'; total]);
        let wrote = write_packets(&mut wr, &[Out::Raw(line)], &cfg).await;
        assert_eq!(wrote, Ok(()));
        assert_eq!(reader.await.unwrap(), total);
    }

    /// A peer that stops reading is dropped after the idle deadline.
    #[tokio::test]
    async fn a_reader_that_stops_is_dropped() {
        let cfg = super::super::config::MeshConfig {
            idle_timeout_ms: 200,
            ..Default::default()
        };
        let (mut wr, _rd) = tokio::io::duplex(1024);
        let line = bytes::Bytes::from(vec![b'x'; 4096]);
        let wrote = write_packets(&mut wr, &[Out::Raw(line)], &cfg).await;
        assert_eq!(wrote, Err("the peer stopped reading".to_owned()));
    }
}
