//! The node's heartbeat: every `--node-stats-interval` the node writes a small summary
//! of itself ([`NodeStats`]: connections, rooms, messages/s, bus state, its busiest rooms)
//! to the bus, where the admin page of any node reads the whole cluster's. The entry
//! lives three intervals, so a crashed node drops out by itself; a draining node
//! removes its own.
//!
//! Messages/s come from the hub, which counts the room messages the bus delivers in its
//! room entries, under the lock it takes for the room's members anyway (no lock of its
//! own on the way from the bus to the members).

use crate::hub::now_ms;
use crate::node::Node;
use roomcast_protocol::RoomName;
use roomcast_redis_bridge::{NodeStats, RoomStats};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Rooms a heartbeat names, by local members and (as many again) by messages/s.
pub const TOP_ROOMS: usize = 10;

/// What one heartbeat needs to remember from the last.
struct Last {
    at: Instant,
    total: u64,
}

/// The `n` entries with the largest value (ties by name), largest first; in linear time
/// (one interval may have counted many rooms).
fn top<K: Ord, V: Ord + Copy>(items: impl Iterator<Item = (K, V)>, n: usize) -> Vec<(K, V)> {
    let order = |a: &(K, V), b: &(K, V)| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0));
    let mut v: Vec<(K, V)> = items.collect();
    if n == 0 {
        return Vec::new();
    }
    if v.len() > n {
        v.select_nth_unstable_by(n - 1, order);
        v.truncate(n);
    }
    v.sort_by(order);
    v
}

/// The node's stats now; `last` is moved on to now.
fn collect(node: &Node, started_ms: u64, last: &mut Last) -> NodeStats {
    let now = Instant::now();
    let secs = now.duration_since(last.at).as_secs_f64().max(0.001);
    let total = node.hub.messages_total();
    let per_sec = |n: u64| (n as f64 / secs * 10.0).round() / 10.0;
    let messages_per_sec = per_sec(total.saturating_sub(last.total));
    let counts = node.hub.take_message_counts();
    *last = Last { at: now, total };

    // The busiest by messages/s, then (in one pass over the hub's rooms, keeping only a
    // bounded few) the busiest by local members and the member counts of the former.
    let by_rate = top(counts.iter().map(|(r, n)| (r, *n)), TOP_ROOMS);
    let mut members_of: HashMap<RoomName, u64> = HashMap::new();
    let mut by_members: Vec<(RoomName, u64)> = Vec::with_capacity(TOP_ROOMS + 1);
    let mut rooms = 0u64;
    node.hub.for_each_room(|room, n| {
        rooms += 1;
        let n = n as u64;
        if by_rate.iter().any(|(r, _)| *r == room) {
            members_of.insert(room.clone(), n);
        }
        let smallest = by_members.last().map(|(_, m)| *m).unwrap_or(0);
        if by_members.len() < TOP_ROOMS || n > smallest {
            let at = by_members.partition_point(|(_, m)| *m >= n);
            by_members.insert(at, (room.clone(), n));
            by_members.truncate(TOP_ROOMS);
        }
    });
    let mut top_rooms: Vec<RoomStats> = by_members
        .into_iter()
        .map(|(room, members)| {
            let rate = per_sec(counts.get(&room).copied().unwrap_or(0));
            RoomStats {
                room,
                members,
                messages_per_sec: rate,
            }
        })
        .collect();
    for (room, n) in by_rate {
        if top_rooms.iter().any(|r| &r.room == room) {
            continue;
        }
        top_rooms.push(RoomStats {
            members: members_of.get(room).copied().unwrap_or(0),
            messages_per_sec: per_sec(n),
            room: room.clone(),
        });
    }
    NodeStats {
        node_id: node.node_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_ms,
        reported_ms: now_ms(),
        connections: node.connections.load(Ordering::Relaxed) as u64,
        rooms,
        messages_per_sec,
        bus_up: node.bus.is_ready() && node.hub.bus_up(),
        shards: node.bus.shards(),
        top_rooms,
    }
}

/// Writes the node's heartbeat every `--node-stats-interval` until `shutdown`, then
/// removes it. A failed write is logged and tried again at the next tick.
pub async fn run(node: Arc<Node>, shutdown: CancellationToken) {
    let every = node.cfg.node_stats_interval.max(Duration::from_secs(1));
    let ttl = every * 3;
    let started_ms = now_ms();
    let mut last = Last {
        at: Instant::now(),
        total: node.hub.messages_total(),
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let stats = collect(&node, started_ms, &mut last);
        let r = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = node.bus.report_node(&stats, ttl) => r,
        };
        match r {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("node heartbeat written again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "node heartbeat not written; the admin page may miss this node");
            }
            Err(e) => tracing::debug!(error = %e, "node heartbeat not written"),
        }
    }
    match node.bus.remove_node().await {
        Ok(()) => tracing::debug!("node heartbeat removed; heartbeat task stopped"),
        Err(e) => {
            tracing::debug!(error = %e, "node heartbeat not removed (it expires); heartbeat task stopped")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::top;

    #[test]
    fn top_is_largest_first_ties_by_name_and_bounded() {
        let items = [("b", 2u64), ("a", 2), ("c", 5), ("d", 1), ("e", 0)];
        assert_eq!(
            top(items.into_iter(), 3),
            vec![("c", 5), ("a", 2), ("b", 2)]
        );
        assert_eq!(top(items.into_iter(), 9).len(), 5);
        assert!(top(items.into_iter(), 0).is_empty());
    }
}
