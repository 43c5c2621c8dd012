//! The room hub: which local connections are in which rooms and which belong to which
//! user, and the fan-out of bus events to them. Each message is encoded once per wire
//! format and the same bytes go to every recipient; a recipient whose queue is full is
//! never awaited: volatile messages are dropped for it, anything else closes it (4008).

use crate::metrics::Metrics;
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use futures_util::StreamExt;
use roomcast_protocol::{
    close, Count, Encoding, MessageFrame, Publication, RoomName, ServerMessage, UserId,
};
use roomcast_redis_bridge::{Bus, BusEvent, Delivery};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

/// How a connection wants its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// WebSocket, JSON text frames.
    Json,
    /// WebSocket, MessagePack binary frames.
    MsgPack,
    /// Server-Sent Events (JSON data lines).
    Sse,
}

impl From<Encoding> for Wire {
    fn from(e: Encoding) -> Self {
        match e {
            Encoding::Json => Wire::Json,
            Encoding::MsgPack => Wire::MsgPack,
        }
    }
}

/// Encoded bytes ready for one wire format, cheap to clone.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A text frame (JSON) or an SSE event.
    Text(Utf8Bytes),
    /// A binary frame (MessagePack).
    Binary(Bytes),
}

impl Payload {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Payload::Text(t) => t.len(),
            Payload::Binary(b) => b.len(),
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One encoded frame, shared by every recipient of the same wire format.
#[derive(Debug)]
pub struct Frame {
    /// The room of a room message; lets a session drop messages of rooms it left.
    pub room: Option<RoomName>,
    /// The message's offset (none when volatile or not a room message): lets a
    /// recovering join drop what it already replayed.
    pub offset: Option<u64>,
    /// The bytes.
    pub payload: Payload,
}

/// One item of a connection's outbound queue: a pointer to a shared frame, so that a
/// queue slot is one word and a fan-out to n members is n reference-count increments.
pub type Outbound = Arc<Frame>;

/// A connection's inbox: its bounded queue of frames and a close request, behind one
/// small lock and one wake-up, so that an idle connection waits on a single future.
#[derive(Debug)]
pub struct Mailbox {
    queue: Mutex<VecDeque<Outbound>>,
    cap: usize,
    /// The one reader's waker (its session or SSE stream): lighter than a `Notify`, and
    /// the reader's future stays a pointer wide (it is in every idle connection).
    waker: AtomicWaker,
    kick: AtomicU16,
    closed: AtomicBool,
}

/// What a connection's task takes from its mailbox.
#[derive(Debug)]
pub enum Mail {
    /// A frame to write.
    Frame(Outbound),
    /// Close with this code.
    Kick(u16),
}

impl Mailbox {
    /// An empty mailbox holding at most `cap` frames.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Mailbox {
            queue: Mutex::new(VecDeque::new()),
            cap: cap.max(1),
            waker: AtomicWaker::new(),
            kick: AtomicU16::new(0),
            closed: AtomicBool::new(false),
        })
    }

    /// Asks the connection to close with `code` (the first code asked wins).
    pub fn kick(&self, code: u16) {
        if self
            .kick
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.waker.wake();
        }
    }

    /// Queues a frame without waiting. A full queue drops a volatile frame and closes the
    /// connection (4008) for anything else. Returns whether it was queued.
    fn push(&self, item: Outbound, volatile: bool, metrics: &Metrics) -> bool {
        if self.closed.load(Ordering::Relaxed) || self.kick.load(Ordering::Relaxed) != 0 {
            return false;
        }
        {
            let mut q = lock(&self.queue);
            if q.len() >= self.cap {
                drop(q);
                if !volatile {
                    metrics.slow_consumer_closes.inc();
                    self.kick(close::SLOW_CONSUMER);
                }
                return false;
            }
            q.push_back(item);
        }
        self.waker.wake();
        true
    }

    /// The next frame, or the close request; waits until there is one. Only one task
    /// reads a mailbox.
    pub fn next(&self) -> impl std::future::Future<Output = Mail> + '_ {
        std::future::poll_fn(move |cx| self.poll_next(cx))
    }

    /// Polls for the next frame or close request, waking the reader when one comes.
    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Mail> {
        if let Some(m) = self.ready() {
            return Poll::Ready(m);
        }
        self.waker.register(cx.waker());
        // A push or kick between the check above and the registration has woken no one:
        // look again now that the waker is in place.
        match self.ready() {
            Some(m) => Poll::Ready(m),
            None => Poll::Pending,
        }
    }

    /// Waits for a close request only, leaving queued frames where they are: a session
    /// blocked in a write to a full socket awaits this beside the write, so that a kick
    /// ends it whatever it is waiting for. Only the mailbox's one reader calls it, and
    /// not while it also waits in [`Mailbox::next`] (they share one waker).
    pub fn kicked(&self) -> impl std::future::Future<Output = u16> + '_ {
        std::future::poll_fn(move |cx| {
            let code = self.kick.load(Ordering::Acquire);
            if code != 0 {
                return Poll::Ready(code);
            }
            self.waker.register(cx.waker());
            match self.kick.load(Ordering::Acquire) {
                0 => Poll::Pending,
                code => Poll::Ready(code),
            }
        })
    }

    fn ready(&self) -> Option<Mail> {
        let code = self.kick.load(Ordering::Acquire);
        if code != 0 {
            return Some(Mail::Kick(code));
        }
        self.try_next().map(Mail::Frame)
    }

    /// The next frame if one is queued.
    pub fn try_next(&self) -> Option<Outbound> {
        lock(&self.queue).pop_front()
    }

    /// Refuses further frames and drops the queued ones (the connection is gone).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        lock(&self.queue).clear();
    }
}

