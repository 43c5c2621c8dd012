//! [`RedisBus`]: the bus of a cluster (PROTOCOL.md section 6). Placeholder until the
//! Redis implementation lands; every operation answers `Unavailable`.

use crate::bus::*;
use async_trait::async_trait;
use roomcast_protocol::{RoomName, UserId};
use std::sync::Arc;

/// The Redis bus.
pub struct RedisBus {
    stats: BusStats,
}

impl RedisBus {
    /// Connects to Redis at `url` (`redis://` or `rediss://`).
    pub async fn connect(_url: &str, _cfg: BusConfig) -> Result<Self, BusError> {
        Err(BusError::Unavailable("the Redis bus is not built yet".into()))
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn start(&self, _delivery: Arc<dyn Delivery>) -> Result<(), BusError> {
        Err(BusError::Unavailable("not built".into()))
    }
    async fn publish(&self, _req: PublishRequest) -> Result<PublishResult, BusError> {
        Err(BusError::Unavailable("not built".into()))
    }
    async fn send(&self, _req: SendRequest) -> Result<SendResult, BusError> {
        Err(BusError::Unavailable("not built".into()))
    }
    async fn history(&self, _room: &RoomName, _q: HistoryQuery) -> Result<History, BusError> {
        Err(BusError::Unavailable("not built".into()))
    }
    async fn presence_join(&self, _r: &RoomName, _u: &UserId, _c: &str) -> Result<(), BusError> {
        Err(BusError::Unavailable("not built".into()))
    }
    async fn presence_leave(&self, _r: &RoomName, _u: &UserId, _c: &str) -> Result<(), BusError> {
        Err(BusError::Unavailable("not built".into()))
    }
    async fn presence(&self, _r: &RoomName, _l: usize) -> Result<PresenceSnapshot, BusError> {
        Err(BusError::Unavailable("not built".into()))
    }
    async fn disconnect_user(&self, _u: &UserId, _c: u16) -> Result<(), BusError> {
        Err(BusError::Unavailable("not built".into()))
    }
    fn watch_room(&self, _room: &RoomName) {}
    fn unwatch_room(&self, _room: &RoomName) {}
    fn is_ready(&self) -> bool {
        false
    }
    fn stats(&self) -> &BusStats {
        &self.stats
    }
    async fn close(&self) {}
}
