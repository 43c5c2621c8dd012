//! The backend API, the HTTP fallback for client commands and the SSE transport
//! (issue 4, docs/protocol.md sections 1 and 5), mostly against a two-node cluster on a real
//! redis-server; and docs/openapi.json checked against the real routes.

mod support;

use roomcast_protocol::{Encoding, ServerMessage};
use serde_json::{json, Value};
use support::*;

const KEY: &str = "key-one";
const KEY2: &str = "key-two";

/// Flags every node here gets.
const COMMON: &[&str] = &[
    "--jwt-secret",
    SECRET,
    "--api-keys",
    "key-one, key-two",
    "--rate-limit",
    "100000",
    "--rate-burst",
    "100000",
];

async fn standalone(extra: &[&str]) -> TestNode {
    let mut args: Vec<&str> = COMMON.to_vec();
    args.extend_from_slice(extra);
    TestNode::start(&args).await
}

/// A backend request with the first API key: (status, JSON body or Null).
async fn api(node: &TestNode, method: &str, path: &str, body: &str) -> (u16, Value) {
    api_as(node, method, path, body, Some(KEY)).await
}

/// `POST /api/publish` of `data` as event `e` to `room`: (status, JSON body).
async fn api_publish(node: &TestNode, room: &str, data: Value) -> (u16, Value) {
    api_publish_with(node, KEY, room, data).await
}

/// [`api_publish`], asserting a 200; returns the body.
async fn published(node: &TestNode, room: &str, data: Value) -> Value {
    let (st, v) = api_publish(node, room, data).await;
    assert_eq!(st, 200, "{v}");
    v
}

/// `POST /client/commands` as the holder of `jwt`.
async fn commands(node: &TestNode, jwt: Option<&str>, body: &Value) -> (u16, Value) {
    api_as(node, "POST", "/client/commands", &body.to_string(), jwt).await
}

async fn connect(node: &TestNode, user: &str, enc: Encoding) -> Client {
    connect_user(&node.ws_url(), user, enc).await
}

/// Opens `/sse?rooms=...` as `user` (plus `extra` query), expecting 200.
async fn sse(node: &TestNode, user: &str, query: &str, headers: &[(&str, &str)]) -> SseStream {
    let path = format!("/sse?{query}&token={}", token(user, json!({})));
    let s = SseStream::open(node.addr, &path, headers).await;
    assert_eq!(s.status, 200, "{}", s.head);
    assert!(
        s.head
            .to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{}",
        s.head
    );
    s
}

/// A room message as (offset, from, data).
type Seen = (u64, String, Value);

/// The next `n` SSE events, checked to be room messages whose id is `room:offset`.
async fn sse_messages(s: &mut SseStream, n: usize) -> Vec<(String, Seen)> {
    let mut out = Vec::new();
    while out.len() < n {
        let ev = s.next_event().await.expect("an event before the end");
        assert_eq!(ev.event.as_deref(), Some("message"), "{ev:?}");
        let v = ev.json();
        if v["type"] != "message" {
            continue;
        }
        let room = v["room"].as_str().expect("room").to_string();
        let offset = v["offset"].as_u64().expect("offset");
        assert_eq!(ev.id, Some(format!("{room}:{offset}")), "{ev:?}");
        out.push((
            room,
            (
                offset,
                v["from"].as_str().expect("from").to_string(),
                v["data"].clone(),
            ),
        ));
    }
    out
}

fn sse_ids(events: &[(String, Seen)]) -> Vec<String> {
    events
        .iter()
        .map(|(room, s)| format!("{room}:{}", s.0))
        .collect()
}

