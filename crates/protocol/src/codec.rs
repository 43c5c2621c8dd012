//! The two encodings of the protocol, chosen per connection by WebSocket subprotocol:
//! JSON in text frames and MessagePack (maps with string keys) in binary frames.
//!
//! This file encodes, decodes, and turns a frame that does not decode into the
//! protocol's error (code, words, request id); `peek.rs` reads the `type` and `id` of
//! such a frame; `tests.rs` holds the unit and property tests.

mod peek;

use crate::client::{ClientMessage, ReqId};
use crate::error::ErrorCode;
use crate::server::ServerMessage;
use bytes::Bytes;
use peek::{Peek, PeekId, PeekType};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

/// A wire encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `roomcast.v1.json`: JSON in text frames (the default).
    Json,
    /// `roomcast.v1.msgpack`: MessagePack in binary frames.
    MsgPack,
}

/// Why bytes could not be decoded into a message; carries the docs/protocol.md code to
/// answer with and the request id when one could be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct DecodeError {
    /// `invalid_message` or `unknown_type`.
    pub code: ErrorCode,
    /// A message for people.
    pub message: String,
    /// The request id, when it could be read.
    pub id: Option<ReqId>,
}

/// A value could not be encoded (in practice: a map with non-string keys).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("encode: {0}")]
pub struct EncodeError(pub String);

/// The deepest nesting of arrays and maps a MessagePack frame may have: what serde_json
/// allows a JSON frame, so that whatever a MessagePack client may send a JSON client could
/// have sent too (and a node's JSON reader can read it back).
const MAX_MSGPACK_DEPTH: usize = 128;

/// MessagePack decoding with the depth limit of JSON.
fn from_msgpack<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_MSGPACK_DEPTH);
    T::deserialize(&mut de)
}

impl Encoding {
    /// Both encodings, JSON first.
    pub const ALL: [Encoding; 2] = [Encoding::Json, Encoding::MsgPack];

    /// The WebSocket subprotocol name.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => "roomcast.v1.json",
            Encoding::MsgPack => "roomcast.v1.msgpack",
        }
    }

    /// The encoding for a subprotocol name, if it is one of ours.
    pub fn from_subprotocol(name: &str) -> Option<Self> {
        Encoding::ALL
            .into_iter()
            .find(|e| e.subprotocol() == name.trim())
    }

    /// Whether frames of this encoding are binary (else text).
    pub fn is_binary(self) -> bool {
        matches!(self, Encoding::MsgPack)
    }

    /// Encodes any serializable value.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Bytes, EncodeError> {
        match self {
            Encoding::Json => serde_json::to_vec(value)
                .map(Bytes::from)
                .map_err(|e| EncodeError(e.to_string())),
            Encoding::MsgPack => rmp_serde::to_vec_named(value)
                .map(Bytes::from)
                .map_err(|e| EncodeError(e.to_string())),
        }
    }

    /// Encodes a server message.
    pub fn encode_server(self, msg: &ServerMessage) -> Result<Bytes, EncodeError> {
        self.encode(msg)
    }

    /// Decodes a client message, classifying failures as `unknown_type` (a `type` we do
    /// not know) or `invalid_message` (anything else).
    pub fn decode_client(self, bytes: &[u8]) -> Result<ClientMessage, DecodeError> {
        self.decode_with_peek(bytes, &ClientMessage::TYPES)
    }

    /// Decodes a server message (for clients, tests and the load generator).
    pub fn decode_server(self, bytes: &[u8]) -> Result<ServerMessage, DecodeError> {
        self.decode_with_peek(bytes, &[])
    }

    /// Why bytes that are not a map at all cannot be a message.
    fn not_a_message(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Json => match serde_json::from_slice::<IgnoredAny>(bytes) {
                Err(e) => format!("not valid JSON: {e}"),
                Ok(_) => "a message is a JSON object with a string \"type\"".to_string(),
            },
            Encoding::MsgPack => match from_msgpack::<IgnoredAny>(bytes) {
                Err(e) => format!("not valid MessagePack: {e}"),
                Ok(_) => "a message is a MessagePack map with a string \"type\"".to_string(),
            },
        }
    }

    /// The protocol's words for what is wrong with a client message of type `kind`.
    fn explain_client(self, bytes: &[u8], kind: &str) -> Option<String> {
        let value: Option<serde_json::Value> = match self {
            Encoding::Json => serde_json::from_slice(bytes).ok(),
            Encoding::MsgPack => from_msgpack(bytes).ok(),
        };
        match value {
            Some(serde_json::Value::Object(m)) => crate::client::explain_invalid(kind, &m),
            // Only MessagePack gets here (binary or extension values, maps with keys that
            // are not strings): nothing a message can hold.
            _ => Some(
                "a message holds only strings, numbers, booleans, nil, arrays and maps with \
                 string keys (no binary or extension values)"
                    .to_string(),
            ),
        }
    }

    fn decode_with_peek<T: for<'de> Deserialize<'de>>(
        self,
        bytes: &[u8],
        known: &[&str],
    ) -> Result<T, DecodeError> {
        let full: Result<T, String> = match self {
            Encoding::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            Encoding::MsgPack => from_msgpack(bytes).map_err(|e| e.to_string()),
        };
        let err = match full {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let peek: Option<Peek> = match self {
            Encoding::Json => serde_json::from_slice(bytes).ok(),
            Encoding::MsgPack => from_msgpack(bytes).ok(),
        };
        let Some(peek) = peek else {
            return Err(DecodeError {
                code: ErrorCode::InvalidMessage,
                message: self.not_a_message(bytes),
                id: None,
            });
        };
        let id = match peek.id {
            PeekId::Usable(id) => Some(id),
            PeekId::Missing => None,
            // An id that cannot be echoed is refused as such, whatever else is wrong.
            PeekId::Unusable => {
                return Err(DecodeError {
                    code: ErrorCode::InvalidMessage,
                    message: format!(
                        "invalid \"id\": a request id is an integer or a string of 1 to {} bytes",
                        ReqId::MAX_LEN
                    ),
                    id: None,
                })
            }
        };
        Err(match peek.ty {
            PeekType::Str(t) if !known.is_empty() && !known.contains(&t.as_str()) => DecodeError {
                code: ErrorCode::UnknownType,
                message: format!("unknown message type {t:?}"),
                id,
            },
            // A known type with a field that does not fit: name the field and its shape
            // in the protocol's words (the decoder's own message names Rust types).
            PeekType::Str(t) if !known.is_empty() => DecodeError {
                code: ErrorCode::InvalidMessage,
                message: self.explain_client(bytes, &t).unwrap_or(err),
                id,
            },
            PeekType::Str(_) => DecodeError {
                code: ErrorCode::InvalidMessage,
                message: err,
                id,
            },
            PeekType::Missing => DecodeError {
                code: ErrorCode::InvalidMessage,
                message: "missing \"type\"".to_string(),
                id,
            },
            PeekType::NotString => DecodeError {
                code: ErrorCode::InvalidMessage,
                message: "\"type\" must be a string".to_string(),
                id,
            },
        })
    }
}

#[cfg(test)]
mod tests;
