//! [`RedisBus`]: the bus of a cluster (docs/protocol.md section 6).
//!
//! Connections: a multiplexed [`ConnectionManager`] for publishes and sends; room
//! publishes reach it through the publisher task (`publisher.rs`), which batches them
//! into one script call (Redis runs a script at a time, so a room's PUBLISH order is its
//! offset order); a deadpool of multiplexed connections for everything else (history,
//! presence, gap repair); one dedicated pub/sub connection owned by the subscriber task.
//!
//! Layout: this file holds the bus, the state its tasks share ([`Shared`]) and the
//! [`Bus`] impl, which hands each operation to the file that does it:
//! - `connect.rs` opens the bus on one Redis or a cluster; `ops.rs` runs one Redis
//!   operation (connection, timeout, errors); `health.rs` keeps readiness;
//! - `publisher.rs` batches room publishes into script calls; `direct.rs` sends to users
//!   and disconnects them; `history.rs` reads a room's history; `presence.rs` keeps
//!   this node's presence entries alive; `nodes.rs` the cluster's node list;
//! - `subscriber/` receives what other nodes publish and repairs gaps; `tracking.rs`
//!   knows how far each watched room was delivered; `interest.rs` which channels rooms
//!   mode needs; `bad_input.rs` counts and logs what Redis sent that is not valid;
//! - `keys.rs` names every key and channel, `scripts.rs` holds the Lua, `envelope.rs`
//!   builds and reads envelopes, `stream.rs` reads streams for the gateway's consumers.
//!
//! On a Redis Cluster (`RedisBus::connect_cluster`, docs/protocol.md section 6b) the
//! commands go through the redis crate's `ClusterConnection` (`conn.rs`), names carry
//! hash tags (`keys.rs`), the scripts SPUBLISH (`scripts.rs`), the publisher sends one
//! script call per slot (`publisher.rs`) and the subscriber SSUBSCRIBEs per slot on the
//! shard that owns it (`subscriber/`, `sharded.rs`).
//!
//! Every operation is bounded by `op_timeout` and fails with [`BusError::Unavailable`]
//! when Redis cannot be reached; nothing waits for Redis to come back.

mod bad_input;
mod batch;
mod conn;
mod connect;
mod direct;
mod envelope;
mod health;
mod history;
mod interest;
mod joiner;
mod keys;
mod nodes;
mod ops;
mod pool;
mod presence;
mod publisher;
mod scripts;
mod sharded;
pub(crate) mod stream;
mod subscriber;
mod tracking;

use crate::bus::*;
use crate::common::lock;
use async_trait::async_trait;
use keys::Keys;
use ops::{is_unavailable, OpError};
use presence::LocalPresence;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, RedisError};
use roomcast_protocol::{RoomName, UserId};
use scripts::Scripts;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracking::Tracking;

/// Publishes queued for the publisher (and commands on the publish connection) before
/// callers wait for room.
const PUBLISH_QUEUE: usize = 1024;

/// The Redis bus. Dropping it without [`Bus::close`] stops its tasks but leaves its
/// presence entries to expire, as a crashed node's would.
pub struct RedisBus {
    shared: Arc<Shared>,
    _stop_on_drop: DropGuard,
}

/// What the bus handle and its tasks (publisher, subscriber, health, presence refresher)
/// share: settings, connections, readiness, room tracking and subscriptions.
pub(crate) struct Shared {
    cfg: BusConfig,
    keys: Keys,
    scripts: Scripts,
    backend: Backend,
    stats: BusStats,
    /// Cancelled by `close` (or by dropping the bus): every task below stops.
    stop: CancellationToken,
    /// The bus's tasks (publisher, subscriber, health, presence refresher): `close`
    /// waits for them.
    tasks: TaskTracker,
    /// The node's side, set once by `start`.
    delivery: OnceLock<Arc<dyn EventSink>>,
    /// Set by `close`: operations fail as unavailable and readiness is false from then on.
    closed: AtomicBool,
    /// The pub/sub connection is subscribed (and repaired).
    sub_up: AtomicBool,
    /// The last command succeeded / the last health ping answered.
    cmd_up: AtomicBool,
    /// The readiness last reported with `BusEvent::State`.
    reported: Mutex<Option<bool>>,
    /// Rooms with local members, and how far each has been delivered (gap tracking).
    tracking: Tracking,
    /// This node's presence entries (refreshed, and removed on close).
    presence: LocalPresence,
    /// Room publishes on their way to the publisher task (batched into script calls).
    publish_tx: mpsc::Sender<publisher::Job>,
    /// First joins on their way to the joiner task (batched into script calls).
    join_tx: mpsc::Sender<joiner::Job>,
    /// What every envelope of this node starts with (see `envelope::envelope_head`).
    envelope_head: Vec<u8>,
    /// Bad input read from Redis is logged at most once a while (see `bad_input::RateLog`).
    bad_log: bad_input::RateLog,
    /// Rooms mode: the room and user channels this node's members need.
    interest: interest::Interest,
    /// Redis Cluster: the shards and their state, as the subscriber last saw them.
    shards: Mutex<Vec<ShardState>>,
}

