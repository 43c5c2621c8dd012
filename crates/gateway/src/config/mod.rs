//! Node configuration: every setting is a flag, an environment variable
//! `ROOMCAST_<NAME>` and a key of the optional TOML file given by `--config`;
//! flags win over the environment, the environment over the file (README.md, Configuration).

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
    /// Redis to form a cluster through (redis:// or rediss://); absent: standalone.
    #[arg(long, env = "ROOMCAST_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Seed URLs of a Redis Cluster (7.0 or newer), comma-separated (redis:// or
    /// rediss://); excludes --redis-url. The node then uses sharded pub/sub in rooms mode.
    #[arg(long, env = "ROOMCAST_REDIS_CLUSTER_URLS")]
    pub redis_cluster_urls: Option<String>,
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
    /// JWK set endpoint (http://) to fetch verification keys from, by `kid`, instead of
    /// one configured key.
    #[arg(long, env = "ROOMCAST_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// Seconds between periodic fetches of the JWK set.
    #[arg(long, env = "ROOMCAST_JWT_JWKS_POLL", default_value_t = 300)]
    pub jwt_jwks_poll: u64,
    /// Least seconds between two fetches caused by tokens naming an unknown `kid`
    /// (PROTOCOL section 2).
    #[arg(long, env = "ROOMCAST_JWT_JWKS_REFRESH", default_value_t = 30)]
    pub jwt_jwks_refresh: u64,
    /// Seconds the cached keys stay usable past a missed periodic refresh (endpoint down).
    #[arg(long, env = "ROOMCAST_JWT_JWKS_STALE_MAX", default_value_t = 86_400)]
    pub jwt_jwks_stale_max: u64,
    /// Accepted algorithms, comma-separated (default: the one that fits the key).
    #[arg(long, env = "ROOMCAST_JWT_ALGORITHMS")]
    pub jwt_algorithms: Option<String>,
    /// Required `aud` (not checked when absent).
    #[arg(long, env = "ROOMCAST_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Required `iss` (not checked when absent).
    #[arg(long, env = "ROOMCAST_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Clock leeway for exp/nbf, seconds.
    #[arg(long, env = "ROOMCAST_JWT_LEEWAY", default_value_t = 5)]
    pub jwt_leeway: u64,
    /// What a token without a `rooms` claim may join: allow or deny.
    #[arg(
        long,
        env = "ROOMCAST_DEFAULT_ROOM_POLICY",
        value_enum,
        default_value = "allow"
    )]
    pub default_room_policy: RoomPolicy,
    /// Comma-separated keys for the backend API (none: the API answers 401).
    #[arg(long, env = "ROOMCAST_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,
    /// Comma-separated keys that open the admin page at /admin (none: /admin answers 404).
    /// Each at least 16 characters.
    #[arg(long, env = "ROOMCAST_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Seconds between this node's heartbeats: its stats, written to the bus for the admin
    /// page of any node; a node is listed until three intervals pass without one.
    #[arg(long, env = "ROOMCAST_NODE_STATS_INTERVAL", default_value_t = 5)]
    pub node_stats_interval: u64,
    /// Comma-separated Origins allowed to open /ws and /sse; `*` for any.
    #[arg(long, env = "ROOMCAST_ALLOWED_ORIGINS", default_value = "*")]
    pub allowed_origins: String,
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
    #[arg(long, env = "ROOMCAST_HEARTBEAT", default_value_t = 25)]
    pub heartbeat: u64,
    /// Seconds a connection has to authenticate with an `auth` message.
    #[arg(long, env = "ROOMCAST_AUTH_TIMEOUT", default_value_t = 5)]
    pub auth_timeout: u64,
    /// Seconds a client has to complete the HTTP request and upgrade.
    #[arg(long, env = "ROOMCAST_HANDSHAKE_TIMEOUT", default_value_t = 10)]
    pub handshake_timeout: u64,
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
        default_value = "127.0.0.0/8,::1/128"
    )]
    pub trusted_proxies: String,
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
    /// Initial read buffer per WebSocket connection, bytes (grows for larger frames).
    #[arg(long, env = "ROOMCAST_WS_READ_BUFFER", default_value_t = 512)]
    pub ws_read_buffer: usize,
    /// Seconds between returns of freed heap pages to the OS (after connections came or
    /// went); 0 turns it off. Only with glibc.
    #[arg(long, env = "ROOMCAST_MALLOC_TRIM_INTERVAL", default_value_t = 10)]
    pub malloc_trim_interval: u64,
    /// Outbound queue per connection, messages; overflow closes with 4008.
    #[arg(long, env = "ROOMCAST_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,
    /// Seconds a client socket may accept no bytes while data waits for it before the
    /// connection is closed with 4008 (slow consumer).
    #[arg(long, env = "ROOMCAST_WRITE_TIMEOUT", default_value_t = 10)]
    pub write_timeout: u64,
    /// Kernel send buffer of each client socket, bytes (SO_SNDBUF; Linux doubles it for
    /// its bookkeeping); bounds what a client that stops reading holds in kernel memory.
    /// 0 leaves the kernel's default (auto-tuned up to net.ipv4.tcp_wmem's maximum).
    #[arg(long, env = "ROOMCAST_SEND_BUFFER", default_value_t = 65536)]
    pub send_buffer: usize,
    /// Messages of history kept per room.
    #[arg(long, env = "ROOMCAST_HISTORY_SIZE", default_value_t = 1000)]
    pub history_size: usize,
    /// Seconds a room's history lives after its last publish.
    #[arg(long, env = "ROOMCAST_HISTORY_TTL", default_value_t = 86_400)]
    pub history_ttl: u64,
    /// Most messages a join may replay (history or recovery).
    #[arg(long, env = "ROOMCAST_MAX_RECOVER", default_value_t = 1000)]
    pub max_recover: usize,
    /// Seconds a publish/send id is remembered for deduplication.
    #[arg(long, env = "ROOMCAST_DEDUPE_WINDOW", default_value_t = 120)]
    pub dedupe_window: u64,
    /// Seconds a presence entry lives without its node refreshing it.
    #[arg(long, env = "ROOMCAST_PRESENCE_TTL", default_value_t = 30)]
    pub presence_ttl: u64,
    /// Seconds a bus (Redis) operation may take before it fails as `unavailable`.
    #[arg(long, env = "ROOMCAST_BUS_TIMEOUT", default_value_t = 5)]
    pub bus_timeout: u64,
    /// Seconds a room message may arrive later than its publishing node's usual delay
    /// before this node's subscription counts as fallen behind: it is dropped (with what
    /// was queued for it) and re-synchronised from history. 0: never.
    #[arg(long, env = "ROOMCAST_BUS_MAX_LAG", default_value_t = 30)]
    pub bus_max_lag: u64,
    /// How the node listens to the bus: `pattern` (every node receives every room's
    /// messages) or `rooms` (a subscription per room and user held locally).
    /// Default: pattern (one Redis), rooms (a Redis Cluster, which allows no other).
    #[arg(long, env = "ROOMCAST_BUS_SUBSCRIBE", value_enum)]
    pub bus_subscribe: Option<BusSubscribe>,
    /// Rooms mode: milliseconds a room's or user's channel stays subscribed after its last
    /// local member left (a quick re-join costs no Redis command).
    #[arg(long, env = "ROOMCAST_BUS_LINGER_MS", default_value_t = 2000)]
    pub bus_linger_ms: u64,
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
    #[arg(long, env = "ROOMCAST_CONSUME_CLAIM_IDLE_MS", default_value_t = 30_000)]
    pub consume_claim_idle_ms: u64,
    /// Seconds the drain may take on shutdown before remaining connections are dropped.
    #[arg(long, env = "ROOMCAST_DRAIN_TIMEOUT", default_value_t = 10)]
    pub drain_timeout: u64,
    /// Milliseconds over which drain closes (1001) are spread, to avoid a reconnect storm.
    #[arg(long, env = "ROOMCAST_DRAIN_SPREAD_MS", default_value_t = 1000)]
    pub drain_spread_ms: u64,
    /// Seconds a client has to send the whole body of a /client/commands or /api request
    /// once its headers are in; beyond, the request is answered 408 and closed.
    #[arg(long, env = "ROOMCAST_HTTP_BODY_TIMEOUT", default_value_t = 10)]
    pub http_body_timeout: u64,
    /// Most /client/commands and /api requests one client IP may have in progress at once
    /// (beyond: 429); 0: unlimited.
    #[arg(long, env = "ROOMCAST_MAX_HTTP_PER_IP", default_value_t = 64)]
    pub max_http_per_ip: usize,
    /// Connect hook: the URL (http://) the node POSTs a new connection's cookies,
    /// forwarded headers, auth payload and IP to; the answer allows (as a user) or denies.
    #[arg(long, env = "ROOMCAST_HOOK_CONNECT_URL")]
    pub hook_connect_url: Option<String>,
    /// Join hook: the URL (http://) asked whether a user may join a room matching
    /// `--hook-join-rooms`.
    #[arg(long, env = "ROOMCAST_HOOK_JOIN_URL")]
    pub hook_join_url: Option<String>,
    /// Publish hook: the URL (http://) asked whether a user may publish to a room matching
    /// `--hook-publish-rooms`; it may replace the data.
    #[arg(long, env = "ROOMCAST_HOOK_PUBLISH_URL")]
    pub hook_publish_url: Option<String>,
    /// Comma-separated room patterns (`*` as a glob) whose joins the join hook decides.
    #[arg(long, env = "ROOMCAST_HOOK_JOIN_ROOMS", default_value = "*")]
    pub hook_join_rooms: String,
    /// Comma-separated room patterns (`*` as a glob) whose publishes the publish hook decides.
    #[arg(long, env = "ROOMCAST_HOOK_PUBLISH_ROOMS", default_value = "*")]
    pub hook_publish_rooms: String,
    /// Comma-separated request headers passed to the connect hook (cookies always are).
    #[arg(long, env = "ROOMCAST_HOOK_FORWARD_HEADERS", default_value = "")]
    pub hook_forward_headers: String,
    /// Shared secret: every hook request carries `X-Roomcast-Signature: sha256=<hex
    /// HMAC-SHA256 of "<X-Roomcast-Timestamp>.<body>">` (none: unsigned).
    #[arg(long, env = "ROOMCAST_HOOK_SECRET", hide_env_values = true)]
    pub hook_secret: Option<String>,
    /// Milliseconds a hook call may take; beyond, it refuses (fail closed).
    #[arg(long, env = "ROOMCAST_HOOK_TIMEOUT_MS", default_value_t = 2000)]
    pub hook_timeout_ms: u64,
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

