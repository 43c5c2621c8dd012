//! Test support: nodes started in-process on port 0, on the bus of a test's choosing.
//! The real parts every suite shares (Redis, WebSocket/HTTP/SSE clients, a node as a
//! child process) come from the `roomcast-testkit` crate, re-exported here.
#![allow(dead_code, unreachable_pub)]

pub use roomcast_testkit::*;

use roomcast_gateway::config::Config;
use serde_json::{json, Value};
use std::net::SocketAddr;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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

/// Which bus a behavioural test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Standalone: the in-process bus.
    Memory,
    /// Cluster mode: a real redis-server of the test's own.
    Redis,
    /// Cluster mode with a subscription per room and user (`--bus-subscribe rooms`).
    RedisRooms,
}

/// The bus of one test: nothing, or a redis-server that lives as long as this value.
pub struct Backend {
    pub mode: Mode,
    pub redis: Option<RedisServer>,
}

impl Backend {
    pub fn new(mode: Mode) -> Backend {
        Backend {
            mode,
            redis: (mode != Mode::Memory).then(RedisServer::start),
        }
    }

    /// Starts a node on this bus (`node_id` names it in the cluster) with `extra` flags.
    pub async fn node(&self, node_id: &str, extra: &[&str]) -> TestNode {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend(["--node-id".into(), node_id.into()]);
        if let Some(r) = &self.redis {
            args.extend(["--redis-url".into(), r.url()]);
        }
        if self.mode == Mode::RedisRooms {
            args.extend(["--bus-subscribe".into(), "rooms".into()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        TestNode::start(&refs).await
    }
}

/// Flags of a node with JWT auth (the tests' secret) and no rate limit in the way of a
/// test's bursts.
pub const JWT_UNLIMITED: &[&str] = &[
    "--jwt-secret",
    SECRET,
    "--rate-limit",
    "100000",
    "--rate-burst",
    "100000",
];

/// Starts `n` nodes named n1..nN on `redis`, each with the flags `common` and `extra`.
pub async fn cluster(
    redis: &RedisServer,
    n: usize,
    common: &[&str],
    extra: &[&str],
) -> Vec<TestNode> {
    let url = redis.url();
    let mut nodes = Vec::new();
    for i in 1..=n {
        let id = format!("n{i}");
        let mut args: Vec<&str> = common.to_vec();
        args.extend_from_slice(&["--redis-url", &url, "--node-id", &id]);
        args.extend_from_slice(extra);
        nodes.push(TestNode::start(&args).await);
    }
    nodes
}

/// Stops every node, one after the other.
pub async fn stop_all(nodes: Vec<TestNode>) {
    for n in nodes {
        n.stop().await;
    }
}

/// The WebSocket URL `ws_url` with a token of `user` (the tests' secret).
pub fn user_url(ws_url: &str, user: &str) -> String {
    format!("{ws_url}?token={}", token(user, json!({})))
}

/// A welcomed client of `user` (a token of the tests' secret) on the node at `ws_url`.
pub async fn connect_user(ws_url: &str, user: &str, enc: roomcast_protocol::Encoding) -> Client {
    Client::welcomed(&user_url(ws_url, user), enc).await.0
}

/// Connects to `node` as `user` (a token of the tests' secret), JSON, and waits for
/// `welcome`.
pub async fn connect_as(node: &TestNode, user: &str) -> Client {
    connect_user(&node.ws_url(), user, roomcast_protocol::Encoding::Json).await
}

/// The status of `GET /readyz` on the node at `addr`.
pub async fn ready(addr: SocketAddr) -> u16 {
    http(addr, "GET", "/readyz", &[], "").await.0
}

/// The value of an unlabelled metric on the node at `addr` (0 when it is absent).
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (_, text) = http(addr, "GET", "/metrics", &[], "").await;
    body_of(&text)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}
