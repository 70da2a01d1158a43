//! The benchmark behind `tenthbit bench`: workloads over real TLS against a
//! running server, measured from outside it.
//!
//! - fanout: S subscribers on one topic, P publishers, M messages each;
//! - pairs: K topics, each with one sender and one receiver;
//! - idle: C logged-in connections held open (memory per connection);
//! - login: a storm of password logins while a logged-in user pings;
//! - mesh: nodes in this process ([`cluster`]): partition heal time and
//!   catch-up speed ([`mesh`]);
//! - search: a store filled directly (no server) and timed queries.
//!
//! Latency is measured in this process: a sender stamps each message with
//! the time since the run began, the receiver subtracts it from its own.

pub mod cluster;
pub mod mesh;
pub mod nats;
pub mod search;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::client::{Client, ClientReader, Error, Options};
use crate::conn::framing::Span;
use crate::procfs as proc;
use crate::proto::Packet;

/// Password of every account the benchmark creates.
const PASSWORD: &str = "bench-password";
/// How long a receiver waits for the next message before counting the rest
/// as lost.
const DRAIN: Duration = Duration::from_secs(10);
/// Messages a sender writes per syscall when not rate-limited.
const BATCH: usize = 32;

/// The server under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port`.
    pub addr: String,
    /// TLS trust and ALPN.
    pub options: Options,
    /// The server's pid, to read its CPU time and memory from /proc.
    pub server_pid: Option<u32>,
    /// Other nodes of the same server (a mesh) or cluster: receivers are
    /// spread over `addr` and these, round robin; senders stay on `addr`.
    pub spread: Vec<String>,
    /// Their pids: the server's CPU time and memory are the sums.
    pub spread_pids: Vec<u32>,
}

impl Target {
    /// Where receiver `i` connects.
    pub fn addr_for(&self, i: usize) -> &str {
        match i % (self.spread.len() + 1) {
            0 => &self.addr,
            k => self.spread.get(k - 1).map_or(&self.addr, String::as_str),
        }
    }

    /// CPU time and memory of every process of the server, summed.
    pub(crate) fn sample(&self) -> Option<proc::Sample> {
        let first = proc::sample(self.server_pid?)?;
        Some(
            self.spread_pids
                .iter()
                .filter_map(|p| proc::sample(*p))
                .fold(first, |a, b| proc::Sample {
                    cpu_seconds: a.cpu_seconds + b.cpu_seconds,
                    rss_kib: a.rss_kib + b.rss_kib,
                }),
        )
    }

    /// The same server, reached at receiver `i`'s node.
    fn node_for(&self, i: usize) -> Target {
        Target {
            addr: self.addr_for(i).to_owned(),
            spread: Vec::new(),
            spread_pids: Vec::new(),
            ..self.clone()
        }
    }
}

/// What a workload measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Which workload, with its parameters.
    pub workload: String,
    /// Messages delivered to receivers.
    pub deliveries: u64,
    /// Messages that should have been delivered.
    pub expected: u64,
    /// `expected - deliveries`.
    pub lost: u64,
    /// From the first send to the last delivery.
    pub seconds: f64,
    /// Deliveries per second.
    pub deliveries_per_second: f64,
    /// Latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Worst.
    pub max_ms: f64,
    /// Server CPU seconds spent during the measured part.
    pub server_cpu_seconds: Option<f64>,
    /// Deliveries per server CPU second.
    pub deliveries_per_cpu_second: Option<f64>,
    /// Server resident memory at the end, KiB.
    pub server_rss_kib: Option<u64>,
    /// Workload-specific figures.
    pub notes: Vec<(String, String)>,
}

/// What a delivery workload observed, before it becomes a [`Report`].
pub(crate) struct Observed {
    pub name: String,
    pub deliveries: u64,
    pub expected: u64,
    /// Latencies in ns, any order.
    pub latencies: Vec<u64>,
    /// Wall time from the first send to the last delivery.
    pub elapsed: Duration,
    pub before: Option<proc::Sample>,
    pub after: Option<proc::Sample>,
    pub notes: Vec<(String, String)>,
}

