//! Test support: a real `redis-server` on a free loopback port (no persistence, killed
//! on drop), and a [`Delivery`] that turns bus events into a stream tests can await.
#![allow(dead_code, unreachable_pub)]

use roomcast_protocol::{DirectMessage, EventName, Publication, RoomName, UserId};
use roomcast_redis_bridge::{BusConfig, BusEvent, Delivery};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long a test waits for an event before failing.
pub const WAIT: Duration = Duration::from_secs(20);

/// A `redis-server` child process.
pub struct RedisServer {
    pub port: u16,
    password: Option<String>,
    /// TLS only (`--port 0 --tls-port`): the directory holding `cert.pem` and `key.pem`.
    tls: Option<std::path::PathBuf>,
    child: Option<Child>,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

impl RedisServer {
    /// Starts a server without a password.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts a server that requires `password`.
    pub fn start_with_password(password: &str) -> Self {
        Self::start_with(Some(password.to_string()))
    }

    /// Starts a TLS-only server with a fresh self-signed certificate (for 127.0.0.1);
    /// returns it and the path of the CA certificate that signed it, for `SSL_CERT_FILE`.
    pub fn start_tls() -> (Self, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("roomcast-redis-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cert dir");
        // a CA, and a leaf certificate for 127.0.0.1 signed by it
        std::fs::write(
            dir.join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .expect("ext file");
        let openssl = |args: &[&str]| {
            let status = Command::new("openssl")
                .current_dir(&dir)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl must be installed");
            assert!(status.success(), "openssl {args:?} failed");
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=roomcast-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
            "-out",
            "cert.pem",
        ]);
        for _ in 0..10 {
            let mut s = RedisServer {
                port: free_port(),
                password: None,
                tls: Some(dir.clone()),
                child: None,
            };
            if s.spawn() {
                return (s, dir.join("ca.pem"));
            }
        }
        panic!("could not start a TLS redis-server");
    }

    fn start_with(password: Option<String>) -> Self {
        for _ in 0..10 {
            let port = free_port();
            let mut s = RedisServer {
                port,
                password: password.clone(),
                tls: None,
                child: None,
            };
            if s.spawn() {
                return s;
            }
        }
        panic!("could not start redis-server on a free port");
    }

    /// Spawns the process on `self.port`; false when it exited (port taken).
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some(dir) => cmd
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &self.port.to_string(),
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(dir.join("cert.pem"))
                .arg("--tls-key-file")
                .arg(dir.join("key.pem")),
        };
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args([
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
                "--dir",
                &std::env::temp_dir().to_string_lossy(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let mut child = cmd
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
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

    /// Whether something answers PING on the port (NOAUTH counts: it is up).
    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if self.tls.is_some() {
            return true; // listening is all we can tell without a handshake
        }
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        matches!(s.read(&mut buf), Ok(n) if n > 0)
    }

    /// `redis://` URL of this server (with its password).
    pub fn url(&self) -> String {
        if self.tls.is_some() {
            return format!("rediss://127.0.0.1:{}/", self.port);
        }
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// Kills the server (SIGKILL): every connection drops, all data is lost.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port (empty, as after a restart without
    /// persistence).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("could not restart redis-server on port {}", self.port);
    }

    /// A plain multiplexed connection for raw commands.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A [`Delivery`] feeding a channel.
pub struct Collector {
    tx: mpsc::UnboundedSender<BusEvent>,
}

impl Delivery for Collector {
    fn deliver(&self, event: BusEvent) {
        let _ = self.tx.send(event);
    }
}

/// The receiving end of a [`Collector`].
pub struct Events {
    rx: mpsc::UnboundedReceiver<BusEvent>,
}

/// A delivery and the stream of what it gets.
pub fn collector() -> (Arc<Collector>, Events) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Arc::new(Collector { tx }), Events { rx })
}

impl Events {
    /// The next event, within [`WAIT`].
    pub async fn next(&mut self) -> BusEvent {
        match tokio::time::timeout(WAIT, self.rx.recv()).await {
            Ok(Some(e)) => e,
            Ok(None) => panic!("the bus dropped its delivery"),
            Err(_) => panic!("no bus event within {WAIT:?}"),
        }
    }

