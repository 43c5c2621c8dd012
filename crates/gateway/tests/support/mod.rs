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

/// Flags of a node without auth and no rate limit in the way of a test's bursts.
pub const OPEN_UNLIMITED: &[&str] = &[
    "--auth",
    "none",
    "--rate-limit",
    "100000",
    "--rate-burst",
    "100000",
];

/// A node without auth whose clients may send `burst` requests at once and then `rate` a
/// second, and are closed after `strikes` refusals.
pub async fn rate_limited_node(rate: &str, burst: &str, strikes: &str) -> TestNode {
    TestNode::start(&[
        "--auth",
        "none",
        "--rate-limit",
        rate,
        "--rate-burst",
        burst,
        "--rate-limit-strikes",
        strikes,
    ])
    .await
}

/// A node `id` on the Redis Cluster of `seeds_flag` (its `--redis-cluster-urls` value),
/// with [`JWT_UNLIMITED`] and `extra` flags.
pub async fn cluster_mode_node(seeds_flag: &str, id: &str, extra: &[&str]) -> TestNode {
    let mut args = JWT_UNLIMITED.to_vec();
    args.extend_from_slice(&["--redis-cluster-urls", seeds_flag, "--node-id", id]);
    args.extend_from_slice(extra);
    TestNode::start(&args).await
}

/// What an emitter (any backend process, docs/protocol.md section 6) publishes to a room
/// channel: the MessagePack envelope of a message without an offset, from `source`.
pub fn emitter_envelope(source: &str, room: &str, event: &str, from: &str, data: Value) -> Vec<u8> {
    use roomcast_protocol::{BusMessage, Envelope, EventName, RoomName, UserId};
    Envelope::new(
        source,
        BusMessage::Message {
            room: RoomName::new(room).expect("room"),
            event: EventName::new(event).expect("event"),
            data,
            from: UserId::new(from).expect("user"),
            offset: None,
            ts: 0,
            epoch: None,
            skip: None,
        },
    )
    .to_msgpack()
    .expect("encode")
}

/// A JSON request to `node` with `bearer` (an API key or a user's token) in
/// `Authorization`, if any: (status, JSON body or Null).
pub async fn api_as(
    node: &TestNode,
    method: &str,
    path: &str,
    body: &str,
    bearer: Option<&str>,
) -> (u16, Value) {
    json_request(node.addr, method, path, bearer, body).await
}

/// A JSON request to the node at `addr` with `bearer` in `Authorization`, if any:
/// (status, JSON body or Null).
pub async fn json_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let auth = bearer.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let (status, text) = http(addr, method, path, &headers, body).await;
    (
        status,
        serde_json::from_str(&body_of(&text)).unwrap_or(Value::Null),
    )
}

/// The path of the throwaway test key (or key set) `name` under tests/keys/.
pub fn key_file(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

/// The public JWK `name` of tests/keys/jwks_public.json, with `kid`.
pub fn jwk(name: &str, kid: &str) -> Value {
    let text = std::fs::read_to_string(key_file("jwks_public.json")).expect("test keys");
    let all: Value = serde_json::from_str(&text).expect("json");
    let mut k = all[name].clone();
    k["kid"] = json!(kid);
    k
}

/// Runs `cmd` (the node binary, set to fail at start) until it exits by itself, within
/// [`WAIT`]; its exit code and stderr.
pub async fn exit_of(cmd: &mut tokio::process::Command) -> (Option<i32>, String) {
    let out = tokio::time::timeout(WAIT, cmd.kill_on_drop(true).output())
        .await
        .expect("the node refuses to start, and exits, in time")
        .expect("run roomcast");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A node `n1` on `redis` with JWT auth (the tests' secret) and the backend API key `key`.
pub async fn api_node(redis: &RedisServer, key: &str) -> TestNode {
    let url = redis.url();
    TestNode::start(&[
        "--jwt-secret",
        SECRET,
        "--api-keys",
        key,
        "--redis-url",
        &url,
        "--node-id",
        "n1",
    ])
    .await
}

/// `POST /api/publish` with the API key `key` of `data` as event `e` to `room`: (status,
/// JSON body).
pub async fn api_publish_with(node: &TestNode, key: &str, room: &str, data: Value) -> (u16, Value) {
    let body = json!({"room": room, "event": "e", "data": data}).to_string();
    api_as(node, "POST", "/api/publish", &body, Some(key)).await
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