/// The hub's handle on one local connection.
#[derive(Debug, Clone)]
pub struct Member {
    /// Connection id (cluster-unique).
    pub id: Arc<str>,
    /// The user.
    pub user: UserId,
    /// Its wire format.
    pub wire: Wire,
    /// Its inbox.
    pub mailbox: Arc<Mailbox>,
}

impl Member {
    /// Queues a frame; see [`Mailbox::push`].
    fn push(&self, item: Outbound, volatile: bool, metrics: &Metrics) -> bool {
        self.mailbox.push(item, volatile, metrics)
    }

    /// Asks this connection to close with `code`.
    pub fn kick(&self, code: u16) {
        self.mailbox.kick(code);
    }
}

#[derive(Default)]
struct Room {
    members: HashMap<Arc<str>, Member>,
    /// Rebuilt lazily after a change, so a join is O(1) and fan-out reads an immutable list.
    snapshot: Option<Arc<[Member]>>,
    /// Connections that joined with `member_events: false` (mostly none: no allocation).
    quiet: HashSet<Arc<str>>,
    /// The members that receive member events, rebuilt lazily like `snapshot`.
    listeners: Option<Arc<[Member]>>,
    census: Census,
}

impl Room {
    fn snapshot(&mut self) -> Arc<[Member]> {
        let Room {
            members, snapshot, ..
        } = self;
        snapshot
            .get_or_insert_with(|| members.values().cloned().collect())
            .clone()
    }

    /// The members that receive member events: the snapshot itself when none opted out
    /// (no second list per room in the common case).
    fn listeners(&mut self) -> Arc<[Member]> {
        if self.quiet.is_empty() {
            return self.snapshot();
        }
        let Room {
            members,
            quiet,
            listeners,
            ..
        } = self;
        listeners
            .get_or_insert_with(|| {
                members
                    .values()
                    .filter(|m| !quiet.contains(&m.id))
                    .cloned()
                    .collect()
            })
            .clone()
    }
}

