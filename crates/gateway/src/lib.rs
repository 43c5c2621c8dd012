//! The roomcast node as a library: [`run`] serves clients on a listener until the
//! shutdown token is cancelled, then drains and stops (crate::lifecycle). The `roomcast`
//! binary is a thin wrapper; tests call the same function on port 0.

pub mod admin;
pub mod api;
pub mod auth;
pub mod commands;
pub mod config;
pub mod conn;
pub mod consumer;
pub mod demo;
pub mod disconnect;
pub mod heartbeat;
pub mod hooks;
pub mod http;
pub mod hub;
pub mod jwks;
pub mod lifecycle;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod socket;
pub mod sse;
pub mod ws;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::hub::Hub;
use crate::lifecycle::Lifecycle;
use crate::limits::IpLimiter;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::socket::{Lane, LaneIo, Watched};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use roomcast_redis_bridge::{Bus, BusConfig, MemoryBus, RedisBus, RoomInterest, SubscribeMode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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

/// How long an HTTP connection has to finish its request once the drain is over.
const HTTP_GRACE: Duration = Duration::from_secs(2);
/// How long the stop waits for the HTTP connections to shut down.
const HTTP_WAIT: Duration = Duration::from_secs(3);

fn bus_config(cfg: &Config, node_id: &str) -> BusConfig {
    BusConfig {
        node_id: node_id.to_string(),
        prefix: cfg.prefix.clone(),
        history_size: cfg.history_size,
        history_ttl: cfg.history_ttl,
        dedupe_window: cfg.dedupe_window,
        presence_ttl: cfg.presence_ttl,
        max_recover: cfg.max_recover,
        op_timeout: cfg.bus_timeout,
        max_lag: cfg.bus_max_lag,
        subscribe: match cfg.bus_subscribe() {
            config::BusSubscribe::Pattern => SubscribeMode::Pattern,
            config::BusSubscribe::Rooms => SubscribeMode::Rooms,
        },
        linger: cfg.bus_linger,
    }
}

/// Serves clients on `listener` until `shutdown` is cancelled, then drains: readiness
/// turns 503, new upgrades are refused, every client gets close 1001 (spread over
/// `--drain-spread-ms`), sessions get `--drain-timeout` to finish; then it stops: the
/// listener and the HTTP connections close, the background tasks end, the bus closes.
pub async fn run(
    listener: TcpListener,
    cfg: Config,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let node = start(cfg, Lifecycle::new(shutdown)).await?;
    let addr = listener.local_addr()?;
    let mode = if node.cfg.has_redis() {
        "cluster"
    } else {
        "standalone"
    };
    tracing::info!(%addr, node = %node.node_id, mode, "roomcast ready: listening on http://{addr}");
    // Accepting goes on while the node drains, so that probes see /readyz 503 and new
    // upgrades get 503 rather than a refused connection.
    tokio::join!(serve(listener, &node), drain(&node));
    stop(&node).await;
    Ok(())
}

/// Builds the node and starts its background tasks: the bus, the hub's member counter,
/// the heartbeat, the JWKS refresher, the stream consumer and the heap trimmer.
async fn start(cfg: Config, tasks: Lifecycle) -> Result<Arc<Node>, RunError> {
    let node_id = cfg.node_id();
    let auth = Authenticator::from_config(&cfg).map_err(RunError::Config)?;
    let metrics = Arc::new(Metrics::new());
    let hooks = crate::hooks::Hooks::from_config(&cfg.hooks(), metrics.clone(), &tasks);
    let bus_cfg = bus_config(&cfg, &node_id);
    let seeds = cfg.redis_cluster_url_list();
    let bus: Arc<dyn Bus> = match &cfg.redis_url {
        Some(url) => Arc::new(RedisBus::connect(url, bus_cfg).await?),
        None if !seeds.is_empty() => Arc::new(RedisBus::connect_cluster(&seeds, bus_cfg).await?),
        None => Arc::new(MemoryBus::new(bus_cfg)),
    };
    let hub = Hub::new(metrics.clone(), RoomInterest::new(&bus), tasks.clone());
    hub.start_member_events(cfg.member_events_max);
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
        node_id,
        auth,
        hub,
        bus,
        metrics,
        origins: cfg.allowed_origins.clone(),
        trusted_proxies: cfg.trusted_proxies.to_vec(),
        ip_limiter: IpLimiter::new(cfg.max_connections_per_ip),
        api_keys: cfg.api_key_list(),
        http_rate: crate::limits::UserRateLimiter::new(cfg.rate_limit, cfg.rate_burst),
        connections: AtomicUsize::new(0),
        tasks,
        churn: Arc::default(),
        hooks,
        cfg,
    });
    if let Some(jwks) = &node.auth.jwks {
        node.metrics.register(jwks.stats.collectors());
        jwks.spawn_refresher(&node.tasks);
    }
    // Publishing from Redis Streams (--consume-stream); stops when the drain starts.
    if let Some(url) = &node.cfg.redis_url {
        if !node.cfg.consume_stream.is_empty() {
            consumer::Consumer::start(node.clone(), url).map_err(RunError::Config)?;
        }
    }
    memory::spawn_trimmer(
        &node.tasks,
        node.cfg.malloc_trim_interval,
        node.churn.clone(),
    );
    // Ends when the drain starts, removing this node's heartbeat; waited for before the
    // bus closes.
    let stop = node.tasks.draining();
    node.tasks
        .spawn("heartbeat", heartbeat::run(node.clone(), stop));
    Ok(node)
}

