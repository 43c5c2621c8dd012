//! What a node does with bad input read from Redis (issue 13; docs/protocol.md section 6),
//! seen by a real WebSocket client: a forged room envelope and disconnects with close
//! codes no client could receive, PUBLISHed raw to the channels, are counted in /metrics
//! and dropped; the client is not closed and real messages go on in order.

mod support;

use roomcast_protocol::{
    BusMessage, Encoding, Envelope, EventName, RoomName, ServerMessage, UserId,
};
use serde_json::json;
use support::*;

const KEY: &str = "bus-input-key";

async fn api_publish(node: &TestNode, data: &str) -> u64 {
    let (status, v) = api_publish_with(node, KEY, "r", json!(data)).await;
    assert_eq!(status, 200, "{v}");
    v["offset"].as_u64().expect("an offset")
}

/// The value of a counter in /metrics.
async fn metric(node: &TestNode, name: &str) -> u64 {
    let (_, text) = http(node.addr, "GET", "/metrics", &[], "").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} is not exported"))
}

fn disconnect(user: &str, code: u16) -> Vec<u8> {
    rmp_serde::to_vec_named(&json!({
        "v": 1,
        "node": "backend",
        "msg": {"type": "disconnect", "user": user, "code": code}
    }))
    .expect("encode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_envelopes_and_bad_close_codes_from_redis_close_nobody() {
    let redis = RedisServer::start();
    let node = api_node(&redis, KEY).await;
    let url = format!("{}?token={}", node.ws_url(), token("alice", json!({})));
    let (mut alice, _) = Client::welcomed(&url, Encoding::Json).await;
    let epoch = match alice.join("r").await {
        ServerMessage::Joined { epoch, .. } => epoch,
        other => panic!("{other:?}"),
    };
    assert_eq!(api_publish(&node, "real 1").await, 1);
    let m = alice.recv_match(is_message).await;
    assert_eq!(publication(&m).offset, Some(1));

    // an emitter envelope with a forged offset, ahead of the room's history, in its epoch
    let forged = Envelope::new(
        "emitter",
        BusMessage::Message {
            room: RoomName::new("r").expect("room"),
            event: EventName::new("e").expect("event"),
            data: json!("forged"),
            from: UserId::new("mallory").expect("user"),
            offset: Some(1000),
            ts: 0,
            epoch: Some(epoch),
            skip: None,
        },
    )
    .to_msgpack()
    .expect("encode");
    let published = redis.command_raw(&[b"PUBLISH", b"roomcast:room:r", &forged]);
    assert_eq!(published.as_deref().map(str::trim), Some(":1"));
    // disconnects with codes no client could receive (1 was sent as close code 1)
    for code in [1u16, 1005] {
        redis
            .command_raw(&[b"PUBLISH", b"roomcast:control", &disconnect("alice", code)])
            .expect("PUBLISH");
    }

    // still open, and the next real message is the next one
    assert_eq!(api_publish(&node, "real 2").await, 2);
    let m = alice.recv_match(is_message).await;
    assert_eq!(
        (publication(&m).offset, publication(&m).data.clone()),
        (Some(2), json!("real 2"))
    );
    assert_eq!(metric(&node, "roomcast_bus_forged_offsets_total").await, 1);
    assert_eq!(metric(&node, "roomcast_bus_bad_controls_total").await, 2);
    assert_eq!(metric(&node, "roomcast_bus_bad_envelopes_total").await, 3);
    assert_eq!(metric(&node, "roomcast_bus_gaps_lost_total").await, 0);

    // a valid disconnect still works
    redis
        .command_raw(&[b"PUBLISH", b"roomcast:control", &disconnect("alice", 4002)])
        .expect("PUBLISH");
    assert_eq!(alice.closed().await, Closed::Code(4002));
    node.stop().await;
}
