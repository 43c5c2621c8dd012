//! [`RedisBus`]: the bus of a cluster (docs/protocol.md section 6).
//!
//! Connections: a multiplexed [`ConnectionManager`] for publishes and sends; room
//! publishes reach it through the publisher task (`publisher.rs`), which batches them
//! into one script call (Redis runs a script at a time, so a room's PUBLISH order is its
//! offset order); a
//! deadpool of multiplexed connections for everything else (history, presence, gap
//! repair); one dedicated pub/sub connection owned by the subscriber task.
//!
//! Layout: `keys.rs` names every key and channel, `scripts.rs` holds the Lua,
//! `envelope.rs` builds and reads envelopes, `publisher.rs` batches room publishes,
//! `subscriber.rs` receives and repairs
//! gaps, `presence.rs` keeps this node's presence entries alive.
//!
//! On a Redis Cluster (`RedisBus::connect_cluster`, docs/protocol.md section 6b) the
//! commands go through the redis crate's `ClusterConnection` (`conn.rs`), names carry
//! hash tags (`keys.rs`), the scripts SPUBLISH (`scripts.rs`), the publisher sends one
//! script call per slot (`publisher.rs`) and the subscriber SSUBSCRIBEs per slot on the
//! shard that owns it (`subscriber.rs`, `sharded.rs`).
//!
//! Every operation is bounded by `op_timeout` and fails with [`BusError::Unavailable`]
//! when Redis cannot be reached; nothing waits for Redis to come back.

mod conn;
mod envelope;
mod interest;
mod keys;
mod nodes;
mod presence;
mod publisher;
mod scripts;
mod sharded;
pub(crate) mod stream;
mod subscriber;
mod tracking;

use crate::bus::*;
use crate::memory::new_epoch;
use async_trait::async_trait;
use conn::Conn;
use keys::Keys;
use presence::LocalPresence;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, ServerErrorKind};
use roomcast_protocol::{BusMessage, Envelope, RoomName, UserId};
use scripts::Scripts;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracking::Tracking;

/// How often the command connection is pinged (readiness, and reconnecting it early).
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// Publishes queued for the publisher (and commands on the publish connection) before
/// callers wait for room.
const PUBLISH_QUEUE: usize = 1024;
/// Connections in the command pool.
const POOL_SIZE: usize = 16;

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
    stop: CancellationToken,
    tasks: TaskTracker,
    delivery: OnceLock<Arc<dyn Delivery>>,
    closed: AtomicBool,
    /// The pub/sub connection is subscribed (and repaired).
    sub_up: AtomicBool,
    /// The last command succeeded / the last health ping answered.
    cmd_up: AtomicBool,
    /// The readiness last reported with `BusEvent::State`.
    reported: Mutex<Option<bool>>,
    /// Rooms with local members, and how far each has been delivered (gap tracking).
    tracking: Tracking,
    presence: LocalPresence,
    /// Room publishes on their way to the publisher task (batched into script calls).
    publish_tx: mpsc::Sender<publisher::Job>,
    /// What every envelope of this node starts with (see `envelope::envelope_head`).
    envelope_head: Vec<u8>,
    /// Bad input read from Redis is logged at most once a while (see `subscriber::RateLog`).
    bad_log: subscriber::RateLog,
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
        pool: deadpool_redis::Pool,
    },
    /// A Redis Cluster: its seed URLs (the subscriber builds its own client from them),
    /// and the command connection, made at the first command that needs it (a node may
    /// start before the cluster answers).
    Cluster {
        seeds: Vec<String>,
        conn: tokio::sync::OnceCell<ClusterConnection>,
    },
}

/// Why one Redis call failed, before it becomes a [`BusError`].
pub(crate) enum OpError {
    Redis(RedisError),
    Pool(String),
    Bad(String),
}

impl From<RedisError> for OpError {
    fn from(e: RedisError) -> Self {
        OpError::Redis(e)
    }
}

impl From<deadpool_redis::PoolError> for OpError {
    fn from(e: deadpool_redis::PoolError) -> Self {
        OpError::Pool(e.to_string())
    }
}

/// Whether a Redis error means "Redis cannot serve now" rather than "this request is wrong".
fn is_unavailable(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::AuthenticationFailed
                | ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        )
}

