//! HTTP routes of a node: the WebSocket upgrade at `/ws`, health, readiness and
//! metrics; the backend API, SSE and the HTTP fallback live in their own modules.

use crate::hub::now_ms;
use crate::limits::client_ip;
use crate::node::Node;
use crate::session;
use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use roomcast_protocol::Encoding;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

/// The response body type of every route.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A complete body.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed_unsync()
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A JSON response.
pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A query parameter, percent-decoded.
pub fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    let q = req.uri().query()?;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes and `+` (as space); invalid escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The bearer token of the Authorization header.
pub fn bearer(req: &Request<Incoming>) -> Option<String> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// Whether `given` is one of `keys`. Every key is compared in full, each in time that
/// depends on the lengths only, so that timing does not tell how much of a key matched
/// (the backend API keys and the admin keys).
pub fn key_matches(keys: &[String], given: &str) -> bool {
    keys.iter().fold(false, |acc, k| {
        acc | constant_eq(k.as_bytes(), given.as_bytes())
    })
}

/// Equality whose time depends on the lengths only, not on where the bytes differ.
fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Routes one request.
pub async fn route(
    node: Arc<Node>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let resp = match (req.method(), path.as_str()) {
        (&Method::GET, "/ws") => upgrade(node, peer, req),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if node.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else if node.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "bus unavailable\n")
            }
        }
        (&Method::GET, "/metrics") => {
            node.metrics.set_shards(&node.bus.shards());
            let body = node
                .metrics
                .render(node.bus.stats(), node.bus.is_ready() && node.hub.bus_up());
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (&Method::GET, "/sse") => crate::sse::open(node, peer, req).await,
        (&Method::GET, "/") => text(
            StatusCode::OK,
            format!("roomcast node {} ({} ms)\n", node.node_id, now_ms()),
        ),
        (_, p) if crate::admin::serves(&node, p) => crate::admin::route(node, peer, req).await,
        (&Method::GET, p) if p.starts_with("/demo") => {
            match crate::demo::serve(p, req.uri().query()) {
                Some(r) => r,
                None => text(StatusCode::NOT_FOUND, "not found\n"),
            }
        }
        _ => return Ok(crate::api::route(node, peer, req).await),
    };
    Ok(resp)
}

/// Whether a header holds `token` in its comma-separated list (case-insensitive), as
/// `Connection: keep-alive, Upgrade` does.
fn has_token(h: &hyper::HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Decodes standard base64 (with `=` padding); `None` when it is not base64.
pub fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let pad = s.iter().rev().take_while(|c| **c == b'=').count();
    if pad > 2 {
        return None;
    }
    let data = &s[..s.len() - pad];
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in data {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Why an upgrade request is not a valid RFC 6455 opening handshake (section 4.2.1), as
/// the status and body of the answer; `None` when it is one.
fn handshake_error(req: &Request<Incoming>) -> Option<Response<Body>> {
    let bad = |why: &str| Some(text(StatusCode::BAD_REQUEST, format!("{why} (RFC 6455)\n")));
    let h = req.headers();
    if req.version() < hyper::Version::HTTP_11 {
        return bad("a WebSocket upgrade needs HTTP/1.1");
    }
    if h.get(header::HOST).is_none_or(|v| v.is_empty()) {
        return bad("a WebSocket upgrade needs a Host header");
    }
    let upgrade_ws = h
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
        });
    if !upgrade_ws {
        return bad("expected a WebSocket upgrade: Upgrade: websocket");
    }
    if !has_token(h, header::CONNECTION, "upgrade") {
        return bad("a WebSocket upgrade needs Connection: Upgrade");
    }
    let key_ok = h.get_all(header::SEC_WEBSOCKET_KEY).iter().count() == 1
        && h.get(header::SEC_WEBSOCKET_KEY)
            .and_then(|k| base64_decode(k.as_bytes()))
            .is_some_and(|k| k.len() == 16);
    if !key_ok {
        return bad("Sec-WebSocket-Key must be one base64-encoded 16-byte value");
    }
    let version = h.get(header::SEC_WEBSOCKET_VERSION);
    if version.is_none_or(|v| v != "13") {
        // Section 4.4: say which version this server speaks.
        let (status, why) = match version {
            None => (StatusCode::BAD_REQUEST, "Sec-WebSocket-Version is missing"),
            Some(_) => (
                StatusCode::UPGRADE_REQUIRED,
                "unsupported Sec-WebSocket-Version",
            ),
        };
        let mut r = text(status, format!("{why}: this server speaks version 13\n"));
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Some(r);
    }
    None
}

