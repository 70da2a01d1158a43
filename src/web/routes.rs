//! What each request gets: the page's files, the WebSocket upgrade at `/ws`
//! (after the origin policy), or an error status whose body starts with a
//! stable code from [`ErrorCode`].

use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::debug;

use super::assets;
use crate::ops::Metrics;
use crate::proto::ErrorCode;
use crate::server::Shared;

/// A response with the whole body in memory.
pub(super) type Reply = Response<Full<Bytes>>;

/// A request on `/ws`: hyper hands the connection to `on` after the
/// response whatever its status, if the request asked for an upgrade.
pub(super) struct Pending {
    /// Where the connection goes.
    pub on: OnUpgrade,
    /// The response was `101 Switching Protocols`.
    pub accepted: bool,
}

/// Answers one request; a request on `/ws` leaves its [`Pending`] in `upgrade`.
pub(super) fn respond(
    shared: &Shared,
    upgrade: &Mutex<Option<Pending>>,
    refusal: Option<ErrorCode>,
    mut req: Request<Incoming>,
) -> Reply {
    debug!(method = %req.method(), path = req.uri().path(), "http request");
    let m = &shared.session_ctx.metrics;
    if let Some(code) = refusal {
        return error(
            m,
            StatusCode::SERVICE_UNAVAILABLE,
            code,
            "over a connection limit",
        );
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return error(
            m,
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::HttpMethodNotAllowed,
            "only GET and HEAD",
        );
    }
    if req.uri().path() == "/ws" {
        let on = hyper::upgrade::on(&mut req);
        let reply = websocket(shared, &req);
        let accepted = reply.status() == StatusCode::SWITCHING_PROTOCOLS;
        if let Ok(mut slot) = upgrade.lock() {
            *slot = Some(Pending { on, accepted });
        }
        return reply;
    }
    match assets::find(req.uri().path()) {
        Some(asset) => page(asset),
        None => error(
            m,
            StatusCode::NOT_FOUND,
            ErrorCode::HttpNotFound,
            "no such page",
        ),
    }
}

/// One of the page's files, with headers that keep it to itself: no
/// framing, no third-party loads, no sniffing.
fn page(asset: &assets::Asset) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from_static(asset.body)));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// `GET /ws`: the origin policy, then the upgrade's checks (RFC 6455 4.2.1),
/// then `101 Switching Protocols`. No extension is ever accepted (no
/// compression), and no subprotocol is chosen.
fn websocket(shared: &Shared, req: &Request<Incoming>) -> Reply {
    let m = &shared.session_ctx.metrics;
    let headers = req.headers();
    // An `Origin` that is there but not visible ASCII is refused, never
    // taken for a missing one (which is allowed: not a browser).
    let origin = headers.get(header::ORIGIN).map(|v| v.to_str().ok());
    let host = text(headers, header::HOST);
    let allowed = match origin {
        None => shared.web_origins.allows(None, host),
        Some(None) => false,
        Some(Some(o)) => shared.web_origins.allows(Some(o), host),
    };
    if !allowed {
        let origin = origin.flatten();
        debug!(
            origin = origin.unwrap_or_default(),
            "websocket origin refused"
        );
        return error(
            m,
            StatusCode::FORBIDDEN,
            ErrorCode::HttpForbiddenOrigin,
            "this origin may not open a WebSocket here",
        );
    }
    let upgrading = has_token(headers, header::CONNECTION, "upgrade")
        && has_token(headers, header::UPGRADE, "websocket");
    let key = text(headers, header::SEC_WEBSOCKET_KEY).filter(|k| valid_key(k));
    let (true, Some(key)) = (upgrading, key) else {
        return error(
            m,
            StatusCode::BAD_REQUEST,
            ErrorCode::HttpBadUpgrade,
            "expected a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Key)",
        );
    };
    if text(headers, header::SEC_WEBSOCKET_VERSION) != Some("13") {
        let mut r = error(
            m,
            StatusCode::UPGRADE_REQUIRED,
            ErrorCode::HttpBadUpgrade,
            "only WebSocket version 13",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    let accept = derive_accept_key(key.as_bytes());
    let Ok(accept) = HeaderValue::from_str(&accept) else {
        return error(
            m,
            StatusCode::BAD_REQUEST,
            ErrorCode::HttpBadUpgrade,
            "bad key",
        );
    };
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    r
}

/// A header's value as text, if present and visible ASCII.
fn text(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// True when a comma-separated header holds `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A `Sec-WebSocket-Key` is 16 bytes in base64: 24 characters.
fn valid_key(key: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|k| k.len() == 16)
}

/// An error status, counted by code; the body is the stable code, a space,
/// and a human text.
fn error(metrics: &Metrics, status: StatusCode, code: ErrorCode, message: &str) -> Reply {
    metrics.error(code);
    let body = format!("{code} {message}\n");
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
