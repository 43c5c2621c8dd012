//! One behavioural suite for every [`Bus`] implementation (as centrifuge runs one suite
//! against its memory and Redis brokers): each test below runs against `MemoryBus` and
//! against `RedisBus` on a real `redis-server`.

mod support;

use roomcast_redis_bridge::{
    Bus, BusConfig, BusError, BusEvent, MemoryBus, RedisBus, SendRequest, SubscribeMode,
};
use serde_json::json;
use std::sync::Arc;
use support::*;

#[derive(Clone, Copy)]
enum Kind {
    Memory,
    /// One Redis, pattern subscriptions (the default).
    Redis,
    /// One Redis, a subscription per watched room and user (docs/protocol.md section 6).
    RedisRooms,
    /// A Redis Cluster of 3 primaries and 3 replicas: sharded subscriptions (section 6b).
    Cluster,
}

/// A started bus, its events, and the server behind it (if any).
struct Harness {
    bus: Arc<dyn Bus>,
    events: Events,
    _server: Option<RedisServer>,
    _cluster: Option<cluster::RedisCluster>,
}

async fn harness(kind: Kind, cfg: BusConfig) -> Harness {
    let (delivery, mut events) = collector();
    let mut redis_cluster = None;
    let (bus, server): (Arc<dyn Bus>, _) = match kind {
        Kind::Memory => (Arc::new(MemoryBus::new(cfg)), None),
        Kind::Cluster => {
            let c = cluster::RedisCluster::start();
            let bus = RedisBus::connect_cluster(&c.seeds(), cfg)
                .await
                .expect("connect to the cluster");
            redis_cluster = Some(c);
            (Arc::new(bus), None)
        }
        Kind::Redis | Kind::RedisRooms => {
            let cfg = BusConfig {
                subscribe: if matches!(kind, Kind::RedisRooms) {
                    SubscribeMode::Rooms
                } else {
                    SubscribeMode::Pattern
                },
                ..cfg
            };
            let server = RedisServer::start();
            let bus = RedisBus::connect(&server.url(), cfg)
                .await
                .expect("connect");
            (Arc::new(bus), Some(server))
        }
    };
    bus.start(delivery).await.expect("start");
    // A node holding a member of room `r` and a connection of user `bob`, the names the
    // cases use: in rooms mode it listens only to what it holds.
    bus.watch_room(&room("r"));
    bus.watch_user(&user("bob"));
    bus.room_ready(&room("r")).await.expect("room r subscribed");
    bus.user_ready(&user("bob"))
        .await
        .expect("user bob subscribed");
    if matches!(kind, Kind::Redis | Kind::RedisRooms | Kind::Cluster) {
        assert!(events.state().await, "the Redis bus reports itself up");
        assert!(bus.is_ready());
    }
    Harness {
        bus,
        events,
        _server: server,
        _cluster: redis_cluster,
    }
}

async fn offsets_and_order(kind: Kind) {
    let mut h = harness(kind, config("n1")).await;
    let mut epoch = None;
    for i in 1..=3u64 {
        let r = publish(&*h.bus, "r", json!({ "i": i })).await;
        assert_eq!(r.offset, Some(i));
        assert!(!r.duplicate);
        assert_eq!(epoch.get_or_insert(r.epoch.clone()), &r.epoch, "one epoch");
    }
    let got = h.events.messages(3).await;
    let offsets: Vec<_> = got.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![Some(1), Some(2), Some(3)]);
    assert_eq!(got[2].data, json!({ "i": 3 }));
    assert_eq!(got[0].from.as_str(), "alice");
    // another room has its own sequence
    let r = publish(&*h.bus, "other", json!(null)).await;
    assert_eq!(r.offset, Some(1));
    h.bus.close().await;
}

async fn skip_is_carried(kind: Kind) {
    let mut h = harness(kind, config("n1")).await;
    let mut r = req("r", json!("x"));
    r.skip = Some("conn-7".into());
    h.bus.publish(r).await.expect("publish");
    let (p, skip) = h.events.message().await;
    assert_eq!(p.offset, Some(1));
    assert_eq!(skip.as_deref(), Some("conn-7"));
    h.bus.close().await;
}

