//! Input read from Redis is not trusted more than a client frame (docs/protocol.md section 6,
//! issue 13): envelopes and control messages written straight to the channels with a raw
//! PUBLISH, as any process that can reach Redis could, are validated; what is malformed,
//! forged or out of range is counted and dropped, never reported as a loss (which closes
//! every member with 1013) and never turned into a close code a client cannot receive.

mod support;

use roomcast_protocol::{BusMessage, Envelope, EventName};
use roomcast_redis_bridge::{Bus, BusEvent};
use serde_json::json;
use std::sync::atomic::Ordering;
use support::*;

/// A room message envelope as an emitter (or an attacker) would write it.
fn forged(room_name: &str, offset: Option<u64>, epoch: Option<&str>) -> Vec<u8> {
    Envelope::new(
        "emitter",
        BusMessage::Message {
            room: room(room_name),
            event: EventName::new("msg").expect("event"),
            data: json!("forged"),
            from: user("mallory"),
            offset,
            ts: now_ms(),
            epoch: epoch.map(str::to_string),
            skip: None,
        },
    )
    .to_msgpack()
    .expect("encode")
}

/// `PUBLISH channel payload`, raw, as redis-cli would send it.
async fn raw_publish(server: &RedisServer, channel: &str, payload: &[u8]) {
    let mut c = server.conn().await;
    let _: i64 = redis_query!(&mut c, "PUBLISH", channel, payload);
}

/// The next room messages up to and including `last`, failing on a gap report or on
/// anything forged.
async fn messages_through(events: &mut Events, last: u64) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        let off = events
            .until(|e| match e {
                BusEvent::Gap { room } => panic!("a loss was reported in {room}"),
                BusEvent::Disconnect { user, code } => {
                    panic!("a disconnect was delivered: {user} {code}")
                }
                BusEvent::Message { publication, .. } => {
                    assert_ne!(
                        publication.data,
                        json!("forged"),
                        "a forged message was delivered"
                    );
                    Some(publication.offset.unwrap_or(0))
                }
                _ => None,
            })
            .await;
        got.push(off);
        if off == last {
            return got;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_offsets_are_dropped_counted_and_report_no_loss() {
    let server = RedisServer::start();
    let mut a = node(&server, config("a")).await;
    let b = node(&server, config("b")).await;
    let r = room("r");
    a.bus.watch_room(&r);
    let mut epoch = String::new();
    for i in 1..=3 {
        epoch = publish(&*b.bus, "r", json!(i)).await.epoch;
    }
    assert_eq!(messages_through(&mut a.events, 3).await, vec![1, 2, 3]);

    // ahead of what the room's stream holds, in its epoch: the finding of issue 13
    raw_publish(&server, "rc:room:r", &forged("r", Some(1000), Some(&epoch))).await;
    raw_publish(&server, "rc:room:r", &forged("r", Some(5), Some(&epoch))).await;
    // an epoch the room does not have
    raw_publish(
        &server,
        "rc:room:r",
        &forged("r", Some(2), Some("f0f0f0f0f0f0")),
    )
    .await;
    raw_publish(
        &server,
        "rc:room:r",
        &forged("r", Some(1), Some("f0f0f0f0f0f0")),
    )
    .await;
    let forged_count = 4;
    // malformed ones: an offset without an epoch, another room's message on this
    // channel, an empty node name, a payload over the size bound, garbage
    raw_publish(&server, "rc:room:r", &forged("r", Some(4), None)).await;
    raw_publish(&server, "rc:room:r", &forged("s", None, None)).await;
    let mut no_node = Envelope::from_msgpack(&forged("r", None, None)).expect("decode");
    no_node.node = String::new();
    raw_publish(&server, "rc:room:r", &no_node.to_msgpack().expect("encode")).await;
    raw_publish(&server, "rc:room:r", &vec![0x90; Envelope::MAX_BYTES + 1]).await;
    raw_publish(&server, "rc:room:r", b"\x01garbage").await;
    let malformed = 5;

    // real messages still flow, in order, with nothing repaired or lost
    for i in 4..=5 {
        publish(&*b.bus, "r", json!(i)).await;
    }
    assert_eq!(messages_through(&mut a.events, 5).await, vec![4, 5]);
    let stats = a.bus.stats();
    assert_eq!(stats.forged_offsets.load(Ordering::Relaxed), forged_count);
    assert_eq!(
        stats.bad_envelopes.load(Ordering::Relaxed),
        forged_count + malformed
    );
    assert_eq!(stats.gaps_lost.load(Ordering::Relaxed), 0);
    assert_eq!(stats.gap_repairs.load(Ordering::Relaxed), 0);
    a.bus.close().await;
    b.bus.close().await;
}

/// The first message a node sees in a room sets the room's baseline: a forged one must
/// not, or the real messages after it would look like a new epoch or a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_first_message_sets_no_baseline() {
    let server = RedisServer::start();
    let mut a = node(&server, config("a")).await;
    for (name, offset) in [("q1", 1), ("q2", 7)] {
        let q = room(name);
        a.bus.watch_room(&q);
        let channel = format!("rc:room:{name}");
        raw_publish(
            &server,
            &channel,
            &forged(name, Some(offset), Some("0123456789ab")),
        )
        .await;
        for i in 1..=2 {
            publish(&*a.bus, name, json!(i)).await;
        }
        assert_eq!(
            messages_through(&mut a.events, 2).await,
            vec![1, 2],
            "{name}"
        );
    }
    assert_eq!(a.bus.stats().forged_offsets.load(Ordering::Relaxed), 2);
    assert_eq!(a.bus.stats().gaps_lost.load(Ordering::Relaxed), 0);
    a.bus.close().await;
}

