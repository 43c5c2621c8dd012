//! Memory the node gives back to the operating system.
//!
//! A connection's handshake (HTTP parsing, the upgrade, the first replies) allocates
//! several KiB that are freed as soon as its session runs. With glibc's allocator the
//! pages of those freed blocks stay with the process while longer-lived blocks of the
//! sessions sit between them: after a connect storm that is about half a KiB per held
//! connection of resident memory that nothing uses (measured: 10,000 idle connections,
//! 4.2 -> 3.5 KiB each after a trim). Every `--malloc-trim-interval` seconds the node
//! asks the allocator to return whole free pages (`malloc_trim(0)`), when connections came or
//! went since the last time.

use crate::lifecycle::Lifecycle;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Counts the connections opened and closed, so that an idle node does not trim for nothing.
#[derive(Debug, Default)]
pub struct Churn(AtomicU64);

impl Churn {
    /// Notes a connection opened or closed.
    pub fn note(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Starts the periodic trim as a task of the node; `interval` zero turns it off. Ends
/// when the drain starts.
pub fn spawn_trimmer(tasks: &Lifecycle, interval: Duration, churn: Arc<Churn>) {
    if interval.is_zero() || !supported() {
        return;
    }
    let stop = tasks.draining();
    tasks.spawn("heap-trimmer", async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut seen = churn.get();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = churn.get();
            if now == seen {
                continue;
            }
            seen = now;
            // It walks the allocator's free lists under their locks: off the workers.
            let took = tokio::task::spawn_blocking(|| {
                let t = std::time::Instant::now();
                let released = trim();
                (released, t.elapsed())
            })
            .await;
            if let Ok((released, took)) = took {
                tracing::debug!(released, ?took, "returned free heap pages to the OS");
            }
        }
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn supported() -> bool {
    true
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn supported() -> bool {
    false
}

/// Whether any memory was released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() -> bool {
    // SAFETY: malloc_trim only walks and releases the allocator's own free memory; it
    // takes no pointers from us and is thread-safe.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_counts_every_note() {
        let c = Churn::default();
        c.note();
        c.note();
        assert_eq!(c.get(), 2);
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_trim_after_freeing_blocks_between_kept_ones_releases_pages() {
        // 16 MiB in 4 KiB blocks, one in 64 kept: the freed ones between them are
        // whole pages that only a trim gives back.
        let mut blocks: Vec<Option<Vec<u8>>> =
            (0..4096).map(|i| Some(vec![i as u8; 4096])).collect();
        for (i, b) in blocks.iter_mut().enumerate() {
            if i % 64 != 0 {
                *b = None;
            }
        }
        assert!(trim());
        assert!(blocks
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.as_ref().map(|b| (i, b)))
            .all(|(i, b)| b.iter().all(|&x| x == i as u8)));
    }
}
