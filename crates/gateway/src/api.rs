//! The backend API (PROTOCOL.md §5).

use crate::http::{json, Body};
use crate::node::Node;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;

/// Routes `/api/*`; anything else is 404.
pub async fn route(_node: Arc<Node>, _peer: SocketAddr, _req: Request<Incoming>) -> Response<Body> {
    json(
        StatusCode::NOT_FOUND,
        &serde_json::json!({"error": {"code": "not_found", "message": "no such route"}}),
    )
}
