//! The roomcast node as a library: [`run`] serves clients on a listener until the
//! shutdown token is cancelled, then drains. The `roomcast` binary is a thin wrapper;
//! tests call the same function on port 0.

pub mod admin;
pub mod api;
pub mod auth;
pub mod commands;
pub mod config;
pub mod consumer;
pub mod demo;
pub mod heartbeat;
pub mod hooks;
pub mod http;
pub mod hub;
pub mod jwks;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod session;
pub mod socket;
pub mod sse;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::hub::Hub;
use crate::limits::{parse_cidrs, IpLimiter, Origins};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::socket::Watched;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use roomcast_redis_bridge::{Bus, BusConfig, MemoryBus, RedisBus, RoomInterest, SubscribeMode};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration cannot run.
    #[error("configuration: {0}")]
    Config(String),
    /// The bus could not be set up.
    #[error("cluster bus: {0}")]
    Bus(#[from] roomcast_redis_bridge::BusError),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

fn bus_config(cfg: &Config, node_id: &str) -> BusConfig {
    BusConfig {
        node_id: node_id.to_string(),
        prefix: cfg.prefix.clone(),
        history_size: cfg.history_size,
        history_ttl: Duration::from_secs(cfg.history_ttl),
        dedupe_window: Duration::from_secs(cfg.dedupe_window),
        presence_ttl: Duration::from_secs(cfg.presence_ttl),
        max_recover: cfg.max_recover,
        op_timeout: Duration::from_secs(cfg.bus_timeout),
        max_lag: Duration::from_secs(cfg.bus_max_lag),
        subscribe: match cfg.bus_subscribe() {
            config::BusSubscribe::Pattern => SubscribeMode::Pattern,
            config::BusSubscribe::Rooms => SubscribeMode::Rooms,
        },
        linger: Duration::from_millis(cfg.bus_linger_ms),
    }
}

/// Serves clients on `listener` until `shutdown` is cancelled, then drains: readiness
/// turns 503, new upgrades are refused, every client gets close 1001 (spread over
/// `--drain-spread-ms`), sessions get `--drain-timeout` to finish, the bus closes.
pub async fn run(
    listener: TcpListener,
    cfg: Config,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let node_id = cfg.node_id();
    let auth = Authenticator::from_config(&cfg).map_err(RunError::Config)?;
    let trusted_proxies = parse_cidrs(&cfg.trusted_proxies).map_err(RunError::Config)?;
    let metrics = Arc::new(Metrics::new());
    let hooks = crate::hooks::Hooks::from_config(&cfg, metrics.clone(), shutdown.clone())
        .map_err(|e| RunError::Config(e.to_string()))?;
    let bus_cfg = bus_config(&cfg, &node_id);
    let seeds = cfg.redis_cluster_url_list();
    let bus: Arc<dyn Bus> = match &cfg.redis_url {
        Some(url) => Arc::new(RedisBus::connect(url, bus_cfg).await?),
        None if !seeds.is_empty() => Arc::new(RedisBus::connect_cluster(&seeds, bus_cfg).await?),
        None => Arc::new(MemoryBus::new(bus_cfg)),
    };
    let hub = Hub::new(metrics.clone(), RoomInterest::new(&bus));
    hub.start_member_events(cfg.member_events_max, shutdown.clone());
    match bus.start(hub.clone()).await {
        Ok(()) => {}
        // Redis is down or slow at startup: serve local clients with /readyz 503; the
        // bus keeps trying and reports when it is up (a wrong URL still fails here).
        Err(roomcast_redis_bridge::BusError::Unavailable(e)) => {
            tracing::warn!(error = %e, "cluster bus not up yet; /readyz answers 503 until it is")
        }
        Err(e) => return Err(e.into()),
    }
    let node = Arc::new(Node {
        node_id: node_id.clone(),
        auth,
        hub,
        bus: bus.clone(),
        metrics,
        origins: Origins::parse(&cfg.allowed_origins),
        trusted_proxies,
        ip_limiter: IpLimiter::new(cfg.max_connections_per_ip),
        api_keys: cfg.api_key_list(),
        http_rate: crate::limits::UserRateLimiter::new(cfg.rate_limit, cfg.rate_burst),
        draining: AtomicBool::new(false),
        connections: AtomicUsize::new(0),
        drain: CancellationToken::new(),
        sessions: TaskTracker::new(),
        churn: Arc::default(),
        hooks,
        cfg,
    });
    if let Some(jwks) = &node.auth.jwks {
        node.metrics.register(jwks.stats.collectors());
        jwks.spawn_refresher(shutdown.clone());
    }
    // Publishing from Redis Streams (--consume-stream); stops when the drain starts.
    let consumer = match &node.cfg.redis_url {
        Some(url) if !node.cfg.consume_stream.is_empty() => Some(
            consumer::Consumer::start(node.clone(), url, shutdown.child_token())
                .map_err(RunError::Config)?,
        ),
        _ => None,
    };
    memory::spawn_trimmer(
        Duration::from_secs(node.cfg.malloc_trim_interval),
        node.churn.clone(),
        shutdown.clone(),
    );
    // Ends on shutdown, removing this node's heartbeat; waited for before the bus closes.
    let heartbeat = tokio::spawn(heartbeat::run(node.clone(), shutdown.clone()));
    let addr = listener.local_addr()?;
    let mode = if node.cfg.has_redis() {
        "cluster"
    } else {
        "standalone"
    };
    tracing::info!(%addr, node = %node_id, mode, "roomcast ready: listening on http://{addr}");

    let conns = TaskTracker::new();
    let stop_http = CancellationToken::new();
    // Accepting goes on while the node drains, so that probes see /readyz 503 and new
    // upgrades get 503 rather than a refused connection; it ends when every session is
    // gone or the drain deadline passes.
    let drained = CancellationToken::new();
    let mut draining = false;
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                tracing::info!(node = %node_id, sessions = node.connections.load(Ordering::Relaxed), "draining");
                node.draining.store(true, Ordering::Relaxed);
                node.metrics.draining.set(1);
                node.drain.cancel();
                let (hub, spread) = (node.hub.clone(), Duration::from_millis(node.cfg.drain_spread_ms));
                tokio::spawn(async move { hub.drain(spread).await });
                node.sessions.close();
                let (n, done) = (node.clone(), drained.clone());
                tokio::spawn(async move {
                    let deadline = Duration::from_secs(n.cfg.drain_timeout);
                    if tokio::time::timeout(deadline, n.sessions.wait()).await.is_err() {
                        tracing::warn!(left = n.connections.load(Ordering::Relaxed), "drain deadline passed; dropping the rest");
                    }
                    done.cancel();
                });
                continue;
            }
            _ = drained.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        if node.cfg.send_buffer > 0 {
            // A client that stops reading holds at most this much in the kernel; the
            // rest waits in its bounded outbound queue, where --write-timeout finds it.
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(node.cfg.send_buffer);
        }
        let node = node.clone();
        let stop = stop_http.clone();
        let header_timeout = Duration::from_secs(node.cfg.handshake_timeout);
        // Every client socket (HTTP, SSE, and the WebSocket it may become) fails its writes
        // once it has taken nothing for --write-timeout while data waits (slow consumers).
        let write_timeout = node.cfg.write_timeout();
        conns.spawn(async move {
            let svc = service_fn(move |req| http::route(node.clone(), peer, req));
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let conn = builder
                .serve_connection(TokioIo::new(Watched::new(stream, write_timeout)), svc)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::trace!(error = %e, "http connection ended");
                    }
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
        });
    }
    drop(listener);
    stop_http.cancel();
    conns.close();
    let _ = tokio::time::timeout(Duration::from_secs(3), conns.wait()).await;
    let _ = tokio::time::timeout(Duration::from_secs(node.cfg.bus_timeout + 1), heartbeat).await;
    if let Some(c) = consumer {
        c.stopped(Duration::from_secs(node.cfg.drain_timeout)).await;
    }
    bus.close().await;
    tracing::info!(node = %node_id, "stopped");
    Ok(())
}
