//! The [`Bus`] interface and the values that cross it.

use async_trait::async_trait;
use roomcast_protocol::{
    Count, DirectMessage, Member, MemberChange, Publication, RoomName, StreamPosition, UserId,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Settings every bus implementation honours.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// This node's name (the `node` of envelopes, the owner of presence entries).
    pub node_id: String,
    /// Prefix of every Redis key and channel.
    pub prefix: String,
    /// Messages kept per room.
    pub history_size: usize,
    /// How long a room's history lives after its last publish.
    pub history_ttl: Duration,
    /// How long a publish/send id is remembered for deduplication.
    pub dedupe_window: Duration,
    /// How long a presence entry lives without being refreshed by its node.
    pub presence_ttl: Duration,
    /// Most messages a `since` recovery replays; beyond it the join says `recovered: false`.
    pub max_recover: usize,
    /// How long a bus operation may take before it fails with [`BusError::Unavailable`].
    pub op_timeout: Duration,
    /// How much later than its publishing node's usual delay a room message may reach
    /// this node before the subscription counts as fallen behind: it is then dropped, with
    /// whatever the client library had queued for it, and re-synchronised from the rooms'
    /// history. Zero: never.
    pub max_lag: Duration,
    /// How the node listens to the room and user channels (docs/protocol.md section 6).
    pub subscribe: SubscribeMode,
    /// Rooms mode: how long a channel stays subscribed after its last local member left,
    /// so that a member who leaves and comes back within it costs no command.
    pub linger: Duration,
}

/// How a node listens to the bus's room and user channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubscribeMode {
    /// One pattern subscription per kind: every node receives every room's and every
    /// user's messages. Simplest; right for a few nodes.
    #[default]
    Pattern,
    /// A subscription per room with a local member and per local user: a node receives
    /// only what it delivers.
    Rooms,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            node_id: "node".into(),
            prefix: "roomcast".into(),
            history_size: 1000,
            history_ttl: Duration::from_secs(24 * 3600),
            dedupe_window: Duration::from_secs(120),
            presence_ttl: Duration::from_secs(30),
            max_recover: 1000,
            op_timeout: Duration::from_secs(5),
            max_lag: Duration::from_secs(30),
            subscribe: SubscribeMode::Pattern,
            linger: Duration::from_secs(2),
        }
    }
}

/// Why a bus operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The bus (Redis) cannot be reached, or did not answer in time.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The bus answered something unexpected.
    #[error("bus error: {0}")]
    Internal(String),
}

/// A room publish.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// The message; its `offset` is ignored (the bus assigns it).
    pub publication: Publication,
    /// Volatile: no offset, no history.
    pub volatile: bool,
    /// Deduplication key (user and request id); a repeat within the window is not
    /// delivered again and gets the original result.
    pub idempotency_key: Option<String>,
    /// A connection id that must not receive this message (the publisher, without echo).
    pub skip: Option<String>,
}

/// What a publish got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishResult {
    /// The offset assigned (none when volatile).
    pub offset: Option<u64>,
    /// The epoch of the room's history.
    pub epoch: String,
    /// This was a repeat of an earlier publish with the same key: nothing was delivered.
    pub duplicate: bool,
}

/// A message to every connection of one user.
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// The recipient.
    pub to: UserId,
    /// The message.
    pub message: DirectMessage,
    /// Deduplication key, as for publish.
    pub idempotency_key: Option<String>,
}

/// What a send got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    /// This was a repeat: nothing was delivered.
    pub duplicate: bool,
}

/// Which part of a room's history to read.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Everything after this position (when it is still held and the epoch matches).
    pub since: Option<StreamPosition>,
    /// Without `since`: the n most recent messages. With `since`, when recovery is
    /// impossible in its epoch: the n most recent messages instead. (A `since` in an
    /// epoch the room no longer has gets the current epoch from its first offset, up to
    /// `max_recover` messages, whatever `limit` says: docs/protocol.md section 3.)
    pub limit: usize,
}

/// A slice of a room's history.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// The epoch of the room's history.
    pub epoch: String,
    /// The room's current (last assigned) offset; 0 when nothing was published.
    pub offset: u64,
    /// The messages, oldest first.
    pub messages: Vec<Publication>,
    /// With `since`: every message after it is in `messages`.
    pub recovered: bool,
}

/// Who is in a room, cluster-wide.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PresenceSnapshot {
    /// Members, cut to the requested limit, sorted by user.
    pub members: Vec<Member>,
    /// Totals, never cut.
    pub count: Count,
}