fn warn_down(e: &dyn std::fmt::Display) {
    tracing::warn!(error = %e, "Redis does not answer yet; serving with /readyz 503 until it does");
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("{what}: {e}"))
}

impl RedisBus {
    /// Connects to Redis at `url` (`redis://[:password@]host:port[/db]`, or `rediss://`
    /// for TLS) and checks that it answers; fails with [`BusError::Unavailable`] when it
    /// does not within `cfg.op_timeout`, and [`BusError::Internal`] for a bad URL.
    pub async fn connect(url: &str, cfg: BusConfig) -> Result<Self, BusError> {
        if url.starts_with("rediss") && rustls::crypto::CryptoProvider::get_default().is_none() {
            // Another thread may win the race to install one: either is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client =
            redis::Client::open(url).map_err(|e| BusError::Internal(format!("redis url: {e}")))?;
        let op = cfg.op_timeout;
        let mgr_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(op))
            .set_response_timeout(Some(op))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1))
            // many concurrent publishes queue here before they pipeline on the socket
            .set_pipeline_buffer_size(PUBLISH_QUEUE)
            .set_write_backpressure_boundary(64 * 1024);
        // Lazy: a node may start before Redis does (compose, k8s); it serves with /readyz
        // 503 and the subscriber and health tasks connect when Redis answers.
        let publisher =
            redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), mgr_cfg)
                .map_err(|e| BusError::Internal(format!("connect: {e}")))?;
        let conn_cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(op))
            .set_response_timeout(Some(op));
        let manager = deadpool_redis::Manager::new_with_config(
            client.get_connection_info().clone(),
            conn_cfg,
        )
        .map_err(|e| BusError::Internal(format!("redis pool: {e}")))?;
        let pool = deadpool_redis::Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_redis::Runtime::Tokio1)
            .wait_timeout(Some(op))
            .create_timeout(Some(op))
            .recycle_timeout(Some(op))
            .build()
            .map_err(|e| BusError::Internal(format!("redis pool: {e}")))?;
        let backend = Backend::Single {
            client,
            publisher,
            pool,
        };
        Self::with_backend(backend, cfg).await
    }

    /// Connects to a Redis Cluster (7.0 or newer) through `seeds` (`redis://` URLs of
    /// any of its nodes): names carry hash tags, publishes SPUBLISH, and the node listens
    /// with sharded subscriptions per room and user (rooms mode, whatever `cfg.subscribe`
    /// says). A cluster that does not answer yet is waited for, as one Redis is.
    pub async fn connect_cluster(seeds: &[String], mut cfg: BusConfig) -> Result<Self, BusError> {
        if seeds.is_empty() {
            return Err(BusError::Internal("no redis cluster url".into()));
        }
        if seeds.iter().any(|u| u.starts_with("rediss"))
            && rustls::crypto::CryptoProvider::get_default().is_none()
        {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        for s in seeds {
            redis::Client::open(s.as_str())
                .map_err(|e| BusError::Internal(format!("redis cluster url {s:?}: {e}")))?;
        }
        cfg.subscribe = SubscribeMode::Rooms;
        let backend = Backend::Cluster {
            seeds: seeds.to_vec(),
            conn: tokio::sync::OnceCell::new(),
        };
        Self::with_backend(backend, cfg).await
    }

    async fn with_backend(backend: Backend, cfg: BusConfig) -> Result<Self, BusError> {
        let op = cfg.op_timeout;
        let cluster = matches!(backend, Backend::Cluster { .. });
        let stop = CancellationToken::new();
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
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
            envelope_head,
            bad_log: subscriber::RateLog::default(),
        });
        shared.tasks.spawn(publisher::run(shared.clone(), publish_rx));
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

