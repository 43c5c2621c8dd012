//! Error codes a client can see in an `error` message, and WebSocket close codes.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The `code` of an `error` message (docs/protocol.md section 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not a valid message: bad encoding, a missing field or a wrong type.
    InvalidMessage,
    /// The `type` is not one the server knows.
    UnknownType,
    /// The frame or a field is larger than allowed.
    TooLarge,
    /// The connection sends faster than its rate limit.
    RateLimited,
    /// The token does not allow this room or action.
    Forbidden,
    /// The operation needs the connection to have joined the room first.
    NotJoined,
    /// The connection has joined as many rooms as it may.
    RoomLimit,
    /// The cluster bus is down and the operation needs it.
    Unavailable,
    /// Something went wrong on the server.
    Internal,
}

impl ErrorCode {
    /// Every code, for metrics and documentation.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::InvalidMessage,
        ErrorCode::UnknownType,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Forbidden,
        ErrorCode::NotJoined,
        ErrorCode::RoomLimit,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::RoomLimit => "room_limit",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes (docs/protocol.md section 4.2).
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The node is going away (drain): reconnect through the load balancer.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame broke RFC 6455's framing rules (reserved bits or opcodes, a fragmented or
    /// oversized control frame, a continuation without a start, an unmasked frame).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame (or a close reason) that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation (for example a binary frame on the JSON subprotocol).
    pub const POLICY: u16 = 1008;
    /// A message was too big.
    pub const TOO_BIG: u16 = 1009;
    /// Internal error.
    pub const INTERNAL: u16 = 1011;
    /// The node is overloaded: try later.
    pub const OVERLOADED: u16 = 1013;
    /// No authentication arrived within the auth timeout.
    pub const AUTH_TIMEOUT: u16 = 4001;
    /// The token is invalid or expired.
    pub const INVALID_TOKEN: u16 = 4002;
    /// A message arrived before authentication.
    pub const NOT_AUTHENTICATED: u16 = 4003;
    /// The outbound queue overflowed: the client reads too slowly.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// Too many `rate_limited` errors in a row.
    pub const RATE_LIMIT_ABUSE: u16 = 4029;

    /// Whether an endpoint may put `code` in a Close frame it sends (RFC 6455 section
    /// 7.4): the defined codes that are not reserved for local use (1005, 1006, 1015 are
    /// never sent; 1004 and 1016-2999 are unassigned), and the registered and private
    /// ranges 3000-4999.
    pub fn sendable(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }

    /// Whether `code` may close a user's connections when another node or a backend asks
    /// for it (the bus's `disconnect` control message, docs/protocol.md sections 5 and 6): a
    /// code a client can receive that means "you were disconnected", never a protocol
    /// or frame error the client did not commit.
    pub fn valid_for_disconnect(code: u16) -> bool {
        matches!(
            code,
            NORMAL | GOING_AWAY | POLICY | INTERNAL | OVERLOADED | 3000..=4999
        )
    }
}

#[cfg(test)]
mod tests {
    use super::close;

    #[test]
    fn close_codes_a_disconnect_may_carry() {
        for ok in [1000, 1001, 1008, 1011, 1013, 3000, 4002, 4999] {
            assert!(close::valid_for_disconnect(ok), "{ok}");
            assert!(close::sendable(ok), "{ok}");
        }
        for bad in [
            0,
            1,
            999,
            1002,
            1005,
            1006,
            1009,
            1015,
            2999,
            5000,
            u16::MAX,
        ] {
            assert!(!close::valid_for_disconnect(bad), "{bad}");
        }
        for never in [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert!(!close::sendable(never), "{never}");
        }
    }
}
