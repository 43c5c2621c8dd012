//! The roomcast wire protocol, version 1 (`docs/protocol.md`): the messages clients
//! and servers exchange, the bus envelope nodes exchange through Redis, member events on
//! both, validated names, error and close codes, and the two codecs (JSON text,
//! MessagePack binary).
//!
//! This crate does no IO and knows nothing of sockets or Redis: it turns bytes into
//! validated values and values into bytes.

mod client;
mod codec;
mod envelope;
mod error;
mod member;
mod names;
mod server;

pub use client::{ClientMessage, ReqId, StreamPosition};
pub use codec::{DecodeError, EncodeError, Encoding};
pub use envelope::{BusMessage, Envelope, ENVELOPE_VERSION};
pub use error::{close, ErrorCode};
pub use member::MemberChange;
pub use names::{EventName, NameError, RoomName, UserId};
pub use server::{
    Count, DirectMessage, Member, MessageFrame, Publication, ServerMessage, SERVER_USER,
};
