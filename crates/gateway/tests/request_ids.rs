//! Request ids over a real WebSocket, JSON and MessagePack (issue 13, F10): an error
//! reply carries the frame's id whenever it has a usable one, even when `type` is wrong;
//! an id outside 1..128 bytes is `invalid_message` naming `id`, and is never echoed.

mod support;

use roomcast_protocol::{Encoding, ErrorCode, ReqId, ServerMessage};
use serde_json::json;
use support::{Client, TestNode};

/// The error a frame gets; every error is followed by a pong for `ping-<n>` so that a
/// reply that should not exist would be seen.
async fn error_for(
    c: &mut Client,
    frame: serde_json::Value,
    n: usize,
) -> (ErrorCode, Option<ReqId>, String) {
    c.send(frame.clone()).await;
    let reply = c.recv().await;
    let pong = c
        .request(json!({"type": "ping"}), &format!("ping-{n}"))
        .await;
    assert!(matches!(pong, ServerMessage::Pong { .. }), "{pong:?}");
    match reply {
        ServerMessage::Error { code, message, id } => (code, id, message),
        other => panic!("{frame}: expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn error_replies_carry_usable_ids_and_unusable_ids_are_refused() {
    let node = TestNode::open().await;
    for enc in Encoding::ALL {
        let (mut c, _) = Client::welcomed(&node.ws_url(), enc).await;
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };

        // A wrong type: the error still has the id, numeric or string.
        let (code, id, _) = error_for(&mut c, json!({"type": 5, "id": 4}), next()).await;
        assert_eq!(
            (code, id),
            (ErrorCode::InvalidMessage, Some(ReqId::Int(4))),
            "{enc:?}"
        );
        let (code, id, _) = error_for(&mut c, json!({"type": [1], "id": "q"}), next()).await;
        assert_eq!(
            (code, id),
            (ErrorCode::InvalidMessage, Some(ReqId::Str("q".into()))),
            "{enc:?}"
        );
        let (code, id, _) = error_for(&mut c, json!({"type": "dance", "id": 9}), next()).await;
        assert_eq!(
            (code, id),
            (ErrorCode::UnknownType, Some(ReqId::Int(9))),
            "{enc:?}"
        );

        // Ids that cannot be echoed: refused, naming the field, without an id.
        for bad in [
            json!(""),
            json!("x".repeat(129)),
            json!("x".repeat(1000)),
            json!(1.5),
        ] {
            let (code, id, message) =
                error_for(&mut c, json!({"type": "ping", "id": bad}), next()).await;
            assert_eq!(
                (code, id),
                (ErrorCode::InvalidMessage, None),
                "{enc:?} {bad}"
            );
            assert!(message.contains("\"id\""), "{enc:?}: {message}");
        }

        // The longest id and an integer id are echoed.
        let long = "y".repeat(128);
        c.send(json!({"type": "ping", "id": long})).await;
        assert_eq!(
            c.recv().await,
            ServerMessage::Pong {
                id: Some(ReqId::Str(long))
            }
        );
        c.send(json!({"type": "ping", "id": 4})).await;
        assert_eq!(
            c.recv().await,
            ServerMessage::Pong {
                id: Some(ReqId::Int(4))
            }
        );
    }
    node.stop().await;
}
