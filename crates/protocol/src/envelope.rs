//! The bus envelope (docs/protocol.md section 6): what nodes, and backends using the emitter
//! path, write to the room, user and control channels, always as MessagePack.

use crate::names::{EventName, RoomName, UserId};
use crate::server::{DirectMessage, Publication};
use serde::{Deserialize, Serialize};

/// The envelope version this crate writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;

/// `{v: 1, node, msg}`: one message on a bus channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The envelope version (1).
    pub v: u8,
    /// The origin node (or backend) name.
    pub node: String,
    /// The message.
    #[serde(deserialize_with = "bus_message")]
    pub msg: BusMessage,
}

/// What an envelope carries. `type: "message"` is the `message` object of docs/protocol.md
/// section 4; the other types are roomcast's own (member events, direct messages,
/// control), documented in docs/protocol.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BusMessage {
    /// A room message. `offset` is absent for volatile and emitter messages.
    Message {
        /// The room.
        room: RoomName,
        /// The application's event name.
        event: EventName,
        /// The payload.
        #[serde(default)]
        data: serde_json::Value,
        /// The publisher.
        from: UserId,
        /// Position in the room's history.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// Server time, ms since the Unix epoch (emitters may omit it).
        #[serde(default)]
        ts: u64,
        /// The epoch of the room's history `offset` belongs to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        /// A connection not to deliver to (the publisher, when it did not ask for echo).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skip: Option<String>,
    },
    /// A user's first connection in the room, cluster-wide, joined.
    MemberJoined {
        /// The room.
        room: RoomName,
        /// The user.
        user: UserId,
    },
    /// A user's last connection in the room, cluster-wide, left or expired.
    MemberLeft {
        /// The room.
        room: RoomName,
        /// The user.
        user: UserId,
    },
    /// A message for every connection of `to`.
    Direct {
        /// The recipient.
        to: UserId,
        /// The sender.
        from: UserId,
        /// The application's event name.
        event: EventName,
        /// The payload.
        #[serde(default)]
        data: serde_json::Value,
        /// Server time, ms since the Unix epoch.
        #[serde(default)]
        ts: u64,
    },
    /// Close every connection of `user` on every node with close code `code`.
    Disconnect {
        /// The user.
        user: UserId,
        /// The close code (4002 by default).
        #[serde(default = "default_disconnect_code")]
        code: u16,
    },
}

fn default_disconnect_code() -> u16 {
    crate::error::close::INVALID_TOKEN
}

/// The fields of [`BusMessage::Message`] after its tag, decoded straight from the map;
/// the same names, defaults and types as the variant.
#[derive(Deserialize)]
struct MessageFields {
    room: RoomName,
    event: EventName,
    #[serde(default)]
    data: serde_json::Value,
    from: UserId,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    ts: u64,
    #[serde(default)]
    epoch: Option<String>,
    #[serde(default)]
    skip: Option<String>,
    /// A second tag: refused, as the derived decoder refuses it.
    #[serde(default, rename = "type")]
    tag_again: Option<serde::de::IgnoredAny>,
}

/// Decodes an envelope's `msg`. Nodes and emitters write the tag first; then a room
/// message (every message a node receives, most of them) is decoded straight into its
/// variant. The derived decoder of an internally tagged enum instead buffers the whole
/// map (the payload included) before it looks at the tag, which cost a third of a decode.
/// Other kinds, and maps whose tag is not first, are buffered and decoded the derived way:
/// the same messages are accepted and refused either way.
fn bus_message<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BusMessage, D::Error> {
    d.deserialize_map(BusMessageVisitor)
}

struct BusMessageVisitor;

