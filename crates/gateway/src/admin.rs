//! The admin page at `/admin` (docs/operations.md, Admin page): absent (404) unless
//! `--admin-key` is set. The page is static (admin.html, admin.js, admin.css compiled
//! into the binary); it asks for the key, keeps it in the tab's sessionStorage and sends
//! it as `Authorization: Bearer` to the JSON endpoints under `/admin/api/`:
//!
//! - `GET /admin/api/nodes`: every node's last heartbeat (see `heartbeat.rs`);
//! - `GET /admin/api/rooms`: the busiest rooms of the cluster, from those heartbeats;
//! - `GET /admin/api/room?name=<room>`: a room's presence and last messages;
//! - `POST /admin/api/disconnect` `{"user": ...}`: closes every connection of a user on
//!   every node.
//!
//! The key is never read from the URL and never logged; it is compared in constant time.

use crate::http::util::{bearer, full, json, key_matches, query_param, text, Body};
use crate::node::Node;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use roomcast_protocol::{close, RoomName, UserId};
use roomcast_redis_bridge::{BusError, HistoryQuery, NodeStats};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

const HTML: &[u8] = include_bytes!("admin.html");
const JS: &[u8] = include_bytes!("admin.js");
const CSS: &[u8] = include_bytes!("admin.css");

/// Rooms listed by each ordering of `/admin/api/rooms`.
const BUSIEST: usize = 20;
/// Members a room lookup lists.
const PRESENCE_LIMIT: usize = 100;
/// Messages a room lookup shows.
const HISTORY_LIMIT: usize = 20;
/// Largest body of `POST /admin/api/disconnect`.
const BODY_LIMIT: usize = 4096;

/// What the page may load and do: its own files, its own API, nothing else, and no
/// framing by other sites.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// An admin API failure: status, error code, message.
struct AdminError(StatusCode, &'static str, String);

impl AdminError {
    fn bad(msg: impl Into<String>) -> Self {
        AdminError(StatusCode::BAD_REQUEST, "invalid_message", msg.into())
    }

    fn response(self) -> Response<Body> {
        let mut r = json(
            self.0,
            &json!({"error": {"code": self.1, "message": self.2}}),
        );
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"roomcast admin\""),
            );
        }
        r
    }
}

