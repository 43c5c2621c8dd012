//! How connections end (docs/protocol.md section 4.3, RFC 6455 section 7): the closing
//! handshake in both directions, frames that break the framing rules, what a connection
//! may send before it authenticates, rate-limit abuse however it is paced, slow
//! consumers found by time and by queue, and a token refresh that narrows the rooms.

mod support;

use futures_util::{SinkExt, StreamExt};
use roomcast_protocol::{Encoding, ErrorCode, ServerMessage};
use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_close_is_answered_with_its_code() {
    let node = TestNode::open().await;
    for code in [1000u16, 4000, 3001] {
        let (mut c, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
        c.ws.close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: "bye".into(),
        }))
        .await
        .expect("send close");
        assert_eq!(
            c.closed().await,
            Closed::Code(code),
            "the node echoes {code}"
        );
    }
    node.stop().await;
}

/// A frame with these header bits and payload, sent as is (the client masks it).
fn raw(opcode: OpCode, fin: bool, rsv1: bool, payload: Vec<u8>) -> Message {
    let header = FrameHeader {
        is_final: fin,
        rsv1,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: None,
    };
    Message::Frame(Frame::from_payload(header, payload.into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_break_rfc_6455_close_with_1002_and_bad_utf8_with_1007() {
    let node = TestNode::open().await;
    let text = OpCode::Data(Data::Text);
    let cases: Vec<(&str, Vec<Message>, u16)> = vec![
        (
            "reserved bit",
            vec![raw(text, true, true, b"{}".to_vec())],
            1002,
        ),
        (
            "reserved data opcode",
            vec![raw(OpCode::Data(Data::Reserved(3)), true, false, vec![])],
            1002,
        ),
        (
            "reserved control opcode",
            vec![raw(
                OpCode::Control(Control::Reserved(11)),
                true,
                false,
                vec![],
            )],
            1002,
        ),
        (
            "fragmented ping",
            vec![raw(OpCode::Control(Control::Ping), false, false, vec![1])],
            1002,
        ),
        (
            "oversized ping",
            vec![raw(
                OpCode::Control(Control::Ping),
                true,
                false,
                vec![0; 126],
            )],
            1002,
        ),
        (
            "continuation without a start",
            vec![raw(
                OpCode::Data(Data::Continue),
                true,
                false,
                b"x".to_vec(),
            )],
            1002,
        ),
        (
            "invalid close code",
            vec![raw(
                OpCode::Control(Control::Close),
                true,
                false,
                999u16.to_be_bytes().to_vec(),
            )],
            1002,
        ),
        (
            "invalid UTF-8 text",
            vec![raw(text, true, false, vec![0x7b, 0xff, 0xfe])],
            1007,
        ),
        (
            "invalid UTF-8 across fragments",
            vec![
                raw(text, false, false, vec![0x7b, 0xce]),
                raw(OpCode::Data(Data::Continue), true, false, vec![0x28]),
            ],
            1007,
        ),
    ];
    for (what, frames, want) in cases {
        let (mut c, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
        for f in frames {
            c.send_raw(f).await;
        }
        assert_eq!(c.closed().await, Closed::Code(want), "{what}");
    }
    // The node is unharmed.
    let (mut c, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    assert!(matches!(
        c.request(json!({"type": "ping"}), "p").await,
        ServerMessage::Pong { .. }
    ));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_authentication_anything_but_a_valid_auth_closes_with_4003() {
    let node = TestNode::jwt(&["--max-message-size", "1024"]).await;
    let cases: Vec<(&str, Message)> = vec![
        ("binary frame on JSON", Message::Binary(vec![0x80].into())),
        (
            "oversized auth",
            Message::Text(
                format!("{{\"type\":\"auth\",\"token\":\"{}\"}}", "x".repeat(2000)).into(),
            ),
        ),
        ("garbage", Message::Text("not json".into())),
        (
            "another type",
            Message::Text(r#"{"type":"ping","id":"1"}"#.into()),
        ),
    ];
    for (what, m) in cases {
        let mut c = Client::connect(&node.ws_url()).await;
        c.send_raw(m).await;
        assert_eq!(c.closed().await, Closed::Code(4003), "{what}");
    }
    // And an auth message still works.
    let mut c = Client::connect(&node.ws_url()).await;
    let t = token("ann", json!({}));
    let r = c.request(json!({"type": "auth", "token": t}), "a").await;
    assert!(matches!(r, ServerMessage::Welcome { .. }), "{r:?}");
    node.stop().await;
}

/// A `ping` request with id `p<i>`, as a raw text frame.
fn ping(i: usize) -> Message {
    Message::Text(
        json!({"type": "ping", "id": format!("p{i}")})
            .to_string()
            .into(),
    )
}

/// Pongs and `rate_limited` refusals seen so far.
#[derive(Default)]
struct Tally {
    pongs: usize,
    limited: usize,
}

impl Tally {
    /// Counts a text frame that must be a pong or a refusal.
    fn count(&mut self, text: &str) {
        match Encoding::Json
            .decode_server(text.as_bytes())
            .expect("valid")
        {
            ServerMessage::Pong { .. } => self.pongs += 1,
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                ..
            } => self.limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_the_node_starts_keeps_the_frames_before_it_while_the_client_still_sends() {
    // 10 requests fit the burst, the next 20 are refused, the 20th refusal closes (4029);
    // the client sends 230 without reading, so most arrive after the node's Close.
    let node = rate_limited_node("0.001", "10", "20").await;
    let (mut c, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    for i in 0..230 {
        c.ws.feed(ping(i)).await.expect("queue");
    }
    c.ws.flush().await.expect("send");
    let mut t = Tally::default();
    let end = loop {
        match tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Text(text))) => t.count(&text),
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!(
                "the connection ended without a Close frame: {other:?} after {} pongs, {} refusals",
                t.pongs, t.limited
            ),
        }
    };
    assert_eq!((t.pongs, t.limited, end), (10, 19, Some(4029)));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_abuse_closes_however_it_is_paced() {
    // 10 requests a second; the client sends 40 a second, so admitted requests come
    // between the refusals (which once reset the count and kept the connection open).
    let node = rate_limited_node("10", "1", "5").await;
    let (mut c, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(25));
    let mut t = Tally::default();
    let mut end = None;
    'outer: for i in 0..400 {
        tick.tick().await;
        if c.ws.send(ping(i)).await.is_err() {
            break;
        }
        while let Ok(Some(f)) =
            tokio::time::timeout(std::time::Duration::from_millis(1), c.ws.next()).await
        {
            match f {
                Ok(Message::Text(text)) => t.count(&text),
                Ok(Message::Close(f)) => {
                    end = f.map(|f| u16::from(f.code));
                    break 'outer;
                }
                Ok(_) => {}
                Err(_) => break 'outer,
            }
        }
    }
    if end.is_none() {
        end = match c.closed().await {
            Closed::Code(code) => Some(code),
            Closed::NoFrame => None,
        };
    }
    assert_eq!(
        end,
        Some(4029),
        "after {} pongs and {} refusals",
        t.pongs,
        t.limited
    );
    assert!(t.pongs >= 1, "admitted requests came between the refusals");
    node.stop().await;
}

/// The `members` of a presence reply, as user names.
async fn members(c: &mut Client, room: &str) -> Vec<String> {
    match c.presence(room, "who").await {
        ServerMessage::Presence { members, .. } => {
            members.into_iter().map(|m| m.user.to_string()).collect()
        }
        other => panic!("expected presence, got {other:?}"),
    }
}

/// Publishes 8 KiB messages into `room` until `stalled` is gone from its presence, in
/// bounded rounds; returns whether it went.
async fn flood_until_gone(
    publisher: &mut Client,
    watcher: &mut Client,
    room: &str,
    stalled: &str,
) -> bool {
    // 8 KiB messages, up to 1000 rounds (400 MB): the kernel compacts a stalled
    // receiver's queue now and then, which lets a few more bytes in and restarts the
    // write timeout; the flood goes on until the client is gone, not for a set time.
    let data = "x".repeat(8192);
    for round in 0..1000 {
        for i in 0..50 {
            publisher
                .send(json!({"type": "publish", "room": room, "event": "e", "data": data, "volatile": false, "id": format!("m{round}-{i}")}))
                .await;
        }
        // Wait for this round's acks, so the node has taken them.
        publisher
            .recv_match(|m| matches!(m, ServerMessage::Ack { id, .. } if *id == roomcast_protocol::ReqId::Str(format!("m{round}-49"))))
            .await;
        publisher.backlog.clear();
        if !members(watcher, room).await.contains(&stalled.to_string()) {
            return true;
        }
    }
    false
}

/// Reads a client's socket to its end; whether the node closed it.
async fn reads_to_the_end(c: &mut Client) -> bool {
    loop {
        match tokio::time::timeout(WAIT, c.ws.next()).await {
            Err(_) => return false,
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Two connected clients of `node` (past their welcome): `pub` and `watch`.
async fn publisher_and_watcher(node: &TestNode) -> (Client, Client) {
    let url = |u: &str| format!("{}?token={}", node.ws_url(), token(u, json!({})));
    let (mut publisher, mut watcher) = (
        Client::connect(&url("pub")).await,
        Client::connect(&url("watch")).await,
    );
    publisher.recv().await;
    watcher.recv().await;
    (publisher, watcher)
}

/// A node with a tiny send buffer and these queue and time limits; a client of it joins
/// room `big` and stops reading, a publisher floods the room until the client is gone from
/// presence, then the client reads what it got: the node must have closed it. Returns the
/// node (for its metrics).
async fn stall_one_client(write_timeout: &str, queue: &str) -> TestNode {
    let limits = [
        "--write-timeout",
        write_timeout,
        "--send-buffer",
        "4096",
        "--outbound-queue",
        queue,
    ];
    let node = TestNode::start(&[JWT_UNLIMITED, &limits].concat()).await;
    let url = |u: &str| format!("{}?token={}", node.ws_url(), token(u, json!({})));
    let mut stalled = Client::connect(&url("stalled")).await;
    stalled.recv().await;
    stalled.join("big").await;
    let (mut publisher, mut watcher) = publisher_and_watcher(&node).await;
    assert!(
        flood_until_gone(&mut publisher, &mut watcher, "big", "stalled").await,
        "the stalled client left presence"
    );
    assert!(
        reads_to_the_end(&mut stalled).await,
        "and its connection was closed"
    );
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_by_the_write_timeout() {
    // The queue is large enough never to overflow here: only time can find the client.
    let node = stall_one_client("1", "100000").await;
    let (_, metrics) = http(node.addr, "GET", "/metrics", &[], "").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("roomcast_slow_consumer_closes_total") && !l.ends_with(" 0")),
        "counted"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_ends_a_session_blocked_on_a_full_socket() {
    // The write timeout is an hour: only the queue overflow's kick (4008) can end the
    // session, and it must, although the session waits in a write that cannot finish.
    stall_one_client("3600", "8").await.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_token_with_fewer_rooms_leaves_the_others() {
    let node = TestNode::jwt(&[]).await;
    let t = token("ann", json!({"rooms": ["a", "b"]}));
    let mut c = Client::connect(&format!("{}?token={t}", node.ws_url())).await;
    c.recv().await;
    c.join("a").await;
    c.join("b").await;
    let narrower = token("ann", json!({"rooms": ["a"]}));
    let r = c
        .request(json!({"type": "auth", "token": narrower}), "refresh")
        .await;
    assert!(matches!(r, ServerMessage::AuthOk { .. }), "{r:?}");
    let left = c
        .recv_match(|m| matches!(m, ServerMessage::Left { id: None, .. }))
        .await;
    assert!(
        matches!(&left, ServerMessage::Left { room, .. } if room.as_str() == "b"),
        "{left:?}"
    );
    let mut watcher = Client::connect(&format!(
        "{}?token={}",
        node.ws_url(),
        token("watch", json!({}))
    ))
    .await;
    watcher.recv().await;
    assert!(
        members(&mut watcher, "b").await.is_empty(),
        "gone from b's presence"
    );
    assert_eq!(
        members(&mut watcher, "a").await,
        vec!["ann".to_string()],
        "still in a"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sse_stream_is_closed_by_the_write_timeout() {
    // The SSE body is written by hyper: a reader that stops reading blocked that write
    // with no bound; the watched socket ends it.
    let limits = [
        "--write-timeout",
        "1",
        "--send-buffer",
        "4096",
        "--outbound-queue",
        "100000",
    ];
    let node = TestNode::start(&[JWT_UNLIMITED, &limits].concat()).await;
    let t = token("sse", json!({}));
    let auth = format!("Bearer {t}");
    let mut sse = SseStream::open(
        node.addr,
        "/sse?rooms=big",
        &[("Authorization", auth.as_str())],
    )
    .await;
    assert_eq!(sse.status, 200);
    let (mut publisher, mut watcher) = publisher_and_watcher(&node).await;
    assert!(
        members(&mut watcher, "big")
            .await
            .contains(&"sse".to_string()),
        "the SSE reader is in presence"
    );
    assert!(
        flood_until_gone(&mut publisher, &mut watcher, "big", "sse").await,
        "the stalled SSE reader left presence"
    );
    assert!(sse.ended().await, "and its stream was closed");
    node.stop().await;
}