/// Checks the handshake, Origin, drain, connection limits; answers 101 and hands the
/// socket to a session.
fn upgrade(node: Arc<Node>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    if let Some(refusal) = handshake_error(&req) {
        return refusal;
    }
    let h = req.headers();
    let accept = h
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    // A present Origin that is not readable text is not "no Origin": with an allow-list
    // it cannot match, so it is refused.
    if !node.origins.allows_header(h.get(header::ORIGIN)) {
        return text(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    if node.is_draining() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "node is draining\n");
    }
    let xff = h.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    let ip = client_ip(peer.ip(), xff, &node.trusted_proxies);
    let Some(ip_guard) = node.ip_limiter.acquire(ip) else {
        return text(
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections from this address\n",
        );
    };
    let Some(slot) = node.try_connect("ws") else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "node is full\n");
    };
    let offered = h
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let chosen = offered.split(',').find_map(Encoding::from_subprotocol);
    let encoding = chosen.unwrap_or(Encoding::Json);
    let token = query_param(&req, "token")
        .filter(|t| !t.is_empty())
        .or_else(|| bearer(&req));
    let at_connect = session::AtConnect {
        hook: node.connect_request("ws", ip, req.headers(), token.as_deref()),
        since: crate::sse::parse_ws_since(
            &query_param(&req, "since").unwrap_or_default(),
            node.cfg.max_rooms,
        ),
    };
    let at_connect =
        (at_connect.hook.is_some() || !at_connect.since.is_empty()).then(|| Box::new(at_connect));

    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hs = resp.headers_mut();
    hs.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    hs.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        hs.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(e) = chosen {
        hs.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(e.subprotocol()),
        );
    }

    let conn_id = node.new_conn_id();
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(node.cfg.ws_read_buffer.max(64))
        .write_buffer_size(0)
        .max_write_buffer_size(node.cfg.max_message_size * 4 + 1024 * 1024)
        .max_message_size(Some(node.cfg.max_message_size * 4))
        .max_frame_size(Some(node.cfg.max_message_size * 4));
    let n = node.clone();
    let fut = async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        // The socket under `upgraded` is the accepted one, already watched for stalls
        // (--write-timeout, see lib.rs).
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config))
                .await;
        let setup = session::Setup {
            conn_id,
            encoding,
            token,
            slot,
            ip_guard: Some(ip_guard),
            at_connect,
        };
        // The session runs as a task of its own: this one (and what the upgrade needed)
        // ends here, so a connection holds only the session's memory.
        let session = session::start(n.clone(), ws, setup);
        n.tasks.spawn_session(session);
    };
    node.tasks.spawn_session(fut);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_eq_is_equality() {
        assert!(constant_eq(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!constant_eq(b"0123456789abcdef", b"0123456789abcdeX"));
        assert!(!constant_eq(b"0123456789abcdef", b"0123456789abcde"));
        let keys = vec![
            "0123456789abcdef".to_string(),
            "fedcba9876543210".to_string(),
        ];
        assert!(key_matches(&keys, "fedcba9876543210"));
        assert!(!key_matches(&keys, "fedcba987654321"));
        assert!(!key_matches(&[], ""));
    }
}
