//! The room hub: which local connections are in which rooms and which belong to which
//! user, and the fan-out of bus events to them. Each message is encoded once per wire
//! format and the same bytes go to every recipient; a recipient whose queue is full is
//! never awaited: volatile messages are dropped for it, anything else closes it (4008).
//!
//! Four parts, one file each: [`wire`] (formats and encoded frames), [`mailbox`] (a
//! connection's bounded inbox), [`registry`] (rooms, users, the census), `fanout` (the
//! bus's events delivered to members).

mod budget;
mod fanout;
pub mod joined;
pub mod mailbox;
pub mod registry;
#[cfg(test)]
mod tests;
pub mod wire;

pub use joined::{Joined, RoomKey};
pub use mailbox::{Express, Mail, Mailbox, Member};
pub use registry::Hub;
pub use wire::{encode_for, Frame, Outbound, Payload, Wire};

use std::sync::{Mutex, MutexGuard};

/// Locks a std mutex, recovering it if a holder panicked (every critical section here
/// leaves its data consistent).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
