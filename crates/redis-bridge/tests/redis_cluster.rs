//! Two (or three) `RedisBus` nodes on one real `redis-server`: what only a cluster can
//! show (cross-node delivery and order, cluster-wide dedupe and presence, gap repair,
//! Redis outages, dead nodes, auth).

mod support;

use roomcast_protocol::{BusMessage, Envelope, EventName, MemberChange};
use roomcast_redis_bridge::{
    Bus, BusConfig, BusError, BusEvent, HistoryQuery, RedisBus, SendRequest,
};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

fn offsets(ms: &[Arc<roomcast_protocol::Publication>]) -> Vec<u64> {
    ms.iter().map(|p| p.offset.unwrap_or(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_on_two_nodes_see_one_order() {
    let server = RedisServer::start();
    let mut a = node(&server, config("a")).await;
    let mut b = node(&server, config("b")).await;
    const EACH: usize = 200;
    let mut tasks = Vec::new();
    for (name, bus) in [("a", a.bus.clone()), ("b", b.bus.clone())] {
        tasks.push(tokio::spawn(async move {
            let pubs = (0..EACH).map(|i| {
                let bus = bus.clone();
                async move { publish_from(&*bus, "r", name, json!(format!("{name}{i}"))).await }
            });
            futures_util::future::join_all(pubs).await
        }));
    }
    let mut assigned = Vec::new();
    for t in tasks {
        assigned.extend(t.await.expect("task").into_iter().filter_map(|r| r.offset));
    }
    assigned.sort_unstable();
    assert_eq!(
        assigned,
        (1..=2 * EACH as u64).collect::<Vec<_>>(),
        "every offset assigned once"
    );
    let seen_a = a.events.messages(2 * EACH).await;
    let seen_b = b.events.messages(2 * EACH).await;
    assert_eq!(
        offsets(&seen_a),
        (1..=2 * EACH as u64).collect::<Vec<_>>(),
        "node a delivers in offset order"
    );
    let data_a: Vec<_> = seen_a.iter().map(|p| p.data.clone()).collect();
    let data_b: Vec<_> = seen_b.iter().map(|p| p.data.clone()).collect();
    assert_eq!(data_a, data_b, "both nodes deliver one order");
    a.bus.close().await;
    b.bus.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_mixed_publishes_keeps_offsets_dedupe_and_order() {
    // Publishes that arrive together share script calls: rooms, retries of one id and
    // volatile messages mixed in one burst must each get what they would alone.
    let server = RedisServer::start();
    let a = node(&server, config("a")).await;
    let mut b = node(&server, config("b")).await;
    const ROOMS: usize = 4;
    const EACH: usize = 150;
    let pubs = (0..ROOMS * EACH).map(|i| {
        let bus = a.bus.clone();
        let room = format!("m{}", i % ROOMS);
        let n = i / ROOMS;
        async move {
            let mut r = req_from(&room, "alice", json!(n));
            // every 5th is volatile; some ids are sent twice (n / 6 is shared by n and n + 3)
            r.volatile = n % 5 == 4;
            if !r.volatile && n.is_multiple_of(3) {
                r.idempotency_key = Some(format!("alice:{room}:{}", n / 6));
            }
            let res = bus.publish(r.clone()).await.expect("publish");
            (room, n, r.volatile, r.idempotency_key, res)
        }
    });
    let results = futures_util::future::join_all(pubs).await;
    let delivered = results.iter().filter(|r| !r.4.duplicate).count();
    let seen = b.events.messages(delivered).await;
    for k in 0..ROOMS {
        let room = format!("m{k}");
        let mine: Vec<_> = results.iter().filter(|r| r.0 == room).collect();
        let mut offsets: Vec<u64> = mine
            .iter()
            .filter(|r| !r.4.duplicate)
            .filter_map(|r| r.4.offset)
            .collect();
        offsets.sort_unstable();
        let stored = offsets.len() as u64;
        assert_eq!(offsets, (1..=stored).collect::<Vec<_>>(), "{room}: gapless");
        for r in &mine {
            assert_eq!(r.2, r.4.offset.is_none(), "{room}: volatile iff no offset");
        }
        // a retry gets the original's offset and is not stored again
        let mut by_key: std::collections::HashMap<&str, Vec<_>> = Default::default();
        for r in mine.iter() {
            if let Some(key) = r.3.as_deref() {
                by_key.entry(key).or_default().push(&r.4);
            }
        }
        assert!(
            by_key.values().any(|rs| rs.len() == 2),
            "{room}: some retries"
        );
        for (key, rs) in by_key {
            assert_eq!(rs.iter().filter(|r| !r.duplicate).count(), 1, "{key}");
            assert!(rs.iter().all(|r| r.offset == rs[0].offset), "{key}");
        }
        // node b delivers the room's stored messages in offset order, each once
        let got: Vec<u64> = seen
            .iter()
            .filter(|p| p.room.as_str() == room)
            .filter_map(|p| p.offset)
            .collect();
        assert_eq!(got, (1..=stored).collect::<Vec<_>>(), "{room}: order");
    }
    a.bus.close().await;
    b.bus.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_is_cluster_wide() {
    let server = RedisServer::start();
    let mut a = node(&server, config("a")).await;
    let b = node(&server, config("b")).await;
    let mut first = req_from("r", "alice", json!("once"));
    first.idempotency_key = Some("alice:42".into());
    let original = a.bus.publish(first.clone()).await.expect("publish");
    let retry = b.bus.publish(first).await.expect("retry on another node");
    assert!(retry.duplicate);
    assert_eq!(
        (retry.offset, retry.epoch.clone()),
        (original.offset, original.epoch.clone())
    );
    publish_from(&*b.bus, "r", "alice", json!("marker")).await;
    let got = a.events.messages(2).await;
    assert_eq!(got[1].data, json!("marker"), "the retry was not delivered");
    a.bus.close().await;
    b.bus.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_disconnect_and_emitter_reach_every_node() {
    let server = RedisServer::start();
    let mut a = node(&server, config("a")).await;
    let mut b = node(&server, config("b")).await;
    let send = SendRequest {
        to: user("bob"),
        message: direct("alice", json!("hi")),
        idempotency_key: None,
    };
    a.bus.send(send).await.expect("send");
    for n in [&mut a, &mut b] {
        let to = n
            .events
            .until(|e| match e {
                BusEvent::Direct { to, .. } => Some(to.to_string()),
                _ => None,
            })
            .await;
        assert_eq!(to, "bob");
    }
    b.bus
        .disconnect_user(&user("bob"), 4002)
        .await
        .expect("disconnect");
    let got = a
        .events
        .until(|e| match e {
            BusEvent::Disconnect { user, code } => Some((user.to_string(), *code)),
            _ => None,
        })
        .await;
    assert_eq!(got, ("bob".to_string(), 4002));

    // the emitter path: a backend writes an envelope (no offset) to the room channel;
    // garbage before it is counted and skipped
    let mut raw = server.conn().await;
    let _: i64 = redis_query!(&mut raw, "PUBLISH", "rc:room:r", b"\x01garbage".as_slice());
    let env = Envelope::new(
        "backend",
        BusMessage::Message {
            room: room("r"),
            event: EventName::new("news").expect("event"),
            data: json!({ "from": "backend" }),
            from: user("server"),
            offset: None,
            ts: 0,
            epoch: None,
            skip: None,
        },
    );
    let bytes = env.to_msgpack().expect("encode");
    let _: i64 = redis_query!(&mut raw, "PUBLISH", "rc:room:r", bytes);
    let (p, _) = a.events.message().await;
    assert_eq!(p.offset, None);
    assert_eq!(p.data, json!({ "from": "backend" }));
    assert_eq!(a.bus.stats().bad_envelopes.load(Ordering::Relaxed), 1);
    a.bus.close().await;
    b.bus.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_of_a_big_room_reads_only_about_its_limit() {
    let server = RedisServer::start();
    let a = node(&server, config("a")).await;
    let r = room("big");
    const USERS: usize = 1200;
    for i in 0..USERS {
        a.bus
            .presence_join(&r, &user(&format!("u{i:04}")), &format!("c{i}"))
            .await
            .expect("join");
    }
    let scans = command_calls(&server, "hscan").await;
    let p = a.bus.presence(&r, 5).await.expect("presence");
    assert_eq!(p.count.users, USERS as u64);
    assert_eq!(p.count.connections, USERS as u64);
    assert_eq!(p.members.len(), 5, "cut to the limit");
    let names: Vec<String> = p.members.iter().map(|m| m.user.to_string()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(names, sorted, "distinct, sorted by name");
    assert!(names.iter().all(|n| n.starts_with('u') && n.len() == 5));
    assert!(p.members.iter().all(|m| m.connections == 1));
    assert!(
        command_calls(&server, "hscan").await > scans,
        "a room this big is scanned, not read whole"
    );
    // a small room is still read whole: its first members by name
    let small = room("small");
    for u in ["dora", "carl", "anna", "bert"] {
        a.bus
            .presence_join(&small, &user(u), u)
            .await
            .expect("join");
    }
    let scans = command_calls(&server, "hscan").await;
    let p = a.bus.presence(&small, 2).await.expect("presence");
    let names: Vec<String> = p.members.iter().map(|m| m.user.to_string()).collect();
    assert_eq!(names, vec!["anna", "bert"]);
    assert_eq!(command_calls(&server, "hscan").await, scans);
    a.bus.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_cluster_wide_and_per_user() {
    let server = RedisServer::start();
    let mut a = node(&server, config("a")).await;
    let mut b = node(&server, config("b")).await;
    let r = room("r");
    a.bus.watch_room(&r);
    b.bus.watch_room(&r);
    join_presence(&*a.bus, &r, "alice", "a1").await;
    join_presence(&*b.bus, &r, "alice", "b1").await;
    join_presence(&*b.bus, &r, "bob", "b2").await;
    for n in [&mut a, &mut b] {
        assert_eq!(n.events.member().await, ("joined", "alice".into()));
        assert_eq!(
            n.events.member().await,
            ("joined", "bob".into()),
            "alice's second connection is no event"
        );
    }
    let p = a.bus.presence(&r, 10).await.expect("presence");
    assert_eq!((p.count.users, p.count.connections), (2, 3));
    assert_eq!(p.members[0].connections, 2);
    leave_presence(&*a.bus, &r, "alice", "a1").await;
    leave_presence(&*b.bus, &r, "alice", "b1").await;
    for n in [&mut a, &mut b] {
        assert_eq!(n.events.member().await, ("left", "alice".into()));
    }
    a.bus.close().await;
    b.bus.close().await;
}

/// The envelope a node publishes for message `offset` of `room`, stamped `ts`.
fn room_envelope(
    node: &str,
    room_name: &str,
    offset: u64,
    epoch: &str,
    ts: u64,
    data: serde_json::Value,
) -> Envelope {
    Envelope::new(
        node,
        BusMessage::Message {
            room: room(room_name),
            event: EventName::new("msg").expect("event"),
            data,
            from: user("alice"),
            offset: Some(offset),
            ts,
            epoch: Some(epoch.to_string()),
            skip: None,
        },
    )
}

/// Writes message `offset` of `room` straight into Redis (meta and stream) without
/// publishing it: a message the bus lost.
async fn inject_lost_message(
    server: &RedisServer,
    room_name: &str,
    offset: u64,
    epoch: &str,
    in_stream: bool,
) {
    let mut raw = server.conn().await;
    let _: i64 = redis_query!(&mut raw, "HINCRBY", format!("rc:meta:{room_name}"), "s", 1);
    if in_stream {
        let env = room_envelope(
            "a",
            room_name,
            offset,
            epoch,
            1,
            json!(format!("lost {offset}")),
        );
        let _: String = redis_query!(
            &mut raw,
            "XADD",
            format!("rc:history:{room_name}"),
            format!("{offset}-0"),
            "d",
            env.to_msgpack().expect("encode")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_message_is_repaired_from_the_stream() {
    let server = RedisServer::start();
    let mut a = node(&server, config("a")).await;
    let b = node(&server, config("b")).await;
    let r = room("r");
    a.bus.watch_room(&r);
    let first = publish_from(&*b.bus, "r", "bob", json!(1)).await;
    assert_eq!(a.events.message().await.0.offset, Some(1));
    inject_lost_message(&server, "r", 2, &first.epoch, true).await;
    inject_lost_message(&server, "r", 3, &first.epoch, true).await;
    publish_from(&*b.bus, "r", "bob", json!(4)).await;
    let got = a.events.messages(3).await;
    assert_eq!(offsets(&got), vec![2, 3, 4]);
    assert_eq!(got[0].data, json!("lost 2"));
    assert_eq!(a.bus.stats().gap_repairs.load(Ordering::Relaxed), 1);
    // node b does not watch the room: it delivers what it gets, no repair
    assert_eq!(b.bus.stats().gap_repairs.load(Ordering::Relaxed), 0);
    a.bus.close().await;
    b.bus.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_history_no_longer_holds_is_reported() {
    let server = RedisServer::start();
    let mut a = node(&server, config("a")).await;
    let r = room("r");
    a.bus.watch_room(&r);
    let first = publish_from(&*a.bus, "r", "bob", json!(1)).await;
    assert_eq!(a.events.message().await.0.offset, Some(1));
    inject_lost_message(&server, "r", 2, &first.epoch, false).await;
    publish_from(&*a.bus, "r", "bob", json!(3)).await;
    let gap = a
        .events
        .until(|e| match e {
            BusEvent::Gap { room } => Some(room.to_string()),
            BusEvent::Message { .. } => panic!("the gap must be reported before the next message"),
            _ => None,
        })
        .await;
    assert_eq!(gap, "r");
    assert_eq!(
        a.events.message().await.0.offset,
        Some(3),
        "delivery goes on after the gap"
    );
    assert_eq!(a.bus.stats().gaps_lost.load(Ordering::Relaxed), 1);
    a.bus.close().await;
}

/// The history expires (or is flushed) while the node is subscribed: nothing of the old
/// epoch was missed, but local members hold its offsets, which the new epoch's mean
/// nothing to. The loss is signalled before anything of the new epoch is delivered
/// (issue 13, fault 2: old-epoch sessions got new-epoch offsets before their 1013).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_lost_while_subscribed_is_signalled_before_the_new_epoch() {
    let server = RedisServer::start();
    let mut a = node(&server, config("a")).await;
    let r = room("r");
    a.bus.watch_room(&r);
    let first = publish_from(&*a.bus, "r", "bob", json!(1)).await;
    publish_from(&*a.bus, "r", "bob", json!(2)).await;
    assert_eq!(offsets(&a.events.messages(2).await), vec![1, 2]);
    // the history expires (as after history_ttl without publishes)
    let mut raw = server.conn().await;
    let _: i64 = redis_query!(&mut raw, "DEL", "rc:meta:r", "rc:history:r");
    let next = publish_from(&*a.bus, "r", "bob", json!("new")).await;
    assert_ne!(next.epoch, first.epoch);
    assert_eq!(next.offset, Some(1));
    let gap = a
        .events
        .until(|e| match e {
            BusEvent::Gap { room } => Some(room.to_string()),
            BusEvent::Message { .. } => panic!("a new-epoch message before the loss was signalled"),
            _ => None,
        })
        .await;
    assert_eq!(gap, "r");
    let got = a.events.message().await.0;
    assert_eq!((got.offset, got.data.clone()), (Some(1), json!("new")));
    publish_from(&*a.bus, "r", "bob", json!("new 2")).await;
    assert_eq!(
        a.events.message().await.0.offset,
        Some(2),
        "and goes on in the new epoch"
    );
    assert_eq!(a.bus.stats().gaps_lost.load(Ordering::Relaxed), 1);
    assert_eq!(a.bus.stats().forged_offsets.load(Ordering::Relaxed), 0);
    a.bus.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pubsub_connection_still_delivers_every_offset_in_order() {
    let server = RedisServer::start();
    // history must hold what is published while the subscription is down
    let cfg = |n: &str| BusConfig {
        history_size: 2000,
        max_recover: 2000,
        ..config(n)
    };
    let mut a = node(&server, cfg("a")).await;
    let b = node(&server, cfg("b")).await;
    let r = room("r");
    a.bus.watch_room(&r);
    const N: u64 = 1500;
    let publisher = {
        let bus = b.bus.clone();
        tokio::spawn(async move {
            for i in 1..=N {
                publish_from(&*bus, "r", "bob", json!(i)).await;
            }
        })
    };
    let mut seen = Vec::new();
    // let some arrive, then cut every pub/sub connection while b keeps publishing
    while seen.len() < 50 {
        seen.push(a.events.message().await.0.offset.unwrap_or(0));
    }
    let mut raw = server.conn().await;
    let killed: i64 = redis_query!(&mut raw, "CLIENT", "KILL", "TYPE", "pubsub");
    assert!(killed >= 2, "both nodes' subscriptions were cut");
    let mut states = Vec::new();
    while seen.last().copied() != Some(N) {
        match a.events.next().await {
            BusEvent::Message { publication, .. } => seen.push(publication.offset.unwrap_or(0)),
            BusEvent::State { up } => states.push(up),
            BusEvent::Gap { .. } => panic!("nothing was lost for good"),
            _ => {}
        }
    }
    publisher.await.expect("publisher");
    assert_eq!(
        seen,
        (1..=N).collect::<Vec<_>>(),
        "every offset once, in order"
    );
    assert_eq!(states, vec![false, true]);
    assert!(a.bus.stats().reconnects.load(Ordering::Relaxed) >= 1);
    eprintln!(
        "gap repairs after CLIENT KILL: {}",
        a.bus.stats().gap_repairs.load(Ordering::Relaxed)
    );
    a.bus.close().await;
    b.bus.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_cut_for_its_output_buffer_recovers_what_it_missed() {
    let server = RedisServer::start();
    let cfg = |n: &str| BusConfig {
        history_size: 1000,
        ..config(n)
    };
    let mut a = node(&server, cfg("a")).await;
    let b = node(&server, cfg("b")).await;
    let r = room("r");
    a.bus.watch_room(&r);
    publish_from(&*b.bus, "r", "bob", json!("small")).await;
    assert_eq!(a.events.message().await.0.offset, Some(1));
    // a message bigger than the pub/sub hard limit makes Redis cut every subscriber
    let mut raw = server.conn().await;
    let _: () = redis_query!(
        &mut raw,
        "CONFIG",
        "SET",
        "client-output-buffer-limit",
        "pubsub 16kb 0 0"
    );
    let big = "x".repeat(64 * 1024);
    publish_from(&*b.bus, "r", "bob", json!(big)).await;
    assert!(!a.events.state().await, "cut by Redis: down");
    let _: () = redis_query!(
        &mut raw,
        "CONFIG",
        "SET",
        "client-output-buffer-limit",
        "pubsub 32mb 8mb 60"
    );
    publish_from(&*b.bus, "r", "bob", json!("after")).await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match a.events.next().await {
            BusEvent::Message { publication, .. } => seen.push(publication),
            BusEvent::Gap { .. } => panic!("the stream holds what was missed"),
            _ => {}
        }
    }
    assert_eq!(offsets(&seen), vec![2, 3]);
    assert_eq!(
        seen[0].data,
        json!(big),
        "the big one came back from history"
    );
    assert!(a.bus.stats().reconnects.load(Ordering::Relaxed) >= 1);
    a.bus.close().await;
    b.bus.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_fell_behind_is_dropped_and_resynchronised() {
    let server = RedisServer::start();
    let mut a = node(
        &server,
        BusConfig {
            max_lag: Duration::from_secs(5),
            ..config("a")
        },
    )
    .await;
    let mut b = node(
        &server,
        BusConfig {
            max_lag: Duration::ZERO,
            ..config("b")
        },
    )
    .await;
    let r = room("r");
    a.bus.watch_room(&r);
    let first = publish_from(&*b.bus, "r", "bob", json!(1)).await;
    assert_eq!(a.events.message().await.0.offset, Some(1));
    assert_eq!(b.events.message().await.0.offset, Some(1));
    // Message 2 is in the room's meta and stream, and its live copy (the same bytes, as
    // the publish script writes them) reaches the nodes a minute after it was stamped: as
    // if it had waited that long in a node's queue.
    inject_lost_message(&server, "r", 2, &first.epoch, false).await;
    let stale = room_envelope(
        "b",
        "r",
        2,
        &first.epoch,
        now_ms() - 60_000,
        json!("stale 2"),
    );
    let bytes = stale.to_msgpack().expect("encode");
    let mut raw = server.conn().await;
    let _: String = redis_query!(&mut raw, "XADD", "rc:history:r", "2-0", "d", &bytes);
    let _: i64 = redis_query!(&mut raw, "PUBLISH", "rc:room:r", &bytes);
    // a delivers it, then lets its subscription go and comes back; 3 reaches it live or
    // from the stream, once
    assert_eq!(a.events.message().await.0.offset, Some(2));
    publish_from(&*b.bus, "r", "bob", json!(3)).await;
    let (mut seen, mut states) = (Vec::new(), Vec::new());
    while seen.last().copied() != Some(3) || states.len() < 2 {
        match a.events.next().await {
            BusEvent::Message { publication, .. } => seen.push(publication.offset.unwrap_or(0)),
            BusEvent::Gap { .. } => panic!("nothing was lost"),
            BusEvent::State { up } => states.push(up),
            _ => {}
        }
    }
    assert_eq!(states, vec![false, true], "dropped once, then up again");
    assert_eq!(seen, vec![3], "every offset once, in order");
    assert_eq!(a.bus.stats().lag_resyncs.load(Ordering::Relaxed), 1);
    // b does not judge lag (max_lag zero): it took the stale copy and stayed subscribed
    assert_eq!(b.events.message().await.0.offset, Some(2));
    assert_eq!(b.events.message().await.0.offset, Some(3));
    assert_eq!(b.bus.stats().lag_resyncs.load(Ordering::Relaxed), 0);
    assert_eq!(b.bus.stats().reconnects.load(Ordering::Relaxed), 0);
    a.bus.close().await;
    b.bus.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_fails_fast_then_recovers() {
    let mut server = RedisServer::start();
    let cfg = |n: &str| BusConfig {
        op_timeout: Duration::from_secs(1),
        ..config(n)
    };
    let mut a = node(&server, cfg("a")).await;
    let mut b = node(&server, cfg("b")).await;
    let r = room("r");
    a.bus.watch_room(&r);
    publish_from(&*a.bus, "r", "alice", json!("before")).await;
    assert_eq!(a.events.message().await.0.offset, Some(1));
    // b's command pool holds a connection from before the outage, unused during it
    let before = HistoryQuery {
        since: None,
        limit: 1,
    };
    b.bus.history(&r, before).await.expect("history before");

    server.kill();
    assert!(
        !a.events.state().await,
        "State{{up: false}} when Redis goes away"
    );
    assert!(!a.bus.is_ready());
    // it answers (bounded by op_timeout: never hangs until Redis is back)
    let err = tokio::time::timeout(WAIT, a.bus.publish(req_from("r", "alice", json!("during"))))
        .await
        .expect("a publish while Redis is down does not hang")
        .expect_err("Redis is down");
    assert!(matches!(err, BusError::Unavailable(_)), "{err:?}");
    let err = a
        .bus
        .history(
            &r,
            HistoryQuery {
                since: None,
                limit: 1,
            },
        )
        .await
        .expect_err("down");
    assert!(matches!(err, BusError::Unavailable(_)), "{err:?}");
    let err = a
        .bus
        .presence_join(&r, &user("x"), "c")
        .await
        .expect_err("down");
    assert!(matches!(err, BusError::Unavailable(_)), "{err:?}");
    assert!(a.bus.stats().publish_errors.load(Ordering::Relaxed) >= 1);

    server.restart();
    // the history was lost with Redis (no persistence): the watched room reports a gap
    let mut saw_gap = false;
    a.events
        .until(|e| match e {
            BusEvent::Gap { room } if room.as_str() == "r" => {
                saw_gap = true;
                None
            }
            BusEvent::State { up: true } => Some(()),
            _ => None,
        })
        .await;
    assert!(saw_gap, "the lost history is reported");
    b.events
        .until(|e| matches!(e, BusEvent::State { up: true }).then_some(()))
        .await;
    assert!(a.bus.is_ready());
    // the pools hand out no connection from before the restart: the first commands
    // after it succeed (on a, whose connections failed during the outage, and on b,
    // whose connection sat in the pool through it)
    for n in [&a, &b] {
        let q = HistoryQuery {
            since: None,
            limit: 1,
        };
        n.bus.history(&r, q).await.expect("history after restart");
        n.bus
            .presence_join(&r, &user("y"), "c2")
            .await
            .expect("presence after restart");
    }
    let r2 = b
        .bus
        .publish(req_from("r", "bob", json!("after")))
        .await
        .expect("publish after restart");
    assert_eq!(r2.offset, Some(1), "a new epoch starts at 1");
    for n in [&mut a, &mut b] {
        let (p, _) = n.events.message().await;
        assert_eq!(p.data, json!("after"));
    }
    a.bus.close().await;
    b.bus.close().await;
}

/// Redis drops the command connections (CLIENT KILL) while it stays up: the operation
/// that finds its connection dead fails, and the pool hands out no connection of before
/// again (it checks connections only when they may be bad, not at every checkout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_command_connection_costs_one_failed_operation() {
    let server = RedisServer::start();
    let a = node(&server, config("a")).await;
    let r = room("r");
    let q = || HistoryQuery {
        since: None,
        limit: 1,
    };
    a.bus.history(&r, q()).await.expect("history before");
    let killed = support::cluster::cli(server.port, &["CLIENT", "KILL", "TYPE", "normal"])
        .expect("redis-cli runs");
    assert!(killed.trim().parse::<u32>().unwrap_or(0) >= 1, "{killed:?}");
    // the first operation may meet a dead connection; none after it does
    let _ = a.bus.history(&r, q()).await;
    for i in 0..5 {
        a.bus
            .history(&r, q())
            .await
            .unwrap_or_else(|e| panic!("history {i} after the kill: {e}"));
        a.bus
            .presence_join(&r, &user("k"), "c")
            .await
            .unwrap_or_else(|e| panic!("presence {i} after the kill: {e}"));
    }
    a.bus.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_presence_expires() {
    let server = RedisServer::start();
    let cfg = |n: &str| BusConfig {
        presence_ttl: Duration::from_millis(600),
        ..config(n)
    };
    let mut a = node(&server, cfg("a")).await;
    let b = node(&server, cfg("b")).await;
    let c = node(&server, cfg("c")).await;
    let r = room("r");
    a.bus.watch_room(&r);
    join_presence(&*b.bus, &r, "bob", "b1").await;
    assert_eq!(a.events.member().await, ("joined", "bob".into()));
    join_presence(&*c.bus, &r, "carol", "c1").await;
    assert_eq!(a.events.member().await, ("joined", "carol".into()));
    let p = a.bus.presence(&r, 10).await.expect("presence");
    assert_eq!(p.count.users, 2);

    // c leaves cleanly: close removes its entries at once
    c.bus.close().await;
    assert_eq!(a.events.member().await, ("left", "carol".into()));

    // b dies (dropped without close: no refresh, no cleanup)
    drop(b);
    assert_eq!(
        a.events.member().await,
        ("left", "bob".into()),
        "expired and swept by a"
    );
    let p = a.bus.presence(&r, 10).await.expect("presence");
    assert_eq!((p.count.users, p.count.connections), (0, 0));
    a.bus.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_survives_refresh_periods() {
    let server = RedisServer::start();
    let cfg = BusConfig {
        presence_ttl: Duration::from_millis(300),
        ..config("a")
    };
    let mut a = node(&server, cfg).await;
    let r = room("r");
    a.bus.watch_room(&r);
    join_presence(&*a.bus, &r, "alice", "a1").await;
    assert_eq!(a.events.member().await, ("joined", "alice".into()));
    // wait on refreshes (observable through the entry's score moving forward) rather
    // than on a clock: after three refreshes the entry must still be present
    let mut raw = server.conn().await;
    let mut last: f64 = 0.0;
    let mut moved = 0;
    let deadline = Instant::now() + WAIT;
    while moved < 3 {
        assert!(Instant::now() < deadline, "the entry was not refreshed");
        let score: Option<f64> =
            redis_query!(&mut raw, "ZSCORE", "rc:presence:r", "alice\x1fa1\x1fa");
        let score = score.expect("the entry is alive");
        if score > last {
            if last > 0.0 {
                moved += 1;
            }
            last = score;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let p = a.bus.presence(&r, 10).await.expect("presence");
    assert_eq!(p.count.users, 1);
    assert!(a.events.drain().iter().all(|e| !matches!(
        e,
        BusEvent::Member {
            change: MemberChange::Left,
            ..
        }
    )));
    a.bus.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_auth() {
    let server = RedisServer::start_with_password("s3cret");
    let mut a = node(&server, config("a")).await;
    publish_from(&*a.bus, "r", "alice", json!("authed")).await;
    assert_eq!(a.events.message().await.0.data, json!("authed"));
    a.bus.close().await;
    let anon = format!("redis://127.0.0.1:{}/", server.port);
    // no password: refused at once (NOAUTH is a configuration error)
    let err = not_served(&anon, config("b")).await;
    assert!(matches!(err, BusError::Internal(_)), "{err:?}");
    let wrong = format!("redis://:nope@127.0.0.1:{}/", server.port);
    let err = not_served(&wrong, config("c")).await;
    assert!(matches!(err, BusError::Internal(_)), "{err:?}");
}

/// A bus whose Redis does not serve it: `connect` succeeds (a node may start before its
/// Redis), `start` says it cannot subscribe yet, the bus is not ready and publishing is
/// refused as unavailable. Returns `start`'s error (or `connect`'s, for a bad URL).
async fn not_served(url: &str, cfg: BusConfig) -> BusError {
    let bus = match RedisBus::connect(url, cfg).await {
        Ok(bus) => bus,
        Err(e) => return e,
    };
    let (delivery, _events) = collector();
    let Err(err) = bus.start(delivery).await else {
        panic!("started without Redis")
    };
    assert!(!bus.is_ready());
    let Err(p) = bus.publish(req_from("r", "x", json!(1))).await else {
        panic!("published without Redis")
    };
    assert!(matches!(p, BusError::Unavailable(_)), "{p:?}");
    bus.close().await;
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls() {
    // rediss:// is understood (TLS is built in): against a plain-text server the
    // handshake fails, as unavailability, not as a bad URL
    let server = RedisServer::start();
    let tls = format!("rediss://127.0.0.1:{}/", server.port);
    let err = not_served(&tls, config("a")).await;
    assert!(matches!(err, BusError::Unavailable(_)), "{err:?}");
    let err = RedisBus::connect("nonsense://x", config("a"))
        .await
        .err()
        .expect("bad url");
    assert!(matches!(err, BusError::Internal(_)), "{err:?}");
    // nothing listening: unavailable (and still trying)
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let err = not_served(&format!("redis://127.0.0.1:{closed}/"), config("a")).await;
    assert!(matches!(err, BusError::Unavailable(_)), "{err:?}");
}

/// Publish throughput of one node (run with `--release --ignored --nocapture`); compare
/// with `redis-benchmark -t publish` on the same machine.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn publish_throughput() {
    let server = RedisServer::start();
    let a = node(
        &server,
        BusConfig {
            history_size: 1000,
            ..config("a")
        },
    )
    .await;
    const TASKS: usize = 256;
    const PER_TASK: usize = 400;
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let bus = a.bus.clone();
            tokio::spawn(async move {
                for i in 0..PER_TASK {
                    let room_name = format!("room{}", t % 64);
                    publish_from(&*bus, &room_name, "alice", json!({ "i": i })).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let secs = started.elapsed().as_secs_f64();
    let n = (TASKS * PER_TASK) as f64;
    let batches = a.bus.stats().publish_batches.load(Ordering::Relaxed);
    eprintln!(
        "{} publishes (Lua: offset + XADD + PUBLISH) in {secs:.2}s: {:.0}/s, {:.1} per Redis call",
        n,
        n / secs,
        n / batches.max(1) as f64
    );
    a.bus.close().await;
}

/// The pub/sub connection is pinged (a half-open socket shows no EOF); the ping must not
/// be taken for a failure. Observed through Redis: the subscriber connection's last
/// command becomes `ping`, and it is still the same connection afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinging_the_subscription_keeps_it() {
    let server = RedisServer::start();
    let mut a = node(&server, config("a")).await;
    let mut raw = server.conn().await;
    let pubsub_clients = |list: String| -> Vec<(String, String)> {
        list.lines()
            .filter_map(|l| {
                let field = |k: &str| {
                    l.split(' ')
                        .find_map(|f| f.strip_prefix(k))
                        .map(str::to_string)
                };
                Some((field("id=")?, field("cmd=")?))
            })
            .collect()
    };
    let list: String = redis_query!(&mut raw, "CLIENT", "LIST", "TYPE", "pubsub");
    let first = pubsub_clients(list);
    assert_eq!(first.len(), 1);
    let id = first[0].0.clone();
    let deadline = Instant::now() + WAIT;
    loop {
        let list: String = redis_query!(&mut raw, "CLIENT", "LIST", "TYPE", "pubsub");
        let now = pubsub_clients(list);
        assert_eq!(
            now.first().map(|c| c.0.clone()),
            Some(id.clone()),
            "the subscription was not replaced"
        );
        if now[0].1 == "ping" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the subscription is never pinged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // a message after the pong: once it is delivered, the pong has been handled
    publish_from(&*a.bus, "r", "alice", json!("after ping")).await;
    assert_eq!(a.events.message().await.0.data, json!("after ping"));
    assert_eq!(a.bus.stats().reconnects.load(Ordering::Relaxed), 0);
    let list: String = redis_query!(&mut raw, "CLIENT", "LIST", "TYPE", "pubsub");
    assert_eq!(pubsub_clients(list)[0].0, id);
    a.bus.close().await;
}
