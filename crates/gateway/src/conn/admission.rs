//! Admission: whether a node takes a new connection, the same for a WebSocket upgrade and
//! an SSE stream, and who a plain HTTP client is (SSE and the HTTP fallback). The
//! refusals are HTTP answers, as these transports start with a request.

use crate::auth::Identity;
use crate::http::util::{bearer, query_param, text, Body};
use crate::limits::{client_ip, IpGuard};
use crate::node::{ConnSlot, Node};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};
use hyper::{Request, Response, StatusCode};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Why a node refuses a new connection (before the upgrade or the stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The Origin is not on `--allowed-origins` (a present Origin that is not readable
    /// text cannot match an allow-list either).
    #[error("origin not allowed")]
    Origin,
    /// The node is draining.
    #[error("node is draining")]
    Draining,
    /// The client's address holds `--max-connections-per-ip`.
    #[error("too many connections from this address")]
    TooManyFromAddress,
    /// The node holds `--max-connections`.
    #[error("node is full")]
    Full,
}

impl Refused {
    /// The HTTP status of the refusal.
    pub fn status(self) -> StatusCode {
        match self {
            Refused::Origin => StatusCode::FORBIDDEN,
            Refused::Draining | Refused::Full => StatusCode::SERVICE_UNAVAILABLE,
            Refused::TooManyFromAddress => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The refusal as a plain-text answer.
    pub fn response(self) -> hyper::Response<crate::http::Body> {
        crate::http::text(self.status(), format!("{self}\n"))
    }
}

/// The first gate, before anything of the request is parsed: Origin, then drain.
pub fn gate(node: &Node, headers: &HeaderMap) -> Result<(), Refused> {
    if !node.origins.allows_header(headers.get(header::ORIGIN)) {
        return Err(Refused::Origin);
    }
    if node.is_draining() {
        return Err(Refused::Draining);
    }
    Ok(())
}

/// The client's address: the peer, or what `X-Forwarded-For` says when the peer is a
/// trusted proxy.
pub fn client_addr(node: &Node, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    let xff = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    client_ip(peer.ip(), xff, &node.trusted_proxies)
}

/// A connection's places in the counts (its address's and the node's), released when it
/// is dropped.
pub struct Admission {
    /// The connection's slot in the node count.
    pub slot: ConnSlot,
    /// The connection's slot in its address's count.
    pub ip_guard: IpGuard,
}

/// Takes a place for a connection from `ip` (`transport`: `ws` or `sse`, the label of
/// the connection metrics).
pub fn admit(node: &Arc<Node>, ip: IpAddr, transport: &'static str) -> Result<Admission, Refused> {
    let ip_guard = node
        .ip_limiter
        .acquire(ip)
        .ok_or(Refused::TooManyFromAddress)?;
    let slot = node.try_connect(transport).ok_or(Refused::Full)?;
    Ok(Admission { slot, ip_guard })
}

/// The identity of an HTTP client: its JWT (query `token` or Authorization), the connect
/// hook's answer (a request without a token, or any with `--auth hook`: cookies and the
/// forwarded headers go to the hook), or with `--auth none` the `user` query parameter or
/// a fresh id. `transport` is `sse` or `http`.
#[allow(clippy::result_large_err)] // the error is the response itself, built once per refused request
pub async fn http_identity(
    node: &Node,
    peer: SocketAddr,
    transport: &'static str,
    req: &Request<Incoming>,
) -> Result<Identity, Response<Body>> {
    if !node.auth.enabled() {
        let user = query_param(req, "user")
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| node.new_conn_id().to_string());
        return node
            .auth
            .anonymous(&user)
            .ok_or_else(|| text(StatusCode::BAD_REQUEST, "invalid user\n"));
    }
    let token = query_param(req, "token")
        .filter(|t| !t.is_empty())
        .or_else(|| bearer(req));
    let xff = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let ip = client_ip(peer.ip(), xff, &node.trusted_proxies);
    if let (Some(hook_req), Some(hooks)) = (
        node.connect_request(transport, ip, req.headers(), token.as_deref()),
        node.hooks.as_ref(),
    ) {
        return match hooks.connect(&hook_req).await {
            Ok(crate::hooks::ConnectDecision::Allow(mut who)) => {
                who.join = node.server_rooms(&who);
                Ok(who)
            }
            Ok(crate::hooks::ConnectDecision::Deny { code, .. }) => {
                node.metrics
                    .auth_failures
                    .with_label_values(&["hook_denied"])
                    .inc();
                let status = if code == roomcast_protocol::close::POLICY {
                    StatusCode::FORBIDDEN
                } else {
                    StatusCode::UNAUTHORIZED
                };
                Err(text(status, "refused by the connect hook\n"))
            }
            Err(e) => Err(text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))),
        };
    }
    let Some(token) = token else {
        return Err(text(
            StatusCode::UNAUTHORIZED,
            "a token is required (token query parameter or Authorization: Bearer)\n",
        ));
    };
    node.auth
        .verify_token(&token)
        .await
        .map(|mut who| {
            who.join = node.server_rooms(&who);
            who
        })
        .map_err(|e| {
            node.metrics
                .auth_failures
                .with_label_values(&[e.reason()])
                .inc();
            text(StatusCode::UNAUTHORIZED, format!("{e}\n"))
        })
}
