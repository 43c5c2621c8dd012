//! How many room messages the Redis bus carries from one node to another per second,
//! without WebSockets: node A publishes (acked, with offsets, history and, unless
//! `--no-ids`, an idempotency id, exactly as a client's publish does), node B counts
//! what its subscription delivers. Compare with `redis-benchmark PUBLISH` on the same
//! Redis: `scripts/bench --scenarios bus` does both.
//!
//! ```text
//! cargo run --release -p roomcast-redis-bridge --example bus_bench -- \
//!     --redis-url redis://127.0.0.1:6379 --messages 200000 --rooms 100 --in-flight 512
//! ```
//! Prints one JSON line. Loopback Redis only; bounded by `--messages` and `--timeout`.

use clap::Parser;
use roomcast_protocol::{EventName, Publication, RoomName, UserId};
use roomcast_redis_bridge::{Bus, BusConfig, BusEvent, EventSink, PublishRequest, RedisBus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

#[derive(Parser, Debug)]
struct Args {
    /// Redis to use (loopback only).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Messages to publish (at most 5,000,000).
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Rooms to spread them over.
    #[arg(long, default_value_t = 100)]
    rooms: u64,
    /// Publishes in flight at once (many clients publishing at the same time).
    #[arg(long, default_value_t = 512)]
    in_flight: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Publish without idempotency ids (no dedupe key per message).
    #[arg(long)]
    no_ids: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Key prefix (a fresh one per run keeps runs apart).
    #[arg(long, default_value = "busbench")]
    prefix: String,
}

/// Counts room messages and wakes the waiter at the target.
struct Counter {
    n: AtomicU64,
    target: u64,
    done: Notify,
}

impl EventSink for Counter {
    fn deliver(&self, event: BusEvent) {
        if let BusEvent::Message { .. } = event {
            if self.n.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
                self.done.notify_one();
            }
        }
    }
}

async fn node(
    url: &str,
    name: &str,
    prefix: &str,
    target: u64,
) -> anyhow::Result<(Arc<RedisBus>, Arc<Counter>)> {
    let cfg = BusConfig {
        node_id: name.into(),
        prefix: prefix.into(),
        history_size: 100,
        ..BusConfig::default()
    };
    let bus = Arc::new(RedisBus::connect(url, cfg).await?);
    let counter = Arc::new(Counter {
        n: AtomicU64::new(0),
        target,
        done: Notify::new(),
    });
    bus.start(counter.clone()).await?;
    let t0 = Instant::now();
    while !bus.is_ready() {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(10),
            "{name}: bus not ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((bus, counter))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    anyhow::ensure!(
        a.redis_url.contains("127.0.0.1")
            || a.redis_url.contains("localhost")
            || a.redis_url.contains("[::1]"),
        "loopback Redis only"
    );
    anyhow::ensure!(
        a.messages > 0 && a.messages <= 5_000_000,
        "--messages 1..=5000000"
    );
    let prefix = format!("{}{}", a.prefix, std::process::id());
    let (pub_bus, _own) = node(&a.redis_url, "bench-a", &prefix, u64::MAX).await?;
    let (sub_bus, counter) = node(&a.redis_url, "bench-b", &prefix, a.messages).await?;
    let rooms: Vec<RoomName> = (0..a.rooms.max(1))
        .map(|i| RoomName::try_from(format!("r{i}")))
        .collect::<Result<_, _>>()?;
    let event = EventName::try_from("m".to_string())?;
    let from = UserId::try_from("bench".to_string())?;
    let data = serde_json::Value::String("x".repeat(a.payload));
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Duration::from_secs(a.timeout);
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    // `--in-flight` publishers, each publishing the next message as soon as its last one
    // is acked (as many clients pipelining): no task per message in the harness.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.in_flight.max(1) {
        let (bus, acked, failed, next) =
            (pub_bus.clone(), acked.clone(), failed.clone(), next.clone());
        let (rooms, event, from, data) = (rooms.clone(), event.clone(), from.clone(), data.clone());
        let (total, ids) = (a.messages, !a.no_ids);
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || t0.elapsed() > deadline {
                    return;
                }
                let req = PublishRequest {
                    publication: Publication {
                        room: rooms[(i % rooms.len() as u64) as usize].clone(),
                        event: event.clone(),
                        data: data.clone(),
                        from: from.clone(),
                        offset: None,
                        ts: 0,
                    },
                    volatile: false,
                    idempotency_key: ids.then(|| format!("bench:{i}")),
                    skip: None,
                };
                match bus.publish(req).await {
                    Ok(_) => acked.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let acked_s = t0.elapsed().as_secs_f64();
    let left = deadline.saturating_sub(t0.elapsed());
    let _ = tokio::time::timeout(left, async {
        while counter.n.load(Ordering::Relaxed) < a.messages {
            tokio::select! {
                _ = counter.done.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    })
    .await;
    let elapsed = t0.elapsed().as_secs_f64();
    let received = counter.n.load(Ordering::Relaxed);
    let cpu = cpu_seconds() - cpu0;
    let report = serde_json::json!({
        "messages": a.messages,
        "acked": acked.load(Ordering::Relaxed),
        "failed": failed.load(Ordering::Relaxed),
        "received_by_other_node": received,
        "rooms": a.rooms,
        "in_flight": a.in_flight,
        "payload": a.payload,
        "ids": !a.no_ids,
        "acked_s": acked_s,
        "elapsed_s": elapsed,
        "rate": received as f64 / elapsed,
        "process_cpu_s": cpu,
        "ok": received == a.messages && failed.load(Ordering::Relaxed) == 0,
    });
    println!("{report}");
    pub_bus.close().await;
    sub_bus.close().await;
    Ok(())
}

/// CPU seconds (user + system) this process used so far.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
