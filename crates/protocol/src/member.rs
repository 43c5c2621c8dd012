//! Member events: a user's presence in a room began (its first connection in the room,
//! cluster-wide) or ended (its last one left or expired). The one fact behind the
//! `member_joined` and `member_left` messages of the bus envelope ([`BusMessage`]) and
//! of the server ([`ServerMessage`]); [`MemberChange`] lets each side build and read
//! both kinds in one place, instead of one `if joined` per kind and per layer.

use crate::envelope::BusMessage;
use crate::names::{RoomName, UserId};
use crate::server::ServerMessage;

/// Whether a user joined a room or left it (cluster-wide).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberChange {
    /// The user's first connection in the room joined.
    Joined,
    /// The user's last connection in the room left or expired.
    Left,
}

impl MemberChange {
    /// `Joined` when `joined`, else `Left`.
    pub fn from_joined(joined: bool) -> Self {
        if joined {
            MemberChange::Joined
        } else {
            MemberChange::Left
        }
    }

    /// The message `type` on the wire: `member_joined` or `member_left`.
    pub fn kind(self) -> &'static str {
        match self {
            MemberChange::Joined => "member_joined",
            MemberChange::Left => "member_left",
        }
    }
}

impl BusMessage {
    /// The bus's `member_joined` or `member_left` message.
    pub fn member(change: MemberChange, room: RoomName, user: UserId) -> Self {
        match change {
            MemberChange::Joined => BusMessage::MemberJoined { room, user },
            MemberChange::Left => BusMessage::MemberLeft { room, user },
        }
    }

    /// The member event this message carries, or `None` for other kinds (consumes the
    /// message, like [`BusMessage::into_publication`]).
    pub fn into_member(self) -> Option<(MemberChange, RoomName, UserId)> {
        match self {
            BusMessage::MemberJoined { room, user } => Some((MemberChange::Joined, room, user)),
            BusMessage::MemberLeft { room, user } => Some((MemberChange::Left, room, user)),
            _ => None,
        }
    }
}

impl ServerMessage {
    /// The `member_joined` or `member_left` message clients receive.
    pub fn member(change: MemberChange, room: RoomName, user: UserId) -> Self {
        match change {
            MemberChange::Joined => ServerMessage::MemberJoined { room, user },
            MemberChange::Left => ServerMessage::MemberLeft { room, user },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Encoding, Envelope};

    fn names() -> (RoomName, UserId) {
        (
            RoomName::new("lobby").expect("room"),
            UserId::new("gina").expect("user"),
        )
    }

    #[test]
    fn bus_member_events_round_trip_through_the_envelope() {
        for change in [MemberChange::Joined, MemberChange::Left] {
            let (room, user) = names();
            let msg = BusMessage::member(change, room.clone(), user.clone());
            let bytes = Envelope::new("n1", msg).to_msgpack().expect("encode");
            let env = Envelope::from_msgpack(&bytes).expect("decode");
            assert_eq!(env.msg.into_member(), Some((change, room, user)));
        }
    }

    #[test]
    fn kinds_are_the_wire_types_of_both_sides() {
        for change in [MemberChange::Joined, MemberChange::Left] {
            let (room, user) = names();
            let server = ServerMessage::member(change, room.clone(), user.clone());
            assert_eq!(server.kind(), change.kind());
            let json = Encoding::Json.encode(&server).expect("encode");
            let v: serde_json::Value = serde_json::from_slice(&json).expect("json");
            assert_eq!(v["type"], change.kind());
            assert_eq!(v["room"], "lobby");
            assert_eq!(v["user"], "gina");
            let bus = serde_json::to_value(BusMessage::member(change, room, user)).expect("bus");
            assert_eq!(bus, v, "the bus and the client see the same map");
        }
    }

    #[test]
    fn other_messages_are_no_member_event() {
        let (_, user) = names();
        let msg = BusMessage::Disconnect { user, code: 4002 };
        assert_eq!(msg.into_member(), None);
        assert_eq!(MemberChange::from_joined(true), MemberChange::Joined);
        assert_eq!(MemberChange::from_joined(false), MemberChange::Left);
    }
}
