//! Cluster mode (issue 3, docs/protocol.md section 6) at the WebSocket level: nodes started on port
//! 0 and bridged by a real redis-server, real WebSocket clients on several nodes.

mod support;

use roomcast_protocol::{Encoding, ErrorCode, ServerMessage};
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_publish_and_ack() {
    let redis = RedisServer::start();
    let nodes = cluster(&redis, 2, JWT_UNLIMITED, &[]).await;
    let mut alice = connect_user(&nodes[0].ws_url(), "alice", Encoding::Json).await;
    let mut bob = connect_user(&nodes[1].ws_url(), "bob", Encoding::Json).await;
    let mut carl = connect_user(&nodes[1].ws_url(), "carl", Encoding::MsgPack).await;
    for c in [&mut alice, &mut bob, &mut carl] {
        c.join("x").await;
    }
    let ack = alice
        .acked(
            json!({"type": "publish", "room": "x", "event": "chat", "data": {"hi": "from n1"}}),
            "m1",
        )
        .await;
    assert_eq!(ack, Some(1));
    for c in [&mut bob, &mut carl] {
        let m = c.recv_match(is_message).await;
        let p = publication(&m);
        assert_eq!(
            (p.offset, p.from.as_str(), &p.data),
            (Some(1), "alice", &json!({"hi": "from n1"}))
        );
        assert_eq!(p.event.as_str(), "chat");
    }
    // The other way round, with echo: the sender on n2 gets its own message too.
    let ack = bob
        .acked(
            json!({"type": "publish", "room": "x", "event": "chat", "data": 2, "echo": true}),
            "m2",
        )
        .await;
    assert_eq!(ack, Some(2));
    for c in [&mut alice, &mut bob, &mut carl] {
        assert_eq!(c.messages(1).await, vec![(2, "bob".to_string(), json!(2))]);
    }
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_on_different_nodes_give_every_client_one_order() {
    let redis = RedisServer::start();
    let nodes = cluster(&redis, 3, JWT_UNLIMITED, &[]).await;
    let per_publisher = 100u64;
    let publishers = ["p1", "p2", "p3", "p4", "p5", "p6"];
    let total = per_publisher as usize * publishers.len();
    // Two publishers and one listener per node; publishers echo so they record too.
    let mut pubs = Vec::new();
    for (i, name) in publishers.iter().enumerate() {
        let mut c = connect_user(&nodes[i % 3].ws_url(), name, Encoding::Json).await;
        c.join("order").await;
        pubs.push((name.to_string(), c));
    }
    let mut listeners = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let enc = if i % 2 == 0 {
            Encoding::Json
        } else {
            Encoding::MsgPack
        };
        let mut c = connect_user(&node.ws_url(), &format!("l{i}"), enc).await;
        c.join("order").await;
        listeners.push(c);
    }
    let mut tasks = Vec::new();
    for (name, mut c) in pubs {
        tasks.push(tokio::spawn(async move {
            for i in 0..per_publisher {
                c.send(json!({"type": "publish", "room": "order", "event": "e",
                    "data": {"p": name, "i": i}, "echo": true}))
                    .await;
            }
            c.messages(total).await
        }));
    }
    for mut c in listeners {
        tasks.push(tokio::spawn(async move { c.messages(total).await }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.expect("client task"));
    }
    let first = &seen[0];
    assert_eq!(
        first.iter().map(|m| m.0).collect::<Vec<_>>(),
        (1..=total as u64).collect::<Vec<_>>(),
        "offsets are contiguous from 1"
    );
    for (k, s) in seen.iter().enumerate() {
        assert_eq!(s, first, "client {k} sees the same sequence as client 0");
    }
    // Each publisher's messages keep the order it sent them in.
    for name in publishers {
        let own: Vec<u64> = first
            .iter()
            .filter(|m| m.2["p"] == name)
            .map(|m| m.2["i"].as_u64().expect("i"))
            .collect();
        assert_eq!(own, (0..per_publisher).collect::<Vec<_>>(), "{name}");
    }
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_reach_a_user_on_two_nodes_once() {
    let redis = RedisServer::start();
    let nodes = cluster(&redis, 2, JWT_UNLIMITED, &[]).await;
    let mut tab1 = connect_user(&nodes[0].ws_url(), "erin", Encoding::Json).await;
    let mut tab2 = connect_user(&nodes[1].ws_url(), "erin", Encoding::MsgPack).await;
    let mut frank = connect_user(&nodes[0].ws_url(), "frank", Encoding::Json).await;
    let hi = json!({"type": "send", "to": "erin", "event": "hi", "data": {"x": 1}});
    assert_eq!(frank.acked(hi.clone(), "s1").await, None);
    for t in [&mut tab1, &mut tab2] {
        let ServerMessage::Direct(d) = t.recv_match(is_direct).await else {
            unreachable!()
        };
        assert_eq!((d.from.as_str(), d.event.as_str()), ("frank", "hi"));
        assert_eq!(d.data, json!({"x": 1}));
    }
    // frank retries the same id from the other node: acknowledged, not delivered again.
    drop(frank);
    let mut frank = connect_user(&nodes[1].ws_url(), "frank", Encoding::Json).await;
    frank.acked(hi, "s1").await;
    frank
        .request(
            json!({"type": "send", "to": "erin", "event": "bye", "data": 2}),
            "s2",
        )
        .await;
    for t in [&mut tab1, &mut tab2] {
        let d = t.recv_match(is_direct).await;
        assert!(
            matches!(d, ServerMessage::Direct(ref d) if d.event.as_str() == "bye"),
            "the retried send was not delivered twice: {d:?}"
        );
    }
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_member_events_are_per_user_across_nodes() {
    let redis = RedisServer::start();
    let nodes = cluster(&redis, 2, JWT_UNLIMITED, &[]).await;
    let mut watcher = connect_user(&nodes[0].ws_url(), "watcher", Encoding::Json).await;
    watcher.join("room").await;
    let mut g1 = connect_user(&nodes[1].ws_url(), "gina", Encoding::Json).await;
    let mut g2 = connect_user(&nodes[0].ws_url(), "gina", Encoding::Json).await;
    g1.join("room").await;
    let ev = watcher.recv_match(is_member_event).await;
    assert!(
        matches!(ev, ServerMessage::MemberJoined { ref user, .. } if user.as_str() == "gina"),
        "{ev:?}"
    );
    // gina's second tab, on the other node, is not a new member.
    g2.join("room").await;
    // Presence is the same from either node: 2 users, 3 connections, gina with 2.
    for c in [&mut watcher, &mut g1] {
        let p = c.presence("room", "p").await;
        let ServerMessage::Presence { members, count, .. } = &p else {
            panic!("{p:?}")
        };
        assert_eq!((count.users, count.connections), (2, 3), "{p:?}");
        let gina = members
            .iter()
            .find(|m| m.user.as_str() == "gina")
            .expect("gina present");
        assert_eq!(gina.connections, 2);
    }
    // The tab on n2 leaves: still a member. The last one (n1) closes: member_left.
    let left = g1
        .request(json!({"type": "leave", "room": "room"}), "l")
        .await;
    assert!(matches!(left, ServerMessage::Left { .. }), "{left:?}");
    drop(g2);
    let ev = watcher.recv_match(is_member_event).await;
    assert!(
        matches!(ev, ServerMessage::MemberLeft { ref user, .. } if user.as_str() == "gina"),
        "the next member event after gina's second tab is her leaving: {ev:?}"
    );
    let p = g1.presence("room", "p2").await;
    assert!(
        matches!(p, ServerMessage::Presence { count, .. } if count.users == 1 && count.connections == 1),
        "{p:?}"
    );
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_reconnecting_to_another_node() {
    let redis = RedisServer::start();
    let nodes = cluster(&redis, 2, JWT_UNLIMITED, &[]).await;
    let mut p = connect_user(&nodes[0].ws_url(), "pub", Encoding::Json).await;
    let mut r = connect_user(&nodes[0].ws_url(), "reader", Encoding::MsgPack).await;
    let epoch = epoch_of(&r.join("news").await);
    p.publish("news", json!(1), "1").await;
    let seen = r.messages(1).await[0].0;
    drop(r);
    for i in 2..=4 {
        p.publish("news", json!(i), &i.to_string()).await;
    }
    let mut back = connect_user(&nodes[1].ws_url(), "reader", Encoding::MsgPack).await;
    let j = back.join_since("news", seen, &epoch, "j").await;
    match j {
        ServerMessage::Joined {
            recovered,
            messages: ms,
            offset,
            epoch: e,
            ..
        } => {
            assert!(recovered);
            assert_eq!((offset, e), (4, epoch.clone()));
            assert_eq!(
                ms.iter()
                    .map(|m| (m.offset, m.data.clone()))
                    .collect::<Vec<_>>(),
                vec![
                    (Some(2), json!(2)),
                    (Some(3), json!(3)),
                    (Some(4), json!(4))
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    // Live delivery goes on from there, without a repeat.
    p.publish("news", json!(5), "5").await;
    assert_eq!(
        back.messages(1).await,
        vec![(5, "pub".to_string(), json!(5))]
    );
    // An epoch the cluster never had cannot be recovered.
    let mut other = connect_user(&nodes[1].ws_url(), "other", Encoding::Json).await;
    let j = other.join_since("news", 1, "nope", "j").await;
    assert!(!replayed(&j).0, "{j:?}");
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_with_since_or_history_while_another_node_publishes() {
    let redis = RedisServer::start();
    let nodes = cluster(&redis, 2, JWT_UNLIMITED, &[]).await;
    let total = 400u64;
    let mut probe = connect_user(&nodes[1].ws_url(), "probe", Encoding::Json).await;
    let mut p = connect_user(&nodes[0].ws_url(), "pub", Encoding::Json).await;
    p.join("busy").await;
    // The room's epoch exists from its first message on.
    p.publish("busy", json!(0), "first").await;
    let epoch = epoch_of(&probe.join("busy").await);
    // The publisher is kept (returned) until the end: dropping a socket with unread
    // input resets it, and the node would lose the publishes still in flight.
    let publisher = tokio::spawn(async move {
        for i in 1..total {
            p.send(json!({"type": "publish", "room": "busy", "event": "e", "data": i}))
                .await;
        }
        p
    });
    let url = nodes[1].ws_url();
    let mut joiners = Vec::new();
    for k in 0..8 {
        let (url, epoch) = (url.clone(), epoch.clone());
        joiners.push(tokio::spawn(async move {
            let mut c = connect_user(&url, &format!("j{k}"), Encoding::Json).await;
            let join = if k % 2 == 0 {
                json!({"type": "join", "room": "busy", "history": 1000})
            } else {
                json!({"type": "join", "room": "busy", "since": {"offset": 0, "epoch": epoch}})
            };
            let j = c.request(join, &format!("j{k}")).await;
            let ServerMessage::Joined {
                messages: ms,
                offset,
                ..
            } = j
            else {
                panic!("{j:?}")
            };
            let mut offsets: Vec<u64> = ms.iter().filter_map(|m| m.offset).collect();
            assert_eq!(offsets.last().copied().unwrap_or(0), offset);
            while offsets.last().copied().unwrap_or(0) < total {
                let m = c.recv_match(is_message).await;
                offsets.push(publication(&m).offset.expect("offset"));
            }
            assert_eq!(
                offsets,
                (1..=total).collect::<Vec<_>>(),
                "joiner {k}: history + live is every offset once, in order"
            );
        }));
    }
    for j in joiners {
        j.await.expect("joiner");
    }
    let _p = publisher.await.expect("publisher");
    // The probe, joined from the start, saw it all live too.
    let live: Vec<u64> = probe
        .messages(total as usize - 1)
        .await
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(live, (2..=total).collect::<Vec<_>>());
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retry_on_another_node() {
    let redis = RedisServer::start();
    let nodes = cluster(&redis, 2, JWT_UNLIMITED, &[]).await;
    let mut listener = connect_user(&nodes[1].ws_url(), "listener", Encoding::Json).await;
    listener.join("r").await;
    let mut a = connect_user(&nodes[0].ws_url(), "alice", Encoding::Json).await;
    assert_eq!(a.publish_acked("r", json!("once"), "m1").await, Some(1));
    drop(a);
    // alice lost her connection before the ack (say) and resends on another node.
    let mut a = connect_user(&nodes[1].ws_url(), "alice", Encoding::MsgPack).await;
    assert_eq!(
        a.publish_acked("r", json!("once"), "m1").await,
        Some(1),
        "same id, same offset"
    );
    assert_eq!(a.publish_acked("r", json!("next"), "m2").await, Some(2));
    // The id is per user: another user's m1 is a message of its own.
    let mut b = connect_user(&nodes[0].ws_url(), "bob", Encoding::Json).await;
    assert_eq!(b.publish_acked("r", json!("bob's"), "m1").await, Some(3));
    assert_eq!(
        listener.messages(3).await,
        vec![
            (1, "alice".into(), json!("once")),
            (2, "alice".into(), json!("next")),
            (3, "bob".into(), json!("bob's")),
        ]
    );
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_keep_their_order() {
    // A client sends publishes back to back without waiting for acks: the node runs
    // them while it reads on, yet they get offsets, acks and deliveries in send order.
    let redis = RedisServer::start();
    let nodes = cluster(&redis, 2, JWT_UNLIMITED, &["--max-pending-requests", "8"]).await;
    let mut a = connect_user(&nodes[0].ws_url(), "alice", Encoding::MsgPack).await;
    let mut b = connect_user(&nodes[1].ws_url(), "bob", Encoding::Json).await;
    b.join("pipe").await;
    const N: i64 = 300;
    for i in 0..N {
        a.send(json!({"type": "publish", "room": "pipe", "event": "e", "data": i, "id": i}))
            .await;
    }
    let mut acks = Vec::new();
    while acks.len() < N as usize {
        if let ServerMessage::Ack { id, offset } = a.recv().await {
            acks.push((id, offset));
        }
    }
    let want: Vec<_> = (0..N)
        .map(|i| (roomcast_protocol::ReqId::Int(i), Some(i as u64 + 1)))
        .collect();
    assert_eq!(
        acks, want,
        "acks in request order, offsets in request order"
    );
    let got = b.messages(N as usize).await;
    let want: Vec<_> = (0..N)
        .map(|i| (i as u64 + 1, "alice".into(), json!(i)))
        .collect();
    assert_eq!(got, want);
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_started_before_redis_serve_once_it_comes_up() {
    // compose and k8s start containers in any order: a node whose Redis is not up yet
    // listens, answers /healthz 200 and /readyz 503, and joins the cluster when it is.
    let mut redis = RedisServer::start();
    redis.kill();
    let nodes = cluster(&redis, 2, JWT_UNLIMITED, &["--bus-timeout", "1"]).await;
    let (n1, n2) = (nodes[0].addr, nodes[1].addr);
    for n in [n1, n2] {
        assert_eq!(http(n, "GET", "/healthz", &[], "").await.0, 200);
        assert_eq!(ready(n).await, 503, "not ready while Redis is down");
    }
    redis.restart();
    for n in [n1, n2] {
        eventually("readyz turns 200 once Redis is up", || async move {
            (ready(n).await == 200).then_some(())
        })
        .await;
    }
    let mut a = connect_user(&nodes[0].ws_url(), "alice", Encoding::Json).await;
    let mut b = connect_user(&nodes[1].ws_url(), "bob", Encoding::MsgPack).await;
    b.join("late").await;
    a.publish_acked("late", json!("hi"), "p").await;
    assert_eq!(b.messages(1).await, vec![(1, "alice".into(), json!("hi"))]);
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_gives_unavailable_and_the_cluster_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let nodes = cluster(&redis, 2, JWT_UNLIMITED, &["--bus-timeout", "1"]).await;
    let (n1, n2) = (nodes[0].addr, nodes[1].addr);
    // a and b are in a room with history; c and d in one without.
    let mut a = connect_user(&nodes[0].ws_url(), "alice", Encoding::Json).await;
    let mut b = connect_user(&nodes[1].ws_url(), "bob", Encoding::Json).await;
    let mut c = connect_user(&nodes[0].ws_url(), "carol", Encoding::Json).await;
    let mut d = connect_user(&nodes[1].ws_url(), "dave", Encoding::MsgPack).await;
    let old_epoch = epoch_of(&a.join("hist").await);
    b.join("hist").await;
    let quiet_epoch = epoch_of(&c.join("quiet").await);
    d.join("quiet").await;
    a.publish("hist", json!("before"), "1").await;
    assert_eq!(b.messages(1).await[0].2, json!("before"));
    assert_eq!((ready(n1).await, ready(n2).await), (200, 200));

    redis.kill();
    for n in [n1, n2] {
        eventually("readyz turns 503 while Redis is down", || async move {
            (ready(n).await == 503).then_some(())
        })
        .await;
    }
    let r = c.publish("quiet", json!("lost?"), "down").await;
    assert_eq!(
        err_code(&r),
        ErrorCode::Unavailable,
        "a publish while Redis is down is refused, never dropped silently"
    );
    let r = d.presence("quiet", "pd").await;
    assert_eq!(err_code(&r), ErrorCode::Unavailable);
    let r = d.join_reply("elsewhere", "jd").await;
    assert_eq!(err_code(&r), ErrorCode::Unavailable);
    let r = c
        .request(
            json!({"type": "send", "to": "dave", "event": "e", "data": 1}),
            "sd",
        )
        .await;
    assert_eq!(err_code(&r), ErrorCode::Unavailable);
    // Connections stay up meanwhile.
    assert!(d.pongs("ping").await);

    redis.restart();
    for n in [n1, n2] {
        eventually("readyz turns 200 once Redis is back", || async move {
            (ready(n).await == 200).then_some(())
        })
        .await;
    }
    // "quiet" lost its epoch with Redis too (nothing was published in it, but c and d
    // hold its epoch, which the next publishes' offsets would not belong to): they are
    // closed with 1013 and re-join with their position, as in "hist" below.
    for x in [&mut c, &mut d] {
        assert_eq!(x.closed().await, Closed::Code(1013));
    }
    let mut c = connect_user(&nodes[0].ws_url(), "carol", Encoding::Json).await;
    let mut d = connect_user(&nodes[1].ws_url(), "dave", Encoding::MsgPack).await;
    for x in [&mut c, &mut d] {
        let j = x.join_since("quiet", 0, &quiet_epoch, "jq").await;
        assert!(!replayed(&j).0, "{j:?}");
    }
    // publishing and delivery resume
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    for k in 0.. {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishing never came back"
        );
        let r = c.publish("quiet", json!("back"), &format!("up{k}")).await;
        match r {
            ServerMessage::Ack { .. } => break,
            ServerMessage::Error {
                code: ErrorCode::Unavailable,
                ..
            } => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            other => panic!("{other:?}"),
        }
    }
    let m = d.recv_match(is_message).await;
    assert_eq!(publication(&m).data, json!("back"));
    // Presence heals too: the nodes re-add their entries.
    for k in 0.. {
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence never healed"
        );
        let r = d.presence("quiet", &format!("pr{k}")).await;
        if matches!(r, ServerMessage::Presence { count, .. } if count.users == 2) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // "hist" lost its history with Redis (no persistence): its members are asked to
    // reconnect (1013) and learn it as `recovered: false` on their next join.
    for x in [&mut a, &mut b] {
        assert_eq!(x.closed().await, Closed::Code(1013));
    }
    let mut a = connect_user(&nodes[1].ws_url(), "alice", Encoding::Json).await;
    let mut b = connect_user(&nodes[0].ws_url(), "bob", Encoding::Json).await;
    let j = a.join_since("hist", 1, &old_epoch, "j").await;
    assert!(!replayed(&j).0, "{j:?}");
    b.join("hist").await;
    assert_eq!(
        a.publish_acked("hist", json!("after"), "2").await,
        Some(1),
        "a new history starts at 1"
    );
    assert_eq!(
        b.messages(1).await,
        vec![(1, "alice".into(), json!("after"))]
    );
    stop_all(nodes).await;
}

/// Kills every node's pub/sub connection and denies (P)SUBSCRIBE until
/// [`allow_subscriptions`]; waits until every node reports not ready.
async fn cut_subscriptions(redis: &RedisServer, addrs: &[std::net::SocketAddr]) {
    let r = redis
        .command(&["ACL", "SETUSER", "default", "-psubscribe", "-subscribe"])
        .expect("ACL answers");
    assert!(r.starts_with("+OK"), "{r}");
    let killed = redis
        .command(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .expect("CLIENT KILL answers");
    assert_eq!(
        killed.trim(),
        format!(":{}", addrs.len()),
        "one subscription per node"
    );
    for &a in addrs {
        eventually("readyz follows the subscription down", || async move {
            (ready(a).await == 503).then_some(())
        })
        .await;
    }
}

/// Lets the nodes subscribe again and waits until every one is ready.
async fn allow_subscriptions(redis: &RedisServer, addrs: &[std::net::SocketAddr]) {
    let r = redis
        .command(&["ACL", "SETUSER", "default", "+psubscribe", "+subscribe"])
        .expect("ACL answers");
    assert!(r.starts_with("+OK"), "{r}");
    for &a in addrs {
        eventually("readyz follows the subscription up", || async move {
            (ready(a).await == 200).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pubsub_connection_is_repaired_without_loss() {
    let redis = RedisServer::start();
    let nodes = cluster(&redis, 2, JWT_UNLIMITED, &[]).await;
    let mut listeners = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut c = connect_user(&node.ws_url(), &format!("l{i}"), Encoding::Json).await;
        c.join("g").await;
        listeners.push(c);
    }
    let mut p = connect_user(&nodes[0].ws_url(), "pub", Encoding::Json).await;
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    p.publish_numbered("g", 1..=50).await;
    // Cut every node's subscription and keep it from coming back (the default user
    // may not subscribe for a while), so that what is published meanwhile is surely
    // missed on the bus; commands, publishes included, still work.
    cut_subscriptions(&redis, &addrs).await;
    p.publish_numbered("g", 51..=150).await;
    allow_subscriptions(&redis, &addrs).await;
    for &a in &addrs {
        assert!(
            metric(a, "roomcast_bus_gap_repairs_total").await >= 1.0,
            "the node repaired its gap from history"
        );
    }
    p.publish_numbered("g", 151..=200).await;
    // And once more without holding the subscription back: the node resubscribes while
    // a publisher on the other node goes on at full speed, so that live messages, the
    // resync and the repair race each other.
    let from = 201u64;
    let burst = 300u64;
    let publisher = tokio::spawn(async move {
        for i in from..from + burst {
            p.send(json!({"type": "publish", "room": "g", "event": "e", "data": i}))
                .await;
        }
        // The last one with an id: its ack says every one before was accepted.
        let last = from + burst;
        assert_eq!(p.publish_acked("g", json!(last), "last").await, Some(last));
        p
    });
    // Cut once the burst is flowing.
    let mut seen1: Vec<u64> = Vec::new();
    while seen1.last().is_none_or(|&o| o < from + 10) {
        seen1.push(listeners[1].messages(1).await[0].0);
    }
    let killed = redis
        .command(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .expect("CLIENT KILL answers");
    assert!(killed.starts_with(':'), "{killed}");
    let _p = publisher.await.expect("publisher");
    let total = from + burst;
    let rest = (total - seen1.len() as u64) as usize;
    seen1.extend(listeners[1].messages(rest).await.into_iter().map(|m| m.0));
    assert_eq!(
        seen1,
        (1..=total).collect::<Vec<_>>(),
        "listener 1: every message, in order, once, across both cuts"
    );
    listeners.truncate(1);
    for (k, c) in listeners.iter_mut().enumerate() {
        let got: Vec<u64> = c
            .messages(total as usize)
            .await
            .into_iter()
            .map(|m| m.0)
            .collect();
        assert_eq!(
            got,
            (1..=total).collect::<Vec<_>>(),
            "listener {k}: every message, in order, once"
        );
    }
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_presence_expires_and_other_nodes_carry_on() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut args: Vec<&str> = JWT_UNLIMITED.to_vec();
    args.extend_from_slice(&["--redis-url", &url, "--presence-ttl", "1"]);
    let n1 = TestNode::start(&[args.as_slice(), &["--node-id", "n1"]].concat()).await;
    let mut doomed = ChildNode::start(&[args.as_slice(), &["--node-id", "doomed"]].concat());
    let mut watcher = connect_user(&n1.ws_url(), "watcher", Encoding::Json).await;
    let mut talker = connect_user(&n1.ws_url(), "talker", Encoding::Json).await;
    watcher.join("room").await;
    talker.join("room").await;
    let mut zed = connect_user(&doomed.ws_url(), "zed", Encoding::Json).await;
    zed.join("room").await;
    let is_zed = |m: &ServerMessage| match m {
        ServerMessage::MemberJoined { user, .. } | ServerMessage::MemberLeft { user, .. } => {
            user.as_str() == "zed"
        }
        _ => false,
    };
    let ev = watcher.recv_match(is_zed).await;
    assert!(matches!(ev, ServerMessage::MemberJoined { .. }), "{ev:?}");
    // yara has a tab on each node: she stays a member when the doomed node dies.
    let is_yara_or_marker = |m: &ServerMessage| match m {
        ServerMessage::MemberJoined { user, .. } | ServerMessage::MemberLeft { user, .. } => {
            user.as_str() == "yara" || user.as_str() == "marker"
        }
        _ => false,
    };
    let mut yara_doomed = connect_user(&doomed.ws_url(), "yara", Encoding::Json).await;
    yara_doomed.join("room").await;
    let ev = watcher.recv_match(is_yara_or_marker).await;
    assert!(
        matches!(ev, ServerMessage::MemberJoined { ref user, .. } if user.as_str() == "yara"),
        "{ev:?}"
    );
    let mut yara = connect_user(&n1.ws_url(), "yara", Encoding::Json).await;
    yara.join("room").await;
    // zed publishes through the doomed node; n1's clients get it.
    zed.publish("room", json!("from doomed"), "z1").await;
    assert_eq!(watcher.messages(1).await[0].2, json!("from doomed"));

    doomed.kill9();
    // No goodbye from the dead node: its entries expire and member_left follows.
    let ev = watcher.recv_match(is_zed).await;
    assert!(matches!(ev, ServerMessage::MemberLeft { .. }), "{ev:?}");
    let p = watcher.presence("room", "p").await;
    let ServerMessage::Presence { members, .. } = &p else {
        panic!("{p:?}")
    };
    assert!(members.iter().all(|m| m.user.as_str() != "zed"), "{p:?}");
    // yara's dead tab expires too (maybe a sweep later); her live one keeps her in.
    let deadline = tokio::time::Instant::now() + WAIT;
    for k in 0.. {
        let p = watcher.presence("room", &format!("y{k}")).await;
        let ServerMessage::Presence { members, count, .. } = &p else {
            panic!("{p:?}")
        };
        let yara_conns = members
            .iter()
            .find(|m| m.user.as_str() == "yara")
            .map(|m| m.connections);
        if yara_conns == Some(1) {
            assert_eq!((count.users, count.connections), (3, 3), "{p:?}");
            break;
        }
        assert_eq!(yara_conns, Some(2), "yara is still a member: {p:?}");
        assert!(tokio::time::Instant::now() < deadline, "{p:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // No member_left for yara: the next member event about her or the marker is the
    // marker joining.
    let mut marker = connect_user(&n1.ws_url(), "marker", Encoding::Json).await;
    marker.join("room").await;
    let ev = watcher.recv_match(is_yara_or_marker).await;
    assert!(
        matches!(ev, ServerMessage::MemberJoined { ref user, .. } if user.as_str() == "marker"),
        "{ev:?}"
    );
    // The surviving node's clients are unaffected.
    assert_eq!(
        talker
            .publish_acked("room", json!("still here"), "t1")
            .await,
        Some(2)
    );
    assert_eq!(
        watcher.messages(1).await,
        vec![(2, "talker".into(), json!("still here"))]
    );
    assert_eq!(ready(n1.addr).await, 200);
    n1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_node_moves_its_clients_to_another_without_loss() {
    let redis = RedisServer::start();
    let mut nodes = cluster(&redis, 2, JWT_UNLIMITED, &["--drain-spread-ms", "100"]).await;
    let n2 = nodes.pop().expect("n2");
    let n1 = nodes.pop().expect("n1");
    let mut watcher = connect_user(&n1.ws_url(), "watcher", Encoding::Json).await;
    let mut p = connect_user(&n1.ws_url(), "pub", Encoding::Json).await;
    watcher.join("room").await;
    let mut u = connect_user(&n2.ws_url(), "ursula", Encoding::MsgPack).await;
    let epoch = epoch_of(&u.join("room").await);
    let is_ursula = |m: &ServerMessage| match m {
        ServerMessage::MemberJoined { user, .. } | ServerMessage::MemberLeft { user, .. } => {
            user.as_str() == "ursula"
        }
        _ => false,
    };
    let ev = watcher.recv_match(is_ursula).await;
    assert!(matches!(ev, ServerMessage::MemberJoined { .. }), "{ev:?}");
    p.publish_numbered("room", 1..=3).await;
    let seen = u.messages(3).await.last().expect("three").0;

    // A rolling deploy takes n2 down: its clients are told to go elsewhere (1001) and
    // the others see them leave at once, not after the presence TTL.
    n2.shutdown.cancel();
    assert_eq!(u.closed().await, Closed::Code(1001));
    let ev = watcher.recv_match(is_ursula).await;
    assert!(matches!(ev, ServerMessage::MemberLeft { .. }), "{ev:?}");
    p.publish_numbered("room", 4..=5).await;
    let res = tokio::time::timeout(WAIT, n2.handle)
        .await
        .expect("n2 stops after its drain");
    assert!(res.expect("join").is_ok());

    let mut u = connect_user(&n1.ws_url(), "ursula", Encoding::MsgPack).await;
    let j = u.join_since("room", seen, &epoch, "j").await;
    assert_eq!(replayed(&j), (true, vec![4, 5]));
    let ev = watcher.recv_match(is_ursula).await;
    assert!(matches!(ev, ServerMessage::MemberJoined { .. }), "{ev:?}");
    n1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_gap_beyond_history_makes_clients_rejoin_unrecovered() {
    let redis = RedisServer::start();
    let nodes = cluster(&redis, 2, JWT_UNLIMITED, &["--history-size", "5"]).await;
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    let mut l = connect_user(&nodes[1].ws_url(), "listener", Encoding::Json).await;
    let epoch = epoch_of(&l.join("g").await);
    let mut p = connect_user(&nodes[0].ws_url(), "pub", Encoding::Json).await;
    p.publish_numbered("g", 1..=3).await;
    assert_eq!(l.messages(3).await.last().map(|m| m.0), Some(3));
    cut_subscriptions(&redis, &addrs).await;
    p.publish_numbered("g", 4..=13).await;
    // Redis trims streams lazily (MAXLEN ~); trim exactly, as it eventually does, so
    // that the history holds 9..=13 only.
    let r = redis
        .command(&["XTRIM", "roomcast:history:g", "MAXLEN", "5"])
        .expect("XTRIM answers");
    assert!(r.starts_with(':'), "{r}");
    allow_subscriptions(&redis, &addrs).await;
    // Offsets 4..=8 are gone for good: the node asks its members to reconnect, and the
    // next join says so.
    assert_eq!(l.closed().await, Closed::Code(1013));
    let mut l = connect_user(&nodes[1].ws_url(), "listener", Encoding::Json).await;
    let j = l
        .request(
            json!({"type": "join", "room": "g", "since": {"offset": 3, "epoch": epoch}, "history": 5}),
            "j",
        )
        .await;
    assert_eq!(replayed(&j), (false, (9..=13).collect::<Vec<_>>()));
    p.publish_numbered("g", 14..=14).await;
    assert_eq!(l.messages(1).await[0].0, 14, "live again");
    stop_all(nodes).await;
}
