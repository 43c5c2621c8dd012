//! The two encodings of the protocol, chosen per connection by WebSocket subprotocol:
//! JSON in text frames and MessagePack (maps with string keys) in binary frames.

use crate::client::{ClientMessage, ReqId};
use crate::error::ErrorCode;
use crate::server::ServerMessage;
use bytes::Bytes;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// A wire encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `roomcast.v1.json`: JSON in text frames (the default).
    Json,
    /// `roomcast.v1.msgpack`: MessagePack in binary frames.
    MsgPack,
}

/// Why bytes could not be decoded into a message; carries the docs/protocol.md code to
/// answer with and the request id when one could be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct DecodeError {
    /// `invalid_message` or `unknown_type`.
    pub code: ErrorCode,
    /// A message for people.
    pub message: String,
    /// The request id, when it could be read.
    pub id: Option<ReqId>,
}

/// A value could not be encoded (in practice: a map with non-string keys).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("encode: {0}")]
pub struct EncodeError(pub String);

/// Just enough of a frame to classify a decode failure and answer with its id: the
/// `type` and `id` entries of a map, whatever else the map holds and whatever their
/// values are (so that `{"type": 5, "id": 4}` still yields the id 4).
#[derive(Default)]
struct Peek {
    ty: PeekType,
    id: PeekId,
}

/// The `type` entry of a frame.
#[derive(Default)]
enum PeekType {
    #[default]
    Missing,
    Str(String),
    NotString,
}

/// The `id` entry of a frame.
#[derive(Default)]
enum PeekId {
    /// Absent or null.
    #[default]
    Missing,
    Usable(ReqId),
    /// Present but not a usable id (too long, empty, a float, a map...).
    Unusable,
}

/// Any map key: only string keys can name `type` or `id`.
#[derive(Deserialize)]
#[serde(untagged)]
enum PeekKey {
    Str(String),
    Other(IgnoredAny),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PeekTypeValue {
    Str(String),
    Other(IgnoredAny),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PeekIdValue {
    Usable(ReqId),
    Null(()),
    Other(IgnoredAny),
}

impl<'de> Deserialize<'de> for Peek {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(PeekVisitor)
    }
}

struct PeekVisitor;

impl<'de> Visitor<'de> for PeekVisitor {
    type Value = Peek;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a message object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Peek, A::Error> {
        let mut peek = Peek::default();
        while let Some(key) = map.next_key::<PeekKey>()? {
            match key {
                PeekKey::Str(k) if k == "type" => {
                    peek.ty = match map.next_value::<PeekTypeValue>()? {
                        PeekTypeValue::Str(t) => PeekType::Str(t),
                        PeekTypeValue::Other(_) => PeekType::NotString,
                    }
                }
                PeekKey::Str(k) if k == "id" => {
                    peek.id = match map.next_value::<PeekIdValue>()? {
                        PeekIdValue::Usable(id) => PeekId::Usable(id),
                        PeekIdValue::Null(()) => PeekId::Missing,
                        PeekIdValue::Other(_) => PeekId::Unusable,
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(peek)
    }
}

/// The deepest nesting of arrays and maps a MessagePack frame may have: what serde_json
/// allows a JSON frame, so that whatever a MessagePack client may send a JSON client could
/// have sent too (and a node's JSON reader can read it back).
const MAX_MSGPACK_DEPTH: usize = 128;

/// MessagePack decoding with the depth limit of JSON.
fn from_msgpack<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_MSGPACK_DEPTH);
    T::deserialize(&mut de)
}

impl Encoding {
    /// Both encodings, JSON first.
    pub const ALL: [Encoding; 2] = [Encoding::Json, Encoding::MsgPack];

    /// The WebSocket subprotocol name.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => "roomcast.v1.json",
            Encoding::MsgPack => "roomcast.v1.msgpack",
        }
    }

    /// The encoding for a subprotocol name, if it is one of ours.
    pub fn from_subprotocol(name: &str) -> Option<Self> {
        Encoding::ALL
            .into_iter()
            .find(|e| e.subprotocol() == name.trim())
    }

    /// Whether frames of this encoding are binary (else text).
    pub fn is_binary(self) -> bool {
        matches!(self, Encoding::MsgPack)
    }

    /// Encodes any serializable value.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Bytes, EncodeError> {
        match self {
            Encoding::Json => serde_json::to_vec(value)
                .map(Bytes::from)
                .map_err(|e| EncodeError(e.to_string())),
            Encoding::MsgPack => rmp_serde::to_vec_named(value)
                .map(Bytes::from)
                .map_err(|e| EncodeError(e.to_string())),
        }
    }

