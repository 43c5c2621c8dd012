//! The backend API's `invalid_message` answers name the field (issue 17, "errors a client
//! can act on"): every field of the bodies of `POST /api/publish` (single and batch),
//! `/api/send` and `/api/disconnect`, left out or given a value of the wrong shape, is
//! refused with 400 and a message that starts with the field's name and says what it
//! must be, in the words of docs/protocol.md (no Rust type names).

mod support;

use serde_json::{json, Value};
use support::{body_of, http, TestNode};

const KEY: &str = "key-one";

async fn post(node: &TestNode, path: &str, body: &Value) -> (u16, Value) {
    let auth = format!("Bearer {KEY}");
    let headers = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
    ];
    let (status, text) = http(node.addr, "POST", path, &headers, &body.to_string()).await;
    (
        status,
        serde_json::from_str(&body_of(&text)).unwrap_or(Value::Null),
    )
}

const RUST_WORDS: &[&str] = &[
    "struct",
    "enum",
    "Option",
    "RoomName",
    "UserId",
    "EventName",
    "String",
    "invalid type",
    "`",
];

fn check(what: &str, field: &str, message: &str) {
    assert!(
        message.starts_with(&format!("{field}: ")) && message.contains("expected"),
        "{what}: names {field} and what it must be: {message}"
    );
    for w in RUST_WORDS {
        assert!(!message.contains(w), "{what}: {w:?} in {message}");
    }
}

#[tokio::test]
async fn api_bodies_name_the_field_that_is_wrong() {
    let node = TestNode::start(&["--auth", "none", "--api-keys", KEY]).await;
    let not_a_string = [json!(1), json!(true), json!([]), json!({}), Value::Null];
    let routes = [
        (
            "/api/publish",
            json!({"room": "r", "event": "e", "data": 1}),
            vec![
                ("room", true, vec![json!(""), json!("a b")]),
                ("event", true, vec![json!("")]),
                ("volatile", false, vec![json!("yes"), json!(1), Value::Null]),
                ("id", false, vec![json!(1), json!([])]),
            ],
        ),
        (
            "/api/send",
            json!({"user": "u", "event": "e", "data": 1}),
            vec![
                ("user", true, vec![json!("")]),
                ("event", true, vec![json!("x".repeat(65))]),
                ("id", false, vec![json!(1)]),
            ],
        ),
        (
            "/api/disconnect",
            json!({"user": "u"}),
            vec![("user", true, vec![json!("")])],
        ),
    ];
    for (path, valid, fields) in routes {
        for (field, is_name, extra) in fields {
            let mut wrong: Vec<Option<Value>> = extra.into_iter().map(Some).collect();
            if is_name {
                wrong.extend(not_a_string.iter().cloned().map(Some));
                wrong.push(None); // left out
            }
            for w in wrong {
                let mut b = valid.clone();
                match &w {
                    Some(v) => b[field] = v.clone(),
                    None => {
                        b.as_object_mut().expect("object").remove(field);
                    }
                }
                let what = format!("{path} {b}");
                let (st, v) = post(&node, path, &b).await;
                assert_eq!(st, 400, "{what}: {v}");
                assert_eq!(v["error"]["code"], "invalid_message", "{what}: {v}");
                check(&what, field, v["error"]["message"].as_str().unwrap_or(""));
                if path == "/api/publish" {
                    // The batch form answers the same words in the item's place.
                    let (st, v) = post(&node, path, &json!([valid, b])).await;
                    assert_eq!(st, 200, "{what} in a batch: {v}");
                    let item = &v["results"][1]["error"];
                    assert_eq!(item["code"], "invalid_message", "{what}: {v}");
                    check(&what, field, item["message"].as_str().unwrap_or(""));
                }
            }
        }
    }
    node.stop().await;
}
