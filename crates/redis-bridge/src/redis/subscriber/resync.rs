//! Re-synchronisation after a (re)subscribe: every watched room's track is compared with
//! its meta (offset and epoch) in Redis. What is behind is repaired from the stream; a
//! lost history or a changed epoch is told to the room's members; on a cluster, a stored
//! offset below one this node delivered (publishes lost in a failover) starts a new epoch
//! cluster-wide. Also reads the baselines of newly watched rooms.

use super::repair::{lost, repair, StreamEntry};
use crate::bus::{BusError, BusStats, EventSink};
use crate::common::random_epoch;
use crate::redis::tracking::{sig_hex, signature, Sig, Track};
use crate::redis::{OpError, Shared};
use roomcast_protocol::RoomName;

/// Rooms whose meta is read in one pipeline.
const META_BATCH: usize = 500;

/// Each room's `(offset, epoch)` from its meta hash; `None` when it has no history.
async fn read_metas(
    shared: &Shared,
    rooms: &[RoomName],
) -> Result<Vec<Option<(u64, String)>>, BusError> {
    if rooms.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(Option<u64>, Option<String>)> = if shared.is_cluster() {
        // A pipeline may not span slots on a cluster: one command per room, all sent at
        // once (the connection pipelines those of one shard).
        shared
            .run("read offsets", async {
                let c = shared.conn().await?;
                let reads = rooms.iter().map(|r| {
                    let mut c = c.clone();
                    let key = shared.keys.meta(r);
                    async move {
                        redis::cmd("HMGET")
                            .arg(key)
                            .arg("s")
                            .arg("e")
                            .query_async::<(Option<u64>, Option<String>)>(&mut c)
                            .await
                    }
                });
                let rows = futures_util::future::join_all(reads).await;
                rows.into_iter()
                    .collect::<redis::RedisResult<Vec<_>>>()
                    .map_err(OpError::from)
            })
            .await?
    } else {
        let mut p = redis::pipe();
        for r in rooms {
            p.cmd("HMGET").arg(shared.keys.meta(r)).arg("s").arg("e");
        }
        shared
            .run("read offsets", async {
                let mut c = shared.conn().await?;
                p.query_async(&mut c).await.map_err(OpError::from)
            })
            .await?
    };
    if rows.len() != rooms.len() {
        return Err(BusError::Internal("read offsets: short reply".into()));
    }
    Ok(rows
        .into_iter()
        .map(|(s, e)| e.map(|e| (s.unwrap_or(0), e)))
        .collect())
}

/// Sets the baseline of rooms that are still `Pending`.
pub(super) async fn read_baselines(shared: &Shared, rooms: Vec<RoomName>) {
    for chunk in rooms.chunks(META_BATCH) {
        match read_metas(shared, chunk).await {
            Ok(metas) => shared.tracking.set_baselines(chunk, metas),
            // They stay Pending: the first message sets their baseline instead.
            Err(e) => tracing::debug!(error = %e, "reading baselines failed"),
        }
    }
}

