//! Messages from clients to the server (docs/protocol.md section 3).

use crate::names::{EventName, RoomName, UserId};
use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The `id` a client puts on a request so that it can match the reply: a string of
/// 1 to [`ReqId::MAX_LEN`] bytes or an integer (signed 64-bit), echoed back unchanged.
/// Deserializing refuses anything else (an empty or longer string, a float, a larger
/// integer, any other type), so a decoded message only ever carries a usable id.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum ReqId {
    /// An integer id.
    Int(i64),
    /// A string id.
    Str(String),
}

impl ReqId {
    /// The longest string id accepted, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Whether the id is within limits.
    pub fn is_valid(&self) -> bool {
        match self {
            ReqId::Int(_) => true,
            ReqId::Str(s) => !s.is_empty() && s.len() <= Self::MAX_LEN,
        }
    }

    /// A stable text form, for idempotency keys.
    pub fn key(&self) -> String {
        match self {
            ReqId::Int(i) => format!("i{i}"),
            ReqId::Str(s) => format!("s{s}"),
        }
    }
}

impl<'de> Deserialize<'de> for ReqId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ReqIdVisitor)
    }
}

struct ReqIdVisitor;

impl<'de> Visitor<'de> for ReqIdVisitor {
    type Value = ReqId;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a request id: an integer or a string of 1 to {} bytes",
            ReqId::MAX_LEN
        )
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ReqId, E> {
        Ok(ReqId::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ReqId, E> {
        i64::try_from(v)
            .map(ReqId::Int)
            .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ReqId, E> {
        if v.is_empty() || v.len() > ReqId::MAX_LEN {
            return Err(E::invalid_length(v.len(), &self));
        }
        Ok(ReqId::Str(v.to_string()))
    }
}

impl fmt::Debug for ReqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReqId::Int(i) => write!(f, "{i}"),
            ReqId::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// A position in a room's history: the unit of recovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The offset of the last message seen.
    pub offset: u64,
    /// The epoch of the room's history that offset belongs to.
    pub epoch: String,
}

/// One client request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Authenticate (or refresh the token of) the connection.
    Auth {
        /// The JWT.
        token: String,
        /// Optional request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<ReqId>,
    },
    /// Join a room, optionally replaying history.
    Join {
        /// The room.
        room: RoomName,
        /// Replay the n most recent messages.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        history: Option<u32>,
        /// Recover everything after this position of an earlier session.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<StreamPosition>,
        /// Optional request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<ReqId>,
        /// Receive the room's member events (`member_joined`, `member_left`,
        /// `member_count`); `false` asks for none of them. Default true.
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        member_events: bool,
    },
    /// Leave a room.
    Leave {
        /// The room.
        room: RoomName,
        /// Optional request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<ReqId>,
    },
    /// Publish to a room.
    Publish {
        /// The room.
        room: RoomName,
        /// The application's event name.
        event: EventName,
        /// Any JSON value.
        #[serde(default)]
        data: serde_json::Value,
        /// Request id: asks for an `ack`, and makes the publish idempotent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<ReqId>,
        /// No history, may be dropped under pressure.
        #[serde(default, skip_serializing_if = "is_false")]
        volatile: bool,
        /// Deliver to the sender too.
        #[serde(default, skip_serializing_if = "is_false")]
        echo: bool,
    },
    /// Send to every connection of one user.
    Send {
        /// The user.
        to: UserId,
        /// The application's event name.
        event: EventName,
        /// Any JSON value.
        #[serde(default)]
        data: serde_json::Value,
        /// Request id: asks for an `ack`, and makes the send idempotent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<ReqId>,
    },
    /// Ask who is in a room, cluster-wide.
    Presence {
        /// The room.
        room: RoomName,
        /// Cut the member list to this many (default 1000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        /// Optional request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<ReqId>,
    },
    /// Application-level ping.
    Ping {
        /// Optional request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<ReqId>,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_true(b: &bool) -> bool {
    *b
}

fn yes() -> bool {
    true
}

impl ClientMessage {
    /// Every `type` a client may send.
    pub const TYPES: [&'static str; 7] = [
        "auth", "join", "leave", "publish", "send", "presence", "ping",
    ];

    /// The request id, when the client gave one.
    pub fn id(&self) -> Option<&ReqId> {
        match self {
            ClientMessage::Auth { id, .. }
            | ClientMessage::Join { id, .. }
            | ClientMessage::Leave { id, .. }
            | ClientMessage::Publish { id, .. }
            | ClientMessage::Send { id, .. }
            | ClientMessage::Presence { id, .. }
            | ClientMessage::Ping { id } => id.as_ref(),
        }
    }

    /// The `type` of the message, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Auth { .. } => "auth",
            ClientMessage::Join { .. } => "join",
            ClientMessage::Leave { .. } => "leave",
            ClientMessage::Publish { .. } => "publish",
            ClientMessage::Send { .. } => "send",
            ClientMessage::Presence { .. } => "presence",
            ClientMessage::Ping { .. } => "ping",
        }
    }
}