/// Locks a std mutex, recovering from poisoning (no critical section here can leave
/// its data half-changed).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Rooms mode: waits until `channel`'s subscription is confirmed (at most the
    /// operation timeout).
    async fn channel_ready(&self, channel: String, kind: interest::Kind) -> Result<(), BusError> {
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

    /// Rooms mode: sets the gauges of subscribed room and user channels.
    fn count_subscriptions(&self) {
        let (rooms, users) = self.interest.counts();
        self.stats.subscribed_rooms.store(rooms, Ordering::Relaxed);
        self.stats.subscribed_users.store(users, Ordering::Relaxed);
    }

    /// Runs one Redis operation under the timeout, mapping its failure and keeping the
    /// command connection's health up to date.
    pub(crate) async fn run<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, OpError>>,
    ) -> Result<T, BusError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BusError::Unavailable("the bus is closed".into()));
        }
        match tokio::time::timeout(self.cfg.op_timeout, fut).await {
            Ok(Ok(v)) => {
                self.set_cmd_up(true);
                Ok(v)
            }
            Ok(Err(OpError::Redis(e))) if is_unavailable(&e) => {
                self.set_cmd_up(false);
                Err(unavailable(what, e))
            }
            Ok(Err(OpError::Redis(e))) => Err(BusError::Internal(format!("{what}: {e}"))),
            Ok(Err(OpError::Pool(e))) => {
                self.set_cmd_up(false);
                Err(unavailable(what, e))
            }
            Ok(Err(OpError::Bad(e))) => Err(BusError::Internal(format!("{what}: {e}"))),
            Err(_) => {
                self.set_cmd_up(false);
                Err(BusError::Unavailable(format!("{what}: timed out")))
            }
        }
    }

    /// A command connection (one Redis: from the pool, back in it when dropped). It is
    /// multiplexed: batches clone it so that their commands pipeline.
    pub(crate) async fn conn(&self) -> Result<Conn, OpError> {
        match &self.backend {
            Backend::Single { pool, .. } => Ok(Conn::Pooled(pool.get().await?)),
            Backend::Cluster { .. } => self.cluster_conn().await,
        }
    }

    /// The connection publishes and sends go on.
    pub(crate) async fn pub_conn(&self) -> Result<Conn, OpError> {
        match &self.backend {
            Backend::Single { publisher, .. } => Ok(Conn::Manager(publisher.clone())),
            Backend::Cluster { .. } => self.cluster_conn().await,
        }
    }

    /// The cluster's command connection, made now if it is not yet.
    async fn cluster_conn(&self) -> Result<Conn, OpError> {
        let Backend::Cluster { seeds, conn } = &self.backend else {
            return Err(OpError::Bad("not a cluster".into()));
        };
        let c = conn
            .get_or_try_init(|| async {
                sharded::client(seeds, &self.cfg, None)?
                    .get_async_connection()
                    .await
            })
            .await?;
        Ok(Conn::Cluster(c.clone()))
    }

    /// Whether the bus runs on a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster { .. })
    }

    pub(crate) fn deliver(&self, event: BusEvent) {
        if let Some(d) = self.delivery.get() {
            d.deliver(event);
        }
    }

    fn set_cmd_up(&self, up: bool) {
        if self.cmd_up.swap(up, Ordering::AcqRel) != up {
            self.report_state();
        }
    }

    pub(crate) fn set_sub_up(&self, up: bool) {
        self.sub_up.store(up, Ordering::Release);
        self.report_state();
    }

    fn ready(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
            && self.sub_up.load(Ordering::Acquire)
            && self.cmd_up.load(Ordering::Acquire)
    }

    /// Emits `State` when readiness changed since it was last reported. The lock makes
    /// two tasks reporting at once agree on one sequence; `deliver` does not block.
    fn report_state(&self) {
        if self.delivery.get().is_none() {
            return;
        }
        if self.closed.load(Ordering::Acquire) {
            // Closed on purpose (the node is stopping): not an outage, so the node is not
            // told "down" (it would log a failure); `close` logs "redis bus closed" and
            // `is_ready` answers false from now on.
            return;
        }
        let mut reported = lock(&self.reported);
        let up = self.ready();
        if *reported != Some(up) {
            *reported = Some(up);
            tracing::info!(up, "redis bus state");
            self.deliver(BusEvent::State { up });
        }
    }

    fn ms(d: Duration) -> u64 {
        (d.as_millis() as u64).max(1)
    }

    /// PINGs the publish connection; on a cluster every primary (not every node: a dead
    /// replica costs no readiness).
    pub(crate) async fn ping(&self) -> Result<(), OpError> {
        let mut c = self.pub_conn().await?;
        if let Conn::Cluster(c) = &mut c {
            let primaries = redis::cluster_routing::RoutingInfo::MultiNode((
                redis::cluster_routing::MultipleNodeRoutingInfo::AllMasters,
                Some(redis::cluster_routing::ResponsePolicy::AllSucceeded),
            ));
            c.route_command(redis::cmd("PING"), primaries).await?;
            return Ok(());
        }
        redis::cmd("PING").query_async::<String>(&mut c).await?;
        Ok(())
    }

    /// Makes sure the publish connection works before the bus says it is up: after an
    /// outage its old socket is dead, and the first command on it fails (and makes the
    /// manager reconnect), so a failed ping is retried once.
    pub(crate) async fn warm_publisher(&self) -> Result<(), BusError> {
        let ping = || self.run("ping", self.ping());
        match ping().await {
            Ok(_) => Ok(()),
            Err(_) => ping().await.map(|_| ()),
        }
    }

    /// Pings the command connection every [`HEALTH_EVERY`].
    async fn health(self: Arc<Self>) {
        let mut tick = tokio::time::interval(HEALTH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let r = self.run("health ping", self.ping()).await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "redis health ping failed");
            }
        }
        tracing::debug!("redis health task stopped");
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn start(&self, delivery: Arc<dyn Delivery>) -> Result<(), BusError> {
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
        let r = self.publish_inner(req).await;
        if r.is_err() {
            BusStats::incr(&self.shared.stats.publish_errors);
        }
        r
    }

    async fn send(&self, req: SendRequest) -> Result<SendResult, BusError> {
        let shared = &self.shared;
        let r = async {
            let m = req.message;
            let payload = envelope::encode(
                &shared.cfg.node_id,
                BusMessage::Direct {
                    to: req.to.clone(),
                    from: m.from,
                    event: m.event,
                    data: m.data,
                    ts: m.ts,
                },
            )?;
            let mut inv = shared.scripts.send.prepare_invoke();
            inv.key(shared.keys.user_channel(&req.to));
            if let Some(k) = &req.idempotency_key {
                inv.key(shared.keys.send_dedupe(&req.to, k));
            }
            inv.arg(payload).arg(Shared::ms(shared.cfg.dedupe_window));
            let dup: i64 = shared
                .run("send", async {
                    let mut c = shared.pub_conn().await?;
                    inv.invoke_async(&mut c).await.map_err(OpError::from)
                })
                .await?;
            Ok(SendResult {
                duplicate: dup == 1,
            })
        }
        .await;
        if r.is_err() {
            BusStats::incr(&shared.stats.publish_errors);
        }
        r
    }

    async fn history(&self, room: &RoomName, query: HistoryQuery) -> Result<History, BusError> {
        let shared = &self.shared;
        let mut inv = shared.scripts.history.prepare_invoke();
        inv.key(shared.keys.meta(room)).key(shared.keys.history(room));
        inv.arg(new_epoch())
            .arg(Shared::ms(shared.cfg.history_ttl))
            .arg(shared.cfg.history_size)
            .arg(
                query
                    .since
                    .as_ref()
                    .map(|s| s.offset.to_string())
                    .unwrap_or_default(),
            )
            .arg(query.since.as_ref().map(|s| s.epoch.as_str()).unwrap_or(""))
            .arg(query.limit)
            .arg(shared.cfg.max_recover);
        let (epoch, offset, recovered, entries): (String, u64, u8, Vec<Vec<u8>>) = shared
            .run("history", async {
                let mut c = shared.conn().await?;
                Ok(inv.invoke_async(&mut c).await?)
            })
            .await?;
        // A member of a watched room now holds this epoch (see `Tracking::note_read`).
        shared.tracking.note_read(room, offset, &epoch);
        let mut messages = Vec::with_capacity(entries.len());
        for raw in entries {
            match Envelope::from_msgpack(&raw)
                .ok()
                .and_then(|e| envelope::room_message(e.msg))
            {
                Some(m) => messages.push(m.publication),
                None => {
                    BusStats::incr(&shared.stats.bad_envelopes);
                    shared
                        .bad_log
                        .warn("undecodable history entry skipped", room.as_str(), "");
                }
            }
        }
        Ok(History {
            epoch,
            offset,
            messages,
            recovered: recovered == 1,
        })
    }

    async fn presence_join(
        &self,
        room: &RoomName,
        user: &UserId,
        conn: &str,
    ) -> Result<(), BusError> {
        presence::join(&self.shared, room, user, conn).await
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
        let shared = &self.shared;
        // Every node would drop it (docs/protocol.md section 6): say so here instead.
        if !roomcast_protocol::close::valid_for_disconnect(code) {
            return Err(BusError::Internal(format!(
                "close code {code} cannot end a disconnected user's connections"
            )));
        }
        let payload = envelope::encode(
            &shared.cfg.node_id,
            BusMessage::Disconnect {
                user: user.clone(),
                code,
            },
        )?;
        let channel = shared.keys.control_channel();
        shared
            .run("disconnect", async move {
                let mut c = shared.pub_conn().await?;
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(payload)
                    .query_async::<i64>(&mut c)
                    .await
                    .map_err(OpError::from)
            })
            .await?;
        Ok(())
    }

    fn watch_room(&self, room: &RoomName) {
        self.shared.tracking.watch(room);
        if self.shared.cfg.subscribe == SubscribeMode::Rooms {
            self.shared
                .interest
                .want(self.shared.keys.room_channel(room), interest::Kind::Room);
        }
    }

    fn unwatch_room(&self, room: &RoomName) {
        self.shared.tracking.unwatch(room);
        if self.shared.cfg.subscribe == SubscribeMode::Rooms {
            self.shared
                .interest
                .unwant(&self.shared.keys.room_channel(room));
        }
    }

    async fn room_ready(&self, room: &RoomName) -> Result<(), BusError> {
        if self.shared.cfg.subscribe != SubscribeMode::Rooms {
            return Ok(());
        }
        let channel = self.shared.keys.room_channel(room);
        self.shared
            .channel_ready(channel, interest::Kind::Room)
            .await
    }

    async fn user_ready(&self, user: &UserId) -> Result<(), BusError> {
        if self.shared.cfg.subscribe != SubscribeMode::Rooms {
            return Ok(());
        }
        let channel = self.shared.keys.user_channel(user);
        self.shared
            .channel_ready(channel, interest::Kind::User)
            .await
    }

    fn watch_user(&self, user: &UserId) {
        if self.shared.cfg.subscribe == SubscribeMode::Rooms {
            self.shared
                .interest
                .want(self.shared.keys.user_channel(user), interest::Kind::User);
        }
    }

    fn unwatch_user(&self, user: &UserId) {
        if self.shared.cfg.subscribe == SubscribeMode::Rooms {
            self.shared
                .interest
                .unwant(&self.shared.keys.user_channel(user));
        }
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

impl RedisBus {
    async fn publish_inner(&self, req: PublishRequest) -> Result<PublishResult, BusError> {
        let shared = &self.shared;
        let room = &req.publication.room;
        let parts = envelope::split_message(&req.publication, req.skip.as_deref())?;
        let (reply, answer) = oneshot::channel();
        let job = publisher::Job {
            meta: shared.keys.meta(room),
            history: shared.keys.history(room),
            channel: shared.keys.room_channel(room),
            dedupe: req
                .idempotency_key
                .as_deref()
                .map(|k| shared.keys.publish_dedupe(room, k)),
            slot: shared.keys.room_slot(room),
            envelope: parts,
            volatile: req.volatile,
            reply,
        };
        if shared.closed.load(Ordering::Acquire) {
            return Err(BusError::Unavailable("the bus is closed".into()));
        }
        // Bounded: a full queue waits (up to the timeout) rather than piling up.
        let queued = tokio::time::timeout(shared.cfg.op_timeout, async {
            shared.publish_tx.send(job).await.is_ok()
        })
        .await;
        match queued {
            Ok(true) => {}
            Ok(false) => return Err(BusError::Unavailable("the bus is closed".into())),
            Err(_) => return Err(BusError::Unavailable("publish: queue full".into())),
        }
        let (dup, result) = match answer.await {
            Ok(r) => r?,
            Err(_) => return Err(BusError::Unavailable("the bus is closed".into())),
        };
        let (offset, epoch) = result
            .split_once(':')
            .ok_or_else(|| BusError::Internal(format!("publish: unexpected reply {result:?}")))?;
        let offset = if offset.is_empty() {
            None
        } else {
            Some(
                offset
                    .parse::<u64>()
                    .map_err(|_| BusError::Internal(format!("publish: bad offset {offset:?}")))?,
            )
        };
        Ok(PublishResult {
            offset,
            epoch: epoch.to_string(),
            duplicate: dup == 1,
        })
    }
}
