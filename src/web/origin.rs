//! The WebSocket origin policy: requests without `Origin` (not a browser)
//! and same-origin requests are allowed, plus a configured allowlist. A
//! browser page elsewhere can then never drive a session with the user's
//! network position (cross-site WebSocket hijacking).

/// A parsed `scheme://host[:port]` origin, lowercased, port made explicit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// Parses an `Origin` header value or a configured origin; `None` for
    /// `null`, a path, userinfo, or an unknown scheme without a port.
    pub fn parse(text: &str) -> Option<Origin> {
        let (scheme, rest) = text.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" | "wss" => 443,
            "http" | "ws" => 80,
            _ => return None,
        };
        let (host, port) = split_host_port(rest)?;
        Some(Origin {
            scheme,
            host,
            port: port.unwrap_or(default_port),
        })
    }

    /// True when this origin is the page's own: `https` and the `Host`
    /// header's host and port (443 when none is given).
    fn is_same_as(&self, host_header: &str) -> bool {
        match split_host_port(host_header) {
            Some((host, port)) => {
                self.scheme == "https" && self.host == host && self.port == port.unwrap_or(443)
            }
            None => false,
        }
    }
}

/// Splits `host[:port]` (IPv6 in brackets), lowercasing the host; `None`
/// for anything with a path, userinfo or a bad port.
fn split_host_port(text: &str) -> Option<(String, Option<u16>)> {
    if text.is_empty() || text.contains(['/', '@', '?', '#', ' ']) {
        return None;
    }
    let (host, port) = match text.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':')?),
            };
            (host, port)
        }
        None => match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        },
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    Some((host.to_ascii_lowercase(), port))
}

/// Which origins may open a WebSocket.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allowed: Vec<Origin>,
}

impl Policy {
    /// A policy with `allowed` (as configured; unparsable entries are
    /// refused by config validation, and skipped here).
    pub fn new(allowed: &[String]) -> Self {
        Self {
            allowed: allowed.iter().filter_map(|o| Origin::parse(o)).collect(),
        }
    }

    /// True when a request with this `Origin` and `Host` may open a WebSocket.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        let Some(origin) = Origin::parse(origin) else {
            return false;
        };
        host.is_some_and(|h| origin.is_same_as(h)) || self.allowed.contains(&origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_origin_and_same_origin_are_allowed() {
        let p = Policy::default();
        assert!(p.allows(None, Some("chat.example.org")));
        assert!(p.allows(
            Some("https://chat.example.org"),
            Some("chat.example.org:443")
        ));
        assert!(p.allows(Some("https://127.0.0.1:10817"), Some("127.0.0.1:10817")));
        assert!(p.allows(Some("https://[::1]:10817"), Some("[::1]:10817")));
        assert!(p.allows(Some("HTTPS://Chat.Example.Org"), Some("chat.example.org")));
    }

    #[test]
    fn other_origins_need_the_allowlist() {
        let p = Policy::default();
        assert!(!p.allows(Some("https://evil.example"), Some("chat.example.org")));
        assert!(!p.allows(Some("null"), Some("chat.example.org")));
        // Another port or plain http is another origin.
        assert!(!p.allows(
            Some("https://chat.example.org:8443"),
            Some("chat.example.org")
        ));
        assert!(!p.allows(Some("http://chat.example.org"), Some("chat.example.org")));
        assert!(!p.allows(Some("https://chat.example.org"), None));
        let p = Policy::new(&["https://app.example.org".into()]);
        assert!(p.allows(
            Some("https://app.example.org:443"),
            Some("chat.example.org")
        ));
        assert!(!p.allows(
            Some("https://app.example.org:444"),
            Some("chat.example.org")
        ));
    }

    #[test]
    fn malformed_origins_do_not_parse() {
        for bad in [
            "",
            "null",
            "chat.example.org",
            "https://",
            "https://a/b",
            "https://u@a",
            "https://a:99999",
            "ftp://a",
            "https://[::1",
        ] {
            assert_eq!(Origin::parse(bad), None, "{bad:?}");
        }
    }
}