impl Config {
    /// Reads flags, environment and the `--config` file, in that order of precedence.
    pub fn load() -> Result<Config, ConfigError> {
        let args: Vec<String> = std::env::args().collect();
        if let Some(path) = config_path(&args) {
            apply_file_to_env(&path)?;
        }
        let cfg = Config::parse_from(args);
        cfg.validate()?;
        Ok(cfg)
    }

    /// A configuration from flags only (tests and embedding); environment applies too.
    pub fn from_args<I: IntoIterator<Item = S>, S: Into<String>>(
        args: I,
    ) -> Result<Config, ConfigError> {
        let mut v = vec!["roomcast".to_string()];
        v.extend(args.into_iter().map(Into::into));
        let cfg = Config::try_parse_from(v).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the settings together; the message says what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.auth == AuthMode::Hook && self.hook_connect_url.is_none() {
            return bad("--auth hook needs --hook-connect-url");
        }
        crate::hooks::Hooks::check(self).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if !self.personal_room.is_empty() {
            if !self.personal_room.contains("{user}") {
                return bad("--personal-room must contain {user} (for example user:{user})");
            }
            if roomcast_protocol::RoomName::new(&self.personal_room.replace("{user}", "u")).is_err()
            {
                return bad("--personal-room must make a valid room name once {user} is filled in");
            }
        }
        if self.auth == AuthMode::Jwt
            && self.jwt_secret.is_none()
            && self.jwt_public_key.is_none()
            && self.jwt_jwks_url.is_none()
        {
            return bad("--auth jwt needs --jwt-secret (HS256), --jwt-public-key (RS256/ES256/EdDSA) or --jwt-jwks-url; use --auth none for development");
        }
        if self.heartbeat == 0 {
            return bad("--heartbeat must be at least 1 second");
        }
        if self.max_message_size < 256 {
            return bad("--max-message-size must be at least 256 bytes");
        }
        if self.write_timeout == 0 {
            return bad("--write-timeout must be at least 1 second");
        }
        if self.send_buffer != 0 && self.send_buffer < 4096 {
            return bad("--send-buffer must be 0 (the kernel's default) or at least 4096 bytes");
        }
        if self.outbound_queue == 0 {
            return bad("--outbound-queue must be at least 1");
        }
        if self.rate_limit.is_nan()
            || self.rate_limit <= 0.0
            || self.rate_burst.is_nan()
            || self.rate_burst < 1.0
        {
            return bad("--rate-limit must be > 0 and --rate-burst >= 1");
        }
        if self.prefix.is_empty() || self.prefix.contains(['*', '?', '[', ' ']) {
            return bad("--prefix must be non-empty and hold no glob characters or spaces");
        }
        if self.redis_url.is_some() && self.redis_cluster_urls.is_some() {
            return bad("--redis-url and --redis-cluster-urls exclude each other: give one Redis or the seeds of one Redis Cluster");
        }
        if self.redis_cluster_urls.is_some() {
            let seeds = self.redis_cluster_url_list();
            if seeds.is_empty() {
                return bad("--redis-cluster-urls needs at least one redis:// URL");
            }
            if seeds
                .iter()
                .any(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
            {
                return bad(
                    "--redis-cluster-urls must be redis:// or rediss:// URLs, comma-separated",
                );
            }
            if self.bus_subscribe == Some(BusSubscribe::Pattern) {
                return bad("--bus-subscribe pattern cannot run on a Redis Cluster (--redis-cluster-urls): it uses sharded rooms mode");
            }
        }
        if let Some(url) = &self.redis_url {
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("unix://"))
            {
                return bad("--redis-url must start with redis://, rediss:// or unix://");
            }
        }
        crate::limits::parse_cidrs(&self.trusted_proxies).map_err(ConfigError::Invalid)?;
        if self.node_stats_interval == 0 {
            return bad("--node-stats-interval must be at least 1 second");
        }
        if self.admin_key_list().iter().any(|k| k.len() < 16) {
            return bad("--admin-key: each key must be at least 16 characters (use a random one, e.g. openssl rand -hex 16)");
        }
        if !self.consume_stream.is_empty() {
            if self.redis_url.is_none() {
                return bad("--consume-stream needs --redis-url (streams are read from Redis)");
            }
            if self.consume_stream.iter().any(|s| s.trim().is_empty()) {
                return bad("--consume-stream: a stream key must not be empty");
            }
            if self.consume_group.is_empty() {
                return bad("--consume-group must not be empty");
            }
            if self.consume_claim_idle_ms == 0 {
                return bad("--consume-claim-idle-ms must be at least 1");
            }
        }
        if self.http_body_timeout == 0 {
            return bad("--http-body-timeout must be at least 1 second");
        }
        // Key material and algorithm lists are checked at start (a private key, garbage,
        // a key that does not fit the algorithms), not token by token.
        crate::auth::Authenticator::from_config(self).map_err(ConfigError::Invalid)?;
        Ok(())
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

    /// Heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat)
    }

