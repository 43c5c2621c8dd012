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
