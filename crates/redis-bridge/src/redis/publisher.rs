//! The publisher: every room publish of this node goes through one task that hands
//! Redis whatever is waiting, up to [`MAX_BATCH`] messages, in one call of the publish
//! script. Alone, a publish is sent at once (no added delay); under load, the publishes
//! that arrive while a call is in flight share the next one. Redis spends most of a
//! script call on the call itself, so batching is what keeps Redis from being the limit
//! of the cluster's publish rate (BENCHMARKS.md, "Publish path").
//!
//! Order: the task sends batches one at a time and the script runs a batch's messages
//! in the order they were queued, so publishes queued in order get offsets in order.
//!
//! On a Redis Cluster every key of one script call must be in one slot, so a batch is
//! split by the rooms' slots (a room's keys share its hash tag) into one call per slot,
//! in the batch's order within each; the calls of one batch go out together (the cluster
//! connection pipelines those bound for one shard on its connection) and the next batch
//! waits for all of them, so a room's order is kept. (A single call per shard would need
//! keys the script does not declare, which a slot that moves mid-batch turns into a
//! half-applied batch; per slot, MOVED and ASK are followed before anything runs.)

use super::envelope::{self, SplitEnvelope};
use super::{batch, OpError, Shared};
use crate::bus::{BusError, BusStats, PublishRequest, PublishResult};
use crate::common::random_epoch;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The most messages one script call carries.
pub(crate) const MAX_BATCH: usize = 256;

/// What the script answered for one message: duplicate (0/1) and "<offset>:<epoch>".
pub(crate) type Reply = Result<(u8, String), BusError>;

/// One room publish waiting for the publisher.
pub(crate) struct Job {
    pub(crate) meta: String,
    pub(crate) history: String,
    pub(crate) channel: String,
    pub(crate) dedupe: Option<String>,
    /// The room's hash slot (used on a Redis Cluster only).
    pub(crate) slot: u16,
    pub(crate) envelope: SplitEnvelope,
    pub(crate) volatile: bool,
    pub(crate) reply: oneshot::Sender<Reply>,
}

/// The publisher task: runs until the bus stops or every sender is gone.
pub(crate) async fn run(shared: Arc<Shared>, mut jobs: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    loop {
        let n = tokio::select! {
            _ = shared.stop.cancelled() => break,
            n = jobs.recv_many(&mut batch, MAX_BATCH) => n,
        };
        if n == 0 {
            break;
        }
        BusStats::incr(&shared.stats.publish_batches);
        shared
            .stats
            .publishes_batched
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        let replies = if shared.is_cluster() {
            batch::per_slot(&batch, |j| j.slot, "publish", |jobs| call(&shared, jobs)).await
        } else {
            batch::spread(call(&shared, batch.iter().collect()).await, n, "publish")
        };
        for (job, r) in batch.drain(..).zip(replies) {
            // The publisher may have given up (its request timed out): nothing to do.
            let _ = job.reply.send(r);
        }
    }
    tracing::debug!("redis publisher stopped");
}

/// One call of the publish script for these messages.
async fn call(shared: &Shared, batch: Vec<&Job>) -> Result<Vec<(u8, String)>, BusError> {
    let mut inv = shared.scripts.publish.prepare_invoke();
    inv.arg(shared.cfg.history_size)
        .arg(Shared::ms(shared.cfg.history_ttl))
        .arg(Shared::ms(shared.cfg.dedupe_window))
        .arg(&shared.envelope_head)
        .arg(random_epoch());
    for job in &batch {
        inv.key(&job.meta)
            .key(&job.history)
            .key(&job.channel)
            .key(job.dedupe.as_ref().unwrap_or(&job.meta));
        inv.arg(job.envelope.fields)
            .arg(job.envelope.body())
            .arg(if job.volatile { "1" } else { "0" })
            .arg(if job.dedupe.is_some() { "1" } else { "0" });
    }
    shared
        .run("publish", async {
            let mut c = shared.pub_conn().await?;
            inv.invoke_async(&mut c).await.map_err(OpError::from)
        })
        .await
}

/// Publishes one room message through the publisher task: its offset and epoch, or
/// whether it was a duplicate.
pub(super) async fn publish(
    shared: &Shared,
    req: PublishRequest,
) -> Result<PublishResult, BusError> {
    let room = &req.publication.room;
    let parts = envelope::split_message(&req.publication, req.skip.as_deref())?;
    let (reply, answer) = oneshot::channel();
    let job = Job {
        meta: shared.keys.meta(room),
        history: shared.keys.history(room),
        channel: shared.keys.room_channel(room),
        dedupe: req
            .idempotency_key
            .as_deref()
            .map(|k| shared.keys.publish_dedupe(room, k)),
        slot: shared.keys.room_slot(room),
        envelope: parts,
        volatile: req.volatile,
        reply,
    };
    if shared.closed.load(Ordering::Acquire) {
        return Err(BusError::Unavailable("the bus is closed".into()));
    }
    // Bounded: a full queue waits (up to the timeout) rather than piling up.
    let queued = tokio::time::timeout(shared.cfg.op_timeout, async {
        shared.publish_tx.send(job).await.is_ok()
    })
    .await;
    match queued {
        Ok(true) => {}
        Ok(false) => return Err(BusError::Unavailable("the bus is closed".into())),
        Err(_) => return Err(BusError::Unavailable("publish: queue full".into())),
    }
    let (dup, result) = match answer.await {
        Ok(r) => r?,
        Err(_) => return Err(BusError::Unavailable("the bus is closed".into())),
    };
    let (offset, epoch) = result
        .split_once(':')
        .ok_or_else(|| BusError::Internal(format!("publish: unexpected reply {result:?}")))?;
    let offset = if offset.is_empty() {
        None
    } else {
        Some(
            offset
                .parse::<u64>()
                .map_err(|_| BusError::Internal(format!("publish: bad offset {offset:?}")))?,
        )
    };
    Ok(PublishResult {
        offset,
        epoch: epoch.to_string(),
        duplicate: dup == 1,
    })
}