    /// How long a client socket may accept no bytes while data waits (4008).
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout)
    }

    /// The admin keys, split; empty when the admin page is disabled.
    pub fn admin_key_list(&self) -> Vec<String> {
        split_list(self.admin_key.as_deref().unwrap_or(""))
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

    /// The Redis Cluster seed URLs, split (empty without a cluster).
    pub fn redis_cluster_url_list(&self) -> Vec<String> {
        split_list(self.redis_cluster_urls.as_deref().unwrap_or(""))
    }

    /// How the node listens to the bus: as configured, else rooms on a Redis Cluster and
    /// pattern otherwise.
    pub fn bus_subscribe(&self) -> BusSubscribe {
        match (self.bus_subscribe, self.redis_cluster_urls.is_some()) {
            (_, true) => BusSubscribe::Rooms,
            (Some(m), false) => m,
            (None, false) => BusSubscribe::Pattern,
        }
    }

    /// Whether the node forms a cluster through Redis (one Redis or a Redis Cluster).
    pub fn has_redis(&self) -> bool {
        self.redis_url.is_some() || self.redis_cluster_urls.is_some()
    }

    /// The API keys, split.
    pub fn api_key_list(&self) -> Vec<String> {
        split_list(self.api_keys.as_deref().unwrap_or(""))
    }
}

