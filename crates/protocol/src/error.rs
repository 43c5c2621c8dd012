//! Error codes a client can see in an `error` message, and WebSocket close codes.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The `code` of an `error` message (PROTOCOL.md section 4).
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

/// WebSocket close codes (PROTOCOL.md section 4).
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The node is going away (drain): reconnect through the load balancer.
    pub const GOING_AWAY: u16 = 1001;
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
}