async fn volatile_has_no_offset(kind: Kind) {
    let mut h = harness(kind, config("n1")).await;
    publish(&*h.bus, "r", json!(1)).await;
    let mut v = req("r", json!({ "typing": true }));
    v.volatile = true;
    let r = h.bus.publish(v).await.expect("volatile publish");
    assert_eq!(r.offset, None);
    let got = h.events.messages(2).await;
    assert_eq!(got[1].offset, None);
    assert_eq!(got[1].data, json!({ "typing": true }));
    // not in history, and the sequence goes on
    let hist = history(&*h.bus, "r", query_recent(10)).await;
    assert_eq!(hist.messages.len(), 1);
    assert_eq!(publish(&*h.bus, "r", json!(2)).await.offset, Some(2));
    h.bus.close().await;
}

async fn dedupe_returns_original(kind: Kind) {
    let mut h = harness(kind, config("n1")).await;
    let mut first = req("r", json!("once"));
    first.idempotency_key = Some("alice:1".into());
    let a = h.bus.publish(first.clone()).await.expect("publish");
    assert_eq!(a.offset, Some(1));
    let b = h.bus.publish(first).await.expect("retry");
    assert!(b.duplicate);
    assert_eq!(b.offset, Some(1));
    assert_eq!(b.epoch, a.epoch);
    // a marker after the retry: the next message delivered must be it
    publish(&*h.bus, "r", json!("marker")).await;
    let got = h.events.messages(2).await;
    assert_eq!(got[0].data, json!("once"));
    assert_eq!(got[1].data, json!("marker"));
    assert_eq!(got[1].offset, Some(2));
    h.bus.close().await;
}

async fn history_recent(kind: Kind) {
    let h = harness(kind, config("n1")).await;
    let empty = history(&*h.bus, "r", query_recent(10)).await;
    assert_eq!(empty.offset, 0);
    assert!(empty.messages.is_empty());
    for i in 1..=5 {
        publish(&*h.bus, "r", json!(i)).await;
    }
    let hist = history(&*h.bus, "r", query_recent(3)).await;
    assert_eq!(hist.offset, 5);
    assert_eq!(
        hist.epoch, empty.epoch,
        "the epoch a joiner saw is the one publishes use"
    );
    assert!(!hist.recovered);
    let offsets: Vec<_> = hist.messages.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![Some(3), Some(4), Some(5)]);
    assert_eq!(hist.messages[0].data, json!(3));
    let none = history(&*h.bus, "r", query_recent(0)).await;
    assert!(none.messages.is_empty());
    h.bus.close().await;
}

async fn history_since(kind: Kind) {
    let h = harness(kind, config("n1")).await;
    let mut epoch = String::new();
    for i in 1..=5 {
        epoch = publish(&*h.bus, "r", json!(i)).await.epoch;
    }
    let since = |offset: u64, epoch: &str| query_since(offset, epoch, 2);
    let hist = history(&*h.bus, "r", since(2, &epoch)).await;
    assert!(hist.recovered);
    let offsets: Vec<_> = hist.messages.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![Some(3), Some(4), Some(5)]);
    let up_to_date = history(&*h.bus, "r", since(5, &epoch)).await;
    assert!(up_to_date.recovered);
    assert!(up_to_date.messages.is_empty());
    let wrong = history(&*h.bus, "r", since(2, "not-the-epoch")).await;
    assert!(!wrong.recovered);
    let offsets: Vec<_> = wrong.messages.iter().map(|p| p.offset).collect();
    assert_eq!(
        offsets,
        vec![Some(1), Some(2), Some(3), Some(4), Some(5)],
        "an epoch the room no longer has: the current one from its start (docs/protocol.md section 3.2), \
         whatever the limit"
    );
    let ahead = history(&*h.bus, "r", since(9, &epoch)).await;
    assert!(!ahead.recovered);
    h.bus.close().await;
}

