//! Bad input read from Redis (a malformed envelope, a message on the wrong channel, a
//! forged offset): counted, and logged at a rate limit so that whoever can write to Redis
//! cannot flood the node's log.

use super::Shared;
use crate::bus::BusStats;
use crate::common::now_ms;

/// How often at most a line is logged about bad input read from Redis.
const BAD_LOG_EVERY_MS: u64 = 10_000;

/// Logs bad input read from Redis at most once per [`BAD_LOG_EVERY_MS`], saying how many
/// were not logged since: whoever can write to Redis cannot flood the node's log.
#[derive(Debug, Default)]
pub(crate) struct RateLog {
    /// When the last line was written (ms since the Unix epoch; 0: never).
    last: std::sync::atomic::AtomicU64,
    /// Bad inputs not logged since that line.
    skipped: std::sync::atomic::AtomicU64,
}

impl RateLog {
    /// Logs `what` (with where it was read and a detail) unless a line was written less
    /// than [`BAD_LOG_EVERY_MS`] ago; then it only counts it.
    pub(crate) fn warn(&self, what: &str, source: &str, detail: &str) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = now_ms();
        let last = self.last.load(Relaxed);
        if now.saturating_sub(last) >= BAD_LOG_EVERY_MS
            && self
                .last
                .compare_exchange(last, now.max(1), Relaxed, Relaxed)
                .is_ok()
        {
            let not_logged = self.skipped.swap(0, Relaxed);
            tracing::warn!(
                source,
                detail,
                not_logged,
                "bad input from Redis dropped: {what}"
            );
        } else {
            self.skipped.fetch_add(1, Relaxed);
        }
    }
}

/// Counts and logs (at a rate limit) an envelope dropped as bad input.
pub(crate) fn bad(shared: &Shared, what: &str, source: &str, detail: &str) {
    BusStats::incr(&shared.stats.bad_envelopes);
    shared.bad_log.warn(what, source, detail);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_logged_at_a_rate_limit() {
        let log = RateLog::default();
        for _ in 0..100 {
            log.warn("test", "here", "");
        }
        // one line was written; the other 99 only counted
        assert_eq!(log.skipped.load(std::sync::atomic::Ordering::Relaxed), 99);
    }
}
