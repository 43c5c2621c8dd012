//! Redis loses a room's history (a restart without persistence, a flush): issue 13, fault
//! 2. docs/protocol.md section 3: a join whose `since` names the lost epoch gets the new
//! epoch's history from its first offset, so that nothing acknowledged after the loss is
//! missed; and no member of the old epoch may be handed the new epoch's offsets: the loss
//! is signalled (`Gap`, which closes local members with 1013) before any of them.

mod support;

use roomcast_redis_bridge::{Bus, BusEvent, HistoryQuery};
use serde_json::json;
use std::sync::atomic::Ordering;
use support::*;

fn since(offset: u64, epoch: &str) -> HistoryQuery {
    query_since(offset, epoch, 0)
}

/// Redis restarts empty; messages are acknowledged in the new epoch; a client of the old
/// epoch re-joins with its `since` and gets every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_since_in_a_lost_epoch_gets_the_new_epoch_from_its_start() {
    let mut server = RedisServer::start();
    let mut a = node(&server, config("a")).await;
    let r = room("r");
    let mut old = String::new();
    for i in 1..=3 {
        old = publish(&*a.bus, "r", json!(i)).await.epoch;
    }
    server.restart();
    a.events
        .until(|e| matches!(e, BusEvent::State { up: true }).then_some(()))
        .await;
    let mut acked = Vec::new();
    let mut new = String::new();
    for i in 1..=4 {
        let res = a
            .bus
            .publish(req("r", json!(format!("new {i}"))))
            .await
            .expect("publish after the restart");
        new = res.epoch;
        acked.push(res.offset.unwrap_or(0));
    }
    assert_ne!(new, old);
    assert_eq!(acked, vec![1, 2, 3, 4]);
    // the old session's position: offset 3 of the lost epoch
    let h = a.bus.history(&r, since(3, &old)).await.expect("history");
    assert!(!h.recovered, "the old epoch is gone");
    assert_eq!(h.epoch, new);
    assert_eq!(h.offset, 4);
    let got: Vec<_> = h.messages.iter().map(|p| p.offset.unwrap_or(0)).collect();
    assert_eq!(got, acked, "every message acknowledged after the loss");
    assert_eq!(h.messages[0].data, json!("new 1"));
    // a position in the current epoch still recovers as before
    let h = a.bus.history(&r, since(2, &new)).await.expect("history");
    assert!(h.recovered);
    assert_eq!(h.messages.len(), 2);
    a.bus.close().await;
}

/// The history is flushed while both nodes stay subscribed: the watching node reports the
/// loss before it delivers anything of the new epoch, then delivers the new epoch
/// complete and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_is_signalled_before_any_message_of_the_new_epoch() {
    let server = RedisServer::start();
    let mut a = node(&server, config("a")).await;
    let b = node(&server, config("b")).await;
    let r = room("r");
    a.bus.watch_room(&r);
    let mut old = String::new();
    for i in 1..=3 {
        old = publish(&*b.bus, "r", json!(i)).await.epoch;
    }
    assert_eq!(a.events.messages(3).await.len(), 3);
    let mut raw = server.conn().await;
    let _: String = redis_query!(&mut raw, "FLUSHALL");
    for i in 1..=3 {
        let res = publish(&*b.bus, "r", json!(format!("new {i}"))).await;
        assert_ne!(res.epoch, old);
    }
    a.events
        .until(|e| match e {
            BusEvent::Gap { room } if room.as_str() == "r" => Some(()),
            BusEvent::Message { publication, .. } => {
                panic!("{publication:?} delivered before the loss was signalled")
            }
            _ => None,
        })
        .await;
    let got: Vec<_> = a
        .events
        .messages(3)
        .await
        .iter()
        .map(|p| (p.offset.unwrap_or(0), p.data.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, json!("new 1")),
            (2, json!("new 2")),
            (3, json!("new 3"))
        ]
    );
    assert_eq!(a.bus.stats().gaps_lost.load(Ordering::Relaxed), 1);
    assert_eq!(a.bus.stats().forged_offsets.load(Ordering::Relaxed), 0);
    a.bus.close().await;
    b.bus.close().await;
}

/// Members joined a room nobody has published in yet (the join created its epoch); Redis
/// restarts empty. Nothing was delivered, but the members hold the lost epoch: the next
/// messages would be another epoch's offsets to them, so the loss is signalled too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_lost_before_any_message_is_signalled_too() {
    let mut server = RedisServer::start();
    let mut a = node(&server, config("a")).await;
    let r = room("quiet");
    // what a join does: watch, then read the history (which creates the epoch)
    a.bus.watch_room(&r);
    let joined = a
        .bus
        .history(
            &r,
            HistoryQuery {
                since: None,
                limit: 0,
            },
        )
        .await
        .expect("history");
    assert_eq!(joined.offset, 0);
    server.restart();
    let mut gap = false;
    a.events
        .until(|e| match e {
            BusEvent::Gap { room } if room.as_str() == "quiet" => {
                gap = true;
                None
            }
            BusEvent::State { up: true } => Some(()),
            _ => None,
        })
        .await;
    assert!(
        gap,
        "the lost epoch is signalled before the bus says it is up"
    );
    let after = publish(&*a.bus, "quiet", json!("after")).await;
    assert_ne!(after.epoch, joined.epoch);
    a.bus.close().await;
}