/// Splits a comma-separated list, trimming and dropping empty items.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

fn config_path(args: &[String]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    std::env::var_os("ROOMCAST_CONFIG").map(PathBuf::from)
}

/// File values become environment variables where none is set, so that clap's
/// precedence (flag, then environment) puts the file below both.
fn apply_file_to_env(path: &PathBuf) -> Result<(), ConfigError> {
    let err = |reason: String| ConfigError::File {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| err(e.to_string()))?;
    let known: Vec<String> = <Config as clap::CommandFactory>::command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| l.to_string()))
        .collect();
    for (key, value) in table {
        let flag = key.replace('_', "-");
        if !known.contains(&flag) || flag == "config" {
            return Err(err(format!("unknown setting {key:?}")));
        }
        let var = format!("ROOMCAST_{}", flag.replace('-', "_").to_uppercase());
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Array(items) => items
                .iter()
                .map(|i| match i {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        if std::env::var_os(&var).is_none() {
            // Single-threaded here: called before the runtime starts.
            std::env::set_var(var, text);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_cluster_urls() {
        let c = Config::from_args([
            "--auth",
            "none",
            "--redis-cluster-urls",
            "redis://127.0.0.1:7000, redis://127.0.0.1:7001",
        ])
        .expect("valid");
        assert_eq!(c.redis_cluster_url_list().len(), 2);
        assert_eq!(c.bus_subscribe(), BusSubscribe::Rooms, "rooms by default");
        let e = Config::from_args([
            "--auth",
            "none",
            "--redis-cluster-urls",
            "redis://a:1",
            "--redis-url",
            "redis://b:1",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("exclude each other"), "{e}");
        let e = Config::from_args([
            "--auth",
            "none",
            "--redis-cluster-urls",
            "redis://a:1",
            "--bus-subscribe",
            "pattern",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("--bus-subscribe pattern"), "{e}");
        assert!(Config::from_args([
            "--auth",
            "none",
            "--redis-cluster-urls",
            "redis://a:1",
            "--bus-subscribe",
            "rooms"
        ])
        .is_ok());
        assert!(Config::from_args(["--auth", "none", "--redis-cluster-urls", "http://a"]).is_err());
        assert!(Config::from_args(["--auth", "none", "--redis-cluster-urls", " , "]).is_err());
        let c = Config::from_args(["--auth", "none"]).expect("valid");
        assert_eq!(
            c.bus_subscribe(),
            BusSubscribe::Pattern,
            "pattern by default"
        );
    }

    #[test]
    fn jwt_needs_a_key() {
        let e = Config::from_args(["--auth", "jwt"]).unwrap_err();
        assert!(e.to_string().contains("--jwt-secret"), "{e}");
        assert!(Config::from_args(["--auth", "none"]).is_ok());
        assert!(Config::from_args(["--jwt-secret", "s"]).is_ok());
    }

    #[test]
    fn consume_stream_lists() {
        let c = Config::from_args([
            "--auth",
            "none",
            "--redis-url",
            "redis://127.0.0.1/",
            "--consume-stream",
            "a,b",
            "--consume-stream",
            "c",
        ])
        .expect("valid");
        assert_eq!(c.consume_stream, ["a", "b", "c"]);
        assert!(Config::from_args(["--auth", "none", "--consume-stream", "a"]).is_err());
    }

    #[test]
    fn rejects_bad_values() {
        assert!(Config::from_args(["--auth", "none", "--heartbeat", "0"]).is_err());
        assert!(Config::from_args(["--auth", "none", "--redis-url", "http://x"]).is_err());
        assert!(Config::from_args(["--auth", "none", "--trusted-proxies", "nonsense"]).is_err());
        assert!(Config::from_args(["--auth", "bogus"]).is_err());
        assert!(Config::from_args(["--auth", "none", "--admin-key", "short"]).is_err());
        assert!(Config::from_args(["--auth", "none", "--node-stats-interval", "0"]).is_err());
        let c = Config::from_args([
            "--auth",
            "none",
            "--admin-key",
            "0123456789abcdef, fedcba9876543210",
        ])
        .expect("two admin keys");
        assert_eq!(c.admin_key_list().len(), 2);
    }

    #[test]
    fn hook_and_personal_room_settings_are_checked() {
        let e = Config::from_args(["--auth", "hook"]).unwrap_err();
        assert!(e.to_string().contains("--hook-connect-url"), "{e}");
        assert!(Config::from_args([
            "--auth",
            "hook",
            "--hook-connect-url",
            "http://127.0.0.1:1/c"
        ])
        .is_ok());
        let e =
            Config::from_args(["--auth", "none", "--hook-join-url", "https://x/j"]).unwrap_err();
        assert!(e.to_string().contains("only http://"), "{e}");
        assert!(
            Config::from_args(["--auth", "none", "--hook-forward-headers", "bad header"]).is_err()
        );
        assert!(Config::from_args(["--auth", "none", "--hook-timeout-ms", "0"]).is_err());
        assert!(Config::from_args(["--auth", "none", "--hook-max-concurrency", "0"]).is_err());
        assert!(Config::from_args(["--auth", "none", "--personal-room", "user"]).is_err());
        assert!(Config::from_args(["--auth", "none", "--personal-room", "user {user}"]).is_err());
        let c =
            Config::from_args(["--auth", "none", "--personal-room", "user:{user}"]).expect("valid");
        let u = roomcast_protocol::UserId::new("42").expect("user");
        assert_eq!(
            c.personal_room(&u).map(|r| r.to_string()),
            Some("user:42".into())
        );
    }
}
