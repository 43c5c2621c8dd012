//! Messages from the server to clients (docs/protocol.md section 4).

use crate::client::ReqId;
use crate::error::ErrorCode;
use crate::names::{EventName, RoomName, UserId};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

/// The `from` of messages published by the backend API.
pub const SERVER_USER: &str = "server";

/// A message published to a room: what every member receives, and what history holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Publication {
    /// The room.
    pub room: RoomName,
    /// The application's event name.
    pub event: EventName,
    /// The application's payload.
    #[serde(default)]
    pub data: serde_json::Value,
    /// The user who published it (`"server"` for the backend API).
    pub from: UserId,
    /// Its position in the room's history; absent when volatile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// When the server accepted it, in ms since the Unix epoch.
    pub ts: u64,
}

/// Serializes a [`Publication`] as a complete `message` frame (with its `type`) without
/// copying it: the fan-out path encodes each publication once through this.
pub struct MessageFrame<'a>(pub &'a Publication);

impl Serialize for MessageFrame<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = self.0;
        let n = if p.offset.is_some() { 7 } else { 6 };
        let mut m = s.serialize_map(Some(n))?;
        m.serialize_entry("type", "message")?;
        m.serialize_entry("room", &p.room)?;
        m.serialize_entry("event", &p.event)?;
        m.serialize_entry("data", &p.data)?;
        m.serialize_entry("from", &p.from)?;
        if let Some(o) = p.offset {
            m.serialize_entry("offset", &o)?;
        }
        m.serialize_entry("ts", &p.ts)?;
        m.end()
    }
}

/// A message sent to one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectMessage {
    /// The sender (`"server"` for the backend API).
    pub from: UserId,
    /// The application's event name.
    pub event: EventName,
    /// The application's payload.
    #[serde(default)]
    pub data: serde_json::Value,
    /// When the server accepted it, in ms since the Unix epoch.
    pub ts: u64,
}

/// One user present in a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The user.
    pub user: UserId,
    /// How many connections of that user are in the room, cluster-wide.
    pub connections: u32,
}

/// How many users and connections are in a room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    /// Distinct users.
    pub users: u64,
    /// Connections.
    pub connections: u64,
}

/// One server message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// First message after a successful authentication.
    Welcome {
        /// This connection's id.
        session: String,
        /// The node serving it.
        node: String,
        /// The authenticated user.
        user: UserId,
        /// Heartbeat interval, seconds.
        heartbeat: u64,
        /// `"jwt"` or `"none"`.
        auth: String,
        /// The id of the `auth` request, when there was one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<ReqId>,
    },
    /// A token refresh was accepted.
    AuthOk {
        /// The new expiry, seconds since the Unix epoch.
        exp: u64,
        /// The request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<ReqId>,
    },
    /// A room message.
    Message(Publication),
    /// A message to this user.
    Direct(DirectMessage),
    /// A join succeeded.
    Joined {
        /// The room.
        room: RoomName,
        /// The room's current offset (the last message's).
        offset: u64,
        /// The epoch of the room's history.
        epoch: String,
        /// Whether everything after `since` was replayed.
        recovered: bool,
        /// Replayed or recent messages, oldest first.
        messages: Vec<Publication>,
        /// The request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<ReqId>,
    },
    /// A leave succeeded.
    Left {
        /// The room.
        room: RoomName,
        /// The request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<ReqId>,
    },
    /// A publish or send with an id was accepted.
    Ack {
        /// The request id.
        id: ReqId,
        /// The offset the publish got (absent for send and volatile).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    /// Who is in a room.
    Presence {
        /// The room.
        room: RoomName,
        /// Members, cut to the request's limit.
        members: Vec<Member>,
        /// Totals, never cut.
        count: Count,
        /// The request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<ReqId>,
    },
    /// Answer to `ping`.
    Pong {
        /// The request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<ReqId>,
    },
    /// A user's first connection joined a room.
    MemberJoined {
        /// The room.
        room: RoomName,
        /// The user.
        user: UserId,
    },
    /// A user's last connection left a room.
    MemberLeft {
        /// The room.
        room: RoomName,
        /// The user.
        user: UserId,
    },
    /// How many are in a room whose member events are counted rather than listed (more
    /// than `--member-events-max` users), cluster-wide; sent at most once a second while
    /// the count changes.
    MemberCount {
        /// The room.
        room: RoomName,
        /// Distinct users.
        users: u64,
        /// Connections.
        connections: u64,
    },
    /// A request failed.
    Error {
        /// What went wrong, as a code.
        code: ErrorCode,
        /// What went wrong, for people.
        message: String,
        /// The request id, when the request had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<ReqId>,
    },
}

impl ServerMessage {
    /// The `type` of the message, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::Welcome { .. } => "welcome",
            ServerMessage::AuthOk { .. } => "auth_ok",
            ServerMessage::Message(_) => "message",
            ServerMessage::Direct(_) => "direct",
            ServerMessage::Joined { .. } => "joined",
            ServerMessage::Left { .. } => "left",
            ServerMessage::Ack { .. } => "ack",
            ServerMessage::Presence { .. } => "presence",
            ServerMessage::Pong { .. } => "pong",
            ServerMessage::MemberJoined { .. } => "member_joined",
            ServerMessage::MemberLeft { .. } => "member_left",
            ServerMessage::MemberCount { .. } => "member_count",
            ServerMessage::Error { .. } => "error",
        }
    }

    /// An `error` reply.
    pub fn error(code: ErrorCode, message: impl Into<String>, id: Option<ReqId>) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
            id,
        }
    }
}
