//! Rooms joined at connect (server-side subscriptions): the token's `join` claim and the
//! personal room (`--personal-room`) are joined without a client `join`, answered with
//! `joined` after `welcome`, behave like a client join (messages, presence, history) and
//! recover on reconnect from `?since=room:offset:epoch` or a repeated `join` with `since`.

mod support;

use roomcast_protocol::{Encoding, ErrorCode, ServerMessage};
use serde_json::{json, Value};
use support::{
    err_code, is_message, publication, token, Backend, Client, Mode, SseStream, TestNode,
};

async fn api_publish(node: &TestNode, room: &str, data: Value) -> u64 {
    let (st, v) = support::api_publish_with(node, "k", room, data).await;
    assert_eq!(st, 200, "{v}");
    v["offset"].as_u64().expect("offset")
}

/// The `joined` fields: (room, offset, epoch, recovered, data of the messages).
fn joined(m: &ServerMessage) -> (String, u64, String, bool, Vec<Value>) {
    match m {
        ServerMessage::Joined {
            room,
            offset,
            epoch,
            recovered,
            messages,
            ..
        } => (
            room.to_string(),
            *offset,
            epoch.clone(),
            *recovered,
            messages.iter().map(|p| p.data.clone()).collect(),
        ),
        other => panic!("expected joined, got {other:?}"),
    }
}