/// A `since` in an epoch the room no longer has gets the current epoch from its first
/// offset held, at most `max_recover` messages of it.
async fn history_of_a_lost_epoch_is_capped(kind: Kind) {
    let cfg = BusConfig {
        max_recover: 3,
        ..config("n1")
    };
    let h = harness(kind, cfg).await;
    for i in 1..=5 {
        publish(&*h.bus, "r", json!(i)).await;
    }
    let q = query_since(9, "gone", 0);
    let got = history(&*h.bus, "r", q).await;
    assert!(!got.recovered);
    assert_eq!(got.offset, 5);
    let offsets: Vec<_> = got.messages.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![Some(1), Some(2), Some(3)]);
    h.bus.close().await;
}

async fn history_trimmed(kind: Kind) {
    let cfg = BusConfig {
        history_size: 3,
        max_recover: 4,
        ..config("n1")
    };
    let h = harness(kind, cfg).await;
    let mut epoch = String::new();
    for i in 1..=8 {
        epoch = publish(&*h.bus, "r", json!(i)).await.epoch;
    }
    let q = |offset: u64| query_since(offset, &epoch, 10);
    // 6, 7, 8 are held
    let ok = history(&*h.bus, "r", q(5)).await;
    assert!(ok.recovered);
    assert_eq!(ok.messages.len(), 3);
    let trimmed = history(&*h.bus, "r", q(3)).await;
    assert!(!trimmed.recovered, "4 and 5 were trimmed");
    let offsets: Vec<_> = trimmed.messages.iter().map(|p| p.offset).collect();
    assert_eq!(
        offsets,
        vec![Some(6), Some(7), Some(8)],
        "never more than history_size"
    );
    h.bus.close().await;
}

async fn history_max_recover(kind: Kind) {
    let cfg = BusConfig {
        max_recover: 2,
        ..config("n1")
    };
    let h = harness(kind, cfg).await;
    let mut epoch = String::new();
    for i in 1..=5 {
        epoch = publish(&*h.bus, "r", json!(i)).await.epoch;
    }
    let q = |offset: u64| query_since(offset, &epoch, 1);
    assert!(history(&*h.bus, "r", q(3)).await.recovered);
    let far = history(&*h.bus, "r", q(2)).await;
    assert!(!far.recovered, "3 missing > max_recover 2");
    assert_eq!(far.messages.len(), 1);
    h.bus.close().await;
}

async fn presence_events_are_per_user(kind: Kind) {
    let mut h = harness(kind, config("n1")).await;
    let r = room("r");
    h.bus.watch_room(&r);
    join_presence(&*h.bus, &r, "alice", "c1").await;
    assert_eq!(h.events.member().await, ("joined", "alice".into()));
    join_presence(&*h.bus, &r, "alice", "c2").await;
    join_presence(&*h.bus, &r, "bob", "c3").await;
    assert_eq!(
        h.events.member().await,
        ("joined", "bob".into()),
        "alice's second tab is not an event"
    );
    leave_presence(&*h.bus, &r, "alice", "c1").await;
    leave_presence(&*h.bus, &r, "alice", "c2").await;
    assert_eq!(
        h.events.member().await,
        ("left", "alice".into()),
        "only the last tab leaving is"
    );
    // leaving twice is harmless and silent
    leave_presence(&*h.bus, &r, "alice", "c2").await;
    leave_presence(&*h.bus, &r, "bob", "c3").await;
    assert_eq!(h.events.member().await, ("left", "bob".into()));
    h.bus.close().await;
}

