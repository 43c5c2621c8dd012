//! Backend hooks (docs/protocol.md section 2, "Backend hooks"): the node asks the
//! application over HTTP whether a connection may open (`connect`), a room may be joined
//! (`join`) or a message published (`publish`), and obeys the answer.
//!
//! One client per node, with a keep-alive pool (hyper 1.x, plain `http://` only: put a
//! TLS proxy in front of a remote backend), a timeout per call and a bound on the calls
//! in flight. Every failure (busy, timeout, connection refused, a 5xx, an answer that is
//! not the documented JSON) is a [`HookError`] and refuses: a hook never allows by
//! default. Each request body is signed with HMAC-SHA256 under `--hook-secret`.

use crate::auth::{glob_match, Identity};
use crate::config::HooksConfig;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, COOKIE};
use hyper::{HeaderMap, Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use roomcast_protocol::{close, RoomName, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// The header carrying `sha256=<hex HMAC-SHA256>` of the body (which carries `ts`).
pub const SIGNATURE_HEADER: &str = "x-roomcast-signature";
/// The header carrying the Unix time (seconds) the request was signed at.
pub const TIMESTAMP_HEADER: &str = "x-roomcast-timestamp";
/// The largest hook answer read, bytes; a longer one is malformed.
const MAX_ANSWER: usize = 1024 * 1024;
/// At most one warning per hook this often; the others are counted in the next one.
const WARN_EVERY_MS: u64 = 10_000;

/// Which hook a call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// A new connection.
    Connect,
    /// A client `join`.
    Join,
    /// A client `publish`.
    Publish,
}

impl HookKind {
    /// The label in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Connect => "connect",
            HookKind::Join => "join",
            HookKind::Publish => "publish",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a hook call gave no decision; each refuses (`unavailable`, or close 1013 for
/// connect).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// `--hook-max-concurrency` calls are already in flight.
    #[error("too many hook calls in flight")]
    Busy,
    /// No answer within `--hook-timeout-ms`.
    #[error("the hook backend did not answer in time")]
    Timeout,
    /// The backend could not be reached (refused, reset, DNS).
    #[error("the hook backend is unreachable: {0}")]
    Unreachable(String),
    /// The backend answered with a status other than 200.
    #[error("the hook backend answered HTTP {0}")]
    Status(u16),
    /// The answer is not the documented JSON.
    #[error("the hook backend's answer is malformed: {0}")]
    Malformed(String),
}

impl HookError {
    /// The `result` label of the request metric.
    pub fn label(&self) -> &'static str {
        match self {
            HookError::Busy => "busy",
            HookError::Timeout => "timeout",
            HookError::Unreachable(_) => "unreachable",
            HookError::Status(_) => "status",
            HookError::Malformed(_) => "malformed",
        }
    }
}

/// What the connect hook learns about a new connection.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectRequest {
    /// The client's IP (X-Forwarded-For from a trusted proxy counts).
    pub ip: String,
    /// `ws`, `sse` or `http` (`POST /client/commands`).
    pub transport: &'static str,
    /// The headers named by `--hook-forward-headers`, by lower-case name.
    pub headers: BTreeMap<String, String>,
    /// The request's cookies, by name.
    pub cookies: BTreeMap<String, String>,
    /// What the client gave to authenticate (`{"token": ...}`), or null.
    pub auth: Value,
}

impl ConnectRequest {
    /// Builds the request from an HTTP request's headers.
    pub fn new(
        hooks: &Hooks,
        transport: &'static str,
        ip: IpAddr,
        headers: &HeaderMap,
        auth: Value,
    ) -> ConnectRequest {
        let forwarded = hooks
            .forward_headers
            .iter()
            .filter_map(|name| {
                let v = headers.get(name)?.to_str().ok()?;
                Some((name.as_str().to_string(), v.to_string()))
            })
            .collect();
        ConnectRequest {
            ip: ip.to_string(),
            transport,
            headers: forwarded,
            cookies: cookies(headers),
            auth,
        }
    }
}

/// The cookies of every `Cookie` header (RFC 6265 `name=value; name=value`).
pub fn cookies(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = k.trim();
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .unwrap_or(v);
            (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// The connect hook's decision.
#[derive(Debug, Clone)]
pub enum ConnectDecision {
    /// The connection opens as this identity.
    Allow(Identity),
    /// The connection closes with `code` (4002, 4003 or 1008).
    Deny {
        /// The close code.
        code: u16,
        /// The backend's reason (logged; not sent, the close reason is fixed).
        reason: String,
    },
}

#[derive(Deserialize)]
struct ConnectAnswer {
    allow: bool,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default)]
    join: Option<Vec<String>>,
    #[serde(default)]
    expires: Option<u64>,
    #[serde(default)]
    publish: Option<bool>,
    #[serde(default)]
    presence: Option<bool>,
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Serialize)]
struct RoomRequest<'a> {
    user: &'a str,
    room: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Value>,
}

#[derive(Deserialize)]
struct RoomAnswer {
    allow: bool,
    #[serde(default)]
    data: Option<Value>,
}