impl Report {
    /// Computes rates and percentiles from what a delivery workload saw.
    pub(crate) fn from_observed(mut o: Observed) -> Report {
        o.latencies.sort_unstable();
        let seconds = o.elapsed.as_secs_f64().max(1e-9);
        let cpu = o
            .before
            .zip(o.after)
            .map(|(b, a)| a.cpu_seconds - b.cpu_seconds);
        Report {
            workload: o.name,
            deliveries: o.deliveries,
            expected: o.expected,
            lost: o.expected.saturating_sub(o.deliveries),
            seconds,
            deliveries_per_second: o.deliveries as f64 / seconds,
            p50_ms: percentile(&o.latencies, 0.50),
            p99_ms: percentile(&o.latencies, 0.99),
            max_ms: o.latencies.last().copied().unwrap_or(0) as f64 / 1e6,
            server_cpu_seconds: cpu,
            deliveries_per_cpu_second: cpu.filter(|c| *c > 0.0).map(|c| o.deliveries as f64 / c),
            server_rss_kib: o.after.map(|a| a.rss_kib),
            notes: o.notes,
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.workload)?;
        if self.expected > 0 {
            writeln!(
                f,
                "  deliveries {} of {} (lost {}) in {:.3} s: {:.0}/s",
                self.deliveries, self.expected, self.lost, self.seconds, self.deliveries_per_second
            )?;
            writeln!(
                f,
                "  latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                self.p50_ms, self.p99_ms, self.max_ms
            )?;
        }
        if let Some(cpu) = self.server_cpu_seconds {
            write!(f, "  server cpu {cpu:.3} s")?;
            if let Some(per) = self.deliveries_per_cpu_second {
                write!(f, ", {per:.0} deliveries per cpu-second")?;
            }
            writeln!(f)?;
        }
        if let Some(rss) = self.server_rss_kib {
            writeln!(f, "  server rss {rss} KiB")?;
        }
        for (k, v) in &self.notes {
            writeln!(f, "  {k}: {v}")?;
        }
        Ok(())
    }
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The client failed.
    #[error("{what}: {cause}")]
    Client {
        /// During what.
        what: String,
        /// The client's error.
        cause: Error,
    },
    /// The server refused something the benchmark needs.
    #[error("{0}")]
    Refused(String),
}

fn client_err(what: impl Into<String>) -> impl FnOnce(Error) -> BenchError {
    let what = what.into();
    move |cause| BenchError::Client { what, cause }
}

pub(crate) fn tag() -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    id.get(id.len() - 8..).unwrap_or("x").to_owned()
}

/// Connects and reads `welcome`.
async fn welcomed(t: &Target) -> Result<Client, BenchError> {
    let mut c = Client::connect(&t.addr, &t.options)
        .await
        .map_err(client_err("connecting"))?;
    let w = c
        .recv_timeout(DRAIN)
        .await
        .map_err(client_err("waiting for welcome"))?;
    if w.op != "welcome" {
        return Err(BenchError::Refused(format!(
            "expected welcome, got {}",
            w.op
        )));
    }
    Ok(c)
}

/// Sends `auth` and requires its `ack`.
async fn log_in(c: &mut Client, auth: Packet, who: &str) -> Result<(), BenchError> {
    let a = c
        .request(auth, DRAIN)
        .await
        .map_err(client_err("logging in"))?;
    if a.op != "ack" {
        return Err(BenchError::Refused(format!(
            "login {who}: {:?}",
            a.ex_str("code")
        )));
    }
    Ok(())
}

