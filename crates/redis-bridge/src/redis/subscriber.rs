//! The subscriber: the node's one pub/sub connection, what it delivers, and gap repair.
//!
//! One task owns the connection: it PSUBSCRIBEs `<prefix>:room:*` and `<prefix>:user:*`
//! (pattern mode) or SUBSCRIBEs the channels of the rooms and users the node holds (rooms
//! mode, see `interest.rs`), SUBSCRIBEs `<prefix>:control`, decodes every envelope and hands events to the node's
//! [`Delivery`] in the order Redis sent them. Room messages carry offsets, so for every
//! watched room (one with local members) it knows how far it has delivered and repairs
//! what pub/sub lost (at-most-once: a dropped connection, or Redis cutting a slow
//! subscriber) from the room's stream before going on (DESIGN-NOTES.md section 3).
//! When the connection is lost it reconnects with capped exponential backoff and full
//! jitter, re-subscribes, and checks every watched room against its meta offset.
//!
//! On a Redis Cluster the connection is a sharded one (`sharded.rs`): SSUBSCRIBE per
//! slot on each shard primary, and a cut (failover, a slot moved, a shard silent) is
//! handled like a lost connection. There the re-synchronisation also finds what a
//! failover lost: a room whose stored offset fell below one this node delivered gets a
//! new epoch (`scripts::EPOCH_CAS`) and its members are told (`BusEvent::Gap`).

use super::envelope::{self, RoomMessage};
use super::interest;
use super::keys::Channel;
use super::sharded::{self, Incoming, Pushes, Shards};
use super::tracking::Track;
use super::{lock, Backend, Shared, OpError};
use crate::bus::{BusError, BusEvent, BusStats, Delivery, ShardState, SubscribeMode};
use crate::memory::new_epoch;
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use roomcast_protocol::{close, BusMessage, Envelope, RoomName};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// First reconnect delay bound; doubles per failed attempt up to [`BACKOFF_CAP`].
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// How often the pub/sub connection is pinged (a half-open socket shows no EOF).
const PING_EVERY: Duration = Duration::from_secs(1);
/// Rooms whose meta is read in one pipeline.
const META_BATCH: usize = 500;

/// One XRANGE entry: id and field/value pairs.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// What to do with a room message.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Deliver; the room's track does not change.
    Deliver,
    /// Deliver and record it as the last one.
    Advance,
    /// The first message of a room with no known epoch: deliver and record it, once the
    /// stream says it is real (it sets the baseline every later message is judged by).
    First,
    /// Already delivered (by a repair).
    Drop,
    /// Messages `from..offset` are missing: read them from the stream first.
    Repair { from: u64 },
    /// A message of a new epoch: the room's history was lost and started again (expired
    /// after `history_ttl` without publishes, flushed, or Redis restarted). Local members
    /// hold offsets of the old epoch, which the new one's mean nothing to: the loss is
    /// signalled (`BusEvent::Gap`) before anything of the new epoch is delivered, then
    /// the new epoch is delivered complete from its offset 1.
    NewEpoch,
}

impl Plan {
    /// Whether the message must be checked against the room's stream before it is
    /// acted on: whatever would move the room's baseline other than one step forward
    /// in a known epoch (a forged offset must not make the node report a loss, nor
    /// set a baseline that would make the real messages look like one).
    fn needs_check(&self) -> bool {
        matches!(self, Plan::First | Plan::Repair { .. } | Plan::NewEpoch)
    }
}

fn plan(track: Option<&Track>, offset: u64, epoch: &str) -> Plan {
    match track {
        None => Plan::Deliver,
        Some(Track::Pending) => Plan::First,
        Some(Track::Soft {
            offset: base,
            epoch: None,
        }) => {
            if offset <= *base {
                Plan::Deliver
            } else if offset == base + 1 {
                Plan::First
            } else {
                Plan::Repair { from: base + 1 }
            }
        }
        Some(Track::Soft {
            offset: base,
            epoch: Some(e),
        }) => {
            if e != epoch {
                Plan::NewEpoch
            } else if offset <= *base {
                Plan::Deliver
            } else if offset == base + 1 {
                Plan::Advance
            } else {
                Plan::Repair { from: base + 1 }
            }
        }
        Some(Track::Known {
            offset: last,
            epoch: e,
            ..
        }) => {
            if e != epoch {
                Plan::NewEpoch
            } else if offset <= *last {
                Plan::Drop
            } else if offset == last + 1 {
                Plan::Advance
            } else {
                Plan::Repair { from: last + 1 }
            }
        }
    }
}

/// How often at most a line is logged about bad input read from Redis.
const BAD_LOG_EVERY_MS: u64 = 10_000;

/// Logs bad input read from Redis at most once per [`BAD_LOG_EVERY_MS`], saying how many
/// were not logged since: whoever can write to Redis cannot flood the node's log.
#[derive(Debug, Default)]
pub(crate) struct RateLog {
    /// When the last line was written (ms since the Unix epoch; 0: never).
    last: std::sync::atomic::AtomicU64,
    /// Bad inputs not logged since that line.
    skipped: std::sync::atomic::AtomicU64,
}

