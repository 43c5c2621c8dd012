//! The checks across settings: what no single value's parser can see (a flag that
//! needs another, two that exclude each other, a bound of 0). Each message names the
//! flag and says what to change.

use super::{AuthMode, BusSubscribe, Config, ConfigError};

impl Config {
    /// Checks the settings together; the message says what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.auth == AuthMode::Hook && !self.hook_connect_url.is_some() {
            return bad("--auth hook needs --hook-connect-url");
        }
        if self.hook_timeout.is_zero() {
            return bad("--hook-timeout-ms must be at least 1");
        }
        if self.hook_max_concurrency == 0 {
            return bad("--hook-max-concurrency must be at least 1");
        }
        if !self.personal_room.is_empty() {
            if !self.personal_room.contains("{user}") {
                return bad("--personal-room must contain {user} (for example user:{user})");
            }
            if roomcast_protocol::RoomName::new(&self.personal_room.replace("{user}", "u")).is_err()
            {
                return bad("--personal-room must make a valid room name once {user} is filled in");
            }
        }
        if self.heartbeat.is_zero() {
            return bad("--heartbeat must be at least 1 second");
        }
        if self.max_message_size < 256 {
            return bad("--max-message-size must be at least 256 bytes");
        }
        if self.write_timeout.is_zero() {
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
        if self.redis_url.is_some() && self.has_cluster() {
            return bad("--redis-url and --redis-cluster-urls exclude each other: give one Redis or the seeds of one Redis Cluster");
        }
        if self.has_cluster() {
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
        if self.node_stats_interval.is_zero() {
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
            if self.consume_claim_idle.is_zero() {
                return bad("--consume-claim-idle-ms must be at least 1");
            }
        }
        if self.http_body_timeout.is_zero() {
            return bad("--http-body-timeout must be at least 1 second");
        }
        // Key material, the key a mode needs, and algorithm lists are checked at start (a
        // private key, garbage, a key that does not fit the algorithms), not token by
        // token, by the code that uses them.
        crate::auth::Authenticator::from_config(self).map_err(ConfigError::Invalid)?;
        Ok(())
    }
}
