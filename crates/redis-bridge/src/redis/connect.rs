//! Opening a [`RedisBus`]: on one Redis (a publish connection, a command pool and, in
//! the subscriber, a pub/sub connection) or on a Redis Cluster (one cluster connection
//! and sharded subscriptions); both go on in `RedisBus::with_backend`.

use super::{Backend, RedisBus, PUBLISH_QUEUE};
use crate::bus::{BusConfig, BusError, SubscribeMode};
use redis::aio::ConnectionManagerConfig;
use redis::AsyncConnectionConfig;
use std::time::Duration;

/// Connections in the command pool.
const POOL_SIZE: usize = 16;

/// `rediss://`: the redis crate uses rustls without choosing a crypto provider; this
/// picks ring unless one is installed already.
fn tls_provider(urls: &[&str]) {
    if urls.iter().any(|u| u.starts_with("rediss"))
        && rustls::crypto::CryptoProvider::get_default().is_none()
    {
        // Another thread may win the race to install one: either is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

impl RedisBus {
    /// Connects to Redis at `url` (`redis://[:password@]host:port[/db]`, or `rediss://`
    /// for TLS) and checks that it answers; fails with [`BusError::Unavailable`] when it
    /// does not within `cfg.op_timeout`, and [`BusError::Internal`] for a bad URL.
    pub async fn connect(url: &str, cfg: BusConfig) -> Result<Self, BusError> {
        tls_provider(&[url]);
        let client =
            redis::Client::open(url).map_err(|e| BusError::Internal(format!("redis url: {e}")))?;
        let op = cfg.op_timeout;
        let mgr_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(op))
            .set_response_timeout(Some(op))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1))
            // many concurrent publishes queue here before they pipeline on the socket
            .set_pipeline_buffer_size(PUBLISH_QUEUE)
            .set_write_backpressure_boundary(64 * 1024);
        // Lazy: a node may start before Redis does (compose, k8s); it serves with /readyz
        // 503 and the subscriber and health tasks connect when Redis answers.
        let publisher =
            redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), mgr_cfg)
                .map_err(|e| BusError::Internal(format!("connect: {e}")))?;
        let conn_cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(op))
            .set_response_timeout(Some(op));
        let manager = deadpool_redis::Manager::new_with_config(
            client.get_connection_info().clone(),
            conn_cfg,
        )
        .map_err(|e| BusError::Internal(format!("redis pool: {e}")))?;
        let pool = super::pool::Pool::builder(super::pool::Manager::new(manager))
            .max_size(POOL_SIZE)
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(op))
            .create_timeout(Some(op))
            .recycle_timeout(Some(op))
            .build()
            .map_err(|e| BusError::Internal(format!("redis pool: {e}")))?;
        let backend = Backend::Single {
            client,
            publisher,
            pool,
        };
        Self::with_backend(backend, cfg).await
    }

    /// Connects to a Redis Cluster (7.0 or newer) through `seeds` (`redis://` URLs of
    /// any of its nodes): names carry hash tags, publishes SPUBLISH, and the node listens
    /// with sharded subscriptions per room and user (rooms mode, whatever `cfg.subscribe`
    /// says). A cluster that does not answer yet is waited for, as one Redis is.
    pub async fn connect_cluster(seeds: &[String], mut cfg: BusConfig) -> Result<Self, BusError> {
        if seeds.is_empty() {
            return Err(BusError::Internal("no redis cluster url".into()));
        }
        tls_provider(&seeds.iter().map(String::as_str).collect::<Vec<_>>());
        for s in seeds {
            redis::Client::open(s.as_str())
                .map_err(|e| BusError::Internal(format!("redis cluster url {s:?}: {e}")))?;
        }
        cfg.subscribe = SubscribeMode::Rooms;
        let backend = Backend::Cluster {
            seeds: seeds.to_vec(),
            conn: tokio::sync::OnceCell::new(),
        };
        Self::with_backend(backend, cfg).await
    }
}