impl RateLog {
    /// Logs `what` (with where it was read and a detail) unless a line was written less
    /// than [`BAD_LOG_EVERY_MS`] ago; then it only counts it.
    pub(crate) fn warn(&self, what: &str, source: &str, detail: &str) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = now_ms();
        let last = self.last.load(Relaxed);
        if now.saturating_sub(last) >= BAD_LOG_EVERY_MS
            && self
                .last
                .compare_exchange(last, now.max(1), Relaxed, Relaxed)
                .is_ok()
        {
            let not_logged = self.skipped.swap(0, Relaxed);
            tracing::warn!(
                source,
                detail,
                not_logged,
                "bad input from Redis dropped: {what}"
            );
        } else {
            self.skipped.fetch_add(1, Relaxed);
        }
    }
}

/// Counts and logs (at a rate limit) an envelope dropped as bad input.
fn bad(shared: &Shared, what: &str, source: &str, detail: &str) {
    BusStats::incr(&shared.stats.bad_envelopes);
    shared.bad_log.warn(what, source, detail);
}

/// Why the connected loop ended.
enum Exit {
    Stopped,
    Lost(&'static str),
}

/// The subscriber task. `first_up` says whether the first attempt to subscribe worked
/// (`false`: Redis is not there yet; the task keeps trying).
pub(crate) async fn run(
    shared: Arc<Shared>,
    delivery: Arc<dyn Delivery>,
    mut baselines: mpsc::UnboundedReceiver<RoomName>,
    first_up: oneshot::Sender<bool>,
) {
    let mut first_up = Some(first_up);
    let mut ever_up = false;
    let mut attempt: u32 = 0;
    loop {
        let connected = tokio::select! {
            _ = shared.stop.cancelled() => break,
            r = tokio::time::timeout(shared.cfg.op_timeout, subscribe(&shared)) => r,
        };
        match connected {
            Ok(Ok((sink, stream))) => {
                if ever_up {
                    BusStats::incr(&shared.stats.reconnects);
                }
                ever_up = true;
                // Repair what was missed before saying we are up (and before reading
                // anything new: new messages wait in the connection meanwhile).
                let resynced = tokio::select! {
                    _ = shared.stop.cancelled() => break,
                    r = async {
                        shared.warm_publisher().await?;
                        resync(&shared, &*delivery).await
                    } => r,
                };
                match resynced {
                    Ok(()) => {
                        attempt = 0;
                        shared.set_sub_up(true);
                        if let Some(tx) = first_up.take() {
                            let _ = tx.send(true);
                        }
                        tracing::info!("subscribed to the redis bus");
                        match connected_loop(&shared, &*delivery, sink, stream, &mut baselines).await
                        {
                            Exit::Stopped => break,
                            Exit::Lost(why) => {
                                tracing::warn!(why, "redis subscription lost; reconnecting");
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "re-synchronising after subscribe failed"),
                }
                shared.set_sub_up(false);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, attempt, "subscribing to redis failed");
                shared.set_sub_up(false);
            }
            Err(_) => {
                tracing::warn!(attempt, "subscribing to redis timed out");
                shared.set_sub_up(false);
            }
        }
        if let Some(tx) = first_up.take() {
            let _ = tx.send(false);
        }
        let delay = backoff(attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    shared.set_sub_up(false);
    tracing::debug!("redis subscriber stopped");
}

/// Capped exponential backoff with full jitter: uniform in `[0, min(cap, base * 2^n)]`.
fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_CAP);
    ceiling.mul_f64(rand::random::<f64>())
}

/// Where subscriptions are sent: one Redis's pub/sub connection, or a cluster's shards.
enum Sink {
    Single(PubSubSink),
    Cluster(Shards),
}

/// Where messages come from.
enum Source {
    Single(PubSubStream),
    Cluster(Pushes),
}

impl Sink {
    async fn subscribe(&mut self, shared: &Shared, channels: &[String]) -> redis::RedisResult<()> {
        match self {
            Sink::Single(s) => {
                s.subscribe(channels).await?;
                BusStats::incr(&shared.stats.subscribe_commands);
                Ok(())
            }
            Sink::Cluster(c) => c.apply(shared, channels, true).await,
        }
    }

    async fn unsubscribe(&mut self, shared: &Shared, channels: &[String]) -> redis::RedisResult<()> {
        match self {
            Sink::Single(s) => {
                s.unsubscribe(channels).await?;
                BusStats::incr(&shared.stats.unsubscribe_commands);
                Ok(())
            }
            Sink::Cluster(c) => c.apply(shared, channels, false).await,
        }
    }

    /// Whether the connection (every shard of it) answers.
    async fn ping(&mut self, shared: &Shared) -> Result<(), &'static str> {
        match self {
            Sink::Single(s) => {
                match tokio::time::timeout(shared.cfg.op_timeout, s.ping::<redis::Value>()).await {
                    // in subscribed mode the answer is ["pong", ""], not +PONG
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(_)) => Err("ping failed"),
                    Err(_) => Err("ping timed out"),
                }
            }
            Sink::Cluster(c) => {
                let states = tokio::time::timeout(shared.cfg.op_timeout, c.ping())
                    .await
                    .unwrap_or_else(|_| vec![false; c.primaries.len()]);
                let all = states.iter().all(|up| *up);
                *lock(&shared.shards) = c
                    .primaries
                    .iter()
                    .zip(states)
                    .map(|((h, p), up)| ShardState {
                        shard: format!("{h}:{p}"),
                        up,
                    })
                    .collect();
                if all {
                    Ok(())
                } else {
                    Err("a shard does not answer")
                }
            }
        }
    }
}

