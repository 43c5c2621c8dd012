//! Running one Redis operation: which connection it goes on (one Redis: the publish
//! connection or the pool; a cluster: its one connection), the operation timeout, and
//! how a failure becomes a [`BusError`] while keeping the command connection's health
//! (`health.rs`) up to date.

use super::conn::Conn;
use super::{sharded, Backend, Shared};
use crate::bus::BusError;
use redis::{ErrorKind, RedisError, ServerErrorKind};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Why one Redis call failed, before it becomes a [`BusError`].
pub(crate) enum OpError {
    Redis(RedisError),
    Pool(String),
    Bad(String),
}

impl From<RedisError> for OpError {
    fn from(e: RedisError) -> Self {
        OpError::Redis(e)
    }
}

impl From<deadpool::managed::PoolError<RedisError>> for OpError {
    fn from(e: deadpool::managed::PoolError<RedisError>) -> Self {
        OpError::Pool(e.to_string())
    }
}

/// Whether a Redis error means "Redis cannot serve now" rather than "this request is wrong".
pub(super) fn is_unavailable(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::AuthenticationFailed
                | ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        )
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("{what}: {e}"))
}

impl Shared {
    /// Runs one Redis operation under the timeout, mapping its failure and keeping the
    /// command connection's health up to date.
    ///
    /// The operation is boxed here, once. A pool checkout and a script call make a future
    /// of kilobytes (most of it never used together), and every future that awaits this
    /// one would otherwise hold it inline and be copied whole at each move: into the
    /// `Bus` trait's box, into a join of two operations, into the session's task. A join
    /// copied ~14 KB three times per operation (callgrind: `memcpy` was a fifth of a
    /// join's instructions).
    pub(crate) fn run<'a, T: 'a>(
        &'a self,
        what: &'a str,
        fut: impl Future<Output = Result<T, OpError>> + Send + 'a,
    ) -> impl Future<Output = Result<T, BusError>> + Send + 'a {
        let fut = Box::pin(fut);
        self.run_boxed(what, fut)
    }

    async fn run_boxed<T>(
        &self,
        what: &str,
        fut: std::pin::Pin<Box<dyn Future<Output = Result<T, OpError>> + Send + '_>>,
    ) -> Result<T, BusError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BusError::Unavailable("the bus is closed".into()));
        }
        match tokio::time::timeout(self.cfg.op_timeout, fut).await {
            Ok(Ok(v)) => {
                self.set_cmd_up(true);
                Ok(v)
            }
            Ok(Err(OpError::Redis(e))) if is_unavailable(&e) => {
                self.set_cmd_up(false);
                Err(unavailable(what, e))
            }
            Ok(Err(OpError::Redis(e))) => Err(BusError::Internal(format!("{what}: {e}"))),
            Ok(Err(OpError::Pool(e))) => {
                self.set_cmd_up(false);
                Err(unavailable(what, e))
            }
            Ok(Err(OpError::Bad(e))) => Err(BusError::Internal(format!("{what}: {e}"))),
            Err(_) => {
                self.set_cmd_up(false);
                Err(BusError::Unavailable(format!("{what}: timed out")))
            }
        }
    }

    /// A command connection (one Redis: from the pool, back in it when dropped). It is
    /// multiplexed: batches clone it so that their commands pipeline.
    pub(crate) async fn conn(&self) -> Result<Conn, OpError> {
        match &self.backend {
            Backend::Single { pool, .. } => Ok(Conn::Pooled(pool.get().await?)),
            Backend::Cluster { .. } => self.cluster_conn().await,
        }
    }

    /// The connection publishes and sends go on.
    pub(crate) async fn pub_conn(&self) -> Result<Conn, OpError> {
        match &self.backend {
            Backend::Single { publisher, .. } => Ok(Conn::Manager(publisher.clone())),
            Backend::Cluster { .. } => self.cluster_conn().await,
        }
    }

    /// The cluster's command connection, made now if it is not yet.
    async fn cluster_conn(&self) -> Result<Conn, OpError> {
        let Backend::Cluster { seeds, conn } = &self.backend else {
            return Err(OpError::Bad("not a cluster".into()));
        };
        let c = conn
            .get_or_try_init(|| async {
                sharded::client(seeds, &self.cfg, None)?
                    .get_async_connection()
                    .await
            })
            .await?;
        Ok(Conn::Cluster(c.clone()))
    }

    /// Whether the bus runs on a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster { .. })
    }

    /// A duration in whole milliseconds, at least 1 (the scripts' TTL arguments).
    pub(crate) fn ms(d: Duration) -> u64 {
        (d.as_millis() as u64).max(1)
    }
}