/// A node's heartbeat: the small summary of its state that it writes to the bus every
/// few seconds (`--node-stats-interval`) and that the admin page lists for the cluster.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeStats {
    /// The node's name in the cluster (the bus sets it to its own `node_id`).
    pub node_id: String,
    /// The node's version.
    #[serde(default)]
    pub version: String,
    /// When the node started, ms since the Unix epoch.
    #[serde(default)]
    pub started_ms: u64,
    /// When this heartbeat was taken, ms since the Unix epoch (the node's clock).
    #[serde(default)]
    pub reported_ms: u64,
    /// Open client connections (WebSocket and SSE).
    #[serde(default)]
    pub connections: u64,
    /// Rooms with a local member.
    #[serde(default)]
    pub rooms: u64,
    /// Room messages the bus delivered to the node per second, over the last interval.
    #[serde(default)]
    pub messages_per_sec: f64,
    /// Whether the node's bus is up (connected and subscribed).
    #[serde(default)]
    pub bus_up: bool,
    /// Per shard, when the bus runs on a Redis Cluster (empty otherwise).
    #[serde(default)]
    pub shards: Vec<ShardState>,
    /// The node's busiest rooms (a bounded few, by local members and by messages/s).
    #[serde(default)]
    pub top_rooms: Vec<RoomStats>,
}

/// One room in a node's heartbeat.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RoomStats {
    /// The room.
    pub room: RoomName,
    /// Its members on this node.
    pub members: u64,
    /// Its messages the bus delivered to this node per second.
    pub messages_per_sec: f64,
}

/// What the bus delivers to its node, in order per room.
#[derive(Debug, Clone)]
pub enum BusEvent {
    /// A room message, from any node (this one included).
    Message {
        /// The message.
        publication: Arc<Publication>,
        /// The publishing connection, when it asked not to get its own message back
        /// (echo suppression).
        except_conn: Option<String>,
    },
    /// A user's first connection in a room joined, or its last one left or expired,
    /// cluster-wide.
    Member {
        /// Joined or left.
        change: MemberChange,
        /// The room.
        room: RoomName,
        /// The user.
        user: UserId,
    },
    /// A message to every connection of a user.
    Direct {
        /// The recipient.
        to: UserId,
        /// The message.
        message: Arc<DirectMessage>,
    },
    /// Close every connection of a user.
    Disconnect {
        /// The user.
        user: UserId,
        /// The close code.
        code: u16,
    },
    /// Messages of a room were lost and cannot be read back (history trimmed or lost):
    /// local members have a gap that only a re-join can reveal (`recovered: false`).
    Gap {
        /// The room.
        room: RoomName,
    },
    /// The bus went down or came back.
    State {
        /// Whether the bus is connected.
        up: bool,
    },
}

/// The node's side of the bus: receives every event, synchronously and in order.
/// Implementations must not block (they queue work; they never await).
pub trait EventSink: Send + Sync + 'static {
    /// Handles one event.
    fn deliver(&self, event: BusEvent);
}

/// The narrow handle a node's hub holds on the bus: it tells the bus which rooms and
/// users have local members and counts a room's presence, and nothing else (the hub
/// never publishes or reads history). It holds the bus weakly: the bus holds the node's
/// receiver of events (the hub) strongly, so a strong handle back would be a cycle that
/// keeps both alive. Once the bus is dropped, watching does nothing and a count fails
/// as [`BusError::Unavailable`].
#[derive(Clone)]
pub struct RoomInterest {
    bus: Weak<dyn Bus>,
}

impl std::fmt::Debug for RoomInterest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomInterest")
            .field("attached", &(self.bus.strong_count() > 0))
            .finish()
    }
}

impl RoomInterest {
    /// A handle on `bus`.
    pub fn new(bus: &Arc<dyn Bus>) -> Self {
        RoomInterest {
            bus: Arc::downgrade(bus),
        }
    }

    /// A handle on no bus (a hub on its own, in tests).
    pub fn detached() -> Self {
        let bus: Weak<dyn Bus> = Weak::<crate::MemoryBus>::new();
        RoomInterest { bus }
    }

    /// See [`Bus::watch_room`].
    pub fn watch_room(&self, room: &RoomName) {
        if let Some(bus) = self.bus.upgrade() {
            bus.watch_room(room);
        }
    }

    /// See [`Bus::unwatch_room`].
    pub fn unwatch_room(&self, room: &RoomName) {
        if let Some(bus) = self.bus.upgrade() {
            bus.unwatch_room(room);
        }
    }

