//! `invalid_message` errors a client can act on (issue 17): every field of every client
//! message type, given a value of the wrong shape (or left out when it is required), over
//! a real WebSocket in JSON and in MessagePack, is refused with a message that starts with
//! the field's name and says the shape it must have in the protocol's words, never a Rust
//! type name (`invalid type: integer 1, expected struct StreamPosition` was the answer to
//! `"since": 1`).

mod support;

use roomcast_protocol::{Encoding, ErrorCode, ServerMessage};
use serde_json::{json, Value};
use support::{Client, TestNode, OPEN_UNLIMITED};

/// Words of the implementation that must never reach a client.
const RUST_WORDS: &[&str] = &[
    "struct",
    "enum",
    "Option",
    "StreamPosition",
    "RoomName",
    "UserId",
    "EventName",
    "ReqId",
    "ClientMessage",
    "String",
    "Value",
    "u32",
    "u64",
    "i64",
    "usize",
    "invalid type",
    "variant",
    "`",
];

/// Wrong values for a field of each shape (null is absent for the optional integers and
/// `since`, so it is only wrong where noted).
fn wrong_values(shape: &str) -> Vec<Value> {
    let not_strings = vec![
        json!(1),
        json!(-1),
        json!(1.5),
        json!(true),
        json!([]),
        json!({}),
        json!(["a"]),
        json!({"a": "b"}),
        Value::Null,
    ];
    match shape {
        "text" => not_strings,
        "room" => [
            not_strings,
            vec![json!(""), json!("a b"), json!("x".repeat(129))],
        ]
        .concat(),
        "user" => [not_strings, vec![json!(""), json!("x".repeat(129))]].concat(),
        "event" => [not_strings, vec![json!(""), json!("x".repeat(65))]].concat(),
        "count" => vec![
            json!("1"),
            json!(-1),
            json!(1.5),
            json!(4_294_967_296u64),
            json!(true),
            json!([1]),
            json!({"n": 1}),
        ],
        "since" => vec![
            json!(1),
            json!("1"),
            json!(true),
            json!([1]),
            json!({}),
            json!({"offset": 1}),
            json!({"epoch": "e"}),
            json!({"offset": "1", "epoch": "e"}),
            json!({"offset": -1, "epoch": "e"}),
            json!({"offset": 1.5, "epoch": "e"}),
            json!({"offset": 1, "epoch": 2}),
            json!({"offset": 1, "epoch": null}),
        ],
        "flag" => vec![json!(1), json!("true"), json!([]), json!({}), Value::Null],
        other => unreachable!("no shape {other}"),
    }
}

/// A field that can be wrong: its name, its shape, whether it is required.
type Field = (&'static str, &'static str, bool);

/// Every client message type: a valid frame, and each field that can be wrong with its
/// shape and whether it is required.
fn message_types() -> Vec<(Value, Vec<Field>)> {
    vec![
        (
            json!({"type": "auth", "token": "t"}),
            vec![("token", "text", true)],
        ),
        (
            json!({"type": "join", "room": "r"}),
            vec![
                ("room", "room", true),
                ("history", "count", false),
                ("since", "since", false),
            ],
        ),
        (
            json!({"type": "leave", "room": "r"}),
            vec![("room", "room", true)],
        ),
        (
            json!({"type": "publish", "room": "r", "event": "e", "data": 1}),
            vec![
                ("room", "room", true),
                ("event", "event", true),
                ("volatile", "flag", false),
                ("echo", "flag", false),
            ],
        ),
        (
            json!({"type": "send", "to": "u", "event": "e", "data": 1}),
            vec![("to", "user", true), ("event", "event", true)],
        ),
        (
            json!({"type": "presence", "room": "r"}),
            vec![("room", "room", true), ("limit", "count", false)],
        ),
    ]
}

/// Every (frame, field) case.
fn cases() -> Vec<(Value, &'static str)> {
    let mut out = Vec::new();
    for (valid, fields) in message_types() {
        for (field, shape, required) in fields {
            for bad in wrong_values(shape) {
                let mut f = valid.clone();
                f[field] = bad;
                out.push((f, field));
            }
            if required {
                let mut f = valid.clone();
                f.as_object_mut().expect("object").remove(field);
                out.push((f, field));
            }
        }
    }
    out
}

fn check_words(what: &str, field: &str, message: &str) {
    assert!(
        message.starts_with(&format!("{field}: ")),
        "{what}: the message starts with the field's name: {message}"
    );
    assert!(
        message.contains("expected") || message.contains("missing"),
        "{what}: says what is expected: {message}"
    );
    for w in RUST_WORDS {
        assert!(
            !message.contains(w),
            "{what}: {w:?} is a word of the implementation: {message}"
        );
    }
}

#[tokio::test]
async fn every_field_of_every_client_message_is_explained_in_the_protocols_words() {
    let node = TestNode::start(OPEN_UNLIMITED).await;
    let cases = cases();
    for enc in Encoding::ALL {
        let (mut c, _) = Client::welcomed(&node.ws_url(), enc).await;
        for (n, (frame, field)) in cases.iter().enumerate() {
            let id = format!("c{n}");
            let reply = c.request(frame.clone(), &id).await;
            let what = format!("{enc:?} {frame}");
            match reply {
                ServerMessage::Error { code, message, .. } => {
                    assert_eq!(code, ErrorCode::InvalidMessage, "{what}: {message}");
                    check_words(&what, field, &message);
                }
                other => panic!("{what}: expected invalid_message, got {other:?}"),
            }
        }
    }
    // The example of the issue, word for word.
    let (mut c, _) = Client::welcomed(&node.ws_url(), Encoding::Json).await;
    let reply = c
        .request(json!({"type": "join", "room": "r", "since": 1}), "s")
        .await;
    let ServerMessage::Error { message, .. } = reply else {
        panic!("expected an error: {reply:?}")
    };
    assert_eq!(
        message,
        r#"since: expected {"offset": <integer>, "epoch": "<string>"}"#
    );
    node.stop().await;
}

#[tokio::test]
async fn frames_that_are_not_messages_get_no_rust_words_either() {
    let node = TestNode::open().await;
    for enc in Encoding::ALL {
        let (mut c, _) = Client::welcomed(&node.ws_url(), enc).await;
        for (n, frame) in [json!(1), json!("join"), json!([1, 2]), json!(null)]
            .into_iter()
            .enumerate()
        {
            c.send(frame.clone()).await;
            let reply = c.recv().await;
            let ServerMessage::Error { code, message, .. } = reply else {
                panic!("{enc:?} {frame}: expected an error: {reply:?}")
            };
            assert_eq!(code, ErrorCode::InvalidMessage, "{message}");
            assert!(message.contains("\"type\""), "{enc:?} {frame}: {message}");
            for w in RUST_WORDS {
                assert!(!message.contains(w), "{enc:?} {frame}: {w:?} in {message}");
            }
            let pong = c.request(json!({"type": "ping"}), &format!("p{n}")).await;
            assert!(matches!(pong, ServerMessage::Pong { .. }), "{pong:?}");
        }
    }
    node.stop().await;
}