/// What a node knows of how many users a room has cluster-wide, to choose between
/// per-user member events and a throttled `member_count` (`--member-events-max`).
#[derive(Default)]
struct Census {
    /// Users as last counted in presence, plus and minus the member events since (before
    /// the first count: the events since the room appeared on this node).
    users: u64,
    /// Whether presence was counted since the room appeared here (or the bus came back).
    counted: bool,
    /// Whether the room waits in the counter's queue.
    queued: bool,
    /// The last `member_count` sent, while the room is over the max.
    sent: Option<Count>,
}

/// The least time between two passes of a node's member counter: a room's
/// `member_count` goes out at most once per this.
const COUNT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Presence counts one pass of the counter reads at once.
const COUNT_CONCURRENCY: usize = 32;
/// Encodes a value once per wire format on first use.
struct Encoded<'a, F: Fn(Wire) -> Option<Outbound>> {
    make: &'a F,
    cache: [OnceLock<Option<Outbound>>; 3],
}

impl<'a, F: Fn(Wire) -> Option<Outbound>> Encoded<'a, F> {
    fn new(make: &'a F) -> Self {
        Encoded {
            make,
            cache: Default::default(),
        }
    }

    fn get(&self, wire: Wire) -> Option<Outbound> {
        let i = wire as usize;
        self.cache[i].get_or_init(|| (self.make)(wire)).clone()
    }
}

/// Encodes a server message for one wire format; `None` if it cannot be encoded.
pub fn encode_for(
    wire: Wire,
    msg: &impl serde::Serialize,
    sse_id: Option<&str>,
) -> Option<Payload> {
    match wire {
        Wire::Json => serde_json::to_string(msg)
            .ok()
            .map(|s| Payload::Text(s.into())),
        Wire::MsgPack => Encoding::MsgPack.encode(msg).ok().map(Payload::Binary),
        Wire::Sse => {
            let json = serde_json::to_string(msg).ok()?;
            let mut s = String::with_capacity(json.len() + 48);
            if let Some(id) = sse_id {
                s.push_str("id: ");
                s.push_str(id);
                s.push('\n');
            }
            s.push_str("event: message\ndata: ");
            s.push_str(&json);
            s.push_str("\n\n");
            Some(Payload::Text(s.into()))
        }
    }
}

