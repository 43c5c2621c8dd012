//! When express writes pay. An express write saves its session a wake-up but is written by
//! the fan-out itself, one member after another on one thread; queued frames are written by
//! the sessions on every worker thread at once. At low rates express writes cost less CPU per
//! delivery; near saturation the one thread that fans out would become the bottleneck (the
//! knee fell from 3000 to 2000 msg/s in the fan-out benchmark). So the hub estimates, per
//! 10 ms window, the share of one core that express-writing the window's deliveries takes,
//! and writes express only while it is under [`SHARE`].

use super::lock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The length of one window.
const WINDOW: Duration = Duration::from_millis(10);
/// The largest share of one core the fan-out may spend on express writes.
const SHARE: f64 = 0.7;

/// The hub's express-write budget (one lock per fanned-out message, none per delivery).
#[derive(Debug)]
pub struct Budget {
    on: AtomicBool,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    /// Deliveries fanned out in this window, express or not.
    deliveries: u64,
    /// Time and deliveries of the fan-outs that could write express.
    express_ns: u64,
    express_deliveries: u64,
    /// Nanoseconds per delivery when writing express, as last measured.
    cost_ns: f64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            on: AtomicBool::new(true),
            window: Mutex::new(Window {
                start: Instant::now(),
                deliveries: 0,
                express_ns: 0,
                express_deliveries: 0,
                cost_ns: 0.0,
            }),
        }
    }
}

impl Budget {
    /// Whether the next fan-out may write express.
    pub fn allows(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// One fan-out: `deliveries` frames in `took`, with express writes allowed or not.
    pub fn record(&self, deliveries: u64, express: bool, took: Duration) {
        let mut w = lock(&self.window);
        w.deliveries += deliveries;
        if express {
            w.express_ns += took.as_nanos() as u64;
            w.express_deliveries += deliveries;
        }
        let elapsed = w.start.elapsed();
        if elapsed < WINDOW {
            return;
        }
        if w.express_deliveries > 0 {
            w.cost_ns = w.express_ns as f64 / w.express_deliveries as f64;
        }
        let share = w.deliveries as f64 * w.cost_ns / elapsed.as_nanos() as f64;
        self.on.store(share < SHARE, Ordering::Relaxed);
        w.start = Instant::now();
        w.deliveries = 0;
        w.express_ns = 0;
        w.express_deliveries = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn express_stops_near_saturation_and_comes_back_when_the_rate_falls() {
        let b = Budget::default();
        assert!(b.allows());
        // A window at 1 µs per delivery, 1000 deliveries in 10 ms: 10 % of a core.
        b.record(1000, true, Duration::from_millis(1));
        {
            let mut w = lock(&b.window);
            w.start -= WINDOW;
        }
        b.record(0, true, Duration::ZERO);
        assert!(b.allows(), "10 % of a core");
        // 50,000 deliveries at the same cost in one window: several threads' worth (the
        // margin keeps a slow test machine from passing the threshold).
        b.record(50_000, true, Duration::from_millis(50));
        lock(&b.window).start -= WINDOW;
        b.record(0, true, Duration::ZERO);
        assert!(!b.allows(), "more than a thread");
        // Queued meanwhile (cheaper, not measured as express): the estimate stays 1 µs
        // per delivery, so it comes back only when the rate falls.
        b.record(50_000, false, Duration::from_millis(5));
        lock(&b.window).start -= WINDOW;
        b.record(0, false, Duration::ZERO);
        assert!(!b.allows(), "the rate did not fall");
        b.record(500, false, Duration::from_micros(50));
        lock(&b.window).start -= WINDOW;
        b.record(0, false, Duration::ZERO);
        assert!(b.allows(), "the rate fell");
    }
}
