//! Redis loses its data (issue 13, fault 2), seen by real WebSocket clients of a node on a
//! real redis-server. docs/protocol.md section 3: members of the lost epoch are closed with
//! 1013 and never receive a new-epoch offset first; a re-join with the old `since` gets
//! `recovered: false` and every message acknowledged in the new epoch before it.

mod support;

use roomcast_protocol::{Encoding, ServerMessage};
use serde_json::{json, Value};
use support::*;

const KEY: &str = "epoch-loss-key";

async fn start(redis: &RedisServer) -> TestNode {
    api_node(redis, KEY).await
}

/// `POST /api/publish`; the offset acknowledged, or `None` while the bus cannot take it.
async fn api_publish(node: &TestNode, data: &str) -> Option<u64> {
    let (status, v) = api_publish_with(node, KEY, "r", json!(data)).await;
    if status != 200 {
        return None;
    }
    v["offset"].as_u64()
}

async fn client(node: &TestNode, user: &str) -> Client {
    connect_as(node, user).await
}

/// Joins `r` (with `since`, when given); the reply's (epoch, recovered, messages).
async fn join(c: &mut Client, since: Option<(u64, &str)>) -> (String, bool, Vec<(u64, Value)>) {
    let mut req = json!({"type": "join", "room": "r"});
    if let Some((offset, epoch)) = since {
        req["since"] = json!({"offset": offset, "epoch": epoch});
    }
    match c.request(req, "j").await {
        ServerMessage::Joined {
            epoch,
            recovered,
            messages,
            ..
        } => (
            epoch,
            recovered,
            messages
                .into_iter()
                .map(|p| (p.offset.unwrap_or(0), p.data))
                .collect(),
        ),
        other => panic!("join failed: {other:?}"),
    }
}

/// Reads until the close; the close and every room message seen before it.
async fn until_closed(c: &mut Client) -> (Closed, Vec<Value>) {
    let mut seen = Vec::new();
    while let Some(m) = c.backlog.pop_front() {
        if let ServerMessage::Message(p) = m {
            seen.push(p.data);
        }
    }
    loop {
        match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut c.ws))
            .await
            .expect("a frame or the close in time")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                if let Ok(ServerMessage::Message(p)) = Encoding::Json.decode_server(t.as_bytes()) {
                    seen.push(p.data);
                }
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f))) => {
                let code = f
                    .map(|f| Closed::Code(f.code.into()))
                    .unwrap_or(Closed::NoFrame);
                return (code, seen);
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return (Closed::NoFrame, seen),
        }
    }
}

/// How Redis loses the room's history.
#[derive(Clone, Copy)]
enum Loss {
    /// FLUSHALL: the node's subscription stays up and sees the new epoch arrive live.
    Flush,
    /// A restart without persistence: the subscription drops and is re-established.
    Restart,
}

async fn lost_history_is_replayed_from_the_new_epochs_start(loss: Loss) {
    let mut redis = RedisServer::start();
    let node = start(&redis).await;
    let mut a = client(&node, "alice").await;
    let mut b = client(&node, "bob").await;
    let (old_epoch, _, _) = join(&mut a, None).await;
    join(&mut b, None).await;
    for i in 1..=3 {
        assert_eq!(api_publish(&node, &format!("old {i}")).await, Some(i));
    }
    for c in [&mut a, &mut b] {
        for i in 1..=3u64 {
            let m = c.recv_match(is_message).await;
            assert_eq!(publication(&m).offset, Some(i));
        }
    }

    match loss {
        Loss::Flush => {
            assert!(redis
                .command(&["FLUSHALL"])
                .is_some_and(|r| r.contains("OK")));
        }
        Loss::Restart => redis.restart(),
    }
    // messages acknowledged in the new epoch (after a restart, once the node's bus takes
    // them again), before anyone re-joins
    let mut acked = Vec::new();
    for i in 1..=4u64 {
        let data = format!("new {i}");
        let offset = eventually("a publish after the loss is acknowledged", || {
            let (node, data) = (&node, data.clone());
            async move { api_publish(node, &data).await }
        })
        .await;
        acked.push((offset, json!(data)));
    }
    assert_eq!(
        acked.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );

    // the old sessions: closed with 1013, and nothing of the new epoch before it
    for c in [&mut a, &mut b] {
        let (closed, seen) = until_closed(c).await;
        assert_eq!(closed, Closed::Code(1013));
        assert!(
            seen.iter()
                .all(|d| d.as_str().is_some_and(|s| s.starts_with("old"))),
            "an old-epoch session received new-epoch messages: {seen:?}"
        );
    }
    // re-joined with the old position: everything acknowledged since the loss
    for user in ["alice", "bob"] {
        let mut c = client(&node, user).await;
        let (epoch, recovered, messages) = join(&mut c, Some((3, &old_epoch))).await;
        assert_ne!(epoch, old_epoch);
        assert!(!recovered, "the old epoch is gone: not recovered");
        assert_eq!(
            messages, acked,
            "{user} misses nothing acknowledged after the loss"
        );
    }
    let (_, text) = http(node.addr, "GET", "/metrics", &[], "").await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("roomcast_bus_gaps_lost_total ") && !l.ends_with(" 0")),
        "the loss is counted"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_history_is_replayed_from_the_new_epochs_start() {
    lost_history_is_replayed_from_the_new_epochs_start(Loss::Flush).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lost_in_a_redis_restart_is_replayed_from_the_new_epochs_start() {
    lost_history_is_replayed_from_the_new_epochs_start(Loss::Restart).await;
}