impl<'de> serde::de::Visitor<'de> for BusMessageVisitor {
    type Value = BusMessage;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a bus message (a map with a `type`)")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<BusMessage, A::Error> {
        let mut rest = serde_json::Map::new();
        if let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "type" {
                let tag: std::borrow::Cow<'de, str> = map.next_value()?;
                if tag == "message" {
                    let f = MessageFields::deserialize(
                        serde::de::value::MapAccessDeserializer::new(map),
                    )?;
                    if f.tag_again.is_some() {
                        return Err(serde::de::Error::duplicate_field("type"));
                    }
                    return Ok(BusMessage::Message {
                        room: f.room,
                        event: f.event,
                        data: f.data,
                        from: f.from,
                        offset: f.offset,
                        ts: f.ts,
                        epoch: f.epoch,
                        skip: f.skip,
                    });
                }
                rest.insert(
                    key.into_owned(),
                    serde_json::Value::String(tag.into_owned()),
                );
            } else {
                rest.insert(key.into_owned(), map.next_value()?);
            }
        }
        while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
            if rest.contains_key(&k) {
                return Err(serde::de::Error::custom(format!("duplicate field `{k}`")));
            }
            rest.insert(k, v);
        }
        BusMessage::deserialize(serde_json::Value::Object(rest)).map_err(serde::de::Error::custom)
    }
}

impl BusMessage {
    /// The room message as clients see it, or `None` for other kinds, as
    /// `(publication, epoch, skip)`: the epoch of the room history its offset belongs to,
    /// and the connection it must not be delivered to (echo suppression: the publisher's,
    /// when it did not ask for its own messages). Consumes the message: the payload
    /// moves, it is not copied (this runs for every message a node receives).
    pub fn into_publication(self) -> Option<(Publication, Option<String>, Option<String>)> {
        match self {
            BusMessage::Message {
                room,
                event,
                data,
                from,
                offset,
                ts,
                epoch,
                skip,
            } => Some((
                Publication {
                    room,
                    event,
                    data,
                    from,
                    offset,
                    ts,
                },
                epoch,
                skip,
            )),
            _ => None,
        }
    }

    /// The direct message as clients see it, or `None` for other kinds (consumes the
    /// message; the payload moves).
    pub fn into_direct(self) -> Option<DirectMessage> {
        match self {
            BusMessage::Direct {
                from,
                event,
                data,
                ts,
                ..
            } => Some(DirectMessage {
                from,
                event,
                data,
                ts,
            }),
            _ => None,
        }
    }
}

/// Why a decoded envelope is refused: what a node never writes (docs/protocol.md section 6:
/// input from Redis is validated like a client's frame).
fn invalid(env: &Envelope) -> Option<String> {
    let name_ok =
        |s: &str, max: usize| !s.is_empty() && s.len() <= max && !s.chars().any(char::is_control);
    if !name_ok(&env.node, Envelope::MAX_NAME) {
        return Some("node name must be 1 to 128 printable bytes".into());
    }
    if let BusMessage::Message {
        offset,
        epoch,
        skip,
        ..
    } = &env.msg
    {
        match (offset, epoch) {
            (None, None) => {}
            (Some(0), _) => return Some("offset 0 (offsets start at 1)".into()),
            (Some(_), Some(e)) => {
                if e.is_empty()
                    || e.len() > Envelope::MAX_EPOCH
                    || !e.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Some("epoch must be 1 to 64 printable ASCII bytes".into());
                }
            }
            (Some(_), None) => return Some("an offset without an epoch".into()),
            (None, Some(_)) => return Some("an epoch without an offset".into()),
        }
        if skip
            .as_deref()
            .is_some_and(|s| !name_ok(s, Envelope::MAX_NAME))
        {
            return Some("skip must be a connection id of 1 to 128 printable bytes".into());
        }
    }
    None
}

impl Envelope {
    /// The largest envelope a node reads (bytes): room for a message whose `data` is
    /// as large as any `--max-message-size` a deployment sensibly sets, far below what
    /// Redis's pub/sub output limits would let through. Larger ones are dropped unread.
    pub const MAX_BYTES: usize = 4 * 1024 * 1024;
    /// Longest node name and `skip` connection id (bytes).
    pub const MAX_NAME: usize = 128;
    /// Longest epoch (bytes).
    pub const MAX_EPOCH: usize = 64;