/// Where the bus's commands (and subscriptions) go.
pub(crate) enum Backend {
    /// One Redis.
    Single {
        client: redis::Client,
        publisher: ConnectionManager,
        pool: pool::Pool,
    },
    /// A Redis Cluster: its seed URLs (the subscriber builds its own client from them),
    /// and the command connection, made at the first command that needs it (a node may
    /// start before the cluster answers).
    Cluster {
        seeds: Vec<String>,
        conn: tokio::sync::OnceCell<ClusterConnection>,
    },
}

fn warn_down(e: &dyn std::fmt::Display) {
    tracing::warn!(error = %e, "Redis does not answer yet; serving with /readyz 503 until it does");
}

impl RedisBus {
    async fn with_backend(backend: Backend, cfg: BusConfig) -> Result<Self, BusError> {
        let op = cfg.op_timeout;
        let cluster = matches!(backend, Backend::Cluster { .. });
        let stop = CancellationToken::new();
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (join_tx, join_rx) = mpsc::channel(PUBLISH_QUEUE);
        let envelope_head = envelope::envelope_head(&cfg.node_id)?;
        let shared = Arc::new(Shared {
            keys: if cluster {
                Keys::cluster(&cfg.prefix)
            } else {
                Keys::new(&cfg.prefix)
            },
            presence: LocalPresence::default(),
            cfg,
            scripts: Scripts::new(cluster),
            backend,
            stats: BusStats::default(),
            stop: stop.clone(),
            tasks: TaskTracker::new(),
            delivery: OnceLock::new(),
            closed: AtomicBool::new(false),
            sub_up: AtomicBool::new(false),
            cmd_up: AtomicBool::new(true),
            reported: Mutex::new(None),
            tracking: Tracking::new(),
            interest: interest::Interest::default(),
            shards: Mutex::new(Vec::new()),
            publish_tx,
            join_tx,
            envelope_head,
            bad_log: bad_input::RateLog::default(),
        });
        shared
            .tasks
            .spawn(publisher::run(shared.clone(), publish_rx));
        shared.tasks.spawn(joiner::run(shared.clone(), join_rx));
        // Say now, not at the first publish, when the URL or the password is wrong; a
        // Redis that is down is waited for (the health task marks the bus up when it is).
        let ping = async {
            match shared.ping().await {
                Ok(()) => Ok(()),
                Err(OpError::Redis(e)) => Err(e),
                Err(OpError::Pool(e) | OpError::Bad(e)) => {
                    Err(RedisError::from((ErrorKind::Io, "connect", e)))
                }
            }
        };
        match tokio::time::timeout(op, ping).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == ErrorKind::AuthenticationFailed => {
                return Err(BusError::Internal(format!("redis auth: {e}")))
            }
            Ok(Err(e)) if is_unavailable(&e) => warn_down(&e),
            Ok(Err(e)) => return Err(BusError::Internal(format!("redis: {e}"))),
            Err(_) => warn_down(&"ping timed out"),
        }
        Ok(RedisBus {
            shared,
            _stop_on_drop: stop.drop_guard(),
        })
    }
}

