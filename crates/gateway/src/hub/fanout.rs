//! The fan-out: what the hub does with each bus event. A room message is encoded once
//! per wire format and the same bytes go to every local member; member events go to the
//! members that asked for them while a room is small, and a throttled member count
//! (read from presence by one counter task) once it is large.

use super::mailbox::kick_spread;
use super::wire::Encoded;
use super::{encode_for, lock, now_ms, Frame, Hub, Mailbox, Member, Wire};
use futures_util::StreamExt;
use roomcast_protocol::{
    close, Count, MemberChange, MessageFrame, Publication, RoomName, ServerMessage, UserId,
};
use roomcast_redis_bridge::{BusEvent, EventSink};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// The least time between two passes of a node's member counter: a room's
/// `member_count` goes out at most once per this.
const COUNT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Presence counts one pass of the counter reads at once.
const COUNT_CONCURRENCY: usize = 32;

/// How long member events wait in their members' queues before the members are woken:
/// the events of a burst of joins or leaves reach each member in one write, not one
/// write per event.
pub(super) const MEMBER_EVENTS_LINGER: std::time::Duration = std::time::Duration::from_millis(10);

/// The window over which members of a room with an unrecoverable gap are closed.
const GAP_KICK_SPREAD: std::time::Duration = std::time::Duration::from_secs(2);

impl Hub {
    /// Sets `--member-events-max` and starts the node's member counter: one task that, at
    /// most once a second, counts the presence of the rooms whose membership changed and
    /// that need a count (over or near the max, or never counted on this node), and sends
    /// `member_count` to the members of those over the max. It sleeps while nothing
    /// changes and ends when the drain starts.
    pub fn start_member_events(self: &Arc<Self>, max: u64) {
        self.member_events_max.store(max, Ordering::Relaxed);
        let (hub, stop) = (self.clone(), self.tasks.draining());
        self.tasks
            .spawn("member-counter", async move { hub.count_loop(stop).await });
        let (hub, stop) = (self.clone(), self.tasks.draining());
        self.later_on.store(true, Ordering::Relaxed);
        self.tasks
            .spawn("member-events", async move { hub.later_loop(stop).await });
    }