/// A first join in one step (`join_room`): the member is present, `member_joined` goes
/// out once per user, and the history answer is the one `history` gives (recent or since).
async fn join_room_adds_presence_and_reads_history(kind: Kind) {
    let mut h = harness(kind, config("n1")).await;
    let r = room("r");
    let first = h
        .bus
        .join_room(&r, &user("alice"), "c1", query_recent(5))
        .await
        .expect("first join of an empty room");
    assert_eq!(first.offset, 0);
    assert!(first.messages.is_empty());
    assert_eq!(h.events.member().await, ("joined", "alice".into()));
    let mut epoch = String::new();
    for i in 1..=4 {
        epoch = publish(&*h.bus, "r", json!(i)).await.epoch;
    }
    assert_eq!(
        epoch, first.epoch,
        "the epoch the joiner saw is the one publishes use"
    );
    let recent = h
        .bus
        .join_room(&r, &user("bob"), "c2", query_recent(2))
        .await
        .expect("join with recent history");
    assert_eq!(recent.offset, 4);
    assert!(!recent.recovered);
    let offsets: Vec<_> = recent.messages.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![Some(3), Some(4)]);
    assert_eq!(recent.messages[1].data, json!(4));
    let since = h
        .bus
        .join_room(&r, &user("alice"), "c3", query_since(1, &epoch, 10))
        .await
        .expect("join that recovers");
    assert!(since.recovered);
    let offsets: Vec<_> = since.messages.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![Some(2), Some(3), Some(4)]);
    let p = h.bus.presence(&r, 10).await.expect("presence");
    assert_eq!((p.count.users, p.count.connections), (2, 3));
    // the next member event is bob's (the messages in between are skipped)
    assert_eq!(h.events.member().await, ("joined", "bob".into()));
    h.bus.close().await;
}

/// Many first joins at once (a reconnect storm): each gets its own room's history and
/// presence entry; on Redis they share script calls (the joiner's batches).
async fn concurrent_joins_each_get_their_room(kind: Kind) {
    let h = harness(kind, config("n1")).await;
    let rooms: Vec<String> = (0..8).map(|i| format!("storm{i}")).collect();
    for (i, r) in rooms.iter().enumerate() {
        for k in 0..=i {
            publish(&*h.bus, r, json!(k)).await;
        }
    }
    let joins = (0..40).map(|c| {
        let r = room(&rooms[c % rooms.len()]);
        let bus = h.bus.clone();
        async move {
            let u = user(&format!("u{c}"));
            let got = bus
                .join_room(&r, &u, &format!("c{c}"), query_recent(100))
                .await;
            (r, got)
        }
    });
    for (r, got) in futures_util::future::join_all(joins).await {
        let hist = got.expect("join");
        let i: u64 = r.as_str()["storm".len()..].parse().expect("room number");
        assert_eq!(hist.offset, i + 1, "{r}'s own offset");
        let offsets: Vec<_> = hist.messages.iter().map(|p| p.offset).collect();
        assert_eq!(
            offsets,
            (1..=i + 1).map(Some).collect::<Vec<_>>(),
            "{r}'s own history"
        );
    }
    for r in &rooms {
        let p = h.bus.presence(&room(r), 10).await.expect("presence");
        assert_eq!(p.count.connections, 5, "{r}: five joins each");
    }
    if !matches!(kind, Kind::Memory) {
        let s = h.bus.stats();
        let (calls, joins) = (
            s.join_batches.load(std::sync::atomic::Ordering::Relaxed),
            s.joins_batched.load(std::sync::atomic::Ordering::Relaxed),
        );
        assert_eq!(joins, 40);
        assert!(
            calls < joins,
            "joins waiting together share a call: {calls} calls"
        );
    }
    h.bus.close().await;
}

async fn presence_counts_and_limit(kind: Kind) {
    let h = harness(kind, config("n1")).await;
    let r = room("r");
    for (u, c) in [
        ("carol", "c4"),
        ("alice", "c1"),
        ("bob", "c3"),
        ("alice", "c2"),
    ] {
        h.bus.presence_join(&r, &user(u), c).await.expect("join");
    }
    let p = h.bus.presence(&r, 2).await.expect("presence");
    assert_eq!(p.count.users, 3);
    assert_eq!(p.count.connections, 4);
    let members: Vec<_> = p
        .members
        .iter()
        .map(|m| (m.user.to_string(), m.connections))
        .collect();
    assert_eq!(
        members,
        vec![("alice".to_string(), 2), ("bob".to_string(), 1)]
    );
    let empty = h.bus.presence(&room("nobody"), 10).await.expect("presence");
    assert_eq!(empty.count.users, 0);
    assert!(empty.members.is_empty());
    h.bus.close().await;
}

