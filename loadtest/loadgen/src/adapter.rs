//! One connection to a target, in its own protocol: roomcast (docs/protocol.md, through
//! the protocol crate), the `ws` + `ioredis` peer (plain JSON), Socket.IO 4
//! (Engine.IO v4 text frames over a raw WebSocket, hand-rolled), or sockudo (the Pusher
//! protocol 7: private channels authorized with the app secret, client events).

use crate::sys::Target as Addr;
use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use roomcast_protocol::{ClientMessage, Encoding, EventName, ReqId, RoomName, ServerMessage};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::Sha256;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Which server the generator speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Roomcast,
    Wsredis,
    Socketio,
    Sockudo,
}

/// The payload every benchmark message carries in `data`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payload {
    /// Send time, microseconds since the Unix epoch.
    pub t: u64,
    /// Publisher index.
    pub p: u32,
    /// Sequence of this publisher in this room, from 1.
    pub s: u64,
    /// Padding, to reach a payload size.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub x: String,
}

/// What arrived, reduced to what the modes count.
#[derive(Debug)]
pub enum Incoming {
    Delivery {
        offset: Option<u64>,
        payload: Option<Payload>,
    },
    Ack {
        id: i64,
        offset: Option<u64>,
    },
    Error {
        id: Option<i64>,
        msg: String,
    },
    Closed(String),
    Other,
}

/// Connection settings shared by every connection of a run.
#[derive(Clone)]
pub struct Settings {
    pub kind: Kind,
    pub encoding: Encoding,
    pub token: Option<std::sync::Arc<dyn Fn() -> String + Send + Sync>>,
    pub sources: u8,
    pub timeout: Duration,
    /// Sockudo: the app's key (in the URL) and secret (to sign channel subscriptions).
    pub pusher: PusherApp,
    /// Roomcast: whether joins ask for member events (`member_events` of `join`).
    pub member_events: bool,
}

/// A Pusher app's credentials, as configured on the sockudo nodes.
#[derive(Clone, Default)]
pub struct PusherApp {
    pub key: String,
    pub secret: String,
}

impl PusherApp {
    /// `<key>:<hex HMAC-SHA256(secret, "<socket_id>:<channel>")>`, the private-channel
    /// auth an app server would hand out.
    fn auth(&self, socket_id: &str, channel: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.secret.as_bytes())
            .expect("HMAC takes keys of any size");
        mac.update(socket_id.as_bytes());
        mac.update(b":");
        mac.update(channel.as_bytes());
        let mut out = String::with_capacity(self.key.len() + 65);
        out.push_str(&self.key);
        out.push(':');
        for b in mac.finalize().into_bytes() {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
        out
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A Pusher protocol frame: `{"event": ..., "channel": ..., "data": ...}`. `data` is a
/// JSON string for the `pusher:` events and whatever the publisher sent for client events;
/// kept raw, decoded once its event is known.
#[derive(Deserialize)]
struct PusherFrame<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    channel: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

impl PusherFrame<'_> {
    /// A client event's payload: the object the publisher sent (or JSON in a string).
    fn payload(&self) -> Option<Payload> {
        let d = self.data?.get();
        if d.starts_with('"') {
            serde_json::from_str(&serde_json::from_str::<String>(d).ok()?).ok()
        } else {
            serde_json::from_str(d).ok()
        }
    }

    /// The `data` of a `pusher:` event, which is JSON in a string (or an object).
    fn object(&self) -> serde_json::Value {
        let Some(d) = self.data.map(RawValue::get) else {
            return serde_json::Value::Null;
        };
        match serde_json::from_str::<serde_json::Value>(d) {
            Ok(serde_json::Value::String(t)) => {
                serde_json::from_str(&t).unwrap_or(serde_json::Value::String(t))
            }
            Ok(v) => v,
            Err(_) => serde_json::Value::Null,
        }
    }
}

fn pusher_channel(room: &str) -> String {
    format!("private-{room}")
}

const PUSHER_PONG: &str = r#"{"event":"pusher:pong","data":{}}"#;

pub struct Conn {
    ws: WebSocketStream<TcpStream>,
    kind: Kind,
    enc: Encoding,
    sio_ack: u64,
    /// Sockudo: this connection's socket id, from `pusher:connection_established`.
    socket_id: String,
    pusher: PusherApp,
    /// When the last frame `recv` returned came off the socket (µs since the epoch):
    /// latency is measured to here, not to the end of this generator's decoding.
    arrived_us: u64,
    /// Roomcast: whether joins ask for member events.
    member_events: bool,
}

pub(crate) fn ws_config() -> WebSocketConfig {
    // A generator holding 20k sockets cannot afford tungstenite's 128 KiB default read
    // buffer per connection; messages here are small.
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(4 * 1024 * 1024)
}

/// TCP connect from 127.0.0.<1 + idx % sources>, so that many sources share the load
/// of the per-address ephemeral port range (all in one /24: nginx's ip_hash sends them to
/// one node).
pub(crate) async fn tcp(addr: SocketAddr, idx: usize, sources: u8) -> Result<TcpStream> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let (IpAddr::V4(_), true) = (addr.ip(), sources > 0) {
        let src = Ipv4Addr::new(127, 0, 0, 1 + (idx % sources as usize) as u8);
        sock.bind(SocketAddr::new(IpAddr::V4(src), 0))
            .with_context(|| format!("bind {src}"))?;
    }
    let s = sock.connect(addr).await.context("tcp connect")?;
    s.set_nodelay(true)?;
    Ok(s)
}

