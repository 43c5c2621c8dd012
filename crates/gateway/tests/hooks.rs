//! Backend hooks against a real HTTP backend started by each test: the connect hook
//! (cookie auth without a JWT, deny, slow, down, malformed, the concurrency bound), the
//! join and publish hooks (only matching rooms asked, deny, data replaced), and the
//! HMAC signature checked by the backend.

mod hook_backend;
mod support;

use hook_backend::{dead_addr, ok, Answer, HookBackend, HOOK_SECRET};
use roomcast_protocol::{Encoding, ErrorCode, ServerMessage};
use serde_json::json;
use std::sync::Arc;
use support::{err_code, http, token, Client, Closed, SseStream, TestNode, SECRET};
use tokio::sync::Notify;

/// A node with JWT auth and the connect hook at `url`, plus `extra` flags.
async fn node_with_connect_hook(url: &str, extra: &[&str]) -> TestNode {
    let mut args = vec![
        "--jwt-secret",
        SECRET,
        "--hook-connect-url",
        url,
        "--hook-secret",
        HOOK_SECRET,
    ];
    args.extend_from_slice(extra);
    TestNode::start(&args).await
}

/// Connects with these headers and returns the first message, or how it closed.
async fn first(
    node: &TestNode,
    url_tail: &str,
    headers: &[(&str, &str)],
) -> Result<ServerMessage, Closed> {
    let url = format!("{}{url_tail}", node.ws_url());
    let mut c = Client::connect_with(&url, Encoding::Json, headers)
        .await
        .expect("upgrade");
    match c.closed_or_next().await {
        Ok(m) => Ok(m),
        Err(c) => Err(c),
    }
}

trait NextOrClose {
    async fn closed_or_next(&mut self) -> Result<ServerMessage, Closed>;
}

impl NextOrClose for Client {
    async fn closed_or_next(&mut self) -> Result<ServerMessage, Closed> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let f = tokio::time::timeout(support::WAIT, self.ws.next())
                .await
                .expect("a frame in time");
            match f {
                Some(Ok(Message::Text(t))) => {
                    return Ok(Encoding::Json
                        .decode_server(t.as_bytes())
                        .expect("server message"))
                }
                Some(Ok(Message::Close(Some(c)))) => return Err(Closed::Code(c.code.into())),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                    return Err(Closed::NoFrame)
                }
                Some(Ok(_)) => continue,
            }
        }
    }
}

async fn metrics(node: &TestNode) -> String {
    http(node.addr, "GET", "/metrics", &[], "").await.1
}

#[tokio::test]
async fn a_session_cookie_authenticates_without_a_jwt_and_the_backend_verifies_the_signature() {
    let mut backend = HookBackend::start(|call| {
        let cookie = call.body["cookies"]["sid"].as_str().map(str::to_string);
        match (call.signed, cookie.as_deref()) {
            (true, Some("s3cr3t")) => {
                ok(json!({"allow": true, "user": "alice", "rooms": ["chat:*"]}))
            }
            _ => ok(json!({"allow": false, "code": 4002, "reason": "no session"})),
        }
    })
    .await;
    let node = node_with_connect_hook(
        &backend.url("/connect"),
        &["--hook-forward-headers", "X-App-Version, user-agent"],
    )
    .await;
    let w = first(
        &node,
        "",
        &[
            ("cookie", "theme=dark; sid=s3cr3t"),
            ("x-app-version", "7.1"),
            ("x-other", "no"),
        ],
    )
    .await
    .expect("welcomed");
    match w {
        ServerMessage::Welcome { user, auth, .. } => {
            assert_eq!(user.as_str(), "alice");
            assert_eq!(auth, "jwt");
        }
        other => panic!("expected welcome, got {other:?}"),
    }
    let call = backend.next_call().await;
    assert_eq!(call.path, "/connect");
    assert!(call.signed, "the backend verified the HMAC signature");
    assert_eq!(call.body["ip"], "127.0.0.1");
    assert_eq!(call.body["transport"], "ws");
    assert_eq!(call.body["auth"], serde_json::Value::Null);
    assert_eq!(call.body["cookies"]["theme"], "dark");
    assert_eq!(call.body["headers"]["x-app-version"], "7.1");
    assert!(
        call.body["headers"].get("x-other").is_none(),
        "only the named headers are forwarded"
    );

    // A connection with a JWT is verified by the node, not asked to the hook (--auth jwt).
    let before = backend.calls().len();
    let (mut c, w) = Client::welcomed(
        &format!("{}?token={}", node.ws_url(), token("bob", json!({}))),
        Encoding::Json,
    )
    .await;
    assert!(matches!(w, ServerMessage::Welcome { ref user, .. } if user.as_str() == "bob"));
    let _ = c.request(json!({"type": "ping"}), "p").await;
    assert_eq!(
        backend.calls().len(),
        before,
        "a JWT connection does not call the hook"
    );

    // The hook's `rooms` patterns hold like a token's.
    let mut alice =
        Client::connect_with(&node.ws_url(), Encoding::Json, &[("cookie", "sid=s3cr3t")])
            .await
            .expect("upgrade");
    let _welcome = alice.recv().await;
    let r = alice.join_reply("admin:x", "j").await;
    assert_eq!(err_code(&r), ErrorCode::Forbidden, "{r:?}");
    alice.join("chat:1").await;

    // No cookie: denied with the hook's code.
    assert_eq!(first(&node, "", &[]).await.err(), Some(Closed::Code(4002)));
    // Signature check fails when the node signs with another secret.
    let other = TestNode::start(&[
        "--jwt-secret",
        SECRET,
        "--hook-connect-url",
        &backend.url("/connect"),
        "--hook-secret",
        "another-secret",
    ])
    .await;
    assert_eq!(
        first(&other, "", &[("cookie", "sid=s3cr3t")]).await.err(),
        Some(Closed::Code(4002)),
        "a request signed with another secret is refused by the backend"
    );
    other.stop().await;
    node.stop().await;
}