async fn send_delivers_direct(kind: Kind) {
    let mut h = harness(kind, config("n1")).await;
    let send = SendRequest {
        to: user("bob"),
        message: direct("alice", json!({ "hi": 1 })),
        idempotency_key: Some("alice:9".into()),
    };
    let r = h.bus.send(send.clone()).await.expect("send");
    assert!(!r.duplicate);
    let (to, data) = h
        .events
        .until(|e| match e {
            BusEvent::Direct { to, message } => Some((to.to_string(), message.data.clone())),
            _ => None,
        })
        .await;
    assert_eq!((to.as_str(), data), ("bob", json!({ "hi": 1 })));
    assert!(h.bus.send(send).await.expect("retry").duplicate);
    let marker = SendRequest {
        to: user("bob"),
        message: direct("alice", json!("marker")),
        idempotency_key: None,
    };
    h.bus.send(marker).await.expect("send");
    let data = h
        .events
        .until(|e| match e {
            BusEvent::Direct { message, .. } => Some(message.data.clone()),
            _ => None,
        })
        .await;
    assert_eq!(data, json!("marker"), "the retry was not delivered");
    h.bus.close().await;
}

async fn disconnect_delivers(kind: Kind) {
    let mut h = harness(kind, config("n1")).await;
    // a code no client could receive is refused at the source
    for bad in [0, 1, 1005, 1006, 5000] {
        let e = h
            .bus
            .disconnect_user(&user("mallory"), bad)
            .await
            .expect_err("not a disconnect code");
        assert!(matches!(e, BusError::Internal(_)), "{e:?}");
    }
    h.bus
        .disconnect_user(&user("mallory"), 4002)
        .await
        .expect("disconnect");
    let got = h
        .events
        .until(|e| match e {
            BusEvent::Disconnect { user, code } => Some((user.to_string(), *code)),
            _ => None,
        })
        .await;
    assert_eq!(got, ("mallory".into(), 4002));
    h.bus.close().await;
}

async fn close_stops_readiness(kind: Kind) {
    let h = harness(kind, config("n1")).await;
    assert!(h.bus.is_ready());
    h.bus.close().await;
    assert!(!h.bus.is_ready());
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Kind::Memory).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Redis).await
                }
            )*
        }
        mod redis_rooms {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::RedisRooms).await
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Cluster).await
                }
            )*
        }
    };
}

suite!(
    offsets_and_order,
    skip_is_carried,
    volatile_has_no_offset,
    dedupe_returns_original,
    history_recent,
    history_since,
    history_trimmed,
    history_of_a_lost_epoch_is_capped,
    history_max_recover,
    presence_events_are_per_user,
    join_room_adds_presence_and_reads_history,
    concurrent_joins_each_get_their_room,
    presence_counts_and_limit,
    send_delivers_direct,
    disconnect_delivers,
    close_stops_readiness,
);

/// A first join costs Redis one script call: the presence add and the history read are
/// one EVALSHA, not two (issue 14: one round trip per join).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_join_is_one_script_call() {
    let server = RedisServer::start();
    let cfg = roomcast_redis_bridge::BusConfig {
        // no presence refresh during the test
        presence_ttl: std::time::Duration::from_secs(3600),
        ..config("n1")
    };
    let n = node(&server, cfg).await;
    // The first call of the script loads it (NOSCRIPT, SCRIPT LOAD, EVALSHA again).
    n.bus
        .join_room(&room("warm"), &user("alice"), "c0", query_recent(10))
        .await
        .expect("warm-up join");
    let before = (
        command_calls(&server, "evalsha").await,
        command_calls(&server, "eval").await,
    );
    let h = n
        .bus
        .join_room(&room("r"), &user("bob"), "c1", query_recent(10))
        .await
        .expect("join");
    assert_eq!(h.offset, 0);
    let after = (
        command_calls(&server, "evalsha").await,
        command_calls(&server, "eval").await,
    );
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1, 0),
        "one EVALSHA per first join"
    );
    n.bus.close().await;
}