/// Local membership and fan-out.
pub struct Hub {
    draining: AtomicBool,
    conns: Mutex<HashMap<Arc<str>, Arc<Mailbox>>>,
    rooms: Mutex<HashMap<RoomName, Room>>,
    users: Mutex<HashMap<UserId, Vec<Member>>>,
    metrics: Arc<Metrics>,
    bus: OnceLock<Arc<dyn Bus>>,
    bus_up: std::sync::atomic::AtomicBool,
    /// `--member-events-max`.
    member_events_max: AtomicU64,
    /// Rooms whose presence count the counter reads at its next pass (each at most once:
    /// `Census::queued`), and its wake-up.
    count_queue: Mutex<Vec<RoomName>>,
    count_wake: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The window over which members of a room with an unrecoverable gap are closed.
const GAP_KICK_SPREAD: std::time::Duration = std::time::Duration::from_secs(2);

/// Kicks every mailbox with `code`, evenly over `spread`.
async fn kick_spread(all: &[Arc<Mailbox>], code: u16, spread: std::time::Duration) {
    let n = all.len().max(1) as u32;
    let start = tokio::time::Instant::now();
    for (i, m) in all.iter().enumerate() {
        tokio::time::sleep_until(start + spread * i as u32 / n).await;
        m.kick(code);
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Hub {
    /// An empty hub.
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Hub {
            draining: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            rooms: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
            metrics,
            bus: OnceLock::new(),
            bus_up: std::sync::atomic::AtomicBool::new(true),
            member_events_max: AtomicU64::new(1000),
            count_queue: Mutex::new(Vec::new()),
            count_wake: tokio::sync::Notify::new(),
        })
    }

    /// Sets `--member-events-max` and starts the node's member counter: one task that, at
    /// most once a second, counts the presence of the rooms whose membership changed and
    /// that need a count (over or near the max, or never counted on this node), and sends
    /// `member_count` to the members of those over the max. It sleeps while nothing
    /// changes and ends with `stop`.
    pub fn start_member_events(self: &Arc<Self>, max: u64, stop: CancellationToken) {
        self.member_events_max.store(max, Ordering::Relaxed);
        let hub = self.clone();
        tokio::spawn(async move { hub.count_loop(stop).await });
    }

    async fn count_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut last: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.count_wake.notified() => {}
            }
            if let Some(at) = last {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep_until(at + COUNT_EVERY) => {}
                }
            }
            last = Some(tokio::time::Instant::now());
            let Some(bus) = self.bus.get().cloned() else {
                continue;
            };
            let rooms = std::mem::take(&mut *lock(&self.count_queue));
            {
                // Events from now on queue the room again: a change during the read is
                // counted at the next pass, so the last count of a burst is right.
                let mut all = lock(&self.rooms);
                for room in &rooms {
                    if let Some(r) = all.get_mut(room) {
                        r.census.queued = false;
                    }
                }
            }
            let counted: Vec<_> = futures_util::stream::iter(rooms)
                .map(|room| {
                    let bus = bus.clone();
                    async move {
                        let r = bus.presence(&room, 1).await;
                        (room, r)
                    }
                })
                .buffer_unordered(COUNT_CONCURRENCY)
                .collect()
                .await;
            for (room, r) in counted {
                match r {
                    Ok(p) => self.counted(&room, p.count),
                    Err(e) => {
                        tracing::debug!(%room, error = %e, "member count failed; retrying");
                        self.ask_count(&room);
                    }
                }
            }
        }
        tracing::debug!("member counter stopped");
    }

    /// Queues `room` for the counter (once).
    fn ask_count(&self, room: &RoomName) {
        let mut rooms = lock(&self.rooms);
        if let Some(r) = rooms.get_mut(room) {
            if !r.census.queued {
                r.census.queued = true;
                self.queue_count(room);
            }
        }
    }

    /// Puts `room` in the counter's queue (the caller holds the rooms lock and has
    /// marked it queued).
    fn queue_count(&self, room: &RoomName) {
        lock(&self.count_queue).push(room.clone());
        self.count_wake.notify_one();
    }

    /// A presence count of `room` arrived: sends `member_count` to its listeners when the
    /// room is over the max and the count changed (and once more when it falls back to
    /// the max, so that the last count they saw is right).
    fn counted(&self, room: &RoomName, count: Count) {
        let max = self.member_events_max.load(Ordering::Relaxed);
        let listeners = {
            let mut rooms = lock(&self.rooms);
            let Some(r) = rooms.get_mut(room) else { return };
            let c = &mut r.census;
            c.users = count.users;
            c.counted = true;
            let over = count.users > max;
            if c.sent == Some(count) || (!over && c.sent.is_none()) {
                return;
            }
            c.sent = over.then_some(count);
            r.listeners()
        };
        let msg = ServerMessage::MemberCount {
            room: room.clone(),
            users: count.users,
            connections: count.connections,
        };
        self.fanout_other(&listeners, &msg, None);
    }

    /// A user's first connection joined `room` (or its last one left), somewhere in the
    /// cluster: `member_joined` / `member_left` to the listeners while the room is at most
    /// `--member-events-max` users, else a count for the counter.
    fn member_event(&self, room: RoomName, user: UserId, joined: bool) {
        let max = self.member_events_max.load(Ordering::Relaxed);
        let (listeners, seed) = {
            let mut rooms = lock(&self.rooms);
            let Some(r) = rooms.get_mut(&room) else {
                return;
            };
            let c = &mut r.census;
            c.users = if joined {
                c.users.saturating_add(1)
            } else {
                c.users.saturating_sub(1)
            };
            let over = c.users > max;
            // Near or over the max the counter keeps the number exact; a room never
            // counted here is counted once (below, only if someone here hears of it).
            if !c.queued && (over || c.users > max / 2) {
                c.queued = true;
                self.queue_count(&room);
            }
            let seed = !c.queued && !c.counted;
            // Over the max nobody hears of it: the list of listeners is not even built
            // (a storm of joins would rebuild it for every event).
            ((!over).then(|| r.listeners()), seed)
        };
        let Some(listeners) = listeners else {
            return;
        };
        let msg = if joined {
            ServerMessage::MemberJoined {
                room: room.clone(),
                user: user.clone(),
            }
        } else {
            ServerMessage::MemberLeft {
                room: room.clone(),
                user: user.clone(),
            }
        };
        // A room of one user (its own event) needs no count: nobody here hears of it.
        if self.fanout_other(&listeners, &msg, Some(&user)) > 0 && seed {
            self.ask_count(&room);
        }
    }

    /// Connects the hub to the bus it tells about local interest in rooms.
    pub fn attach_bus(&self, bus: Arc<dyn Bus>) {
        let _ = self.bus.set(bus);
    }

    /// Whether the bus last reported itself up.
    pub fn bus_up(&self) -> bool {
        self.bus_up.load(Ordering::Relaxed)
    }

    /// Registers a connection (authenticated or not) so that the drain reaches it.
    pub fn register(&self, id: &Arc<str>, mailbox: &Arc<Mailbox>) {
        lock(&self.conns).insert(id.clone(), mailbox.clone());
        // A connection that slipped in while the drain took its snapshot goes too.
        if self.draining.load(Ordering::Acquire) {
            mailbox.kick(close::GOING_AWAY);
        }
    }

    /// Forgets a connection and closes its mailbox.
    pub fn unregister(&self, id: &str) {
        if let Some(m) = lock(&self.conns).remove(id) {
            m.close();
        }
    }

    /// Closes every connection with 1001, spread evenly over `spread` so that the other
    /// nodes are not hit by every reconnect at once.
    pub async fn drain(&self, spread: std::time::Duration) {
        self.draining.store(true, Ordering::Release);
        let all: Vec<Arc<Mailbox>> = lock(&self.conns).values().cloned().collect();
        kick_spread(&all, close::GOING_AWAY, spread).await;
    }

    /// Registers a connection for its user's direct messages and disconnects.
    pub fn add_user(&self, m: &Member) {
        let mut users = lock(&self.users);
        let list = users
            .entry(m.user.clone())
            // Most users have one connection: a default Vec would reserve four.
            .or_insert_with(|| Vec::with_capacity(1));
        list.push(m.clone());
        // Under the lock, as for rooms in `join`: the user's first local connection makes
        // the bus listen to the user's channel (rooms mode).
        if list.len() == 1 {
            if let Some(bus) = self.bus.get() {
                bus.watch_user(&m.user);
            }
        }
    }

    /// Removes a connection from its user's list.
    pub fn remove_user(&self, m: &Member) {
        let mut users = lock(&self.users);
        if let Some(list) = users.get_mut(&m.user) {
            list.retain(|x| x.id != m.id);
            if list.is_empty() {
                users.remove(&m.user);
                if let Some(bus) = self.bus.get() {
                    bus.unwatch_user(&m.user);
                }
            }
        }
    }

    /// Adds a member to a room; from now on it receives the room's messages and member
    /// events.
    pub fn join(&self, room: &RoomName, m: &Member) {
        self.join_with(room, m, true)
    }

    /// Adds a member to a room; from now on it receives the room's messages, and its
    /// member events when `member_events` is true.
    pub fn join_with(&self, room: &RoomName, m: &Member, member_events: bool) {
        let mut rooms = lock(&self.rooms);
        let first = !rooms.contains_key(room);
        let r = rooms.entry(room.clone()).or_default();
        r.members.insert(m.id.clone(), m.clone());
        r.snapshot = None;
        if member_events {
            r.quiet.remove(&m.id);
        } else {
            r.quiet.insert(m.id.clone());
        }
        r.listeners = None;
        self.metrics.rooms.set(rooms.len() as i64);
        // Under the lock (watch/unwatch are cheap and never call back into the hub): a
        // concurrent last leave must not unwatch a room this join has just filled.
        if first {
            if let Some(bus) = self.bus.get() {
                bus.watch_room(room);
            }
        }
    }

    /// Removes a member from a room.
    pub fn leave(&self, room: &RoomName, id: &str) {
        let mut rooms = lock(&self.rooms);
        let Some(r) = rooms.get_mut(room) else { return };
        r.members.remove(id);
        r.snapshot = None;
        if !r.quiet.is_empty() {
            r.quiet.remove(id);
        }
        r.listeners = None;
        let last = r.members.is_empty();
        if last {
            rooms.remove(room);
            // Under the lock, for the reason given in `join`.
            if let Some(bus) = self.bus.get() {
                bus.unwatch_room(room);
            }
        }
        self.metrics.rooms.set(rooms.len() as i64);
    }

    fn members(&self, room: &RoomName) -> Option<Arc<[Member]>> {
        let mut rooms = lock(&self.rooms);
        Some(rooms.get_mut(room)?.snapshot())
    }

    /// Calls `f` with every room that has a local member and its number of local members
    /// (the node's heartbeat picks its busiest rooms). Under the rooms lock: `f` must be
    /// quick and must not call back into the hub.
    pub fn for_each_room(&self, mut f: impl FnMut(&RoomName, usize)) {
        for (name, r) in lock(&self.rooms).iter() {
            f(name, r.members.len());
        }
    }

    /// Local connections of a user.
    fn user_members(&self, user: &UserId) -> Vec<Member> {
        lock(&self.users).get(user).cloned().unwrap_or_default()
    }

    /// Closes every local connection of `user` with `code`.
    pub fn kick_user(&self, user: &UserId, code: u16) {
        for m in self.user_members(user) {
            m.kick(code);
        }
    }

    fn fanout_message(&self, p: &Publication, skip: Option<&str>) {
        let Some(members) = self.members(&p.room) else {
            return;
        };
        let start = Instant::now();
        let sse_id = p.offset.map(|o| format!("{}:{}", p.room, o));
        let make = |w: Wire| {
            let payload = encode_for(w, &MessageFrame(p), sse_id.as_deref())?;
            Some(Arc::new(Frame {
                room: Some(p.room.clone()),
                offset: p.offset,
                payload,
            }))
        };
        let frames = Encoded::new(&make);
        let volatile = p.offset.is_none();
        let mut sent = 0u64;
        let mut bytes = 0u64;
        for m in members.iter() {
            if skip == Some(&*m.id) {
                continue;
            }
            let Some(frame) = frames.get(m.wire) else {
                continue;
            };
            bytes += frame.payload.len() as u64;
            if m.push(frame, volatile, &self.metrics) {
                sent += 1;
            }
        }
        self.metrics
            .messages_out
            .with_label_values(&["message"])
            .inc_by(sent);
        self.metrics.bytes_out.inc_by(bytes);
        self.metrics
            .fanout_seconds
            .observe(start.elapsed().as_secs_f64());
        if p.ts > 0 {
            self.metrics
                .bus_delivery_seconds
                .observe(now_ms().saturating_sub(p.ts) as f64 / 1000.0);
        }
    }

    /// Sends `msg` to `targets` (but the connections of `skip_user`); how many got it.
    fn fanout_other(
        &self,
        targets: &[Member],
        msg: &ServerMessage,
        skip_user: Option<&UserId>,
    ) -> u64 {
        let make = |w: Wire| {
            let payload = encode_for(w, msg, None)?;
            Some(Arc::new(Frame {
                room: None,
                offset: None,
                payload,
            }))
        };
        let frames = Encoded::new(&make);
        let mut sent = 0;
        for m in targets {
            if skip_user == Some(&m.user) {
                continue;
            }
            let Some(frame) = frames.get(m.wire) else {
                continue;
            };
            self.metrics.bytes_out.inc_by(frame.payload.len() as u64);
            if m.push(frame, false, &self.metrics) {
                sent += 1;
            }
        }
        self.metrics
            .messages_out
            .with_label_values(&[msg.kind()])
            .inc_by(sent);
        sent
    }
}

