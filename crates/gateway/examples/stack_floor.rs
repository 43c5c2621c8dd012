//! The memory floor of roomcast's stack: the least an idle WebSocket connection costs on
//! hyper 1 + tokio-tungstenite + one tokio task per connection, with the node's buffer
//! sizes and its periodic `malloc_trim`, and nothing else (no hub, no timers, no auth,
//! no rooms). It speaks just enough of the protocol for `roomcast-loadgen idle`: a
//! `welcome` on connect and a `joined` (offset 0) for each `join`.
//!
//! `scripts/bench --scenarios stackfloor` holds 10k idle connections on it and on a
//! node, so that roomcast's RSS per idle connection is shown beside what the stack alone
//! needs. Loopback only.
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
use roomcast_gateway::memory::{spawn_trimmer, Churn};
use roomcast_protocol::{ClientMessage, Encoding, ServerMessage, UserId};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
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
    /// Runtime worker threads (default: number of CPUs, as the node).
    #[arg(long)]
    worker_threads: Option<usize>,
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
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    println!("{}", listener.local_addr()?);
    let churn = Arc::new(Churn::default());
    spawn_trimmer(
        &roomcast_gateway::lifecycle::Lifecycle::new(CancellationToken::new()),
        Duration::from_secs(args.malloc_trim_interval),
        churn.clone(),
    );
    let cfg = WebSocketConfig::default()
        .read_buffer_size(args.ws_read_buffer.max(64))
        .write_buffer_size(0);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let churn = churn.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let churn = churn.clone();
                async move { Ok::<_, Infallible>(upgrade(req, cfg, churn)) }
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
    churn: Arc<Churn>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        *resp.status_mut() = StatusCode::BAD_REQUEST;
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
        churn.note();
        tokio::spawn(connection(ws, churn));
    });
    resp
}

/// One connection: `welcome`, then a `joined` for each `join`, until it closes.
async fn connection<S>(mut ws: WebSocketStream<S>, churn: Arc<Churn>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let enc = Encoding::Json;
    let Ok(user) = UserId::new("anonymous") else {
        return;
    };
    let welcome = ServerMessage::Welcome {
        session: "floor".into(),
        node: "stack-floor".into(),
        user,
        heartbeat: 25,
        auth: "none".into(),
        id: None,
    };
    if send(&mut ws, enc, &welcome).await.is_err() {
        churn.note();
        return;
    }
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(t) = msg else { continue };
        if let Ok(ClientMessage::Join { room, id, .. }) = enc.decode_client(t.as_bytes()) {
            let joined = ServerMessage::Joined {
                room,
                offset: 0,
                epoch: "floor".into(),
                recovered: false,
                messages: Vec::new(),
                id,
            };
            if send(&mut ws, enc, &joined).await.is_err() {
                break;
            }
        }
    }
    churn.note();
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