/// After (re)subscribing: brings every watched room up to its meta offset, repairing
/// from history what can be repaired and reporting gaps for the rest.
pub(super) async fn resync(shared: &Shared, delivery: &dyn EventSink) -> Result<(), BusError> {
    let rooms = shared.tracking.rooms();
    for chunk in rooms.chunks(META_BATCH) {
        let metas = read_metas(shared, chunk).await?;
        for (room, meta) in chunk.iter().zip(metas) {
            let Some(track) = shared.tracking.get(room) else {
                continue;
            };
            let (last, known_epoch, sig) = match track {
                Track::Pending => {
                    shared.tracking.set(room, Track::baseline(meta));
                    continue;
                }
                Track::Baseline { offset, epoch } => (offset, epoch, None),
                Track::Known { offset, epoch, sig } => (offset, Some(epoch), sig),
            };
            match meta {
                None => {
                    // The room's history is gone (expired, or Redis lost its data):
                    // members that know its epoch (every member read it when joining)
                    // must learn it, or they would take the next epoch's offsets for it.
                    if last > 0 || known_epoch.is_some() {
                        lost(shared, delivery, room, "history lost");
                    }
                    shared.tracking.set(room, Track::baseline(None));
                }
                Some((offset, epoch)) => {
                    if known_epoch.as_deref().is_some_and(|e| e != epoch) {
                        lost(shared, delivery, room, "epoch changed");
                        shared.tracking.set(room, Track::known(offset, epoch));
                    } else if (offset < last && known_epoch.is_some())
                        || (offset >= last && diverged(shared, room, last, sig.as_ref()).await?)
                    {
                        // The room's stored offset is below one this node has delivered
                        // (or read) in the same epoch, or another message sits where the
                        // last one it delivered was: a failover lost acknowledged
                        // publishes (asynchronous replication), and the next publish would
                        // reuse (or did reuse) an offset members hold: a new epoch, once,
                        // cluster-wide.
                        let track =
                            start_epoch_after_loss(shared, room, &epoch, last, sig.as_ref())
                                .await?;
                        lost(
                            shared,
                            delivery,
                            room,
                            "publishes lost in a failover: a new epoch started",
                        );
                        shared.tracking.set(room, track);
                    } else if offset > last {
                        repair(shared, delivery, room, last + 1, offset, &epoch).await;
                        shared.tracking.set(room, Track::known(offset, epoch));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Whether the room's stream holds another message at `offset` than the one this node
/// delivered there (`sig`). A trimmed entry, or no signature, proves nothing: false.
async fn diverged(
    shared: &Shared,
    room: &RoomName,
    offset: u64,
    sig: Option<&Sig>,
) -> Result<bool, BusError> {
    let Some(sig) = sig else {
        return Ok(false);
    };
    if offset == 0 {
        return Ok(false);
    }
    let id = format!("{offset}-0");
    let key = shared.keys.history(room);
    let entries: Vec<StreamEntry> = shared
        .run("check the last delivered message", async {
            let mut c = shared.conn().await?;
            redis::cmd("XRANGE")
                .arg(&key)
                .arg(&id)
                .arg(&id)
                .query_async(&mut c)
                .await
                .map_err(OpError::from)
        })
        .await?;
    Ok(entries.first().is_some_and(|(_, fields)| {
        fields
            .iter()
            .find(|(k, _)| k == "d")
            .is_some_and(|(_, d)| signature(d) != *sig)
    }))
}

/// Starts a new epoch for a room whose stored offset fell below `delivered` in `epoch`
/// (compare and set: only if it is still so); the room's track from here.
async fn start_epoch_after_loss(
    shared: &Shared,
    room: &RoomName,
    epoch: &str,
    delivered: u64,
    sig: Option<&Sig>,
) -> Result<Track, BusError> {
    let fresh = random_epoch();
    let mut inv = shared.scripts.epoch_cas.prepare_invoke();
    inv.key(shared.keys.meta(room))
        .key(shared.keys.history(room))
        .arg(epoch)
        .arg(delivered)
        .arg(&fresh)
        .arg(Shared::ms(shared.cfg.history_ttl))
        .arg(sig.map(sig_hex).unwrap_or_default());
    let won: i64 = shared
        .run("new epoch after a loss", async {
            let mut c = shared.conn().await?;
            inv.invoke_async(&mut c).await.map_err(OpError::from)
        })
        .await?;
    BusStats::incr(&shared.stats.epoch_resets);
    tracing::warn!(%room, delivered, won = won == 1, "room's stored offset fell below what was delivered: new epoch");
    Ok(if won == 1 {
        Track::known(0, fresh)
    } else {
        // Another node started it first (and may have published since): judged by the
        // first message, checked against the stream.
        Track::baseline(None)
    })
}