impl Source {
    async fn next(&mut self) -> Option<Incoming> {
        match self {
            Source::Single(s) => s.next().await.map(Incoming::Msg),
            Source::Cluster(p) => p.next().await,
        }
    }
}

/// Marks every shard of the last session down (the subscription is being rebuilt).
fn shards_down(shared: &Shared) {
    for s in lock(&shared.shards).iter_mut() {
        s.up = false;
    }
}

async fn subscribe(shared: &Shared) -> redis::RedisResult<(Sink, Source)> {
    let (mut sink, stream) = match &shared.backend {
        Backend::Single { client, .. } => {
            let (sink, stream) = client.get_async_pubsub().await?.split();
            (Sink::Single(sink), Source::Single(stream))
        }
        Backend::Cluster { seeds, .. } => {
            shards_down(shared);
            let (shards, pushes) = sharded::connect(shared, seeds).await?;
            *lock(&shared.shards) = shards
                .primaries
                .iter()
                .map(|(h, p)| ShardState {
                    shard: format!("{h}:{p}"),
                    up: true,
                })
                .collect();
            (Sink::Cluster(shards), Source::Cluster(pushes))
        }
    };
    fn single(s: &mut Sink) -> Option<&mut PubSubSink> {
        match s {
            Sink::Single(s) => Some(s),
            Sink::Cluster(_) => None,
        }
    }
    match shared.cfg.subscribe {
        SubscribeMode::Pattern => {
            if let Some(s) = single(&mut sink) {
                s.psubscribe(&[shared.keys.room_pattern(), shared.keys.user_pattern()])
                    .await?;
            }
        }
        SubscribeMode::Rooms => {
            // A new connection holds nothing: every channel wanted now, in batches,
            // before the re-synchronisation reads the rooms' history.
            shared.interest.reset();
            let wanted = shared.interest.wanted();
            for batch in wanted.chunks(interest::BATCH) {
                sink.subscribe(shared, batch).await?;
                shared.interest.subscribed(batch);
            }
            shared.count_subscriptions();
        }
    }
    if let Some(s) = single(&mut sink) {
        s.subscribe(shared.keys.control_channel()).await?;
    }
    Ok((sink, stream))
}

/// Rooms mode: sends the SUBSCRIBE and UNSUBSCRIBE commands that make the connection's
/// channels what the node's members want, many channels per command; the time the next
/// lingering channel is due.
async fn apply_interest(
    shared: &Shared,
    sink: &mut Sink,
) -> Result<Option<tokio::time::Instant>, &'static str> {
    loop {
        let w = shared
            .interest
            .work(tokio::time::Instant::now(), shared.cfg.linger);
        if !w.subscribe.is_empty() {
            match tokio::time::timeout(shared.cfg.op_timeout, sink.subscribe(shared, &w.subscribe))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err("subscribe failed"),
                Err(_) => return Err("subscribe timed out"),
            }
            shared.interest.subscribed(&w.subscribe);
        }
        if !w.unsubscribe.is_empty() {
            match tokio::time::timeout(
                shared.cfg.op_timeout,
                sink.unsubscribe(shared, &w.unsubscribe),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err("unsubscribe failed"),
                Err(_) => return Err("unsubscribe timed out"),
            }
            shared.interest.unsubscribed(&w.unsubscribe);
        }
        shared.count_subscriptions();
        if w.subscribe.len() < interest::BATCH && w.unsubscribe.len() < interest::BATCH {
            return Ok(w.next_due);
        }
    }
}

async fn connected_loop(
    shared: &Shared,
    delivery: &dyn Delivery,
    mut sink: Sink,
    mut stream: Source,
    baselines: &mut mpsc::UnboundedReceiver<RoomName>,
) -> Exit {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut lag = Lag::new(shared.cfg.max_lag);
    let rooms_mode = shared.cfg.subscribe == SubscribeMode::Rooms;
    // Rooms mode: when the next lingering channel is due to be unsubscribed.
    // One timer for the whole connection, re-armed only when the due time changes (not a
    // new one per message received).
    let mut due: Option<tokio::time::Instant> = None;
    let linger = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(linger);
    if rooms_mode {
        match apply_interest(shared, &mut sink).await {
            Ok(d) => due = d,
            Err(why) => return Exit::Lost(why),
        }
    }
    loop {
        if let Some(d) = due {
            if linger.deadline() != d {
                linger.as_mut().reset(d);
            }
        }
        tokio::select! {
            biased;
            _ = shared.stop.cancelled() => return Exit::Stopped,
            // Subscriptions first: a join waits for its channel before reading history.
            _ = shared.interest.changed(), if rooms_mode => {
                match apply_interest(shared, &mut sink).await {
                    Ok(d) => due = d,
                    Err(why) => return Exit::Lost(why),
                }
            }
            _ = &mut linger, if due.is_some() => {
                match apply_interest(shared, &mut sink).await {
                    Ok(d) => due = d,
                    Err(why) => return Exit::Lost(why),
                }
            }
            m = stream.next() => match m {
                Some(Incoming::Nothing) => {}
                Some(Incoming::Cut(why)) => return Exit::Lost(why),
                Some(Incoming::Dropped(channel)) => {
                    if shared.interest.needed(&channel) {
                        // Redis moved the channel's slot to another shard.
                        BusStats::incr(&shared.stats.slot_moves);
                        return Exit::Lost("a subscribed slot moved");
                    }
                }
                Some(Incoming::Msg(m)) => {
                    let stamp = match on_message(shared, delivery, m.get_channel_name(), m.get_payload_bytes()).await {
                        Handled::Done(stamp) => stamp,
                        Handled::Resync(why) => return Exit::Lost(why),
                    };
                    if stamp.is_some_and(|(node, ts)| lag.behind(&node, ts, now_ms())) {
                        // The client library reads the socket into a queue without bound:
                        // let go of it (and of Redis's buffer) and repair from history.
                        BusStats::incr(&shared.stats.lag_resyncs);
                        return Exit::Lost("subscription fell behind");
                    }
                }
                None => return Exit::Lost("connection closed"),
            },
            Some(room) = baselines.recv() => {
                let mut rooms = vec![room];
                while let Ok(r) = baselines.try_recv() {
                    rooms.push(r);
                }
                read_baselines(shared, rooms).await;
            }
            _ = ping.tick() => {
                if let Err(why) = sink.ping(shared).await {
                    return Exit::Lost(why);
                }
            }
        }
    }
}

