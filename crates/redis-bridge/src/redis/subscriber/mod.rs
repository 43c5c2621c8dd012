//! The subscriber: the node's one pub/sub connection, what it delivers, and gap repair.
//!
//! One task owns the connection: it PSUBSCRIBEs `<prefix>:room:*` and `<prefix>:user:*`
//! (pattern mode) or SUBSCRIBEs the channels of the rooms and users the node holds (rooms
//! mode, see `interest.rs`), SUBSCRIBEs `<prefix>:control`, decodes every envelope and hands events to the node's
//! [`EventSink`] in the order Redis sent them. Room messages carry offsets, so for every
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
//!
//! Files: this one is the task (connect, re-synchronise, then the connected loop until a
//! cut, with backoff between attempts); `link.rs` the connection and its subscriptions;
//! `receive.rs` what one message becomes; `repair.rs` reading what was missed from a
//! room's stream; `resync.rs` checking every watched room after a (re)subscribe;
//! `lag.rs` whether the subscription fell behind.

mod lag;
mod link;
mod receive;
mod repair;
mod resync;

use super::sharded::Incoming;
use super::Shared;
use crate::bus::{BusStats, EventSink, SubscribeMode};
use lag::{now_ms, Lag};
use link::{apply_interest, subscribe, Sink, Source};
use receive::{on_message, Handled};
use roomcast_protocol::RoomName;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// First reconnect delay bound; doubles per failed attempt up to [`BACKOFF_CAP`].
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// How often the pub/sub connection is pinged (a half-open socket shows no EOF).
const PING_EVERY: Duration = Duration::from_secs(1);

/// Why the connected loop ended.
enum Exit {
    Stopped,
    Lost(&'static str),
}

/// The subscriber task. `first_up` says whether the first attempt to subscribe worked
/// (`false`: Redis is not there yet; the task keeps trying).
pub(crate) async fn run(
    shared: Arc<Shared>,
    delivery: Arc<dyn EventSink>,
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
                        resync::resync(&shared, &*delivery).await
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
                        match connected_loop(&shared, &*delivery, sink, stream, &mut baselines)
                            .await
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

async fn connected_loop(
    shared: &Shared,
    delivery: &dyn EventSink,
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
                resync::read_baselines(shared, rooms).await;
            }
            _ = ping.tick() => {
                if let Err(why) = sink.ping(shared).await {
                    return Exit::Lost(why);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        for n in 0..40 {
            assert!(backoff(n) <= BACKOFF_CAP);
        }
    }
}
