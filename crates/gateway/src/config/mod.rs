//! Node configuration: every setting is a flag, an environment variable
//! `ROOMCAST_<NAME>` and a key of the optional TOML file given by `--config`; a flag
//! wins over the environment, the environment over the file, the file over the default
//! (docs/operations.md). Values are parsed once, into the types of [`types`]
//! (durations in their flag's unit, CIDRs, Origins, hook URLs); [`Config::validate`]
//! checks the settings together; [`file`] layers the TOML file under flags and
//! environment.

mod check;
mod file;
pub mod types;

pub use types::split_list;
use types::{Cidrs, HeaderNames, HookUrl, Origins};

use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How clients authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// JWTs (HS256 secret or RS256/ES256/EdDSA public key).
    Jwt,
    /// No authentication (development): the user id is the connection id.
    None,
    /// Every connection is decided by the connect hook (`--hook-connect-url`); a token
    /// the client gives is passed to the hook, never verified as a JWT.
    Hook,
}

/// What a token without a `rooms` claim may join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoomPolicy {
    /// Any room.
    Allow,
    /// No room.
    Deny,
}

/// How a node listens to the bus (docs/protocol.md section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BusSubscribe {
    /// One pattern subscription per kind: every node receives every message.
    Pattern,
    /// A subscription per room with a local member and per local user: a node receives
    /// only what it delivers.
    Rooms,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

