//! The command pool of one Redis: deadpool over multiplexed connections, with a check
//! that costs Redis nothing while a connection is known good.
//!
//! deadpool-redis's manager sends `UNWATCH` and `PING` (a round trip) every time a
//! connection leaves the pool: for a join (a presence script and a history script) that
//! was four round trips and six commands instead of two and two. This manager wraps the
//! same connections, notes on the connection itself when a command on it failed for a
//! reason that means the socket is gone, and on checkout drops such a connection and
//! every connection made before the bus last saw Redis go away ([`Manager::outage`]:
//! after a restart none of them works), pings one that was not used for [`IDLE_CHECK`]
//! (it may have died quietly), and hands out every other at once.

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// A connection unused this long is pinged before it is handed out again.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The pool of one Redis's command connections.
pub(crate) type Pool = managed::Pool<Manager>;

/// A connection out of the pool (back in it when dropped).
pub(crate) type Pooled = managed::Object<Manager>;

/// A multiplexed connection that remembers whether a command on it found it broken.
/// Clones share the socket and the mark.
#[derive(Clone)]
pub(crate) struct PoolConn {
    conn: MultiplexedConnection,
    broken: Arc<AtomicBool>,
    /// The manager's outage count when the connection was made.
    made_after: u64,
}

impl PoolConn {
    /// Marks the connection broken when `r` failed because its socket is gone.
    fn note<T>(&self, r: &Result<T, RedisError>) {
        if let Err(e) = r {
            if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
                self.broken.store(true, Relaxed);
            }
        }
    }
}

impl ConnectionLike for PoolConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let r = self.conn.req_packed_command(cmd).await;
            self.note(&r);
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let r = self.conn.req_packed_commands(pipeline, offset, count).await;
            self.note(&r);
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

/// Makes connections as deadpool-redis does; checks them as the module says.
pub(crate) struct Manager {
    inner: deadpool_redis::Manager,
    outages: AtomicU64,
}

impl Manager {
    pub(crate) fn new(inner: deadpool_redis::Manager) -> Self {
        Manager {
            inner,
            outages: AtomicU64::new(0),
        }
    }

    /// The bus saw Redis go away (a command or the subscription failed): connections
    /// made before now are dropped at their next checkout.
    pub(crate) fn outage(&self) {
        self.outages.fetch_add(1, Relaxed);
    }
}

impl managed::Manager for Manager {
    type Type = PoolConn;
    type Error = RedisError;

    async fn create(&self) -> Result<PoolConn, RedisError> {
        let made_after = self.outages.load(Relaxed);
        Ok(PoolConn {
            conn: managed::Manager::create(&self.inner).await?,
            broken: Arc::default(),
            made_after,
        })
    }

    async fn recycle(&self, c: &mut PoolConn, m: &Metrics) -> RecycleResult<RedisError> {
        if c.broken.load(Relaxed) {
            return Err(RecycleError::message(
                "a command found the connection broken",
            ));
        }
        if c.made_after != self.outages.load(Relaxed) {
            return Err(RecycleError::message("made before Redis went away"));
        }
        if m.last_used() < IDLE_CHECK {
            return Ok(());
        }
        managed::Manager::recycle(&self.inner, &mut c.conn, m).await
    }
}