impl From<BusError> for AdminError {
    fn from(e: BusError) -> Self {
        match e {
            BusError::Unavailable(m) => {
                AdminError(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
            }
            BusError::Internal(m) => AdminError(StatusCode::INTERNAL_SERVER_ERROR, "internal", m),
        }
    }
}

/// Whether `/admin` is on (`--admin-key` set) and `path` is under it; when it is off,
/// its paths are unknown paths like any other (404).
pub fn serves(node: &Node, path: &str) -> bool {
    (path == "/admin" || path.starts_with("/admin/")) && !node.cfg.admin_key_list().is_empty()
}

/// Answers a request under `/admin` (404 when the admin page is disabled).
pub async fn route(node: Arc<Node>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let keys = node.cfg.admin_key_list();
    if keys.is_empty() {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    let path = req.uri().path().to_string();
    let mut resp = match (req.method(), path.as_str()) {
        (&Method::GET, "/admin") => {
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
            r.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/admin/"));
            r
        }
        (&Method::GET, "/admin/" | "/admin/index.html") => asset(HTML, "text/html; charset=utf-8"),
        (&Method::GET, "/admin/admin.js") => asset(JS, "text/javascript; charset=utf-8"),
        (&Method::GET, "/admin/admin.css") => asset(CSS, "text/css; charset=utf-8"),
        (_, p) if p.starts_with("/admin/api/") => {
            let xff = req
                .headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok());
            let ip = crate::limits::client_ip(peer.ip(), xff, &node.trusted_proxies);
            // As for /api: a bounded number of requests in progress per client address.
            match node
                .ip_limiter
                .acquire_request(ip, node.cfg.max_http_per_ip)
            {
                None => AdminError(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many requests in progress from this address".into(),
                )
                .response(),
                Some(_slot) => match authorize(&keys, &req) {
                    Err(e) => e.response(),
                    Ok(()) => api(&node, req).await.unwrap_or_else(AdminError::response),
                },
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

fn asset(body: &'static [u8], ctype: &'static str) -> Response<Body> {
    let mut r = Response::new(full(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

/// Checks the bearer key against every admin key, each compared in full, so that the
/// time taken does not tell how much of a key matched.
fn authorize(keys: &[String], req: &Request<Incoming>) -> Result<(), AdminError> {
    let unauthorized = |m: &str| AdminError(StatusCode::UNAUTHORIZED, "unauthorized", m.into());
    let Some(given) = bearer(req) else {
        return Err(unauthorized(
            "Authorization: Bearer <admin key> is required",
        ));
    };
    if key_matches(keys, &given) {
        Ok(())
    } else {
        Err(unauthorized("wrong admin key"))
    }
}

async fn api(node: &Node, req: Request<Incoming>) -> Result<Response<Body>, AdminError> {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/admin/api/nodes") => {
            let nodes = node.bus.nodes().await?;
            Ok(json(
                StatusCode::OK,
                &json!({"self": node.node_id, "now_ms": crate::hub::now_ms(), "nodes": nodes}),
            ))
        }
        (Method::GET, "/admin/api/rooms") => {
            let nodes = node.bus.nodes().await?;
            Ok(json(StatusCode::OK, &busiest(&nodes)))
        }
        (Method::GET, "/admin/api/room") => {
            let name = query_param(&req, "name")
                .ok_or_else(|| AdminError::bad("name: missing; expected a room name"))?;
            let room = RoomName::new(&name).map_err(|e| AdminError::bad(format!("name: {e}")))?;
            let presence = node.bus.presence(&room, PRESENCE_LIMIT).await?;
            let history = node
                .bus
                .history(
                    &room,
                    HistoryQuery {
                        since: None,
                        limit: HISTORY_LIMIT,
                    },
                )
                .await?;
            Ok(json(
                StatusCode::OK,
                &json!({
                    "room": room,
                    "members": presence.members,
                    "count": presence.count,
                    "epoch": history.epoch,
                    "offset": history.offset,
                    "messages": history.messages,
                }),
            ))
        }
        (Method::POST, "/admin/api/disconnect") => {
            let body = read_body(node, req).await?;
            let v: Value = serde_json::from_slice(&body)
                .map_err(|e| AdminError::bad(format!("body is not JSON: {e}")))?;
            let user = v
                .get("user")
                .and_then(Value::as_str)
                .ok_or_else(|| AdminError::bad("user: missing; expected a user id (a string)"))?;
            let user = UserId::new(user).map_err(|e| AdminError::bad(format!("user: {e}")))?;
            node.bus
                .disconnect_user(&user, close::INVALID_TOKEN)
                .await?;
            tracing::info!(%user, "admin: user disconnected on every node");
            Ok(json(StatusCode::OK, &json!({"user": user})))
        }
        (_, "/admin/api/nodes" | "/admin/api/rooms" | "/admin/api/room") => Err(AdminError(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET".into(),
        )),
        (_, "/admin/api/disconnect") => Err(AdminError(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use POST".into(),
        )),
        _ => Err(AdminError(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route {path}"),
        )),
    }
}

async fn read_body(node: &Node, req: Request<Incoming>) -> Result<Bytes, AdminError> {
    let timeout = node.cfg.http_body_timeout;
    let read = tokio::time::timeout(timeout, Limited::new(req.into_body(), BODY_LIMIT).collect());
    match read.await {
        Err(_) => Err(AdminError(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "the body did not arrive in time".into(),
        )),
        Ok(Err(e)) => Err(AdminError(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("cannot read the body (at most {BODY_LIMIT} bytes): {e}"),
        )),
        Ok(Ok(b)) => Ok(b.to_bytes()),
    }
}

/// The cluster's busiest rooms from the nodes' heartbeats: members add up over nodes;
/// messages/s is the most any node saw (each node sees a room's messages once).
fn busiest(nodes: &[NodeStats]) -> Value {
    #[derive(Default)]
    struct Agg {
        members: u64,
        rate: f64,
        nodes: u64,
    }
    let mut rooms: HashMap<&RoomName, Agg> = HashMap::new();
    for n in nodes {
        for r in &n.top_rooms {
            let a = rooms.entry(&r.room).or_default();
            a.members += r.members;
            a.rate = a.rate.max(r.messages_per_sec);
            a.nodes += u64::from(r.members > 0);
        }
    }
    let mut list: Vec<(&RoomName, Agg)> = rooms.into_iter().collect();
    let row = |(room, a): &(&RoomName, Agg)| json!({"room": room, "members": a.members, "messages_per_sec": a.rate, "nodes": a.nodes});
    list.sort_by(|x, y| {
        y.1.members
            .cmp(&x.1.members)
            .then_with(|| y.1.rate.total_cmp(&x.1.rate))
            .then_with(|| x.0.cmp(y.0))
    });
    let by_members: Vec<Value> = list.iter().take(BUSIEST).map(row).collect();
    list.sort_by(|x, y| {
        y.1.rate
            .total_cmp(&x.1.rate)
            .then_with(|| y.1.members.cmp(&x.1.members))
            .then_with(|| x.0.cmp(y.0))
    });
    let by_messages: Vec<Value> = list
        .iter()
        .filter(|(_, a)| a.rate > 0.0)
        .take(BUSIEST)
        .map(row)
        .collect();
    json!({"by_members": by_members, "by_messages": by_messages})
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_redis_bridge::RoomStats;

    #[test]
    fn busiest_adds_members_and_takes_the_highest_rate() {
        let room = |s: &str| RoomName::new(s).expect("room");
        let node = |rooms: Vec<(&str, u64, f64)>| NodeStats {
            top_rooms: rooms
                .into_iter()
                .map(|(r, members, rate)| RoomStats {
                    room: room(r),
                    members,
                    messages_per_sec: rate,
                })
                .collect(),
            ..NodeStats::default()
        };
        let v = busiest(&[
            node(vec![("a", 2, 1.0), ("b", 5, 0.0)]),
            node(vec![("a", 4, 3.0), ("c", 0, 9.0)]),
        ]);
        assert_eq!(v["by_members"][0]["room"], "a");
        assert_eq!(v["by_members"][0]["members"], 6);
        assert_eq!(v["by_members"][0]["nodes"], 2);
        assert_eq!(v["by_members"][0]["messages_per_sec"], 3.0);
        assert_eq!(v["by_members"][1]["room"], "b");
        assert_eq!(v["by_messages"][0]["room"], "c");
        assert_eq!(
            v["by_messages"].as_array().map(Vec::len),
            Some(2),
            "no idle rooms by rate"
        );
    }
}
