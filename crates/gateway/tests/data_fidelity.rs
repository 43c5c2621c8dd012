//! What a client publishes is what the others receive, and a refused frame still says
//! which request it refuses.

mod support;

use roomcast_protocol::{Encoding, ErrorCode, ReqId};
use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_float_published_as_json_arrives_exactly() {
    // 17 significant digits: the default JSON float parser reads this one unit in the
    // last place off (found by fuzz/client_msgpack).
    let node = TestNode::open().await;
    let (mut a, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    let (mut b, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    b.join("f").await;
    a.send_raw(Message::Text(
        r#"{"type":"publish","room":"f","event":"e","data":2.5000858306884766,"id":"p"}"#.into(),
    ))
    .await;
    assert_eq!(b.next_message().await.data, json!(2.5000858306884766_f64));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_frame_that_does_not_decode_keeps_its_id() {
    let node = rate_limited_node("0.001", "1", "100").await;
    let (mut c, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    c.send_raw(Message::Text(r#"{"type":5,"id":"first"}"#.into()))
        .await;
    c.send_raw(Message::Text(r#"{"type":5,"id":"second"}"#.into()))
        .await;
    let want = ReqId::Str("second".into());
    let r = c.recv_match(|m| reply_id(m) == Some(&want)).await;
    assert_eq!(err_code(&r), ErrorCode::RateLimited, "{r:?}");
    node.stop().await;
}