    /// Wraps `msg` from `node`.
    pub fn new(node: impl Into<String>, msg: BusMessage) -> Self {
        Envelope {
            v: ENVELOPE_VERSION,
            node: node.into(),
            msg,
        }
    }

    /// Encodes as MessagePack with string keys.
    pub fn to_msgpack(&self) -> Result<Vec<u8>, crate::EncodeError> {
        rmp_serde::to_vec_named(self).map_err(|e| crate::EncodeError(e.to_string()))
    }

    /// Decodes MessagePack; refuses versions other than 1, envelopes over
    /// [`Envelope::MAX_BYTES`], names that are not valid (rooms, users, events, the
    /// node, `skip`), and an `offset` without an `epoch` or the reverse. The close code
    /// of a `disconnect` is the reader's to judge (`close::valid_for_disconnect`).
    pub fn from_msgpack(bytes: &[u8]) -> Result<Self, crate::DecodeError> {
        if bytes.len() > Self::MAX_BYTES {
            return Err(crate::DecodeError {
                code: crate::ErrorCode::TooLarge,
                message: format!(
                    "envelope of {} bytes, more than {}",
                    bytes.len(),
                    Self::MAX_BYTES
                ),
                id: None,
            });
        }
        let env: Envelope = rmp_serde::from_slice(bytes).map_err(|e| crate::DecodeError {
            code: crate::ErrorCode::InvalidMessage,
            message: format!("bad envelope: {e}"),
            id: None,
        })?;
        if env.v != ENVELOPE_VERSION {
            return Err(crate::DecodeError {
                code: crate::ErrorCode::InvalidMessage,
                message: format!("unsupported envelope version {}", env.v),
                id: None,
            });
        }
        if let Some(why) = invalid(&env) {
            return Err(crate::DecodeError {
                code: crate::ErrorCode::InvalidMessage,
                message: format!("bad envelope: {why}"),
                id: None,
            });
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(offset: Option<u64>, epoch: Option<&str>, skip: Option<&str>) -> BusMessage {
        BusMessage::Message {
            room: RoomName::new("r").expect("room"),
            event: EventName::new("e").expect("event"),
            data: json!(1),
            from: UserId::new("u").expect("user"),
            offset,
            ts: 1,
            epoch: epoch.map(str::to_string),
            skip: skip.map(str::to_string),
        }
    }

    fn decodes(node: &str, msg: BusMessage) -> bool {
        let bytes = Envelope::new(node, msg).to_msgpack().expect("encode");
        Envelope::from_msgpack(&bytes).is_ok()
    }

    /// A map written in the order given, duplicates and all.
    struct Pairs(Vec<(&'static str, serde_json::Value)>);

    impl Serialize for Pairs {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut m = s.serialize_map(Some(self.0.len()))?;
            for (k, v) in &self.0 {
                m.serialize_entry(k, v)?;
            }
            m.end()
        }
    }

    #[derive(Serialize)]
    struct Env {
        v: u8,
        node: &'static str,
        msg: Pairs,
    }

    /// `value` (a JSON object: keys in alphabetical order, so `type` comes last) as the
    /// `msg` of an envelope.
    fn envelope_with(msg: serde_json::Value) -> Vec<u8> {
        rmp_serde::to_vec_named(&json!({"v": 1, "node": "n1", "msg": msg})).expect("encode")
    }

    #[test]
    fn the_tag_anywhere_in_the_map_decodes_the_same() {
        let sent = message(Some(3), Some("0a1b2c3d4e5f"), Some("c1"));
        let first = Envelope::new("n1", sent.clone())
            .to_msgpack()
            .expect("encode");
        let last = envelope_with(serde_json::to_value(&sent).expect("json"));
        assert_ne!(first, last, "the tag moved");
        for bytes in [first, last] {
            assert_eq!(Envelope::from_msgpack(&bytes).expect("decodes").msg, sent);
        }
        for other in [
            BusMessage::MemberJoined {
                room: RoomName::new("r").expect("room"),
                user: UserId::new("u").expect("user"),
            },
            BusMessage::Disconnect {
                user: UserId::new("u").expect("user"),
                code: 4002,
            },
        ] {
            let bytes = Envelope::new("n1", other.clone())
                .to_msgpack()
                .expect("encode");
            assert_eq!(Envelope::from_msgpack(&bytes).expect("decodes").msg, other);
            let bytes = envelope_with(serde_json::to_value(&other).expect("json"));
            assert_eq!(Envelope::from_msgpack(&bytes).expect("decodes").msg, other);
        }
    }

    #[test]
    fn a_room_message_missing_a_field_or_tagged_twice_is_refused() {
        let mut m = serde_json::to_value(message(None, None, None)).expect("json");
        m.as_object_mut().expect("map").remove("room");
        assert!(
            Envelope::from_msgpack(&envelope_with(m)).is_err(),
            "no room"
        );
        // Tag first, then every field, then the tag again.
        let msg = Pairs(vec![
            ("type", json!("message")),
            ("room", json!("r")),
            ("event", json!("e")),
            ("from", json!("u")),
            ("ts", json!(1)),
            ("type", json!("message")),
        ]);
        let derived = rmp_serde::to_vec_named(&msg).expect("encode");
        assert!(
            rmp_serde::from_slice::<BusMessage>(&derived).is_err(),
            "derived refuses it"
        );
        let bytes = rmp_serde::to_vec_named(&Env {
            v: 1,
            node: "n1",
            msg,
        })
        .expect("encode");
        assert!(Envelope::from_msgpack(&bytes).is_err(), "tagged twice");
    }

    #[test]
    fn what_a_node_writes_decodes() {
        assert!(decodes(
            "n1",
            message(Some(3), Some("0a1b2c3d4e5f"), Some("c1"))
        ));
        assert!(decodes("backend", message(None, None, None)));
    }

    #[test]
    fn refuses_what_no_node_writes() {
        assert!(!decodes("", message(None, None, None)), "empty node");
        assert!(
            !decodes(&"n".repeat(129), message(None, None, None)),
            "long node"
        );
        assert!(
            !decodes("a\nb", message(None, None, None)),
            "control char in node"
        );
        assert!(!decodes("n", message(Some(0), Some("e"), None)), "offset 0");
        assert!(
            !decodes("n", message(Some(5), None, None)),
            "offset without epoch"
        );
        assert!(
            !decodes("n", message(None, Some("e"), None)),
            "epoch without offset"
        );
        assert!(
            !decodes("n", message(Some(5), Some(""), None)),
            "empty epoch"
        );
        assert!(
            !decodes("n", message(Some(5), Some(&"e".repeat(65)), None)),
            "long epoch"
        );
        assert!(
            !decodes("n", message(Some(5), Some("e f"), None)),
            "space in epoch"
        );
        assert!(!decodes("n", message(None, None, Some(""))), "empty skip");
        let big = vec![0u8; Envelope::MAX_BYTES + 1];
        let e = Envelope::from_msgpack(&big).expect_err("too large");
        assert_eq!(e.code, crate::ErrorCode::TooLarge);
    }

    #[test]
    fn names_inside_are_validated() {
        // a room name with a brace (never valid) written by hand
        let mut m = serde_json::Map::new();
        m.insert("type".into(), json!("member_joined"));
        m.insert("room".into(), json!("a{b}"));
        m.insert("user".into(), json!("u"));
        let raw = json!({"v": 1, "node": "n", "msg": m});
        let bytes = rmp_serde::to_vec_named(&raw).expect("encode");
        assert!(Envelope::from_msgpack(&bytes).is_err());
    }
}