/// Every setting of a node.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "roomcast",
    version,
    about = "roomcast: a real-time WebSocket gateway that runs as a cluster"
)]
pub struct Config {
    /// TOML file with any of these settings (keys named like the flags).
    #[arg(long, env = "ROOMCAST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to serve HTTP and WebSocket on.
    #[arg(long, env = "ROOMCAST_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Connections the kernel holds for the node before it accepts them (the listen
    /// backlog; capped by net.core.somaxconn). Past it a connection attempt is dropped
    /// and the client retries after a second: a reconnect storm needs room here.
    #[arg(long, env = "ROOMCAST_LISTEN_BACKLOG", default_value_t = 4096)]
    pub listen_backlog: u32,
    /// Redis to form a cluster through (redis:// or rediss://); absent: standalone.
    #[arg(long, env = "ROOMCAST_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Seed URLs of a Redis Cluster (7.0 or newer), comma-separated (redis:// or
    /// rediss://); excludes --redis-url. The node then uses sharded pub/sub in rooms mode.
    #[arg(long, env = "ROOMCAST_REDIS_CLUSTER_URLS", value_delimiter = ',', value_parser = types::item)]
    pub redis_cluster_urls: Vec<String>,
    /// Prefix of every Redis key and channel.
    #[arg(long, env = "ROOMCAST_PREFIX", default_value = "roomcast")]
    pub prefix: String,
    /// This node's name in the cluster (default: host name and a random suffix).
    #[arg(long, env = "ROOMCAST_NODE_ID")]
    pub node_id: Option<String>,
    /// Authentication: jwt, none or hook. With jwt and a connect hook, a connection with
    /// a token is verified as a JWT and one without is asked to the hook.
    #[arg(long, env = "ROOMCAST_AUTH", value_enum, default_value = "jwt")]
    pub auth: AuthMode,
    /// HS256 shared secret.
    #[arg(long, env = "ROOMCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key file for RS256, ES256 or EdDSA.
    #[arg(long, env = "ROOMCAST_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// JWK set endpoint (http:// or https://) to fetch verification keys from, by `kid`, instead of
    /// one configured key.
    #[arg(long, env = "ROOMCAST_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// Seconds between periodic fetches of the JWK set.
    #[arg(long, env = "ROOMCAST_JWT_JWKS_POLL", value_parser = types::secs, default_value = "300")]
    pub jwt_jwks_poll: Duration,
    /// Least seconds between two fetches caused by tokens naming an unknown `kid`
    /// (PROTOCOL section 2).
    #[arg(long, env = "ROOMCAST_JWT_JWKS_REFRESH", value_parser = types::secs, default_value = "30")]
    pub jwt_jwks_refresh: Duration,
    /// Seconds the cached keys stay usable past a missed periodic refresh (endpoint down).
    #[arg(long, env = "ROOMCAST_JWT_JWKS_STALE_MAX", value_parser = types::secs, default_value = "86400")]
    pub jwt_jwks_stale_max: Duration,
    /// Accepted algorithms, comma-separated (default: the first the key fits; RS256 with
    /// --jwt-jwks-url).
    #[arg(long, env = "ROOMCAST_JWT_ALGORITHMS", value_delimiter = ',', value_parser = types::item)]
    pub jwt_algorithms: Vec<String>,
    /// Required `aud` (not checked when absent).
    #[arg(long, env = "ROOMCAST_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Required `iss` (not checked when absent).
    #[arg(long, env = "ROOMCAST_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Clock leeway for exp/nbf, seconds.
    #[arg(long, env = "ROOMCAST_JWT_LEEWAY", value_parser = types::secs, default_value = "5")]
    pub jwt_leeway: Duration,
    /// What a token without a `rooms` claim may join: allow or deny.
    #[arg(
        long,
        env = "ROOMCAST_DEFAULT_ROOM_POLICY",
        value_enum,
        default_value = "allow"
    )]
    pub default_room_policy: RoomPolicy,
    /// Comma-separated keys for the backend API (none: the API answers 401).
    #[arg(long, env = "ROOMCAST_API_KEYS", hide_env_values = true, value_delimiter = ',', value_parser = types::item)]
    pub api_keys: Vec<String>,
    /// Comma-separated keys that open the admin page at /admin (none: /admin answers 404).
    /// Each at least 16 characters.
    #[arg(long, env = "ROOMCAST_ADMIN_KEY", hide_env_values = true, value_delimiter = ',', value_parser = types::item)]
    pub admin_key: Vec<String>,
    /// Seconds between this node's heartbeats: its stats, written to the bus for the admin
    /// page of any node; a node is listed until three intervals pass without one.
    #[arg(long, env = "ROOMCAST_NODE_STATS_INTERVAL", value_parser = types::secs, default_value = "5")]
    pub node_stats_interval: Duration,
    /// Comma-separated Origins allowed to open /ws and /sse; `*` for any.
    #[arg(
        long,
        env = "ROOMCAST_ALLOWED_ORIGINS",
        value_parser = Origins::parser,
        default_value = "*"
    )]
    pub allowed_origins: Origins,
    /// Log format: text or json.
    #[arg(long, env = "ROOMCAST_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "ROOMCAST_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Runtime worker threads; 0 means one per CPU core.
    #[arg(long, env = "ROOMCAST_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
    /// Heartbeat interval, seconds: pings go out this often; two silent intervals close.
    #[arg(long, env = "ROOMCAST_HEARTBEAT", value_parser = types::secs, default_value = "25")]
    pub heartbeat: Duration,
    /// Seconds a connection has to authenticate with an `auth` message.
    #[arg(long, env = "ROOMCAST_AUTH_TIMEOUT", value_parser = types::secs, default_value = "5")]
    pub auth_timeout: Duration,
    /// Seconds a client has to complete the HTTP request and upgrade.
    #[arg(long, env = "ROOMCAST_HANDSHAKE_TIMEOUT", value_parser = types::secs, default_value = "10")]
    pub handshake_timeout: Duration,
    /// Largest accepted frame or HTTP body, bytes.
    #[arg(long, env = "ROOMCAST_MAX_MESSAGE_SIZE", default_value_t = 65536)]
    pub max_message_size: usize,
    /// Most client connections (WebSocket and SSE) this node holds; beyond: 1013 / 503.
    #[arg(long, env = "ROOMCAST_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,
    /// Most connections from one client IP (0: unlimited).
    #[arg(long, env = "ROOMCAST_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,
    /// Comma-separated CIDRs whose X-Forwarded-For is trusted.
    #[arg(
        long,
        env = "ROOMCAST_TRUSTED_PROXIES",
        value_parser = Cidrs::parse,
        default_value = "127.0.0.0/8,::1/128"
    )]
    pub trusted_proxies: Cidrs,
    /// Requests per second a connection may make (token bucket rate).
    #[arg(long, env = "ROOMCAST_RATE_LIMIT", default_value_t = 100.0)]
    pub rate_limit: f64,
    /// Token bucket size (burst).
    #[arg(long, env = "ROOMCAST_RATE_BURST", default_value_t = 200.0)]
    pub rate_burst: f64,
    /// `rate_limited` answers that close the connection with 4029 when each comes within
    /// 10 s of the one before (however the client paces its requests; frames admitted in
    /// between do not reset the count).
    #[arg(long, env = "ROOMCAST_RATE_LIMIT_STRIKES", default_value_t = 20)]
    pub rate_limit_strikes: u32,
    /// Requests (publish, send, presence, ping) one connection may have in flight at
    /// once; the socket is not read while that many wait for Redis.
    #[arg(long, env = "ROOMCAST_MAX_PENDING_REQUESTS", default_value_t = 32)]
    pub max_pending_requests: usize,
    /// Most rooms one connection may join.
    #[arg(long, env = "ROOMCAST_MAX_ROOMS", default_value_t = 100)]
    pub max_rooms: usize,
    /// Users above which a room sends no `member_joined` / `member_left` and sends instead
    /// `member_count` at most once a second while the count changes (a join storm into a
    /// room of N would otherwise cost N² frames).
    #[arg(long, env = "ROOMCAST_MEMBER_EVENTS_MAX", default_value_t = 1000)]
    pub member_events_max: u64,
    /// Whether the fan-out writes a frame straight to the socket of a WebSocket whose
    /// session waits with nothing queued (an express write: no queue, no wake-up), when the
    /// socket takes it at once; `false` queues every frame for the session.
    #[arg(long, env = "ROOMCAST_EXPRESS_WRITES", default_value_t = true, action = clap::ArgAction::Set)]
    pub express_writes: bool,
    /// Initial read buffer per WebSocket connection, bytes (grows for larger frames).
    #[arg(long, env = "ROOMCAST_WS_READ_BUFFER", default_value_t = 512)]
    pub ws_read_buffer: usize,
    /// Seconds between returns of freed heap pages to the OS (after connections came or
    /// went); 0 turns it off. Only with glibc.
    #[arg(long, env = "ROOMCAST_MALLOC_TRIM_INTERVAL", value_parser = types::secs, default_value = "10")]
    pub malloc_trim_interval: Duration,
    /// Outbound queue per connection, messages; overflow closes with 4008.
    #[arg(long, env = "ROOMCAST_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,
    /// Seconds a client socket may accept no bytes while data waits for it before the
    /// connection is closed with 4008 (slow consumer).
    #[arg(long, env = "ROOMCAST_WRITE_TIMEOUT", value_parser = types::secs, default_value = "10")]
    pub write_timeout: Duration,
    /// Kernel send buffer of each client socket, bytes (SO_SNDBUF; Linux doubles it for
    /// its bookkeeping); bounds what a client that stops reading holds in kernel memory.
    /// 0 leaves the kernel's default (auto-tuned up to net.ipv4.tcp_wmem's maximum).
    #[arg(long, env = "ROOMCAST_SEND_BUFFER", default_value_t = 65536)]
    pub send_buffer: usize,
    /// Messages of history kept per room.
    #[arg(long, env = "ROOMCAST_HISTORY_SIZE", default_value_t = 1000)]
    pub history_size: usize,
    /// Seconds a room's history lives after its last publish.
    #[arg(long, env = "ROOMCAST_HISTORY_TTL", value_parser = types::secs, default_value = "86400")]
    pub history_ttl: Duration,
    /// Most messages a join may replay (history or recovery).
    #[arg(long, env = "ROOMCAST_MAX_RECOVER", default_value_t = 1000)]
    pub max_recover: usize,
    /// Seconds a publish/send id is remembered for deduplication.
    #[arg(long, env = "ROOMCAST_DEDUPE_WINDOW", value_parser = types::secs, default_value = "120")]
    pub dedupe_window: Duration,
    /// Seconds a presence entry lives without its node refreshing it.
    #[arg(long, env = "ROOMCAST_PRESENCE_TTL", value_parser = types::secs, default_value = "30")]
    pub presence_ttl: Duration,
    /// Seconds a bus (Redis) operation may take before it fails as `unavailable`.
    #[arg(long, env = "ROOMCAST_BUS_TIMEOUT", value_parser = types::secs, default_value = "5")]
    pub bus_timeout: Duration,
    /// Seconds a room message may arrive later than its publishing node's usual delay
    /// before this node's subscription counts as fallen behind: it is dropped (with what
    /// was queued for it) and re-synchronised from history. 0: never.
    #[arg(long, env = "ROOMCAST_BUS_MAX_LAG", value_parser = types::secs, default_value = "30")]
    pub bus_max_lag: Duration,
    /// How the node listens to the bus: `pattern` (every node receives every room's
    /// messages) or `rooms` (a subscription per room and user held locally).
    /// Default: pattern (one Redis), rooms (a Redis Cluster, which allows no other).
    #[arg(long, env = "ROOMCAST_BUS_SUBSCRIBE", value_enum)]
    pub bus_subscribe: Option<BusSubscribe>,
    /// Rooms mode: milliseconds a room's or user's channel stays subscribed after its last
    /// local member left (a quick re-join costs no Redis command).
    #[arg(
        long = "bus-linger-ms",
        env = "ROOMCAST_BUS_LINGER_MS",
        value_name = "BUS_LINGER_MS",
        value_parser = types::millis,
        default_value = "2000"
    )]
    pub bus_linger: Duration,
    /// Redis Stream keys to publish from (repeatable or comma-separated); each entry's
    /// `room`, `event`, `data` and optional `id` fields become a room publish. Needs
    /// --redis-url.
    #[arg(long, env = "ROOMCAST_CONSUME_STREAM", value_delimiter = ',')]
    pub consume_stream: Vec<String>,
    /// The cluster's consumer group on those streams (one per cluster: each entry is
    /// published once; the consumer name is the node id).
    #[arg(long, env = "ROOMCAST_CONSUME_GROUP", default_value = "roomcast")]
    pub consume_group: String,
    /// Milliseconds an entry may stay pending with a consumer (a dead node) before
    /// another node claims and publishes it.
    #[arg(
        long = "consume-claim-idle-ms",
        env = "ROOMCAST_CONSUME_CLAIM_IDLE_MS",
        value_name = "CONSUME_CLAIM_IDLE_MS",
        value_parser = types::millis,
        default_value = "30000"
    )]
    pub consume_claim_idle: Duration,
    /// Seconds the drain may take on shutdown before remaining connections are dropped.
    #[arg(long, env = "ROOMCAST_DRAIN_TIMEOUT", value_parser = types::secs, default_value = "10")]
    pub drain_timeout: Duration,
    /// Milliseconds over which drain closes (1001) are spread, to avoid a reconnect storm.
    #[arg(
        long = "drain-spread-ms",
        env = "ROOMCAST_DRAIN_SPREAD_MS",
        value_name = "DRAIN_SPREAD_MS",
        value_parser = types::millis,
        default_value = "1000"
    )]
    pub drain_spread: Duration,
    /// Seconds a client has to send the whole body of a /client/commands or /api request
    /// once its headers are in; beyond, the request is answered 408 and closed.
    #[arg(long, env = "ROOMCAST_HTTP_BODY_TIMEOUT", value_parser = types::secs, default_value = "10")]
    pub http_body_timeout: Duration,
    /// Most /client/commands and /api requests one client IP may have in progress at once
    /// (beyond: 429); 0: unlimited.
    #[arg(long, env = "ROOMCAST_MAX_HTTP_PER_IP", default_value_t = 64)]
    pub max_http_per_ip: usize,
    /// Connect hook: the URL (http://) the node POSTs a new connection's cookies,
    /// forwarded headers, auth payload and IP to; the answer allows (as a user) or denies.
    #[arg(
        long,
        env = "ROOMCAST_HOOK_CONNECT_URL",
        value_name = "HOOK_CONNECT_URL",
        value_parser = HookUrl::parser("--hook-connect-url"),
        default_value = "",
        hide_default_value = true
    )]
    pub hook_connect_url: HookUrl,
    /// Join hook: the URL (http://) asked whether a user may join a room matching
    /// `--hook-join-rooms`.
    #[arg(
        long,
        env = "ROOMCAST_HOOK_JOIN_URL",
        value_name = "HOOK_JOIN_URL",
        value_parser = HookUrl::parser("--hook-join-url"),
        default_value = "",
        hide_default_value = true
    )]
    pub hook_join_url: HookUrl,
    /// Publish hook: the URL (http://) asked whether a user may publish to a room matching
    /// `--hook-publish-rooms`; it may replace the data.
    #[arg(
        long,
        env = "ROOMCAST_HOOK_PUBLISH_URL",
        value_name = "HOOK_PUBLISH_URL",
        value_parser = HookUrl::parser("--hook-publish-url"),
        default_value = "",
        hide_default_value = true
    )]
    pub hook_publish_url: HookUrl,
    /// Comma-separated room patterns (`*` as a glob) whose joins the join hook decides.
    #[arg(
        long,
        env = "ROOMCAST_HOOK_JOIN_ROOMS",
        value_delimiter = ',',
        value_parser = types::item,
        default_value = "*"
    )]
    pub hook_join_rooms: Vec<String>,
    /// Comma-separated room patterns (`*` as a glob) whose publishes the publish hook decides.
    #[arg(
        long,
        env = "ROOMCAST_HOOK_PUBLISH_ROOMS",
        value_delimiter = ',',
        value_parser = types::item,
        default_value = "*"
    )]
    pub hook_publish_rooms: Vec<String>,
    /// Comma-separated request headers passed to the connect hook (cookies always are).
    #[arg(
        long,
        env = "ROOMCAST_HOOK_FORWARD_HEADERS",
        value_parser = HeaderNames::parse,
        default_value = ""
    )]
    pub hook_forward_headers: HeaderNames,
    /// Shared secret: every hook request carries `X-Roomcast-Signature: sha256=<hex
    /// HMAC-SHA256 of "<X-Roomcast-Timestamp>.<body>">` (none: unsigned).
    #[arg(long, env = "ROOMCAST_HOOK_SECRET", hide_env_values = true)]
    pub hook_secret: Option<String>,
    /// Milliseconds a hook call may take; beyond, it refuses (fail closed).
    #[arg(
        long = "hook-timeout-ms",
        env = "ROOMCAST_HOOK_TIMEOUT_MS",
        value_name = "HOOK_TIMEOUT_MS",
        value_parser = types::millis,
        default_value = "2000"
    )]
    pub hook_timeout: Duration,
    /// Hook calls one node makes at once; beyond, a call refuses at once (`unavailable`).
    #[arg(long, env = "ROOMCAST_HOOK_MAX_CONCURRENCY", default_value_t = 256)]
    pub hook_max_concurrency: usize,
    /// Template of the room every connection joins at connect, `{user}` standing for
    /// its user id (for example `user:{user}`); empty: none.
    #[arg(long, env = "ROOMCAST_PERSONAL_ROOM", default_value = "")]
    pub personal_room: String,
}

