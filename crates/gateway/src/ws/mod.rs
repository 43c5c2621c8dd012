//! The WebSocket transport: the upgrade at `/ws` (the opening handshake of RFC 6455
//! section 4, admission, the subprotocol), then a session ([`session`]) around the
//! connection core, ending with the closing handshake ([`close`]).

mod close;
pub mod session;

pub use session::{AtConnect, Setup};

use crate::conn::{self, Conn};
use crate::http::util::{base64_decode, bearer, full, query_param, text, Body};
use crate::hub::{Express, Payload};
use crate::node::Node;
use crate::socket::{Lane, Sent};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use roomcast_protocol::Encoding;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

/// Whether a header holds `token` in its comma-separated list (case-insensitive), as
/// `Connection: keep-alive, Upgrade` does.
fn has_token(h: &hyper::HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
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
pub fn upgrade(node: Arc<Node>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    if let Some(refusal) = handshake_error(&req) {
        return refusal;
    }
    let h = req.headers();
    let accept = h
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    if let Err(refused) = conn::gate(&node, h) {
        return refused.response();
    }
    let ip = conn::client_addr(&node, peer, h);
    let admission = match conn::admit(&node, ip, "ws") {
        Ok(a) => a,
        Err(refused) => return refused.response(),
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
    let at_connect = AtConnect {
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

    let conn = Conn::open(node.clone(), node.new_conn_id(), encoding.into(), admission);
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(node.cfg.ws_read_buffer.max(64))
        .write_buffer_size(0)
        .max_write_buffer_size(node.cfg.max_message_size * 4 + 1024 * 1024)
        .max_message_size(Some(node.cfg.max_message_size * 4))
        .max_frame_size(Some(node.cfg.max_message_size * 4));
    // The accepted socket, for express writes once the session runs (lib.rs puts it on
    // every request).
    let lane = req
        .extensions()
        .get::<Arc<Lane>>()
        .filter(|_| node.cfg.express_writes)
        .cloned();
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
        if let Some(lane) = lane {
            conn.mailbox.attach(lane);
        }
        let setup = Setup {
            conn,
            encoding,
            token,
            at_connect,
        };
        // The session runs as a task of its own: this one (and what the upgrade needed)
        // ends here, so a connection holds only the session's memory.
        n.tasks.spawn_session(session::start(ws, setup));
    };
    node.tasks.spawn_session(fut);
    resp
}

/// A server frame's header (RFC 6455 section 5.2: FIN, the opcode, the payload length,
/// no mask) in `buf`; returns its length.
fn frame_header(opcode: u8, len: usize, buf: &mut [u8; 10]) -> usize {
    buf[0] = 0x80 | opcode;
    if len < 126 {
        buf[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        buf[1] = 126;
        buf[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        buf[1] = 127;
        buf[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// Express writes to a WebSocket: the frame's header and the shared payload, in one
/// `writev`, straight from the fan-out.
impl Express for Lane {
    fn send(&self, payload: &Payload) -> Sent {
        let (opcode, bytes): (u8, &[u8]) = match payload {
            Payload::Text(t) => (0x1, t.as_bytes()),
            Payload::Binary(b) => (0x2, b),
        };
        let mut head = [0u8; 10];
        let n = frame_header(opcode, bytes.len(), &mut head);
        self.try_send(&[&head[..n], bytes])
    }

    fn defer(&self, rest: &[&[u8]]) {
        Lane::defer(self, rest)
    }
}

#[cfg(test)]
mod tests {
    use super::frame_header;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;

    /// The express header is the one tungstenite writes for the same message, at each of
    /// the three length encodings.
    #[test]
    fn express_headers_match_tungstenite() {
        for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            for binary in [false, true] {
                let payload = vec![b'a'; len];
                let data = if binary { Data::Binary } else { Data::Text };
                let frame = Frame::message(payload.clone(), OpCode::Data(data), true);
                let mut want = Vec::new();
                frame.format(&mut want).expect("format");
                let mut head = [0u8; 10];
                let n = frame_header(if binary { 2 } else { 1 }, len, &mut head);
                let mut got = head[..n].to_vec();
                got.extend_from_slice(&payload);
                assert_eq!(got, want, "len {len} binary {binary}");
            }
        }
    }
}
