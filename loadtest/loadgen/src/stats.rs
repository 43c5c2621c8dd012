//! Latency histogram shared by many connection tasks, fed in batches.

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

/// Microsecond histogram, 1 us .. 10 min, 3 significant digits.
#[derive(Clone)]
pub struct Shared(Arc<Mutex<Histogram<u64>>>);

impl Shared {
    pub fn new() -> Self {
        Shared(Arc::new(Mutex::new(
            Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
        )))
    }

    pub fn recorder(&self) -> Recorder {
        Recorder {
            shared: self.clone(),
            buf: Vec::with_capacity(BATCH),
        }
    }

    pub fn summary(&self) -> Value {
        let h = self.0.lock().expect("histogram lock");
        summary(&h)
    }
}

const BATCH: usize = 128;

/// A task-local batch; flushes into the shared histogram every [`BATCH`] samples and on drop.
pub struct Recorder {
    shared: Shared,
    buf: Vec<u64>,
}

impl Recorder {
    pub fn record(&mut self, us: u64) {
        self.buf.push(us.clamp(1, 600_000_000));
        if self.buf.len() >= BATCH {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut h = self.shared.0.lock().expect("histogram lock");
        for v in self.buf.drain(..) {
            let _ = h.record(v);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

pub fn summary(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": h.len(),
        "min_us": h.min(),
        "mean_us": (h.mean() * 10.0).round() / 10.0,
        "p50_us": h.value_at_quantile(0.50),
        "p90_us": h.value_at_quantile(0.90),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
    })
}

/// Microseconds since the Unix epoch (all processes here share one clock).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
