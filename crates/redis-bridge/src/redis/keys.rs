//! Every Redis key and channel name the bridge uses (docs/protocol.md section 6), and the
//! reverse: which channel a pub/sub message came on. Nothing else in the crate formats
//! a key, so the layout can be read (and changed) here alone.
//!
//! On a Redis Cluster (docs/protocol.md section 6b) every name of a room carries the hash
//! tag `{<room>}` and a user's channel `{<user>}`, so that the publish script, history,
//! meta, presence and dedupe keys of one room live in one slot (room and user names
//! cannot contain braces). The control channel has no tag: it is classic pub/sub, which
//! reaches every node of a cluster.

use roomcast_protocol::{RoomName, UserId};

/// The separator inside a presence entry (`<user>\x1f<conn>\x1f<node>`): a control
/// character, which no user id may contain.
pub(crate) const PRESENCE_SEP: char = '\x1f';

/// Builds names under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    /// Redis Cluster: names carry hash tags.
    cluster: bool,
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

/// The parts joined in one allocation: a publish builds four names, and `format!` costs
/// several times as much.
fn concat(parts: &[&str]) -> String {
    let mut s = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        s.push_str(p);
    }
    s
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
            cluster: false,
        }
    }

    /// Names for a Redis Cluster: every name of a room or user carries its hash tag.
    pub(crate) fn cluster(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
            cluster: true,
        }
    }

    /// `<prefix>:<kind>:<name>` (built for every publish: no `format!`), or `<prefix>:<kind>:{<name>}` on a cluster.
    fn tagged(&self, kind: &str, name: &str) -> String {
        if self.cluster {
            concat(&[&self.prefix, ":", kind, ":{", name, "}"])
        } else {
            concat(&[&self.prefix, ":", kind, ":", name])
        }
    }

    /// The hash slot a room's names live in (Redis Cluster).
    pub(crate) fn room_slot(&self, room: &RoomName) -> u16 {
        slot(room.as_str())
    }

    /// The hash slot a channel lives in (Redis Cluster): that of its hash tag.
    pub(crate) fn channel_slot(channel: &str) -> u16 {
        let tag = channel
            .find('{')
            .and_then(|open| {
                let rest = &channel[open + 1..];
                rest.find('}')
                    .filter(|&n| n > 0)
                    .map(|close| &rest[..close])
            })
            .unwrap_or(channel);
        slot(tag)
    }

    /// Channel of a room's messages and member events.
    pub(crate) fn room_channel(&self, room: &RoomName) -> String {
        self.tagged("room", room.as_str())
    }

    /// Pattern matching every room channel.
    pub(crate) fn room_pattern(&self) -> String {
        format!("{}:room:*", self.prefix)
    }

    /// Channel of a user's direct messages.
    pub(crate) fn user_channel(&self, user: &UserId) -> String {
        self.tagged("user", user.as_str())
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
        self.tagged("history", room.as_str())
    }

    /// A room's meta hash: `s` the last offset, `e` the epoch.
    pub(crate) fn meta(&self, room: &RoomName) -> String {
        self.tagged("meta", room.as_str())
    }

    /// The idempotency record of a publish key. On a cluster it lives in the room's slot
    /// (the publish script reads it), so a key is remembered per room there.
    pub(crate) fn publish_dedupe(&self, room: &RoomName, key: &str) -> String {
        if self.cluster {
            concat(&[&self.prefix, ":dedupe:{", room.as_str(), "}:", key])
        } else {
            concat(&[&self.prefix, ":dedupe:", key])
        }
    }

    /// The idempotency record of a send key (on a cluster, in the recipient's slot).
    pub(crate) fn send_dedupe(&self, to: &UserId, key: &str) -> String {
        if self.cluster {
            format!("{}:dedupe:{{{}}}:{key}", self.prefix, to)
        } else {
            format!("{}:dedupe:{key}", self.prefix)
        }
    }

    /// A room's presence entries (ZSET of `<user>\x1f<conn>\x1f<node>` by expiry, ms).
    pub(crate) fn presence(&self, room: &RoomName) -> String {
        self.tagged("presence", room.as_str())
    }

    /// A room's connection count per user (HASH user -> count).
    pub(crate) fn presence_users(&self, room: &RoomName) -> String {
        self.tagged("presence_users", room.as_str())
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
        let untag = |name: &'a str| {
            if self.cluster {
                name.strip_prefix('{').and_then(|n| n.strip_suffix('}'))
            } else {
                Some(name)
            }
        };
        if let Some(room) = rest.strip_prefix("room:") {
            untag(room).map_or(Channel::Other, Channel::Room)
        } else if let Some(user) = rest.strip_prefix("user:") {
            untag(user).map_or(Channel::Other, Channel::User)
        } else if rest == "control" {
            Channel::Control
        } else {
            Channel::Other
        }
    }
}

/// The Redis Cluster hash slot of a hash tag (CRC16/XMODEM mod 16384).
fn slot(tag: &str) -> u16 {
    let mut crc: u16 = 0;
    for &b in tag.as_bytes() {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
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
        assert_eq!(k.nodes(), "rc:nodes");
        assert_eq!(k.publish_dedupe(&room, "alice/1"), "rc:dedupe:alice/1");
        assert_eq!(k.send_dedupe(&user, "alice/1"), "rc:dedupe:alice/1");
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

    #[test]
    fn cluster_names_carry_hash_tags() {
        let k = Keys::cluster("rc");
        let room = RoomName::new("chat:lobby").expect("room");
        let user = UserId::new("alice").expect("user");
        assert_eq!(k.room_channel(&room), "rc:room:{chat:lobby}");
        assert_eq!(k.user_channel(&user), "rc:user:{alice}");
        assert_eq!(k.history(&room), "rc:history:{chat:lobby}");
        assert_eq!(k.meta(&room), "rc:meta:{chat:lobby}");
        assert_eq!(k.presence(&room), "rc:presence:{chat:lobby}");
        assert_eq!(k.presence_users(&room), "rc:presence_users:{chat:lobby}");
        assert_eq!(k.publish_dedupe(&room, "a/1"), "rc:dedupe:{chat:lobby}:a/1");
        assert_eq!(k.send_dedupe(&user, "a/1"), "rc:dedupe:{alice}:a/1");
        assert_eq!(k.control_channel(), "rc:control");
        assert_eq!(
            k.parse_channel("rc:room:{chat:lobby}"),
            Channel::Room("chat:lobby")
        );
        assert_eq!(k.parse_channel("rc:user:{alice}"), Channel::User("alice"));
        assert_eq!(k.parse_channel("rc:room:chat:lobby"), Channel::Other);
        assert_eq!(k.parse_channel("rc:control"), Channel::Control);
        // every name of a room is in one slot; the known slots of Redis's own docs
        let s = k.room_slot(&room);
        for name in [k.history(&room), k.meta(&room), k.room_channel(&room)] {
            assert_eq!(Keys::channel_slot(&name), s, "{name}");
        }
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("123456789"), 12739);
    }
}
