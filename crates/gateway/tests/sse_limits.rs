//! `/sse` bounds its work before parsing (issue 13, F4): an over-long query is 414, and
//! a `rooms=` list, `since=` or `Last-Event-ID` naming more than `--max-rooms` entries is
//! 400, decided by counting before any name is validated or matched against the token.

mod support;

use serde_json::json;
use std::net::SocketAddr;
use support::{token, TestNode, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `GET path` with headers: the status and the body (for a stream, what came with its
/// head, which is at least its first `:ok` comment).
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    sock.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let len = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            match len {
                Some(n) if body.len() >= n => return (status, body.to_string()),
                None if body.contains(":ok") => return (status, body.to_string()),
                _ => {}
            }
        }
        let n = tokio::time::timeout(WAIT, sock.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        assert!(
            n > 0,
            "connection closed early: {}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&buf[..n]);
    }
}

/// A token for rooms `ok-*` only.
fn ok_token() -> String {
    token("u1", json!({"rooms": ["ok-*"]}))
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test]
async fn thousands_of_rooms_are_refused_before_any_name_is_looked_at() {
    let node = TestNode::jwt(&[]).await;
    let t = ok_token();
    // 9000 names (a 55 KB query: a request target over 64 KiB is refused by the HTTP parser) the token may not join, then an invalid one: the count decides, so the
    // answer is neither 403 (the first name) nor "invalid room name" (the last).
    let mut list = names("x", 9_000);
    list.push("bad%20room".into());
    let path = format!("/sse?token={t}&rooms={}", list.join(","));
    let (status, body) = get(node.addr, &path, &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (400, "at most 100 rooms per connection\n")
    );

    // The bound itself: 100 names are a stream, 101 are refused.
    let path = format!("/sse?token={t}&rooms={}", names("ok-", 100).join(","));
    let (status, body) = get(node.addr, &path, &[]).await;
    assert_eq!(status, 200, "{body}");
    let path = format!("/sse?token={t}&rooms={}", names("ok-", 101).join(","));
    let (status, body) = get(node.addr, &path, &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (400, "at most 100 rooms per connection\n")
    );
    node.stop().await;
}

#[tokio::test]
async fn too_many_positions_in_since_or_last_event_id_are_refused() {
    let node = TestNode::jwt(&[]).await;
    let t = ok_token();
    let positions = names("ok-", 1000)
        .iter()
        .map(|r| format!("{r}:1"))
        .collect::<Vec<_>>()
        .join(",");
    let path = format!("/sse?token={t}&rooms=ok-1&since={positions}");
    let (status, body) = get(node.addr, &path, &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (400, "since names more than 100 positions\n")
    );

    let path = format!("/sse?token={t}&rooms=ok-1");
    let (status, body) = get(node.addr, &path, &[("Last-Event-ID", &positions)]).await;
    assert_eq!(
        (status, body.as_str()),
        (400, "Last-Event-ID names more than 100 positions\n")
    );
    // An over-long one is refused by its length alone.
    let long = format!("ok-1:{}", "9".repeat(200_000));
    let (status, body) = get(node.addr, &path, &[("Last-Event-ID", &long)]).await;
    assert_eq!(
        (status, body.as_str()),
        (400, "Last-Event-ID is longer than 110592 bytes\n")
    );

    // Within bounds, both still resume.
    let path = format!("/sse?token={t}&rooms=ok-1,ok-2&since=ok-1:0");
    let (status, body) = get(node.addr, &path, &[("Last-Event-ID", "ok-2:0")]).await;
    assert_eq!(status, 200, "{body}");
    node.stop().await;
}

#[tokio::test]
async fn an_over_long_query_is_414_before_anything_is_parsed() {
    // 8 KiB + 1 KiB per room: with --max-rooms 4, 12 KiB.
    let node = TestNode::jwt(&["--max-rooms", "4"]).await;
    let t = ok_token();
    let pad = "a".repeat(13 * 1024);
    let path = format!("/sse?token={t}&rooms=ok-1&pad={pad}");
    let (status, body) = get(node.addr, &path, &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (414, "the query is longer than 12288 bytes\n")
    );
    // Even without a valid token: the length is checked first.
    let path = format!("/sse?token=nope&rooms=ok-1&pad={pad}");
    let (status, _) = get(node.addr, &path, &[]).await;
    assert_eq!(status, 414);
    // Just under the cap is served.
    let pad = "a".repeat(10 * 1024);
    let path = format!("/sse?token={t}&rooms=ok-1&pad={pad}");
    let (status, body) = get(node.addr, &path, &[]).await;
    assert_eq!(status, 200, "{body}");
    node.stop().await;
}