impl Shared {
    /// Rooms mode: waits until `channel`'s subscription is confirmed (at most the
    /// operation timeout). Pattern mode: ready now.
    async fn channel_ready(&self, channel: String, kind: interest::Kind) -> Result<(), BusError> {
        if !self.rooms_mode() {
            return Ok(());
        }
        let Some(confirmed) = self.interest.ready(&channel, kind) else {
            return Ok(());
        };
        match tokio::time::timeout(self.cfg.op_timeout, confirmed).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(BusError::Unavailable(format!(
                "subscribing to {channel}: given up"
            ))),
            Err(_) => Err(BusError::Unavailable(format!(
                "subscribing to {channel}: not confirmed in time"
            ))),
        }
    }

    /// Rooms mode: the node's members need `channel` (subscribed by the subscriber).
    fn want(&self, channel: String, kind: interest::Kind) {
        if self.rooms_mode() {
            self.interest.want(channel, kind);
        }
    }

    /// Rooms mode: the node's members no longer need `channel` (it lingers, then goes).
    fn unwant(&self, channel: &str) {
        if self.rooms_mode() {
            self.interest.unwant(channel);
        }
    }

    /// Rooms mode: sets the gauges of subscribed room and user channels.
    fn count_subscriptions(&self) {
        let (rooms, users) = self.interest.counts();
        self.stats.subscribed_rooms.store(rooms, Ordering::Relaxed);
        self.stats.subscribed_users.store(users, Ordering::Relaxed);
    }
    /// Whether the node subscribes per room and user (rooms mode, always on a cluster).
    fn rooms_mode(&self) -> bool {
        self.cfg.subscribe == SubscribeMode::Rooms
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn start(&self, delivery: Arc<dyn EventSink>) -> Result<(), BusError> {
        let shared = &self.shared;
        if shared.delivery.set(delivery.clone()).is_err() {
            return Err(BusError::Internal("bus started twice".into()));
        }
        let Some(baseline_rx) = shared.tracking.take_baselines() else {
            return Err(BusError::Internal("bus started twice".into()));
        };
        let (first_tx, first_rx) = oneshot::channel();
        shared.tasks.spawn(subscriber::run(
            shared.clone(),
            delivery,
            baseline_rx,
            first_tx,
        ));
        shared.tasks.spawn(shared.clone().health());
        shared.tasks.spawn(presence::keep_alive(shared.clone()));
        // Publishing before the subscription is in place would lose this node's own
        // messages: wait for it (the task keeps trying if this times out).
        match tokio::time::timeout(shared.cfg.op_timeout, first_rx).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(BusError::Unavailable(
                "cannot subscribe to Redis yet; still trying".into(),
            )),
            _ => Err(BusError::Unavailable(
                "subscribing to Redis timed out; still trying".into(),
            )),
        }
    }

    async fn publish(&self, req: PublishRequest) -> Result<PublishResult, BusError> {
        let r = publisher::publish(&self.shared, req).await;
        if r.is_err() {
            BusStats::incr(&self.shared.stats.publish_errors);
        }
        r
    }

    async fn send(&self, req: SendRequest) -> Result<SendResult, BusError> {
        direct::send(&self.shared, req).await
    }

    async fn history(&self, room: &RoomName, query: HistoryQuery) -> Result<History, BusError> {
        history::read(&self.shared, room, query).await
    }

    async fn presence_join(
        &self,
        room: &RoomName,
        user: &UserId,
        conn: &str,
    ) -> Result<(), BusError> {
        presence::join(&self.shared, room, user, conn).await
    }

    async fn join_room(
        &self,
        room: &RoomName,
        user: &UserId,
        conn: &str,
        query: HistoryQuery,
    ) -> Result<History, BusError> {
        joiner::join(&self.shared, room, user, conn, query).await
    }

    async fn presence_leave(
        &self,
        room: &RoomName,
        user: &UserId,
        conn: &str,
    ) -> Result<(), BusError> {
        presence::leave(&self.shared, room, user, conn).await
    }

    async fn presence(&self, room: &RoomName, limit: usize) -> Result<PresenceSnapshot, BusError> {
        presence::read(&self.shared, room, limit).await
    }

    async fn disconnect_user(&self, user: &UserId, code: u16) -> Result<(), BusError> {
        direct::disconnect(&self.shared, user, code).await
    }

    fn watch_room(&self, room: &RoomName) {
        let shared = &self.shared;
        shared.tracking.watch(room);
        shared.want(shared.keys.room_channel(room), interest::Kind::Room);
    }

    fn unwatch_room(&self, room: &RoomName) {
        let shared = &self.shared;
        shared.tracking.unwatch(room);
        shared.unwant(&shared.keys.room_channel(room));
    }

    async fn room_ready(&self, room: &RoomName) -> Result<(), BusError> {
        let shared = &self.shared;
        (shared.channel_ready(shared.keys.room_channel(room), interest::Kind::Room)).await
    }

    async fn user_ready(&self, user: &UserId) -> Result<(), BusError> {
        let shared = &self.shared;
        (shared.channel_ready(shared.keys.user_channel(user), interest::Kind::User)).await
    }

    fn watch_user(&self, user: &UserId) {
        let shared = &self.shared;
        shared.want(shared.keys.user_channel(user), interest::Kind::User);
    }

    fn unwatch_user(&self, user: &UserId) {
        let shared = &self.shared;
        shared.unwant(&shared.keys.user_channel(user));
    }

    async fn report_node(&self, stats: &NodeStats, ttl: Duration) -> Result<(), BusError> {
        nodes::report(&self.shared, stats, ttl).await
    }

    async fn nodes(&self) -> Result<Vec<NodeStats>, BusError> {
        nodes::list(&self.shared).await
    }

    async fn remove_node(&self) -> Result<(), BusError> {
        nodes::remove(&self.shared).await
    }

    fn is_ready(&self) -> bool {
        self.shared.ready()
    }

    fn shards(&self) -> Vec<ShardState> {
        lock(&self.shared.shards).clone()
    }

    fn stats(&self) -> &BusStats {
        &self.shared.stats
    }

    async fn close(&self) {
        let shared = &self.shared;
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        // Remove this node's presence first (it publishes member_left), then stop.
        presence::remove_all(shared).await;
        shared.closed.store(true, Ordering::Release);
        shared.stop.cancel();
        shared.tasks.close();
        if tokio::time::timeout(shared.cfg.op_timeout, shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("redis bus tasks did not stop in time");
        }
        tracing::info!("redis bus closed");
    }
}