/// Milliseconds since the Unix epoch (the clock messages' `ts` are stamped with).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Most publishing nodes whose delays one subscription keeps (beyond: not judged).
const LAG_NODES: usize = 256;
/// Delays this far off either way (a day) are taken for a broken stamp, not lag.
const STAMP_SANITY_MS: u64 = 86_400_000;

/// Judges whether the subscription fell behind, from the stamps of the room messages it
/// receives. A message's delay (our clock minus its publishing node's stamp) includes that
/// node's clock skew, so each node's smallest delay seen on this subscription is its
/// baseline: the subscription is behind when a message comes more than `max` after that.
/// A steadily skewed clock moves the baseline, not the verdict; a stamp a day or more
/// off (0, garbage) is not judged at all.
struct Lag {
    max_ms: i64,
    base: std::collections::HashMap<String, i64>,
}

impl Lag {
    fn new(max: Duration) -> Self {
        Lag {
            max_ms: i64::try_from(max.as_millis()).unwrap_or(i64::MAX),
            base: std::collections::HashMap::new(),
        }
    }

    /// Notes a message of `node` stamped `ts` received at `now`; whether it came more
    /// than the allowed lag after that node's baseline. Never when the lag is zero.
    fn behind(&mut self, node: &str, ts: u64, now: u64) -> bool {
        if self.max_ms == 0 {
            return false;
        }
        let delay = i128::from(now) - i128::from(ts);
        // A stamp a day or more off is no clock at all (0, garbage): not judged.
        let Ok(delay) = i64::try_from(delay) else {
            return false;
        };
        if delay.unsigned_abs() >= STAMP_SANITY_MS {
            return false;
        }
        match self.base.get_mut(node) {
            Some(b) => {
                *b = (*b).min(delay);
                delay.saturating_sub(*b) > self.max_ms
            }
            None => {
                if self.base.len() < LAG_NODES {
                    self.base.insert(node.to_string(), delay);
                }
                false
            }
        }
    }
}

