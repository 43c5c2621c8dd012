//! The registry: which local connections are in which rooms and which belong to which
//! user, kept under short locks that are never held across an await. Joining the first
//! local member of a room (or user) tells the bus to listen to it, leaving the last one
//! tells it to stop.

use super::mailbox::kick_spread;
use super::{lock, Mailbox, Member, RoomKey};
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use roomcast_protocol::{close, Count, RoomName, UserId};
use roomcast_redis_bridge::RoomInterest;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Distinct rooms without a local member whose messages are counted per heartbeat
/// interval; beyond, their messages still count for the node's total.
const MAX_COUNTED_ROOMS: usize = 100_000;

/// One room with local members.
pub(super) struct Room {
    /// The room's name, shared by the frames of its messages and by its members' floors
    /// ([`Joined`](super::Joined)): a delivery finds its room by pointer, without reading
    /// the name.
    pub(super) key: RoomKey,
    pub(super) members: HashMap<Arc<str>, Member>,
    /// Rebuilt lazily after a change, so a join is O(1) and fan-out reads an immutable list.
    snapshot: Option<Arc<[Member]>>,
    /// Connections that joined with `member_events: false` (mostly none: no allocation).
    quiet: HashSet<Arc<str>>,
    /// The members that receive member events, rebuilt lazily like `snapshot`.
    listeners: Option<Arc<[Member]>>,
    pub(super) census: Census,
    /// Messages the bus delivered for the room since the last heartbeat took the counts.
    pub(super) messages: u64,
}

impl Room {
    fn new(name: &RoomName) -> Self {
        Room {
            key: Arc::new(name.clone()),
            members: HashMap::new(),
            snapshot: None,
            quiet: HashSet::new(),
            listeners: None,
            census: Census::default(),
            messages: 0,
        }
    }

    pub(super) fn snapshot(&mut self) -> Arc<[Member]> {
        let Room {
            members, snapshot, ..
        } = self;
        snapshot
            .get_or_insert_with(|| members.values().cloned().collect())
            .clone()
    }

