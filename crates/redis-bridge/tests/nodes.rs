//! Node heartbeats (`Bus::report_node` / `nodes` / `remove_node`), in the style of the
//! conformance suite: each case runs against `MemoryBus` and against `RedisBus` on a
//! real `redis-server`; the cluster cases run two Redis buses on one server.

mod support;

use roomcast_redis_bridge::{
    Bus, BusConfig, MemoryBus, NodeStats, RedisBus, RoomStats, ShardState,
};
use std::sync::Arc;
use std::time::Duration;
use support::*;

const TTL: Duration = Duration::from_secs(30);

async fn bus(kind: &str, server: Option<&RedisServer>, cfg: BusConfig) -> Arc<dyn Bus> {
    let (delivery, _events) = collector();
    let bus: Arc<dyn Bus> = match (kind, server) {
        ("redis", Some(s)) => Arc::new(RedisBus::connect(&s.url(), cfg).await.expect("connect")),
        _ => Arc::new(MemoryBus::new(cfg)),
    };
    bus.start(delivery).await.expect("start");
    bus
}

/// The ids of the nodes `bus` lists, in its order.
async fn node_ids(bus: &dyn Bus) -> Vec<String> {
    let nodes = bus.nodes().await.expect("nodes");
    nodes.into_iter().map(|n| n.node_id).collect()
}

fn stats(connections: u64) -> NodeStats {
    NodeStats {
        // Whatever the caller says, the bus names the node itself.
        node_id: "not-this".into(),
        version: "1.2.3".into(),
        started_ms: 1,
        reported_ms: 2,
        connections,
        rooms: 1,
        messages_per_sec: 2.5,
        bus_up: true,
        shards: vec![ShardState {
            shard: "127.0.0.1:7000".into(),
            up: true,
        }],
        top_rooms: vec![RoomStats {
            room: room("lobby"),
            members: 3,
            messages_per_sec: 1.5,
        }],
    }
}

async fn listed_then_removed(kind: &str) {
    let server = (kind == "redis").then(RedisServer::start);
    let bus = bus(kind, server.as_ref(), config("n1")).await;
    assert!(
        bus.nodes().await.expect("nodes").is_empty(),
        "{kind}: no heartbeat yet"
    );
    bus.report_node(&stats(7), TTL).await.expect("report");
    let nodes = bus.nodes().await.expect("nodes");
    let want = NodeStats {
        node_id: "n1".into(),
        ..stats(7)
    };
    assert_eq!(
        nodes,
        vec![want],
        "{kind}: the heartbeat as written, named by the bus"
    );
    // A newer heartbeat replaces the older one.
    bus.report_node(&stats(9), TTL).await.expect("report");
    let nodes = bus.nodes().await.expect("nodes");
    assert_eq!(nodes.len(), 1, "{kind}: one entry per node");
    assert_eq!(nodes[0].connections, 9, "{kind}: the newest heartbeat");
    bus.remove_node().await.expect("remove");
    assert!(
        bus.nodes().await.expect("nodes").is_empty(),
        "{kind}: removed"
    );
    bus.close().await;
}

async fn expires(kind: &str) {
    let server = (kind == "redis").then(RedisServer::start);
    let bus = bus(kind, server.as_ref(), config("n1")).await;
    bus.report_node(&stats(1), Duration::from_millis(200))
        .await
        .expect("report");
    // A node that stops reporting (crashed) drops out once its ttl has passed.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !bus.nodes().await.expect("nodes").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{kind}: the heartbeat never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bus.close().await;
}

#[tokio::test]
async fn memory_heartbeat_listed_then_removed() {
    listed_then_removed("memory").await;
}

#[tokio::test]
async fn redis_heartbeat_listed_then_removed() {
    listed_then_removed("redis").await;
}

#[tokio::test]
async fn memory_heartbeat_expires() {
    expires("memory").await;
}

#[tokio::test]
async fn redis_heartbeat_expires() {
    expires("redis").await;
}

#[tokio::test]
async fn redis_lists_every_node_of_its_cluster_only() {
    let server = RedisServer::start();
    let b = bus("redis", Some(&server), config("node-b")).await;
    let a = bus("redis", Some(&server), config("node-a")).await;
    let other = bus(
        "redis",
        Some(&server),
        BusConfig {
            prefix: "other".into(),
            ..config("node-x")
        },
    )
    .await;
    b.report_node(&stats(2), TTL).await.expect("report b");
    a.report_node(&stats(1), TTL).await.expect("report a");
    other.report_node(&stats(5), TTL).await.expect("report x");
    // Garbage in the hash (something else wrote it) is skipped, and a field without an
    // expiry is dropped.
    let mut c = server.conn().await;
    let _: i64 = redis_query!(
        &mut c,
        "HSET",
        "rc:nodes",
        "junk",
        "99999999999999|not json",
        "no-expiry",
        "{}"
    );
    for bus in [&a, &b] {
        assert_eq!(
            node_ids(&**bus).await,
            ["node-a", "node-b"],
            "both nodes, sorted, nothing else"
        );
    }
    let exists: i64 = redis_query!(&mut c, "HEXISTS", "rc:nodes", "no-expiry");
    assert_eq!(
        exists, 0,
        "a field without an expiry is removed by a reader"
    );
    a.remove_node().await.expect("remove a");
    assert_eq!(
        node_ids(&*b).await,
        ["node-b"],
        "a removed node is gone for the others"
    );
    for bus in [a, b, other] {
        bus.close().await;
    }
}