/// What became of one pub/sub message.
enum Handled {
    /// Delivered or dropped; for a room message with an offset that was delivered, its
    /// node and stamp (the lag check).
    Done(Option<(String, u64)>),
    /// A message could not be checked against Redis: let the connection go and
    /// re-synchronise every watched room from history (which delivers it if it is real).
    Resync(&'static str),
}

/// Decodes one pub/sub message and delivers what it carries. Nothing read here is
/// trusted more than a client frame (docs/protocol.md section 6): what is malformed, on the
/// wrong channel, forged or out of range is counted, logged at a rate limit and dropped;
/// it never closes a client.
async fn on_message(
    shared: &Shared,
    delivery: &dyn Delivery,
    channel: &str,
    payload: &[u8],
) -> Handled {
    let env = match Envelope::from_msgpack(payload) {
        Ok(env) => env,
        Err(e) => {
            bad(
                shared,
                "undecodable or invalid envelope",
                channel,
                &e.message,
            );
            return Handled::Done(None);
        }
    };
    BusStats::incr(&shared.stats.messages_received);
    let source = channel;
    let channel = shared.keys.parse_channel(channel);
    let node = env.node;
    match (channel, env.msg) {
        (Channel::Room(name), msg @ BusMessage::Message { .. }) => {
            let Some(m) = envelope::room_message(msg) else {
                bad(shared, "not a room message", source, "");
                return Handled::Done(None);
            };
            if m.publication.room.as_str() != name {
                bad(shared, "room message on another room's channel", source, "");
                return Handled::Done(None);
            }
            let stamp = m.publication.offset.map(|_| (node, m.publication.ts));
            match on_room_message(shared, delivery, m, payload).await {
                Ok(true) => Handled::Done(stamp),
                Ok(false) => Handled::Done(None),
                Err(why) => Handled::Resync(why),
            }
        }
        (Channel::Room(name), BusMessage::MemberJoined { room, user }) if room.as_str() == name => {
            delivery.deliver(BusEvent::MemberJoined { room, user });
            Handled::Done(None)
        }
        (Channel::Room(name), BusMessage::MemberLeft { room, user }) if room.as_str() == name => {
            delivery.deliver(BusEvent::MemberLeft { room, user });
            Handled::Done(None)
        }
        (Channel::User(name), msg @ BusMessage::Direct { .. }) => {
            let BusMessage::Direct { ref to, .. } = msg else {
                return Handled::Done(None);
            };
            if to.as_str() != name {
                bad(
                    shared,
                    "direct message on another user's channel",
                    source,
                    "",
                );
                return Handled::Done(None);
            }
            let to = to.clone();
            if let Some(message) = msg.into_direct() {
                delivery.deliver(BusEvent::Direct {
                    to,
                    message: Arc::new(message),
                });
            }
            Handled::Done(None)
        }
        (Channel::Control, BusMessage::Disconnect { user, code }) => {
            // Only a code a client can receive and that means "disconnected": never one
            // that RFC 6455 forbids on the wire (0, 1, 1005, ...) or a frame error.
            if close::valid_for_disconnect(code) {
                delivery.deliver(BusEvent::Disconnect { user, code });
            } else {
                BusStats::incr(&shared.stats.bad_controls);
                bad(
                    shared,
                    "disconnect with a close code a disconnect may not carry",
                    source,
                    &code.to_string(),
                );
            }
            Handled::Done(None)
        }
        _ => {
            bad(
                shared,
                "message of a kind its channel does not carry",
                source,
                "",
            );
            Handled::Done(None)
        }
    }
}

fn deliver_room(delivery: &dyn Delivery, m: RoomMessage) {
    delivery.deliver(BusEvent::Message {
        publication: Arc::new(m.publication),
        skip: m.skip,
    });
}

/// Records `track` as where `room` stands, if it is still watched.
fn set_track(shared: &Shared, room: &RoomName, track: Track) {
    shared.tracking.set(room, track);
}

fn lost(shared: &Shared, delivery: &dyn Delivery, room: &RoomName, why: &str) {
    BusStats::incr(&shared.stats.gaps_lost);
    tracing::warn!(%room, why, "messages lost on the bus cannot be recovered");
    delivery.deliver(BusEvent::Gap { room: room.clone() });
}

/// Delivers a room message in its room's order, repairing gaps and signalling lost
/// history first. `Ok(false)`: dropped as forged (counted); `Err`: it could not be
/// checked (Redis failed), the subscription must re-synchronise.
async fn on_room_message(
    shared: &Shared,
    delivery: &dyn Delivery,
    m: RoomMessage,
    payload: &[u8],
) -> Result<bool, &'static str> {
    if !shared.tracking.holds(&m.publication.room) {
        // No local member (a room is watched from its first local join, under the hub's
        // lock): pattern mode receives every room's messages, rooms mode only those of a
        // left room whose channel still lingers. Counted, to show what each mode costs.
        BusStats::incr(&shared.stats.unwanted_room_messages);
    }
    let Some(offset) = m.publication.offset else {
        // volatile or emitter message: no order to keep, and it moves nothing
        deliver_room(delivery, m);
        return Ok(true);
    };
    let room = m.publication.room.clone();
    // The envelope decoder refuses an offset without an epoch.
    let Some(epoch) = m.epoch.clone() else {
        bad(shared, "an offset without an epoch", room.as_str(), "");
        return Ok(false);
    };
    let plan = shared.tracking.with(&room, |t| plan(t, offset, &epoch));
    if plan.needs_check() {
        match written_by_the_script(shared, &room, offset, &epoch, payload).await {
            Ok(true) => {}
            Ok(false) => {
                BusStats::incr(&shared.stats.forged_offsets);
                bad(
                    shared,
                    "room message whose offset or epoch the room's history does not hold",
                    room.as_str(),
                    &format!("offset {offset} epoch {epoch}"),
                );
                return Ok(false);
            }
            Err(e) => {
                tracing::warn!(%room, error = %e, "cannot check a room message against history");
                return Err("cannot check a room message against history");
            }
        }
    }
    match plan {
        Plan::Deliver => deliver_room(delivery, m),
        Plan::Drop => tracing::trace!(%room, offset, "duplicate dropped"),
        Plan::Advance | Plan::First => {
            deliver_room(delivery, m);
            set_track(shared, &room, known(offset, epoch, payload));
        }
        Plan::Repair { from } => {
            repair(shared, delivery, &room, from, offset - 1, &epoch).await;
            deliver_room(delivery, m);
            set_track(shared, &room, known(offset, epoch, payload));
        }
        Plan::NewEpoch => {
            // The loss first: no member of the old epoch may see an offset of the new.
            lost(shared, delivery, &room, "history lost: a new epoch started");
            if offset > 1 {
                repair(shared, delivery, &room, 1, offset - 1, &epoch).await;
            }
            deliver_room(delivery, m);
            set_track(shared, &room, known(offset, epoch, payload));
        }
    }
    Ok(true)
}

