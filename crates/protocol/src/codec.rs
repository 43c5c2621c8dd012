//! The two encodings of the protocol, chosen per connection by WebSocket subprotocol:
//! JSON in text frames and MessagePack (maps with string keys) in binary frames.

use crate::client::{ClientMessage, ReqId};
use crate::error::ErrorCode;
use crate::server::ServerMessage;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A wire encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `roomcast.v1.json`: JSON in text frames (the default).
    Json,
    /// `roomcast.v1.msgpack`: MessagePack in binary frames.
    MsgPack,
}

/// Why bytes could not be decoded into a message; carries the PROTOCOL.md code to
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

/// Just enough of a frame to classify a decode failure and answer with its id.
#[derive(Deserialize)]
struct Peek {
    #[serde(rename = "type", default)]
    ty: Option<String>,
    #[serde(default)]
    id: Option<ReqId>,
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

    fn decode_with_peek<T: for<'de> Deserialize<'de>>(
        self,
        bytes: &[u8],
        known: &[&str],
    ) -> Result<T, DecodeError> {
        let full: Result<T, String> = match self {
            Encoding::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            Encoding::MsgPack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
        };
        let err = match full {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let peek: Option<Peek> = match self {
            Encoding::Json => serde_json::from_slice(bytes).ok(),
            Encoding::MsgPack => rmp_serde::from_slice(bytes).ok(),
        };
        let (ty, id) = match peek {
            Some(p) => (p.ty, p.id.filter(ReqId::is_valid)),
            None => (None, None),
        };
        match ty {
            Some(t) if !known.is_empty() && !known.contains(&t.as_str()) => Err(DecodeError {
                code: ErrorCode::UnknownType,
                message: format!("unknown message type {t:?}"),
                id,
            }),
            Some(_) => Err(DecodeError {
                code: ErrorCode::InvalidMessage,
                message: err,
                id,
            }),
            None => Err(DecodeError {
                code: ErrorCode::InvalidMessage,
                message: format!("not a message object with a string \"type\": {err}"),
                id,
            }),
        }
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
                arb_id()
            )
                .prop_map(|(room, history, since, id)| ClientMessage::Join {
                    room,
                    history,
                    since: since.map(|(offset, epoch)| crate::StreamPosition { offset, epoch }),
                    id
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