    /// See [`Bus::watch_user`].
    pub fn watch_user(&self, user: &UserId) {
        if let Some(bus) = self.bus.upgrade() {
            bus.watch_user(user);
        }
    }

    /// See [`Bus::unwatch_user`].
    pub fn unwatch_user(&self, user: &UserId) {
        if let Some(bus) = self.bus.upgrade() {
            bus.unwatch_user(user);
        }
    }

    /// How many users and connections `room` has cluster-wide (its presence, uncut).
    pub async fn count(&self, room: &RoomName) -> Result<Count, BusError> {
        let bus = self
            .bus
            .upgrade()
            .ok_or_else(|| BusError::Unavailable("the bus is closed".into()))?;
        Ok(bus.presence(room, 1).await?.count)
    }

    /// Whether the bus is there and can serve (see [`Bus::is_ready`]).
    pub fn is_ready(&self) -> bool {
        self.bus.upgrade().is_some_and(|b| b.is_ready())
    }
}

/// Counters a bus keeps for the node's metrics.
#[derive(Debug, Default)]
pub struct BusStats {
    /// Times the bus reconnected after losing Redis.
    pub reconnects: AtomicU64,
    /// Publishes (and sends) that failed.
    pub publish_errors: AtomicU64,
    /// Envelopes received from the bus.
    pub messages_received: AtomicU64,
    /// Gaps detected and repaired from history.
    pub gap_repairs: AtomicU64,
    /// Gaps that could not be repaired.
    pub gaps_lost: AtomicU64,
    /// Envelopes dropped as bad input (docs/protocol.md section 6): undecodable or invalid,
    /// on the wrong channel, with a forged offset, or a control message with a close
    /// code a disconnect may not carry. Each is also counted below when it has a reason
    /// of its own.
    pub bad_envelopes: AtomicU64,
    /// Room messages dropped because their offset or epoch is not what the room's
    /// history holds (not written by the publish script: forged, e.g. by an emitter).
    pub forged_offsets: AtomicU64,
    /// Control messages dropped for a close code a disconnect may not carry.
    pub bad_controls: AtomicU64,
    /// Times the subscription fell more than `max_lag` behind and was re-synchronised.
    pub lag_resyncs: AtomicU64,
    /// Calls to Redis that carried room publishes (several publishes share one under
    /// load; publishes / batches is the batching factor).
    pub publish_batches: AtomicU64,
    /// Room publishes handed to Redis in those calls.
    pub publishes_batched: AtomicU64,
    /// Calls to Redis that carried first joins (presence add and history read; several
    /// joins share one in a burst).
    pub join_batches: AtomicU64,
    /// First joins handed to Redis in those calls.
    pub joins_batched: AtomicU64,
    /// Room messages received for a room with no local member (what pattern mode costs a
    /// node that delivers nothing of them; in rooms mode only what arrives while a left
    /// room's channel lingers).
    pub unwanted_room_messages: AtomicU64,
    /// Rooms mode: SUBSCRIBE commands sent (each may name many channels).
    pub subscribe_commands: AtomicU64,
    /// Rooms mode: UNSUBSCRIBE commands sent (each may name many channels).
    pub unsubscribe_commands: AtomicU64,
    /// Rooms mode: room channels subscribed now.
    pub subscribed_rooms: AtomicU64,
    /// Rooms mode: user channels subscribed now.
    pub subscribed_users: AtomicU64,
    /// Redis Cluster: times the slot map was read anew (at start, and after every cut:
    /// a failover, a slot moved, a shard lost). MOVED and ASK replies to commands are
    /// followed inside the redis crate, which does not count them.
    pub topology_refreshes: AtomicU64,
    /// Redis Cluster: subscriptions Redis dropped because their slot moved to another
    /// shard (`sunsubscribe` pushed by the server).
    pub slot_moves: AtomicU64,
    /// Rooms whose stored offset was found below one this node had delivered (publishes
    /// lost in a failover) and which got a new epoch.
    pub epoch_resets: AtomicU64,
}

/// A shard of a Redis Cluster, as the node's subscription last saw it (also one row of
/// a node's heartbeat, where the admin page reads it as `addr`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardState {
    /// The shard primary's address (`host:port`).
    #[serde(rename = "addr")]
    pub shard: String,
    /// Whether its connection answers.
    pub up: bool,
}

