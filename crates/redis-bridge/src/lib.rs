//! The cluster bus of roomcast: how a node publishes to rooms and users, reads room
//! history, keeps presence and hears what other nodes publish.
//!
//! [`Bus`] is the seam (like centrifuge's Broker and PresenceManager together); it has
//! two implementations: [`MemoryBus`] for a standalone node and [`RedisBus`] for a
//! cluster. The gateway talks to `dyn Bus` only and never builds a Redis command.
//! Nothing here knows about WebSockets.

mod bus;
mod common;
mod memory;
mod redis;

pub use self::redis::stream::{dead_letter_key, StreamEntry, StreamReader, StreamReaderConfig};
pub use self::redis::RedisBus;
pub use bus::{
    Bus, BusConfig, BusError, BusEvent, BusStats, EventSink, History, HistoryQuery, NodeStats,
    PresenceSnapshot, PublishRequest, PublishResult, RoomInterest, RoomStats, SendRequest,
    SendResult, ShardState, SubscribeMode,
};
pub use memory::MemoryBus;
