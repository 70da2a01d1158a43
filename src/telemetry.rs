//! Logging setup: the one place that configures `tracing`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// What rustls may log unless a directive names it. Its warnings are about
/// what a peer sent (a refused renegotiation, an alert it sent us), one per
/// attempt, and nothing an operator can act on; the connection's own close
/// line already says how it ended.
const RUSTLS_DEFAULT: &str = "rustls=error";

/// Installs the global subscriber: `RUST_LOG` when set, else `level` (EnvFilter
/// syntax, e.g. `info` or `tenthbit=debug`). Logs go to stderr, coloured only
/// on a terminal. Returns an error naming the bad directive.
pub fn init(level: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => filter(&env).map_err(|e| format!("RUST_LOG: {e}"))?,
        _ => filter(level).map_err(|e| format!("log.level: {e}"))?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init()
        .map_err(|e| e.to_string())
}

/// The filter for `directives`, with rustls held to errors unless a
/// directive names it (`info,rustls=debug` shows everything it says).
fn filter(directives: &str) -> Result<EnvFilter, String> {
    let filter = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
    if directives.contains("rustls") {
        return Ok(filter);
    }
    let quiet = RUSTLS_DEFAULT.parse().map_err(|e| format!("{e}"))?;
    Ok(filter.add_directive(quiet))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_warnings_are_held_back_unless_asked_for() {
        let f = filter("info").unwrap().to_string();
        assert!(f.contains("rustls=error"), "{f}");
        let f = filter("info,rustls=debug").unwrap().to_string();
        assert!(
            f.contains("rustls=debug") && !f.contains("rustls=error"),
            "{f}"
        );
        assert!(filter("info,=bogus[").is_err());
    }
}
