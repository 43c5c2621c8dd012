//! Test support: a [`EventSink`] that turns bus events into a stream tests can await, and
//! bus nodes on a real `redis-server` (the kit's [`RedisServer`]).
#![allow(dead_code, unreachable_pub)]

pub use roomcast_testkit::RedisServer;

use roomcast_protocol::{DirectMessage, EventName, MemberChange, Publication, RoomName, UserId};
use roomcast_redis_bridge::{BusConfig, BusEvent, EventSink};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a test waits for an event before failing.
pub const WAIT: Duration = Duration::from_secs(20);

/// A [`EventSink`] feeding a channel.
pub struct Collector {
    tx: mpsc::UnboundedSender<BusEvent>,
}

impl EventSink for Collector {
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
            BusEvent::Message {
                publication,
                except_conn,
            } => Some((publication.clone(), except_conn.clone())),
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
            BusEvent::Member {
                change: MemberChange::Joined,
                user,
                ..
            } => Some(("joined", user.to_string())),
            BusEvent::Member {
                change: MemberChange::Left,
                user,
                ..
            } => Some(("left", user.to_string())),
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
    req_from(room, "alice", data)
}

/// A room publish of `data` by `from`.
pub fn req_from(
    room: &str,
    from: &str,
    data: serde_json::Value,
) -> roomcast_redis_bridge::PublishRequest {
    roomcast_redis_bridge::PublishRequest {
        publication: publication(room, from, data),
        volatile: false,
        idempotency_key: None,
        skip: None,
    }
}

/// Publishes `data` by alice to `room` on `bus`; panics if the bus refuses.
pub async fn publish(
    bus: &(impl roomcast_redis_bridge::Bus + ?Sized),
    room: &str,
    data: serde_json::Value,
) -> roomcast_redis_bridge::PublishResult {
    bus.publish(req(room, data)).await.expect("publish")
}

/// Publishes `data` by `from` to `room` on `bus`; panics if the bus refuses.
pub async fn publish_from(
    bus: &(impl roomcast_redis_bridge::Bus + ?Sized),
    room: &str,
    from: &str,
    data: serde_json::Value,
) -> roomcast_redis_bridge::PublishResult {
    bus.publish(req_from(room, from, data))
        .await
        .expect("publish")
}

/// A history query for what follows (`offset`, `epoch`), or at most `limit` recent
/// messages when that cannot be recovered.
pub fn query_since(offset: u64, epoch: &str, limit: usize) -> roomcast_redis_bridge::HistoryQuery {
    roomcast_redis_bridge::HistoryQuery {
        since: Some(roomcast_protocol::StreamPosition {
            offset,
            epoch: epoch.to_string(),
        }),
        limit,
    }
}

/// A history query for the `limit` most recent messages.
pub fn query_recent(limit: usize) -> roomcast_redis_bridge::HistoryQuery {
    roomcast_redis_bridge::HistoryQuery { since: None, limit }
}

/// `room`'s history on `bus` for `query`; panics if the bus refuses.
pub async fn history(
    bus: &(impl roomcast_redis_bridge::Bus + ?Sized),
    room_name: &str,
    query: roomcast_redis_bridge::HistoryQuery,
) -> roomcast_redis_bridge::History {
    bus.history(&room(room_name), query).await.expect("history")
}

/// Adds connection `conn` of `user_name` to `room`'s presence on `bus`; panics if the
/// bus refuses.
pub async fn join_presence(
    bus: &(impl roomcast_redis_bridge::Bus + ?Sized),
    room: &RoomName,
    user_name: &str,
    conn: &str,
) {
    bus.presence_join(room, &user(user_name), conn)
        .await
        .expect("presence join");
}

/// Removes connection `conn` of `user_name` from `room`'s presence on `bus`; panics if
/// the bus refuses.
pub async fn leave_presence(
    bus: &(impl roomcast_redis_bridge::Bus + ?Sized),
    room: &RoomName,
    user_name: &str,
    conn: &str,
) {
    bus.presence_leave(room, &user(user_name), conn)
        .await
        .expect("presence leave");
}

/// Runs one raw command on a connection and returns its reply as the caller's type;
/// panics (naming the command) if Redis refuses: `redis_query!(&mut conn, "CLIENT",
/// "KILL", "TYPE", "pubsub")`.
#[allow(unused_macros)]
macro_rules! redis_query {
    ($conn:expr, $name:expr $(, $arg:expr)* $(,)?) => {{
        #[allow(unused_mut)]
        let mut cmd = redis::cmd($name);
        $(cmd.arg($arg);)*
        cmd.query_async($conn).await.expect($name)
    }};
}
#[allow(unused_imports)]
pub(crate) use redis_query;

pub mod cluster;

/// How many times Redis ran `cmd` (scripts' calls included), from INFO commandstats; 0 if
/// never.
pub async fn command_calls(server: &RedisServer, cmd: &str) -> u64 {
    let mut raw = server.conn().await;
    let info: String = redis_query!(&mut raw, "INFO", "commandstats");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
