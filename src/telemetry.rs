//! Logging setup: the one place that configures `tracing`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: `RUST_LOG` when set, else `level` (EnvFilter
/// syntax, e.g. `info` or `tenthbit=debug`). Logs go to stderr, coloured only
/// on a terminal. Returns an error naming the bad directive.
pub fn init(level: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => {
            EnvFilter::try_new(env).map_err(|e| format!("RUST_LOG: {e}"))?
        }
        _ => EnvFilter::try_new(level).map_err(|e| format!("log.level: {e}"))?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init()
        .map_err(|e| e.to_string())
}