impl Conn {
    /// Connects, completes the WebSocket handshake and the target's own greeting
    /// (roomcast: `welcome`; Socket.IO: the Engine.IO open and the `40` connect).
    pub async fn open(st: &Settings, target: &Addr, idx: usize) -> Result<Conn> {
        let stream = tcp(target.addr, idx, st.sources).await?;
        let path = match st.kind {
            Kind::Roomcast => {
                let mut p = format!("{}/ws", target.base_path);
                if let Some(tok) = &st.token {
                    p.push_str("?token=");
                    p.push_str(&tok());
                }
                p
            }
            Kind::Wsredis => match &st.token {
                // The peer checks it in the handshake when it runs with JWT_SECRET.
                Some(tok) => format!("{}/?token={}", target.base_path, tok()),
                None => format!("{}/", target.base_path),
            },
            Kind::Socketio => format!("{}/socket.io/?EIO=4&transport=websocket", target.base_path),
            Kind::Sockudo => format!(
                "{}/app/{}?protocol=7&client=roomcast-loadgen&version=1",
                target.base_path, st.pusher.key
            ),
        };
        let url = format!("ws://{}{}", target.host_port, path);
        let mut req = url.into_client_request()?;
        if st.kind == Kind::Roomcast {
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static(st.encoding.subprotocol()),
            );
        }
        let (ws, _resp) =
            tokio_tungstenite::client_async_with_config(req, stream, Some(ws_config()))
                .await
                .context("websocket handshake")?;
        let mut c = Conn {
            ws,
            kind: st.kind,
            enc: st.encoding,
            sio_ack: 0,
            socket_id: String::new(),
            pusher: st.pusher.clone(),
            arrived_us: 0,
            member_events: st.member_events,
        };
        match st.kind {
            Kind::Roomcast => loop {
                match c.next_raw(st.timeout).await? {
                    Raw::Server(ServerMessage::Welcome { .. }) => break,
                    Raw::Server(ServerMessage::Error { code, message, .. }) => {
                        bail!("error before welcome: {code:?}: {message}")
                    }
                    _ => {}
                }
            },
            Kind::Wsredis => {}
            Kind::Socketio => {
                // "0{...}" open, then our "40", then the server's "40{sid}".
                loop {
                    if let Raw::Text(t) = c.next_raw(st.timeout).await? {
                        if t.starts_with('0') {
                            break;
                        }
                    }
                }
                // The connect packet carries the token as Socket.IO's `auth`.
                let connect = match &st.token {
                    Some(tok) => format!("40{}", serde_json::json!({ "token": tok() })),
                    None => "40".to_string(),
                };
                c.ws.send(Message::text(connect)).await?;
                loop {
                    if let Raw::Text(t) = c.next_raw(st.timeout).await? {
                        if t.starts_with("40") {
                            break;
                        }
                        if t.starts_with("44") {
                            bail!("socket.io connect refused: {t}");
                        }
                    }
                }
            }
            Kind::Sockudo => loop {
                // `pusher:connection_established`, data a JSON string:
                // {"socket_id":"123.456","activity_timeout":120}.
                if let Raw::Text(t) = c.next_raw(st.timeout).await? {
                    let f: PusherFrame = serde_json::from_str(&t)
                        .with_context(|| format!("undecodable pusher frame: {t:.200}"))?;
                    match &*f.event {
                        "pusher:connection_established" => {
                            let d = f.object();
                            let Some(id) = d.get("socket_id").and_then(|v| v.as_str()) else {
                                bail!("connection_established without socket_id: {t:.200}");
                            };
                            c.socket_id = id.to_owned();
                            break;
                        }
                        "pusher:error" => {
                            bail!("pusher:error before connection_established: {t:.200}")
                        }
                        _ => {}
                    }
                }
            },
        }
        Ok(c)
    }

    /// Joins a room and waits for the reply; returns the room's offset (roomcast).
    pub async fn join(&mut self, room: &str, timeout: Duration) -> Result<u64> {
        match self.kind {
            Kind::Roomcast => {
                let m = ClientMessage::Join {
                    room: RoomName::new(room)?,
                    history: None,
                    since: None,
                    id: Some(ReqId::Int(0)),
                    member_events: self.member_events,
                };
                self.send_client(&m).await?;
                loop {
                    match self.next_raw(timeout).await? {
                        Raw::Server(ServerMessage::Joined { offset, .. }) => return Ok(offset),
                        Raw::Server(ServerMessage::Error { code, message, .. }) => {
                            bail!("join refused: {code:?}: {message}")
                        }
                        _ => {}
                    }
                }
            }
            Kind::Wsredis => {
                let m = serde_json::json!({"type": "join", "room": room});
                self.ws.send(Message::text(m.to_string())).await?;
                loop {
                    if let Raw::Text(t) = self.next_raw(timeout).await? {
                        if t.contains("\"joined\"") {
                            return Ok(0);
                        }
                    }
                }
            }
            Kind::Socketio => {
                self.sio_ack += 1;
                let n = self.sio_ack;
                let m = format!("42{}{}", n, serde_json::json!(["join", room]));
                self.ws.send(Message::text(m)).await?;
                let want = format!("43{n}");
                loop {
                    if let Raw::Text(t) = self.next_raw(timeout).await? {
                        if t.starts_with(&want) {
                            return Ok(0);
                        }
                    }
                }
            }
            Kind::Sockudo => {
                let channel = pusher_channel(room);
                let auth = self.pusher.auth(&self.socket_id, &channel);
                let m = serde_json::json!({
                    "event": "pusher:subscribe",
                    "data": {"channel": channel, "auth": auth},
                });
                self.ws.send(Message::text(m.to_string())).await?;
                loop {
                    if let Raw::Text(t) = self.next_raw(timeout).await? {
                        let Ok(f) = serde_json::from_str::<PusherFrame>(&t) else {
                            continue;
                        };
                        match &*f.event {
                            "pusher_internal:subscription_succeeded"
                                if f.channel.as_deref() == Some(channel.as_str()) =>
                            {
                                return Ok(0)
                            }
                            "pusher:subscription_error" | "pusher:error" => {
                                bail!("subscribe {channel} refused: {t:.200}")
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
    }

    /// Queues one publish (not flushed: call [`Conn::flush`]). `id` asks roomcast for
    /// an ack.
    pub async fn feed_publish(&mut self, room: &str, payload: &Payload, id: i64) -> Result<()> {
        let msg = match self.kind {
            Kind::Roomcast => {
                let m = ClientMessage::Publish {
                    room: RoomName::new(room)?,
                    event: EventName::new("m")?,
                    data: serde_json::to_value(payload)?,
                    id: Some(ReqId::Int(id)),
                    volatile: false,
                    echo: false,
                };
                let b = self.enc.encode(&m).map_err(|e| anyhow!("{e}"))?;
                if self.enc.is_binary() {
                    Message::Binary(b)
                } else {
                    Message::Text(String::from_utf8(b.to_vec())?.into())
                }
            }
            Kind::Wsredis => Message::text(
                serde_json::json!({"type": "publish", "room": room, "event": "m", "data": payload})
                    .to_string(),
            ),
            Kind::Socketio => Message::text(format!(
                "42{}",
                serde_json::json!(["publish", {"room": room, "event": "m", "data": payload}])
            )),
            // A client event: relayed to the channel's other subscribers, not echoed.
            Kind::Sockudo => Message::text(
                serde_json::json!({"event": "client-msg", "channel": pusher_channel(room), "data": payload})
                    .to_string(),
            ),
        };
        self.ws.feed(msg).await?;
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<()> {
        self.ws.flush().await?;
        Ok(())
    }

    /// Reads the next frame (no timeout: the caller selects on it) and reduces it.
    pub async fn recv(&mut self) -> Incoming {
        match self.ws.next().await {
            None => Incoming::Closed("eof".into()),
            Some(Err(e)) => Incoming::Closed(e.to_string()),
            Some(Ok(m)) => {
                self.arrived_us = crate::stats::now_us();
                self.reduce(m).await
            }
        }
    }

    /// When the last frame `recv` returned arrived.
    pub fn arrived_us(&self) -> u64 {
        self.arrived_us
    }

    async fn reduce(&mut self, m: Message) -> Incoming {
        match (self.kind, m) {
            (_, Message::Close(f)) => Incoming::Closed(
                f.map(|f| format!("close {} {}", u16::from(f.code), f.reason))
                    .unwrap_or_else(|| "close".into()),
            ),
            (Kind::Roomcast, Message::Text(t)) => self.reduce_server(t.as_bytes()),
            (Kind::Roomcast, Message::Binary(b)) => self.reduce_server(&b),
            (Kind::Wsredis, Message::Text(t)) => {
                #[derive(Deserialize)]
                struct M {
                    #[serde(rename = "type")]
                    ty: String,
                    data: Option<Payload>,
                    code: Option<String>,
                }
                match serde_json::from_str::<M>(&t) {
                    Ok(m) if m.ty == "message" => Incoming::Delivery {
                        offset: None,
                        payload: m.data,
                    },
                    Ok(m) if m.ty == "error" => Incoming::Error {
                        id: None,
                        msg: m.code.unwrap_or_default(),
                    },
                    Ok(_) => Incoming::Other,
                    Err(e) => Incoming::Error {
                        id: None,
                        msg: format!("undecodable: {e}"),
                    },
                }
            }
            (Kind::Socketio, Message::Text(t)) => {
                if t.as_str() == "2" {
                    // Engine.IO ping: answer with pong or the server closes us.
                    if self.ws.send(Message::text("3")).await.is_err() {
                        return Incoming::Closed("pong failed".into());
                    }
                    return Incoming::Other;
                }
                if let Some(body) = t.strip_prefix("42") {
                    #[derive(Deserialize)]
                    struct B {
                        data: Option<Payload>,
                    }
                    return match serde_json::from_str::<(String, B)>(body) {
                        Ok((ev, b)) if ev == "message" => Incoming::Delivery {
                            offset: None,
                            payload: b.data,
                        },
                        Ok(_) => Incoming::Other,
                        Err(e) => Incoming::Error {
                            id: None,
                            msg: format!("undecodable: {e}"),
                        },
                    };
                }
                if t.starts_with('1') {
                    return Incoming::Closed("engine.io close".into());
                }
                Incoming::Other
            }
            (Kind::Sockudo, Message::Text(t)) => {
                let f = match serde_json::from_str::<PusherFrame>(&t) {
                    Ok(f) => f,
                    Err(e) => {
                        return Incoming::Error {
                            id: None,
                            msg: format!("undecodable: {e}"),
                        }
                    }
                };
                match &*f.event {
                    "client-msg" => Incoming::Delivery {
                        offset: None,
                        payload: f.payload(),
                    },
                    "pusher:ping" => {
                        // Unanswered, the server closes the connection after its activity
                        // timeout.
                        if self.ws.send(Message::text(PUSHER_PONG)).await.is_err() {
                            return Incoming::Closed("pong failed".into());
                        }
                        Incoming::Other
                    }
                    "pusher:error" | "pusher:subscription_error" => Incoming::Error {
                        id: None,
                        msg: format!("{}: {}", f.event, f.object()),
                    },
                    _ => Incoming::Other,
                }
            }
            _ => Incoming::Other,
        }
    }

    fn reduce_server(&self, b: &[u8]) -> Incoming {
        // Deliveries are nearly every frame of a run: read a JSON one as the peers' are
        // read (a flat struct, unknown fields skipped), not through the protocol's
        // internally tagged enum, which buffers every field and validates every name.
        // Otherwise the generator would spend more CPU per delivery on roomcast than on
        // the peers, on the cores it shares with them.
        if self.enc == Encoding::Json {
            #[derive(Deserialize)]
            struct Light<'a> {
                #[serde(rename = "type", borrow)]
                ty: &'a str,
                offset: Option<u64>,
                data: Option<Payload>,
            }
            if let Ok(Light {
                ty: "message",
                offset,
                data,
            }) = serde_json::from_slice::<Light>(b)
            {
                return Incoming::Delivery {
                    offset,
                    payload: data,
                };
            }
        }
        match self.enc.decode_server(b) {
            Ok(ServerMessage::Message(p)) => Incoming::Delivery {
                offset: p.offset,
                payload: serde_json::from_value(p.data).ok(),
            },
            Ok(ServerMessage::Ack {
                id: ReqId::Int(id),
                offset,
            }) => Incoming::Ack { id, offset },
            Ok(ServerMessage::Error { code, message, id }) => Incoming::Error {
                id: match id {
                    Some(ReqId::Int(i)) => Some(i),
                    _ => None,
                },
                msg: format!("{code:?}: {message}"),
            },
            Ok(_) => Incoming::Other,
            Err(e) => Incoming::Error {
                id: None,
                msg: format!("undecodable: {e}"),
            },
        }
    }

    async fn next_raw(&mut self, timeout: Duration) -> Result<Raw> {
        let m = tokio::time::timeout(timeout, self.ws.next())
            .await
            .map_err(|_| anyhow!("timed out waiting for the server"))?
            .ok_or_else(|| anyhow!("connection closed"))??;
        Ok(match m {
            Message::Close(f) => bail!("closed by server: {:?}", f),
            Message::Text(t) if self.kind == Kind::Roomcast => Raw::Server(
                self.enc
                    .decode_server(t.as_bytes())
                    .map_err(|e| anyhow!("{e}"))?,
            ),
            Message::Binary(b) if self.kind == Kind::Roomcast => {
                Raw::Server(self.enc.decode_server(&b).map_err(|e| anyhow!("{e}"))?)
            }
            Message::Text(t) => {
                if self.kind == Kind::Socketio && t.as_str() == "2" {
                    self.ws.send(Message::text("3")).await?;
                }
                if self.kind == Kind::Sockudo && t.contains("\"pusher:ping\"") {
                    self.ws.send(Message::text(PUSHER_PONG)).await?;
                }
                Raw::Text(t.to_string())
            }
            _ => Raw::Other,
        })
    }

    async fn send_client(&mut self, m: &ClientMessage) -> Result<()> {
        let b = self.enc.encode(m).map_err(|e| anyhow!("{e}"))?;
        let msg = if self.enc.is_binary() {
            Message::Binary(b)
        } else {
            Message::Text(String::from_utf8(b.to_vec())?.into())
        };
        self.ws.send(msg).await?;
        Ok(())
    }

    /// Closes politely, bounded in time.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(None)).await;
    }
}

enum Raw {
    Server(ServerMessage),
    Text(String),
    Other,
}
