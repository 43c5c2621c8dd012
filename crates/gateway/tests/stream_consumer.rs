//! Issue 16, part 4: publishing from a data pipeline (`--consume-stream`). A real
//! redis-server per test; entries are added with XADD and read by real WebSocket clients.

mod support;

use roomcast_protocol::ServerMessage;
use serde_json::json;
use std::collections::HashSet;
use std::io::{Read, Write};
use support::{
    is_message, publication, Backend, ChildNode, Client, Mode, RedisServer, TestNode, WAIT,
};

/// Adds an entry with these fields to `stream`.
fn xadd(redis: &RedisServer, stream: &str, fields: &[(&str, &str)]) {
    let mut args = vec!["XADD", stream, "*"];
    for (k, v) in fields {
        args.push(k);
        args.push(v);
    }
    let r = redis.command(&args).expect("XADD answered");
    assert!(r.starts_with('$'), "XADD: {r}");
}

/// Adds many entries over one connection, pipelined: `(id, room, data)` each.
fn xadd_many(port: u16, stream: &str, entries: &[(String, String, String)]) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut req = Vec::new();
    for (id, room, data) in entries {
        let args: [&str; 11] = [
            "XADD", stream, "*", "room", room, "event", "tick", "data", data, "id", id,
        ];
        req.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            req.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
    }
    s.write_all(&req).expect("write");
    // Each reply is a bulk string: two CRLFs.
    let (mut seen, mut buf) = (0usize, [0u8; 65536]);
    while seen < entries.len() * 2 {
        let n = s.read(&mut buf).expect("read replies");
        assert!(n > 0, "redis closed");
        // An error reply starts a line with '-' (IDs have one inside a line only).
        assert!(
            !buf[..n].starts_with(b"-") && !buf[..n].windows(3).any(|w| w == b"\r\n-"),
            "an XADD failed: {}",
            String::from_utf8_lossy(&buf[..n])
        );
        seen += buf[..n].windows(2).filter(|w| w == b"\r\n").count();
    }
}

fn record(m: &ServerMessage, seen: &mut HashSet<i64>) {
    let n = data_n(m);
    assert!(seen.insert(n), "entry {n} delivered twice");
}

