//! A failover lost acknowledged publishes (Redis replication is asynchronous): the
//! promoted replica's offset for a room is below offsets the node already delivered, so
//! the next publish would reuse an offset clients hold. After its subscription is cut
//! and re-made, the node finds the room's stored offset below what it delivered, starts a
//! new epoch (compare and set, once) and reports the loss (`Gap`: members are told
//! `recovered: false`); the next publish gets offset 1 of the new epoch, never a reused
//! offset of the old one. The loss is made exactly (the meta and stream as a replica that
//! missed the last two writes holds them) on one Redis and on a Redis Cluster. And the
//! harder case: the lost offsets were already re-used by another node's publishes before
//! this node came back, so the stored offset is not below its own; the node compares the
//! message it delivered last with what the stream now holds at that offset.

mod support;

use roomcast_redis_bridge::{Bus, BusEvent, RedisBus};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use support::*;

/// Starts a bus just connected (or panics if it could not connect) with a delivery of its
/// own; the bus and the events it delivers.
async fn started<E: std::fmt::Debug>(bus: Result<RedisBus, E>) -> (Arc<dyn Bus>, Events) {
    let bus: Arc<dyn Bus> = Arc::new(bus.expect("connect"));
    let (delivery, events) = collector();
    bus.start(delivery).await.expect("start");
    (bus, events)
}

/// Publishes 5 messages to room `r` (watched) and receives them; the epoch.
async fn five(bus: &Arc<dyn Bus>, events: &mut Events) -> String {
    bus.watch_room(&room("r"));
    bus.room_ready(&room("r")).await.expect("subscribed");
    let mut epoch = String::new();
    for i in 1..=5 {
        epoch = publish(&**bus, "r", json!(i)).await.epoch;
    }
    let got: Vec<_> = events.messages(5).await.iter().map(|p| p.offset).collect();
    assert_eq!(got, (1..=5).map(Some).collect::<Vec<_>>());
    epoch
}

/// Adds to `pipe` what makes room `r` look as on a replica that missed offsets 4 and 5:
/// its meta back at offset 3 and those two entries gone from its stream.
fn lose_4_and_5(pipe: &mut redis::Pipeline) -> &mut redis::Pipeline {
    pipe.cmd("HSET")
        .arg("rc:meta:r")
        .arg("s")
        .arg(3)
        .ignore()
        .cmd("XDEL")
        .arg("rc:history:r")
        .arg("4-0")
        .arg("5-0")
        .ignore()
}

/// After the loss and a cut: the gap is reported, the room has a new epoch, and the next
/// publish is offset 1 of it.
async fn loss_is_a_new_epoch(bus: &Arc<dyn Bus>, events: &mut Events, old: &str) {
    events
        .until(|e| match e {
            BusEvent::Gap { room } if room.as_str() == "r" => Some(()),
            _ => None,
        })
        .await;
    let r = publish(&**bus, "r", json!("after")).await;
    assert_ne!(r.epoch, old, "a new epoch");
    assert_eq!(r.offset, Some(1), "not offset 4 of the old epoch");
    let (p, _) = events.message().await;
    assert_eq!((p.offset, p.data.clone()), (Some(1), json!("after")));
    assert_eq!(bus.stats().epoch_resets.load(Ordering::Relaxed), 1);
    assert!(bus.stats().gaps_lost.load(Ordering::Relaxed) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_lost_writes_become_a_new_epoch() {
    let server = RedisServer::start();
    let (bus, mut events) = started(RedisBus::connect(&server.url(), config("a")).await).await;
    let old = five(&bus, &mut events).await;
    let mut c = server.conn().await;
    // What a replica that missed offsets 4 and 5 holds.
    let _: () = lose_4_and_5(&mut redis::pipe())
        .cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"][..])
        .ignore()
        .query_async(&mut c)
        .await
        .expect("lose the last two writes and cut the subscription");
    loss_is_a_new_epoch(&bus, &mut events, &old).await;
    bus.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_lost_writes_become_a_new_epoch() {
    let rc = cluster::RedisCluster::start();
    let (bus, mut events) =
        started(RedisBus::connect_cluster(&rc.seeds(), config("a")).await).await;
    let old = five(&bus, &mut events).await;
    let port = rc.primary_of("{r}");
    let ok = |out: Option<String>| out.expect("redis-cli runs");
    ok(cluster::cli(port, &["HSET", "rc:meta:{r}", "s", "3"]));
    ok(cluster::cli(
        port,
        &["XDEL", "rc:history:{r}", "4-0", "5-0"],
    ));
    // RESP3 subscribers count as normal clients: cut every connection of every node.
    for n in &rc.nodes {
        ok(cluster::cli(n.port, &["CLIENT", "KILL", "TYPE", "normal"]));
    }
    loss_is_a_new_epoch(&bus, &mut events, &old).await;
    bus.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_offsets_reused_by_another_node_become_a_new_epoch() {
    let server = RedisServer::start();
    let (a, mut events) = started(RedisBus::connect(&server.url(), config("a")).await).await;
    let (b, _other_events) = started(RedisBus::connect(&server.url(), config("b")).await).await;
    let old = five(&a, &mut events).await;
    let mut c = server.conn().await;
    // Node a's subscription is cut and kept out (a password its new connections do not
    // have; connections open now stay signed in) while the room loses offsets 4 and 5
    // and node b publishes three messages, which take offsets 4, 5 and 6 again.
    let mut pipe = redis::pipe();
    pipe.cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("keep-a-out")
        .ignore();
    let _: () = lose_4_and_5(&mut pipe)
        // as a replica that never had them: the stream's last id is 3-0 again
        .cmd("XSETID")
        .arg("rc:history:r")
        .arg("3-0")
        .arg("MAXDELETEDID")
        .arg("0-0")
        .ignore()
        .cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"][..])
        .ignore()
        .query_async(&mut c)
        .await
        .expect("lose the last two writes and cut the subscriptions");
    for i in 4..=6 {
        let r = publish(&*b, "r", json!(format!("b{i}"))).await;
        assert_eq!(
            (r.offset, r.epoch.as_str()),
            (Some(i), old.as_str()),
            "re-used"
        );
    }
    let _: () = redis_query!(&mut c, "CONFIG", "SET", "requirepass", "");
    events
        .until(|e| match e {
            BusEvent::Gap { room } if room.as_str() == "r" => Some(()),
            BusEvent::Message { publication, .. } => {
                panic!(
                    "offset {:?} of a re-used sequence delivered",
                    publication.offset
                )
            }
            _ => None,
        })
        .await;
    assert_eq!(a.stats().epoch_resets.load(Ordering::Relaxed), 1);
    let r = publish(&*b, "r", json!("after")).await;
    assert_ne!(r.epoch, old, "a new epoch");
    assert_eq!(r.offset, Some(1));
    let (p, _) = events.message().await;
    assert_eq!((p.offset, p.data.clone()), (Some(1), json!("after")));
    a.close().await;
    b.close().await;
}