impl BusStats {
    /// Adds one to a counter.
    pub fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The cluster bus. Every method is safe to call from many tasks at once.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Starts delivering events to `delivery`; called once, before any other method.
    async fn start(&self, delivery: Arc<dyn EventSink>) -> Result<(), BusError>;

    /// Publishes to a room: assigns the next offset (unless volatile) atomically with the
    /// history append, and delivers the message to every node, this one included,
    /// in offset order.
    async fn publish(&self, req: PublishRequest) -> Result<PublishResult, BusError>;

    /// Sends a message to every connection of a user, on every node.
    async fn send(&self, req: SendRequest) -> Result<SendResult, BusError>;

    /// Reads a room's history.
    async fn history(&self, room: &RoomName, query: HistoryQuery) -> Result<History, BusError>;

    /// Adds a connection of `user` to a room's presence; when it is the user's first
    /// connection there, cluster-wide, a `BusEvent::Member` (joined) goes to every node.
    async fn presence_join(
        &self,
        room: &RoomName,
        user: &UserId,
        conn: &str,
    ) -> Result<(), BusError>;

    /// A connection's first join of a room: [`Bus::presence_join`] and [`Bus::history`]
    /// together. The Redis bus does both in one script call, shared with the first joins
    /// waiting beside it (its joiner task batches them as publishes are batched);
    /// this default runs them side by side. Call it after [`Bus::room_ready`].
    async fn join_room(
        &self,
        room: &RoomName,
        user: &UserId,
        conn: &str,
        query: HistoryQuery,
    ) -> Result<History, BusError> {
        let (added, read) = tokio::join!(
            self.presence_join(room, user, conn),
            self.history(room, query)
        );
        added?;
        read
    }

    /// Removes a connection from a room's presence; when it was the user's last one,
    /// a `BusEvent::Member` (left) goes to every node.
    async fn presence_leave(
        &self,
        room: &RoomName,
        user: &UserId,
        conn: &str,
    ) -> Result<(), BusError>;

    /// Who is in a room, cluster-wide.
    async fn presence(&self, room: &RoomName, limit: usize) -> Result<PresenceSnapshot, BusError>;

    /// Closes every connection of `user` on every node with `code`.
    async fn disconnect_user(&self, user: &UserId, code: u16) -> Result<(), BusError>;

    /// This node has local members in `room` now (gap tracking, per-room subscriptions).
    fn watch_room(&self, room: &RoomName);

    /// This node has no local members in `room` any more.
    fn unwatch_room(&self, room: &RoomName);

    /// Waits until this node receives `room`'s messages from the bus: in rooms mode, until
    /// the subscription to its channel is confirmed; otherwise at once. A join calls it
    /// after its member is registered (`watch_room`) and before it reads history, so that
    /// nothing published in between is missed (the no-gap rule of docs/protocol.md section 3).
    async fn room_ready(&self, _room: &RoomName) -> Result<(), BusError> {
        Ok(())
    }

    /// This node has a local connection of `user` now (rooms mode subscribes its channel).
    fn watch_user(&self, _user: &UserId) {}

    /// Waits until this node receives `user`'s direct messages (rooms mode: until its
    /// channel's subscription is confirmed; otherwise at once).
    async fn user_ready(&self, _user: &UserId) -> Result<(), BusError> {
        Ok(())
    }

    /// This node has no local connection of `user` any more.
    fn unwatch_user(&self, _user: &UserId) {}

    /// Writes this node's heartbeat (its `node_id` replaced by the bus's own); other
    /// nodes list it with [`Bus::nodes`] until `ttl` passes without a new one.
    async fn report_node(&self, _stats: &NodeStats, _ttl: Duration) -> Result<(), BusError> {
        Ok(())
    }

    /// The last heartbeat of every node of the cluster whose `ttl` has not passed,
    /// sorted by `node_id`.
    async fn nodes(&self) -> Result<Vec<NodeStats>, BusError> {
        Ok(Vec::new())
    }

    /// Removes this node's heartbeat (the node is leaving).
    async fn remove_node(&self) -> Result<(), BusError> {
        Ok(())
    }

    /// Whether the bus can serve (connected and subscribed).
    fn is_ready(&self) -> bool;

    /// Redis Cluster: every shard primary and whether the node's subscription connection
    /// to it answers; empty otherwise.
    fn shards(&self) -> Vec<ShardState> {
        Vec::new()
    }

    /// The bus's counters.
    fn stats(&self) -> &BusStats;

    /// Stops background work and removes this node's presence entries.
    async fn close(&self);
}