/// A join or publish hook's decision.
#[derive(Debug, Clone, PartialEq)]
pub enum RoomDecision {
    /// Go ahead; for publish, with this data instead of the client's when given.
    Allow(Option<Value>),
    /// Refused (`forbidden`).
    Deny,
}

/// Spawns the client's connection tasks as tasks of the node, ended by the drain.
#[derive(Clone)]
struct Exec(Lifecycle);

impl<F> hyper::rt::Executor<F> for Exec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn_until_drain("hook-connection", fut);
    }
}

/// The node's hook client: URLs, the pool, the bound on calls in flight, the signer.
pub struct Hooks {
    client: Client<HttpConnector, Full<Bytes>>,
    urls: [Option<Uri>; 3],
    join_rooms: Vec<String>,
    publish_rooms: Vec<String>,
    forward_headers: Vec<HeaderName>,
    secret: Option<Vec<u8>>,
    timeout: Duration,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    /// Per hook: when the last warning went out (ms since start) and how many were held back.
    warned_at: [AtomicU64; 3],
    held_back: [AtomicU64; 3],
    started: Instant,
}

impl Hooks {
    /// The hook client of a node; `None` when no hook URL is configured. Its pooled
    /// connections are tasks of the node and end when the drain starts.
    pub fn from_config(
        cfg: &HooksConfig,
        metrics: Arc<Metrics>,
        tasks: &Lifecycle,
    ) -> Option<Hooks> {
        let urls = cfg.urls.clone().map(|u| u.0);
        if urls.iter().all(Option::is_none) {
            return None;
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.timeout));
        let client = Client::builder(Exec(tasks.clone()))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(cfg.max_concurrency)
            .build(connector);
        Some(Hooks {
            client,
            urls,
            join_rooms: cfg.join_rooms.clone(),
            publish_rooms: cfg.publish_rooms.clone(),
            forward_headers: cfg.forward_headers.0.clone(),
            secret: cfg.secret.as_ref().map(|s| s.as_bytes().to_vec()),
            timeout: cfg.timeout,
            permits: Arc::new(Semaphore::new(cfg.max_concurrency)),
            metrics,
            warned_at: Default::default(),
            held_back: Default::default(),
            started: Instant::now(),
        })
    }

    /// Whether the connect hook is configured.
    pub fn has_connect(&self) -> bool {
        self.urls[HookKind::Connect.index()].is_some()
    }

    /// Whether a `join` of `room` is asked to the join hook.
    pub fn asks_join(&self, room: &RoomName) -> bool {
        self.urls[HookKind::Join.index()].is_some()
            && self.join_rooms.iter().any(|p| glob_match(p, room.as_str()))
    }

    /// Whether a `publish` to `room` is asked to the publish hook.
    pub fn asks_publish(&self, room: &RoomName) -> bool {
        self.urls[HookKind::Publish.index()].is_some()
            && self
                .publish_rooms
                .iter()
                .any(|p| glob_match(p, room.as_str()))
    }

    /// Asks the connect hook whether a connection may open, and as whom.
    pub async fn connect(&self, req: &ConnectRequest) -> Result<ConnectDecision, HookError> {
        let body = serde_json::to_vec(req).map_err(|e| HookError::Malformed(e.to_string()))?;
        let answer: ConnectAnswer = self.call(HookKind::Connect, body).await?;
        let decision = connect_decision(answer);
        let label = match &decision {
            Ok(ConnectDecision::Allow(_)) => "allow",
            Ok(ConnectDecision::Deny { .. }) => "deny",
            Err(e) => e.label(),
        };
        self.count(HookKind::Connect, label);
        if let Err(e) = &decision {
            self.warn(HookKind::Connect, e);
        }
        decision
    }

    /// Asks the join hook whether `user` may join `room`.
    pub async fn join(&self, user: &UserId, room: &RoomName) -> Result<RoomDecision, HookError> {
        let req = RoomRequest {
            user: user.as_str(),
            room: room.as_str(),
            event: None,
            data: None,
        };
        self.room_call(HookKind::Join, &req).await
    }

    /// Asks the publish hook whether `user` may publish `data` to `room`, and what to
    /// publish instead when it says so.
    pub async fn publish(
        &self,
        user: &UserId,
        room: &RoomName,
        event: &str,
        data: &Value,
    ) -> Result<RoomDecision, HookError> {
        let req = RoomRequest {
            user: user.as_str(),
            room: room.as_str(),
            event: Some(event),
            data: Some(data),
        };
        self.room_call(HookKind::Publish, &req).await
    }

    async fn room_call(
        &self,
        kind: HookKind,
        req: &RoomRequest<'_>,
    ) -> Result<RoomDecision, HookError> {
        let body = serde_json::to_vec(req).map_err(|e| HookError::Malformed(e.to_string()))?;
        let answer: RoomAnswer = self.call(kind, body).await?;
        let decision = match (answer.allow, kind) {
            (true, HookKind::Publish) => RoomDecision::Allow(answer.data),
            (true, _) => RoomDecision::Allow(None),
            (false, _) => RoomDecision::Deny,
        };
        let label = match decision {
            RoomDecision::Allow(_) => "allow",
            RoomDecision::Deny => "deny",
        };
        self.count(kind, label);
        Ok(decision)
    }

    /// POSTs a signed body and parses the answer; every failure is counted and warned
    /// about here (at a rate limit).
    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        kind: HookKind,
        body: Vec<u8>,
    ) -> Result<T, HookError> {
        let started = Instant::now();
        let r = self.call_inner(kind, body).await;
        self.metrics
            .hook_duration
            .with_label_values(&[kind.as_str()])
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &r {
            self.count(kind, e.label());
            self.warn(kind, e);
        }
        r
    }

    async fn call_inner<T: for<'de> Deserialize<'de>>(
        &self,
        kind: HookKind,
        body: Vec<u8>,
    ) -> Result<T, HookError> {
        let Some(uri) = self.urls[kind.index()].clone() else {
            return Err(HookError::Unreachable(format!(
                "no {} hook configured",
                kind.as_str()
            )));
        };
        // Over the bound: refuse at once rather than queue (a slow backend must not pile
        // up sessions waiting on it).
        let _permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| HookError::Busy)?;
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            .to_string();
        let body = with_timestamp(body, &ts);
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(TIMESTAMP_HEADER, ts.as_str());
        if let Some(secret) = &self.secret {
            req = req.header(SIGNATURE_HEADER, format!("sha256={}", sign(secret, &body)));
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| HookError::Unreachable(e.to_string()))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| HookError::Unreachable(error_chain(&e)))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| HookError::Malformed(format!("reading the answer: {e}")))?
                .to_bytes();
            if status != hyper::StatusCode::OK {
                return Err(HookError::Status(status.as_u16()));
            }
            serde_json::from_slice::<T>(&bytes).map_err(|e| HookError::Malformed(e.to_string()))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| HookError::Timeout)?
    }

    fn count(&self, kind: HookKind, result: &str) {
        self.metrics
            .hook_requests
            .with_label_values(&[kind.as_str(), result])
            .inc();
    }

    /// One warning per hook per [`WARN_EVERY_MS`]; the ones held back are counted in it.
    fn warn(&self, kind: HookKind, e: &HookError) {
        let now = self.started.elapsed().as_millis() as u64 + WARN_EVERY_MS;
        let i = kind.index();
        let last = self.warned_at[i].load(Ordering::Relaxed);
        if now.saturating_sub(last) < WARN_EVERY_MS
            || self.warned_at[i]
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.held_back[i].fetch_add(1, Ordering::Relaxed);
            return;
        }
        let held_back = self.held_back[i].swap(0, Ordering::Relaxed);
        tracing::warn!(hook = kind.as_str(), error = %e, held_back, "hook failed; refusing (fail closed)");
    }
}

