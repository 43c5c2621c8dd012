//! HTTP routes of a node: health, readiness and metrics; the WebSocket upgrade (`ws`),
//! the backend API, SSE and the HTTP fallback live in their own modules. What a
//! request asks for is read once ([`Route`]); the shared helpers are in [`util`].

pub mod route;
pub mod util;

pub use route::{Api, Route};
pub use util::{
    base64_decode, bearer, full, json, key_matches, percent_decode, query_param, text, Body,
};

use crate::hub::now_ms;
use crate::node::Node;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

/// Routes one request.
pub async fn route(
    node: Arc<Node>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let admin = crate::admin::serves(&node, &path);
    let resp = match Route::parse(req.method(), &path, admin) {
        Route::Ws => crate::ws::upgrade(node, peer, req),
        Route::Healthz => text(StatusCode::OK, "ok\n"),
        Route::Readyz => {
            if node.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else if node.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "bus unavailable\n")
            }
        }
        Route::Metrics => {
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
        Route::Sse => crate::sse::open(node, peer, req).await,
        Route::Root => text(
            StatusCode::OK,
            format!("roomcast node {} ({} ms)\n", node.node_id, now_ms()),
        ),
        Route::Admin => crate::admin::route(node, peer, req).await,
        Route::Demo => match crate::demo::serve(&path, req.uri().query()) {
            Some(r) => r,
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
        Route::Api(api) => crate::api::route(node, peer, api, req).await,
        Route::NotFound => crate::api::not_found(&path),
    };
    Ok(resp)
}
