//! Issue 13, F9, F7 and the HTTP body limits: raw TCP requests against a real node.
//! - The WebSocket upgrade follows RFC 6455 4.2.1 / 4.4: HTTP/1.1, Host, `Upgrade:
//!   websocket`, `Connection: Upgrade`, a key that is base64 of 16 bytes, version 13
//!   (426 with `Sec-WebSocket-Version: 13` otherwise).
//! - An Origin that is present but not readable is refused by an allow-list.
//! - `/client/commands` and the API: a body that does not arrive within
//!   `--http-body-timeout` gets 408 and the connection closes; each client IP has at most
//!   `--max-http-per-ip` such requests in progress.

mod support;

use std::net::SocketAddr;
use support::{token, TestNode, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// One response head read off a raw socket: status and lower-cased header lines.
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads until the end of a response head (or EOF) and parses it.
async fn read_head(s: &mut TcpStream) -> Head {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut byte))
            .await
            .expect("a response in time")
            .expect("read");
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&byte[..n]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Head { status, headers }
}

/// Sends raw request bytes and reads the response head.
async fn raw(addr: SocketAddr, request: &[u8]) -> Head {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    read_head(&mut s).await
}

/// An upgrade request with these header lines (each `Name: value`) after the request line.
fn upgrade_request(version: &str, lines: &[&str]) -> Vec<u8> {
    let mut r = format!("GET /ws {version}\r\n");
    for l in lines {
        r.push_str(l);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

#[tokio::test]
async fn upgrade_follows_rfc6455_opening_handshake() {
    let node = TestNode::open().await;
    let host = format!("Host: {}", node.addr);
    let key = format!("Sec-WebSocket-Key: {KEY}");
    let good = [
        host.as_str(),
        "Upgrade: websocket",
        "Connection: Upgrade",
        key.as_str(),
        "Sec-WebSocket-Version: 13",
    ];
    // Control: the valid request switches, with the accept value of RFC 6455 1.3.
    let h = raw(node.addr, &upgrade_request("HTTP/1.1", &good)).await;
    assert_eq!(h.status, 101);
    assert_eq!(
        h.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    // A Connection list that holds Upgrade among other tokens is an upgrade too.
    let mut list = good;
    list[2] = "Connection: keep-alive, Upgrade";
    assert_eq!(
        raw(node.addr, &upgrade_request("HTTP/1.1", &list))
            .await
            .status,
        101
    );

    // Each of these is not a valid opening handshake: 400.
    let without = |skip: &str| -> Vec<&str> {
        good.iter()
            .copied()
            .filter(|l| !l.starts_with(skip))
            .collect()
    };
    let with = |prefix: &str, line: &'static str| -> Vec<&str> {
        good.iter()
            .map(|l| if l.starts_with(prefix) { line } else { *l })
            .collect()
    };
    let refused: Vec<(&str, Vec<u8>)> = vec![
        ("HTTP/1.0", upgrade_request("HTTP/1.0", &good)),
        (
            "no Connection",
            upgrade_request("HTTP/1.1", &without("Connection")),
        ),
        (
            "Connection without Upgrade",
            upgrade_request("HTTP/1.1", &with("Connection", "Connection: keep-alive")),
        ),
        ("no Host", upgrade_request("HTTP/1.1", &without("Host"))),
        (
            "no Upgrade",
            upgrade_request("HTTP/1.1", &without("Upgrade")),
        ),
        (
            "key not base64",
            upgrade_request(
                "HTTP/1.1",
                &with(
                    "Sec-WebSocket-Key",
                    "Sec-WebSocket-Key: not*base64*at*all*here!",
                ),
            ),
        ),
        (
            "key of 15 bytes",
            upgrade_request(
                "HTTP/1.1",
                &with(
                    "Sec-WebSocket-Key",
                    "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA",
                ),
            ),
        ),
        (
            "key of 17 bytes",
            upgrade_request(
                "HTTP/1.1",
                &with(
                    "Sec-WebSocket-Key",
                    "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA=",
                ),
            ),
        ),
        (
            "no key",
            upgrade_request("HTTP/1.1", &without("Sec-WebSocket-Key")),
        ),
    ];
    for (what, req) in refused {
        let h = raw(node.addr, &req).await;
        assert_eq!(h.status, 400, "{what}: 400");
    }

    // A version other than 13: 426 naming 13; none at all: 400 naming 13.
    let h = raw(
        node.addr,
        &upgrade_request(
            "HTTP/1.1",
            &with("Sec-WebSocket-Version", "Sec-WebSocket-Version: 8"),
        ),
    )
    .await;
    assert_eq!(h.status, 426, "version 8");
    assert_eq!(h.header("sec-websocket-version"), Some("13"));
    let h = raw(
        node.addr,
        &upgrade_request("HTTP/1.1", &without("Sec-WebSocket-Version")),
    )
    .await;
    assert_eq!(h.status, 400, "no version");
    assert_eq!(h.header("sec-websocket-version"), Some("13"));
    node.stop().await;
}

#[tokio::test]
async fn unreadable_origin_is_refused_by_an_allow_list() {
    let node = TestNode::start(&[
        "--auth",
        "none",
        "--allowed-origins",
        "https://app.example.com",
    ])
    .await;
    let req = |origin: Option<&[u8]>| {
        let mut r = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n",
            node.addr
        )
        .into_bytes();
        if let Some(o) = origin {
            r.extend_from_slice(b"Origin: ");
            r.extend_from_slice(o);
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"\r\n");
        r
    };
    assert_eq!(raw(node.addr, &req(None)).await.status, 101, "no Origin");
    assert_eq!(
        raw(node.addr, &req(Some(b"https://app.example.com")))
            .await
            .status,
        101
    );
    assert_eq!(
        raw(node.addr, &req(Some(b"https://evil.example")))
            .await
            .status,
        403
    );
    for bad in [
        &b"https://app.example.com\xff"[..],
        &b"https://app.\xc3\xa9xample.com"[..],
        &b"\x80"[..],
    ] {
        assert_eq!(
            raw(node.addr, &req(Some(bad))).await.status,
            403,
            "Origin {bad:?} is present, unreadable, and refused"
        );
        // The same rule on /sse.
        let mut sse = format!(
            "GET /sse?rooms=a HTTP/1.1\r\nHost: {}\r\nOrigin: ",
            node.addr
        )
        .into_bytes();
        sse.extend_from_slice(bad);
        sse.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            raw(node.addr, &sse).await.status,
            403,
            "/sse with Origin {bad:?}"
        );
    }
    node.stop().await;

    // With `*` every Origin is allowed, readable or not.
    let node = TestNode::open().await;
    assert_eq!(
        raw(
            node.addr,
            &req_any(node.addr, b"https://app.example.com\xff")
        )
        .await
        .status,
        101
    );
    node.stop().await;
}

