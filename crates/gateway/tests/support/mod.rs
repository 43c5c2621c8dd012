//! Test support: nodes started in-process on port 0 and real WebSocket clients.
#![allow(dead_code, unreachable_pub)]

use futures_util::{SinkExt, StreamExt};
use roomcast_gateway::config::Config;
use roomcast_protocol::{Encoding, ServerMessage};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// How long any awaited event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub const SECRET: &str = "test-secret";

/// A node running in this process.
pub struct TestNode {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<Result<(), roomcast_gateway::RunError>>,
}

impl TestNode {
    /// Starts a node with these flags (plus `--listen 127.0.0.1:0`).
    pub async fn start(args: &[&str]) -> TestNode {
        let cfg = Config::from_args(args.iter().copied()).expect("valid config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(roomcast_gateway::run(listener, cfg, shutdown.clone()));
        TestNode {
            addr,
            shutdown,
            handle,
        }
    }

    /// A standalone node without auth.
    pub async fn open() -> TestNode {
        Self::start(&["--auth", "none"]).await
    }

    /// A standalone node with HS256 auth.
    pub async fn jwt(extra: &[&str]) -> TestNode {
        let mut args = vec!["--jwt-secret", SECRET];
        args.extend_from_slice(extra);
        Self::start(&args).await
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops the node and waits for it to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(WAIT, self.handle).await;
    }
}

/// A signed HS256 token for `sub` with extra claims.
pub fn token(sub: &str, extra: Value) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = json!({"sub": sub, "exp": now + 600});
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode token")
}

/// A real WebSocket client speaking one encoding.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub enc: Encoding,
    /// Messages received while waiting for something else.
    pub backlog: VecDeque<ServerMessage>,
}

/// How a client's connection ended.
#[derive(Debug, PartialEq)]
pub enum Closed {
    Code(u16),
    NoFrame,
}

impl Client {
    /// Connects with JSON and no token.
    pub async fn connect(url: &str) -> Client {
        Self::connect_with(url, Encoding::Json, &[])
            .await
            .expect("connect")
    }

    /// Connects, offering the encoding's subprotocol, with extra headers.
    pub async fn connect_with(
        url: &str,
        enc: Encoding,
        headers: &[(&str, &str)],
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let mut req = url.into_client_request()?;
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(enc.subprotocol()),
        );
        for (k, v) in headers {
            let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                .expect("header name");
            req.headers_mut()
                .insert(name, HeaderValue::from_str(v).expect("header value"));
        }
        let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect in time")?;
        let proto = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok());
        assert_eq!(
            proto,
            Some(enc.subprotocol()),
            "server picks the offered subprotocol"
        );
        Ok(Client {
            ws,
            enc,
            backlog: VecDeque::new(),
        })
    }

    /// Connects and waits for `welcome`; returns the client and the welcome.
    pub async fn welcomed(url: &str, enc: Encoding) -> (Client, ServerMessage) {
        let mut c = Self::connect_with(url, enc, &[]).await.expect("connect");
        let w = c.recv().await;
        assert!(
            matches!(w, ServerMessage::Welcome { .. }),
            "expected welcome, got {w:?}"
        );
        (c, w)
    }

    /// Sends a JSON value in this client's encoding.
    pub async fn send(&mut self, v: Value) {
        let msg = match self.enc {
            Encoding::Json => Message::Text(v.to_string().into()),
            Encoding::MsgPack => {
                Message::Binary(rmp_serde::to_vec_named(&v).expect("msgpack").into())
            }
        };
        self.ws.send(msg).await.expect("send");
    }

    /// Sends a raw frame.
    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send raw");
    }

    async fn next_frame(&mut self) -> Option<Result<ServerMessage, Closed>> {
        loop {
            let f = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time");
            match f {
                None | Some(Err(_)) => return Some(Err(Closed::NoFrame)),
                Some(Ok(Message::Close(c))) => {
                    return Some(Err(c
                        .map(|c| Closed::Code(c.code.into()))
                        .unwrap_or(Closed::NoFrame)))
                }
                Some(Ok(Message::Text(t))) => {
                    assert_eq!(self.enc, Encoding::Json, "text frame on msgpack");
                    return Some(Ok(Encoding::Json
                        .decode_server(t.as_bytes())
                        .expect("valid server message")));
                }
                Some(Ok(Message::Binary(b))) => {
                    assert_eq!(self.enc, Encoding::MsgPack, "binary frame on json");
                    return Some(Ok(Encoding::MsgPack
                        .decode_server(&b)
                        .expect("valid server message")));
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next message (from the backlog first); panics on close.
    pub async fn recv(&mut self) -> ServerMessage {
        if let Some(m) = self.backlog.pop_front() {
            return m;
        }
        match self.next_frame().await {
            Some(Ok(m)) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Waits for the first message matching `pred`, keeping the others for later.
    pub async fn recv_match(&mut self, pred: impl Fn(&ServerMessage) -> bool) -> ServerMessage {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i).expect("present");
        }
        loop {
            match self.next_frame().await {
                Some(Ok(m)) if pred(&m) => return m,
                Some(Ok(m)) => self.backlog.push_back(m),
                other => panic!(
                    "expected a matching message, got {other:?}; backlog {:?}",
                    self.backlog
                ),
            }
        }
    }

    /// Sends a request with `id` and waits for the reply carrying that id.
    pub async fn request(&mut self, mut v: Value, id: &str) -> ServerMessage {
        v["id"] = json!(id);
        self.send(v).await;
        let want = roomcast_protocol::ReqId::Str(id.to_string());
        self.recv_match(|m| reply_id(m) == Some(&want)).await
    }

    /// Joins a room and returns the `joined` reply.
    pub async fn join(&mut self, room: &str) -> ServerMessage {
        let r = self
            .request(
                json!({"type": "join", "room": room}),
                &format!("join-{room}"),
            )
            .await;
        assert!(
            matches!(r, ServerMessage::Joined { .. }),
            "join failed: {r:?}"
        );
        r
    }

    /// Reads until the connection closes; returns how.
    pub async fn closed(&mut self) -> Closed {
        loop {
            match self.next_frame().await {
                Some(Ok(_)) => continue,
                Some(Err(c)) => return c,
                None => return Closed::NoFrame,
            }
        }
    }
}

/// The request id a reply carries.
pub fn reply_id(m: &ServerMessage) -> Option<&roomcast_protocol::ReqId> {
    match m {
        ServerMessage::Welcome { id, .. }
        | ServerMessage::AuthOk { id, .. }
        | ServerMessage::Joined { id, .. }
        | ServerMessage::Left { id, .. }
        | ServerMessage::Presence { id, .. }
        | ServerMessage::Pong { id }
        | ServerMessage::Error { id, .. } => id.as_ref(),
        ServerMessage::Ack { id, .. } => Some(id),
        _ => None,
    }
}

/// A room message's fields, or panic.
pub fn publication(m: &ServerMessage) -> &roomcast_protocol::Publication {
    match m {
        ServerMessage::Message(p) => p,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Minimal HTTP/1.1 request over a plain TCP socket: (status, headers+body text).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The body of an HTTP response text (after the blank line), de-chunked when needed.
pub fn body_of(resp: &str) -> String {
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((resp, ""));
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}
