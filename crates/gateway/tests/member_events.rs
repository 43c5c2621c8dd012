//! Bounded member events (docs/protocol.md, `member_joined` / `member_left` /
//! `member_count`; PROTOCOL.md 1.1 section 4): a `join` with `"member_events": false`
//! receives none, and a room over `--member-events-max` users sends a throttled
//! `member_count` instead of per-user events. Real nodes bridged by a real redis-server,
//! real WebSocket clients.

mod support;

use roomcast_protocol::{Encoding, ServerMessage};
use serde_json::json;
use support::*;

async fn node(redis: &RedisServer, id: &str, extra: &[&str]) -> TestNode {
    let url = redis.url();
    let mut args: Vec<&str> = JWT_UNLIMITED.to_vec();
    args.extend_from_slice(&["--redis-url", &url, "--node-id", id]);
    args.extend_from_slice(extra);
    TestNode::start(&args).await
}

/// Joins `room` asking for no member events.
async fn join_quiet(c: &mut Client, room: &str) {
    let r = c
        .request(
            json!({"type": "join", "room": room, "member_events": false}),
            "join-quiet",
        )
        .await;
    assert!(matches!(r, ServerMessage::Joined { .. }), "{r:?}");
}

fn is_member_event(m: &ServerMessage) -> bool {
    matches!(
        m,
        ServerMessage::MemberJoined { .. }
            | ServerMessage::MemberLeft { .. }
            | ServerMessage::MemberCount { .. }
    )
}