    /// Encodes a server message.
    pub fn encode_server(self, msg: &ServerMessage) -> Result<Bytes, EncodeError> {
        self.encode(msg)
    }

    /// Decodes a client message, classifying failures as `unknown_type` (a `type` we do
    /// not know) or `invalid_message` (anything else).
    pub fn decode_client(self, bytes: &[u8]) -> Result<ClientMessage, DecodeError> {
        self.decode_with_peek(bytes, &ClientMessage::TYPES)
    }

    /// Decodes a server message (for clients, tests and the load generator).
    pub fn decode_server(self, bytes: &[u8]) -> Result<ServerMessage, DecodeError> {
        self.decode_with_peek(bytes, &[])
    }

    /// Why bytes that are not a map at all cannot be a message.
    fn not_a_message(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Json => match serde_json::from_slice::<IgnoredAny>(bytes) {
                Err(e) => format!("not valid JSON: {e}"),
                Ok(_) => "a message is a JSON object with a string \"type\"".to_string(),
            },
            Encoding::MsgPack => match from_msgpack::<IgnoredAny>(bytes) {
                Err(e) => format!("not valid MessagePack: {e}"),
                Ok(_) => "a message is a MessagePack map with a string \"type\"".to_string(),
            },
        }
    }

    /// The protocol's words for what is wrong with a client message of type `kind`.
    fn explain_client(self, bytes: &[u8], kind: &str) -> Option<String> {
        let value: Option<serde_json::Value> = match self {
            Encoding::Json => serde_json::from_slice(bytes).ok(),
            Encoding::MsgPack => from_msgpack(bytes).ok(),
        };
        match value {
            Some(serde_json::Value::Object(m)) => crate::client::explain_invalid(kind, &m),
            // Only MessagePack gets here (binary or extension values, maps with keys that
            // are not strings): nothing a message can hold.
            _ => Some(
                "a message holds only strings, numbers, booleans, nil, arrays and maps with \
                 string keys (no binary or extension values)"
                    .to_string(),
            ),
        }
    }

    fn decode_with_peek<T: for<'de> Deserialize<'de>>(
        self,
        bytes: &[u8],
        known: &[&str],
    ) -> Result<T, DecodeError> {
        let full: Result<T, String> = match self {
            Encoding::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            Encoding::MsgPack => from_msgpack(bytes).map_err(|e| e.to_string()),
        };
        let err = match full {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let peek: Option<Peek> = match self {
            Encoding::Json => serde_json::from_slice(bytes).ok(),
            Encoding::MsgPack => from_msgpack(bytes).ok(),
        };
        let Some(peek) = peek else {
            return Err(DecodeError {
                code: ErrorCode::InvalidMessage,
                message: self.not_a_message(bytes),
                id: None,
            });
        };
        let id = match peek.id {
            PeekId::Usable(id) => Some(id),
            PeekId::Missing => None,
            // An id that cannot be echoed is refused as such, whatever else is wrong.
            PeekId::Unusable => {
                return Err(DecodeError {
                    code: ErrorCode::InvalidMessage,
                    message: format!(
                        "invalid \"id\": a request id is an integer or a string of 1 to {} bytes",
                        ReqId::MAX_LEN
                    ),
                    id: None,
                })
            }
        };
        Err(match peek.ty {
            PeekType::Str(t) if !known.is_empty() && !known.contains(&t.as_str()) => DecodeError {
                code: ErrorCode::UnknownType,
                message: format!("unknown message type {t:?}"),
                id,
            },
            // A known type with a field that does not fit: name the field and its shape
            // in the protocol's words (the decoder's own message names Rust types).
            PeekType::Str(t) if !known.is_empty() => DecodeError {
                code: ErrorCode::InvalidMessage,
                message: self.explain_client(bytes, &t).unwrap_or(err),
                id,
            },
            PeekType::Str(_) => DecodeError {
                code: ErrorCode::InvalidMessage,
                message: err,
                id,
            },
            PeekType::Missing => DecodeError {
                code: ErrorCode::InvalidMessage,
                message: "missing \"type\"".to_string(),
                id,
            },
            PeekType::NotString => DecodeError {
                code: ErrorCode::InvalidMessage,
                message: "\"type\" must be a string".to_string(),
                id,
            },
        })
    }
}

#[cfg(test)]
mod tests {
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
            ("[ -~]{1,40}".boxed(), arb_id())
                .prop_map(|(token, id)| ClientMessage::Auth { token, id }),
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
            0x82, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'i', b'n', b'g', 0xa2, b'i', b'd',
            0xc4, 0x02, b'a', b'b',
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
}
