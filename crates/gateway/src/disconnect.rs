//! Why the node ends a connection: one value, [`Disconnect`], for every close code the
//! node sends (docs/protocol.md section 4.2), with the reason that goes in the Close frame
//! and the reconnect advice a client follows ([`Reconnect`]). The JS client's policy
//! (clients/js) and the table of docs/protocol.md section 4.2 are checked against
//! [`CODES`] by this module's tests.

use roomcast_protocol::close;

/// What a client should do after a close, by code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// Reconnect with exponential backoff and jitter, then re-join with `since`.
    Backoff,
    /// Reconnect, but slowly: the node asks for less load (backoff as after several
    /// failed attempts).
    Throttled,
    /// Reconnect only with a fresh token: the one used is no longer accepted.
    FreshToken,
}

impl Reconnect {
    /// The advice as the docs table spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reconnect::Backoff => "backoff",
            Reconnect::Throttled => "throttled",
            Reconnect::FreshToken => "fresh token",
        }
    }

    /// The advice for a close code: the codes of [`CODES`] as listed there; any other
    /// code (an application's 3000-4999 from a backend disconnect) means backoff.
    pub fn for_code(code: u16) -> Reconnect {
        CODES
            .iter()
            .find(|(c, _, _)| *c == code)
            .map_or(Reconnect::Backoff, |(_, r, _)| *r)
    }
}

/// Every close code the node sends by itself, with its reconnect advice and what it means
/// (the source of docs/protocol.md's reconnect table). 1000, 1008 and 3000-4999 otherwise
/// come only from a backend's disconnect.
pub const CODES: &[(u16, Reconnect, &str)] = &[
    (close::NORMAL, Reconnect::Backoff, "normal closure"),
    (close::GOING_AWAY, Reconnect::Backoff, "node draining"),
    (close::PROTOCOL_ERROR, Reconnect::Backoff, "framing error"),
    (close::INVALID_PAYLOAD, Reconnect::Backoff, "invalid UTF-8"),
    (close::POLICY, Reconnect::Throttled, "policy"),
    (close::TOO_BIG, Reconnect::Backoff, "message too big"),
    (close::INTERNAL, Reconnect::Backoff, "internal error"),
    (close::OVERLOADED, Reconnect::Throttled, "try again later"),
    (
        close::AUTH_TIMEOUT,
        Reconnect::Backoff,
        "authentication timeout",
    ),
    (
        close::INVALID_TOKEN,
        Reconnect::FreshToken,
        "invalid or expired token",
    ),
    (
        close::NOT_AUTHENTICATED,
        Reconnect::Backoff,
        "not authenticated",
    ),
    (close::SLOW_CONSUMER, Reconnect::Backoff, "slow consumer"),
    (
        close::RATE_LIMIT_ABUSE,
        Reconnect::Throttled,
        "rate limit abused",
    ),
];

/// Why the node closes a connection: the code and reason of its Close frame (SSE streams
/// end without either, but count the code in the `closes` metric the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnect {
    /// The close code (docs/protocol.md section 4.2).
    pub code: u16,
    /// The Close frame's reason.
    pub reason: &'static str,
}

impl Disconnect {
    const fn new(code: u16, reason: &'static str) -> Self {
        Disconnect { code, reason }
    }

    /// The node is draining (1001).
    pub const DRAINING: Disconnect =
        Disconnect::new(close::GOING_AWAY, "node is draining; reconnect");
    /// A frame broke RFC 6455's framing (1002).
    pub const PROTOCOL_ERROR: Disconnect = Disconnect::new(close::PROTOCOL_ERROR, "protocol error");
    /// Text that is not UTF-8 (1007).
    pub const INVALID_UTF8: Disconnect = Disconnect::new(close::INVALID_PAYLOAD, "invalid UTF-8");
    /// A frame over the hard frame cap (1009).
    pub const TOO_BIG: Disconnect = Disconnect::new(close::TOO_BIG, "message too big");
    /// A reply that could not be encoded (1011).
    pub const ENCODING_FAILED: Disconnect = Disconnect::new(close::INTERNAL, "encoding failed");
    /// `--auth hook` without a connect hook to ask (1011).
    pub const NO_CONNECT_HOOK: Disconnect = Disconnect::new(close::INTERNAL, "no connect hook");
    /// The connect hook could not be asked (1013).
    pub const AUTH_UNAVAILABLE: Disconnect =
        Disconnect::new(close::OVERLOADED, "authentication unavailable; try later");
    /// No `auth` within `--auth-timeout` (4001).
    pub const AUTH_TIMEOUT: Disconnect =
        Disconnect::new(close::AUTH_TIMEOUT, "authentication timeout");
    /// A token that does not verify, or a refresh naming another user (4002).
    pub const INVALID_TOKEN: Disconnect =
        Disconnect::new(close::INVALID_TOKEN, "invalid or expired token");
    /// The token's `exp` (plus leeway) passed without a refresh (4002).
    pub const TOKEN_EXPIRED: Disconnect = Disconnect::new(close::INVALID_TOKEN, "token expired");
    /// A frame other than a valid `auth` before authentication (4003).
    pub const NOT_AUTHENTICATED: Disconnect =
        Disconnect::new(close::NOT_AUTHENTICATED, "authenticate first");
    /// The socket took no bytes for `--write-timeout` while data waited (4008).
    pub const STALLED: Disconnect = Disconnect::new(
        close::SLOW_CONSUMER,
        "slow consumer: the socket accepted nothing for the write timeout",
    );
    /// Too many `rate_limited` answers in a row (4029).
    pub const RATE_LIMIT_ABUSE: Disconnect =
        Disconnect::new(close::RATE_LIMIT_ABUSE, "rate limit abused");

    /// A close asked through the connection's mailbox (a drain, a full queue, lost
    /// messages, a backend's disconnect with any code).
    pub fn kicked(code: u16) -> Disconnect {
        let reason = match code {
            close::SLOW_CONSUMER => "slow consumer: outbound queue overflowed",
            close::INVALID_TOKEN => "disconnected by the server",
            close::OVERLOADED => "messages were lost; reconnect and re-join",
            close::GOING_AWAY => return Disconnect::DRAINING,
            _ => "closed by the server",
        };
        Disconnect::new(code, reason)
    }

    /// The connect hook refused the connection with `code`.
    pub fn hook_denied(code: u16) -> Disconnect {
        Disconnect::new(code, "refused by the connect hook")
    }

    /// What the client should do about it.
    pub fn reconnect(&self) -> Reconnect {
        Reconnect::for_code(self.code)
    }

    /// Whether this is a slow-consumer close (4008), logged as a warning.
    pub fn is_slow_consumer(&self) -> bool {
        self.code == close::SLOW_CONSUMER
    }
}

/// The reconnect table of docs/protocol.md section 4.2, as [`CODES`] renders it.
pub fn docs_table() -> String {
    let mut out = String::from("| code | meaning | reconnect |\n| --- | --- | --- |\n");
    for (code, advice, what) in CODES {
        out.push_str(&format!("| {code} | {what} | {} |\n", advice.as_str()));
    }
    out
}

#[cfg(test)]
#[path = "disconnect_tests.rs"]
mod tests;