/// Turns the connect answer into a decision; an allow without a valid user, or a deny
/// with a code other than 4002, 4003 or 1008, is malformed.
fn connect_decision(a: ConnectAnswer) -> Result<ConnectDecision, HookError> {
    if !a.allow {
        let code = a.code.unwrap_or(close::INVALID_TOKEN);
        if ![
            close::INVALID_TOKEN,
            close::NOT_AUTHENTICATED,
            close::POLICY,
        ]
        .contains(&code)
        {
            return Err(HookError::Malformed(format!(
                "deny code {code} is not 4002, 4003 or 1008"
            )));
        }
        return Ok(ConnectDecision::Deny {
            code,
            reason: a.reason.unwrap_or_default(),
        });
    }
    let user = a
        .user
        .ok_or_else(|| HookError::Malformed("allow without a user".into()))?;
    let user = UserId::new(&user).map_err(|e| HookError::Malformed(format!("user: {e}")))?;
    if user.as_str() == roomcast_protocol::SERVER_USER {
        return Err(HookError::Malformed(format!(
            "user {:?} is reserved",
            roomcast_protocol::SERVER_USER
        )));
    }
    let join = a
        .join
        .unwrap_or_default()
        .iter()
        .map(|r| RoomName::new(r).map_err(|e| HookError::Malformed(format!("join {r:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ConnectDecision::Allow(Identity {
        user,
        exp: a.expires,
        rooms: a.rooms,
        publish: a.publish.unwrap_or(true),
        presence: a.presence.unwrap_or(true),
        join,
    }))
}

/// The request object with `"ts": <unix seconds>` as its first member, so that the
/// signature (over the body alone, PROTOCOL section 2) also covers the time: a backend
/// refuses a replayed request by its `ts`. `body` is a serialized JSON object.
fn with_timestamp(body: Vec<u8>, ts: &str) -> Vec<u8> {
    let Some(rest) = body.strip_prefix(b"{") else {
        return body;
    };
    let mut out = Vec::with_capacity(body.len() + ts.len() + 8);
    out.extend_from_slice(b"{\"ts\":");
    out.extend_from_slice(ts.as_bytes());
    if rest.first() != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    out
}

/// `hex(HMAC-SHA256(secret, body))`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // new_from_slice fails for no key length with HMAC; an empty key is refused earlier.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An error and its sources, in one line (hyper's top-level message says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests;
