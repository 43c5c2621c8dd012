//! [`MemoryBus`]: the bus of a standalone node. Same semantics as the Redis bus (offsets,
//! epochs, history caps, idempotency window, user-level presence events), in process.

use crate::bus::*;
use async_trait::async_trait;
use roomcast_protocol::{Count, Member, Publication, RoomName, UserId};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The dedupe map is not swept below this many keys.
const DEDUPE_SWEEP_MIN: usize = 1024;

/// The in-process bus. Every room has its own lock, held while its offset is assigned,
/// its history appended and the message handed to the node, so that delivery order is
/// offset order. The locks are std mutexes: nothing awaits while holding one.
pub struct MemoryBus {
    cfg: BusConfig,
    delivery: OnceLock<Arc<dyn Delivery>>,
    rooms: Mutex<HashMap<RoomName, Arc<Mutex<RoomLog>>>>,
    dedupe: Mutex<HashMap<String, (Instant, PublishResult)>>,
    /// The dedupe map's size at which its expired keys are swept next (twice what was
    /// left after the last sweep): bounded, at a constant cost per key amortised.
    dedupe_sweep_at: std::sync::atomic::AtomicUsize,
    presence: Mutex<HashMap<RoomName, BTreeMap<UserId, HashSet<String>>>>,
    stats: BusStats,
    stop: CancellationToken,
    /// This node's heartbeat and when it expires: a standalone cluster is this node alone.
    node: Mutex<Option<(Instant, NodeStats)>>,
}

struct RoomLog {
    epoch: String,
    offset: u64,
    last_publish: Instant,
    messages: VecDeque<Arc<Publication>>,
}

impl RoomLog {
    fn new(now: Instant) -> Self {
        RoomLog {
            epoch: new_epoch(),
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

/// A fresh random epoch.
pub(crate) fn new_epoch() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

impl MemoryBus {
    /// A bus with the given settings (only the history, dedupe and presence ones apply).
    pub fn new(cfg: BusConfig) -> Self {
        MemoryBus {
            cfg,
            delivery: OnceLock::new(),
            rooms: Mutex::new(HashMap::new()),
            dedupe: Mutex::new(HashMap::new()),
            dedupe_sweep_at: std::sync::atomic::AtomicUsize::new(DEDUPE_SWEEP_MIN),
            presence: Mutex::new(HashMap::new()),
            stats: BusStats::default(),
            stop: CancellationToken::new(),
            node: Mutex::new(None),
        }
    }

    fn deliver(&self, event: BusEvent) {
        if let Some(d) = self.delivery.get() {
            BusStats::incr(&self.stats.messages_received);
            d.deliver(event);
        }
    }

    fn room(&self, room: &RoomName) -> Arc<Mutex<RoomLog>> {
        let mut rooms = lock(&self.rooms);
        rooms
            .entry(room.clone())
            .or_insert_with(|| Arc::new(Mutex::new(RoomLog::new(Instant::now()))))
            .clone()
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
        use std::sync::atomic::Ordering::Relaxed;
        let Some(key) = key else { return };
        let now = Instant::now();
        let mut d = lock(&self.dedupe);
        d.insert(key.clone(), (now, res.clone()));
        // Publishes and sends alike: expired keys go whenever the map has doubled.
        if d.len() >= self.dedupe_sweep_at.load(Relaxed) {
            let window = self.cfg.dedupe_window;
            d.retain(|_, (at, _)| now.duration_since(*at) < window);
            self.dedupe_sweep_at
                .store((d.len() * 2).max(DEDUPE_SWEEP_MIN), Relaxed);
        }
    }

    fn sweep(&self) {
        let now = Instant::now();
        lock(&self.dedupe).retain(|_, (at, _)| now.duration_since(*at) < self.cfg.dedupe_window);
        let ttl = self.cfg.history_ttl;
        lock(&self.rooms).retain(|_, log| {
            let log = lock(log);
            now.duration_since(log.last_publish) <= ttl
        });
    }
}

/// Locks a std mutex, recovering from poisoning (the data stays consistent: no critical
/// section here can panic half-way).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl Bus for MemoryBus {
    async fn start(&self, delivery: Arc<dyn Delivery>) -> Result<(), BusError> {
        if self.delivery.set(delivery).is_err() {
            return Err(BusError::Internal("bus started twice".into()));
        }
        // `start` is called on a bus inside an Arc by the gateway; the sweeper holds a weak
        // view through the stop token and a clone of what it needs is not available here,
        // so sweeping happens lazily on publish instead (see `publish`).
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
                skip: req.skip,
            });
            result
        };
        self.dedupe_store(&req.idempotency_key, &result);
        if result.offset.is_some_and(|o| o % 4096 == 0) {
            self.sweep();
        }
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
            self.deliver(BusEvent::MemberJoined {
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
            self.deliver(BusEvent::MemberLeft {
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
        if !roomcast_protocol::close::valid_for_disconnect(code) {
            return Err(BusError::Internal(format!(
                "close code {code} cannot end a disconnected user's connections"
            )));
        }
        self.deliver(BusEvent::Disconnect {
            user: user.clone(),
            code,
        });
        Ok(())
    }

    fn watch_room(&self, _room: &RoomName) {}

    fn unwatch_room(&self, _room: &RoomName) {}

    fn is_ready(&self) -> bool {
        !self.stop.is_cancelled()
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
        self.stop.cancel();
    }
}

#[cfg(test)]
mod dedupe_tests {
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
        assert!(lock(&bus.dedupe).len() <= 2 * DEDUPE_SWEEP_MIN);
    }
}