    /// Wakes the members that member events were queued for, [`MEMBER_EVENTS_LINGER`]
    /// after the first of a burst; at the drain, once more and then never again (events
    /// from then on wake their members at once).
    async fn later_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let stopping = tokio::select! {
                _ = stop.cancelled() => true,
                _ = self.later_wake.notified() => false,
            };
            if !stopping {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(MEMBER_EVENTS_LINGER) => {}
                }
            }
            if stop.is_cancelled() {
                self.later_on.store(false, Ordering::Relaxed);
            }
            let due = std::mem::take(&mut *lock(&self.later));
            for m in due {
                m.wake_later();
            }
            if stop.is_cancelled() {
                break;
            }
        }
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
            let rooms = std::mem::take(&mut *lock(&self.count_queue));
            {
                // Events from now on queue the room again: a change during the read is
                // counted at the next pass, so the last count of a burst is right.
                let mut all = lock(&self.rooms);
                for room in &rooms {
                    if let Some(r) = all.live.get_mut(room) {
                        r.census.queued = false;
                    }
                }
            }
            let counted: Vec<_> = futures_util::stream::iter(rooms)
                .map(|room| {
                    let bus = &self.bus;
                    async move {
                        let r = bus.count(&room).await;
                        (room, r)
                    }
                })
                .buffer_unordered(COUNT_CONCURRENCY)
                .collect()
                .await;
            for (room, r) in counted {
                match r {
                    Ok(count) => self.counted(&room, count),
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
        if let Some(r) = rooms.live.get_mut(room) {
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
            let Some(r) = rooms.live.get_mut(room) else {
                return;
            };
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
        self.fanout_other(&listeners, &msg, None, true);
    }

    /// A user's first connection joined `room` (or its last one left), somewhere in the
    /// cluster: `member_joined` / `member_left` to the listeners while the room is at most
    /// `--member-events-max` users, else a count for the counter.
    fn member_event(&self, room: RoomName, user: UserId, change: MemberChange) {
        let max = self.member_events_max.load(Ordering::Relaxed);
        let (listeners, seed) = {
            let mut rooms = lock(&self.rooms);
            let Some(r) = rooms.live.get_mut(&room) else {
                return;
            };
            let c = &mut r.census;
            c.users = if change == MemberChange::Joined {
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
        let msg = ServerMessage::member(change, room.clone(), user.clone());
        // A room of one user (its own event) needs no count: nobody here hears of it.
        if self.fanout_other(&listeners, &msg, Some(&user), true) > 0 && seed {
            self.ask_count(&room);
        }
    }

    fn fanout_message(&self, p: &Publication, except_conn: Option<&str>) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        // One lock for the room's members and its message count (the heartbeat's
        // messages/s), none more on the way from the bus to the members.
        let (members, key) = {
            let mut rooms = lock(&self.rooms);
            match rooms.live.get_mut(&p.room) {
                Some(r) => {
                    r.messages += 1;
                    (r.snapshot(), r.key.clone())
                }
                None => {
                    rooms.count_passing(&p.room, 1);
                    return;
                }
            }
        };
        let start = Instant::now();
        let make = |w: Wire| {
            // SSE's event id: only for SSE members (built once, like the frame).
            let sse_id = (w == Wire::Sse)
                .then(|| p.offset.map(|o| format!("{}:{}", p.room, o)))
                .flatten();
            let payload = encode_for(w, &MessageFrame(p), sse_id.as_deref())?;
            Some(Arc::new(Frame {
                room: Some(key.clone()),
                offset: p.offset,
                payload,
            }))
        };
        let frames = Encoded::new(&make);
        let volatile = p.offset.is_none();
        let express = self.express.allows();
        let mut sent = 0u64;
        let mut bytes = 0u64;
        for m in members.iter() {
            if except_conn.is_some_and(|c| same_id(c, &m.id)) {
                continue;
            }
            let Some(frame) = frames.get(m.wire) else {
                continue;
            };
            bytes += frame.payload.len() as u64;
            if m.mailbox.push(frame, volatile, express, &self.metrics) {
                sent += 1;
            }
        }
        self.metrics
            .messages_out
            .with_label_values(&["message"])
            .inc_by(sent);
        self.metrics.bytes_out.inc_by(bytes);
        let took = start.elapsed();
        self.express.record(sent, express, took);
        self.metrics.fanout_seconds.observe(took.as_secs_f64());
        if p.ts > 0 {
            self.metrics
                .bus_delivery_seconds
                .observe(now_ms().saturating_sub(p.ts) as f64 / 1000.0);
        }
    }

    /// Sends `msg` to `targets` (but the connections of `skip_user`); how many got it.
    /// `later`: queued without a wake-up, for the member-events task to wake (member
    /// events and counts).
    fn fanout_other(
        &self,
        targets: &[Member],
        msg: &ServerMessage,
        skip_user: Option<&UserId>,
        later: bool,
    ) -> u64 {
        let later = later && self.later_on.load(Ordering::Relaxed);
        let mut to_wake = Vec::new();
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
            if later {
                let (queued, wake) = m.mailbox.push_later(frame, &self.metrics);
                if wake {
                    to_wake.push(m.mailbox.clone());
                }
                sent += u64::from(queued);
            } else if m
                .mailbox
                .push(frame, false, self.express.allows(), &self.metrics)
            {
                sent += 1;
            }
        }
        if !to_wake.is_empty() {
            lock(&self.later).extend(to_wake);
            self.later_wake.notify_one();
        }
        self.metrics
            .messages_out
            .with_label_values(&[msg.kind()])
            .inc_by(sent);
        sent
    }
}

impl EventSink for Hub {
    fn deliver(&self, event: BusEvent) {
        match event {
            BusEvent::Message {
                publication,
                except_conn,
            } => self.fanout_message(&publication, except_conn.as_deref()),
            BusEvent::Member { change, room, user } => self.member_event(room, user, change),
            BusEvent::Direct { to, message } => {
                let targets = self.user_members(&to);
                if !targets.is_empty() {
                    self.fanout_other(
                        &targets,
                        &ServerMessage::Direct((*message).clone()),
                        None,
                        false,
                    );
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
                        self.bus.unwatch_room(&room);
                    }
                    self.metrics.rooms.set(rooms.live.len() as i64);
                    gone
                };
                if let Some(r) = gone {
                    let all: Vec<Arc<Mailbox>> =
                        r.members.values().map(|m| m.mailbox.clone()).collect();
                    self.tasks.spawn("gap-closes", async move {
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
                    for r in lock(&self.rooms).live.values_mut() {
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

/// Whether two connection ids are equal, compared inline: ids are random, so the first
/// byte tells apart almost every pair, for less than a call to `memcmp`. Runs for every
/// member of a room when a publisher is skipped.
fn same_id(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| x == y)
}
