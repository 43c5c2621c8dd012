//! The state one node shares between its listeners, sessions and routes.

use crate::auth::Authenticator;
use crate::config::Config;
use crate::hub::Hub;
use crate::lifecycle::Lifecycle;
use crate::limits::{Cidr, IpLimiter, Origins};
use crate::metrics::Metrics;
use roomcast_redis_bridge::Bus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Everything a node's tasks share, behind one `Arc`: settings, the hub, the bus, the
/// limits, and the lifecycle that spawns and drains its tasks. Its counters and limiters
/// change; the rest is set once at start.
pub struct Node {
    /// Settings.
    pub cfg: Config,
    /// This node's cluster name.
    pub node_id: String,
    /// Token verification.
    pub auth: Authenticator,
    /// Local membership and fan-out.
    pub hub: Arc<Hub>,
    /// The cluster bus (in-process or Redis).
    pub bus: Arc<dyn Bus>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Allowed Origins.
    pub origins: Origins,
    /// Proxies whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Connections per client IP.
    pub ip_limiter: Arc<IpLimiter>,
    /// Rate limits of the HTTP fallback, per user.
    pub http_rate: crate::limits::UserRateLimiter,
    /// Backend API keys.
    pub api_keys: Vec<String>,
    /// Open client connections (WebSocket and SSE).
    pub connections: AtomicUsize,
    /// Spawns every task of the node and drains them (crate::lifecycle); says whether
    /// the drain has started.
    pub tasks: Lifecycle,
    /// Connections opened and closed, for the heap trimmer.
    pub churn: Arc<crate::memory::Churn>,
    /// The backend hooks, when any is configured.
    pub hooks: Option<crate::hooks::Hooks>,
}

impl Node {
    /// Whether the node accepts clients: not draining, bus connected.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.bus.is_ready() && self.hub.bus_up()
    }

    /// Whether the drain has started: readiness fails, upgrades are refused.
    pub fn is_draining(&self) -> bool {
        self.tasks.is_draining()
    }

    /// Takes a connection slot, or `None` when the node is full.
    pub fn try_connect(self: &Arc<Self>, transport: &'static str) -> Option<ConnSlot> {
        let n = self.connections.fetch_add(1, Ordering::AcqRel);
        if n >= self.cfg.max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.metrics
            .connections
            .with_label_values(&[transport])
            .inc();
        self.metrics.connections_accepted.inc();
        self.churn.note();
        Some(ConnSlot {
            node: self.clone(),
            transport,
        })
    }

    /// The connect hook's request for a new connection, when the hook decides it: always
    /// with `--auth hook` (a token goes to the hook as `{"token": ...}`), else only for a
    /// connection that brings no token (`--auth jwt` verifies tokens itself).
    pub fn connect_request(
        &self,
        transport: &'static str,
        ip: std::net::IpAddr,
        headers: &hyper::HeaderMap,
        token: Option<&str>,
    ) -> Option<crate::hooks::ConnectRequest> {
        let hooks = self.hooks.as_ref().filter(|h| h.has_connect())?;
        if !self.auth.enabled() || (token.is_some() && !self.auth.by_hook()) {
            return None;
        }
        let auth = match token {
            Some(t) => serde_json::json!({ "token": t }),
            None => serde_json::Value::Null,
        };
        Some(crate::hooks::ConnectRequest::new(
            hooks, transport, ip, headers, auth,
        ))
    }

    /// The rooms `who` joins at connect: its `join` list and its personal room.
    pub fn server_rooms(&self, who: &crate::auth::Identity) -> Vec<roomcast_protocol::RoomName> {
        let mut rooms = who.join.clone();
        if let Some(p) = self.cfg.personal_room(&who.user) {
            if !rooms.contains(&p) {
                rooms.push(p);
            }
        }
        rooms
    }

    /// A new cluster-unique connection id.
    pub fn new_conn_id(&self) -> Arc<str> {
        Arc::from(format!("{:016x}", rand::random::<u64>()))
    }
}

/// One connection's place in the node's count; released on drop.
pub struct ConnSlot {
    node: Arc<Node>,
    transport: &'static str,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.node.connections.fetch_sub(1, Ordering::AcqRel);
        self.node.churn.note();
        self.node
            .metrics
            .connections
            .with_label_values(&[self.transport])
            .dec();
    }
}
