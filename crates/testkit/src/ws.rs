//! A real WebSocket client speaking one encoding (JSON text or MessagePack binary), with
//! the request/reply helpers the suites share.

use futures_util::{SinkExt, StreamExt};
use roomcast_protocol::{Encoding, ServerMessage};
use serde_json::{json, Value};
use std::collections::VecDeque;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::WAIT;

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
        let r = self.join_reply(room, &format!("join-{room}")).await;
        assert!(
            matches!(r, ServerMessage::Joined { .. }),
            "join failed: {r:?}"
        );
        r
    }

    /// Publishes `data` as event `e` to `room` with request id `id` and returns the reply,
    /// whatever it is.
    pub async fn publish(&mut self, room: &str, data: Value, id: &str) -> ServerMessage {
        self.request(
            json!({"type": "publish", "room": room, "event": "e", "data": data}),
            id,
        )
        .await
    }

    /// Publishes `data` as event `e` to `room` with request id `id` and returns the
    /// acknowledged offset (`None` for a volatile publish); panics on anything but an ack.
    pub async fn publish_acked(&mut self, room: &str, data: Value, id: &str) -> Option<u64> {
        match self.publish(room, data, id).await {
            ServerMessage::Ack { offset, .. } => offset,
            other => panic!("publish to {room} not acknowledged: {other:?}"),
        }
    }

    /// Sends any request (`publish` with other fields, `send`) with `id` and returns the
    /// acknowledged offset; panics on anything but an ack.
    pub async fn acked(&mut self, v: Value, id: &str) -> Option<u64> {
        match self.request(v, id).await {
            ServerMessage::Ack { offset, .. } => offset,
            other => panic!("request {id} not acknowledged: {other:?}"),
        }
    }

    /// Publishes the numbers `offsets` one after the other (each number is the data and
    /// the request id), asserting that each is acknowledged with itself as its offset.
    pub async fn publish_numbered(&mut self, room: &str, offsets: std::ops::RangeInclusive<u64>) {
        for i in offsets {
            assert_eq!(
                self.publish_acked(room, json!(i), &i.to_string()).await,
                Some(i),
                "publish {i} to {room}"
            );
        }
    }

    /// Sends a plain `join` of `room` with `id` and returns the reply, whatever it is.
    pub async fn join_reply(&mut self, room: &str, id: &str) -> ServerMessage {
        self.request(json!({"type": "join", "room": room}), id)
            .await
    }

    /// Joins `room` asking to recover from `offset` in `epoch`; returns the reply.
    pub async fn join_since(
        &mut self,
        room: &str,
        offset: u64,
        epoch: &str,
        id: &str,
    ) -> ServerMessage {
        self.request(
            json!({"type": "join", "room": room, "since": {"offset": offset, "epoch": epoch}}),
            id,
        )
        .await
    }

    /// Asks for `room`'s presence; returns the reply.
    pub async fn presence(&mut self, room: &str, id: &str) -> ServerMessage {
        self.request(json!({"type": "presence", "room": room}), id)
            .await
    }

    /// Whether a ping with `id` is answered with a pong.
    pub async fn pongs(&mut self, id: &str) -> bool {
        matches!(
            self.request(json!({"type": "ping"}), id).await,
            ServerMessage::Pong { .. }
        )
    }

    /// The next room message (others are kept for later).
    pub async fn next_message(&mut self) -> roomcast_protocol::Publication {
        publication(&self.recv_match(is_message).await).clone()
    }

    /// The next `n` room messages (others are kept for later).
    pub async fn publications(&mut self, n: usize) -> Vec<roomcast_protocol::Publication> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next_message().await);
        }
        out
    }

    /// The next `n` durable room messages as (offset, from, data).
    pub async fn messages(&mut self, n: usize) -> Vec<(u64, String, Value)> {
        self.publications(n)
            .await
            .into_iter()
            .map(|p| {
                (
                    p.offset.expect("durable message has an offset"),
                    p.from.to_string(),
                    p.data,
                )
            })
            .collect()
    }

    /// The offsets of the next `n` durable room messages.
    pub async fn offsets(&mut self, n: usize) -> Vec<u64> {
        self.messages(n).await.into_iter().map(|m| m.0).collect()
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

/// Whether `m` is a room message.
pub fn is_message(m: &ServerMessage) -> bool {
    matches!(m, ServerMessage::Message(_))
}

/// Whether `m` is a direct message.
pub fn is_direct(m: &ServerMessage) -> bool {
    matches!(m, ServerMessage::Direct(_))
}

/// Whether `m` is an error.
pub fn is_error(m: &ServerMessage) -> bool {
    matches!(m, ServerMessage::Error { .. })
}

/// Whether `m` is a member event (`member_joined` or `member_left`).
pub fn is_member_event(m: &ServerMessage) -> bool {
    matches!(
        m,
        ServerMessage::MemberJoined { .. } | ServerMessage::MemberLeft { .. }
    )
}

/// The epoch of a `joined` reply, or panic.
pub fn epoch_of(j: &ServerMessage) -> String {
    match j {
        ServerMessage::Joined { epoch, .. } => epoch.clone(),
        other => panic!("expected joined, got {other:?}"),
    }
}

/// The code of an error reply, or panic.
pub fn err_code(m: &ServerMessage) -> roomcast_protocol::ErrorCode {
    match m {
        ServerMessage::Error { code, .. } => *code,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// The (recovered, offsets of the replayed messages) of a `joined` reply, or panic.
pub fn replayed(j: &ServerMessage) -> (bool, Vec<u64>) {
    match j {
        ServerMessage::Joined {
            recovered,
            messages,
            ..
        } => (
            *recovered,
            messages.iter().filter_map(|m| m.offset).collect(),
        ),
        other => panic!("expected joined, got {other:?}"),
    }
}