/// Whether a room message is one the publish script wrote: the script XADDs the exact
/// bytes it PUBLISHes (at `<offset>-0`, before the PUBLISH, atomically), so a real
/// message is in the room's stream, or, if trimmed since, at or below the room's
/// offset in the same epoch. An offset ahead of the room's, an epoch the room does not
/// have, or other bytes at that offset are not the script's.
async fn written_by_the_script(
    shared: &Shared,
    room: &RoomName,
    offset: u64,
    epoch: &str,
    payload: &[u8],
) -> Result<bool, BusError> {
    let id = format!("{offset}-0");
    let mut p = redis::pipe();
    p.cmd("XRANGE")
        .arg(shared.keys.history(room))
        .arg(&id)
        .arg(&id);
    p.cmd("HMGET").arg(shared.keys.meta(room)).arg("e").arg("s");
    let (entries, (meta_epoch, meta_offset)): (Vec<StreamEntry>, (Option<String>, Option<u64>)) =
        shared
            .run("check a room message", async {
                let mut c = shared.conn().await?;
                p.query_async(&mut c).await.map_err(OpError::from)
            })
            .await?;
    if let Some((_, fields)) = entries.first() {
        return Ok(fields
            .iter()
            .any(|(k, d)| k == "d" && d.as_slice() == payload));
    }
    Ok(meta_epoch.as_deref() == Some(epoch) && meta_offset.is_some_and(|s| offset <= s))
}

/// Reads `from..=to` of `epoch` from the room's stream and delivers it, or reports a gap.
async fn repair(
    shared: &Shared,
    delivery: &dyn Delivery,
    room: &RoomName,
    from: u64,
    to: u64,
    epoch: &str,
) {
    match read_range(shared, room, from, to, epoch).await {
        Ok(messages) => {
            BusStats::incr(&shared.stats.gap_repairs);
            tracing::info!(%room, from, to, "gap on the bus repaired from history");
            for m in messages {
                deliver_room(delivery, m);
            }
        }
        Err(why) => lost(shared, delivery, room, &why),
    }
}

/// The messages `from..=to` of `epoch`, complete, or why not.
async fn read_range(
    shared: &Shared,
    room: &RoomName,
    from: u64,
    to: u64,
    epoch: &str,
) -> Result<Vec<RoomMessage>, String> {
    let count = to + 1 - from;
    let most = (shared.cfg.history_size as u64).max(shared.cfg.max_recover as u64);
    if count > most {
        return Err(format!("{count} messages missing, more than history holds"));
    }
    let key = shared.keys.history(room);
    let entries: Vec<StreamEntry> = shared
        .run("gap repair", async {
            let mut c = shared.conn().await?;
            let v = redis::cmd("XRANGE")
                .arg(&key)
                .arg(format!("{from}-0"))
                .arg(format!("{to}-0"))
                .arg("COUNT")
                .arg(count)
                .query_async(&mut c)
                .await?;
            Ok(v)
        })
        .await
        .map_err(|e| e.to_string())?;
    if entries.len() as u64 != count {
        return Err(format!(
            "history holds {} of {count} missing messages",
            entries.len()
        ));
    }
    let mut out = Vec::with_capacity(entries.len());
    for (i, (_, fields)) in entries.into_iter().enumerate() {
        let expected = from + i as u64;
        let m = fields
            .into_iter()
            .find(|(k, _)| k == "d")
            .and_then(|(_, d)| Envelope::from_msgpack(&d).ok())
            .and_then(|env| envelope::room_message(env.msg))
            .ok_or_else(|| "undecodable history entry".to_string())?;
        if m.publication.offset != Some(expected) || m.epoch.as_deref() != Some(epoch) {
            return Err("history does not match (epoch changed)".into());
        }
        out.push(m);
    }
    Ok(out)
}

/// Each room's `(offset, epoch)` from its meta hash; `None` when it has no history.
async fn read_metas(
    shared: &Shared,
    rooms: &[RoomName],
) -> Result<Vec<Option<(u64, String)>>, BusError> {
    if rooms.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(Option<u64>, Option<String>)> = if shared.is_cluster() {
        // A pipeline may not span slots on a cluster: one command per room, all sent at
        // once (the connection pipelines those of one shard).
        shared
            .run("read offsets", async {
                let c = shared.conn().await?;
                let reads = rooms.iter().map(|r| {
                    let mut c = c.clone();
                    let key = shared.keys.meta(r);
                    async move {
                        redis::cmd("HMGET")
                            .arg(key)
                            .arg("s")
                            .arg("e")
                            .query_async::<(Option<u64>, Option<String>)>(&mut c)
                            .await
                    }
                });
                let rows = futures_util::future::join_all(reads).await;
                rows.into_iter()
                    .collect::<redis::RedisResult<Vec<_>>>()
                    .map_err(OpError::from)
            })
            .await?
    } else {
        let mut p = redis::pipe();
        for r in rooms {
            p.cmd("HMGET").arg(shared.keys.meta(r)).arg("s").arg("e");
        }
        shared
            .run("read offsets", async {
                let mut c = shared.conn().await?;
                p.query_async(&mut c).await.map_err(OpError::from)
            })
            .await?
    };
    if rows.len() != rooms.len() {
        return Err(BusError::Internal("read offsets: short reply".into()));
    }
    Ok(rows
        .into_iter()
        .map(|(s, e)| e.map(|e| (s.unwrap_or(0), e)))
        .collect())
}

