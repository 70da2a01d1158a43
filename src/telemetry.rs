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
    if names_rustls(directives) {
        return Ok(filter);
    }
    let quiet = RUSTLS_DEFAULT.parse().map_err(|e| format!("{e}"))?;
    Ok(filter.add_directive(quiet))
}

/// Whether a directive's target is rustls or one of its modules
/// (`rustls=debug`, `rustls::conn=trace`), not merely a name containing it
/// (`tokio_rustls=debug` leaves rustls held back).
fn names_rustls(directives: &str) -> bool {
    directives.split(',').any(|directive| {
        let target = directive
            .split(['=', '['])
            .next()
            .unwrap_or_default()
            .trim();
        target == "rustls" || target.starts_with("rustls::")
    })
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
        let f = filter("info,rustls::conn=trace").unwrap().to_string();
        assert!(!f.contains("rustls=error"), "{f}");
    }

    #[test]
    fn a_target_that_only_contains_rustls_leaves_it_held_back() {
        let f = filter("info,tokio_rustls=debug").unwrap().to_string();
        assert!(f.contains("rustls=error"), "{f}");
    }
}
