//! [`MemoryBus`]: the bus of a standalone node. Same semantics as the Redis bus (offsets,
//! epochs, history caps, idempotency window, user-level presence events), in process.

use crate::bus::*;
use crate::common::{check_disconnect_code, lock, random_epoch};
use async_trait::async_trait;
use roomcast_protocol::{Count, Member, MemberChange, Publication, RoomName, UserId};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The dedupe and rooms maps are not swept below this many keys.
const SWEEP_MIN: usize = 1024;

/// The in-process bus. Every room has its own lock, held while its offset is assigned,
/// its history appended and the message handed to the node, so that delivery order is
/// offset order. The locks are std mutexes: nothing awaits while holding one.
pub struct MemoryBus {
    cfg: BusConfig,
    delivery: OnceLock<Arc<dyn EventSink>>,
    rooms: Mutex<HashMap<RoomName, Arc<Mutex<RoomLog>>>>,
    /// When the rooms map is swept of rooms whose history expired.
    rooms_sweep: SweepAt,
    dedupe: Mutex<HashMap<String, (Instant, PublishResult)>>,
    /// When the dedupe map is swept of keys past the window.
    dedupe_sweep: SweepAt,
    presence: Mutex<HashMap<RoomName, BTreeMap<UserId, HashSet<String>>>>,
    stats: BusStats,
    /// Set by [`Bus::close`]: from then on the bus says it is not ready. Nothing else
    /// stops: the bus runs no task.
    closed: AtomicBool,
    /// This node's heartbeat and when it expires: a standalone cluster is this node alone.
    node: Mutex<Option<(Instant, NodeStats)>>,
}

struct RoomLog {
    epoch: String,
    offset: u64,
    last_publish: Instant,
    messages: VecDeque<Arc<Publication>>,
}

/// When a map that grows between sweeps is swept next: once it holds twice what its
/// last sweep left (and at least [`SWEEP_MIN`]), so it stays bounded by twice its live
/// keys, at a constant cost per key amortised, whatever adds the keys.
struct SweepAt(AtomicUsize);

impl SweepAt {
    fn new() -> Self {
        SweepAt(AtomicUsize::new(SWEEP_MIN))
    }

    /// Whether a map of `len` keys is due.
    fn due(&self, len: usize) -> bool {
        len >= self.0.load(Ordering::Relaxed)
    }

    /// A sweep left `left` keys.
    fn swept(&self, left: usize) {
        self.0.store((left * 2).max(SWEEP_MIN), Ordering::Relaxed);
    }
}

impl RoomLog {
    fn new(now: Instant) -> Self {
        RoomLog {
            epoch: random_epoch(),
            offset: 0,
            last_publish: now,
            messages: VecDeque::new(),
        }
    }

    /// History older than the TTL is lost as a whole, as a Redis key expiring would be.
    fn expire(&mut self, now: Instant, ttl: Duration) {
        if self.offset > 0 && now.duration_since(self.last_publish) > ttl {
            *self = RoomLog::new(now);
        }
    }
}

impl MemoryBus {
    /// A bus with the given settings (only the history, dedupe and presence ones apply).
    pub fn new(cfg: BusConfig) -> Self {
        MemoryBus {
            cfg,
            delivery: OnceLock::new(),
            rooms: Mutex::new(HashMap::new()),
            rooms_sweep: SweepAt::new(),
            dedupe: Mutex::new(HashMap::new()),
            dedupe_sweep: SweepAt::new(),
            presence: Mutex::new(HashMap::new()),
            stats: BusStats::default(),
            closed: AtomicBool::new(false),
            node: Mutex::new(None),
        }
    }

    fn deliver(&self, event: BusEvent) {
        if let Some(d) = self.delivery.get() {
            BusStats::incr(&self.stats.messages_received);
            d.deliver(event);
        }
    }

    /// The log of `room`, made now if it has none. A new room may first sweep the map of
    /// rooms whose history expired (as their Redis keys would) and that no call holds.
    fn room(&self, room: &RoomName) -> Arc<Mutex<RoomLog>> {
        let mut rooms = lock(&self.rooms);
        if let Some(log) = rooms.get(room) {
            return log.clone();
        }
        let now = Instant::now();
        if self.rooms_sweep.due(rooms.len()) {
            let ttl = self.cfg.history_ttl;
            // Lock order: the map, then a room (as nowhere else is a room's lock held
            // while the map's is taken). A log only the map holds is locked by no one.
            rooms.retain(|_, log| {
                Arc::strong_count(log) > 1 || now.duration_since(lock(log).last_publish) <= ttl
            });
            self.rooms_sweep.swept(rooms.len());
        }
        let log = Arc::new(Mutex::new(RoomLog::new(now)));
        rooms.insert(room.clone(), log.clone());
        log
    }