#[tokio::test]
async fn a_deny_closes_with_the_hooks_code() {
    let backend = HookBackend::start(|call| {
        let code = call.body["cookies"]["code"]
            .as_str()
            .and_then(|c| c.parse::<u16>().ok());
        ok(json!({"allow": false, "code": code, "reason": "go away"}))
    })
    .await;
    let node = node_with_connect_hook(&backend.url("/connect"), &[]).await;
    for code in [4002u16, 4003, 1008] {
        let cookie = format!("code={code}");
        assert_eq!(
            first(&node, "", &[("cookie", &cookie)]).await.err(),
            Some(Closed::Code(code))
        );
    }
    // A code the contract does not allow for a deny is a malformed answer: 1013.
    assert_eq!(
        first(&node, "", &[("cookie", "code=1000")]).await.err(),
        Some(Closed::Code(1013))
    );
    let m = metrics(&node).await;
    assert!(
        m.contains(r#"roomcast_hook_requests_total{hook="connect",result="deny"} 3"#),
        "{m}"
    );
    assert!(
        m.contains(r#"roomcast_hook_requests_total{hook="connect",result="malformed"} 1"#),
        "{m}"
    );
    assert!(
        m.contains("roomcast_hook_duration_seconds_count{hook=\"connect\"} 4"),
        "{m}"
    );
    node.stop().await;
}

#[tokio::test]
async fn a_slow_backend_times_out_and_refuses() {
    // The backend never answers; the node gives up after --hook-timeout-ms.
    let backend = HookBackend::start(|_| Box::pin(std::future::pending()) as Answer).await;
    let node =
        node_with_connect_hook(&backend.url("/connect"), &["--hook-timeout-ms", "200"]).await;
    assert_eq!(first(&node, "", &[]).await.err(), Some(Closed::Code(1013)));
    let m = metrics(&node).await;
    assert!(
        m.contains(r#"roomcast_hook_requests_total{hook="connect",result="timeout"} 1"#),
        "{m}"
    );
    node.stop().await;
}

#[tokio::test]
async fn a_backend_that_is_down_or_failing_refuses() {
    let dead = dead_addr().await;
    let node = node_with_connect_hook(&format!("http://{dead}/connect"), &[]).await;
    assert_eq!(first(&node, "", &[]).await.err(), Some(Closed::Code(1013)));
    let m = metrics(&node).await;
    assert!(
        m.contains(r#"roomcast_hook_requests_total{hook="connect",result="unreachable"} 1"#),
        "{m}"
    );
    // The HTTP fallback refuses with 503 too.
    let (status, _) = http(
        node.addr,
        "POST",
        "/client/commands",
        &[],
        r#"{"type":"ping"}"#,
    )
    .await;
    assert_eq!(status, 503);
    node.stop().await;

    // 500, a body that is not JSON, JSON of another shape, an allow without a user.
    let backend = HookBackend::start(|call| {
        let how = call.body["cookies"]["how"]
            .as_str()
            .unwrap_or("")
            .to_string();
        Box::pin(async move {
            match how.as_str() {
                "500" => (500u16, "oops".to_string()),
                "text" => (200, "allow please".to_string()),
                "shape" => (200, r#"{"allow": "yes"}"#.to_string()),
                _ => (200, r#"{"allow": true}"#.to_string()),
            }
        }) as Answer
    })
    .await;
    let node = node_with_connect_hook(&backend.url("/connect"), &[]).await;
    for how in ["500", "text", "shape", "nouser"] {
        let cookie = format!("how={how}");
        assert_eq!(
            first(&node, "", &[("cookie", &cookie)]).await.err(),
            Some(Closed::Code(1013)),
            "{how}"
        );
    }
    let m = metrics(&node).await;
    assert!(
        m.contains(r#"roomcast_hook_requests_total{hook="connect",result="status"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"roomcast_hook_requests_total{hook="connect",result="malformed"} 3"#),
        "{m}"
    );
    node.stop().await;
}

#[tokio::test]
async fn calls_beyond_the_concurrency_bound_refuse_at_once() {
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let mut backend = HookBackend::start(move |call| {
        let r = r.clone();
        Box::pin(async move {
            if call.body["cookies"]["wait"].is_string() {
                r.notified().await;
            }
            (200u16, json!({"allow": true, "user": "u1"}).to_string())
        }) as Answer
    })
    .await;
    let node = node_with_connect_hook(
        &backend.url("/connect"),
        &["--hook-max-concurrency", "1", "--hook-timeout-ms", "20000"],
    )
    .await;
    // The first connection's hook call is held by the backend...
    let mut held = Client::connect_with(&node.ws_url(), Encoding::Json, &[("cookie", "wait=1")])
        .await
        .expect("upgrade");
    let call = backend.next_call().await;
    assert!(call.body["cookies"]["wait"].is_string());
    // ...so the second finds no permit: refused at once, without calling the backend.
    assert_eq!(first(&node, "", &[]).await.err(), Some(Closed::Code(1013)));
    let m = metrics(&node).await;
    assert!(
        m.contains(r#"roomcast_hook_requests_total{hook="connect",result="busy"} 1"#),
        "{m}"
    );
    assert_eq!(backend.calls().len(), 1);
    // Released, the first is welcomed, and the permit is free again.
    release.notify_one();
    assert!(matches!(
        held.closed_or_next().await,
        Ok(ServerMessage::Welcome { .. })
    ));
    assert!(matches!(
        first(&node, "", &[]).await,
        Ok(ServerMessage::Welcome { .. })
    ));
    node.stop().await;
}

#[tokio::test]
async fn the_publish_hook_replaces_data_and_denies_and_is_asked_only_for_its_rooms() {
    let backend = HookBackend::start(|call| {
        if !call.signed {
            return ok(json!({"allow": false}));
        }
        match call.body["data"]["text"].as_str() {
            Some("forbidden") => ok(json!({"allow": false})),
            Some(t) if t.contains("darn") => {
                ok(json!({"allow": true, "data": {"text": t.replace("darn", "****")}}))
            }
            _ => ok(json!({"allow": true})),
        }
    })
    .await;
    let node = TestNode::start(&[
        "--auth",
        "none",
        "--hook-publish-url",
        &backend.url("/publish"),
        "--hook-publish-rooms",
        "mod:*",
        "--hook-secret",
        HOOK_SECRET,
    ])
    .await;
    let (mut a, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    let (mut b, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    for room in ["mod:1", "free:1"] {
        a.join(room).await;
        b.join(room).await;
    }
    let say = |room: &str, text: &str| json!({"type": "publish", "room": room, "event": "say", "data": {"text": text}});
    a.acked(say("mod:1", "darn it"), "p1").await;
    assert_eq!(
        b.next_message().await.data,
        json!({"text": "**** it"}),
        "the backend's data is published"
    );
    let r = a.request(say("mod:1", "forbidden"), "p2").await;
    assert_eq!(err_code(&r), ErrorCode::Forbidden, "{r:?}");
    // A room outside --hook-publish-rooms is not asked: its data goes out as sent.
    a.acked(say("free:1", "darn"), "p3").await;
    assert_eq!(b.next_message().await.data, json!({"text": "darn"}));
    let calls = backend.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls
        .iter()
        .all(|c| c.path == "/publish" && c.body["room"] == "mod:1" && c.signed));
    assert_eq!(calls[0].body["event"], "say");
    node.stop().await;

    // The publish hook down: `unavailable`, never published.
    let dead = dead_addr().await;
    let node = TestNode::start(&[
        "--auth",
        "none",
        "--hook-publish-url",
        &format!("http://{dead}/p"),
    ])
    .await;
    let (mut a, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    a.join("r").await;
    let r = a
        .request(
            json!({"type": "publish", "room": "r", "event": "e", "data": 1, "echo": true}),
            "p",
        )
        .await;
    assert_eq!(err_code(&r), ErrorCode::Unavailable, "{r:?}");
    let r = a.request(json!({"type": "ping"}), "after").await;
    assert!(
        matches!(r, ServerMessage::Pong { .. }),
        "nothing was delivered before the pong: {r:?}"
    );
    node.stop().await;
}

#[tokio::test]
async fn the_join_hook_denies_a_matching_room_and_is_not_asked_for_others() {
    let backend = HookBackend::start(|call| {
        let allowed = call.body["user"] == "vip";
        ok(json!({"allow": allowed}))
    })
    .await;
    let node = TestNode::jwt(&[
        "--hook-join-url",
        &backend.url("/join"),
        "--hook-join-rooms",
        "private:*,vip",
    ])
    .await;
    let url = |u: &str| format!("{}?token={}", node.ws_url(), token(u, json!({})));
    let (mut c, _) = Client::welcomed(&url("pleb"), Encoding::Json).await;
    let r = c.join_reply("private:1", "j1").await;
    assert_eq!(err_code(&r), ErrorCode::Forbidden, "{r:?}");
    c.join("public:1").await;
    let calls = backend.calls();
    assert_eq!(
        calls.len(),
        1,
        "only the matching room was asked: {calls:?}"
    );
    assert_eq!(calls[0].body, json!({"user": "pleb", "room": "private:1"}));
    let (mut v, _) = Client::welcomed(&url("vip"), Encoding::Json).await;
    v.join("private:1").await;

    // SSE joins are asked too.
    let t = token("pleb", json!({}));
    let sse = SseStream::open(node.addr, &format!("/sse?rooms=private:2&token={t}"), &[]).await;
    assert_eq!(sse.status, 403, "a refused SSE join gets no stream");
    node.stop().await;

    // The join hook down: `unavailable`.
    let dead = dead_addr().await;
    let node = TestNode::start(&[
        "--auth",
        "none",
        "--hook-join-url",
        &format!("http://{dead}/j"),
    ])
    .await;
    let (mut a, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    let r = a.join_reply("r", "j").await;
    assert_eq!(err_code(&r), ErrorCode::Unavailable, "{r:?}");
    node.stop().await;
}

#[tokio::test]
async fn auth_hook_mode_passes_the_token_and_serves_sse_and_http_by_cookie() {
    let mut backend = HookBackend::start(|call| {
        let user = call.body["auth"]["token"]
            .as_str()
            .map(|t| t.trim_start_matches("opaque-").to_string())
            .or_else(|| {
                call.body["cookies"]["sid"]
                    .as_str()
                    .map(|s| format!("c-{s}"))
            });
        match user {
            Some(u) => ok(json!({"allow": true, "user": u, "join": ["lobby"]})),
            None => ok(json!({"allow": false})),
        }
    })
    .await;
    let node = TestNode::start(&[
        "--auth",
        "hook",
        "--hook-connect-url",
        &backend.url("/connect"),
        "--api-keys",
        "k",
    ])
    .await;
    // An opaque (non-JWT) token goes to the hook as {"token": ...}.
    let (mut c, w) = Client::welcomed(
        &format!("{}?token=opaque-carol", node.ws_url()),
        Encoding::Json,
    )
    .await;
    assert!(
        matches!(w, ServerMessage::Welcome { ref user, ref auth, .. } if user.as_str() == "carol" && auth == "hook"),
        "{w:?}"
    );
    assert_eq!(
        backend.next_call().await.body["auth"],
        json!({"token": "opaque-carol"})
    );
    let j = c.recv().await;
    assert!(
        matches!(j, ServerMessage::Joined { ref room, .. } if room.as_str() == "lobby"),
        "{j:?}"
    );
    // A refresh goes to the hook too; another user is refused.
    let r = c
        .request(json!({"type": "auth", "token": "opaque-carol"}), "a")
        .await;
    assert!(matches!(r, ServerMessage::AuthOk { .. }), "{r:?}");
    c.send(json!({"type": "auth", "token": "opaque-mallory"}))
        .await;
    assert_eq!(c.closed().await, Closed::Code(4002));

    // SSE by cookie, with the hook's `join` rooms and no rooms= at all.
    let mut sse = SseStream::open(node.addr, "/sse", &[("cookie", "sid=42")]).await;
    let (st, _) = http(
        node.addr,
        "POST",
        "/api/publish",
        &[("authorization", "Bearer k")],
        r#"{"room":"lobby","event":"hello","data":1}"#,
    )
    .await;
    assert_eq!(st, 200);
    let ev = sse.next_event().await.expect("an event");
    assert_eq!(ev.json()["event"], "hello");
    // The HTTP fallback by cookie.
    let (st, body) = http(
        node.addr,
        "POST",
        "/client/commands",
        &[("cookie", "sid=42")],
        r#"{"type":"ping","id":1}"#,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let (st, _) = http(
        node.addr,
        "POST",
        "/client/commands",
        &[],
        r#"{"type":"ping","id":1}"#,
    )
    .await;
    assert_eq!(st, 401, "denied by the hook");
    node.stop().await;
}
