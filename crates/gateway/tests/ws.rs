//! docs/protocol.md sections 2 to 4 over real WebSockets against one node; the tests about
//! publish, history, recovery, send and presence run on both buses (in-process and Redis).

mod support;

use roomcast_protocol::{Encoding, ErrorCode, ReqId, ServerMessage};
use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// Runs a behavioural test on the in-process bus and on the Redis bus (a real
/// redis-server), as centrifuge does for its brokers: `<name>::memory`, `<name>::redis`.
macro_rules! both_buses {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::support::Mode;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$name(Mode::Memory).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$name(Mode::Redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis_rooms() {
                super::$name(Mode::RedisRooms).await
            }
        }
    )*};
}

both_buses!(
    publish_reaches_json_and_msgpack_members_alike,
    echo_volatile_and_idempotent_publish,
    join_since_recovers_exactly_what_was_missed,
    joining_while_publishing_has_no_gap_and_no_duplicate,
    send_reaches_every_connection_of_a_user,
    presence_and_member_events_are_per_user,
    health_and_metrics,
    recovery_is_refused_beyond_history_and_max_recover,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_without_auth_names_the_connection() {
    let node = TestNode::open().await;
    let (_c, w) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    match w {
        ServerMessage::Welcome {
            session,
            user,
            auth,
            heartbeat,
            ..
        } => {
            assert_eq!(
                user.as_str(),
                session,
                "with --auth none the user is the connection"
            );
            assert_eq!(auth, "none");
            assert_eq!(heartbeat, 25);
        }
        _ => unreachable!(),
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_in_query_header_and_auth_message() {
    let node = TestNode::jwt(&[]).await;
    let t = token("alice", json!({}));
    let (_q, w) = Client::welcomed(&format!("{}?token={t}", node.ws_url()), Encoding::Json).await;
    assert!(
        matches!(w, ServerMessage::Welcome { ref user, ref auth, .. } if user.as_str() == "alice" && auth == "jwt")
    );

    let mut h = Client::connect_with(
        &node.ws_url(),
        Encoding::Json,
        &[("authorization", &format!("Bearer {t}"))],
    )
    .await
    .expect("connect");
    assert!(
        matches!(h.recv().await, ServerMessage::Welcome { ref user, .. } if user.as_str() == "alice")
    );

    let mut m = Client::connect(&node.ws_url()).await;
    let w = m.request(json!({"type": "auth", "token": t}), "a1").await;
    assert!(
        matches!(w, ServerMessage::Welcome { ref user, .. } if user.as_str() == "alice"),
        "{w:?}"
    );
    assert!(matches!(
        m.request(json!({"type": "ping"}), "p").await,
        ServerMessage::Pong { .. }
    ));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_close_4002() {
    let node = TestNode::jwt(&[]).await;
    let expired = {
        let now = jsonwebtoken::get_current_timestamp();
        token("bob", json!({"exp": now - 3600}))
    };
    for t in [expired.as_str(), "garbage", "a.b.c"] {
        let mut c = Client::connect(&format!("{}?token={t}", node.ws_url())).await;
        assert_eq!(c.closed().await, Closed::Code(4002), "token {t}");
    }
    // Signed with another secret.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "x", "exp": jsonwebtoken::get_current_timestamp() + 60}),
        &jsonwebtoken::EncodingKey::from_secret(b"other"),
    )
    .expect("encode");
    let mut c = Client::connect(&node.ws_url()).await;
    c.send(json!({"type": "auth", "token": forged})).await;
    assert_eq!(c.closed().await, Closed::Code(4002));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_timeout_and_message_before_auth() {
    let node = TestNode::jwt(&["--auth-timeout", "1"]).await;
    let mut idle = Client::connect(&node.ws_url()).await;
    assert_eq!(idle.closed().await, Closed::Code(4001));
    let mut eager = Client::connect(&node.ws_url()).await;
    eager.send(json!({"type": "join", "room": "r"})).await;
    assert_eq!(eager.closed().await, Closed::Code(4003));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_closes_unless_refreshed() {
    let node = TestNode::jwt(&["--jwt-leeway", "0"]).await;
    let now = jsonwebtoken::get_current_timestamp();
    let short = token("carol", json!({"exp": now + 2}));
    let mut stale = Client::connect(&format!("{}?token={short}", node.ws_url())).await;
    let mut fresh = Client::connect(&format!("{}?token={short}", node.ws_url())).await;
    assert!(matches!(stale.recv().await, ServerMessage::Welcome { .. }));
    assert!(matches!(fresh.recv().await, ServerMessage::Welcome { .. }));
    let renewed = token("carol", json!({"exp": now + 600}));
    let ok = fresh
        .request(json!({"type": "auth", "token": renewed}), "r")
        .await;
    assert!(
        matches!(ok, ServerMessage::AuthOk { exp, .. } if exp == now + 600),
        "{ok:?}"
    );
    assert_eq!(stale.closed().await, Closed::Code(4002));
    // The refreshed one outlives the first token.
    assert!(matches!(
        fresh.request(json!({"type": "ping"}), "p").await,
        ServerMessage::Pong { .. }
    ));
    // A refresh for another user is refused.
    fresh
        .send(json!({"type": "auth", "token": token("mallory", json!({}))}))
        .await;
    assert_eq!(fresh.closed().await, Closed::Code(4002));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_claim_and_publish_claim() {
    let node = TestNode::jwt(&[]).await;
    let t = token(
        "dan",
        json!({"rooms": ["chat:*"], "publish": false, "presence": false}),
    );
    let (mut c, _) =
        Client::welcomed(&format!("{}?token={t}", node.ws_url()), Encoding::Json).await;
    c.join("chat:a").await;
    let r = c.join_reply("secret", "j").await;
    assert_eq!(err_code(&r), ErrorCode::Forbidden);
    let r = c.publish("chat:a", json!(1), "p").await;
    assert_eq!(err_code(&r), ErrorCode::Forbidden);
    let r = c.presence("chat:a", "pr").await;
    assert_eq!(err_code(&r), ErrorCode::Forbidden);
    node.stop().await;

    let deny = TestNode::jwt(&["--default-room-policy", "deny"]).await;
    let (mut c, _) = Client::welcomed(
        &format!("{}?token={}", deny.ws_url(), token("e", json!({}))),
        Encoding::Json,
    )
    .await;
    let r = c.join_reply("any", "j").await;
    assert_eq!(err_code(&r), ErrorCode::Forbidden);
    deny.stop().await;
}

async fn publish_reaches_json_and_msgpack_members_alike(mode: Mode) {
    let b = Backend::new(mode);
    let node = b.node("n1", &["--auth", "none"]).await;
    let (mut pubr, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    let (mut j, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    let (mut m, _) = Client::welcomed(&node.ws_url(), Encoding::MsgPack).await;
    for c in [&mut pubr, &mut j, &mut m] {
        c.join("lobby").await;
    }
    for i in 0..5 {
        let publish = json!({"type": "publish", "room": "lobby", "event": "chat", "data": {"n": i, "s": "hé"}});
        assert_eq!(pubr.acked(publish, &format!("m{i}")).await, Some(i + 1));
    }
    for c in [&mut j, &mut m] {
        for i in 0..5u64 {
            let p = c.next_message().await;
            assert_eq!(p.offset, Some(i + 1));
            assert_eq!(p.data, json!({"n": i, "s": "hé"}));
            assert_eq!(p.event.as_str(), "chat");
            assert!(p.ts > 0);
        }
    }
    node.stop().await;
}

async fn echo_volatile_and_idempotent_publish(mode: Mode) {
    let b = Backend::new(mode);
    let node = b.node("n1", &["--auth", "none"]).await;
    let (mut a, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    let (mut b, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    a.join("r").await;
    b.join("r").await;
    // Without echo the sender does not get its message; with echo it does.
    a.publish("r", json!("quiet"), "1").await;
    let loud = json!({"type": "publish", "room": "r", "event": "e", "data": "loud", "echo": true});
    assert_eq!(a.acked(loud, "2").await, Some(2));
    assert_eq!(
        a.next_message().await.data,
        json!("loud"),
        "first message a sees is its echoed one"
    );
    // A repeated id is acknowledged with the original offset and not delivered again.
    assert_eq!(a.publish_acked("r", json!("quiet"), "1").await, Some(1));
    // Volatile: no offset, no ack offset.
    let typing =
        json!({"type": "publish", "room": "r", "event": "typing", "data": null, "volatile": true});
    assert_eq!(a.acked(typing, "3").await, None);
    let seen = b.publications(3).await;
    assert_eq!(
        seen.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![Some(1), Some(2), None]
    );
    // History holds the two durable messages only.
    let (mut late, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    let j = late
        .request(json!({"type": "join", "room": "r", "history": 10}), "j")
        .await;
    match j {
        ServerMessage::Joined {
            messages,
            offset,
            recovered,
            ..
        } => {
            assert_eq!(offset, 2);
            assert!(!recovered);
            assert_eq!(
                messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
                vec![Some(1), Some(2)]
            );
        }
        other => panic!("{other:?}"),
    }
    node.stop().await;
}

async fn join_since_recovers_exactly_what_was_missed(mode: Mode) {
    let b = Backend::new(mode);
    let node = b.node("n1", &["--auth", "none"]).await;
    let (mut p, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    let (mut r, _) = Client::welcomed(&node.ws_url(), Encoding::MsgPack).await;
    let epoch = epoch_of(&r.join("news").await);
    p.publish("news", json!(1), "1").await;
    let seen = r.next_message().await.offset.expect("offset");
    drop(r);
    for i in 2..=4 {
        p.publish("news", json!(i), &i.to_string()).await;
    }
    let (mut back, _) = Client::welcomed(&node.ws_url(), Encoding::MsgPack).await;
    let j = back.join_since("news", seen, &epoch, "j").await;
    match j {
        ServerMessage::Joined {
            recovered,
            messages,
            offset,
            ..
        } => {
            assert!(recovered);
            assert_eq!(offset, 4);
            assert_eq!(
                messages.iter().map(|m| m.data.clone()).collect::<Vec<_>>(),
                vec![json!(2), json!(3), json!(4)]
            );
        }
        other => panic!("{other:?}"),
    }
    // A wrong epoch cannot be recovered: the current epoch is replayed from its start
    // instead, whatever `history` says (docs/protocol.md section 3.2).
    let (mut other, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    let j = other.request(json!({"type": "join", "room": "news", "since": {"offset": 1, "epoch": "nope"}, "history": 1}), "j").await;
    assert!(
        matches!(j, ServerMessage::Joined { recovered: false, ref messages, .. }
            if messages.iter().filter_map(|m| m.offset).collect::<Vec<_>>() == vec![1, 2, 3, 4]),
        "{j:?}"
    );
    node.stop().await;
}

async fn joining_while_publishing_has_no_gap_and_no_duplicate(mode: Mode) {
    let b = Backend::new(mode);
    let node = b.node("n1", OPEN_UNLIMITED).await;
    let (mut p, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    p.join("busy").await;
    let total = 400u64;
    let url = node.ws_url();
    let publisher = tokio::spawn(async move {
        for i in 0..total {
            p.send(json!({"type": "publish", "room": "busy", "event": "e", "data": i}))
                .await;
        }
        p
    });
    // Clients join at different moments with history; each must then see a contiguous run
    // of offsets up to the last one.
    let mut joiners = Vec::new();
    for k in 0..8 {
        let url = url.clone();
        joiners.push(tokio::spawn(async move {
            let (mut c, _) = Client::welcomed(&url, Encoding::Json).await;
            let j = c
                .request(
                    json!({"type": "join", "room": "busy", "history": 1000}),
                    &format!("j{k}"),
                )
                .await;
            let ServerMessage::Joined {
                messages, offset, ..
            } = j
            else {
                panic!("{j:?}")
            };
            let mut offsets: Vec<u64> = messages.iter().filter_map(|m| m.offset).collect();
            assert_eq!(offsets.last().copied().unwrap_or(0), offset);
            while offsets.last().copied().unwrap_or(0) < total {
                offsets.push(c.next_message().await.offset.expect("offset"));
            }
            let expected: Vec<u64> = (1..=total).collect();
            assert_eq!(
                offsets, expected,
                "joiner {k}: history + live is every offset once, in order"
            );
        }));
    }
    for j in joiners {
        j.await.expect("joiner");
    }
    publisher.await.expect("publisher");
    node.stop().await;
}

async fn send_reaches_every_connection_of_a_user(mode: Mode) {
    let b = Backend::new(mode);
    let node = b.node("n1", &["--jwt-secret", SECRET]).await;
    let url = |u: &str| format!("{}?token={}", node.ws_url(), token(u, json!({})));
    let (mut tab1, _) = Client::welcomed(&url("erin"), Encoding::Json).await;
    let (mut tab2, _) = Client::welcomed(&url("erin"), Encoding::MsgPack).await;
    let (mut frank, _) = Client::welcomed(&url("frank"), Encoding::Json).await;
    let hi = json!({"type": "send", "to": "erin", "event": "hi", "data": {"x": 1}});
    assert_eq!(frank.acked(hi.clone(), "s1").await, None);
    for t in [&mut tab1, &mut tab2] {
        let ServerMessage::Direct(d) = t.recv_match(is_direct).await else {
            unreachable!()
        };
        assert_eq!(d.from.as_str(), "frank");
        assert_eq!(d.data, json!({"x": 1}));
    }
    // A repeated send id is acknowledged and not delivered again.
    frank.request(hi, "s1").await;
    frank
        .request(
            json!({"type": "send", "to": "erin", "event": "bye", "data": 2}),
            "s2",
        )
        .await;
    let d = tab1.recv_match(is_direct).await;
    assert!(
        matches!(d, ServerMessage::Direct(ref d) if d.event.as_str() == "bye"),
        "{d:?}"
    );
    node.stop().await;
}

async fn presence_and_member_events_are_per_user(mode: Mode) {
    let b = Backend::new(mode);
    let node = b.node("n1", &["--jwt-secret", SECRET]).await;
    let url = |u: &str| format!("{}?token={}", node.ws_url(), token(u, json!({})));
    let (mut watcher, _) = Client::welcomed(&url("watcher"), Encoding::Json).await;
    watcher.join("room").await;
    let (mut g1, _) = Client::welcomed(&url("gina"), Encoding::Json).await;
    let (mut g2, _) = Client::welcomed(&url("gina"), Encoding::Json).await;
    g1.join("room").await;
    let ev = watcher
        .recv_match(|m| matches!(m, ServerMessage::MemberJoined { .. }))
        .await;
    assert!(matches!(ev, ServerMessage::MemberJoined { ref user, .. } if user.as_str() == "gina"));
    g2.join("room").await;
    let p = watcher.presence("room", "p").await;
    match &p {
        ServerMessage::Presence { members, count, .. } => {
            assert_eq!(count.users, 2);
            assert_eq!(count.connections, 3);
            let gina = members
                .iter()
                .find(|m| m.user.as_str() == "gina")
                .expect("gina present");
            assert_eq!(gina.connections, 2);
        }
        other => panic!("{other:?}"),
    }
    let p = watcher
        .request(
            json!({"type": "presence", "room": "room", "limit": 1}),
            "p2",
        )
        .await;
    assert!(
        matches!(p, ServerMessage::Presence { ref members, count, .. } if members.len() == 1 && count.users == 2),
        "{p:?}"
    );
    // The first tab leaving is not a member_left; the last one is.
    let left = g1
        .request(json!({"type": "leave", "room": "room"}), "l")
        .await;
    assert!(matches!(left, ServerMessage::Left { .. }));
    drop(g2);
    let ev = watcher.recv_match(is_member_event).await;
    assert!(
        matches!(ev, ServerMessage::MemberLeft { ref user, .. } if user.as_str() == "gina"),
        "{ev:?}"
    );
    let p = watcher.presence("room", "p3").await;
    assert!(
        matches!(p, ServerMessage::Presence { count, .. } if count.users == 1),
        "{p:?}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_error_and_the_connection_lives() {
    let node = TestNode::start(&[
        "--auth",
        "none",
        "--max-message-size",
        "1024",
        "--max-rooms",
        "2",
    ])
    .await;
    for enc in Encoding::ALL {
        let (mut c, _) = Client::welcomed(&node.ws_url(), enc).await;
        let r = c.request(json!({"type": "dance"}), "u").await;
        assert_eq!(err_code(&r), ErrorCode::UnknownType);
        let r = c.request(json!({"type": "join", "room": 5}), "w").await;
        assert_eq!(err_code(&r), ErrorCode::InvalidMessage);
        let r = c
            .request(json!({"type": "publish", "room": "r"}), "m")
            .await;
        assert_eq!(err_code(&r), ErrorCode::InvalidMessage, "missing event");
        let r = c.join_reply("bad room", "b").await;
        assert_eq!(err_code(&r), ErrorCode::InvalidMessage);
        let r = c.publish("r", json!("x".repeat(2000)), "big").await;
        assert_eq!(err_code(&r), ErrorCode::TooLarge);
        let r = c
            .request(json!({"type": "leave", "room": "never"}), "nj")
            .await;
        assert_eq!(err_code(&r), ErrorCode::NotJoined);
        c.join("one").await;
        c.join("two").await;
        let r = c.join_reply("three", "rl").await;
        assert_eq!(err_code(&r), ErrorCode::RoomLimit);
        // Garbage and the other frame type.
        let wrong = match enc {
            Encoding::Json => Message::Binary(vec![0x81, 0xa1].into()),
            Encoding::MsgPack => Message::Text("{\"type\":\"ping\"}".into()),
        };
        c.send_raw(wrong).await;
        let e = c.recv_match(is_error).await;
        assert_eq!(err_code(&e), ErrorCode::InvalidMessage);
        let garbage = match enc {
            Encoding::Json => Message::Text("{not json".into()),
            Encoding::MsgPack => Message::Binary(vec![0xc1, 0xff, 0x00].into()),
        };
        c.send_raw(garbage).await;
        let e = c.recv_match(is_error).await;
        assert_eq!(err_code(&e), ErrorCode::InvalidMessage);
        // Still alive and answering.
        assert!(matches!(
            c.request(json!({"type": "ping"}), "alive").await,
            ServerMessage::Pong {
                id: Some(ReqId::Str(_))
            }
        ));
    }
    // A frame beyond the hard cap (4x the message limit) closes with 1009.
    let (mut c, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    c.send_raw(Message::Text("x".repeat(8000).into())).await;
    assert_eq!(c.closed().await, Closed::Code(1009));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_errors_then_4029() {
    let node = rate_limited_node("1", "3", "5").await;
    let (mut c, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    for i in 0..3 {
        assert!(c.pongs(&format!("ok{i}")).await);
    }
    let r = c.request(json!({"type": "ping"}), "limited").await;
    assert_eq!(err_code(&r), ErrorCode::RateLimited);
    for i in 0..10 {
        c.send(json!({"type": "ping", "id": format!("x{i}")})).await;
    }
    assert_eq!(c.closed().await, Closed::Code(4029));
    // Another client is unaffected.
    let (mut d, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    assert!(d.pongs("p").await);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_and_per_ip_limit_at_the_upgrade() {
    let node = TestNode::start(&[
        "--auth",
        "none",
        "--allowed-origins",
        "https://app.example.com",
        "--max-connections-per-ip",
        "2",
    ])
    .await;
    let bad = Client::connect_with(
        &node.ws_url(),
        Encoding::Json,
        &[("origin", "https://app.example.com.evil.io")],
    )
    .await;
    assert!(
        matches!(bad, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 403),
        "{:?}",
        bad.err()
    );
    let good = Client::connect_with(
        &node.ws_url(),
        Encoding::Json,
        &[("origin", "https://app.example.com")],
    )
    .await;
    assert!(good.is_ok());
    let no_origin = Client::connect_with(&node.ws_url(), Encoding::Json, &[]).await;
    assert!(
        no_origin.is_ok(),
        "no Origin: not a browser, not subject to the list"
    );
    // Two connections from 127.0.0.1 are held; a third is refused; a forwarded client
    // (X-Forwarded-For from a trusted proxy) counts as its own address.
    let third = Client::connect_with(&node.ws_url(), Encoding::Json, &[]).await;
    assert!(
        matches!(third, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 429),
        "{:?}",
        third.err()
    );
    let forwarded = Client::connect_with(
        &node.ws_url(),
        Encoding::Json,
        &[("x-forwarded-for", "203.0.113.7")],
    )
    .await;
    assert!(forwarded.is_ok());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_4008_and_others_get_everything() {
    // The queue's rule alone: the socket's write timeout (the other rule) is an hour.
    let node = TestNode::start(&[
        "--auth",
        "none",
        "--write-timeout",
        "3600",
        "--outbound-queue",
        "16",
        "--rate-limit",
        "100000",
        "--rate-burst",
        "100000",
        "--max-message-size",
        "65536",
    ])
    .await;
    let (mut slow, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    let (mut fast, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    let (mut p, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    slow.join("flood").await;
    fast.join("flood").await;
    let payload = "y".repeat(32 * 1024);
    // Lock-step: each message is acknowledged and read by the fast member before the
    // next, so only the member that never reads can fall behind. ~48 MiB in all: more
    // than loopback socket buffers hold.
    for i in 1..=1500u64 {
        p.publish_acked("flood", json!(payload), &i.to_string())
            .await;
        assert_eq!(
            fast.next_message().await.offset,
            Some(i),
            "the fast member sees every message in order"
        );
    }
    assert_eq!(slow.closed().await, Closed::Code(4008));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_connection_is_dropped_within_two_heartbeats() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = TestNode::start(&["--auth", "none", "--heartbeat", "1"]).await;
    // A raw client that completes the handshake and then never answers a ping.
    let mut s = tokio::net::TcpStream::connect(node.addr)
        .await
        .expect("connect");
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        node.addr
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let mut total = Vec::new();
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the node closed the silent connection");
    assert!(String::from_utf8_lossy(&total).starts_with("HTTP/1.1 101"));
    assert!(
        total.windows(2).any(|w| w == [0x89, 0x00]),
        "pings were sent before giving up"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_1001_and_refuses_new_upgrades() {
    let node = TestNode::start(&["--auth", "none", "--drain-spread-ms", "300"]).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let (c, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
        clients.push(c);
    }
    let (status, _) = http(node.addr, "GET", "/readyz", &[], "").await;
    assert_eq!(status, 200);
    node.shutdown.cancel();
    // Readiness turns 503 while the drain runs (connections are still open).
    let mut saw_503 = false;
    for _ in 0..50 {
        let (status, _) = http(node.addr, "GET", "/readyz", &[], "").await;
        if status == 503 {
            saw_503 = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(saw_503, "readyz reports the drain");
    let refused = Client::connect_with(&node.ws_url(), Encoding::Json, &[]).await;
    assert!(refused.is_err(), "no new upgrades while draining");
    for c in clients.iter_mut() {
        assert_eq!(c.closed().await, Closed::Code(1001));
    }
    let res = tokio::time::timeout(WAIT, node.handle)
        .await
        .expect("node stops after the drain");
    assert!(res.expect("join").is_ok());
}

async fn health_and_metrics(mode: Mode) {
    let b = Backend::new(mode);
    let node = b.node("n1", &["--auth", "none"]).await;
    let (mut c, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    c.join("m").await;
    c.request(
        json!({"type": "publish", "room": "m", "event": "e", "data": 1, "echo": true}),
        "1",
    )
    .await;
    c.request(json!({"type": "nope"}), "2").await;
    let (status, _) = http(node.addr, "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200);
    let (status, text) = http(node.addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    for needle in [
        "roomcast_connections{transport=\"ws\"} 1",
        "roomcast_messages_in_total{type=\"publish\"} 1",
        "roomcast_errors_total{code=\"unknown_type\"} 1",
        "roomcast_rooms 1",
        "roomcast_fanout_seconds_count",
        "roomcast_bus_up 1",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    node.stop().await;
}

async fn recovery_is_refused_beyond_history_and_max_recover(mode: Mode) {
    let b = Backend::new(mode);
    let node = b
        .node(
            "n1",
            &[
                "--auth",
                "none",
                "--history-size",
                "5",
                "--max-recover",
                "3",
            ],
        )
        .await;
    let (mut p, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    let epoch = epoch_of(&p.join("r").await);
    for i in 1..=10 {
        p.publish("r", json!(i), &i.to_string()).await;
    }
    // (since, history) -> (recovered, offsets replayed). History holds 6..=10; a join
    // replays at most 3.
    let cases = [
        ((8, None), (true, vec![9, 10])),
        ((7, None), (true, vec![8, 9, 10])),
        ((6, None), (false, vec![])), // 4 missing: more than --max-recover
        ((2, None), (false, vec![])), // trimmed from history
        ((2, Some(2)), (false, vec![9, 10])), // then the recent history asked for
        ((20, None), (false, vec![])), // an offset the room never reached
    ];
    for ((since, history), want) in cases {
        let (mut c, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
        let mut join =
            json!({"type": "join", "room": "r", "since": {"offset": since, "epoch": epoch}});
        if let Some(h) = history {
            join["history"] = json!(h);
        }
        let j = c.request(join, "j").await;
        let ServerMessage::Joined {
            recovered,
            messages,
            offset,
            ..
        } = j
        else {
            panic!("{j:?}")
        };
        assert_eq!(offset, 10);
        let got = (
            recovered,
            messages.iter().filter_map(|m| m.offset).collect::<Vec<_>>(),
        );
        assert_eq!(got, want, "since {since}, history {history:?}");
    }
    let (mut c, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    let j = c
        .request(json!({"type": "join", "room": "r", "history": 10}), "h")
        .await;
    assert!(
        matches!(j, ServerMessage::Joined { ref messages, .. }
            if messages.iter().filter_map(|m| m.offset).collect::<Vec<_>>() == vec![8, 9, 10]),
        "history is capped by --max-recover: {j:?}"
    );
    node.stop().await;
}
