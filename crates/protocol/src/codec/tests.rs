//! Unit tests of the codecs: round trips of every message (property tests), decode
//! failures classified and answered with the frame's id, the same limits for JSON and
//! MessagePack, and the bus envelope.

use super::*;
use crate::names::{EventName, RoomName, UserId};
use crate::server::{MessageFrame, Publication};
use proptest::prelude::*;
use serde_json::json;

fn arb_name() -> BoxedStrategy<String> {
    "[a-z0-9:_-]{1,20}".boxed()
}

fn arb_id() -> impl Strategy<Value = Option<ReqId>> {
    prop_oneof![
        Just(None),
        any::<i64>().prop_map(|i| Some(ReqId::Int(i))),
        "[a-zA-Z0-9-]{1,16}".prop_map(|s| Some(ReqId::Str(s))),
    ]
}

fn arb_data() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_client() -> impl Strategy<Value = ClientMessage> {
    let room = arb_name()
        .prop_map(|r| RoomName::new(&r).expect("valid room"))
        .boxed();
    prop_oneof![
        ("[ -~]{1,40}".boxed(), arb_id()).prop_map(|(token, id)| ClientMessage::Auth { token, id }),
        (
            room.clone(),
            proptest::option::of(0u32..100),
            proptest::option::of((any::<u64>(), "[a-z0-9]{1,8}")),
            arb_id(),
            any::<bool>()
        )
            .prop_map(|(room, history, since, id, member_events)| {
                ClientMessage::Join {
                    room,
                    history,
                    since: since.map(|(offset, epoch)| crate::StreamPosition { offset, epoch }),
                    id,
                    member_events,
                }
            }),
        (room.clone(), arb_id()).prop_map(|(room, id)| ClientMessage::Leave { room, id }),
        (
            room.clone(),
            arb_name(),
            arb_data(),
            arb_id(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(room, ev, data, id, volatile, echo)| {
                ClientMessage::Publish {
                    room,
                    event: EventName::new(&ev).expect("valid event"),
                    data,
                    id,
                    volatile,
                    echo,
                }
            }),
        (arb_name(), arb_name(), arb_data(), arb_id()).prop_map(|(to, ev, data, id)| {
            ClientMessage::Send {
                to: UserId::new(&to).expect("valid user"),
                event: EventName::new(&ev).expect("valid event"),
                data,
                id,
            }
        }),
        (room, proptest::option::of(1u32..5000), arb_id())
            .prop_map(|(room, limit, id)| ClientMessage::Presence { room, limit, id }),
        arb_id().prop_map(|id| ClientMessage::Ping { id }),
    ]
}

proptest! {
    #[test]
    fn client_messages_round_trip(msg in arb_client()) {
        for enc in Encoding::ALL {
            let bytes = enc.encode(&msg).expect("encodes");
            let back = enc.decode_client(&bytes).expect("decodes");
            prop_assert_eq!(&back, &msg);
        }
    }

    #[test]
    fn server_messages_round_trip(room in arb_name(), data in arb_data(), offset in proptest::option::of(any::<u64>()), id in arb_id()) {
        let p = Publication {
            room: RoomName::new(&room).expect("valid"),
            event: EventName::new("ev").expect("valid"),
            data,
            from: UserId::new("u").expect("valid"),
            offset,
            ts: 1,
        };
        let msgs = vec![
            ServerMessage::Message(p.clone()),
            ServerMessage::Joined { room: p.room.clone(), offset: 3, epoch: "e".into(), recovered: true, messages: vec![p.clone()], id: id.clone() },
            ServerMessage::error(ErrorCode::Forbidden, "no", id.clone()),
            ServerMessage::Pong { id },
            ServerMessage::MemberCount { room: p.room.clone(), users: 1001, connections: 1003 },
        ];
        for enc in Encoding::ALL {
            for m in &msgs {
                let bytes = enc.encode_server(m).expect("encodes");
                prop_assert_eq!(&enc.decode_server(&bytes).expect("decodes"), m);
            }
            // The shared fan-out frame decodes to the same message.
            let frame = enc.encode(&MessageFrame(&p)).expect("encodes");
            prop_assert_eq!(enc.decode_server(&frame).expect("decodes"), ServerMessage::Message(p.clone()));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        for enc in Encoding::ALL {
            let _ = enc.decode_client(&bytes);
            let _ = enc.decode_server(&bytes);
            let _ = crate::Envelope::from_msgpack(&bytes);
        }
    }
}

#[test]
fn classifies_errors() {
    let e = Encoding::Json
        .decode_client(br#"{"type":"dance","id":7}"#)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownType);
    assert_eq!(e.id, Some(ReqId::Int(7)));
    let e = Encoding::Json
        .decode_client(br#"{"type":"join","id":"a"}"#)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidMessage);
    assert_eq!(e.id, Some(ReqId::Str("a".into())));
    let e = Encoding::Json
        .decode_client(br#"{"type":"join","room":5}"#)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidMessage);
    let e = Encoding::Json.decode_client(b"not json").unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidMessage);
    let e = Encoding::Json
        .decode_client(br#"{"type":"join","room":"bad room"}"#)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidMessage);
    let mp = rmp_serde::to_vec_named(&json!({"type": "ping", "id": 3})).expect("encodes");
    assert_eq!(
        Encoding::MsgPack.decode_client(&mp).expect("ok"),
        ClientMessage::Ping {
            id: Some(ReqId::Int(3))
        }
    );
}

/// Every frame of these, in both encodings, and what decoding it must give: the
/// error code and the id the reply carries.
fn f10_cases() -> Vec<(serde_json::Value, ErrorCode, Option<ReqId>)> {
    let long = "x".repeat(ReqId::MAX_LEN + 1);
    let max = "y".repeat(ReqId::MAX_LEN);
    vec![
        // A wrong or missing `type` still answers with the frame's id.
        (
            json!({"type": 5, "id": 4}),
            ErrorCode::InvalidMessage,
            Some(ReqId::Int(4)),
        ),
        (
            json!({"type": 5, "id": "a"}),
            ErrorCode::InvalidMessage,
            Some(ReqId::Str("a".into())),
        ),
        (
            json!({"type": null, "id": -3}),
            ErrorCode::InvalidMessage,
            Some(ReqId::Int(-3)),
        ),
        (
            json!({"type": {"x": [1]}, "id": 9}),
            ErrorCode::InvalidMessage,
            Some(ReqId::Int(9)),
        ),
        (
            json!({"id": 7}),
            ErrorCode::InvalidMessage,
            Some(ReqId::Int(7)),
        ),
        (
            json!({"type": "dance", "id": 8}),
            ErrorCode::UnknownType,
            Some(ReqId::Int(8)),
        ),
        (
            json!({"type": "join", "room": "bad room", "id": max.clone()}),
            ErrorCode::InvalidMessage,
            Some(ReqId::Str(max)),
        ),
        // An id that cannot be echoed is refused, and the reply has no id.
        (
            json!({"type": "ping", "id": ""}),
            ErrorCode::InvalidMessage,
            None,
        ),
        (
            json!({"type": "ping", "id": long.clone()}),
            ErrorCode::InvalidMessage,
            None,
        ),
        (
            json!({"type": "ping", "id": "z".repeat(1000)}),
            ErrorCode::InvalidMessage,
            None,
        ),
        (
            json!({"type": "publish", "room": "r", "event": "e", "id": long}),
            ErrorCode::InvalidMessage,
            None,
        ),
        (
            json!({"type": "ping", "id": 4.5}),
            ErrorCode::InvalidMessage,
            None,
        ),
        (
            json!({"type": "ping", "id": u64::MAX}),
            ErrorCode::InvalidMessage,
            None,
        ),
        (
            json!({"type": "ping", "id": [1]}),
            ErrorCode::InvalidMessage,
            None,
        ),
        (
            json!({"type": "ping", "id": true}),
            ErrorCode::InvalidMessage,
            None,
        ),
        (
            json!({"type": 5, "id": ""}),
            ErrorCode::InvalidMessage,
            None,
        ),
        (
            json!({"type": "dance", "id": {}}),
            ErrorCode::InvalidMessage,
            None,
        ),
        // Not an object at all: nothing to echo.
        (json!([5, 4]), ErrorCode::InvalidMessage, None),
        (json!(4), ErrorCode::InvalidMessage, None),
    ]
}

#[test]
fn errors_carry_the_frames_id_and_ids_are_bounded() {
    for (frame, code, id) in f10_cases() {
        for enc in Encoding::ALL {
            let bytes = enc.encode(&frame).expect("encodes");
            let e = enc
                .decode_client(&bytes)
                .expect_err(&format!("{enc:?} {frame} must be refused"));
            assert_eq!(
                (e.code, &e.id),
                (code, &id),
                "{enc:?} {frame}: {}",
                e.message
            );
            if frame.get("id").is_some() && id.is_none() && frame.is_object() {
                assert!(
                    e.message.contains("\"id\""),
                    "names the field: {}",
                    e.message
                );
            }
        }
    }
}

#[test]
fn ids_of_1_to_128_bytes_and_integers_are_echoed() {
    for id in [
        json!("a"),
        json!("y".repeat(ReqId::MAX_LEN)),
        json!(0),
        json!(-1),
        json!(i64::MAX),
        json!(i64::MIN),
    ] {
        for enc in Encoding::ALL {
            let bytes = enc
                .encode(&json!({"type": "ping", "id": id}))
                .expect("encodes");
            let m = enc.decode_client(&bytes).expect("decodes");
            let back = serde_json::to_value(m.id()).expect("to value");
            assert_eq!(back, id, "{enc:?}");
        }
    }
    // A null id is no id.
    let m = Encoding::Json
        .decode_client(br#"{"type":"ping","id":null}"#)
        .expect("decodes");
    assert_eq!(m.id(), None);
}

/// MessagePack maps may have non-string keys and ids of any type; the error still
/// carries a usable id.
#[test]
fn msgpack_odd_maps_keep_the_id() {
    // {1: 2, "type": 5, "id": 4}
    let bytes = [
        0x83, 0x01, 0x02, 0xa4, b't', b'y', b'p', b'e', 0x05, 0xa2, b'i', b'd', 0x04,
    ];
    let e = Encoding::MsgPack
        .decode_client(&bytes)
        .expect_err("refused");
    assert_eq!(
        (e.code, e.id),
        (ErrorCode::InvalidMessage, Some(ReqId::Int(4)))
    );
    // {"type": "ping", "id": <bin 2 bytes>}
    let bytes = [
        0x82, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'i', b'n', b'g', 0xa2, b'i', b'd', 0xc4,
        0x02, b'a', b'b',
    ];
    let e = Encoding::MsgPack
        .decode_client(&bytes)
        .expect_err("refused");
    assert_eq!((e.code, e.id), (ErrorCode::InvalidMessage, None));
}

/// Found by fuzzing: a publish nested deeper than JSON allows was accepted over
/// MessagePack, and could not be read back as JSON. Both encodings now draw the line
/// at the same depth.
#[test]
fn both_encodings_accept_the_same_nesting() {
    let mut accepted = [0usize; 2];
    for depth in 1..200 {
        let mut data = json!(1);
        for _ in 0..depth {
            data = json!([data]);
        }
        let frame = json!({"type": "publish", "room": "r", "event": "e", "data": data});
        let ok = Encoding::ALL.map(|enc| {
            let bytes = enc.encode(&frame).expect("encodes");
            enc.decode_client(&bytes).is_ok()
        });
        assert_eq!(
            ok[0], ok[1],
            "depth {depth}: json {} msgpack {}",
            ok[0], ok[1]
        );
        for (n, ok) in accepted.iter_mut().zip(ok) {
            *n += usize::from(ok);
        }
    }
    assert!(accepted[0] > 100, "{accepted:?}");
}

#[test]
fn unknown_fields_are_ignored() {
    let m = Encoding::Json
        .decode_client(br#"{"type":"ping","extra":[1,2]}"#)
        .expect("ok");
    assert_eq!(m, ClientMessage::Ping { id: None });
}

#[test]
fn envelope_round_trip() {
    let env = crate::Envelope::new(
        "n1",
        crate::BusMessage::Message {
            room: RoomName::new("r").expect("valid"),
            event: EventName::new("e").expect("valid"),
            data: json!({"a": 1}),
            from: UserId::new("u").expect("valid"),
            offset: Some(4),
            ts: 9,
            epoch: Some("ep".into()),
            skip: None,
        },
    );
    let bytes = env.to_msgpack().expect("encodes");
    assert_eq!(crate::Envelope::from_msgpack(&bytes).expect("decodes"), env);
}
