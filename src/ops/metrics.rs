//! The server's metrics, in its own registry (several servers can run in
//! one process, as the tests do). Instrumented code calls the methods here
//! at a few central points; nothing else knows about Prometheus.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::proto::{ErrorCode, Packet};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Transport {
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Login {
    method: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Code {
    code: &'static str,
}

/// Every figure the operator's `/metrics` shows, and whether the server is ready.
pub struct Metrics {
    registry: Registry,
    connections: Family<Transport, Counter>,
    open: Family<Transport, Gauge>,
    logins: Family<Login, Counter>,
    /// Packets read from clients.
    pub packets_in: Counter,
    /// Packets written to clients.
    pub packets_out: Counter,
    deliveries: Counter,
    kept: Counter,
    slow_consumers: Counter,
    rate_limited: Counter,
    commit_seconds: Histogram,
    errors: Family<Code, Counter>,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, registered under the `tenthbit_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tenthbit");
        let m = Metrics {
            connections: Family::default(),
            open: Family::default(),
            logins: Family::default(),
            packets_in: Counter::default(),
            packets_out: Counter::default(),
            deliveries: Counter::default(),
            kept: Counter::default(),
            slow_consumers: Counter::default(),
            rate_limited: Counter::default(),
            // 50 µs to about 1.6 s.
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            errors: Family::default(),
            ready: AtomicBool::new(false),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "connections",
            "Connections accepted, by transport",
            m.connections.clone(),
        );
        r.register(
            "connections_open",
            "Connections open now, by transport",
            m.open.clone(),
        );
        r.register(
            "logins",
            "Login attempts, by method and result",
            m.logins.clone(),
        );
        r.register(
            "packets_in",
            "Packets read from clients",
            m.packets_in.clone(),
        );
        r.register(
            "packets_out",
            "Packets written to clients",
            m.packets_out.clone(),
        );
        r.register(
            "deliveries",
            "Messages queued for a receiving connection",
            m.deliveries.clone(),
        );
        r.register(
            "messages_kept",
            "Messages kept in history (appended to the message log)",
            m.kept.clone(),
        );
        r.register(
            "slow_consumers",
            "Connections cut because their send queue overflowed",
            m.slow_consumers.clone(),
        );
        r.register(
            "rate_limited_packets",
            "Packets refused with rate/limited",
            m.rate_limited.clone(),
        );
        r.register(
            "store_commit_seconds",
            "Time to write and sync one group of the message log, or to commit one group of changes to the store",
            m.commit_seconds.clone(),
        );
        r.register(
            "errors",
            "Error and bye packets sent in reply, by code",
            m.errors.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// A connection of `transport` opened; the guard counts it open until dropped.
    pub fn connection(&self, transport: &'static str) -> OpenConnection {
        let label = Transport { transport };
        self.connections.get_or_create(&label).inc();
        let open = self.open.get_or_create(&label).clone();
        open.inc();
        OpenConnection(open)
    }

    /// A login attempt by `method` ended.
    pub fn login(&self, method: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.logins.get_or_create(&Login { method, result }).inc();
    }

    /// `n` messages were queued for receiving connections.
    pub fn delivered(&self, n: usize) {
        self.deliveries.inc_by(n as u64);
    }

    /// A message was committed to history.
    pub fn kept(&self) {
        self.kept.inc();
    }

    /// A connection was cut as a slow consumer.
    pub fn slow_consumer(&self) {
        self.slow_consumers.inc();
    }

    /// A group commit took `took`.
    pub fn commit(&self, took: Duration) {
        self.commit_seconds.observe(took.as_secs_f64());
    }

    /// Looks at a reply: `error` and `bye` packets are counted by code.
    pub fn reply(&self, packet: &Packet) {
        if packet.op != "error" && packet.op != "bye" {
            return;
        }
        let Some(code) = packet.ex_str("code") else {
            return;
        };
        // Only known codes become labels: the set stays bounded.
        if let Some(known) = ErrorCode::ALL.iter().find(|c| c.as_str() == code) {
            self.error(*known);
        }
    }

    /// An `error` or `bye` with `code` was sent.
    pub fn error(&self, code: ErrorCode) {
        if code == ErrorCode::RateLimited {
            self.rate_limited.inc();
        }
        self.errors
            .get_or_create(&Code {
                code: code.as_str(),
            })
            .inc();
    }

    /// Marks the server ready (store open, listeners bound) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// True while the server is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Counts a connection as open while it lives.
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_show_in_the_text_format() {
        let m = Metrics::new();
        let open = m.connection("websocket");
        m.login("password", true);
        m.reply(&crate::proto::reply::error(
            None,
            ErrorCode::RateLimited,
            "slow down",
        ));
        m.commit(Duration::from_millis(2));
        let text = m.encode();
        assert!(
            text.contains("tenthbit_connections_total{transport=\"websocket\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tenthbit_connections_open{transport=\"websocket\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tenthbit_logins_total{method=\"password\",result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tenthbit_errors_total{code=\"rate/limited\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tenthbit_rate_limited_packets_total 1"),
            "{text}"
        );
        assert!(
            text.contains("tenthbit_store_commit_seconds_count 1"),
            "{text}"
        );
        drop(open);
        assert!(
            m.encode()
                .contains("tenthbit_connections_open{transport=\"websocket\"} 0")
        );
    }
}