fn req_any(addr: SocketAddr, origin: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nOrigin: "
    )
    .into_bytes();
    r.extend_from_slice(origin);
    r.extend_from_slice(b"\r\n\r\n");
    r
}

/// Opens a connection and sends a POST's head and `sent` bytes of a `len`-byte body.
async fn half_sent(
    addr: SocketAddr,
    path: &str,
    auth: &str,
    extra: &str,
    len: usize,
    sent: &[u8],
) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {auth}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n{extra}\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(sent).await.expect("write part of the body");
    s
}

/// Reads the response to its end (the node closes the connection).
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("the node closes the connection in time")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn half_sent_bodies_get_408_and_the_connection_closes() {
    let node = TestNode::jwt(&["--http-body-timeout", "1", "--api-keys", "k1"]).await;
    let t = token("alice", serde_json::json!({}));
    let body = br#"{"type":"ping","id":"p1"}"#;
    // Control: a whole body is answered.
    let mut s = half_sent(
        node.addr,
        "/client/commands",
        &t,
        "Connection: close\r\n",
        body.len(),
        body,
    )
    .await;
    let resp = read_to_close(&mut s).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    for (path, auth) in [("/client/commands", t.as_str()), ("/api/publish", "k1")] {
        let mut s = half_sent(node.addr, path, auth, "", 100, &body[..10]).await;
        let resp = read_to_close(&mut s).await;
        assert!(resp.starts_with("HTTP/1.1 408"), "{path}: {resp}");
        assert!(
            resp.to_ascii_lowercase().contains("connection: close"),
            "{path}: {resp}"
        );
        assert!(resp.contains("http-body-timeout"), "{path}: {resp}");
    }
    node.stop().await;
}

#[tokio::test]
async fn each_client_ip_has_a_bounded_number_of_requests_in_progress() {
    // A body timeout long enough that the held requests stay held for the test.
    let node = TestNode::jwt(&[
        "--max-http-per-ip",
        "2",
        "--http-body-timeout",
        "60",
        "--api-keys",
        "k1",
    ])
    .await;
    let t = token("alice", serde_json::json!({}));
    let body = br#"{"type":"ping","id":"p1"}"#;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            half_sent(
                node.addr,
                "/client/commands",
                &t,
                "",
                body.len(),
                &body[..5],
            )
            .await,
        );
    }
    // The held requests reach the node in their own time: ask until the third is refused.
    let full = |extra: &'static str, path: &'static str, auth: String| {
        let addr = node.addr;
        async move {
            let pbody: &[u8] = if path == "/api/publish" {
                br#"{"room":"r","event":"e","data":1}"#
            } else {
                br#"{"type":"ping","id":"p1"}"#
            };
            let mut s = half_sent(
                addr,
                path,
                &auth,
                &format!("Connection: close\r\n{extra}"),
                pbody.len(),
                pbody,
            )
            .await;
            read_to_close(&mut s).await
        }
    };
    let refused = support::eventually("the third request is refused", || {
        let f = full("", "/client/commands", t.clone());
        async move {
            let r = f.await;
            r.starts_with("HTTP/1.1 429").then_some(r)
        }
    })
    .await;
    assert!(refused.contains("rate_limited"), "{refused}");
    // The API shares the address's budget.
    let r = full("", "/api/publish", "k1".to_string()).await;
    assert!(r.starts_with("HTTP/1.1 429"), "{r}");
    // Another client behind the trusted proxy (loopback) has its own budget.
    let r = full(
        "X-Forwarded-For: 203.0.113.7\r\n",
        "/client/commands",
        t.clone(),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");

    // Finishing a held body answers it and gives its slot back.
    let mut first = held.remove(0);
    first.write_all(&body[5..]).await.expect("rest of the body");
    let head = read_head(&mut first).await;
    assert_eq!(head.status, 200);
    drop(first);
    let r = support::eventually("a slot is free again", || {
        let f = full("", "/client/commands", t.clone());
        async move {
            let r = f.await;
            r.starts_with("HTTP/1.1 200").then_some(r)
        }
    })
    .await;
    assert!(r.contains("pong"), "{r}");
    drop(held);
    node.stop().await;
}
