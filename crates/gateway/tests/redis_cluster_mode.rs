//! Nodes on a real Redis Cluster (`--redis-cluster-urls`, docs/protocol.md section 6b):
//! 3 primaries and 3 replicas started by the test on loopback. Two nodes deliver across
//! the cluster in order, recover with `since`, share presence, carry direct messages and
//! idempotent publishes, deliver an emitter's SPUBLISH; a node receives nothing of a room
//! it holds no member of, and churn leaves no subscription behind.

#[path = "../../redis-bridge/tests/support/cluster.rs"]
mod cluster;
mod support;

use cluster::RedisCluster;
use roomcast_protocol::ServerMessage;
use serde_json::json;
use support::*;

/// Node `id` on the cluster, with JWT auth and no publish rate limit.
async fn node(c: &RedisCluster, id: &str, extra: &[&str]) -> TestNode {
    cluster_mode_node(&c.seeds_flag(), id, extra).await
}

/// Publishes `data` to `room` with request id `id`; the acked offset.
async fn publish(c: &mut Client, room: &str, id: &str, data: serde_json::Value) -> u64 {
    let offset = c.publish_acked(room, data, id).await;
    offset.unwrap_or_else(|| panic!("publish {id}: acknowledged without an offset"))
}

async fn next_message(c: &mut Client) -> roomcast_protocol::Publication {
    let m = c.recv_match(is_message).await;
    publication(&m).clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_recover_share_presence_and_direct_messages() {
    let rc = RedisCluster::start();
    let a = node(&rc, "a", &[]).await;
    let b = node(&rc, "b", &[]).await;
    let mut alice = connect_as(&a, "alice").await;
    let mut bob = connect_as(&b, "bob").await;
    let room = "chat:main";
    alice.join(room).await;
    let ServerMessage::Joined { epoch, .. } = bob.join(room).await else {
        unreachable!()
    };

    // Across nodes, in offset order.
    for i in 1..=30u64 {
        assert_eq!(
            publish(&mut alice, room, &format!("p{i}"), json!(i)).await,
            i
        );
    }
    for i in 1..=30u64 {
        let p = next_message(&mut bob).await;
        assert_eq!((p.offset, p.data.clone()), (Some(i), json!(i)));
        assert_eq!(p.from.as_str(), "alice");
    }

    // Idempotent: a repeated id gets the first offset and is not delivered again.
    assert_eq!(publish(&mut alice, room, "p5", json!("again")).await, 5);
    assert_eq!(publish(&mut alice, room, "p31", json!(31)).await, 31);
    let p = next_message(&mut bob).await;
    assert_eq!(p.offset, Some(31), "the repeat was not delivered");

    // Presence, cluster-wide.
    let r = bob.presence(room, "pr").await;
    let ServerMessage::Presence { count, .. } = r else {
        panic!("presence: {r:?}")
    };
    assert_eq!((count.users, count.connections), (2, 2));

    // A direct message from A's user to B's.
    let dm = json!({"type": "send", "to": "bob", "event": "dm", "data": {"hi": 1}});
    alice.acked(dm, "dm1").await;
    let d = bob.recv_match(is_direct).await;
    let ServerMessage::Direct(d) = d else {
        unreachable!()
    };
    assert_eq!(
        (d.from.as_str(), d.data.clone()),
        ("alice", json!({"hi": 1}))
    );

    // Recovery: bob goes, misses 10, comes back on the other node with `since`.
    drop(bob);
    for i in 32..=41u64 {
        assert_eq!(
            publish(&mut alice, room, &format!("p{i}"), json!(i)).await,
            i
        );
    }
    let mut bob = connect_as(&a, "bob").await;
    let r = bob
        .request(
            json!({"type": "join", "room": room, "since": {"offset": 31, "epoch": epoch}}),
            "rejoin",
        )
        .await;
    let ServerMessage::Joined {
        recovered,
        messages,
        ..
    } = r
    else {
        panic!("rejoin: {r:?}")
    };
    assert!(recovered);
    let offsets: Vec<_> = messages.iter().filter_map(|m| m.offset).collect();
    assert_eq!(offsets, (32..=41).collect::<Vec<u64>>());

    // Readiness and one shard gauge per primary.
    let (status, _) = http(a.addr, "GET", "/readyz", &[], "").await;
    assert_eq!(status, 200);
    let (_, body) = http(a.addr, "GET", "/metrics", &[], "").await;
    let up: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("roomcast_bus_shard_up{"))
        .collect();
    assert_eq!(up.len(), 3, "three shards: {up:?}");
    assert!(up.iter().all(|l| l.ends_with(" 1")), "{up:?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emitter_spublish_reaches_members() {
    let rc = RedisCluster::start();
    let a = node(&rc, "a", &[]).await;
    let b = node(&rc, "b", &[]).await;
    let mut wa = connect_as(&a, "wa").await;
    let mut wb = connect_as(&b, "wb").await;
    wa.join("feed").await;
    wb.join("feed").await;
    let paid = json!({"paid": true});
    let bytes = emitter_envelope("billing-backend", "feed", "invoice", "billing", paid);
    // The cluster room channel: SPUBLISH on the shard of the room's slot.
    let out = cluster::cli_with_input(
        rc.nodes[0].port,
        &["SPUBLISH", "roomcast:room:{feed}"],
        &bytes,
    )
    .expect("redis-cli runs");
    assert_eq!(out.trim(), "2", "both nodes hold the channel: {out:?}");
    for c in [&mut wa, &mut wb] {
        let p = next_message(c).await;
        assert_eq!(p.offset, None);
        assert_eq!(p.data, json!({"paid": true}));
        assert_eq!(p.from.as_str(), "billing");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_receives_nothing_of_rooms_it_does_not_hold_and_churn_leaves_nothing() {
    let rc = RedisCluster::start();
    let a = node(&rc, "a", &[]).await;
    let b = node(&rc, "b", &["--bus-linger-ms", "300"]).await;
    let mut pa = connect_as(&a, "pa").await;
    let mut ra = connect_as(&a, "ra").await;
    let mut rb = connect_as(&b, "rb").await;
    ra.join("solo").await;
    for i in 1..=20u64 {
        publish(&mut pa, "solo", &format!("s{i}"), json!(i)).await;
    }
    for i in 1..=20u64 {
        assert_eq!(next_message(&mut ra).await.offset, Some(i));
    }
    // B delivers across nodes for a room it holds...
    rb.join("shared").await;
    publish(&mut pa, "shared", "x1", json!("x")).await;
    assert_eq!(next_message(&mut rb).await.offset, Some(1));
    // ...and received nothing of `solo`, held on A alone.
    assert_eq!(
        metric(b.addr, "roomcast_bus_unwanted_room_messages_total").await,
        0.0
    );
    assert_eq!(metric(b.addr, "roomcast_bus_subscribed_rooms").await, 1.0);
    assert_eq!(
        metric(a.addr, "roomcast_bus_subscribed_rooms").await,
        1.0,
        "solo"
    );

    // Churn on B: join and leave in a loop; after the linger nothing is subscribed.
    for i in 0..20 {
        rb.join("churn").await;
        let r = rb
            .request(json!({"type": "leave", "room": "churn"}), &format!("l{i}"))
            .await;
        assert!(matches!(r, ServerMessage::Left { .. }), "{r:?}");
    }
    let r = rb
        .request(json!({"type": "leave", "room": "shared"}), "ls")
        .await;
    assert!(matches!(r, ServerMessage::Left { .. }), "{r:?}");
    eventually("B gives up every room channel", || async {
        (metric(b.addr, "roomcast_bus_subscribed_rooms").await == 0.0).then_some(())
    })
    .await;
    drop(rb);
    eventually("B gives up the user channel", || async {
        (metric(b.addr, "roomcast_bus_subscribed_users").await == 0.0).then_some(())
    })
    .await;
    // Redis agrees: no sharded channel of the churned room is held by anyone.
    let port = rc.primary_of("roomcast:room:{churn}");
    let out = cluster::cli(port, &["PUBSUB", "SHARDNUMSUB", "roomcast:room:{churn}"])
        .expect("redis-cli runs");
    assert_eq!(
        out.lines().nth(1).map(str::trim),
        Some("0"),
        "no subscriber left: {out:?}"
    );
    a.stop().await;
    b.stop().await;
}

/// SSE and the backend API on the cluster: an SSE reader on node B receives what
/// `/api/publish` on node A publishes, with its offset as the event id, and resumes after
/// a reconnect from `Last-Event-ID` (history on the room's shard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_the_backend_api_work_across_the_cluster() {
    let rc = RedisCluster::start();
    let a = node(&rc, "a", &["--api-keys", "k-cluster"]).await;
    let b = node(&rc, "b", &[]).await;
    let path = format!("/sse?rooms=news&token={}", token("reader", json!({})));
    let mut s = SseStream::open(b.addr, &path, &[]).await;
    assert_eq!(s.status, 200, "{}", s.head);
    let auth = [
        ("Authorization", "Bearer k-cluster"),
        ("Content-Type", "application/json"),
    ];
    let publish = |n: u64| {
        let body = json!({"room": "news", "event": "e", "data": n}).to_string();
        async move {
            let (status, resp) = http(a.addr, "POST", "/api/publish", &auth, &body).await;
            assert_eq!(status, 200, "{resp}");
            let v: serde_json::Value = serde_json::from_str(&body_of(&resp)).expect("json");
            v["offset"].as_u64().expect("an offset")
        }
    };
    let mut last = None;
    for n in 1..=3u64 {
        let offset = publish(n).await;
        let ev = loop {
            let ev = s.next_event().await.expect("an event");
            if ev.event.as_deref() == Some("message") {
                break ev;
            }
        };
        let msg = ev.json();
        assert_eq!(msg["data"], json!(n), "{msg}");
        assert_eq!(msg["offset"].as_u64(), Some(offset), "{msg}");
        last = s.last_event_id.clone();
    }
    drop(s);
    // Published while the reader is away; the reconnect resumes from its last event id.
    let missed = publish(4).await;
    let last = last.expect("event ids");
    let mut s = SseStream::open(b.addr, &path, &[("Last-Event-ID", last.as_str())]).await;
    assert_eq!(s.status, 200, "{}", s.head);
    let ev = loop {
        let ev = s.next_event().await.expect("an event");
        if ev.event.as_deref() == Some("message") {
            break ev;
        }
    };
    assert_eq!(ev.json()["offset"].as_u64(), Some(missed), "{:?}", ev);
    assert_eq!(ev.json()["data"], json!(4));
    a.stop().await;
    b.stop().await;
}
