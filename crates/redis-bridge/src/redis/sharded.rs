//! Sharded pub/sub on a Redis Cluster (docs/protocol.md section 6b): the subscriber's side
//! of the cluster.
//!
//! What the redis crate does (its `ClusterConnection` with RESP3 and a push sender): one
//! multiplexed connection per shard primary, the slot map (CLUSTER SLOTS at connect, again
//! on MOVED / ASK or a lost node), routing each SSUBSCRIBE to the shard that owns its
//! slot, and forwarding every push (messages, `sunsubscribe`, a lost connection) to us.
//!
//! What is ours: which channels to hold (`interest.rs`), SSUBSCRIBE / SUNSUBSCRIBE one
//! slot per command (Redis refuses channels of several slots in one), the bounded queue
//! pushes arrive on, the per-shard health ping, and what a cut means. A cut is any of: a
//! shard's connection lost (a failover, a restart), a `sunsubscribe` Redis pushes for a
//! channel the node still needs (its slot moved), a shard that does not answer the ping,
//! or the queue overflowing. After a cut the subscriber drops the whole connection and
//! starts again as after any outage: a fresh slot map, every needed channel subscribed
//! (confirmed) before every watched room is checked against its meta and repaired from
//! history, so nothing published meanwhile is missed silently; what a failover lost is
//! found there too (`subscriber::resync`) and becomes a new epoch.

