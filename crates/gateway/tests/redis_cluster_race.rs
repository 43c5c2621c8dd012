//! On a real Redis Cluster (3 primaries, 3 replicas on loopback): a join racing a publish
//! loses nothing. Clients on node A publish a bounded run of messages into one room
//! without pause while clients on node B join with `since` (the offset they last saw);
//! every one of them gets every offset after its `since` exactly once, in order, whether it
//! is the room's first member on B (B subscribes the room's shard channel during the join:
//! the no-gap rule of docs/protocol.md section 6b) or joins next to others at the same time.

#[path = "../../redis-bridge/tests/support/cluster.rs"]
mod cluster;
mod support;

use cluster::RedisCluster;
use roomcast_protocol::ServerMessage;
use serde_json::json;
use std::sync::Arc;
use support::*;
use tokio::sync::watch;

/// How many messages the publishers send in all (bounded; the joiners' windows fit inside
/// it), from this many clients at once (a dense stream of offsets for the joins to race).
const TOTAL: u64 = 600;
const PUBLISHERS: u64 = 4;
/// Sequential joiners, each the room's only member on B, each reading `WINDOW` offsets.
const SEQUENTIAL: u64 = 12;
const WINDOW: u64 = 15;
/// Joiners that join at once and read to the end.
const TOGETHER: usize = 4;
const ROOM: &str = "race:room";

async fn node(c: &RedisCluster, id: &str, extra: &[&str]) -> TestNode {
    cluster_mode_node(&c.seeds_flag(), id, extra).await
}

/// Joins `ROOM` on `node` as `user` with `since` = (`since`, `epoch`) and reads until offset
/// `until`; returns every offset it got (the join's replay first, then live), in order.
async fn join_and_read(
    node: Arc<TestNode>,
    user: String,
    since: u64,
    epoch: String,
    until: u64,
) -> Vec<u64> {
    let mut c = connect_as(&node, &user).await;
    let r = c
        .request(
            json!({"type": "join", "room": ROOM, "since": {"offset": since, "epoch": epoch}}),
            "j",
        )
        .await;
    let ServerMessage::Joined {
        recovered,
        messages,
        epoch: now,
        ..
    } = r
    else {
        panic!("{user}: join: {r:?}")
    };
    assert!(recovered, "{user}: since {since} not recovered");
    assert_eq!(now, epoch, "{user}: the epoch changed");
    let mut got: Vec<u64> = messages.iter().filter_map(|m| m.offset).collect();
    let replayed = got.len();
    while got.last().copied().unwrap_or(since) < until {
        let m = c
            .recv_match(|m| matches!(m, ServerMessage::Message(p) if p.room.as_str() == ROOM))
            .await;
        let p = publication(&m);
        let o = p
            .offset
            .unwrap_or_else(|| panic!("{user}: message without offset"));
        got.push(o);
    }
    eprintln!(
        "{user}: since {since}: {replayed} replayed by the join, {} live",
        got.len() - replayed
    );
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_racing_publishes_lose_and_repeat_nothing() {
    let rc = RedisCluster::start();
    let a = node(&rc, "a", &[]).await;
    // No linger: a sequential joiner that is B's only member makes B subscribe again.
    let b = Arc::new(node(&rc, "b", &["--bus-linger-ms", "0"]).await);

    let mut first = connect_as(&a, "publisher0").await;
    let ServerMessage::Joined { epoch, .. } = first.join(ROOM).await else {
        unreachable!()
    };
    let mut publishers = vec![first];
    for k in 1..PUBLISHERS {
        publishers.push(connect_as(&a, &format!("publisher{k}")).await);
    }
    // PUBLISHERS clients on A, each sending its share of TOTAL without pause; the highest
    // acknowledged offset is what a joiner "last saw".
    let (acked_tx, acked) = watch::channel(0u64);
    let acked_tx = Arc::new(acked_tx);
    let mut publishing = Vec::new();
    for (k, mut p) in publishers.into_iter().enumerate() {
        let tx = acked_tx.clone();
        publishing.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..TOTAL / PUBLISHERS {
                let o = p
                    .publish_acked(ROOM, json!(format!("{k}-{i}")), &format!("p{k}-{i}"))
                    .await
                    .unwrap_or_else(|| panic!("publish {k}-{i}: no offset"));
                tx.send_modify(|m| *m = (*m).max(o));
                mine.push(o);
            }
            mine
        }));
    }

    // Sequential joiners: each is the room's only member on B (B holds no subscription
    // between them), joins at the latest acknowledged offset, reads WINDOW more.
    let mut results = Vec::new();
    for j in 1..=SEQUENTIAL {
        eventually("B holds no room subscription", || async {
            (metric(b.addr, "roomcast_bus_subscribed_rooms").await == 0.0).then_some(())
        })
        .await;
        let mut rx = acked.clone();
        let at_least = j * 40;
        let since = *rx
            .wait_for(|&o| o >= at_least)
            .await
            .expect("the publisher runs");
        let until = (since + WINDOW).min(TOTAL);
        let got = join_and_read(b.clone(), format!("seq{j}"), since, epoch.clone(), until).await;
        results.push((format!("seq{j}"), since, until, got));
    }

    // Joiners together: they join at once, each with its own `since` behind the latest
    // acknowledged offset, and read to the end.
    let latest = *acked.borrow();
    let mut together = Vec::new();
    for k in 0..TOGETHER {
        let since = latest.saturating_sub(7 * k as u64);
        let name = format!("together{k}");
        together.push((
            name.clone(),
            since,
            tokio::spawn(join_and_read(b.clone(), name, since, epoch.clone(), TOTAL)),
        ));
    }
    for (name, since, h) in together {
        let got = h.await.expect("joiner task");
        results.push((name, since, TOTAL, got));
    }
    let mut offsets = Vec::new();
    for h in publishing {
        offsets.extend(h.await.expect("publisher task"));
    }
    offsets.sort_unstable();
    assert_eq!(
        offsets,
        (1..=TOTAL).collect::<Vec<u64>>(),
        "offsets are dense"
    );

    for (name, since, until, got) in &results {
        // The join's replay may already reach past `until` (publishing went on meanwhile).
        let last = got.last().copied().unwrap_or(*since).max(*until);
        let want: Vec<u64> = (since + 1..=last).collect();
        assert_eq!(
            got, &want,
            "{name}: since {since}: every offset once, in order"
        );
    }
    // Nothing was lost on B's side either (a loss history could not repair).
    assert_eq!(metric(b.addr, "roomcast_bus_gaps_lost_total").await, 0.0);
    eprintln!(
        "B repaired {} gap(s) from history",
        metric(b.addr, "roomcast_bus_gap_repairs_total").await
    );
    a.stop().await;
    if let Ok(b) = Arc::try_unwrap(b) {
        b.stop().await;
    }
}