/// Forgeries between every real message: the real ones arrive complete and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_messages_keep_their_order_among_forgeries() {
    let server = RedisServer::start();
    let mut a = node(&server, config("a")).await;
    let r = room("r");
    a.bus.watch_room(&r);
    const N: u64 = 50;
    for i in 1..=N {
        let res = publish(&*a.bus, "r", json!(i)).await;
        // always ahead of the stream: offset i + 10 is not written yet
        raw_publish(
            &server,
            "rc:room:r",
            &forged("r", Some(i + 10), Some(&res.epoch)),
        )
        .await;
    }
    // one more real message: once it is delivered, the last forgery has been judged
    publish(&*a.bus, "r", json!("end")).await;
    let got = messages_through(&mut a.events, N + 1).await;
    assert_eq!(got, (1..=N + 1).collect::<Vec<_>>());
    assert_eq!(a.bus.stats().forged_offsets.load(Ordering::Relaxed), N);
    assert_eq!(a.bus.stats().gaps_lost.load(Ordering::Relaxed), 0);
    a.bus.close().await;
}

fn disconnect(code: Option<u16>) -> Vec<u8> {
    // written by hand: `code` may be absent (it defaults to 4002)
    let mut msg = serde_json::Map::new();
    msg.insert("type".into(), json!("disconnect"));
    msg.insert("user".into(), json!("bob"));
    if let Some(c) = code {
        msg.insert("code".into(), json!(c));
    }
    rmp_serde::to_vec_named(&json!({"v": 1, "node": "backend", "msg": msg})).expect("encode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_with_a_code_no_client_could_receive_is_dropped() {
    let server = RedisServer::start();
    let mut a = node(&server, config("a")).await;
    let bad = [
        0u16,
        1,
        999,
        1002,
        1004,
        1005,
        1006,
        1009,
        1015,
        2999,
        5000,
        u16::MAX,
    ];
    for code in bad {
        raw_publish(&server, "rc:control", &disconnect(Some(code))).await;
    }
    // a disconnect on a room channel is not one either
    raw_publish(&server, "rc:room:r", &disconnect(Some(4002))).await;
    // valid: the default (4002), a private code, a drain-like 1001
    raw_publish(&server, "rc:control", &disconnect(None)).await;
    raw_publish(&server, "rc:control", &disconnect(Some(4100))).await;
    raw_publish(&server, "rc:control", &disconnect(Some(1001))).await;
    let mut codes = Vec::new();
    while codes.len() < 3 {
        let code = a
            .events
            .until(|e| match e {
                BusEvent::Disconnect { user, code } => {
                    assert_eq!(user.as_str(), "bob");
                    Some(*code)
                }
                _ => None,
            })
            .await;
        codes.push(code);
    }
    assert_eq!(
        codes,
        vec![4002, 4100, 1001],
        "only the valid ones, in order"
    );
    let stats = a.bus.stats();
    assert_eq!(stats.bad_controls.load(Ordering::Relaxed), bad.len() as u64);
    assert_eq!(
        stats.bad_envelopes.load(Ordering::Relaxed),
        bad.len() as u64 + 1
    );
    a.bus.close().await;
}

/// What a flood of forged offsets costs a node: each is checked against the room's
/// stream (one Redis round trip in the subscriber). By hand:
/// `cargo test -p roomcast-redis-bridge --test bus_input -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn forged_offset_flood_rate() {
    let server = RedisServer::start();
    let mut a = node(&server, config("a")).await;
    let r = room("r");
    a.bus.watch_room(&r);
    let epoch = publish(&*a.bus, "r", json!(0)).await.epoch;
    assert_eq!(messages_through(&mut a.events, 1).await, vec![1]);
    const N: u64 = 5000;
    let mut pipe = redis::pipe();
    for i in 0..N {
        pipe.cmd("PUBLISH")
            .arg("rc:room:r")
            .arg(forged("r", Some(100 + i), Some(&epoch)))
            .ignore();
    }
    let mut c = server.conn().await;
    let started = std::time::Instant::now();
    let _: () = pipe.query_async(&mut c).await.expect("pipeline");
    publish(&*a.bus, "r", json!("end")).await;
    assert_eq!(messages_through(&mut a.events, 2).await, vec![2]);
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(a.bus.stats().forged_offsets.load(Ordering::Relaxed), N);
    eprintln!(
        "{N} forged offsets judged and dropped in {secs:.2}s: {:.0}/s",
        N as f64 / secs
    );
    a.bus.close().await;
}