#[tokio::test]
async fn a_join_claim_joins_at_connect_and_recovers_on_reconnect() {
    let node = TestNode::jwt(&["--api-keys", "k"]).await;
    // `news` and `sports` are not in the `rooms` patterns: the token chose them.
    let t = token(
        "alice",
        json!({"join": ["news", "sports"], "rooms": ["chat:*"]}),
    );
    let url = format!("{}?token={t}", node.ws_url());
    let (mut alice, _) = Client::welcomed(&url, Encoding::Json).await;
    let (room, offset, epoch, _, msgs) = joined(&alice.recv().await);
    assert_eq!((room.as_str(), offset, msgs.len()), ("news", 0, 0));
    assert_eq!(joined(&alice.recv().await).0, "sports");

    // Messages flow without a client join, and presence counts the connection.
    assert_eq!(api_publish(&node, "news", json!(1)).await, 1);
    let m = alice.recv_match(is_message).await;
    assert_eq!(publication(&m).data, json!(1));
    let (mut bob, _) = Client::welcomed(
        &format!("{}?token={}", node.ws_url(), token("bob", json!({}))),
        Encoding::Json,
    )
    .await;
    let p = bob.presence("news", "p").await;
    match p {
        ServerMessage::Presence { members, .. } => {
            assert!(
                members.iter().any(|m| m.user.as_str() == "alice"),
                "{members:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    // Joined rooms are not publish rights: `rooms` still decides publishing.
    let r = alice
        .request(
            json!({"type": "publish", "room": "news", "event": "e", "data": 0}),
            "x",
        )
        .await;
    assert_eq!(err_code(&r), ErrorCode::Forbidden, "{r:?}");
    // A client `join` of a room it is in is idempotent (and allowed, though not in `rooms`).
    let (_, o, _, _, _) = joined(
        &alice
            .request(json!({"type": "join", "room": "news"}), "j")
            .await,
    );
    assert_eq!(o, 1);
    drop(alice);

    // Missed while away: recovered from ?since= at connect.
    api_publish(&node, "news", json!(2)).await;
    api_publish(&node, "news", json!(3)).await;
    let (mut back, _) = Client::welcomed(
        &format!("{url}&since=news:1:{epoch},unknown:4:x"),
        Encoding::Json,
    )
    .await;
    let (room, offset, _, recovered, msgs) = joined(&back.recv().await);
    assert_eq!(room, "news");
    assert!(recovered);
    assert_eq!(offset, 3);
    assert_eq!(msgs, vec![json!(2), json!(3)]);
    let (room, _, _, _, msgs) = joined(&back.recv().await);
    assert_eq!((room.as_str(), msgs.len()), ("sports", 0));
    // Live again after the recovery.
    api_publish(&node, "news", json!(4)).await;
    let m = back.recv_match(is_message).await;
    assert_eq!(publication(&m).data, json!(4));
    drop(back);

    // Or: connect plainly and re-send `join` with `since`.
    api_publish(&node, "news", json!(5)).await;
    let (mut again, _) = Client::welcomed(&url, Encoding::Json).await;
    let _ = again.recv().await;
    let _ = again.recv().await;
    let r = again
        .request(
            json!({"type": "join", "room": "news", "since": {"offset": 4, "epoch": epoch}}),
            "r",
        )
        .await;
    let (_, offset, _, recovered, msgs) = joined(&r);
    assert!(recovered);
    assert_eq!((offset, msgs), (5, vec![json!(5)]));
    node.stop().await;
}

#[tokio::test]
async fn a_bad_join_claim_is_an_invalid_token_and_sse_joins_the_claim_too() {
    let node = TestNode::jwt(&["--api-keys", "k"]).await;
    let t = token("alice", json!({"join": ["no spaces allowed"]}));
    let mut c = Client::connect_with(&format!("{}?token={t}", node.ws_url()), Encoding::Json, &[])
        .await
        .expect("upgrade");
    assert_eq!(c.closed().await, support::Closed::Code(4002));

    // SSE: the claim's rooms are streamed without rooms=.
    let t = token("alice", json!({"join": ["news"]}));
    let mut sse = SseStream::open(node.addr, &format!("/sse?token={t}"), &[]).await;
    assert_eq!(sse.status, 200);
    api_publish(&node, "news", json!("hi")).await;
    let ev = sse.next_event().await.expect("an event");
    assert_eq!(ev.json()["data"], "hi");
    node.stop().await;
}

#[tokio::test]
async fn the_personal_room_reaches_a_user_across_two_nodes_with_history() {
    let backend = Backend::new(Mode::Redis);
    let flags = [
        "--jwt-secret",
        support::SECRET,
        "--api-keys",
        "k",
        "--personal-room",
        "user:{user}",
        "--default-room-policy",
        "deny",
    ];
    let a = backend.node("a", &flags).await;
    let b = backend.node("b", &flags).await;
    let t = token("alice", json!({}));
    let (mut alice, _) =
        Client::welcomed(&format!("{}?token={t}", b.ws_url()), Encoding::Json).await;
    let (room, _, epoch, _, _) = joined(&alice.recv().await);
    assert_eq!(room, "user:alice");

    // The backend publishes through the other node; alice receives it.
    let o = api_publish(&a, "user:alice", json!({"n": 1})).await;
    let m = alice.recv_match(is_message).await;
    assert_eq!(publication(&m).data, json!({"n": 1}));
    assert_eq!(publication(&m).offset, Some(o));
    // Another user cannot join it (deny policy, no pattern).
    let (mut eve, _) = Client::welcomed(
        &format!("{}?token={}", a.ws_url(), token("eve", json!({}))),
        Encoding::Json,
    )
    .await;
    let _ = eve.recv().await;
    let r = eve.join_reply("user:alice", "j").await;
    assert_eq!(err_code(&r), ErrorCode::Forbidden, "{r:?}");
    drop(alice);

    // Away, a message arrives; on reconnect (to the other node) it is recovered.
    api_publish(&b, "user:alice", json!({"n": 2})).await;
    let (mut back, _) = Client::welcomed(
        &format!("{}?token={t}&since=user:alice:{o}:{epoch}", a.ws_url()),
        Encoding::Json,
    )
    .await;
    let (room, _, _, recovered, msgs) = joined(&back.recv().await);
    assert_eq!(room, "user:alice");
    assert!(recovered);
    assert_eq!(msgs, vec![json!({"n": 2})]);
    a.stop().await;
    b.stop().await;
}