/// Sets the baseline of rooms that are still `Pending`.
async fn read_baselines(shared: &Shared, rooms: Vec<RoomName>) {
    for chunk in rooms.chunks(META_BATCH) {
        match read_metas(shared, chunk).await {
            Ok(metas) => shared.tracking.set_baselines(chunk, metas),
            // They stay Pending: the first message sets their baseline instead.
            Err(e) => tracing::debug!(error = %e, "reading baselines failed"),
        }
    }
}

/// After (re)subscribing: brings every watched room up to its meta offset, repairing
/// from history what can be repaired and reporting gaps for the rest.
async fn resync(shared: &Shared, delivery: &dyn Delivery) -> Result<(), BusError> {
    let rooms = shared.tracking.rooms();
    for chunk in rooms.chunks(META_BATCH) {
        let metas = read_metas(shared, chunk).await?;
        for (room, meta) in chunk.iter().zip(metas) {
            let Some(track) = shared.tracking.get(room) else {
                continue;
            };
            let (last, known_epoch, sig) = match track {
                Track::Pending => {
                    let t = match meta {
                        Some((offset, epoch)) => Track::Soft {
                            offset,
                            epoch: Some(epoch),
                        },
                        None => Track::Soft {
                            offset: 0,
                            epoch: None,
                        },
                    };
                    set_track(shared, room, t);
                    continue;
                }
                Track::Soft { offset, epoch } => (offset, epoch, None),
                Track::Known { offset, epoch, sig } => (offset, Some(epoch), sig),
            };
            match meta {
                None => {
                    // The room's history is gone (expired, or Redis lost its data):
                    // members that know its epoch (every member read it when joining)
                    // must learn it, or they would take the next epoch's offsets for it.
                    if last > 0 || known_epoch.is_some() {
                        lost(shared, delivery, room, "history lost");
                    }
                    set_track(
                        shared,
                        room,
                        Track::Soft {
                            offset: 0,
                            epoch: None,
                        },
                    );
                }
                Some((offset, epoch)) => {
                    if known_epoch.as_deref().is_some_and(|e| e != epoch) {
                        lost(shared, delivery, room, "epoch changed");
                        set_track(
                            shared,
                            room,
                            Track::Known {
                                offset,
                                epoch,
                                sig: None,
                            },
                        );
                    } else if (offset < last && known_epoch.is_some())
                        || (offset >= last && diverged(shared, room, last, sig.as_deref()).await?)
                    {
                        // The room's stored offset is below one this node has delivered
                        // (or read) in the same epoch, or another message sits where the
                        // last one it delivered was: a failover lost acknowledged
                        // publishes (asynchronous replication), and the next publish would
                        // reuse (or did reuse) an offset members hold: a new epoch, once,
                        // cluster-wide.
                        let track =
                            new_epoch_after_loss(shared, room, &epoch, last, sig.as_deref()).await?;
                        lost(
                            shared,
                            delivery,
                            room,
                            "publishes lost in a failover: a new epoch started",
                        );
                        set_track(shared, room, track);
                    } else if offset > last {
                        repair(shared, delivery, room, last + 1, offset, &epoch).await;
                        set_track(
                            shared,
                            room,
                            Track::Known {
                                offset,
                                epoch,
                                sig: None,
                            },
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// The track of a room whose message at `offset` was just delivered live.
fn known(offset: u64, epoch: String, payload: &[u8]) -> Track {
    Track::Known {
        offset,
        epoch,
        sig: Some(sha1_smol::Sha1::from(payload).digest().to_string()),
    }
}

/// Whether the room's stream holds another message at `offset` than the one this node
/// delivered there (`sig`). A trimmed entry, or no signature, proves nothing: false.
async fn diverged(
    shared: &Shared,
    room: &RoomName,
    offset: u64,
    sig: Option<&str>,
) -> Result<bool, BusError> {
    let Some(sig) = sig else {
        return Ok(false);
    };
    if offset == 0 {
        return Ok(false);
    }
    let id = format!("{offset}-0");
    let key = shared.keys.history(room);
    let entries: Vec<StreamEntry> = shared
        .run("check the last delivered message", async {
            let mut c = shared.conn().await?;
            redis::cmd("XRANGE")
                .arg(&key)
                .arg(&id)
                .arg(&id)
                .query_async(&mut c)
                .await
                .map_err(OpError::from)
        })
        .await?;
    Ok(entries.first().is_some_and(|(_, fields)| {
        fields
            .iter()
            .find(|(k, _)| k == "d")
            .is_some_and(|(_, d)| sha1_smol::Sha1::from(d).digest().to_string() != sig)
    }))
}

/// Starts a new epoch for a room whose stored offset fell below `delivered` in `epoch`
/// (compare and set: only if it is still so); the room's track from here.
async fn new_epoch_after_loss(
    shared: &Shared,
    room: &RoomName,
    epoch: &str,
    delivered: u64,
    sig: Option<&str>,
) -> Result<Track, BusError> {
    let fresh = new_epoch();
    let mut inv = shared.scripts.epoch_cas.prepare_invoke();
    inv.key(shared.keys.meta(room))
        .key(shared.keys.history(room))
        .arg(epoch)
        .arg(delivered)
        .arg(&fresh)
        .arg(Shared::ms(shared.cfg.history_ttl))
        .arg(sig.unwrap_or(""));
    let won: i64 = shared
        .run("new epoch after a loss", async {
            let mut c = shared.conn().await?;
            inv.invoke_async(&mut c).await.map_err(OpError::from)
        })
        .await?;
    BusStats::incr(&shared.stats.epoch_resets);
    tracing::warn!(%room, delivered, won = won == 1, "room's stored offset fell below what was delivered: new epoch");
    Ok(if won == 1 {
        Track::Known {
            offset: 0,
            epoch: fresh,
            sig: None,
        }
    } else {
        // Another node started it first (and may have published since): judged by the
        // first message, checked against the stream.
        Track::Soft {
            offset: 0,
            epoch: None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falling_behind_is_judged_against_each_nodes_baseline() {
        let mut lag = Lag::new(Duration::from_secs(30));
        // node a: 2 ms of delay, then a message that waited 31 s more
        assert!(!lag.behind("a", 100_000, 100_002));
        assert!(!lag.behind("a", 200_000, 230_002), "exactly the limit");
        assert!(lag.behind("a", 300_000, 330_003));
        // node b's clock is a minute behind ours, steadily: not lag
        assert!(!lag.behind("b", 100_000, 160_000));
        assert!(!lag.behind("b", 500_000, 560_001));
        // a stamp of 0 is not judged; a clock ahead of ours moves the baseline
        assert!(!lag.behind("c", 0, 1_700_000_000_000));
        assert!(!lag.behind("c", 0, 1_800_000_000_000));
        assert!(!lag.behind("d", 900_000, 100_000));
        assert!(!lag.behind("d", 900_010, 100_010));
        assert!(
            !lag.behind("e", u64::MAX, 100_000),
            "a stamp past i64 does not wrap"
        );
        assert!(!lag.behind("e", 100_000, 100_010), "nor becomes a baseline");
        assert!(!lag.behind("e", 100_000, 130_000));
        assert!(lag.behind("e", 100_000, 130_011));
    }

    #[test]
    fn lag_zero_never_judges() {
        let mut lag = Lag::new(Duration::ZERO);
        assert!(!lag.behind("a", 100_000, 100_000));
        assert!(!lag.behind("a", 100_000, 900_000));
    }

    #[test]
    fn lag_keeps_a_bounded_number_of_nodes() {
        let mut lag = Lag::new(Duration::from_secs(1));
        for i in 0..LAG_NODES + 10 {
            assert!(!lag.behind(&format!("n{i}"), 0, 0));
        }
        assert_eq!(lag.base.len(), LAG_NODES);
        // an unknown node beyond the bound is never judged
        assert!(!lag.behind("late", 0, 10_000));
        assert!(!lag.behind("late", 0, 20_000));
    }

    fn known(offset: u64) -> Track {
        Track::Known {
            offset,
            epoch: "e".into(),
            sig: None,
        }
    }

    #[test]
    fn plans() {
        assert_eq!(plan(None, 5, "e"), Plan::Deliver);
        assert_eq!(plan(Some(&Track::Pending), 5, "e"), Plan::First);
        assert_eq!(plan(Some(&known(4)), 5, "e"), Plan::Advance);
        assert_eq!(plan(Some(&known(5)), 5, "e"), Plan::Drop);
        assert_eq!(plan(Some(&known(2)), 5, "e"), Plan::Repair { from: 3 });
        assert_eq!(
            plan(Some(&known(2)), 1, "f"),
            Plan::NewEpoch,
            "a new history"
        );
        assert_eq!(plan(Some(&known(9)), 3, "f"), Plan::NewEpoch);
        let soft = Track::Soft {
            offset: 4,
            epoch: Some("e".into()),
        };
        assert_eq!(plan(Some(&soft), 3, "e"), Plan::Deliver);
        assert_eq!(plan(Some(&soft), 5, "e"), Plan::Advance);
        assert_eq!(plan(Some(&soft), 7, "e"), Plan::Repair { from: 5 });
        assert_eq!(plan(Some(&soft), 5, "f"), Plan::NewEpoch);
        let empty = Track::Soft {
            offset: 0,
            epoch: None,
        };
        assert_eq!(plan(Some(&empty), 1, "x"), Plan::First);
        assert_eq!(plan(Some(&empty), 3, "x"), Plan::Repair { from: 1 });
        // only one step forward in a known epoch goes unchecked
        for (p, checked) in [
            (Plan::Deliver, false),
            (Plan::Advance, false),
            (Plan::Drop, false),
            (Plan::First, true),
            (Plan::Repair { from: 1 }, true),
            (Plan::NewEpoch, true),
        ] {
            assert_eq!(p.needs_check(), checked, "{p:?}");
        }
    }

    #[test]
    fn bad_input_is_logged_at_a_rate_limit() {
        let log = RateLog::default();
        for _ in 0..100 {
            log.warn("test", "here", "");
        }
        // one line was written; the other 99 only counted
        assert_eq!(log.skipped.load(std::sync::atomic::Ordering::Relaxed), 99);
    }

    #[test]
    fn backoff_is_capped() {
        for n in 0..40 {
            assert!(backoff(n) <= BACKOFF_CAP);
        }
    }
}
