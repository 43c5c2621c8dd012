//! The admin page (`--admin-key`, docs/operations.md): absent without the flag, its API
//! refused without the key or with a wrong one, and on two nodes sharing a real
//! redis-server: both nodes listed, a room's presence and history, the busiest rooms,
//! a disconnect that reaches a user on the other node, and a draining node leaving the
//! list.

mod support;

use roomcast_protocol::close;
use serde_json::{json, Value};
use std::net::SocketAddr;
use support::*;

const KEY: &str = "admin-key-0123456789abcdef";

/// GET (or POST with a body) an admin endpoint with `key`: status and JSON body.
async fn admin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, Value) {
    json_request(addr, method, path, key, body).await
}

/// `POST /admin/api/disconnect` with `key` and `body`: status and JSON body.
async fn disconnect(addr: SocketAddr, key: Option<&str>, body: &str) -> (u16, Value) {
    admin(addr, "POST", "/admin/api/disconnect", key, body).await
}

async fn get(addr: SocketAddr, path: &str) -> Value {
    let (status, v) = admin(addr, "GET", path, Some(KEY), "").await;
    assert_eq!(status, 200, "GET {path}: {v}");
    v
}

fn node_ids(v: &Value) -> Vec<String> {
    v["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["node_id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

async fn cluster_node(redis: &RedisServer, id: &str, interval: &str) -> TestNode {
    TestNode::jwt(&[
        "--node-id",
        id,
        "--redis-url",
        &redis.url(),
        "--admin-key",
        &format!("another-admin-key-0000,{KEY}"),
        "--node-stats-interval",
        interval,
    ])
    .await
}

async fn connect(node: &TestNode, user: &str) -> Client {
    connect_as(node, user).await
}

#[tokio::test]
async fn absent_when_disabled() {
    let node = TestNode::open().await;
    for path in [
        "/admin",
        "/admin/",
        "/admin/admin.js",
        "/admin/api/nodes",
        "/admin/api/rooms",
    ] {
        let (status, _) = admin(node.addr, "GET", path, Some(KEY), "").await;
        assert_eq!(status, 404, "{path} without --admin-key");
    }
    // Nothing tells it apart from a path that never existed.
    let (_, unknown) = admin(node.addr, "GET", "/nothing-here", None, "").await;
    let (_, admin_off) = admin(node.addr, "GET", "/admin/api/nodes", None, "").await;
    assert_eq!(admin_off["error"]["code"], "not_found", "{admin_off}");
    assert_eq!(admin_off["error"]["code"], unknown["error"]["code"]);
    let (status, _) = disconnect(node.addr, Some(KEY), r#"{"user":"a"}"#).await;
    assert_eq!(status, 404);
    node.stop().await;
}

#[tokio::test]
async fn refuses_without_the_key_or_with_a_wrong_one() {
    let node = TestNode::start(&["--auth", "none", "--admin-key", KEY]).await;
    let near = format!("{KEY}x");
    let short = &KEY[..KEY.len() - 1];
    for path in [
        "/admin/api/nodes",
        "/admin/api/rooms",
        "/admin/api/room?name=lobby",
    ] {
        for key in [
            None,
            Some("wrong"),
            Some(near.as_str()),
            Some(short),
            Some(""),
        ] {
            let (status, v) = admin(node.addr, "GET", path, key, "").await;
            assert_eq!(status, 401, "{path} with {key:?}: {v}");
            assert_eq!(v["error"]["code"], "unauthorized");
        }
    }
    // The key is not taken from the URL.
    let (status, _) = admin(
        node.addr,
        "GET",
        &format!("/admin/api/nodes?key={KEY}"),
        None,
        "",
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = disconnect(node.addr, Some("wrong"), r#"{"user":"a"}"#).await;
    assert_eq!(status, 401);
    // Basic instead of Bearer is not accepted either.
    let (status, _) = http(
        node.addr,
        "GET",
        "/admin/api/nodes",
        &[("Authorization", &format!("Basic {KEY}"))],
        "",
    )
    .await;
    assert_eq!(status, 401);

    // The page itself is static and asks for the key; it may load only its own files.
    let (status, text) = http(node.addr, "GET", "/admin/", &[], "").await;
    assert_eq!(status, 200);
    assert!(
        body_of(&text).contains("Admin key"),
        "the page asks for the key"
    );
    let head = text.to_ascii_lowercase();
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(head.contains("cache-control: no-store"), "{head}");
    let (status, text) = http(node.addr, "GET", "/admin", &[], "").await;
    assert_eq!(status, 308);
    assert!(text.to_ascii_lowercase().contains("location: /admin/"));
    let (status, _) = http(node.addr, "GET", "/admin/admin.js", &[], "").await;
    assert_eq!(status, 200);

    // With the key: a standalone node lists itself.
    let v = get(node.addr, "/admin/api/nodes").await;
    assert_eq!(node_ids(&v).len(), 1, "{v}");
    assert_eq!(v["nodes"][0]["node_id"], v["self"]);
    assert_eq!(v["nodes"][0]["bus_up"], true);
    assert_eq!(v["nodes"][0]["version"], env!("CARGO_PKG_VERSION"));

    // Bad input is a clear 4xx, not a failure.
    for (method, path, body, want) in [
        ("GET", "/admin/api/room?name=bad%20room", "", 400),
        ("GET", "/admin/api/room", "", 400),
        ("POST", "/admin/api/disconnect", "not json", 400),
        ("POST", "/admin/api/disconnect", r#"{"user": 5}"#, 400),
        ("GET", "/admin/api/disconnect", "", 405),
        ("GET", "/admin/api/nope", "", 404),
    ] {
        let (status, v) = admin(node.addr, method, path, Some(KEY), body).await;
        assert_eq!(status, want, "{method} {path} {body}: {v}");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_rooms_presence_history_and_disconnect() {
    let redis = RedisServer::start();
    let a = cluster_node(&redis, "node-a", "1").await;
    let b = cluster_node(&redis, "node-b", "1").await;

    // Each node's admin API lists both.
    for n in [&a, &b] {
        eventually("both nodes listed", || async {
            let v = get(n.addr, "/admin/api/nodes").await;
            (node_ids(&v) == ["node-a", "node-b"]).then_some(())
        })
        .await;
    }

    let mut alice = connect(&a, "alice").await;
    let mut bob = connect(&b, "bob").await;
    alice.join("lobby").await;
    bob.join("lobby").await;
    alice
        .request(
            json!({"type": "publish", "room": "lobby", "event": "chat", "data": {"text": "hello admin"}}),
            "p1",
        )
        .await;

    // A room's presence and last messages, read on the other node.
    let v = get(b.addr, "/admin/api/room?name=lobby").await;
    let users: Vec<&str> = v["members"]
        .as_array()
        .map(|m| m.iter().filter_map(|x| x["user"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(users, ["alice", "bob"], "{v}");
    assert_eq!(v["count"]["users"], 2);
    assert_eq!(v["offset"], 1);
    assert_eq!(v["messages"][0]["data"]["text"], "hello admin", "{v}");
    assert_eq!(v["messages"][0]["from"], "alice");

    // The busiest rooms add up the nodes' heartbeats: one member on each node.
    eventually("lobby among the busiest rooms", || async {
        let v = get(a.addr, "/admin/api/rooms").await;
        let top = &v["by_members"][0];
        (top["room"] == "lobby" && top["members"] == 2 && top["nodes"] == 2).then_some(())
    })
    .await;
    // Each node reports its own connections.
    let v = get(a.addr, "/admin/api/nodes").await;
    assert_eq!(v["nodes"][0]["connections"], 1, "{v}");
    assert_eq!(v["nodes"][1]["connections"], 1, "{v}");

    // Messages/s: a publisher on node-b keeps a room busy (bounded: at most 400 messages)
    // until both nodes' heartbeats show it.
    let mut carl = connect(&b, "carl").await;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let publisher = tokio::spawn(async move {
        for i in 0..400 {
            let publish = json!({"type": "publish", "room": "busy", "event": "tick", "data": i});
            carl.request(publish, &format!("t{i}")).await;
            tokio::select! {
                _ = &mut stopped => break,
                _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            }
        }
    });
    eventually("the busy room's messages/s on both nodes", || async {
        let rooms = get(a.addr, "/admin/api/rooms").await;
        let nodes = get(a.addr, "/admin/api/nodes").await;
        let busy = rooms["by_messages"]
            .as_array()?
            .iter()
            .any(|r| r["room"] == "busy" && r["messages_per_sec"].as_f64() > Some(0.0));
        let both = nodes["nodes"]
            .as_array()?
            .iter()
            .all(|n| n["messages_per_sec"].as_f64() > Some(0.0));
        (busy && both).then_some(())
    })
    .await;
    let _ = stop.send(());
    publisher.await.expect("publisher");

    // Disconnect alice (on node-a) from node-b's admin API.
    let (status, v) = disconnect(b.addr, Some(KEY), r#"{"user":"alice"}"#).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(alice.closed().await, Closed::Code(close::INVALID_TOKEN));
    // Bob, on the node that was asked, stays and hears that alice left.
    let left = bob
        .recv_match(|m| matches!(m, roomcast_protocol::ServerMessage::MemberLeft { .. }))
        .await;
    assert!(
        matches!(&left, roomcast_protocol::ServerMessage::MemberLeft { user, .. } if user.as_str() == "alice"),
        "{left:?}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_removes_itself_from_the_list() {
    let redis = RedisServer::start();
    // Heartbeats live 30 minutes here: only the node's own removal can take it off the
    // list within the test's wait.
    let a = cluster_node(&redis, "node-a", "600").await;
    let b = cluster_node(&redis, "node-b", "600").await;
    eventually("both nodes listed", || async {
        let v = get(a.addr, "/admin/api/nodes").await;
        (node_ids(&v) == ["node-a", "node-b"]).then_some(())
    })
    .await;
    b.stop().await;
    let v = get(a.addr, "/admin/api/nodes").await;
    assert_eq!(
        node_ids(&v),
        ["node-a"],
        "node-b removed its entry on drain: {v}"
    );
    a.stop().await;
    assert_eq!(
        redis.command(&["HLEN", "roomcast:nodes"]).as_deref(),
        Some(":0\r\n"),
        "the last node left nothing behind"
    );
}
