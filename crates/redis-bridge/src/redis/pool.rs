//! The command pool of one Redis: deadpool over multiplexed connections, with a check
//! that costs Redis nothing while a connection is known good.
//!
//! deadpool-redis's manager sends `UNWATCH` and `PING` (a round trip) every time a
//! connection leaves the pool: for a join (a presence script and a history script) that
//! was four round trips and six commands instead of two and two. This manager makes the
//! same connections and, on checkout, drops every connection made before the bus last saw
//! Redis go away ([`Manager::outage`]: the first operation that failed with a socket error
//! or a timeout after one that succeeded, as `Shared::run` classifies them, or the
//! subscription dropping; so after a restart or a `CLIENT KILL` no old connection is
//! handed out again), pings one that sat unused for [`IDLE_CHECK`] (it may have died
//! quietly), and hands out every other at once. Only the start of an outage counts, so
//! that the timeouts of an overloaded Redis do not make the pool reconnect again and
//! again.

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use redis::aio::MultiplexedConnection;
use redis::RedisError;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// A connection unused this long is pinged before it is handed out again.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The pool of one Redis's command connections.
pub(crate) type Pool = managed::Pool<Manager>;

/// A connection out of the pool (back in it when dropped).
pub(crate) type Pooled = managed::Object<Manager>;

/// Makes connections as deadpool-redis does; checks them as the module says.
pub(crate) struct Manager {
    inner: deadpool_redis::Manager,
    /// When the manager was made: the origin of `outage_at`.
    born: Instant,
    /// Nanoseconds after `born` of the last outage (0: none yet).
    outage_at: AtomicU64,
}

impl Manager {
    pub(crate) fn new(inner: deadpool_redis::Manager) -> Self {
        Manager {
            inner,
            born: Instant::now(),
            outage_at: AtomicU64::new(0),
        }
    }

    /// The bus saw Redis go away (an operation failed for a reason that means Redis or
    /// the socket is gone): connections made before now are dropped at their next checkout.
    pub(crate) fn outage(&self) {
        self.outage_at
            .store(self.since_born(Instant::now()), Relaxed);
    }

    fn since_born(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.born).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

impl managed::Manager for Manager {
    type Type = MultiplexedConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<MultiplexedConnection, RedisError> {
        managed::Manager::create(&self.inner).await
    }

    async fn recycle(
        &self,
        c: &mut MultiplexedConnection,
        m: &Metrics,
    ) -> RecycleResult<RedisError> {
        if self.since_born(m.created) <= self.outage_at.load(Relaxed) {
            return Err(RecycleError::message("made before Redis went away"));
        }
        if m.last_used() < IDLE_CHECK {
            return Ok(());
        }
        managed::Manager::recycle(&self.inner, c, m).await
    }
}