use super::keys::Keys;
use super::Shared;
use crate::bus::{BusConfig, BusStats};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{PushInfo, PushKind, RedisResult, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Pushes (messages and notices) queued between the cluster connection and the
/// subscriber; beyond, the subscription counts as fallen behind and is re-synchronised.
const PUSH_QUEUE: usize = 65_536;

/// A cluster client for `seeds`; with `push`, it speaks RESP3 and hands every push
/// message to that sender (the subscriber's).
pub(crate) fn client(
    seeds: &[String],
    cfg: &BusConfig,
    push: Option<PushTx>,
) -> RedisResult<ClusterClient> {
    let mut b = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
        .connection_timeout(cfg.op_timeout)
        .response_timeout(cfg.op_timeout)
        .retries(2);
    if let Some(tx) = push {
        b = b
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(move |info: PushInfo| tx.send(info));
    }
    b.build()
}

/// The sending end of the push queue: never blocks; a full queue is remembered.
#[derive(Clone)]
pub(crate) struct PushTx {
    tx: mpsc::Sender<PushInfo>,
    overflow: Arc<AtomicBool>,
}

impl PushTx {
    fn send(&self, info: PushInfo) -> Result<(), ()> {
        self.tx.try_send(info).map_err(|_| {
            self.overflow.store(true, Ordering::Release);
        })
    }
}

/// One subscription session on the cluster: the connection and the pushes it receives.
pub(crate) struct Shards {
    pub(crate) conn: ClusterConnection,
    /// The primaries (`host`, `port`) of the slot map read when the session began.
    pub(crate) primaries: Vec<(String, u16)>,
}

/// The receiving end: what the subscriber reads.
pub(crate) struct Pushes {
    rx: mpsc::Receiver<PushInfo>,
    overflow: Arc<AtomicBool>,
}

/// One thing read from the cluster.
pub(crate) enum Incoming {
    /// A message on a channel (sharded or classic).
    Msg(redis::Msg),
    /// Redis dropped a subscription (its slot moved away from that shard).
    Dropped(String),
    /// A cut: re-subscribe and re-synchronise.
    Cut(&'static str),
    /// Nothing to act on (a confirmation).
    Nothing,
}

impl Pushes {
    /// The next push; `None` when the connection is gone.
    pub(crate) async fn next(&mut self) -> Option<Incoming> {
        let info = self.rx.recv().await?;
        if self.overflow.load(Ordering::Acquire) {
            return Some(Incoming::Cut("subscription fell behind (push queue full)"));
        }
        Some(match info.kind {
            PushKind::Message | PushKind::SMessage => match redis::Msg::from_push_info(info) {
                Some(m) => Incoming::Msg(m),
                None => Incoming::Nothing,
            },
            PushKind::SUnsubscribe => match info.data.first() {
                Some(Value::BulkString(b)) => {
                    Incoming::Dropped(String::from_utf8_lossy(b).into_owned())
                }
                _ => Incoming::Nothing,
            },
            PushKind::Disconnection => Incoming::Cut("a shard connection was lost"),
            _ => Incoming::Nothing,
        })
    }
}

/// Connects a new subscription session: a fresh slot map, its primaries, and the classic
/// subscription to the control channel. The room and user channels are the caller's.
pub(crate) async fn connect(shared: &Shared, seeds: &[String]) -> RedisResult<(Shards, Pushes)> {
    let (tx, rx) = mpsc::channel(PUSH_QUEUE);
    let overflow = Arc::new(AtomicBool::new(false));
    let push = PushTx {
        tx,
        overflow: overflow.clone(),
    };
    let mut conn = client(seeds, &shared.cfg, Some(push))?
        .get_async_connection()
        .await?;
    BusStats::incr(&shared.stats.topology_refreshes);
    let primaries = primaries(&mut conn).await?;
    conn.subscribe(shared.keys.control_channel()).await?;
    Ok((Shards { conn, primaries }, Pushes { rx, overflow }))
}

/// The primaries of the cluster's slot map (CLUSTER SLOTS).
async fn primaries(conn: &mut ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
    let v = conn
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await?;
    let mut out: Vec<(String, u16)> = Vec::new();
    if let Value::Array(ranges) = v {
        for r in ranges {
            let Value::Array(fields) = r else { continue };
            let Some(Value::Array(node)) = fields.get(2) else {
                continue;
            };
            let host = match node.first() {
                Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
                Some(Value::SimpleString(h)) => h.clone(),
                _ => continue,
            };
            let Some(Value::Int(port)) = node.get(1) else {
                continue;
            };
            let Ok(port) = u16::try_from(*port) else {
                continue;
            };
            if !out.iter().any(|(h, p)| *h == host && *p == port) {
                out.push((host, port));
            }
        }
    }
    out.sort();
    Ok(out)
}

impl Shards {
    /// SSUBSCRIBEs (or SUNSUBSCRIBEs) `channels`, one command per slot, all sent at once;
    /// returns when every one is confirmed. Counts the commands.
    pub(crate) async fn apply(
        &mut self,
        shared: &Shared,
        channels: &[String],
        subscribe: bool,
    ) -> RedisResult<()> {
        let mut by_slot: Vec<(u16, Vec<&String>)> = Vec::new();
        for c in channels {
            let s = Keys::channel_slot(c);
            match by_slot.iter_mut().find(|(slot, _)| *slot == s) {
                Some((_, v)) => v.push(c),
                None => by_slot.push((s, vec![c])),
            }
        }
        let calls = by_slot.into_iter().map(|(_, group)| {
            let mut conn = self.conn.clone();
            async move {
                if subscribe {
                    conn.ssubscribe(group).await
                } else {
                    conn.sunsubscribe(group).await
                }
            }
        });
        let results = futures_util::future::join_all(calls).await;
        let counter = if subscribe {
            &shared.stats.subscribe_commands
        } else {
            &shared.stats.unsubscribe_commands
        };
        counter.fetch_add(results.len() as u64, Ordering::Relaxed);
        results.into_iter().collect()
    }

    /// Pings every primary of the session's slot map; the state of each, in order.
    pub(crate) async fn ping(&mut self) -> Vec<bool> {
        let pings = self.primaries.iter().map(|(host, port)| {
            let mut conn = self.conn.clone();
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port: *port,
            });
            async move {
                conn.route_command(redis::cmd("PING"), routing)
                    .await
                    .is_ok()
            }
        });
        futures_util::future::join_all(pings).await
    }
}
