//! The bus envelope (PROTOCOL.md section 6): what nodes, and backends using the emitter
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
    pub msg: BusMessage,
}

/// What an envelope carries. `type: "message"` is the `message` object of PROTOCOL.md
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

impl BusMessage {
    /// The room message as clients see it, or `None` for other kinds.
    pub fn to_publication(&self) -> Option<Publication> {
        match self {
            BusMessage::Message {
                room,
                event,
                data,
                from,
                offset,
                ts,
                ..
            } => Some(Publication {
                room: room.clone(),
                event: event.clone(),
                data: data.clone(),
                from: from.clone(),
                offset: *offset,
                ts: *ts,
            }),
            _ => None,
        }
    }

    /// The direct message as clients see it, or `None` for other kinds.
    pub fn to_direct(&self) -> Option<DirectMessage> {
        match self {
            BusMessage::Direct {
                from,
                event,
                data,
                ts,
                ..
            } => Some(DirectMessage {
                from: from.clone(),
                event: event.clone(),
                data: data.clone(),
                ts: *ts,
            }),
            _ => None,
        }
    }
}

impl Envelope {
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

    /// Decodes MessagePack; refuses versions other than 1.
    pub fn from_msgpack(bytes: &[u8]) -> Result<Self, crate::DecodeError> {
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
        Ok(env)
    }
}
