//! Validated names: rooms, users and events. Wire input becomes one of these types at
//! the edge, so inner layers never re-check a name.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// The name is longer than its limit.
    #[error("{0} is longer than {1} bytes")]
    TooLong(&'static str, usize),
    /// The name holds a character that is not allowed.
    #[error("{0} contains a character that is not allowed: {1:?}")]
    BadChar(&'static str, char),
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr, $ok:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// The longest name accepted, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates `s` and wraps it.
            pub fn new(s: &str) -> Result<Self, NameError> {
                if s.is_empty() {
                    return Err(NameError::Empty($what));
                }
                if s.len() > Self::MAX_LEN {
                    return Err(NameError::TooLong($what, Self::MAX_LEN));
                }
                let ok: fn(char) -> bool = $ok;
                if let Some(c) = s.chars().find(|c| !ok(*c)) {
                    return Err(NameError::BadChar($what, c));
                }
                Ok(Self(Arc::from(s)))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(&s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0.to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

fn room_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_-:.@/=+#~!$".contains(c)
}

fn printable(c: char) -> bool {
    !c.is_control()
}

name_type!(
    /// A room name: 1 to 128 bytes of ASCII letters, digits and `_-:.@/=+#~!$`
    /// (no `*`, which is the glob of the `rooms` claim, and no `,`, which separates
    /// rooms in `/sse?rooms=`).
    RoomName,
    "room",
    128,
    room_char
);
name_type!(
    /// A user id (the JWT `sub`): 1 to 128 bytes of printable characters.
    UserId,
    "user",
    128,
    printable
);
name_type!(
    /// An event name chosen by the application: 1 to 64 bytes of printable characters.
    EventName,
    "event",
    64,
    printable
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert!(RoomName::new("chat:lobby-1").is_ok());
        assert_eq!(RoomName::new(""), Err(NameError::Empty("room")));
        assert!(matches!(
            RoomName::new("a*b"),
            Err(NameError::BadChar(_, '*'))
        ));
        assert!(matches!(
            RoomName::new("a,b"),
            Err(NameError::BadChar(_, ','))
        ));
        assert!(matches!(
            RoomName::new(&"x".repeat(129)),
            Err(NameError::TooLong(_, 128))
        ));
    }

    #[test]
    fn names_deserialize_validated() {
        let r: Result<UserId, _> = serde_json::from_str("\"\"");
        assert!(r.is_err());
        let u: UserId = serde_json::from_str("\"alice\"").expect("valid");
        assert_eq!(u.as_str(), "alice");
    }
}
