//! Node heartbeats in Redis: what the admin page lists as the cluster.
//!
//! One HASH (`<prefix>:nodes`, see `keys.rs`) holds a field per node whose value is
//! `<expiry ms>|<stats JSON>`; the expiry is taken from Redis `TIME`, so node clocks do
//! not matter. A node rewrites its field every few seconds; a reader drops the fields
//! whose expiry has passed (a crashed node's) and the hash itself expires with the last
//! node. A draining node removes its field. Redis 7.0 has no per-field expiry, hence
//! the expiry in the value. The hash is one key: on a Redis Cluster it lives on one shard.

use super::{OpError, Shared};
use crate::bus::{BusError, NodeStats};
use std::time::Duration;

/// Writes one heartbeat: KEYS[1] the hash; ARGV[1] the node id, ARGV[2] the stats JSON,
/// ARGV[3] the time to live in ms.
const REPORT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.0f', now + ttl) .. '|' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
";

/// Reads the live heartbeats and removes the expired ones: KEYS[1] the hash.
const LIST: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local v = all[i + 1]
  local sep = string.find(v, '|', 1, true)
  local exp = sep and tonumber(string.sub(v, 1, sep - 1))
  if exp and exp > now then
    out[#out + 1] = string.sub(v, sep + 1)
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out
";

/// Most heartbeats a listing decodes (a bound on what a polluted hash can cost).
const MAX_NODES: usize = 10_000;

/// Writes this node's heartbeat, to be listed for `ttl`.
pub(crate) async fn report(
    shared: &Shared,
    stats: &NodeStats,
    ttl: Duration,
) -> Result<(), BusError> {
    let stats = NodeStats {
        node_id: shared.cfg.node_id.clone(),
        ..stats.clone()
    };
    let json = serde_json::to_string(&stats)
        .map_err(|e| BusError::Internal(format!("node stats: {e}")))?;
    let key = shared.keys.nodes();
    let (id, ttl) = (shared.cfg.node_id.clone(), Shared::ms(ttl));
    shared
        .run("report node", async move {
            let mut c = shared.conn().await?;
            redis::Script::new(REPORT)
                .key(key)
                .arg(id)
                .arg(json)
                .arg(ttl)
                .invoke_async::<i64>(&mut c)
                .await
                .map_err(OpError::from)
        })
        .await?;
    Ok(())
}

/// Every live heartbeat, sorted by node id. An entry that does not decode (written by
/// something else) is skipped, not an error.
pub(crate) async fn list(shared: &Shared) -> Result<Vec<NodeStats>, BusError> {
    let key = shared.keys.nodes();
    let raw: Vec<Vec<u8>> = shared
        .run("list nodes", async move {
            let mut c = shared.conn().await?;
            redis::Script::new(LIST)
                .key(key)
                .invoke_async(&mut c)
                .await
                .map_err(OpError::from)
        })
        .await?;
    let mut nodes: Vec<NodeStats> = raw
        .iter()
        .take(MAX_NODES)
        .filter_map(|r| match serde_json::from_slice::<NodeStats>(r) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(error = %e, "undecodable node heartbeat skipped");
                None
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Ok(nodes)
}

/// Removes this node's heartbeat.
pub(crate) async fn remove(shared: &Shared) -> Result<(), BusError> {
    let (key, id) = (shared.keys.nodes(), shared.cfg.node_id.clone());
    shared
        .run("remove node", async move {
            let mut c = shared.conn().await?;
            redis::cmd("HDEL")
                .arg(key)
                .arg(id)
                .query_async::<i64>(&mut c)
                .await
                .map_err(OpError::from)
        })
        .await?;
    Ok(())
}
