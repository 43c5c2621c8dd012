//! Admission: whether a node takes a new connection, the same for a WebSocket upgrade and
//! an SSE stream. The refusals are HTTP answers, as both transports start with a request.

use crate::limits::{client_ip, IpGuard};
use crate::node::{ConnSlot, Node};
use hyper::header::{self, HeaderMap};
use hyper::StatusCode;
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