/// Connects, registers `name` if needed, and logs in (the login sequence's
/// packets stay queued in the client).
async fn user(t: &Target, name: &str) -> Result<Client, BenchError> {
    let mut c = welcomed(t).await?;
    let reg = Packet::request("register")
        .with("username", name)
        .with("password", PASSWORD);
    let r = c
        .request(reg, DRAIN)
        .await
        .map_err(client_err("registering"))?;
    if r.op != "ack" && r.ex_str("code") != Some("account/name-taken") {
        return Err(BenchError::Refused(format!(
            "register {name}: {:?}",
            r.ex_str("code")
        )));
    }
    let auth = Packet::request("auth")
        .with("method", "password")
        .with("username", name)
        .with("password", PASSWORD);
    log_in(&mut c, auth, name).await?;
    Ok(c)
}

pub(crate) fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(i).copied().unwrap_or(0) as f64 / 1e6
}

/// One topic's participants.
struct Group {
    topic: String,
    senders: Vec<Client>,
    receivers: Vec<Client>,
    /// Senders also count what the others send, on the same connection
    /// (chatbench's pairs); otherwise senders only read their refusals
    /// and the reply to the `ping` that follows their messages.
    senders_receive: bool,
}

/// How senders pace themselves.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Messages each sender sends.
    pub messages: u64,
    /// Bytes of payload per message.
    pub size: usize,
    /// Messages per second per sender; `None` sends as fast as possible.
    pub rate: Option<u32>,
    /// Whether the topics keep history.
    pub history: bool,
    /// Bytes each unthrottled write holds at least (chatbench writes
    /// 16 KiB); 0 writes [`BATCH`] lines at a time.
    pub batch_bytes: usize,
}

async fn make_group(
    t: &Target,
    tag: &str,
    g: usize,
    senders: usize,
    receivers: usize,
    history: bool,
) -> Result<Group, BenchError> {
    let mut owner = user(t, &format!("b{tag}g{g}s0")).await?;
    let create = Packet::request("create")
        .with("name", format!("bench-{tag}-{g}"))
        .with("history", history);
    let meta = owner
        .request(create, DRAIN)
        .await
        .map_err(client_err("creating the topic"))?;
    let topic = match meta.topic.clone() {
        Some(t) => t,
        None => {
            return Err(BenchError::Refused(format!(
                "create: {:?}",
                meta.ex_str("code")
            )));
        }
    };
    let mut sender_list = vec![owner];
    for s in 1..senders {
        sender_list.push(user(t, &format!("b{tag}g{g}s{s}")).await?);
    }
    let mut receiver_list = Vec::with_capacity(receivers);
    for r in 0..receivers {
        // Receiver r of group g sits on node (g + r) mod nodes.
        let node = t.node_for(g + r);
        receiver_list.push(user(&node, &format!("b{tag}g{g}r{r}")).await?);
    }
    for c in sender_list
        .iter_mut()
        .skip(1)
        .chain(receiver_list.iter_mut())
    {
        join_when_known(c, &topic).await?;
    }
    Ok(Group {
        topic,
        senders: sender_list,
        receivers: receiver_list,
        senders_receive: false,
    })
}