    /// Remembers `key` or returns what it got the first time.
    fn dedupe_check(&self, key: &Option<String>) -> Option<PublishResult> {
        let key = key.as_ref()?;
        let now = Instant::now();
        let d = lock(&self.dedupe);
        match d.get(key) {
            Some((at, res)) if now.duration_since(*at) < self.cfg.dedupe_window => {
                Some(PublishResult {
                    duplicate: true,
                    ..res.clone()
                })
            }
            _ => None,
        }
    }

    fn dedupe_store(&self, key: &Option<String>, res: &PublishResult) {
        let Some(key) = key else { return };
        let now = Instant::now();
        let mut d = lock(&self.dedupe);
        d.insert(key.clone(), (now, res.clone()));
        // Publishes and sends alike: expired keys go whenever the map has doubled.
        if self.dedupe_sweep.due(d.len()) {
            let window = self.cfg.dedupe_window;
            d.retain(|_, (at, _)| now.duration_since(*at) < window);
            self.dedupe_sweep.swept(d.len());
        }
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn start(&self, delivery: Arc<dyn EventSink>) -> Result<(), BusError> {
        if self.delivery.set(delivery).is_err() {
            return Err(BusError::Internal("bus started twice".into()));
        }
        // No task: the dedupe and rooms maps are swept as they grow (see `SweepAt`).
        Ok(())
    }

    async fn publish(&self, req: PublishRequest) -> Result<PublishResult, BusError> {
        if let Some(dup) = self.dedupe_check(&req.idempotency_key) {
            return Ok(dup);
        }
        let room = self.room(&req.publication.room);
        let now = Instant::now();
        let result = {
            let mut log = lock(&room);
            log.expire(now, self.cfg.history_ttl);
            let mut p = req.publication;
            let offset = if req.volatile {
                p.offset = None;
                None
            } else {
                log.offset += 1;
                log.last_publish = now;
                p.offset = Some(log.offset);
                Some(log.offset)
            };
            let p = Arc::new(p);
            if offset.is_some() {
                log.messages.push_back(p.clone());
                while log.messages.len() > self.cfg.history_size {
                    log.messages.pop_front();
                }
            }
            let result = PublishResult {
                offset,
                epoch: log.epoch.clone(),
                duplicate: false,
            };
            // Delivered under the room's lock: delivery order is offset order.
            self.deliver(BusEvent::Message {
                publication: p,
                except_conn: req.skip,
            });
            result
        };
        self.dedupe_store(&req.idempotency_key, &result);
        Ok(result)
    }

    async fn send(&self, req: SendRequest) -> Result<SendResult, BusError> {
        if self.dedupe_check(&req.idempotency_key).is_some() {
            return Ok(SendResult { duplicate: true });
        }
        self.dedupe_store(
            &req.idempotency_key,
            &PublishResult {
                offset: None,
                epoch: String::new(),
                duplicate: false,
            },
        );
        self.deliver(BusEvent::Direct {
            to: req.to,
            message: Arc::new(req.message),
        });
        Ok(SendResult { duplicate: false })
    }

    async fn history(&self, room: &RoomName, query: HistoryQuery) -> Result<History, BusError> {
        let room = self.room(room);
        let mut log = lock(&room);
        log.expire(Instant::now(), self.cfg.history_ttl);
        let held = log.messages.len() as u64;
        let first_held = log.offset + 1 - held; // offset of the oldest message held
        let recent = |n: usize| -> Vec<Publication> {
            let skip = log.messages.len().saturating_sub(n);
            log.messages
                .iter()
                .skip(skip)
                .map(|p| (**p).clone())
                .collect()
        };
        if let Some(since) = &query.since {
            let same_epoch = since.epoch == log.epoch && since.offset <= log.offset;
            let missing = log.offset.saturating_sub(since.offset);
            if same_epoch
                && since.offset + 1 >= first_held
                && missing <= self.cfg.max_recover as u64
            {
                let messages = recent(missing as usize);
                return Ok(History {
                    epoch: log.epoch.clone(),
                    offset: log.offset,
                    messages,
                    recovered: true,
                });
            }
            let messages = if since.epoch != log.epoch {
                // The epoch was lost: the current one from its start (docs/protocol.md
                // section 3), up to the recovery limit.
                log.messages
                    .iter()
                    .take(self.cfg.max_recover)
                    .map(|p| (**p).clone())
                    .collect()
            } else {
                recent(query.limit)
            };
            return Ok(History {
                epoch: log.epoch.clone(),
                offset: log.offset,
                messages,
                recovered: false,
            });
        }
        let messages = recent(query.limit);
        Ok(History {
            epoch: log.epoch.clone(),
            offset: log.offset,
            messages,
            recovered: false,
        })
    }

    async fn presence_join(
        &self,
        room: &RoomName,
        user: &UserId,
        conn: &str,
    ) -> Result<(), BusError> {
        let first = {
            let mut p = lock(&self.presence);
            let conns = p
                .entry(room.clone())
                .or_default()
                .entry(user.clone())
                .or_default();
            let first = conns.is_empty();
            conns.insert(conn.to_string());
            first
        };
        if first {
            self.deliver(BusEvent::Member {
                change: MemberChange::Joined,
                room: room.clone(),
                user: user.clone(),
            });
        }
        Ok(())
    }

    async fn presence_leave(
        &self,
        room: &RoomName,
        user: &UserId,
        conn: &str,
    ) -> Result<(), BusError> {
        let last = {
            let mut p = lock(&self.presence);
            let Some(users) = p.get_mut(room) else {
                return Ok(());
            };
            let Some(conns) = users.get_mut(user) else {
                return Ok(());
            };
            let removed = conns.remove(conn);
            let last = removed && conns.is_empty();
            if conns.is_empty() {
                users.remove(user);
            }
            if users.is_empty() {
                p.remove(room);
            }
            last
        };
        if last {
            self.deliver(BusEvent::Member {
                change: MemberChange::Left,
                room: room.clone(),
                user: user.clone(),
            });
        }
        Ok(())
    }

    async fn presence(&self, room: &RoomName, limit: usize) -> Result<PresenceSnapshot, BusError> {
        let p = lock(&self.presence);
        let Some(users) = p.get(room) else {
            return Ok(PresenceSnapshot::default());
        };
        let count = Count {
            users: users.len() as u64,
            connections: users.values().map(|c| c.len() as u64).sum(),
        };
        let members = users
            .iter()
            .take(limit)
            .map(|(u, c)| Member {
                user: u.clone(),
                connections: c.len() as u32,
            })
            .collect();
        Ok(PresenceSnapshot { members, count })
    }

    async fn disconnect_user(&self, user: &UserId, code: u16) -> Result<(), BusError> {
        check_disconnect_code(code)?;
        self.deliver(BusEvent::Disconnect {
            user: user.clone(),
            code,
        });
        Ok(())
    }

    fn watch_room(&self, _room: &RoomName) {}

    fn unwatch_room(&self, _room: &RoomName) {}

    fn is_ready(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    async fn report_node(&self, stats: &NodeStats, ttl: Duration) -> Result<(), BusError> {
        let stats = NodeStats {
            node_id: self.cfg.node_id.clone(),
            ..stats.clone()
        };
        *lock(&self.node) = Some((Instant::now() + ttl, stats));
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeStats>, BusError> {
        let mut node = lock(&self.node);
        if node
            .as_ref()
            .is_some_and(|(until, _)| *until <= Instant::now())
        {
            *node = None;
        }
        Ok(node.iter().map(|(_, s)| s.clone()).collect())
    }

    async fn remove_node(&self) -> Result<(), BusError> {
        *lock(&self.node) = None;
        Ok(())
    }

    fn stats(&self) -> &BusStats {
        &self.stats
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod sweep_tests {
    use super::*;

    #[tokio::test]
    async fn sends_alone_keep_the_dedupe_map_bounded() {
        // Every key expires at once: however many sends, the map is swept as it grows.
        let bus = MemoryBus::new(BusConfig {
            dedupe_window: Duration::ZERO,
            ..BusConfig::default()
        });
        let user = UserId::new("bob").expect("user");
        for i in 0..10_000 {
            let req = SendRequest {
                to: user.clone(),
                message: roomcast_protocol::DirectMessage {
                    from: user.clone(),
                    event: roomcast_protocol::EventName::new("e").expect("event"),
                    data: serde_json::Value::Null,
                    ts: 0,
                },
                idempotency_key: Some(format!("bob:{i}")),
            };
            bus.send(req).await.expect("send");
        }
        assert!(lock(&bus.dedupe).len() <= 2 * SWEEP_MIN);
    }

    #[tokio::test]
    async fn rooms_whose_history_expired_are_swept_as_rooms_are_added() {
        // Every room's history expires at once: however many rooms are published to (one
        // message each, so no offset ever reaches a round number), the map stays bounded.
        let bus = MemoryBus::new(BusConfig {
            history_ttl: Duration::ZERO,
            ..BusConfig::default()
        });
        let user = UserId::new("bob").expect("user");
        for i in 0..10_000 {
            let room = RoomName::new(&format!("r{i}")).expect("room");
            let publication = Publication {
                room,
                event: roomcast_protocol::EventName::new("e").expect("event"),
                data: serde_json::Value::Null,
                from: user.clone(),
                offset: None,
                ts: 0,
            };
            bus.publish(PublishRequest {
                publication,
                skip: None,
                idempotency_key: None,
                volatile: false,
            })
            .await
            .expect("publish");
        }
        assert!(lock(&bus.rooms).len() <= 2 * SWEEP_MIN);
    }
}
