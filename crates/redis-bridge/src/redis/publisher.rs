//! The publisher: every room publish of this node goes through one task that hands
//! Redis whatever is waiting, up to [`MAX_BATCH`] messages, in one call of the publish
//! script. Alone, a publish is sent at once (no added delay); under load, the publishes
//! that arrive while a call is in flight share the next one. Redis spends most of a
//! script call on the call itself, so batching is what keeps Redis from being the limit
//! of the cluster's publish rate (BENCHMARKS.md, "Publish path").
//!
//! Order: the task sends batches one at a time and the script runs a batch's messages
//! in the order they were queued, so publishes queued in order get offsets in order.

use super::envelope::SplitEnvelope;
use super::{Inner, OpError};
use crate::bus::{BusError, BusStats};
use crate::memory::new_epoch;
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
    pub(crate) envelope: SplitEnvelope,
    pub(crate) volatile: bool,
    pub(crate) reply: oneshot::Sender<Reply>,
}

/// The publisher task: runs until the bus stops or every sender is gone.
pub(crate) async fn run(inner: Arc<Inner>, mut jobs: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    loop {
        let n = tokio::select! {
            _ = inner.stop.cancelled() => break,
            n = jobs.recv_many(&mut batch, MAX_BATCH) => n,
        };
        if n == 0 {
            break;
        }
        BusStats::incr(&inner.stats.publish_batches);
        inner
            .stats
            .publishes_batched
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        let replies = call(&inner, &batch).await;
        for (i, job) in batch.drain(..).enumerate() {
            let r = match &replies {
                Ok(v) => v.get(i).cloned().ok_or_else(|| {
                    BusError::Internal(format!("publish: {} replies for {n} messages", v.len()))
                }),
                Err(e) => Err(e.clone()),
            };
            // The publisher may have given up (its request timed out): nothing to do.
            let _ = job.reply.send(r);
        }
    }
    tracing::debug!("redis publisher stopped");
}

/// One call of the publish script for the whole batch.
async fn call(inner: &Inner, batch: &[Job]) -> Result<Vec<(u8, String)>, BusError> {
    let mut inv = inner.scripts.publish.prepare_invoke();
    inv.arg(inner.cfg.history_size)
        .arg(Inner::ms(inner.cfg.history_ttl))
        .arg(Inner::ms(inner.cfg.dedupe_window))
        .arg(&inner.envelope_head)
        .arg(new_epoch());
    for job in batch {
        inv.key(&job.meta)
            .key(&job.history)
            .key(&job.channel)
            .key(job.dedupe.as_ref().unwrap_or(&job.meta));
        inv.arg(job.envelope.fields)
            .arg(job.envelope.body())
            .arg(if job.volatile { "1" } else { "0" })
            .arg(if job.dedupe.is_some() { "1" } else { "0" });
    }
    let mut c = inner.publisher.clone();
    inner
        .run("publish", async {
            inv.invoke_async(&mut c).await.map_err(OpError::from)
        })
        .await
}