/// A consumer's count in an XPENDING summary reply (`... $<len>\r\n<name>\r\n$<len>\r\n<count>`).
fn pending_of(reply: &str, consumer: &str) -> u64 {
    let Some(at) = reply.find(&format!("\r\n{consumer}\r\n")) else {
        return 0;
    };
    reply[at..]
        .split("\r\n")
        .nth(3)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn data_n(m: &ServerMessage) -> i64 {
    publication(m).data["n"].as_i64().expect("n")
}

#[tokio::test]
async fn entries_reach_clients_in_order() {
    let backend = Backend::new(Mode::Redis);
    let redis = backend.redis.as_ref().expect("redis");
    let node = backend
        .node(
            "n1",
            &["--auth", "none", "--consume-stream", "feed:a,feed:b"],
        )
        .await;
    let mut c = Client::connect(&node.ws_url()).await;
    c.join("city:paris").await;
    c.join("city:lyon").await;
    for n in 0..50 {
        let data = json!({"n": n}).to_string();
        xadd(
            redis,
            "feed:a",
            &[("room", "city:paris"), ("event", "tick"), ("data", &data)],
        );
    }
    // A second stream, into another room.
    xadd(
        redis,
        "feed:b",
        &[
            ("room", "city:lyon"),
            ("event", "t"),
            ("data", r#"{"n":-1}"#),
        ],
    );
    let mut got = Vec::new();
    while got.len() < 50 {
        let m = c
            .recv_match(
                |m| matches!(m, ServerMessage::Message(p) if p.room.as_str() == "city:paris"),
            )
            .await;
        let p = publication(&m);
        assert_eq!(p.event.as_str(), "tick");
        assert_eq!(p.from.as_str(), "server");
        got.push(data_n(&m));
    }
    assert_eq!(got, (0..50).collect::<Vec<_>>(), "in stream order");
    let m = c
        .recv_match(|m| matches!(m, ServerMessage::Message(p) if p.room.as_str() == "city:lyon"))
        .await;
    assert_eq!(data_n(&m), -1);
    // Everything acknowledged: nothing left pending in the group.
    support::eventually("all entries acknowledged", || async {
        let r = redis.command(&["XPENDING", "feed:a", "roomcast"])?;
        r.starts_with("*4\r\n:0\r\n").then_some(())
    })
    .await;
    node.stop().await;
}

#[tokio::test]
async fn a_malformed_entry_does_not_block_the_ones_after_it() {
    let backend = Backend::new(Mode::Redis);
    let redis = backend.redis.as_ref().expect("redis");
    let node = backend
        .node("n1", &["--auth", "none", "--consume-stream", "feed"])
        .await;
    let mut c = Client::connect(&node.ws_url()).await;
    c.join("r").await;
    xadd(redis, "feed", &[("event", "tick"), ("data", r#"{"n":0}"#)]);
    xadd(
        redis,
        "feed",
        &[("room", "r"), ("event", "tick"), ("data", "{not json")],
    );
    xadd(redis, "feed", &[("room", "no spaces"), ("event", "tick")]);
    xadd(
        redis,
        "feed",
        &[("room", "r"), ("event", "tick"), ("data", r#"{"n":3}"#)],
    );
    let m = c.recv_match(is_message).await;
    assert_eq!(data_n(&m), 3, "the good entry after three bad ones");
    let dead = redis.command(&["XLEN", "feed:dead"]).expect("XLEN");
    assert_eq!(dead, ":3\r\n", "the bad entries are dead-lettered");
    let first = redis
        .command(&["XRANGE", "feed:dead", "-", "+", "COUNT", "1"])
        .expect("XRANGE");
    assert!(first.contains("missing field"), "{first}");
    let metrics = support::http(node.addr, "GET", "/metrics", &[], "").await.1;
    assert!(
        metrics.contains(r#"roomcast_stream_entries_total{outcome="malformed",stream="feed"} 3"#),
        "{metrics}"
    );
    node.stop().await;
}

#[tokio::test]
async fn consume_stream_needs_redis() {
    let e =
        roomcast_gateway::config::Config::from_args(["--auth", "none", "--consume-stream", "s"])
            .expect_err("no redis");
    assert!(e.to_string().contains("--redis-url"), "{e}");
}

/// Two nodes consume one stream; one is killed with SIGKILL while entries flow. Every
/// entry reaches a client on the survivor exactly once, and the dead node's pending
/// entries are claimed by the survivor.
#[tokio::test]
async fn killing_a_node_mid_stream_loses_and_doubles_nothing() {
    const TOTAL: usize = 3000;
    let redis = RedisServer::start();
    let url = redis.url();
    let common = [
        "--auth",
        "none",
        "--redis-url",
        &url,
        "--consume-stream",
        "feed",
        "--consume-claim-idle-ms",
        "1000",
    ];
    let survivor = TestNode::start(&[common.as_slice(), &["--node-id", "survivor"]].concat()).await;
    let mut doomed = ChildNode::start(&[common.as_slice(), &["--node-id", "doomed"]].concat());
    let mut c = Client::connect(&survivor.ws_url()).await;
    c.join("r").await;
    // Both nodes are consumers before the entries come (each has read from the group).
    support::eventually("both nodes in the consumer group", || async {
        let r = redis.command(&["XINFO", "CONSUMERS", "feed", "roomcast"])?;
        (r.contains("survivor") && r.contains("doomed")).then_some(())
    })
    .await;
    let entries: Vec<(String, String, String)> = (0..TOTAL)
        .map(|i| {
            (
                format!("e{i}"),
                "r".to_string(),
                json!({"n": i}).to_string(),
            )
        })
        .collect();
    let producer = {
        let port = redis.port;
        let entries = entries.clone();
        std::thread::spawn(move || {
            for chunk in entries.chunks(250) {
                xadd_many(port, "feed", chunk);
            }
        })
    };
    let mut seen: HashSet<i64> = HashSet::new();
    // Mid-stream: a third of the entries delivered.
    while seen.len() < TOTAL / 3 {
        let m = c.recv_match(is_message).await;
        record(&m, &mut seen);
    }
    doomed.kill9();
    // What the dead node held: claimed by the survivor only after 1 s idle.
    let pending = redis
        .command(&["XPENDING", "feed", "roomcast"])
        .expect("XPENDING");
    let doomed_pending = pending_of(&pending, "doomed");
    producer.join().expect("producer");
    while seen.len() < TOTAL {
        let m = c.recv_match(is_message).await;
        record(&m, &mut seen);
    }
    // A last entry: anything delivered twice would come before it.
    xadd(
        &redis,
        "feed",
        &[("room", "r"), ("event", "end"), ("data", r#"{"n":-1}"#)],
    );
    loop {
        let m = c.recv_match(is_message).await;
        if data_n(&m) == -1 {
            break;
        }
        record(&m, &mut seen);
    }
    assert_eq!(seen.len(), TOTAL, "every entry exactly once");
    assert!(
        doomed_pending > 0,
        "the killed node held pending entries (XPENDING: {pending})"
    );
    let metrics = support::http(survivor.addr, "GET", "/metrics", &[], "")
        .await
        .1;
    let claimed: u64 = metrics
        .lines()
        .find(|l| {
            l.starts_with(r#"roomcast_stream_entries_total{outcome="claimed",stream="feed"}"#)
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("claimed metric");
    assert!(
        claimed >= doomed_pending,
        "the survivor claimed the dead node's {doomed_pending} pending entries (claimed {claimed})"
    );
    eprintln!("killed node held {doomed_pending} pending entries; the survivor claimed {claimed}");
    let left = redis
        .command(&["XPENDING", "feed", "roomcast"])
        .expect("XPENDING");
    assert!(
        left.starts_with("*4\r\n:0\r\n"),
        "nothing left pending: {left}"
    );
    survivor.stop().await;
}