/// Joins `topic`; on another node of a mesh the topic may not have arrived
/// yet, so `topic/not-found` is asked again until [`DRAIN`] passes.
async fn join_when_known(c: &mut Client, topic: &str) -> Result<(), BenchError> {
    let deadline = Instant::now() + DRAIN;
    loop {
        let mut join = Packet::request("join");
        join.topic = Some(topic.to_owned());
        let p = c
            .request(join, DRAIN)
            .await
            .map_err(client_err("joining"))?;
        if p.op == "meta" {
            return Ok(());
        }
        if p.ex_str("code") != Some("topic/not-found") || Instant::now() > deadline {
            return Err(BenchError::Refused(format!("join: {:?}", p.ex_str("code"))));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs senders and receivers of every group at once and measures.
async fn run_groups(
    t: &Target,
    name: String,
    groups: Vec<Group>,
    load: Load,
) -> Result<Report, BenchError> {
    let epoch = Instant::now();
    let payload = "x".repeat(load.size);
    let mut expected = 0u64;
    // Senders are counted as receivers too (of what others send, when
    // they listen): every task ends in a count.
    let mut receivers = Vec::new();
    let errors = Arc::new(AtomicU64::new(0));
    for g in groups {
        let per_receiver = load.messages * g.senders.len() as u64;
        expected += per_receiver * g.receivers.len() as u64;
        for c in g.receivers {
            let dedup = !t.spread.is_empty() && g.senders.len() == 1;
            receivers.push(tokio::spawn(receive(c, per_receiver, epoch, dedup)));
        }
        // What each sender hears from the others, when it listens.
        let from_others = match g.senders_receive {
            true => load.messages * (g.senders.len() as u64).saturating_sub(1),
            false => 0,
        };
        for c in g.senders {
            expected += from_others;
            let (topic, payload, errors) = (g.topic.clone(), payload.clone(), errors.clone());
            let sending = send(c, topic, payload, load, epoch, errors, from_others);
            receivers.push(tokio::spawn(sending));
        }
    }
    let before = t.sample();
    let start = epoch.elapsed();
    let mut latencies = Vec::new();
    let mut deliveries = 0;
    let mut last = start;
    let mut duplicates = 0;
    for r in receivers {
        let (count, lat, at, dup) = r.await.unwrap_or_default();
        deliveries += count;
        duplicates += dup;
        latencies.extend(lat);
        last = last.max(at);
    }
    let after = t.sample();
    let mut notes = Vec::new();
    let refused = errors.load(Ordering::Relaxed);
    if refused > 0 {
        notes.push(("sends refused by the server".into(), refused.to_string()));
    }
    if !t.spread.is_empty() {
        notes.push(("duplicated".into(), duplicates.to_string()));
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

/// Paces a sender: batches of `BATCH` lines as fast as the socket takes
/// them, or, with a rate, what the rate allows by each millisecond tick.
pub(crate) struct Pacer {
    messages: u64,
    sent: u64,
    batch_bytes: usize,
    rate: Option<(u32, tokio::time::Interval, Instant)>,
}

impl Pacer {
    /// For `load.messages` messages at `load.rate`.
    pub(crate) fn new(load: &Load) -> Self {
        let rate = load.rate.map(|r| {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            (r, tick, Instant::now())
        });
        Self {
            messages: load.messages,
            sent: 0,
            rate,
            batch_bytes: load.batch_bytes,
        }
    }

    /// Fills `buf` with the next batch, calling `line` once per message;
    /// `false` once everything was sent. A paced batch may be empty.
    pub(crate) async fn next_batch(
        &mut self,
        buf: &mut String,
        mut line: impl FnMut(&mut String),
    ) -> bool {
        if self.sent >= self.messages {
            return false;
        }
        buf.clear();
        let until = match &mut self.rate {
            None if self.batch_bytes > 0 => {
                while self.sent < self.messages && buf.len() < self.batch_bytes {
                    line(buf);
                    self.sent += 1;
                }
                return true;
            }
            None => self.messages.min(self.sent + BATCH as u64),
            Some((rate, tick, begin)) => {
                tick.tick().await;
                let due = (begin.elapsed().as_secs_f64() * f64::from(*rate)) as u64;
                due.min(self.messages)
            }
        };
        while self.sent < until {
            line(buf);
            self.sent += 1;
        }
        true
    }
}

/// What a receiver counted: deliveries, each one's latency (ns) and when
/// the last came, all measured from the run's `epoch`.
pub(crate) struct Tally {
    pub(crate) count: u64,
    latencies: Vec<u64>,
    last: Duration,
    /// Stamps seen, where duplicates are looked for (a receiver with one
    /// sender: its stamps are unique).
    seen: Option<std::collections::HashSet<u64>>,
    duplicates: u64,
}

/// What a receiver counted: deliveries, latencies (ns), when the last came,
/// and duplicates (not in the deliveries).
pub(crate) type Counted = (u64, Vec<u64>, Duration, u64);

impl Tally {
    pub(crate) fn new(epoch: Instant, expected: u64, dedup: bool) -> Self {
        let capacity = usize::try_from(expected).unwrap_or(0);
        Self {
            count: 0,
            latencies: Vec::with_capacity(capacity),
            last: epoch.elapsed(),
            seen: dedup.then(|| std::collections::HashSet::with_capacity(capacity)),
            duplicates: 0,
        }
    }

    /// Counts a delivery stamped `sent` (ns since the epoch) by its sender,
    /// that arrived at `now` (since the epoch).
    pub(crate) fn delivered(&mut self, sent: Option<u64>, now: Duration) {
        if let (Some(seen), Some(t)) = (&mut self.seen, sent) {
            if !seen.insert(t) {
                self.duplicates += 1;
                return;
            }
        }
        if let Some(sent) = sent {
            let now_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
            self.latencies.push(now_ns.saturating_sub(sent));
        }
        self.count += 1;
        self.last = now;
    }

    pub(crate) fn finish(self) -> Counted {
        (self.count, self.latencies, self.last, self.duplicates)
    }
}

/// What the load generator reads of a packet: its op and, on a relayed
/// message, the sender's stamp `ex.t`. Borrowed and typed, so the receivers
/// (one core for all of them) keep up with the server; a full decode is what
/// NATS's receivers are spared too.
#[derive(serde::Deserialize)]
struct Glance<'a> {
    #[serde(borrow)]
    op: &'a str,
    #[serde(default)]
    ex: Stamp,
}

#[derive(serde::Deserialize, Default)]
struct Stamp {
    t: Option<u64>,
}

/// The op and stamp of a line, if it is a packet with a plain op string.
/// The server writes compact JSON, `op` before `ex`, and relays `ex` as
/// the sender wrote it (`{"t":…`): the op and stamp are found by a search
/// where they are where they should be, and by a parse where not.
fn glance(line: &[u8]) -> Option<(&str, Option<u64>)> {
    static OP: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(br#","op":""#));
    static STAMP: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(br#","ex":{"t":"#));
    let quick = || {
        let at = OP.find(line)? + OP.needle().len();
        let rest = line.get(at..)?;
        let op = std::str::from_utf8(rest.get(..memchr::memchr(b'"', rest)?)?).ok()?;
        if op != "send" {
            return Some((op, None));
        }
        let at = STAMP.find(rest)? + STAMP.needle().len();
        let digits = rest.get(at..)?;
        let end = digits.iter().position(|b| !b.is_ascii_digit())?;
        let t = std::str::from_utf8(digits.get(..end)?).ok()?.parse().ok()?;
        Some((op, Some(t)))
    };
    quick().or_else(|| {
        let g: Glance = serde_json::from_slice(line).ok()?;
        Some((g.op, g.ex.t))
    })
}

/// The next line, lent (its bytes are `rd.line(range)`): at once if already
/// read, else waiting at most `DRAIN` once `patient` (if given) is false.
/// `arrived` is set to when the bytes came: lines read together arrived
/// together, so the clock is read once per read, not once per line.
async fn next_line(
    rd: &mut ClientReader,
    epoch: Instant,
    arrived: &mut Duration,
    patient: Option<&AtomicBool>,
) -> Option<std::ops::Range<usize>> {
    let span = match rd.buffered_span() {
        Some(span) => span,
        None => loop {
            match tokio::time::timeout(DRAIN, rd.next_span()).await {
                Ok(read) => {
                    *arrived = epoch.elapsed();
                    break read.ok()??;
                }
                Err(_) if patient.is_some_and(|p| p.load(Ordering::Acquire)) => {}
                Err(_) => return None,
            }
        },
    };
    match span {
        Span::Line(range) => Some(range),
        Span::TooLong => None,
    }
}

/// Counts `send` packets until `expected` or a quiet `DRAIN`; returns the
/// count, each latency in ns, and when the last one came (since `epoch`).
async fn receive(c: Client, expected: u64, epoch: Instant, dedup: bool) -> Counted {
    let (mut rd, _wr) = c.into_split();
    let mut tally = Tally::new(epoch, expected, dedup);
    let mut arrived = Duration::ZERO;
    while tally.count < expected {
        let Some(line) = next_line(&mut rd, epoch, &mut arrived, None).await else {
            break;
        };
        // Only relayed messages carry "t"; skip everything else.
        if let Some(("send", t)) = glance(rd.line(line)) {
            tally.delivered(t, arrived);
        }
    }
    tally.finish()
}

/// The `id` of the `ping` a sender writes after its messages: sends
/// without an `id` get no ack, and replies come in request order, so its
/// reply says every message before it was handled (and any refusal read).
const FENCE: &str = "bench-fence";

/// The fence's reply, whether `pong` or a refusal (`rate/limited`).
fn fences(line: &[u8]) -> bool {
    static FOR: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| {
            memchr::memmem::Finder::new(&format!(r#""for":"{FENCE}""#)).into_owned()
        });
    FOR.find(line).is_some()
}

/// Sends `load.messages` messages without ids (no acks, as chatbench sends
/// them), then a `ping`; reads on the side until its `pong` and
/// `from_others` messages relayed from the topic's other senders.
async fn send(
    c: Client,
    topic: String,
    payload: String,
    load: Load,
    epoch: Instant,
    errors: Arc<AtomicU64>,
    from_others: u64,
) -> Counted {
    let (mut rd, mut wr) = c.into_split();
    // While this sender still writes, its reader may get nothing for long
    // (sends without ids get no acks): a quiet spell ends it only after.
    let writing = Arc::new(AtomicBool::new(true));
    let still_writing = writing.clone();
    let reading = tokio::spawn(async move {
        let mut tally = Tally::new(epoch, from_others, false);
        let (mut fenced, mut arrived) = (false, Duration::ZERO);
        while !fenced || tally.count < from_others {
            let next = next_line(&mut rd, epoch, &mut arrived, Some(&still_writing));
            let Some(line) = next.await else {
                break;
            };
            let line = rd.line(line);
            match glance(line) {
                Some(("pong" | "error", _)) if fences(line) => fenced = true,
                Some(("error", _)) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                Some(("send", t)) if from_others > 0 => tally.delivered(t, arrived),
                _ => {}
            }
        }
        tally.finish()
    });
    let line = |epoch: Instant| {
        let t = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        format!(
            "{{\"op\":\"send\",\"topic\":\"{topic}\",\"ex\":{{\"t\":{t},\"d\":\"{payload}\"}}}}\n"
        )
    };
    let mut pacer = Pacer::new(&load);
    let mut buf = String::new();
    while pacer
        .next_batch(&mut buf, |b| b.push_str(&line(epoch)))
        .await
    {
        if !buf.is_empty() && wr.send_raw(buf.as_bytes()).await.is_err() {
            break;
        }
    }
    let fence = format!("{{\"op\":\"ping\",\"id\":\"{FENCE}\"}}\n");
    let _ = wr.send_raw(fence.as_bytes()).await;
    writing.store(false, Ordering::Release);
    reading.await.unwrap_or_default()
}

/// S subscribers on one topic, P publishers.
pub async fn fanout(
    t: &Target,
    subscribers: usize,
    publishers: usize,
    load: Load,
) -> Result<Report, BenchError> {
    let tag = tag();
    let group = make_group(t, &tag, 0, publishers.max(1), subscribers, load.history).await?;
    let name = format!(
        "fanout: {subscribers} subscribers, {} publisher(s), {} messages of {} bytes each, {}, history {}",
        publishers.max(1),
        load.messages,
        load.size,
        load.rate.map_or("unthrottled".to_owned(), |r| format!(
            "{r} msg/s per publisher"
        )),
        if load.history { "on" } else { "off" }
    );
    run_groups(t, name, vec![group], load).await
}

/// K topics, one sender and one receiver each, all at once; or, both ways,
/// two members each sending and receiving on one connection (chatbench's
/// pairs).
pub async fn pairs(
    t: &Target,
    pairs: usize,
    load: Load,
    both_ways: bool,
) -> Result<Report, BenchError> {
    let tag = tag();
    let mut groups = Vec::with_capacity(pairs);
    for g in 0..pairs {
        let mut group = match both_ways {
            true => make_group(t, &tag, g, 2, 0, load.history).await?,
            false => make_group(t, &tag, g, 1, 1, load.history).await?,
        };
        group.senders_receive = both_ways;
        groups.push(group);
    }
    let name = format!(
        "pairs: {pairs} pairs{}, {} messages of {} bytes each, unthrottled, history {}",
        if both_ways { " sending both ways" } else { "" },
        load.messages,
        load.size,
        if load.history { "on" } else { "off" }
    );
    run_groups(t, name, groups, Load { rate: None, ..load }).await
}

/// Connects and logs in with a ticket (no password hashing).
async fn ticket_user(t: &Target, ticket: String, server: &str) -> Result<Client, BenchError> {
    let mut c = welcomed(t).await?;
    let auth = Packet::request("auth")
        .with("method", "ticket")
        .with("ticket", ticket)
        .with("server", server);
    log_in(&mut c, auth, "with a ticket").await?;
    Ok(c)
}

/// C logged-in connections held open: setup rate and server memory per
/// connection. Each logs in with a ticket issued beforehand, so the setup
/// rate is TLS and login, not password hashing.
/// With `distinct`, each connection registers an account of its own and
/// logs in with its password instead (chatbench's pattern: per-account
/// state is then in the figure too).
pub async fn idle(
    t: &Target,
    connections: usize,
    concurrency: usize,
    distinct: bool,
) -> Result<Report, BenchError> {
    proc::raise_fd_limit();
    let name = format!("b{}idle", tag());
    let mut master = user(t, &name).await?;
    let mut tickets = Vec::with_capacity(connections);
    let mut server = String::new();
    for _ in 0..if distinct { 0 } else { connections } {
        let p = master
            .request(Packet::request("ticket"), DRAIN)
            .await
            .map_err(client_err("asking for a ticket"))?;
        match p.ex_str("ticket") {
            Some(ticket) => tickets.push(ticket.to_owned()),
            None => {
                return Err(BenchError::Refused(format!(
                    "ticket: {:?}",
                    p.ex_str("code")
                )));
            }
        }
    }
    let w = master
        .request(Packet::request("whoami"), DRAIN)
        .await
        .map_err(client_err("whoami"))?;
    if let Some(s) = w.ex_str("server") {
        server = s.to_owned();
    }
    let before = t.sample();
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for i in 0..connections {
        let (t, server, permits) = (t.clone(), server.clone(), permits.clone());
        let ticket = tickets.pop();
        let own = format!("{name}c{i}");
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.ok()?;
            match ticket {
                Some(ticket) => ticket_user(&t, ticket, &server).await.ok(),
                None => user(&t, &own).await.ok(),
            }
        }));
    }
    let mut held = Vec::with_capacity(connections);
    for task in tasks {
        if let Ok(Some(c)) = task.await {
            held.push(c);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = t.sample();
    let mut notes = vec![
        (
            "connections held".into(),
            format!("{} of {connections}", held.len()),
        ),
        (
            if distinct {
                "setups per second (TLS + register + password login)".into()
            } else {
                "setups per second (TLS + ticket login)".into()
            },
            format!("{:.0}", held.len() as f64 / elapsed.max(1e-9)),
        ),
    ];
    if let (Some(b), Some(a)) = (before, after) {
        let per = (a.rss_kib.saturating_sub(b.rss_kib)) as f64 / held.len().max(1) as f64;
        notes.push(("server rss per connection".into(), format!("{per:.1} KiB")));
    }
    Ok(Report {
        workload: format!(
            "idle: {connections} logged-in TLS connections, {}",
            if distinct {
                "each its own account"
            } else {
                "one account"
            }
        ),
        server_rss_kib: after.map(|a| a.rss_kib),
        notes,
        ..Report::default()
    })
}

/// N password logins, `concurrency` at a time, while a logged-in user pings.
pub async fn login(t: &Target, logins: usize, concurrency: usize) -> Result<Report, BenchError> {
    let name = format!("b{}login", tag());
    let mut pinger = user(t, &name).await?;
    // Each of the `concurrency` workers logs in as an account of its own,
    // one login at a time, the accounts made before the clock starts: the
    // server lets an account have only a few password checks in flight
    // (protocol.md 11.4.5, `auth.max_failures_per_account`) and throttles
    // the rest, and the storm is to measure hashing, not that allowance.
    let workers = concurrency.clamp(1, logins.max(1));
    let mut accounts = Vec::with_capacity(workers);
    for k in 0..workers {
        let account = format!("{name}{k}");
        drop(user(t, &account).await?);
        accounts.push(account);
    }
    let before = t.sample();
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(workers);
    for (k, account) in accounts.into_iter().enumerate() {
        // Logins k, k + workers, k + 2 * workers, ...
        let share = logins.saturating_sub(k).div_ceil(workers);
        let (t, done) = (t.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0usize;
            for _ in 0..share {
                if user(&t, &account).await.is_ok() {
                    ok += 1;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            ok
        }));
    }
    let mut rtts = Vec::new();
    while done.load(Ordering::Relaxed) < logins as u64 {
        let t0 = Instant::now();
        if pinger
            .request(Packet::request("ping"), DRAIN)
            .await
            .is_err()
        {
            break;
        }
        rtts.push(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    let mut ok = 0;
    for task in tasks {
        ok += task.await.unwrap_or(0);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = t.sample();
    rtts.sort_unstable();
    Ok(Report {
        workload: format!(
            "login: {logins} password logins, {concurrency} at a time, while one user pings"
        ),
        server_cpu_seconds: before
            .zip(after)
            .map(|(b, a)| a.cpu_seconds - b.cpu_seconds),
        server_rss_kib: after.map(|a| a.rss_kib),
        notes: vec![
            (
                "logins".into(),
                format!(
                    "{ok} of {logins} in {elapsed:.2} s: {:.0}/s",
                    ok as f64 / elapsed.max(1e-9)
                ),
            ),
            (
                "ping round trip during the storm".into(),
                format!(
                    "{} pings, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                    rtts.len(),
                    percentile(&rtts, 0.5),
                    percentile(&rtts, 0.99),
                    rtts.last().copied().unwrap_or(0) as f64 / 1e6
                ),
            ),
        ],
        ..Report::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::id::{UuidText, new_uuid};
    use crate::proto::packet::write_relay;

    #[test]
    fn a_glance_reads_what_a_parse_would() {
        let raw: Box<serde_json::value::RawValue> =
            serde_json::from_str(r#"{"t":1234567,"d":"xx\"op\":\"no\""}"#).unwrap();
        let (id, topic) = (UuidText::new(new_uuid()), UuidText::new(new_uuid()));
        let mut relay = Vec::new();
        write_relay(
            &mut relay,
            &id,
            5,
            &topic,
            r#""d\"an""#,
            raw.get().as_bytes(),
        );
        let ack = crate::proto::reply::ack(Some("r1")).to_line();
        let error =
            crate::proto::reply::error(None, crate::proto::ErrorCode::AclDenied, "no").to_line();
        // Not as the server writes it: the parse answers.
        let spaced = br#"{ "op" : "send", "ex" : { "d" : "x", "t" : 42 } }"#;
        let no_stamp = br#"{"id":"x","op":"send","ex":{"d":"x"}}"#;
        type Seen<'a> = Option<(&'a str, Option<u64>)>;
        let cases: [(&[u8], Seen); 6] = [
            (&relay, Some(("send", Some(1234567)))),
            (&ack, Some(("ack", None))),
            (&error, Some(("error", None))),
            (spaced, Some(("send", Some(42)))),
            (no_stamp, Some(("send", None))),
            (b"not json", None),
        ];
        for (line, want) in cases {
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            assert_eq!(glance(line), want, "{}", String::from_utf8_lossy(line));
        }
    }
}