impl Delivery for Hub {
    fn deliver(&self, event: BusEvent) {
        match event {
            BusEvent::Message { publication, skip } => {
                self.fanout_message(&publication, skip.as_deref())
            }
            BusEvent::MemberJoined { room, user } => self.member_event(room, user, true),
            BusEvent::MemberLeft { room, user } => self.member_event(room, user, false),
            BusEvent::Direct { to, message } => {
                let targets = self.user_members(&to);
                if !targets.is_empty() {
                    self.fanout_other(&targets, &ServerMessage::Direct((*message).clone()), None);
                }
            }
            BusEvent::Disconnect { user, code } => self.kick_user(&user, code),
            BusEvent::Gap { room } => {
                // Messages were lost for good: the members must re-join to learn it
                // (`recovered: false`). 1013 asks them to reconnect after a backoff.
                // After a Redis restart every watched room gaps at once: spread the closes
                // so that the reconnects do not all land in the same instant.
                tracing::warn!(%room, "unrecoverable gap on the bus; asking local members to reconnect");
                // Out of the room now, not when each one's close comes: what the bus
                // delivers next may be a new epoch's messages, whose offsets no member
                // of the old epoch may receive. (Under the lock, as in `leave`.)
                let gone = {
                    let mut rooms = lock(&self.rooms);
                    let gone = rooms.remove(&room);
                    if gone.is_some() {
                        if let Some(bus) = self.bus.get() {
                            bus.unwatch_room(&room);
                        }
                    }
                    self.metrics.rooms.set(rooms.len() as i64);
                    gone
                };
                if let Some(r) = gone {
                    let all: Vec<Arc<Mailbox>> =
                        r.members.values().map(|m| m.mailbox.clone()).collect();
                    tokio::spawn(async move {
                        kick_spread(&all, close::OVERLOADED, GAP_KICK_SPREAD).await
                    });
                }
            }
            BusEvent::State { up } => {
                self.bus_up.store(up, Ordering::Relaxed);
                self.metrics.bus_up.set(i64::from(up));
                if up {
                    // Member events may have been lost meanwhile: count the rooms again
                    // before trusting what the events say of their size.
                    for r in lock(&self.rooms).values_mut() {
                        r.census.counted = false;
                    }
                    tracing::info!("bus up");
                } else {
                    tracing::warn!("bus down");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! A model-based test of the hub: random joins, leaves and publishes against a plain
    //! map of who is where; every member of a room gets each message once, in order, and
    //! nobody else gets it.
    use super::*;
    use proptest::prelude::*;
    use roomcast_protocol::{EventName, Publication};
    use std::collections::{BTreeMap, BTreeSet};

    #[derive(Debug, Clone)]
    enum Op {
        Join(usize, usize),
        Leave(usize, usize),
        Publish(usize, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..6usize, 0..3usize).prop_map(|(c, r)| Op::Join(c, r)),
            (0..6usize, 0..3usize).prop_map(|(c, r)| Op::Leave(c, r)),
            (0..3usize, any::<bool>()).prop_map(|(r, skip)| Op::Publish(r, skip)),
        ]
    }

    fn room(i: usize) -> RoomName {
        RoomName::new(&format!("r{i}")).expect("valid room")
    }

    fn drain(m: &Mailbox) -> Vec<Outbound> {
        std::iter::from_fn(|| m.try_next()).collect()
    }

    proptest! {
        #[test]
        fn fanout_matches_the_model(ops in prop::collection::vec(op(), 1..60)) {
            let hub = Hub::new(Arc::new(Metrics::new()));
            let members: Vec<Member> = (0..6)
                .map(|i| Member {
                    id: Arc::from(format!("c{i}")),
                    user: UserId::new(&format!("u{}", i % 4)).expect("valid user"),
                    wire: if i % 2 == 0 { Wire::Json } else { Wire::MsgPack },
                    mailbox: Mailbox::new(1000),
                })
                .collect();
            let mut model: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
            let mut expected: Vec<Vec<u64>> = vec![Vec::new(); 6];
            let mut offset = 0u64;
            for op in ops {
                match op {
                    Op::Join(c, r) => {
                        hub.join(&room(r), &members[c]);
                        model.entry(r).or_default().insert(c);
                    }
                    Op::Leave(c, r) => {
                        hub.leave(&room(r), &members[c].id);
                        model.entry(r).or_default().remove(&c);
                    }
                    Op::Publish(r, skip_first) => {
                        offset += 1;
                        let skip = if skip_first { model.get(&r).and_then(|s| s.iter().next().copied()) } else { None };
                        let p = Publication {
                            room: room(r),
                            event: EventName::new("e").expect("valid event"),
                            data: serde_json::json!(offset),
                            from: UserId::new("x").expect("valid user"),
                            offset: Some(offset),
                            ts: 0,
                        };
                        hub.deliver(BusEvent::Message { publication: Arc::new(p), skip: skip.map(|c| members[c].id.to_string()) });
                        for c in model.get(&r).into_iter().flatten() {
                            if Some(*c) != skip {
                                expected[*c].push(offset);
                            }
                        }
                    }
                }
            }
            for (c, m) in members.iter().enumerate() {
                let got: Vec<u64> = drain(&m.mailbox).iter().filter_map(|f| f.offset).collect();
                prop_assert_eq!(&got, &expected[c], "member {}", c);
            }
        }
    }

    #[test]
    fn a_full_queue_drops_volatile_and_kicks_for_the_rest() {
        let metrics = Metrics::new();
        let m = Mailbox::new(2);
        let frame = || {
            Arc::new(Frame {
                room: None,
                offset: None,
                payload: Payload::Binary(Bytes::from_static(b"x")),
            })
        };
        assert!(m.push(frame(), false, &metrics));
        assert!(m.push(frame(), false, &metrics));
        assert!(
            !m.push(frame(), true, &metrics),
            "volatile is dropped when full"
        );
        assert_eq!(m.kick.load(Ordering::Acquire), 0, "and the member stays");
        assert!(!m.push(frame(), false, &metrics));
        assert_eq!(m.kick.load(Ordering::Acquire), close::SLOW_CONSUMER);
        assert_eq!(metrics.slow_consumer_closes.get(), 1);
    }

    #[tokio::test]
    async fn mailbox_wakes_on_push_and_on_kick() {
        let metrics = Arc::new(Metrics::new());
        let m = Mailbox::new(4);
        let (m2, mt) = (m.clone(), metrics.clone());
        let pusher = tokio::spawn(async move {
            m2.push(
                Arc::new(Frame {
                    room: None,
                    offset: Some(7),
                    payload: Payload::Binary(Bytes::new()),
                }),
                false,
                &mt,
            )
        });
        match m.next().await {
            Mail::Frame(f) => assert_eq!(f.offset, Some(7)),
            Mail::Kick(c) => panic!("unexpected kick {c}"),
        }
        assert!(pusher.await.expect("pusher"));
        m.kick(close::GOING_AWAY);
        assert!(matches!(m.next().await, Mail::Kick(close::GOING_AWAY)));
    }
}
