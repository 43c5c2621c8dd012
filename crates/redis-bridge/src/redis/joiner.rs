//! The joiner: every first join of this node (a connection's presence add and its history
//! read) goes through one task that hands Redis whatever joins are waiting, up to
//! [`MAX_BATCH`], in one call of the join script, as the publisher does for publishes.
//! Alone, a join is sent at once (no added delay); in a burst (a reconnect storm) the
//! joins that arrive while a call is in flight share the next one: one round trip and one
//! script run for many joins instead of one each. On a Redis Cluster a batch is split by
//! the rooms' slots, one call per slot, all at once.

use super::{batch, history, presence, OpError, Shared};
use crate::bus::{BusError, BusStats, History, HistoryQuery};
use crate::common::random_epoch;
use roomcast_protocol::{RoomName, UserId};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The most joins one script call carries.
pub(crate) const MAX_BATCH: usize = 64;

/// One first join waiting for the joiner.
pub(crate) struct Job {
    room: RoomName,
    user: UserId,
    conn: String,
    query: HistoryQuery,
    /// The room's hash slot (used on a Redis Cluster only).
    slot: u16,
    reply: oneshot::Sender<Result<history::Answer, BusError>>,
}

/// The joiner task: runs until the bus stops or every sender is gone.
pub(crate) async fn run(shared: Arc<Shared>, mut jobs: mpsc::Receiver<Job>) {
    let mut queued: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    loop {
        let n = tokio::select! {
            _ = shared.stop.cancelled() => break,
            n = jobs.recv_many(&mut queued, MAX_BATCH) => n,
        };
        if n == 0 {
            break;
        }
        BusStats::incr(&shared.stats.join_batches);
        shared
            .stats
            .joins_batched
            .fetch_add(n as u64, Ordering::Relaxed);
        let answers = if shared.is_cluster() {
            batch::per_slot(&queued, |j| j.slot, "join", |jobs| call(&shared, jobs)).await
        } else {
            batch::spread(call(&shared, queued.iter().collect()).await, n, "join")
        };
        for (job, a) in queued.drain(..).zip(answers) {
            // The joiner may have given up (its request timed out): nothing to do.
            let _ = job.reply.send(a);
        }
    }
    tracing::debug!("redis joiner stopped");
}

/// One call of the join script for these joins.
async fn call(shared: &Shared, jobs: Vec<&Job>) -> Result<Vec<history::Answer>, BusError> {
    shared
        .run("join", async {
            let mut inv = shared.scripts.join.prepare_invoke();
            presence::join_shared_args(shared, &mut inv);
            inv.arg(Shared::ms(shared.cfg.history_ttl))
                .arg(shared.cfg.history_size)
                .arg(shared.cfg.max_recover);
            for job in &jobs {
                presence::join_part(shared, &mut inv, &job.room, &job.user, &job.conn)?;
                inv.key(shared.keys.meta(&job.room))
                    .key(shared.keys.history(&job.room));
                inv.arg(random_epoch());
                history::query_args(&mut inv, &job.query);
            }
            let mut c = shared.conn().await?;
            inv.invoke_async(&mut c).await.map_err(OpError::from)
        })
        .await
}

/// A connection's first join of a room through the joiner: its presence entry added (and
/// noted as this node's) and the room's history as `query` asks. On failure the entry is
/// forgotten locally (if Redis did apply it, it expires unrefreshed).
pub(super) async fn join(
    shared: &Shared,
    room: &RoomName,
    user: &UserId,
    conn: &str,
    query: HistoryQuery,
) -> Result<History, BusError> {
    if shared.closed.load(Ordering::Acquire) {
        return Err(BusError::Unavailable("the bus is closed".into()));
    }
    presence::note_local(shared, room, user, conn, true);
    let (reply, answer) = oneshot::channel();
    let job = Job {
        room: room.clone(),
        user: user.clone(),
        conn: conn.to_string(),
        query,
        slot: shared.keys.room_slot(room),
        reply,
    };
    // Bounded: a full queue waits (up to the timeout) rather than piling up.
    let queued = tokio::time::timeout(shared.cfg.op_timeout, shared.join_tx.send(job)).await;
    let r = match queued {
        Ok(Ok(())) => match answer.await {
            Ok(r) => r,
            Err(_) => Err(BusError::Unavailable("the bus is closed".into())),
        },
        Ok(Err(_)) => Err(BusError::Unavailable("the bus is closed".into())),
        Err(_) => Err(BusError::Unavailable("join: queue full".into())),
    };
    match r {
        Ok(a) => Ok(history::decode(shared, room, a)),
        Err(e) => {
            presence::note_local(shared, room, user, conn, false);
            Err(e)
        }
    }
}
