//! What the two buses share beyond the [`Bus`](crate::Bus) trait: how a room's epoch is
//! made, the one check of a disconnect's close code, the std-mutex lock both use, and
//! the wall clock messages are stamped with.

use crate::bus::BusError;
use std::sync::{Mutex, MutexGuard};

/// A fresh random epoch (12 hex digits): the name of one unbroken run of a room's
/// offsets. The Redis scripts make theirs from one passed in, so both buses make them here.
pub(crate) fn random_epoch() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// Refuses a close code that may not end a disconnected user's connections (every node
/// would drop it: docs/protocol.md section 6), so the caller hears it instead.
pub(crate) fn check_disconnect_code(code: u16) -> Result<(), BusError> {
    if roomcast_protocol::close::valid_for_disconnect(code) {
        Ok(())
    } else {
        Err(BusError::Internal(format!(
            "close code {code} cannot end a disconnected user's connections"
        )))
    }
}

/// Locks a std mutex, recovering from poisoning: no critical section in this crate can
/// panic half-way through a change, so the data stays consistent. Never held across an
/// `.await`.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds since the Unix epoch (the clock messages' `ts` are stamped with).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
