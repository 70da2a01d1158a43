//! tenthbit: a chat daemon speaking the Tenthbit ("10bit") protocol.
//!
//! The modules follow a packet's path through the daemon:
//!
//! - [`server`]: bind, accept under connection limits, spawn a task per connection, shut down;
//!   [`refusals`]: refused connections logged once per address and interval.
//! - [`tls`]: rustls server config (TLS 1.2/1.3, ALPN `10bit/0.1`, `10bit-gzip/0.1`),
//!   self-signed default certificate, client trust (fingerprint pinning).
//! - [`conn`]: one connection: handshake deadline, [`conn::framing`] (lines),
//!   [`conn::gzip`] (the compressed transport), [`conn::reader`], [`conn::writer`].
//! - [`web`]: ALPN `http/1.1` on the client port: the web client's page and
//!   WebSocket sessions handed to the same session code.
//! - [`proto`]: the wire format, no I/O: envelope, requests, replies, error codes.
//! - [`session`]: login state and the one-reply-per-request rule.
//! - [`router`]: destinations and their bounded outbound queues.
//! - [`password`]: argon2id off the async workers, bounded.
//! - [`change`], [`store`]: every change of state as data, the event log, and SQLite.
//! - [`mesh`]: links to the other nodes of this server, replicating the event log.
//! - [`federation`]: ticket logins between different servers (asking and answering).
//! - [`client`]: the client library used by the `tenthbit` binary, tests and benchmark.
//! - [`bench`]: the benchmark workloads behind `tenthbit bench`.
//! - [`admin`]: the admin CLI's operations on the store.
//! - [`ops`]: the operator's listener (`/metrics`, `/healthz`) and the metrics.
//! - [`config`], [`telemetry`]: settings and logging.

pub mod accept;
pub mod admin;
pub mod bench;
pub mod change;
pub mod client;
pub mod config;
pub mod conn;
pub mod federation;
pub mod mesh;
pub mod ops;
pub mod password;
pub mod procfs;
pub mod proto;
pub mod refusals;
pub mod router;
pub mod server;
pub mod session;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod web;

pub use config::Config;
pub use server::{ServerHandle, start, start_on, start_with_mesh};
