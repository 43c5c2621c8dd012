//! The memory floor of roomcast's stack: the least an idle WebSocket connection costs on
//! hyper 1 + tokio-tungstenite + one tokio task per connection, with the node's buffer
//! sizes and its periodic `malloc_trim`, and nothing else (no hub, no timers, no auth,
//! no rooms). It speaks just enough of the protocol for `roomcast-loadgen idle`: a
//! `welcome` on connect and a `joined` (offset 0) for each `join`.
//!
//! `scripts/bench --scenarios stackfloor` holds 10k idle connections on it and on a
//! node, so that roomcast's RSS per idle connection is shown beside what the stack alone
//! needs. `loadtest/joins/run` uses it as the join floor: with `--jwt-secret` it checks
//! an HS256 token per connection (`?token=`, its `sub` is the user) as a node does, and
//! with `--member-events` a join sends `member_joined` (and a close `member_left`) to
//! the room's other connections in this process, one encoding shared by all, queued per
//! connection and written in one flush: the least the stack spends on member events,
//! with no bus and no presence. Loopback only.
//!
//!     cargo run --release -p roomcast-gateway --example stack_floor -- --listen 127.0.0.1:0

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use roomcast_gateway::memory::{spawn_trimmer, Churn};
use roomcast_protocol::{ClientMessage, Encoding, RoomName, ServerMessage, UserId};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
struct Args {
    /// Where to listen (loopback only); port 0 picks one, printed on stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// tungstenite's read buffer per connection, bytes (the node's --ws-read-buffer).
    #[arg(long, default_value_t = 512)]
    ws_read_buffer: usize,
    /// Seconds between malloc_trim calls (the node's --malloc-trim-interval); 0: never.
    #[arg(long, default_value_t = 10)]
    malloc_trim_interval: u64,
    /// Listen backlog (the node's --listen-backlog).
    #[arg(long, default_value_t = 4096)]
    listen_backlog: u32,
    /// Runtime worker threads (default: number of CPUs, as the node).
    #[arg(long)]
    worker_threads: Option<usize>,
    /// HS256 secret: each connection must carry `?token=` (its `sub` is the user).
    #[arg(long)]
    jwt_secret: Option<String>,
    /// Send `member_joined` / `member_left` to the room's other connections.
    #[arg(long)]
    member_events: bool,
}

/// What every connection shares: the token key, and the rooms when member events are on.
struct Floor {
    churn: Arc<Churn>,
    key: Option<DecodingKey>,
    validation: Validation,
    rooms: Option<Mutex<HashMap<RoomName, Vec<Member>>>>,
    next_id: AtomicU64,
}

/// A connection in a room: its id and its member-event queue.
type Member = (u64, mpsc::Sender<Utf8Bytes>);

/// Frames queued per connection for member events (more are dropped: a floor).
const QUEUE: usize = 1024;

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

impl Floor {
    /// The user of a request: its token's `sub` (checked) or "anonymous" without a key.
    fn user(&self, req: &Request<Incoming>) -> Option<UserId> {
        let Some(key) = &self.key else {
            return UserId::new("anonymous").ok();
        };
        let token = req
            .uri()
            .query()?
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation).ok()?;
        UserId::new(&data.claims.sub).ok()
    }

    /// Tells the room's other connections (in this process) that `user` joined or left.
    fn announce(
        &self,
        room: &RoomName,
        msg: ServerMessage,
        me: u64,
        add: Option<&mpsc::Sender<Utf8Bytes>>,
    ) {
        let Some(rooms) = &self.rooms else { return };
        let Ok(frame) = Encoding::Json
            .encode_server(&msg)
            .map_err(|_| ())
            .and_then(|b| Utf8Bytes::try_from(b).map_err(|_| ()))
        else {
            return;
        };
        let mut rooms = rooms.lock().unwrap_or_else(|e| e.into_inner());
        let members = rooms.entry(room.clone()).or_default();
        for (id, tx) in members.iter() {
            if *id != me {
                let _ = tx.try_send(frame.clone());
            }
        }
        match add {
            Some(tx) => members.push((me, tx.clone())),
            None => {
                members.retain(|(id, _)| *id != me);
                if members.is_empty() {
                    rooms.remove(room);
                }
            }
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        bail!("loopback addresses only");
    }
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.worker_threads {
        rt.worker_threads(n.max(1));
    }
    rt.enable_all().build()?.block_on(serve(args))
}

