//! Every Redis key and channel name the bridge uses (docs/protocol.md section 6), and the
//! reverse: which channel a pub/sub message came on. Nothing else in the crate formats
//! a key, so the layout can be read (and changed) here alone.

use roomcast_protocol::{RoomName, UserId};

/// The separator inside a presence entry (`<user>\x1f<conn>\x1f<node>`): a control
/// character, which no user id may contain.
pub(crate) const PRESENCE_SEP: char = '\x1f';

/// Builds names under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

/// What a pub/sub channel is for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Channel<'a> {
    /// `<prefix>:room:<room>`.
    Room(&'a str),
    /// `<prefix>:user:<user>`.
    User(&'a str),
    /// `<prefix>:control`.
    Control,
    /// Anything else.
    Other,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    /// Channel of a room's messages and member events.
    pub(crate) fn room_channel(&self, room: &RoomName) -> String {
        format!("{}:room:{}", self.prefix, room)
    }

    /// Pattern matching every room channel.
    pub(crate) fn room_pattern(&self) -> String {
        format!("{}:room:*", self.prefix)
    }

    /// Channel of a user's direct messages.
    pub(crate) fn user_channel(&self, user: &UserId) -> String {
        format!("{}:user:{}", self.prefix, user)
    }

    /// Pattern matching every user channel.
    pub(crate) fn user_pattern(&self) -> String {
        format!("{}:user:*", self.prefix)
    }

    /// The cluster's control channel (disconnects).
    pub(crate) fn control_channel(&self) -> String {
        format!("{}:control", self.prefix)
    }

    /// A room's history stream; entry ids are `<offset>-0`, field `d` the envelope.
    pub(crate) fn history(&self, room: &RoomName) -> String {
        format!("{}:history:{}", self.prefix, room)
    }

    /// A room's meta hash: `s` the last offset, `e` the epoch.
    pub(crate) fn meta(&self, room: &RoomName) -> String {
        format!("{}:meta:{}", self.prefix, room)
    }

    /// The idempotency record of a publish or send key.
    pub(crate) fn dedupe(&self, key: &str) -> String {
        format!("{}:dedupe:{}", self.prefix, key)
    }

    /// A room's presence entries (ZSET of `<user>\x1f<conn>\x1f<node>` by expiry, ms).
    pub(crate) fn presence(&self, room: &RoomName) -> String {
        format!("{}:presence:{}", self.prefix, room)
    }

    /// A room's connection count per user (HASH user -> count).
    pub(crate) fn presence_users(&self, room: &RoomName) -> String {
        format!("{}:presence_users:{}", self.prefix, room)
    }

    /// The cluster's node heartbeats (HASH node id -> `<expiry ms>|<stats JSON>`).
    pub(crate) fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// One presence entry.
    pub(crate) fn presence_entry(user: &UserId, conn: &str, node: &str) -> String {
        format!("{user}{PRESENCE_SEP}{conn}{PRESENCE_SEP}{node}")
    }

    /// Which channel `name` is.
    pub(crate) fn parse_channel<'a>(&self, name: &'a str) -> Channel<'a> {
        let Some(rest) = name
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix(':'))
        else {
            return Channel::Other;
        };
        if let Some(room) = rest.strip_prefix("room:") {
            Channel::Room(room)
        } else if let Some(user) = rest.strip_prefix("user:") {
            Channel::User(user)
        } else if rest == "control" {
            Channel::Control
        } else {
            Channel::Other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_parsing() {
        let k = Keys::new("rc");
        let room = RoomName::new("chat:lobby").expect("room");
        let user = UserId::new("alice").expect("user");
        assert_eq!(k.room_channel(&room), "rc:room:chat:lobby");
        assert_eq!(k.history(&room), "rc:history:chat:lobby");
        assert_eq!(k.meta(&room), "rc:meta:chat:lobby");
        assert_eq!(k.presence(&room), "rc:presence:chat:lobby");
        assert_eq!(k.presence_users(&room), "rc:presence_users:chat:lobby");
        assert_eq!(k.dedupe("alice/1"), "rc:dedupe:alice/1");
        assert_eq!(k.nodes(), "rc:nodes");
        assert_eq!(Keys::presence_entry(&user, "c1", "n1"), "alice\x1fc1\x1fn1");
        assert_eq!(
            k.parse_channel("rc:room:chat:lobby"),
            Channel::Room("chat:lobby")
        );
        assert_eq!(k.parse_channel("rc:user:alice"), Channel::User("alice"));
        assert_eq!(k.parse_channel("rc:control"), Channel::Control);
        assert_eq!(k.parse_channel("rcx:room:a"), Channel::Other);
        assert_eq!(k.parse_channel("other:room:a"), Channel::Other);
    }
}
