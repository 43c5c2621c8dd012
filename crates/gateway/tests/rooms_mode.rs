//! `--bus-subscribe rooms` (docs/protocol.md section 6) on two nodes sharing a real
//! redis-server: a node receives only what it delivers, follows its members in and out
//! of rooms, and does not thrash Redis when they churn.

mod support;

use roomcast_protocol::{Encoding, ServerMessage};
use serde_json::json;
use support::*;

/// A metric's value on a node (0 when it is absent).
async fn metric(node: &TestNode, name: &str) -> f64 {
    let (_, body) = http(node.addr, "GET", "/metrics", &[], "").await;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Node `a` of `backend`, whose publisher may publish without pause.
async fn publishing_node(backend: &Backend) -> TestNode {
    backend.node("a", OPEN_UNLIMITED).await
}

async fn publish_n(c: &mut Client, room: &str, n: usize) {
    for i in 0..n {
        c.publish_acked(room, json!(i), &format!("{room}-{i}"))
            .await;
    }
}

/// Two nodes on one Redis in `mode`; a room whose members are all on node A gets 20
/// messages; then a member on B proves the cluster still delivers across nodes.
/// Returns what node B received for rooms it has no member in.
async fn bystander(mode: Mode) -> f64 {
    let backend = Backend::new(mode);
    let a = backend.node("a", &["--auth", "none"]).await;
    let b = backend.node("b", &["--auth", "none"]).await;
    // B's bus subscription is in place (in pattern mode, its PSUBSCRIBE) before A
    // publishes: otherwise what B receives would depend on timing.
    eventually("node b is ready", || async {
        (http(b.addr, "GET", "/readyz", &[], "").await.0 == 200).then_some(())
    })
    .await;
    let (mut pa, _) = Client::welcomed(&a.ws_url(), Encoding::Json).await;
    let (mut ra, _) = Client::welcomed(&a.ws_url(), Encoding::Json).await;
    ra.join("solo").await;
    publish_n(&mut pa, "solo", 20).await;
    for _ in 0..20 {
        ra.recv_match(is_message).await;
    }
    // Now a member on B, in another room: B must get A's messages for it.
    let (mut rb, _) = Client::welcomed(&b.ws_url(), Encoding::Json).await;
    rb.join("shared").await;
    publish_n(&mut pa, "shared", 3).await;
    for i in 0..3 {
        let m = rb.recv_match(is_message).await;
        assert_eq!(
            publication(&m).data,
            json!(i),
            "B delivers A's messages in order"
        );
    }
    let unwanted = metric(&b, "roomcast_bus_unwanted_room_messages_total").await;
    a.stop().await;
    b.stop().await;
    unwanted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_receives_only_the_rooms_it_holds() {
    assert_eq!(
        bystander(Mode::RedisRooms).await,
        0.0,
        "rooms mode: B received nothing of room solo"
    );
    assert!(
        bystander(Mode::Redis).await >= 20.0,
        "pattern mode: B received every message of solo"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_costs_no_command_within_the_linger_and_leaves_no_subscription() {
    let backend = Backend::new(Mode::RedisRooms);
    let a = backend
        .node("a", &["--auth", "none", "--bus-linger-ms", "300"])
        .await;
    let (mut c, _) = Client::welcomed(&a.ws_url(), Encoding::Json).await;
    let before = metric(&a, "roomcast_bus_subscribe_commands_total").await;
    for i in 0..20 {
        c.join("churn").await;
        let r = c
            .request(json!({"type": "leave", "room": "churn"}), &format!("l{i}"))
            .await;
        assert!(matches!(r, ServerMessage::Left { .. }), "{r:?}");
    }
    let commands = metric(&a, "roomcast_bus_subscribe_commands_total").await - before;
    assert!(
        commands <= 1.0,
        "20 joins within the linger cost {commands} SUBSCRIBE commands"
    );
    assert_eq!(
        metric(&a, "roomcast_bus_subscribed_rooms").await,
        1.0,
        "the channel lingers"
    );
    // After the linger nothing is left subscribed for the room.
    eventually("the room's channel is given up", || async {
        (metric(&a, "roomcast_bus_subscribed_rooms").await == 0.0).then_some(())
    })
    .await;
    assert!(metric(&a, "roomcast_bus_unsubscribe_commands_total").await >= 1.0);
    // And the connection's user channel goes when the connection does.
    assert_eq!(metric(&a, "roomcast_bus_subscribed_users").await, 1.0);
    drop(c);
    eventually("the user's channel is given up", || async {
        (metric(&a, "roomcast_bus_subscribed_users").await == 0.0).then_some(())
    })
    .await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_racing_publishes_across_nodes_lose_nothing() {
    // A publisher on A publishes without pause while members join on B with `since`
    // of the last message they saw: every join must continue exactly where it was.
    let backend = Backend::new(Mode::RedisRooms);
    let a = publishing_node(&backend).await;
    let b = backend
        .node("b", &["--auth", "none", "--bus-linger-ms", "0"])
        .await;
    let (mut p, _) = Client::welcomed(&a.ws_url(), Encoding::Json).await;
    let total = 300usize;
    let publisher = tokio::spawn(async move {
        publish_n(&mut p, "race", total).await;
    });
    let mut seen: Vec<u64> = Vec::new();
    let mut since: Option<serde_json::Value> = None;
    // Each round: connect on B, join with since, read a few, leave (the channel is given
    // up at once: linger 0), so every join subscribes anew while publishes flow.
    for round in 0..200 {
        let (mut c, _) = Client::welcomed(&b.ws_url(), Encoding::Json).await;
        let mut join = json!({"type": "join", "room": "race"});
        if let Some(s) = &since {
            join["since"] = s.clone();
        }
        let r = c.request(join, &format!("j{round}")).await;
        let ServerMessage::Joined {
            messages,
            epoch,
            offset,
            ..
        } = r
        else {
            panic!("join failed: {r:?}")
        };
        for m in messages {
            seen.push(m.offset.expect("offset"));
        }
        let mut last = seen.last().copied().unwrap_or(offset);
        // A few live messages, if any come.
        for _ in 0..3 {
            if last as usize >= total {
                break;
            }
            let m = c.recv_match(is_message).await;
            let o = publication(&m).offset.expect("offset");
            seen.push(o);
            last = o;
        }
        since = Some(json!({"offset": last, "epoch": epoch}));
        drop(c);
        if last as usize >= total {
            break;
        }
    }
    publisher.await.expect("publisher");
    // The first join (no `since`) starts at the room's offset then; from there on,
    // every offset once and in order, whichever join or live delivery brought it.
    let first = *seen.first().expect("messages were seen");
    let expected: Vec<u64> = (first..=total as u64).collect();
    assert_eq!(seen, expected, "no gap and no repeat across the joins");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_right_after_joined_arrives() {
    // `joined` is sent only once the room's channel is subscribed: a message published
    // the moment it arrives reaches the member (with no later message to reveal a gap).
    let backend = Backend::new(Mode::RedisRooms);
    let a = publishing_node(&backend).await;
    let b = backend.node("b", &["--auth", "none"]).await;
    let (mut p, _) = Client::welcomed(&a.ws_url(), Encoding::Json).await;
    let (mut c, _) = Client::welcomed(&b.ws_url(), Encoding::Json).await;
    for i in 0..100 {
        let room = format!("fresh-{i}");
        c.join(&room).await;
        publish_n(&mut p, &room, 1).await;
        let m = c.recv_match(is_message).await;
        assert_eq!(publication(&m).room.as_str(), room);
    }
    a.stop().await;
    b.stop().await;
}