/// Two WebSocket members of `feed`: w1 on `n1` (JSON) and w2 on `n2` (MessagePack).
async fn feed_members(n1: &TestNode, n2: &TestNode) -> (Client, Client) {
    let mut w1 = connect(n1, "w1", Encoding::Json).await;
    let mut w2 = connect(n2, "w2", Encoding::MsgPack).await;
    w1.join("feed").await;
    w2.join("feed").await;
    (w1, w2)
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no error code>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_publish_reaches_websocket_and_sse_clients_on_both_nodes() {
    let redis = RedisServer::start();
    let nodes = cluster(&redis, 2, COMMON, &[]).await;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let (mut w1, mut w2) = feed_members(n1, n2).await;
    let mut s1 = sse(n1, "s1", "rooms=feed", &[]).await;
    let mut s2 = sse(n2, "s2", "rooms=feed", &[]).await;

    let (st, v) = api(
        n1,
        "POST",
        "/api/publish",
        r#"{"room":"feed","event":"news","data":{"n":1}}"#,
    )
    .await;
    assert_eq!((st, &v["offset"]), (200, &json!(1)), "{v}");
    let epoch = v["epoch"].as_str().expect("epoch").to_string();
    // The batch form, on the other node: results in order, one bad item does not stop
    // the others.
    let batch = json!([
        {"room": "feed", "event": "news", "data": {"n": 2}},
        {"room": "feed"},
        {"room": "feed", "event": "news", "data": {"n": 3}},
    ]);
    let (st, v) = api(n2, "POST", "/api/publish", &batch.to_string()).await;
    assert_eq!(st, 200, "{v}");
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 3, "{v}");
    assert_eq!(results[0]["offset"], json!(2));
    assert_eq!(error_code(&results[1]), "invalid_message");
    assert_eq!(results[2]["offset"], json!(3));
    assert_eq!(results[2]["epoch"], json!(epoch));
    // Idempotent with an id, across nodes.
    let once = r#"{"room":"feed","event":"news","data":{"n":4},"id":"evt-4"}"#;
    let (_, a) = api(n1, "POST", "/api/publish", once).await;
    let (_, b) = api(n2, "POST", "/api/publish", once).await;
    assert_eq!((&a["offset"], &b["offset"]), (&json!(4), &json!(4)));
    // A client publish interleaves in the same order for everyone.
    w1.request(
        json!({"type": "publish", "room": "feed", "event": "chat", "data": "hello", "echo": true}),
        "c",
    )
    .await;
    let expected: Vec<Seen> = vec![
        (1, "server".into(), json!({"n": 1})),
        (2, "server".into(), json!({"n": 2})),
        (3, "server".into(), json!({"n": 3})),
        (4, "server".into(), json!({"n": 4})),
        (5, "w1".into(), json!("hello")),
    ];
    for c in [&mut w1, &mut w2] {
        assert_eq!(c.messages(5).await, expected);
    }
    for s in [&mut s1, &mut s2] {
        let got: Vec<Seen> = sse_messages(s, 5)
            .await
            .into_iter()
            .map(|(room, seen)| {
                assert_eq!(room, "feed");
                seen
            })
            .collect();
        assert_eq!(got, expected, "SSE and WebSocket clients see the same");
    }
    // Nothing more (no second copy of the retried message): the next is the next one.
    api(
        n2,
        "POST",
        "/api/publish",
        r#"{"room":"feed","event":"news","data":"last"}"#,
    )
    .await;
    assert_eq!(
        w2.messages(1).await,
        vec![(6, "server".into(), json!("last"))]
    );
    assert_eq!(sse_messages(&mut s1, 1).await[0].1 .0, 6);
    // A volatile publish: no offset, no history, delivered all the same.
    let (st, v) = api(
        n1,
        "POST",
        "/api/publish",
        r#"{"room":"feed","event":"typing","data":null,"volatile":true}"#,
    )
    .await;
    assert_eq!((st, &v), (200, &json!({})));
    let m = w2.next_message().await;
    assert_eq!((m.offset, m.event.as_str()), (None, "typing"));
    // Metrics by route and status, and SSE connections.
    let (_, text) = http(n1.addr, "GET", "/metrics", &[], "").await;
    for needle in [
        "roomcast_api_requests_total{route=\"publish\",status=\"200\"}",
        "roomcast_connections{transport=\"sse\"} 1",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emitter_messages_reach_websocket_and_sse_clients_on_every_node() {
    let redis = RedisServer::start();
    let nodes = cluster(&redis, 2, COMMON, &[]).await;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let (mut w1, mut w2) = feed_members(n1, n2).await;
    let mut s2 = sse(n2, "s2", "rooms=feed", &[]).await;
    // A durable message first, so that the emitter's (offset-less) one comes between two.
    api_publish(n1, "feed", json!(1)).await;
    // docs/protocol.md section 6: any process may PUBLISH the envelope to the room channel.
    let paid = json!({"paid": true});
    let bytes = emitter_envelope("billing-backend", "feed", "invoice", "billing", paid);
    let receivers = redis
        .command_raw(&[b"PUBLISH", b"roomcast:room:feed", &bytes])
        .expect("PUBLISH answers");
    assert_eq!(receivers.trim(), ":2", "both nodes are subscribed");
    api_publish(n2, "feed", json!(2)).await;
    for c in [&mut w1, &mut w2] {
        let got: Vec<_> = c
            .publications(3)
            .await
            .into_iter()
            .map(|p| (p.offset, p.from.to_string(), p.data))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(1), "server".into(), json!(1)),
                (None, "billing".into(), json!({"paid": true})),
                (Some(2), "server".into(), json!(2)),
            ]
        );
    }
    let ev = s2.next_non_member_event().await.expect("first");
    assert_eq!(ev.id.as_deref(), Some("feed:1"));
    let ev = s2.next_non_member_event().await.expect("the emitter's");
    assert_eq!(ev.id, None, "no offset, no id: {ev:?}");
    assert_eq!(ev.json()["data"], json!({"paid": true}));
    let ev = s2.next_event().await.expect("third");
    assert_eq!(ev.id.as_deref(), Some("feed:2"));
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_send_and_disconnect_act_on_every_node() {
    let redis = RedisServer::start();
    let nodes = cluster(&redis, 2, COMMON, &[]).await;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let mut e1 = connect(n1, "erin", Encoding::Json).await;
    let mut e2 = connect(n2, "erin", Encoding::MsgPack).await;
    let mut e3 = sse(n2, "erin", "rooms=lobby", &[]).await;
    let mut frank = connect(n1, "frank", Encoding::Json).await;
    let (st, v) = api(
        n2,
        "POST",
        "/api/send",
        r#"{"user":"erin","event":"note","data":{"hi":1}}"#,
    )
    .await;
    assert_eq!((st, &v), (200, &json!({})));
    for c in [&mut e1, &mut e2] {
        let ServerMessage::Direct(d) = c.recv_match(is_direct).await else {
            unreachable!()
        };
        assert_eq!((d.from.as_str(), d.event.as_str()), ("server", "note"));
        assert_eq!(d.data, json!({"hi": 1}));
    }
    let ev = e3.next_event().await.expect("the direct message on SSE");
    let v = ev.json();
    assert_eq!(
        (&v["type"], &v["from"], &v["data"]),
        (&json!("direct"), &json!("server"), &json!({"hi": 1}))
    );

    let (st, v) = api(n1, "POST", "/api/disconnect", r#"{"user":"erin"}"#).await;
    assert_eq!((st, &v), (200, &json!({})));
    assert_eq!(e1.closed().await, Closed::Code(4002));
    assert_eq!(e2.closed().await, Closed::Code(4002));
    assert!(e3.ended().await, "erin's SSE stream ends too");
    // Another user is untouched.
    assert!(frank.pongs("p").await);
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_presence_and_history() {
    let redis = RedisServer::start();
    let nodes = cluster(&redis, 2, COMMON, &[]).await;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let mut a = connect(n1, "ann", Encoding::Json).await;
    let mut b1 = connect(n1, "ben", Encoding::Json).await;
    let mut b2 = connect(n2, "ben", Encoding::Json).await;
    for c in [&mut a, &mut b1, &mut b2] {
        c.join("chat:a").await;
    }
    let (st, v) = api(n2, "GET", "/api/rooms/chat%3Aa/presence", "").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["count"], json!({"users": 2, "connections": 3}), "{v}");
    let mut members: Vec<(String, u64)> = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["user"].as_str().expect("user").to_string(),
                m["connections"].as_u64().expect("connections"),
            )
        })
        .collect();
    members.sort();
    assert_eq!(members, vec![("ann".into(), 1), ("ben".into(), 2)]);
    let (_, v) = api(n1, "GET", "/api/rooms/chat:a/presence?limit=1", "").await;
    assert_eq!(v["members"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["count"]["users"], json!(2));

    let mut epoch = Value::Null;
    for i in 1..=5 {
        let (_, v) = api_publish(n1, "chat:a", json!(i)).await;
        epoch = v["epoch"].clone();
    }
    let offsets = |v: &Value| -> Vec<u64> {
        v["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["offset"].as_u64().expect("offset"))
            .collect()
    };
    let (st, v) = api(n2, "GET", "/api/rooms/chat:a/history?since=2&limit=2", "").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(offsets(&v), vec![3, 4], "{v}");
    assert_eq!(v["epoch"], epoch);
    assert_eq!(v["messages"][0]["data"], json!(3));
    assert_eq!(v["messages"][0]["from"], json!("server"));
    let (_, v) = api(n2, "GET", "/api/rooms/chat:a/history?limit=3", "").await;
    assert_eq!(offsets(&v), vec![3, 4, 5], "the most recent, oldest first");
    let (_, v) = api(n1, "GET", "/api/rooms/chat:a/history", "").await;
    assert_eq!(offsets(&v), vec![1, 2, 3, 4, 5]);
    let (st, v) = api(n1, "GET", "/api/rooms/nothing-here/history", "").await;
    assert_eq!((st, offsets(&v)), (200, vec![]));
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_error_statuses() {
    let node = standalone(&["--max-message-size", "1024"]).await;
    let ok = r#"{"room":"r","event":"e","data":1}"#;
    // 401: no key, a wrong key; the second key works too.
    let (st, v) = api_as(&node, "POST", "/api/publish", ok, None).await;
    assert_eq!((st, error_code(&v)), (401, "unauthorized"), "{v}");
    let (st, v) = api_as(&node, "POST", "/api/publish", ok, Some("key-on")).await;
    assert_eq!((st, error_code(&v)), (401, "unauthorized"), "{v}");
    let (st, _) = api_as(&node, "POST", "/api/publish", ok, Some(KEY2)).await;
    assert_eq!(st, 200);
    // 400: not JSON, a missing field, a wrong type, a bad room name.
    for bad in [
        "{not json",
        r#"{"room":"r","data":1}"#,
        r#"{"room":"r","event":5}"#,
        r#"{"room":"","event":"e"}"#,
    ] {
        let (st, v) = api(&node, "POST", "/api/publish", bad).await;
        assert_eq!((st, error_code(&v)), (400, "invalid_message"), "{bad}: {v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    let (st, _) = api(&node, "POST", "/api/send", r#"{"event":"e"}"#).await;
    assert_eq!(st, 400);
    let (st, _) = api(&node, "POST", "/api/disconnect", "{}").await;
    assert_eq!(st, 400);
    let (st, _) = api(&node, "GET", "/api/rooms/r/history?since=x", "").await;
    assert_eq!(st, 400);
    // 413: data above --max-message-size, and a body above the body limit.
    let big = json!({"room": "r", "event": "e", "data": "x".repeat(2000)}).to_string();
    let (st, v) = api(&node, "POST", "/api/publish", &big).await;
    assert_eq!((st, error_code(&v)), (413, "too_large"), "{v}");
    let huge = json!({"room": "r", "event": "e", "data": "x".repeat(40_000)}).to_string();
    let (st, v) = api(&node, "POST", "/api/publish", &huge).await;
    assert_eq!((st, error_code(&v)), (413, "too_large"), "{v}");
    // 404 and 405.
    let (st, v) = api(&node, "GET", "/api/nope", "").await;
    assert_eq!((st, error_code(&v)), (404, "not_found"), "{v}");
    let (st, _) = api(&node, "GET", "/api/rooms/r/nope", "").await;
    assert_eq!(st, 404);
    let (st, _) = api(&node, "GET", "/api/publish", "").await;
    assert_eq!(st, 405);
    node.stop().await;

    // No keys configured: the API is closed.
    let closed = TestNode::jwt(&[]).await;
    let (st, v) = api(&closed, "POST", "/api/publish", ok).await;
    assert_eq!((st, error_code(&v)), (401, "unauthorized"), "{v}");
    closed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_answers_503_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let nodes = cluster(&redis, 2, COMMON, &["--bus-timeout", "1"]).await;
    let n1 = &nodes[0];
    let (st, _) = api(n1, "POST", "/api/publish", r#"{"room":"r","event":"e"}"#).await;
    assert_eq!(st, 200);
    redis.kill();
    let addr = n1.addr;
    eventually("readyz 503", || async move {
        (ready(addr).await == 503).then_some(())
    })
    .await;
    for (method, path, body) in [
        (
            "POST",
            "/api/publish",
            r#"{"room":"r","event":"e","data":1}"#,
        ),
        ("POST", "/api/send", r#"{"user":"u","event":"e","data":1}"#),
        ("POST", "/api/disconnect", r#"{"user":"u"}"#),
        ("GET", "/api/rooms/r/presence", ""),
        ("GET", "/api/rooms/r/history", ""),
    ] {
        let (st, v) = api(n1, method, path, body).await;
        assert_eq!((st, error_code(&v)), (503, "unavailable"), "{path}: {v}");
    }
    // An SSE stream cannot start without the bus either.
    let path = format!("/sse?rooms=r&token={}", token("u", json!({})));
    assert_eq!(SseStream::open(addr, &path, &[]).await.status, 503);
    // The batch form reports it per item.
    let (st, v) = api(
        n1,
        "POST",
        "/api/publish",
        r#"[{"room":"r","event":"e","data":1}]"#,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(error_code(&v["results"][0]), "unavailable", "{v}");
    // So does the HTTP fallback, per command.
    let (st, v) = commands(
        n1,
        Some(&token("u", json!({}))),
        &json!({"type": "publish", "room": "r", "event": "e", "data": 1, "id": "x"}),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        (&v[0]["type"], &v[0]["code"], &v[0]["id"]),
        (&json!("error"), &json!("unavailable"), &json!("x"))
    );
    redis.restart();
    eventually("readyz 200 again", || async move {
        (ready(addr).await == 200).then_some(())
    })
    .await;
    let (st, v) = api(n1, "POST", "/api/publish", r#"{"room":"r","event":"e"}"#).await;
    assert_eq!(st, 200, "{v}");
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_over_http() {
    let redis = RedisServer::start();
    let nodes = cluster(&redis, 2, COMMON, &[]).await;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let mut listener = connect(n2, "lis", Encoding::Json).await;
    listener.join("chat:x").await;
    let hana = token("hana", json!({"rooms": ["chat:*"]}));
    let batch = json!([
        {"type": "publish", "room": "chat:x", "event": "e", "data": "via http", "id": "c1"},
        {"type": "presence", "room": "chat:x", "id": "c2"},
        {"type": "publish", "room": "secret", "event": "e", "data": 1, "id": "c3"},
        {"type": "join", "room": "chat:x", "id": "c4"},
        {"type": "ping", "id": "c5"},
        {"type": "send", "to": "lis", "event": "dm", "data": 2, "id": "c6"},
        {"type": "bogus", "id": "c7"},
    ]);
    let (st, v) = commands(n1, Some(&hana), &batch).await;
    assert_eq!(st, 200, "{v}");
    let replies = v.as_array().expect("a list of replies");
    let summary: Vec<(String, String)> = replies
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap_or("").to_string(),
                match r["type"].as_str() {
                    Some("error") => format!("error:{}", r["code"].as_str().unwrap_or("")),
                    Some(t) => t.to_string(),
                    None => "?".into(),
                },
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("c1", "ack"),
        ("c2", "presence"),
        ("c3", "error:forbidden"),
        ("c4", "error:invalid_message"),
        ("c5", "pong"),
        ("c6", "ack"),
        ("c7", "error:unknown_type"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(summary, want, "{v}");
    assert_eq!(replies[0]["offset"], json!(1));
    assert_eq!(replies[1]["count"]["users"], json!(1), "{v}");
    let p = listener.next_message().await;
    assert_eq!(
        (p.from.as_str(), &p.data, p.offset),
        ("hana", &json!("via http"), Some(1))
    );
    assert!(matches!(
        listener.recv_match(is_direct).await,
        ServerMessage::Direct(ref d) if d.from.as_str() == "hana"
    ));
    // One command (not a list) is answered with a list of one; a retry of c1 on the
    // other node gets the original offset.
    let (st, v) = commands(
        n2,
        Some(&hana),
        &json!({"type": "publish", "room": "chat:x", "event": "e", "data": "via http", "id": "c1"}),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        v,
        json!([{"type": "ack", "id": "c1", "offset": 1}]),
        "idempotent over HTTP too"
    );
    // At most 100 commands per request.
    let many: Vec<Value> = (0..101).map(|i| json!({"type": "ping", "id": i})).collect();
    let (st, v) = commands(n1, Some(&hana), &json!(many)).await;
    assert_eq!((st, error_code(&v)), (413, "too_large"), "{v}");
    // No token, an API key instead of a user token: 401.
    let (st, _) = commands(n1, None, &json!({"type": "ping"})).await;
    assert_eq!(st, 401);
    let (st, _) = commands(n1, Some(KEY), &json!({"type": "ping"})).await;
    assert_eq!(st, 401);
    stop_all(nodes).await;

    // Rate limits apply per user, as on /ws.
    let strict = TestNode::jwt(&["--rate-limit", "1", "--rate-burst", "2"]).await;
    let pings: Vec<Value> = (0..4).map(|i| json!({"type": "ping", "id": i})).collect();
    let (st, v) = commands(&strict, Some(&token("u", json!({}))), &json!(pings)).await;
    assert_eq!(st, 200);
    let kinds: Vec<String> = v
        .as_array()
        .expect("list")
        .iter()
        .map(|r| {
            r["code"]
                .as_str()
                .or(r["type"].as_str())
                .unwrap_or("?")
                .to_string()
        })
        .collect();
    assert_eq!(kinds, ["pong", "pong", "rate_limited", "rate_limited"]);
    strict.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_with_last_event_id_and_since_on_another_node() {
    let redis = RedisServer::start();
    let nodes = cluster(&redis, 2, COMMON, &[]).await;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let publish = |room: &'static str, data: i64| published(n1, room, json!(data));
    let mut s = sse(n1, "sam", "rooms=a,b", &[]).await;
    publish("a", 1).await;
    publish("b", 1).await;
    publish("a", 2).await;
    let first = sse_messages(&mut s, 3).await;
    assert_eq!(sse_ids(&first), ["a:1", "b:1", "a:2"]);
    drop(s);
    publish("a", 3).await;
    publish("b", 2).await;
    publish("a", 4).await;
    // What a browser does: Last-Event-ID is the last id it saw (one room here).
    let mut r = sse(n2, "sam", "rooms=a", &[("last-event-id", "a:2")]).await;
    let missed = sse_messages(&mut r, 2).await;
    assert_eq!(sse_ids(&missed), ["a:3", "a:4"]);
    assert_eq!(missed[0].1 .2, json!(3));
    publish("a", 5).await;
    assert_eq!(
        sse_ids(&sse_messages(&mut r, 1).await),
        ["a:5"],
        "then live"
    );
    // ?since= for several rooms at once.
    let mut q = sse(n1, "sam", "rooms=a,b&since=a:2,b:1", &[]).await;
    let missed = sse_messages(&mut q, 4).await;
    assert_eq!(sse_ids(&missed), ["a:3", "a:4", "a:5", "b:2"]);
    publish("b", 3).await;
    assert_eq!(sse_ids(&sse_messages(&mut q, 1).await), ["b:3"]);
    // A room named twice is one subscription: its history is replayed once.
    let mut twice = sse(n2, "sam", "rooms=b,b&since=b:1", &[]).await;
    assert_eq!(sse_ids(&sse_messages(&mut twice, 2).await), ["b:2", "b:3"]);
    publish("b", 4).await;
    assert_eq!(sse_ids(&sse_messages(&mut twice, 1).await), ["b:4"]);
    // Room rules and auth as on /ws.
    let limited = token("lim", json!({"rooms": ["a"]}));
    let st = SseStream::open(n1.addr, &format!("/sse?rooms=a,b&token={limited}"), &[])
        .await
        .status;
    assert_eq!(st, 403);
    let st = SseStream::open(n1.addr, "/sse?rooms=a", &[]).await.status;
    assert_eq!(st, 401);
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_heartbeat_comments_and_drain_ends_streams() {
    let node = standalone(&["--heartbeat", "1", "--drain-spread-ms", "100"]).await;
    let mut s = sse(&node, "hb", "rooms=r", &[]).await;
    let mut saw_hb = false;
    // ":ok" opens the stream; ": hb" comments follow every second.
    for _ in 0..3 {
        let block = s.next_block().await.expect("a block");
        if block == ": hb" {
            saw_hb = true;
            break;
        }
    }
    assert!(saw_hb, "a heartbeat comment arrived");
    let mut ws = connect(&node, "w", Encoding::Json).await;
    ws.join("r").await;
    node.shutdown.cancel();
    assert!(s.ended().await, "the drain ends the SSE stream");
    assert_eq!(ws.closed().await, Closed::Code(1001));
    let res = tokio::time::timeout(WAIT, node.handle)
        .await
        .expect("node stops after the drain");
    assert!(res.expect("join").is_ok());
}

// ---------------------------------------------------------------------------------
// docs/openapi.json
// ---------------------------------------------------------------------------------

fn openapi() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    let text = std::fs::read_to_string(path).expect("docs/openapi.json exists");
    serde_json::from_str(&text).expect("docs/openapi.json is JSON")
}

/// (METHOD, path template) of every documented operation.
fn documented(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "post", "put", "patch", "delete", "head", "options"].contains(&&**method) {
                out.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

fn matches_template(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(a, b)| (a.starts_with('{') && a.ends_with('}')) || a == b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_routes() {
    let doc = openapi();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "an OpenAPI 3 document"
    );
    assert!(
        doc["components"]["securitySchemes"]
            .as_object()
            .is_some_and(|s| s.values().any(|v| v["scheme"] == "bearer")),
        "bearer auth is documented"
    );
    let ops = documented(&doc);
    let node = standalone(&[]).await;
    // Every documented operation exists: with a valid key it answers something other
    // than 404/405 (a bad body is fine: 400 still proves the route).
    for (method, template) in &ops {
        let path = template.replace("{room}", "some-room");
        let (st, v) = api(&node, method, &path, "{}").await;
        assert!(
            st != 404 && st != 405 && st != 0,
            "{method} {template} is documented but the node answers {st}: {v}"
        );
        // Every status the node gives is documented for the operation (or a default).
        let responses = &doc["paths"][template][method.to_lowercase()]["responses"];
        assert!(
            responses.get(st.to_string()).is_some() || responses.get("default").is_some(),
            "{method} {template}: status {st} is not documented"
        );
    }
    // Every route the node serves under /api (and /client/commands) is documented:
    // probe every method on every path the source names, and a few plausible others.
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api.rs"))
        .expect("src/api.rs");
    let mut paths: Vec<String> = src
        .split('"')
        .filter(|s| (s.starts_with("/api/") || s.starts_with("/client/")) && !s.contains(' '))
        .map(|s| {
            if s.ends_with('/') {
                format!("{s}some-room/presence")
            } else {
                s.to_string()
            }
        })
        .collect();
    paths.extend(
        [
            "/api/rooms/some-room/history",
            "/api/rooms/some-room",
            "/api/rooms",
            "/api/batch",
            "/api/info",
            "/api/users/u",
        ]
        .map(String::from),
    );
    paths.sort();
    paths.dedup();
    for path in &paths {
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let (st, _) = api(&node, method, path, "{}").await;
            if st == 404 || st == 405 {
                continue;
            }
            assert!(
                ops.iter()
                    .any(|(m, t)| m == method && matches_template(t, path)),
                "{method} {path} answers {st} but is not in docs/openapi.json"
            );
        }
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resuming_while_another_node_publishes_has_no_gap_and_no_duplicate() {
    let redis = RedisServer::start();
    let nodes = cluster(&redis, 2, COMMON, &[]).await;
    let total = 300u64;
    let mut p = connect(&nodes[0], "pub", Encoding::Json).await;
    let publisher = tokio::spawn(async move {
        for i in 1..=total {
            p.send(json!({"type": "publish", "room": "busy", "event": "e", "data": i}))
                .await;
        }
        p // kept: dropping a socket with unread input would reset it
    });
    let addr = nodes[1].addr;
    let mut readers = Vec::new();
    for k in 0..6u64 {
        readers.push(tokio::spawn(async move {
            // Each resumes from a different point (some maybe ahead of what exists yet:
            // those start live from the room's current offset).
            let since = k * 20;
            let path = format!(
                "/sse?rooms=busy&since=busy:{since}&token={}",
                token(&format!("r{k}"), json!({}))
            );
            let mut s = SseStream::open(addr, &path, &[]).await;
            assert_eq!(s.status, 200);
            let mut offsets = Vec::new();
            while offsets.last().copied().unwrap_or(0) < total {
                let (_, seen) = sse_messages(&mut s, 1).await.remove(0);
                offsets.push(seen.0);
            }
            let first = offsets[0];
            assert!(
                first <= since + 1 || since == 0,
                "reader {k} starts at {first}"
            );
            assert_eq!(
                offsets,
                (first..=total).collect::<Vec<_>>(),
                "reader {k}: contiguous from where it resumed, each once"
            );
        }));
    }
    for r in readers {
        r.await.expect("reader");
    }
    let _p = publisher.await.expect("publisher");
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_slow_consumer_and_connection_limit() {
    let node = standalone(&["--outbound-queue", "8", "--max-connections", "2"]).await;
    let mut slow = sse(&node, "slow", "rooms=flood", &[]).await;
    let mut ws = connect(&node, "w", Encoding::Json).await;
    // The node is full (one SSE stream, one WebSocket): another stream gets 503.
    let path = format!("/sse?rooms=flood&token={}", token("x", json!({})));
    assert_eq!(SseStream::open(node.addr, &path, &[]).await.status, 503);
    ws.join("flood").await;
    let payload = "z".repeat(32 * 1024);
    // ~48 MiB for a reader that never reads: more than socket buffers hold, so its
    // queue overflows and the node ends its stream.
    for i in 1..=1500u64 {
        ws.publish_acked("flood", json!(payload), &i.to_string())
            .await;
    }
    assert!(slow.ended().await, "the slow SSE stream was ended");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_stream_lives_no_longer_than_its_token_and_checks_origins() {
    let node = standalone(&[
        "--jwt-leeway",
        "0",
        "--allowed-origins",
        "https://app.example",
    ])
    .await;
    let now = jsonwebtoken::get_current_timestamp();
    let short = token("brief", json!({"exp": now + 2}));
    let mut s = SseStream::open(node.addr, &format!("/sse?rooms=r&token={short}"), &[]).await;
    assert_eq!(s.status, 200);
    assert!(s.ended().await, "the stream ends when the token expires");
    let t = token("u", json!({}));
    // The token may also come in the Authorization header.
    let bearer = format!("Bearer {t}");
    let ok = SseStream::open(
        node.addr,
        "/sse?rooms=r",
        &[
            ("authorization", bearer.as_str()),
            ("origin", "https://app.example"),
        ],
    )
    .await;
    assert_eq!(ok.status, 200);
    for origin in ["https://app.example.evil", "http://app.example"] {
        let st = SseStream::open(
            node.addr,
            &format!("/sse?rooms=r&token={t}"),
            &[("origin", origin)],
        )
        .await
        .status;
        assert_eq!(st, 403, "{origin}");
    }
    node.stop().await;
}

/// What a browser's EventSource does on a stream of two rooms: it resends the last id it
/// saw. Every event keeps `id: <room>:<offset>`; after it the node sends an id-only block
/// `id: a:1,b:1` (the position in every room), which sets the last event id without
/// dispatching an event, so the resume covers every room of the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_last_event_id_resumes_every_room_of_the_stream() {
    let node = standalone(&[]).await;
    let publish = |room: &'static str| published(&node, room, json!(room));
    let mut s = sse(&node, "u", "rooms=a,b", &[]).await;
    publish("a").await;
    publish("b").await;
    let seen = sse_messages(&mut s, 2).await;
    assert_eq!(sse_ids(&seen), ["a:1", "b:1"]);
    let last = s.last_event_id.clone().expect("a last event id");
    assert_eq!(
        last, "a:1,b:1",
        "the id-only block after the last event names every room"
    );
    drop(s);
    publish("a").await;
    publish("b").await;
    let mut r = sse(&node, "u", "rooms=a,b", &[("last-event-id", &last)]).await;
    let missed = sse_messages(&mut r, 2).await;
    assert_eq!(sse_ids(&missed), ["a:2", "b:2"]);
    node.stop().await;
}

/// SSE ids carry no epoch: after a room's history is lost (expired, or Redis restarted
/// without persistence) and started again, `Last-Event-ID: a:3` points past the new
/// history's end; the node then replays what the history holds instead of nothing.
/// (A new history that already grew past the old offset cannot be told apart: see
/// docs/protocol.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resume_across_a_lost_history_skips_nothing() {
    let node = standalone(&["--history-ttl", "1"]).await;
    let publish = |data: i64| {
        let node = &node;
        async move {
            let v = published(node, "a", json!(data)).await;
            v["epoch"].as_str().expect("epoch").to_string()
        }
    };
    let mut s = sse(&node, "u", "rooms=a", &[]).await;
    let mut old = String::new();
    for i in 1..=3 {
        old = publish(i).await;
    }
    assert_eq!(
        sse_ids(&sse_messages(&mut s, 3).await),
        ["a:1", "a:2", "a:3"]
    );
    drop(s);
    // The room's history expires; the next publishes start a new epoch at offset 1.
    eventually("the history expired", || {
        let node = &node;
        async move {
            let (_, v) = api(node, "GET", "/api/rooms/a/history", "").await;
            (v["offset"] == json!(0)).then_some(())
        }
    })
    .await;
    let new = publish(10).await;
    publish(11).await;
    assert_ne!(old, new);
    let mut r = sse(&node, "u", "rooms=a", &[("last-event-id", "a:3")]).await;
    let got = sse_messages(&mut r, 2).await;
    assert_eq!(
        got.iter().map(|(_, s)| s.2.clone()).collect::<Vec<_>>(),
        vec![json!(10), json!(11)]
    );
    node.stop().await;
}
