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

// ---------------------------------------------------------------------------------
// Redis, bus modes, nodes as child processes, SSE
// ---------------------------------------------------------------------------------

/// Polls `f` (with a short pause between tries) until it returns `Some`, for at most
/// [`WAIT`]; panics with `what` otherwise. For states that have no event to await
/// (readiness, presence expiry).
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {:?}",
            WAIT * 2
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A `redis-server` child process on a free loopback port, without persistence,
/// killed on drop (the approach of crates/redis-bridge/tests/support).
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        for _ in 0..10 {
            let mut s = RedisServer {
                port: free_port(),
                child: None,
            };
            if s.spawn() {
                return s;
            }
        }
        panic!("could not start redis-server on a free port");
    }

    fn spawn(&mut self) -> bool {
        use std::process::{Command, Stdio};
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if self.answers() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    fn answers(&self) -> bool {
        self.command(&["PING"]).is_some_and(|r| r.contains("PONG"))
    }

    /// Runs one command over a fresh plain connection; the raw RESP reply.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let raw: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.command_raw(&raw)
    }

    /// [`Self::command`] with binary arguments.
    pub fn command_raw(&self, args: &[&[u8]]) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
        s.write_all(&req).ok()?;
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL: every connection drops, all data is lost.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("could not restart redis-server on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
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

/// A node run as the real `roomcast` binary, so that it can be killed with SIGKILL.
pub struct ChildNode {
    pub addr: SocketAddr,
    child: Option<std::process::Child>,
}

impl ChildNode {
    /// Starts `target/.../roomcast` with these flags (plus `--listen 127.0.0.1:0`) and
    /// waits for its ready line, which names the address.
    pub fn start(args: &[&str]) -> ChildNode {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_roomcast"))
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(args)
            .env_remove("ROOMCAST_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn roomcast");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads every line (so the pipe never fills), reporting the ready line's address.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                        .collect();
                    if let (Some(tx), Ok(a)) = (tx.take(), addr.parse::<SocketAddr>()) {
                        let _ = tx.send(a);
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(WAIT) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("roomcast did not print its ready line within {WAIT:?}");
            }
        };
        ChildNode {
            addr,
            child: Some(child),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("SSE data is JSON")
    }
}

/// An SSE stream read over a raw TCP socket, incrementally, de-chunking as it goes.
pub struct SseStream {
    pub status: u16,
    /// What a browser's EventSource would send as `Last-Event-ID` on reconnect: the last
    /// `id:` seen, including id-only blocks (which set it without dispatching an event).
    pub last_event_id: Option<String>,
    pub head: String,
    sock: TcpStream,
    raw: Vec<u8>,
    /// Bytes left in the current chunk (`None`: a size line comes next).
    chunk_left: Option<usize>,
    chunked: bool,
    body: Vec<u8>,
    pub eof: bool,
}

impl SseStream {
    /// `GET path` with headers; reads the response head.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseStream {
        use tokio::io::AsyncWriteExt;
        let mut sock = TcpStream::connect(addr).await.expect("connect");
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        sock.write_all(req.as_bytes()).await.expect("write");
        let mut s = SseStream {
            status: 0,
            last_event_id: None,
            head: String::new(),
            sock,
            raw: Vec::new(),
            chunk_left: None,
            chunked: false,
            body: Vec::new(),
            eof: false,
        };
        loop {
            if let Some(i) = s.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                s.head = String::from_utf8_lossy(&s.raw[..i]).into_owned();
                s.raw.drain(..i + 4);
                break;
            }
            assert!(
                s.read_more().await,
                "connection closed before the response head"
            );
        }
        s.status = s
            .head
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        s.chunked = s
            .head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        s.decode();
        s
    }

    async fn read_more(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 8192];
        match tokio::time::timeout(WAIT, self.sock.read(&mut buf))
            .await
            .expect("SSE data in time")
        {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                true
            }
        }
    }

    /// Moves what `raw` holds into `body`, removing chunk framing.
    fn decode(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return;
        }
        loop {
            match self.chunk_left {
                Some(0) => {
                    if self.raw.len() < 2 {
                        return;
                    }
                    self.raw.drain(..2); // CRLF after the chunk
                    self.chunk_left = None;
                }
                Some(n) => {
                    if self.raw.is_empty() {
                        return;
                    }
                    let k = n.min(self.raw.len());
                    self.body.extend(self.raw.drain(..k));
                    self.chunk_left = Some(n - k);
                }
                None => {
                    let Some(i) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                        return;
                    };
                    let line = String::from_utf8_lossy(&self.raw[..i]).into_owned();
                    self.raw.drain(..i + 2);
                    let size =
                        usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                            .expect("chunk size");
                    if size == 0 {
                        self.eof = true;
                        return;
                    }
                    self.chunk_left = Some(size);
                }
            }
        }
    }

    /// The next block (an event or a comment, without its blank line); `None` at the end
    /// of the stream.
    pub async fn next_block(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.body.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8_lossy(&self.body[..i]).into_owned();
                self.body.drain(..i + 2);
                return Some(block);
            }
            if self.eof || !self.read_more().await {
                self.eof = true;
                return None;
            }
            self.decode();
        }
    }

    /// The next event, skipping comments; `None` at the end of the stream.
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            let block = self.next_block().await?;
            let mut ev = SseEvent::default();
            let mut data = Vec::new();
            for line in block.lines() {
                if line.starts_with(':') {
                    continue;
                }
                let (k, v) = line.split_once(':').unwrap_or((line, ""));
                let v = v.strip_prefix(' ').unwrap_or(v);
                match k {
                    "id" => ev.id = Some(v.to_string()),
                    "event" => ev.event = Some(v.to_string()),
                    "data" => data.push(v.to_string()),
                    _ => {}
                }
            }
            if let Some(id) = &ev.id {
                self.last_event_id = Some(id.clone());
            }
            if data.is_empty() {
                continue; // a comment, or an id-only block: no event, as in browsers
            }
            ev.data = data.join("\n");
            // An id-only block already received right after the event (the node sends
            // them together) updates the last event id, as a browser would at once.
            while let Some(i) = self.body.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8_lossy(&self.body[..i]).into_owned();
                let Some(id) = block
                    .strip_prefix("id: ")
                    .filter(|rest| !rest.contains('\n'))
                else {
                    break;
                };
                self.last_event_id = Some(id.to_string());
                self.body.drain(..i + 2);
            }
            return Some(ev);
        }
    }

    /// Reads until the stream ends; true when it does within [`WAIT`].
    pub async fn ended(&mut self) -> bool {
        while self.next_block().await.is_some() {}
        true
    }
}
