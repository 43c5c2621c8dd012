//! The subscriber's connection: one Redis's pub/sub connection or a cluster's shard
//! connections (`sharded.rs`), behind one [`Sink`] (subscribe, unsubscribe, ping) and one
//! [`Source`] (what arrives). Opening it subscribes whatever the mode needs; in rooms mode
//! [`apply_interest`] keeps its channels equal to what the node's members want.

use crate::bus::{BusStats, ShardState, SubscribeMode};
use crate::common::lock;
use crate::redis::sharded::{self, Incoming, Pushes, Shards};
use crate::redis::{interest, Backend, Shared};
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};

/// Where subscriptions are sent: one Redis's pub/sub connection, or a cluster's shards.
pub(super) enum Sink {
    Single(PubSubSink),
    Cluster(Shards),
}

/// Where messages come from.
pub(super) enum Source {
    Single(PubSubStream),
    Cluster(Pushes),
}

impl Sink {
    async fn subscribe(&mut self, shared: &Shared, channels: &[String]) -> redis::RedisResult<()> {
        match self {
            Sink::Single(s) => {
                s.subscribe(channels).await?;
                BusStats::incr(&shared.stats.subscribe_commands);
                Ok(())
            }
            Sink::Cluster(c) => c.apply(shared, channels, true).await,
        }
    }

    async fn unsubscribe(
        &mut self,
        shared: &Shared,
        channels: &[String],
    ) -> redis::RedisResult<()> {
        match self {
            Sink::Single(s) => {
                s.unsubscribe(channels).await?;
                BusStats::incr(&shared.stats.unsubscribe_commands);
                Ok(())
            }
            Sink::Cluster(c) => c.apply(shared, channels, false).await,
        }
    }

    /// Whether the connection (every shard of it) answers.
    pub(super) async fn ping(&mut self, shared: &Shared) -> Result<(), &'static str> {
        match self {
            Sink::Single(s) => {
                match tokio::time::timeout(shared.cfg.op_timeout, s.ping::<redis::Value>()).await {
                    // in subscribed mode the answer is ["pong", ""], not +PONG
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(_)) => Err("ping failed"),
                    Err(_) => Err("ping timed out"),
                }
            }
            Sink::Cluster(c) => {
                let states = tokio::time::timeout(shared.cfg.op_timeout, c.ping())
                    .await
                    .unwrap_or_else(|_| vec![false; c.primaries.len()]);
                let all = states.iter().all(|up| *up);
                *lock(&shared.shards) = c
                    .primaries
                    .iter()
                    .zip(states)
                    .map(|((h, p), up)| ShardState {
                        shard: format!("{h}:{p}"),
                        up,
                    })
                    .collect();
                if all {
                    Ok(())
                } else {
                    Err("a shard does not answer")
                }
            }
        }
    }
}

impl Source {
    pub(super) async fn next(&mut self) -> Option<Incoming> {
        match self {
            Source::Single(s) => s.next().await.map(Incoming::Msg),
            Source::Cluster(p) => p.next().await,
        }
    }
}

/// Marks every shard of the last session down (the subscription is being rebuilt).
fn shards_down(shared: &Shared) {
    for s in lock(&shared.shards).iter_mut() {
        s.up = false;
    }
}

pub(super) async fn subscribe(shared: &Shared) -> redis::RedisResult<(Sink, Source)> {
    let (mut sink, stream) = match &shared.backend {
        Backend::Single { client, .. } => {
            let (sink, stream) = client.get_async_pubsub().await?.split();
            (Sink::Single(sink), Source::Single(stream))
        }
        Backend::Cluster { seeds, .. } => {
            shards_down(shared);
            let (shards, pushes) = sharded::connect(shared, seeds).await?;
            *lock(&shared.shards) = shards
                .primaries
                .iter()
                .map(|(h, p)| ShardState {
                    shard: format!("{h}:{p}"),
                    up: true,
                })
                .collect();
            (Sink::Cluster(shards), Source::Cluster(pushes))
        }
    };
    fn single(s: &mut Sink) -> Option<&mut PubSubSink> {
        match s {
            Sink::Single(s) => Some(s),
            Sink::Cluster(_) => None,
        }
    }
    match shared.cfg.subscribe {
        SubscribeMode::Pattern => {
            if let Some(s) = single(&mut sink) {
                s.psubscribe(&[shared.keys.room_pattern(), shared.keys.user_pattern()])
                    .await?;
            }
        }
        SubscribeMode::Rooms => {
            // A new connection holds nothing: every channel wanted now, in batches,
            // before the re-synchronisation reads the rooms' history.
            shared.interest.reset();
            let wanted = shared.interest.wanted();
            for batch in wanted.chunks(interest::BATCH) {
                sink.subscribe(shared, batch).await?;
                shared.interest.subscribed(batch);
            }
            shared.count_subscriptions();
        }
    }
    if let Some(s) = single(&mut sink) {
        s.subscribe(shared.keys.control_channel()).await?;
    }
    Ok((sink, stream))
}

/// Rooms mode: sends the SUBSCRIBE and UNSUBSCRIBE commands that make the connection's
/// channels what the node's members want, many channels per command; the time the next
/// lingering channel is due.
pub(super) async fn apply_interest(
    shared: &Shared,
    sink: &mut Sink,
) -> Result<Option<tokio::time::Instant>, &'static str> {
    loop {
        let w = shared
            .interest
            .work(tokio::time::Instant::now(), shared.cfg.linger);
        if !w.subscribe.is_empty() {
            match tokio::time::timeout(shared.cfg.op_timeout, sink.subscribe(shared, &w.subscribe))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err("subscribe failed"),
                Err(_) => return Err("subscribe timed out"),
            }
            shared.interest.subscribed(&w.subscribe);
        }
        if !w.unsubscribe.is_empty() {
            match tokio::time::timeout(
                shared.cfg.op_timeout,
                sink.unsubscribe(shared, &w.unsubscribe),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err("unsubscribe failed"),
                Err(_) => return Err("unsubscribe timed out"),
            }
            shared.interest.unsubscribed(&w.unsubscribe);
        }
        shared.count_subscriptions();
        if w.subscribe.len() < interest::BATCH && w.unsubscribe.len() < interest::BATCH {
            return Ok(w.next_due);
        }
    }
}