/// Accepts connections until the drain is over; each is served as HTTP/1.1 with
/// upgrades, and shut down gracefully once the drain is over.
async fn serve(listener: TcpListener, node: &Arc<Node>) {
    let header_timeout = node.cfg.handshake_timeout;
    // Every client socket (HTTP, SSE, and the WebSocket it may become) fails its writes
    // once it has taken nothing for --write-timeout while data waits (slow consumers).
    let write_timeout = node.cfg.write_timeout();
    loop {
        let (stream, peer) = tokio::select! {
            _ = node.tasks.drain_over() => break,
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
        let lane = Lane::new(stream);
        let io = Watched::new(LaneIo(lane.clone()), write_timeout);
        node.tasks.clone().spawn_connection(|stop| async move {
            // Each request carries its socket's lane: an upgrade to a WebSocket hands it
            // to the hub for express writes.
            let svc = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(lane.clone());
                http::route(node.clone(), peer, req)
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let conn = builder
                .serve_connection(TokioIo::new(io), svc)
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
                    let _ = tokio::time::timeout(HTTP_GRACE, conn).await;
                }
            }
        });
    }
    drop(listener);
    if let Err(left) = node.tasks.wait_connections(HTTP_WAIT).await {
        tracing::debug!(left = left.0, "HTTP connections still open at stop");
    }
}

/// The drain, from the shutdown signal: readiness 503 and upgrades refused (the
/// lifecycle says it is draining), close 1001 to every client spread over
/// `--drain-spread-ms`, and `--drain-timeout` for the sessions to end.
async fn drain(node: &Arc<Node>) {
    node.tasks.drain_started().await;
    let sessions = node.connections.load(Ordering::Relaxed);
    tracing::info!(node = %node.node_id, sessions, "draining");
    node.metrics.draining.set(1);
    let (hub, spread) = (node.hub.clone(), node.cfg.drain_spread);
    node.tasks
        .spawn("drain-closes", async move { hub.drain(spread).await });
    if node
        .tasks
        .wait_sessions(node.cfg.drain_timeout)
        .await
        .is_err()
    {
        let left = node.connections.load(Ordering::Relaxed);
        tracing::warn!(left, "drain deadline passed; dropping the rest");
    }
}

/// After the drain: waits for the background tasks (the heartbeat removes this node's
/// entry through the bus, the consumer ends its batch), then closes the bus.
async fn stop(node: &Arc<Node>) {
    let deadline = node
        .cfg
        .drain_timeout
        .max(node.cfg.bus_timeout + Duration::from_secs(1));
    if let Err(left) = node.tasks.wait_tasks(deadline).await {
        tracing::warn!(left = left.0, "background tasks did not end in time");
    }
    node.bus.close().await;
    tracing::info!(node = %node.node_id, "stopped");
}