/// A configuration that cannot run, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read or parsed.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A setting is invalid.
    #[error("{0}")]
    Invalid(String),
}

/// What the hook client needs (crate::hooks): its part of the configuration.
#[derive(Debug, Clone)]
pub struct HooksConfig {
    /// `--hook-connect-url`, `--hook-join-url`, `--hook-publish-url`, in that order.
    pub urls: [HookUrl; 3],
    /// Room patterns whose joins the join hook decides (empty items dropped).
    pub join_rooms: Vec<String>,
    /// Room patterns whose publishes the publish hook decides (empty items dropped).
    pub publish_rooms: Vec<String>,
    /// Request headers passed to the connect hook.
    pub forward_headers: HeaderNames,
    /// The signing secret (none: unsigned).
    pub secret: Option<String>,
    /// How long a hook call may take.
    pub timeout: Duration,
    /// Hook calls at once.
    pub max_concurrency: usize,
}

impl Config {
    /// Reads flags, environment and the `--config` file, in that order of precedence.
    /// `--help`, `--version` and a flag clap cannot read end the process as clap does
    /// (status 2 for an error); a value that cannot be used is a [`ConfigError`].
    pub fn load() -> Result<Config, ConfigError> {
        let cfg = match file::parse(std::env::args_os()) {
            Ok(cfg) => cfg,
            Err(file::Failed::Clap(e)) => e.exit(),
            Err(file::Failed::Config(e)) => return Err(e),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// A configuration from these flags (tests and embedding); the environment and the
    /// `--config` file apply too, below the flags.
    pub fn from_args<I: IntoIterator<Item = S>, S: Into<String>>(
        args: I,
    ) -> Result<Config, ConfigError> {
        let mut v = vec!["roomcast".to_string()];
        v.extend(args.into_iter().map(Into::into));
        let cfg = file::parse(v).map_err(ConfigError::from)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// This node's id: the configured one, or the host name and a random suffix.
    pub fn node_id(&self) -> String {
        if let Some(id) = &self.node_id {
            return id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "roomcast".into());
        format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
    }

    /// Heartbeat interval (`--heartbeat`).
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }

    /// How long a client socket may accept no bytes while data waits (4008).
    pub fn write_timeout(&self) -> Duration {
        self.write_timeout
    }

    /// The admin keys; empty when the admin page is disabled.
    pub fn admin_key_list(&self) -> Vec<String> {
        non_empty(&self.admin_key)
    }

    /// The personal room of `user` (`--personal-room`), if one is configured and the
    /// name it makes is valid.
    pub fn personal_room(
        &self,
        user: &roomcast_protocol::UserId,
    ) -> Option<roomcast_protocol::RoomName> {
        if self.personal_room.is_empty() {
            return None;
        }
        roomcast_protocol::RoomName::new(&self.personal_room.replace("{user}", user.as_str())).ok()
    }

    /// The Redis Cluster seed URLs (empty without a cluster).
    pub fn redis_cluster_url_list(&self) -> Vec<String> {
        non_empty(&self.redis_cluster_urls)
    }

    /// Whether `--redis-cluster-urls` was given (even with nothing but commas in it).
    fn has_cluster(&self) -> bool {
        !self.redis_cluster_urls.is_empty()
    }

    /// How the node listens to the bus: as configured, else rooms on a Redis Cluster and
    /// pattern otherwise.
    pub fn bus_subscribe(&self) -> BusSubscribe {
        match (self.bus_subscribe, self.has_cluster()) {
            (_, true) => BusSubscribe::Rooms,
            (Some(m), false) => m,
            (None, false) => BusSubscribe::Pattern,
        }
    }

    /// Whether the node forms a cluster through Redis (one Redis or a Redis Cluster).
    pub fn has_redis(&self) -> bool {
        self.redis_url.is_some() || self.has_cluster()
    }

    /// The API keys.
    pub fn api_key_list(&self) -> Vec<String> {
        non_empty(&self.api_keys)
    }

    /// The accepted JWT algorithms as named, when `--jwt-algorithms` was given.
    pub fn jwt_algorithm_list(&self) -> Option<Vec<String>> {
        (!self.jwt_algorithms.is_empty()).then(|| non_empty(&self.jwt_algorithms))
    }

    /// The hook client's settings.
    pub fn hooks(&self) -> HooksConfig {
        HooksConfig {
            urls: [
                self.hook_connect_url.clone(),
                self.hook_join_url.clone(),
                self.hook_publish_url.clone(),
            ],
            join_rooms: non_empty(&self.hook_join_rooms),
            publish_rooms: non_empty(&self.hook_publish_rooms),
            forward_headers: self.hook_forward_headers.clone(),
            secret: self.hook_secret.clone().filter(|s| !s.is_empty()),
            timeout: self.hook_timeout,
            max_concurrency: self.hook_max_concurrency,
        }
    }
}

/// The items of a list setting, without the empty ones (`a,,b` or a trailing comma).
fn non_empty(items: &[String]) -> Vec<String> {
    items.iter().filter(|i| !i.is_empty()).cloned().collect()
}

#[cfg(test)]
mod tests;
