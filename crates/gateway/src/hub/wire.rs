//! Wire encoding: how a connection wants its frames, and a message encoded once per
//! wire format so that every recipient of the same format shares the same bytes.

use bytes::Bytes;
use roomcast_protocol::Encoding;
use std::sync::{Arc, OnceLock};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// How a connection wants its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// WebSocket, JSON text frames.
    Json,
    /// WebSocket, MessagePack binary frames.
    MsgPack,
    /// Server-Sent Events (JSON data lines).
    Sse,
}

impl From<Encoding> for Wire {
    fn from(e: Encoding) -> Self {
        match e {
            Encoding::Json => Wire::Json,
            Encoding::MsgPack => Wire::MsgPack,
        }
    }
}

/// Encoded bytes ready for one wire format, cheap to clone.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A text frame (JSON) or an SSE event.
    Text(Utf8Bytes),
    /// A binary frame (MessagePack).
    Binary(Bytes),
}

impl Payload {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Payload::Text(t) => t.len(),
            Payload::Binary(b) => b.len(),
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One encoded frame, shared by every recipient of the same wire format.
#[derive(Debug)]
pub struct Frame {
    /// The room of a room message; lets a session drop messages of rooms it left.
    pub room: Option<super::RoomKey>,
    /// The message's offset (none when volatile or not a room message): lets a
    /// recovering join drop what it already replayed.
    pub offset: Option<u64>,
    /// The bytes.
    pub payload: Payload,
}

/// One item of a connection's outbound queue: a pointer to a shared frame, so that a
/// queue slot is one word and a fan-out to n members is n reference-count increments.
pub type Outbound = Arc<Frame>;

/// Encodes a value once per wire format on first use.
pub(super) struct Encoded<'a, F: Fn(Wire) -> Option<Outbound>> {
    make: &'a F,
    cache: [OnceLock<Option<Outbound>>; 3],
}

impl<'a, F: Fn(Wire) -> Option<Outbound>> Encoded<'a, F> {
    pub(super) fn new(make: &'a F) -> Self {
        Encoded {
            make,
            cache: Default::default(),
        }
    }

    pub(super) fn get(&self, wire: Wire) -> Option<Outbound> {
        let i = wire as usize;
        self.cache[i].get_or_init(|| (self.make)(wire)).clone()
    }
}

/// Encodes a server message for one wire format; `None` if it cannot be encoded.
pub fn encode_for(
    wire: Wire,
    msg: &impl serde::Serialize,
    sse_id: Option<&str>,
) -> Option<Payload> {
    match wire {
        Wire::Json => serde_json::to_string(msg)
            .ok()
            .map(|s| Payload::Text(s.into())),
        Wire::MsgPack => Encoding::MsgPack.encode(msg).ok().map(Payload::Binary),
        Wire::Sse => {
            let json = serde_json::to_string(msg).ok()?;
            let mut s = String::with_capacity(json.len() + 48);
            if let Some(id) = sse_id {
                s.push_str("id: ");
                s.push_str(id);
                s.push('\n');
            }
            s.push_str("event: message\ndata: ");
            s.push_str(&json);
            s.push_str("\n\n");
            Some(Payload::Text(s.into()))
        }
    }
}
