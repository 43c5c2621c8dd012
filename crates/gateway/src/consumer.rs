//! Publishing from a data pipeline: with `--consume-stream`, the node reads Redis Streams
//! as one consumer of the cluster's group (`--consume-group`, consumer name = node id) and
//! publishes each entry to its room as `/api/publish` would (docs/protocol.md,
//! "Publishing from a Redis Stream").
//!
//! - An entry is acknowledged only after its publish succeeded; the publish is idempotent
//!   (by the entry's `id` field, or its stream ID), so an entry published twice (a node
//!   died between publish and acknowledgement, another claimed it) reaches clients once.
//! - A failed publish (Redis unavailable) stops the batch there, so that a stream's
//!   entries keep their order; the node backs off and reads its own pending entries again.
//! - Entries another node left pending for `--consume-claim-idle-ms` are claimed.
//! - A malformed entry is counted, logged at a rate limit, copied to `<stream>:dead` and
//!   acknowledged: it never blocks the entries after it.
//!
//! The Redis side (XREADGROUP, XACK, XAUTOCLAIM) lives in the bridge's `StreamReader`;
//! this module only turns entries into publishes. The task is the node's (crate::lifecycle)
//! and stops when the drain starts.

use crate::node::Node;
use prometheus::{IntCounterVec, Opts};
use roomcast_protocol::{EventName, Publication, RoomName, UserId, SERVER_USER};
use roomcast_redis_bridge::{
    BusError, PublishRequest, StreamEntry, StreamReader, StreamReaderConfig,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a read waits for new entries (also the longest a stop waits for a read).
const BLOCK: Duration = Duration::from_millis(1000);
/// Backoff after a failed Redis call or publish, doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// At most one log line per this interval for each kind of trouble.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Counters of the consumer, by stream and outcome.
struct Stats {
    /// `consumed` (read), `published`, `duplicate` (published before: not delivered
    /// again), `failed` (publish failed; retried), `claimed` (taken over from another
    /// node), `malformed` (dead-lettered).
    entries: IntCounterVec,
}

/// Logs at most once per [`LOG_EVERY`], counting what it did not log.
struct RateLog {
    last: Option<Instant>,
    skipped: u64,
}

impl RateLog {
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.skipped += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.skipped))
    }
}