async fn serve(args: Args) -> Result<()> {
    // The node's listen backlog (its --listen-backlog default), so that a burst of
    // connections meets the same kernel queue.
    let listener = roomcast_gateway::socket::listen(args.listen, args.listen_backlog)
        .with_context(|| format!("bind {}", args.listen))?;
    println!("{}", listener.local_addr()?);
    let churn = Arc::new(Churn::default());
    spawn_trimmer(
        &roomcast_gateway::lifecycle::Lifecycle::new(CancellationToken::new()),
        Duration::from_secs(args.malloc_trim_interval),
        churn.clone(),
    );
    // Member events are written in batches (feed, then one flush), which needs a write
    // buffer; without them none is kept, as on a node.
    let cfg = WebSocketConfig::default()
        .read_buffer_size(args.ws_read_buffer.max(64))
        .write_buffer_size(if args.member_events { 64 * 1024 } else { 0 });
    let floor = Arc::new(Floor {
        churn,
        key: args
            .jwt_secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.as_bytes())),
        validation: Validation::new(Algorithm::HS256),
        rooms: args.member_events.then(Default::default),
        next_id: AtomicU64::new(1),
    });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let floor = floor.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let floor = floor.clone();
                async move { Ok::<_, Infallible>(upgrade(req, cfg, floor)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

fn upgrade(
    req: Request<Incoming>,
    cfg: WebSocketConfig,
    floor: Arc<Floor>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        return resp;
    };
    let Some(user) = floor.user(&req) else {
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        return resp;
    };
    let accept = derive_accept_key(key.as_bytes());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    let offered = req
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if offered
        .split(',')
        .any(|p| Encoding::from_subprotocol(p) == Some(Encoding::Json))
    {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(Encoding::Json.subprotocol()),
        );
    }
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(cfg)).await;
        // Like the node, the connection lives in a task of its own, built outside it.
        floor.churn.note();
        tokio::spawn(connection(ws, floor, user));
    });
    resp
}

/// One connection: `welcome`, then a `joined` for each `join` (and the member events of
/// its rooms, with `--member-events`), until it closes.
async fn connection<S>(mut ws: WebSocketStream<S>, floor: Arc<Floor>, user: UserId)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let enc = Encoding::Json;
    let me = floor.next_id.fetch_add(1, Relaxed);
    let welcome = ServerMessage::Welcome {
        session: "floor".into(),
        node: "stack-floor".into(),
        user: user.clone(),
        heartbeat: 25,
        auth: if floor.key.is_some() { "jwt" } else { "none" }.into(),
        id: None,
    };
    if send(&mut ws, enc, &welcome).await.is_err() {
        floor.churn.note();
        return;
    }
    // No queue without member events: the idle floor must not pay for one.
    let (tx, mut rx) = match floor.rooms {
        Some(_) => {
            let (tx, rx) = mpsc::channel::<Utf8Bytes>(QUEUE);
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let mut joined: Vec<RoomName> = Vec::new();
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            Some(frame) = recv(&mut rx) => {
                // Everything queued goes out in one flush.
                let mut r = ws.feed(Message::Text(frame)).await;
                while let (Ok(()), Some(Ok(frame))) = (&r, rx.as_mut().map(|rx| rx.try_recv())) {
                    r = ws.feed(Message::Text(frame)).await;
                }
                if r.is_err() || ws.flush().await.is_err() {
                    break;
                }
                continue;
            }
        };
        let Some(Ok(msg)) = msg else { break };
        let Message::Text(t) = msg else { continue };
        if let Ok(ClientMessage::Join { room, id, .. }) = enc.decode_client(t.as_bytes()) {
            let joined_msg = ServerMessage::Joined {
                room: room.clone(),
                offset: 0,
                epoch: "floor".into(),
                recovered: false,
                messages: Vec::new(),
                id,
            };
            if send(&mut ws, enc, &joined_msg).await.is_err() {
                break;
            }
            if let Some(tx) = tx.as_ref().filter(|_| !joined.contains(&room)) {
                let event = ServerMessage::MemberJoined {
                    room: room.clone(),
                    user: user.clone(),
                };
                floor.announce(&room, event, me, Some(tx));
                joined.push(room);
            }
        }
    }
    for room in joined {
        let event = ServerMessage::MemberLeft {
            room: room.clone(),
            user: user.clone(),
        };
        floor.announce(&room, event, me, None);
    }
    floor.churn.note();
}

/// The next queued member event; never, without member events.
async fn recv(rx: &mut Option<mpsc::Receiver<Utf8Bytes>>) -> Option<Utf8Bytes> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn send<S>(ws: &mut WebSocketStream<S>, enc: Encoding, msg: &ServerMessage) -> Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let bytes = enc.encode_server(msg).context("encode")?;
    ws.send(Message::Text(String::from_utf8(bytes.to_vec())?.into()))
        .await?;
    Ok(())
}