    /// Skips events until `f` picks one.
    pub async fn until<T>(&mut self, mut f: impl FnMut(&BusEvent) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(e)) => {
                    if let Some(t) = f(&e) {
                        return t;
                    }
                }
                Ok(None) => panic!("the bus dropped its delivery"),
                Err(_) => panic!("the awaited bus event did not come within {WAIT:?}"),
            }
        }
    }

    /// The next room message (other kinds of events are skipped).
    pub async fn message(&mut self) -> (Arc<Publication>, Option<String>) {
        self.until(|e| match e {
            BusEvent::Message { publication, skip } => Some((publication.clone(), skip.clone())),
            _ => None,
        })
        .await
    }

    /// The next `n` room messages.
    pub async fn messages(&mut self, n: usize) -> Vec<Arc<Publication>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.message().await.0);
        }
        out
    }

    /// The next member event, as ("joined"|"left", user).
    pub async fn member(&mut self) -> (&'static str, String) {
        self.until(|e| match e {
            BusEvent::MemberJoined { user, .. } => Some(("joined", user.to_string())),
            BusEvent::MemberLeft { user, .. } => Some(("left", user.to_string())),
            _ => None,
        })
        .await
    }

    /// The next `State` event.
    pub async fn state(&mut self) -> bool {
        self.until(|e| match e {
            BusEvent::State { up } => Some(*up),
            _ => None,
        })
        .await
    }

    /// Everything received so far, without waiting.
    pub fn drain(&mut self) -> Vec<BusEvent> {
        let mut out = Vec::new();
        while let Ok(e) = self.rx.try_recv() {
            out.push(e);
        }
        out
    }
}

pub fn room(s: &str) -> RoomName {
    RoomName::new(s).expect("room name")
}

pub fn user(s: &str) -> UserId {
    UserId::new(s).expect("user id")
}

/// A publication of `event` with `data` from `from`.
pub fn publication(room_name: &str, from: &str, data: serde_json::Value) -> Publication {
    Publication {
        room: room(room_name),
        event: EventName::new("msg").expect("event"),
        data,
        from: user(from),
        offset: None,
        ts: now_ms(),
    }
}

/// Milliseconds since the Unix epoch, as nodes stamp messages.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

pub fn direct(from: &str, data: serde_json::Value) -> DirectMessage {
    DirectMessage {
        from: user(from),
        event: EventName::new("dm").expect("event"),
        data,
        ts: now_ms(),
    }
}

/// Settings for tests: short timeouts, unique node id.
pub fn config(node: &str) -> BusConfig {
    BusConfig {
        node_id: node.into(),
        prefix: "rc".into(),
        history_size: 100,
        op_timeout: Duration::from_secs(2),
        ..BusConfig::default()
    }
}

/// A started Redis bus and its events: one node of a test cluster.
pub struct Node {
    pub bus: std::sync::Arc<roomcast_redis_bridge::RedisBus>,
    pub events: Events,
}

/// Starts a node on `server` and waits until it reports itself up.
pub async fn node(server: &RedisServer, cfg: BusConfig) -> Node {
    use roomcast_redis_bridge::Bus;
    let (delivery, mut events) = collector();
    let bus = roomcast_redis_bridge::RedisBus::connect(&server.url(), cfg)
        .await
        .expect("connect");
    bus.start(delivery).await.expect("start");
    assert!(events.state().await);
    Node {
        bus: Arc::new(bus),
        events,
    }
}

/// A room publish of `data` by alice.
pub fn req(room: &str, data: serde_json::Value) -> roomcast_redis_bridge::PublishRequest {
    roomcast_redis_bridge::PublishRequest {
        publication: publication(room, "alice", data),
        volatile: false,
        idempotency_key: None,
        skip: None,
    }
}

pub mod cluster;