/// Why an entry cannot be published.
#[derive(Debug, thiserror::Error)]
enum Malformed {
    #[error("missing field {0:?}")]
    Missing(&'static str),
    #[error("field {0:?} is not UTF-8")]
    NotText(&'static str),
    #[error("{0}")]
    Name(String),
    #[error("data is not JSON: {0}")]
    Data(String),
    #[error("data larger than {0} bytes")]
    TooLarge(usize),
}

/// Turns an entry into the publish `/api/publish` would make of the same fields.
fn publish_request(entry: &StreamEntry, max_size: usize) -> Result<PublishRequest, Malformed> {
    let text = |name: &'static str| -> Result<Option<&str>, Malformed> {
        entry
            .field(name)
            .map(|b| std::str::from_utf8(b).map_err(|_| Malformed::NotText(name)))
            .transpose()
    };
    let room = text("room")?.ok_or(Malformed::Missing("room"))?;
    let room = RoomName::new(room).map_err(|e| Malformed::Name(format!("room: {e}")))?;
    let event = text("event")?.ok_or(Malformed::Missing("event"))?;
    let event = EventName::new(event).map_err(|e| Malformed::Name(format!("event: {e}")))?;
    let data = match entry.field("data") {
        None => serde_json::Value::Null,
        Some(d) if d.len() > max_size => return Err(Malformed::TooLarge(max_size)),
        Some(d) => serde_json::from_slice(d).map_err(|e| Malformed::Data(e.to_string()))?,
    };
    // The `id` field dedupes like an /api/publish id (the same key space: a message
    // published both ways with one id is delivered once); without it, the stream ID.
    let key = match text("id")?.filter(|i| !i.is_empty()) {
        Some(id) => format!("{SERVER_USER}\u{1f}api\u{1f}{id}"),
        None => format!(
            "{SERVER_USER}\u{1f}stream\u{1f}{}\u{1f}{}",
            entry.stream, entry.id
        ),
    };
    let from =
        UserId::new(SERVER_USER).map_err(|e| Malformed::Name(format!("server user: {e}")))?;
    Ok(PublishRequest {
        publication: Publication {
            room,
            event,
            data,
            from,
            offset: None,
            ts: crate::hub::now_ms(),
        },
        volatile: false,
        idempotency_key: Some(key),
        skip: None,
    })
}

/// The running consumer of one node.
pub struct Consumer {
    /// Entries processed so far (any outcome), for tests and logs.
    pub processed: Arc<AtomicU64>,
}

impl Consumer {
    /// Starts consuming `node.cfg.consume_stream` from the Redis at `url`, as a task of
    /// the node that ends when the drain starts (a batch in progress runs to its end).
    pub fn start(node: Arc<Node>, url: &str) -> Result<Self, String> {
        let cfg = StreamReaderConfig {
            streams: node.cfg.consume_stream.clone(),
            group: node.cfg.consume_group.clone(),
            consumer: node.node_id.clone(),
            block: BLOCK,
            claim_idle: node.cfg.consume_claim_idle,
            op_timeout: node.cfg.bus_timeout,
        };
        let reader = StreamReader::new(url, cfg).map_err(|e| format!("--consume-stream: {e}"))?;
        let entries = IntCounterVec::new(
            Opts::new(
                "roomcast_stream_entries_total",
                "Redis Stream entries by stream and outcome (consumed, published, duplicate, failed, claimed, malformed)",
            ),
            &["stream", "outcome"],
        )
        .map_err(|e| format!("metric: {e}"))?;
        for s in &node.cfg.consume_stream {
            for o in [
                "consumed",
                "published",
                "duplicate",
                "failed",
                "claimed",
                "malformed",
            ] {
                entries.with_label_values(&[s.as_str(), o]);
            }
        }
        node.metrics.register(vec![Box::new(entries.clone())]);
        let processed = Arc::new(AtomicU64::new(0));
        let run = Run {
            node,
            reader,
            stats: Stats { entries },
            processed: processed.clone(),
            bad_log: RateLog {
                last: None,
                skipped: 0,
            },
            fail_log: RateLog {
                last: None,
                skipped: 0,
            },
        };
        let stop = run.node.tasks.draining();
        run.node
            .tasks
            .clone()
            .spawn("stream-consumer", run.run(stop));
        Ok(Consumer { processed })
    }
}

struct Run {
    node: Arc<Node>,
    reader: StreamReader,
    stats: Stats,
    processed: Arc<AtomicU64>,
    bad_log: RateLog,
    fail_log: RateLog,
}

/// What became of a batch.
enum Batch {
    /// Every entry was published (or dead-lettered) and acknowledged.
    Done,
    /// Something failed: the rest stays pending, to be read again after a backoff.
    Retry,
}

impl Run {
    async fn run(mut self, stop: CancellationToken) {
        let streams = self.node.cfg.consume_stream.join(",");
        tracing::info!(streams, group = %self.node.cfg.consume_group, consumer = %self.node.node_id, "consuming Redis Streams");
        let claim_every = (self.reader.config().claim_idle / 2).max(Duration::from_millis(100));
        let mut next_claim = Instant::now();
        // Our own pending entries first: after a restart under the same node id, and
        // after a failure.
        let mut own_pending = true;
        let mut backoff = MIN_BACKOFF;
        while !stop.is_cancelled() {
            let read = async {
                if own_pending {
                    return self.reader.pending().await.map(|e| (e, "pending"));
                }
                if Instant::now() >= next_claim {
                    next_claim = Instant::now() + claim_every;
                    return self.reader.claim().await.map(|e| (e, "claimed"));
                }
                self.reader.read_new().await.map(|e| (e, "new"))
            };
            let read = tokio::select! {
                _ = stop.cancelled() => break,
                r = read => r,
            };
            let outcome = match read {
                Ok((entries, kind)) => {
                    if kind == "pending" && entries.is_empty() {
                        own_pending = false;
                    }
                    if kind == "claimed" {
                        for e in &entries {
                            self.count(&e.stream, "claimed");
                        }
                        if !entries.is_empty() {
                            tracing::info!(
                                entries = entries.len(),
                                "claimed stream entries another consumer left pending"
                            );
                        }
                    }
                    // A batch runs to its end even when the node stops (each step is
                    // bounded by --bus-timeout): what is published gets acknowledged.
                    self.handle(entries).await
                }
                Err(e) => {
                    self.failed_log("reading the stream", &e);
                    Batch::Retry
                }
            };
            match outcome {
                Batch::Done => backoff = MIN_BACKOFF,
                Batch::Retry => {
                    own_pending = true;
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        tracing::info!("stream consumer stopped");
    }

    fn count(&self, stream: &str, outcome: &str) {
        self.stats
            .entries
            .with_label_values(&[stream, outcome])
            .inc();
    }

    fn failed_log(&mut self, what: &str, e: &BusError) {
        if let Some(not_logged) = self.fail_log.due() {
            tracing::warn!(error = %e, not_logged, "stream consumer: {what} failed; retrying");
        }
    }

    async fn handle(&mut self, entries: Vec<StreamEntry>) -> Batch {
        for entry in entries {
            self.count(&entry.stream, "consumed");
            self.processed.fetch_add(1, Ordering::Relaxed);
            if entry.fields.is_none() {
                // Deleted from the stream while pending: nothing to publish.
                if let Err(e) = self.reader.ack(&entry).await {
                    self.failed_log("acknowledging", &e);
                    return Batch::Retry;
                }
                continue;
            }
            let req = match publish_request(&entry, self.node.cfg.max_message_size) {
                Ok(r) => r,
                Err(why) => {
                    self.count(&entry.stream, "malformed");
                    if let Some(not_logged) = self.bad_log.due() {
                        tracing::warn!(stream = %entry.stream, id = %entry.id, error = %why, not_logged, "malformed stream entry moved to {}", roomcast_redis_bridge::dead_letter_key(&entry.stream));
                    }
                    if let Err(e) = self.reader.dead_letter(&entry, &why.to_string()).await {
                        self.failed_log("dead-lettering", &e);
                        return Batch::Retry;
                    }
                    continue;
                }
            };
            match self.node.bus.publish(req).await {
                Ok(res) => {
                    self.count(
                        &entry.stream,
                        if res.duplicate {
                            "duplicate"
                        } else {
                            "published"
                        },
                    );
                }
                Err(e) => {
                    self.count(&entry.stream, "failed");
                    self.node.metrics.bus_publish_errors.inc();
                    self.failed_log("publishing", &e);
                    return Batch::Retry;
                }
            }
            if let Err(e) = self.reader.ack(&entry).await {
                self.failed_log("acknowledging", &e);
                return Batch::Retry;
            }
        }
        Batch::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: &[(&str, &str)]) -> StreamEntry {
        StreamEntry {
            stream: "s".into(),
            id: "1-0".into(),
            fields: Some(
                fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                    .collect(),
            ),
        }
    }

    #[test]
    fn entries_become_publishes() {
        let r = publish_request(
            &entry(&[
                ("room", "city:paris"),
                ("event", "tick"),
                ("data", r#"{"t":1}"#),
            ]),
            1024,
        )
        .expect("valid");
        assert_eq!(r.publication.room.as_str(), "city:paris");
        assert_eq!(r.publication.data, serde_json::json!({"t": 1}));
        assert_eq!(
            r.idempotency_key.as_deref(),
            Some("server\u{1f}stream\u{1f}s\u{1f}1-0")
        );
        let r = publish_request(&entry(&[("room", "r"), ("event", "e"), ("id", "x")]), 1024)
            .expect("valid");
        assert_eq!(r.publication.data, serde_json::Value::Null);
        assert_eq!(r.idempotency_key.as_deref(), Some("server\u{1f}api\u{1f}x"));
        for bad in [
            vec![("event", "e")],
            vec![("room", "r")],
            vec![("room", "bad room"), ("event", "e")],
            vec![("room", "r"), ("event", "e"), ("data", "{not json")],
            vec![("room", "r"), ("event", "e"), ("data", "\"0123456789\"")],
        ] {
            assert!(publish_request(&entry(&bad), 8).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rate_log() {
        let mut l = RateLog {
            last: None,
            skipped: 0,
        };
        assert_eq!(l.due(), Some(0));
        assert_eq!(l.due(), None);
        assert_eq!(l.skipped, 1);
    }
}