/// Publishes a marker from `c` (echoed to it too) and waits until every one of `readers`
/// has it: the room's member events and messages share one ordered channel, so whatever
/// member event came before the marker has been received by then.
async fn marker(from: &mut Client, readers: &mut [&mut Client], room: &str, text: &str) {
    let mark =
        json!({"type": "publish", "room": room, "event": "mark", "data": text, "echo": true});
    from.acked(mark, text).await;
    for c in readers.iter_mut() {
        c.recv_match(|m| matches!(m, ServerMessage::Message(p) if p.data == json!(text)))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_without_member_events_receives_none_while_the_others_do() {
    let redis = RedisServer::start();
    let a = node(&redis, "n1", &[]).await;
    let b = node(&redis, "n2", &[]).await;
    let room = "me-quiet";
    // Listeners on both nodes, one of each kind per node.
    let mut quiet_a = connect_as(&a, "quiet-a").await;
    join_quiet(&mut quiet_a, room).await;
    let mut quiet_b = connect_as(&b, "quiet-b").await;
    join_quiet(&mut quiet_b, room).await;
    let mut loud_a = connect_as(&a, "loud-a").await;
    loud_a.join(room).await;
    let mut loud_b = connect_as(&b, "loud-b").await;
    loud_b.join(room).await;

    // A newcomer on each node comes and goes.
    for (n, who) in [(&a, "gina"), (&b, "hugo")] {
        let mut c = connect_as(n, who).await;
        c.join(room).await;
        let r = c
            .request(json!({"type": "leave", "room": room}), "leave")
            .await;
        assert!(matches!(r, ServerMessage::Left { .. }), "{r:?}");
    }
    for loud in [&mut loud_a, &mut loud_b] {
        for who in ["gina", "hugo"] {
            let j = loud
                .recv_match(|m| matches!(m, ServerMessage::MemberJoined { user, .. } if user.as_str() == who))
                .await;
            assert!(matches!(j, ServerMessage::MemberJoined { .. }));
            loud.recv_match(
                |m| matches!(m, ServerMessage::MemberLeft { user, .. } if user.as_str() == who),
            )
            .await;
        }
    }
    marker(
        &mut loud_a,
        &mut [&mut quiet_a, &mut quiet_b],
        room,
        "after the newcomers",
    )
    .await;
    for (name, q) in [("quiet-a", &quiet_a), ("quiet-b", &quiet_b)] {
        let events: Vec<_> = q.backlog.iter().filter(|m| is_member_event(m)).collect();
        assert!(
            events.is_empty(),
            "{name} asked for no member events and got {events:?}"
        );
    }
    // The quiet ones are still members: the others hear of them leaving.
    drop(quiet_b);
    loud_a
        .recv_match(
            |m| matches!(m, ServerMessage::MemberLeft { user, .. } if user.as_str() == "quiet-b"),
        )
        .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_over_the_max_sends_a_throttled_member_count_instead() {
    const MAX: u64 = 3;
    const JOINERS: usize = 40;
    let redis = RedisServer::start();
    let max = MAX.to_string();
    let a = node(&redis, "n1", &["--member-events-max", &max]).await;
    let b = node(&redis, "n2", &["--member-events-max", &max]).await;
    let room = "me-big";
    let mut watch_a = connect_as(&a, "watch-a").await;
    watch_a.join(room).await;
    let mut watch_b = connect_as(&b, "watch-b").await;
    watch_b.join(room).await;
    let mut quiet = connect_as(&a, "quiet").await;
    join_quiet(&mut quiet, room).await;

    // A storm: every joiner at once, half on each node.
    let joins = (0..JOINERS).map(|i| {
        let url = [a.ws_url(), b.ws_url()][i % 2].clone();
        tokio::spawn(async move {
            let url = format!("{url}?token={}", token(&format!("j{i:02}"), json!({})));
            let mut c = Client::welcomed(&url, Encoding::Json).await.0;
            c.join(room).await;
            c
        })
    });
    let mut joiners = Vec::new();
    for j in joins {
        joiners.push(j.await.expect("joiner task"));
    }
    let users = JOINERS as u64 + 3;
    // The count settles on the truth, cluster-wide, on both nodes.
    for w in [&mut watch_a, &mut watch_b] {
        w.recv_match(|m| {
            matches!(m, ServerMessage::MemberCount { users: u, connections: c, .. } if *u == users && *c == users)
        })
        .await;
    }
    // Some go: the count follows.
    for c in joiners.drain(..10) {
        drop(c);
    }
    for w in [&mut watch_a, &mut watch_b] {
        w.recv_match(|m| {
            matches!(m, ServerMessage::MemberCount { users: u, connections: c, .. } if *u == users - 10 && *c == users - 10)
        })
        .await;
    }
    marker(
        &mut watch_a,
        &mut [&mut watch_b, &mut quiet],
        room,
        "after the storm",
    )
    .await;
    for (name, w) in [("watch-a", &watch_a), ("watch-b", &watch_b)] {
        let per_user = w
            .backlog
            .iter()
            .filter(|m| {
                matches!(
                    m,
                    ServerMessage::MemberJoined { .. } | ServerMessage::MemberLeft { .. }
                )
            })
            .count();
        // Per-user events only while the room had at most MAX users: the watchers and
        // the quiet one make three, so at most MAX of the joiners were ever announced.
        assert!(
            per_user as u64 <= MAX,
            "{name}: {per_user} per-user events in a room over {MAX} users"
        );
        // Counts go out at most once a second per room while it changes: far fewer
        // than the 50 changes (the two received above were taken out of the backlog).
        let counts = w
            .backlog
            .iter()
            .filter(|m| matches!(m, ServerMessage::MemberCount { .. }))
            .count()
            + 2;
        assert!(
            counts * 4 <= JOINERS + 10,
            "{name}: {counts} member_count messages for {} changes",
            JOINERS + 10
        );
        assert!(
            w.backlog.iter().all(|m| match m {
                ServerMessage::MemberCount {
                    room: r,
                    users: u,
                    connections: c,
                } => r.as_str() == room && *u > MAX && u == c,
                _ => true,
            }),
            "{name}: member_count only for a room over the max: {:?}",
            w.backlog
        );
    }
    let events: Vec<_> = quiet
        .backlog
        .iter()
        .filter(|m| is_member_event(m))
        .collect();
    assert!(
        events.is_empty(),
        "quiet asked for no member events and got {events:?}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_at_the_max_keeps_per_user_events() {
    let redis = RedisServer::start();
    let a = node(&redis, "n1", &["--member-events-max", "3"]).await;
    let room = "me-small";
    let mut watch = connect_as(&a, "watch").await;
    watch.join(room).await;
    let mut two = connect_as(&a, "two").await;
    two.join(room).await;
    // A second connection of the same user is the same member: still two users.
    let mut two_again = connect_as(&a, "two").await;
    two_again.join(room).await;
    let mut three = connect_as(&a, "three").await;
    three.join(room).await;
    for who in ["two", "three"] {
        watch
            .recv_match(
                |m| matches!(m, ServerMessage::MemberJoined { user, .. } if user.as_str() == who),
            )
            .await;
    }
    marker(&mut three, &mut [&mut watch], room, "at the max").await;
    assert!(
        !watch
            .backlog
            .iter()
            .any(|m| matches!(m, ServerMessage::MemberCount { .. })),
        "no member_count at the max: {:?}",
        watch.backlog
    );
    a.stop().await;
}