    /// The members that receive member events: the snapshot itself when none opted out
    /// (no second list per room in the common case).
    pub(super) fn listeners(&mut self) -> Arc<[Member]> {
        if self.quiet.is_empty() {
            return self.snapshot();
        }
        // Everyone opted out (`quiet` holds members only): nobody to list, and no pass
        // over the members for every member event of a join storm.
        if self.quiet.len() >= self.members.len() {
            return Arc::from(Vec::new());
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
pub(super) struct Census {
    /// Users as last counted in presence, plus and minus the member events since (before
    /// the first count: the events since the room appeared on this node).
    pub(super) users: u64,
    /// Whether presence was counted since the room appeared here (or the bus came back).
    pub(super) counted: bool,
    /// Whether the room waits in the counter's queue.
    pub(super) queued: bool,
    /// The last `member_count` sent, while the room is over the max.
    pub(super) sent: Option<Count>,
}

/// The rooms of a node, behind the hub's one rooms lock.
#[derive(Default)]
pub(super) struct Rooms {
    /// Rooms with a local member.
    pub(super) live: HashMap<RoomName, Room>,
    /// Messages the bus delivered since the last heartbeat for rooms without a local
    /// member (pattern mode delivers every room; rooms mode what arrives while a left
    /// room's channel lingers), bounded by [`MAX_COUNTED_ROOMS`].
    passing: HashMap<RoomName, u64>,
}

impl Rooms {
    /// Counts `n` messages of a room without a local member.
    pub(super) fn count_passing(&mut self, room: &RoomName, n: u64) {
        if n == 0 {
            return;
        }
        if let Some(c) = self.passing.get_mut(room) {
            *c += n;
        } else if self.passing.len() < MAX_COUNTED_ROOMS {
            self.passing.insert(room.clone(), n);
        }
    }

    /// Removes a room (its last local member left, or it gapped), keeping its message
    /// count for the heartbeat.
    pub(super) fn remove(&mut self, room: &RoomName) -> Option<Room> {
        let r = self.live.remove(room)?;
        self.count_passing(room, r.messages);
        Some(r)
    }
}

/// Local membership and fan-out.
pub struct Hub {
    /// The node's lifecycle: the hub's tasks are spawned on it, and a connection that
    /// registers once the drain has started is closed at once.
    pub(super) tasks: Lifecycle,
    pub(super) conns: Mutex<HashMap<Arc<str>, Arc<Mailbox>>>,
    pub(super) rooms: Mutex<Rooms>,
    pub(super) users: Mutex<HashMap<UserId, Vec<Member>>>,
    pub(super) metrics: Arc<Metrics>,
    /// What the hub tells the bus (which rooms and users to listen to) and asks it
    /// (presence counts); a weak handle, so the bus, which holds the hub, is not held.
    pub(super) bus: RoomInterest,
    pub(super) bus_up: AtomicBool,
    /// Room messages the bus delivered since start (the heartbeat's messages/s).
    pub(super) messages: AtomicU64,
    /// `--member-events-max`.
    pub(super) member_events_max: AtomicU64,
    /// Rooms whose presence count the counter reads at its next pass (each at most once:
    /// `Census::queued`), and its wake-up.
    pub(super) count_queue: Mutex<Vec<RoomName>>,
    pub(super) count_wake: tokio::sync::Notify,
    /// Mailboxes holding member events queued without a wake-up, woken together after
    /// [`super::fanout::MEMBER_EVENTS_LINGER`] by the member counter's sibling task (none
    /// until it runs: `later_on`).
    pub(super) later: Mutex<Vec<Arc<Mailbox>>>,
    pub(super) later_wake: tokio::sync::Notify,
    pub(super) later_on: AtomicBool,
    /// Whether fan-outs write express now (see [`super::budget`]).
    pub(super) express: super::budget::Budget,
}

impl Hub {
    /// An empty hub that tells `bus` which rooms and users have local members.
    pub fn new(metrics: Arc<Metrics>, bus: RoomInterest, tasks: Lifecycle) -> Arc<Self> {
        Arc::new(Hub {
            tasks,
            conns: Mutex::new(HashMap::new()),
            rooms: Mutex::new(Rooms::default()),
            users: Mutex::new(HashMap::new()),
            metrics,
            bus,
            bus_up: AtomicBool::new(true),
            messages: AtomicU64::new(0),
            member_events_max: AtomicU64::new(1000),
            count_queue: Mutex::new(Vec::new()),
            count_wake: tokio::sync::Notify::new(),
            later: Mutex::new(Vec::new()),
            later_wake: tokio::sync::Notify::new(),
            later_on: AtomicBool::new(false),
            express: Default::default(),
        })
    }

    /// Room messages the bus delivered since start.
    pub fn messages_total(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    /// Takes the per-room counts of room messages delivered since the last call (rooms
    /// with a local member, and a bounded number of others).
    pub fn take_message_counts(&self) -> HashMap<RoomName, u64> {
        let mut rooms = lock(&self.rooms);
        let mut counts = std::mem::take(&mut rooms.passing);
        for (name, r) in rooms.live.iter_mut() {
            if r.messages > 0 {
                *counts.entry(name.clone()).or_default() += std::mem::take(&mut r.messages);
            }
        }
        counts
    }

    /// Whether the bus last reported itself up.
    pub fn bus_up(&self) -> bool {
        self.bus_up.load(Ordering::Relaxed)
    }

    /// Registers a connection (authenticated or not) so that the drain reaches it.
    pub fn register(&self, id: &Arc<str>, mailbox: &Arc<Mailbox>) {
        lock(&self.conns).insert(id.clone(), mailbox.clone());
        // A connection that slipped in while the drain took its snapshot goes too.
        if self.tasks.is_draining() {
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
    /// nodes are not hit by every reconnect at once. Called once the lifecycle's drain has
    /// started, so that a connection registering after this snapshot is closed by
    /// `register`.
    pub async fn drain(&self, spread: std::time::Duration) {
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
            self.bus.watch_user(&m.user);
        }
    }

    /// Removes a connection from its user's list.
    pub fn remove_user(&self, m: &Member) {
        let mut users = lock(&self.users);
        if let Some(list) = users.get_mut(&m.user) {
            list.retain(|x| x.id != m.id);
            if list.is_empty() {
                users.remove(&m.user);
                self.bus.unwatch_user(&m.user);
            }
        }
    }

    /// Adds a member to a room; from now on it receives the room's messages and member
    /// events.
    pub fn join(&self, room: &RoomName, m: &Member) -> RoomKey {
        self.join_with(room, m, true)
    }

    /// Adds a member to a room; from now on it receives the room's messages, and its
    /// member events when `member_events` is true. The room's key, for the member's floors.
    pub fn join_with(&self, room: &RoomName, m: &Member, member_events: bool) -> RoomKey {
        let mut rooms = lock(&self.rooms);
        let first = !rooms.live.contains_key(room);
        let r = rooms
            .live
            .entry(room.clone())
            .or_insert_with(|| Room::new(room));
        let key = r.key.clone();
        r.members.insert(m.id.clone(), m.clone());
        r.snapshot = None;
        if member_events {
            r.quiet.remove(&m.id);
        } else {
            r.quiet.insert(m.id.clone());
        }
        r.listeners = None;
        self.metrics.rooms.set(rooms.live.len() as i64);
        // Under the lock (watch/unwatch are cheap and never call back into the hub): a
        // concurrent last leave must not unwatch a room this join has just filled.
        if first {
            self.bus.watch_room(room);
        }
        key
    }

    /// The key of a room with a local member, else a key of its own (a frame or a floor
    /// holding it is matched by name instead of by pointer).
    pub fn room_key(&self, room: &RoomName) -> RoomKey {
        lock(&self.rooms)
            .live
            .get(room)
            .map(|r| r.key.clone())
            .unwrap_or_else(|| Arc::new(room.clone()))
    }

    /// Removes a member from a room.
    pub fn leave(&self, room: &RoomName, id: &str) {
        let mut rooms = lock(&self.rooms);
        let Some(r) = rooms.live.get_mut(room) else {
            return;
        };
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
            self.bus.unwatch_room(room);
        }
        self.metrics.rooms.set(rooms.live.len() as i64);
    }

    /// Calls `f` with every room that has a local member and its number of local members
    /// (the node's heartbeat picks its busiest rooms). Under the rooms lock: `f` must be
    /// quick and must not call back into the hub.
    pub fn for_each_room(&self, mut f: impl FnMut(&RoomName, usize)) {
        for (name, r) in lock(&self.rooms).live.iter() {
            f(name, r.members.len());
        }
    }

    /// Local connections of a user.
    pub(super) fn user_members(&self, user: &UserId) -> Vec<Member> {
        lock(&self.users).get(user).cloned().unwrap_or_default()
    }

    /// Closes every local connection of `user` with `code`.
    pub fn kick_user(&self, user: &UserId, code: u16) {
        for m in self.user_members(user) {
            m.kick(code);
        }
    }
}