/// The shape of a field of a client message, in docs/protocol.md's words (never a Rust
/// type name: these words go back to clients in `invalid_message` errors).
#[derive(Clone, Copy)]
enum Shape {
    /// Any string (the JWT).
    Text,
    /// A room name.
    Room,
    /// A user id.
    User,
    /// An event name.
    Event,
    /// An integer from 0 to 2^32 - 1 (`history`, `limit`); null means absent.
    Count,
    /// `{"offset": <integer>, "epoch": "<string>"}`; null means absent.
    Since,
    /// `true` or `false`.
    Flag,
}

impl Shape {
    fn expected(self) -> &'static str {
        match self {
            Shape::Text => "a string",
            Shape::Room => {
                "a room name (a string of 1 to 128 bytes: letters, digits and _-:.@/=+#~!$)"
            }
            Shape::User => "a user id (a string of 1 to 128 bytes, no control characters)",
            Shape::Event => "an event name (a string of 1 to 64 bytes, no control characters)",
            Shape::Count => "an integer from 0 to 4294967295",
            Shape::Since => r#"{"offset": <integer>, "epoch": "<string>"}"#,
            Shape::Flag => "true or false",
        }
    }

    /// Whether null stands for "absent".
    fn nullable(self) -> bool {
        matches!(self, Shape::Count | Shape::Since)
    }

    /// What is wrong with `v`, if anything.
    fn problem(self, v: &serde_json::Value) -> Option<String> {
        use serde_json::Value;
        let expected = || Some(format!("expected {}", self.expected()));
        let name = |r: Result<(), crate::names::NameError>| {
            r.err().map(|e| {
                let why = match e {
                    crate::names::NameError::Empty(_) => "must not be empty".to_string(),
                    crate::names::NameError::TooLong(_, n) => format!("is longer than {n} bytes"),
                    crate::names::NameError::BadChar(_, c) => {
                        format!("contains a character that is not allowed: {c:?}")
                    }
                };
                format!("{why}; expected {}", self.expected())
            })
        };
        match (self, v) {
            (Shape::Text, Value::String(_)) => None,
            (Shape::Room, Value::String(s)) => name(RoomName::new(s).map(drop)),
            (Shape::User, Value::String(s)) => name(UserId::new(s).map(drop)),
            (Shape::Event, Value::String(s)) => name(EventName::new(s).map(drop)),
            (Shape::Count, v) if v.as_u64().is_some_and(|n| n <= u64::from(u32::MAX)) => None,
            (Shape::Flag, Value::Bool(_)) => None,
            (Shape::Since, Value::Object(m)) => {
                let why = match (m.get("offset"), m.get("epoch")) {
                    (None, _) => "\"offset\" is missing",
                    (Some(o), _) if o.as_u64().is_none() => {
                        "\"offset\" must be an integer from 0 to 18446744073709551615"
                    }
                    (_, None) => "\"epoch\" is missing",
                    (_, Some(Value::String(_))) => return None,
                    (_, Some(_)) => "\"epoch\" must be a string",
                };
                Some(format!("expected {} ({why})", self.expected()))
            }
            _ => expected(),
        }
    }
}

/// The fields of each client message type that can be wrong: (name, shape, required).
/// `data` takes any value and `id` is checked before (codec).
fn fields(kind: &str) -> &'static [(&'static str, Shape, bool)] {
    match kind {
        "auth" => &[("token", Shape::Text, true)],
        "join" => &[
            ("room", Shape::Room, true),
            ("history", Shape::Count, false),
            ("since", Shape::Since, false),
            ("member_events", Shape::Flag, false),
        ],
        "leave" => &[("room", Shape::Room, true)],
        "publish" => &[
            ("room", Shape::Room, true),
            ("event", Shape::Event, true),
            ("volatile", Shape::Flag, false),
            ("echo", Shape::Flag, false),
        ],
        "send" => &[("to", Shape::User, true), ("event", Shape::Event, true)],
        "presence" => &[("room", Shape::Room, true), ("limit", Shape::Count, false)],
        _ => &[],
    }
}

/// Why a message of the known type `kind` could not be decoded, in the protocol's words:
/// the first field that is missing or has the wrong shape, named, with the shape it must
/// have (`since: expected {"offset": <integer>, "epoch": "<string>"} ("offset" is
/// missing)`). `None` when every field fits (the decoder's own message is used then).
pub(crate) fn explain_invalid(
    kind: &str,
    msg: &serde_json::Map<String, serde_json::Value>,
) -> Option<String> {
    for &(field, shape, required) in fields(kind) {
        let why = match msg.get(field) {
            None if required => Some(format!("missing; expected {}", shape.expected())),
            None => None,
            Some(serde_json::Value::Null) if shape.nullable() => None,
            Some(v) => shape.problem(v),
        };
        if let Some(why) = why {
            return Some(format!("{field}: {why}"));
        }
    }
    None
}
