//! The lag check: whether the subscription fell behind what the publishing nodes sent,
//! judged from the stamps of the room messages it receives (the client library queues
//! what the socket delivers without bound; a subscription that lags is cut and repaired
//! from history instead).

use std::time::Duration;

pub(super) use crate::common::now_ms;

/// Most publishing nodes whose delays one subscription keeps (beyond: not judged).
const LAG_NODES: usize = 256;
/// Delays this far off either way (a day) are taken for a broken stamp, not lag.
const STAMP_SANITY_MS: u64 = 86_400_000;

/// Judges whether the subscription fell behind, from the stamps of the room messages it
/// receives. A message's delay (our clock minus its publishing node's stamp) includes that
/// node's clock skew, so each node's smallest delay seen on this subscription is its
/// baseline: the subscription is behind when a message comes more than `max` after that.
/// A steadily skewed clock moves the baseline, not the verdict; a stamp a day or more
/// off (0, garbage) is not judged at all.
pub(super) struct Lag {
    max_ms: i64,
    base: std::collections::HashMap<String, i64>,
}

impl Lag {
    pub(super) fn new(max: Duration) -> Self {
        Lag {
            max_ms: i64::try_from(max.as_millis()).unwrap_or(i64::MAX),
            base: std::collections::HashMap::new(),
        }
    }

    /// Notes a message of `node` stamped `ts` received at `now`; whether it came more
    /// than the allowed lag after that node's baseline. Never when the lag is zero.
    pub(super) fn behind(&mut self, node: &str, ts: u64, now: u64) -> bool {
        if self.max_ms == 0 {
            return false;
        }
        let delay = i128::from(now) - i128::from(ts);
        // A stamp a day or more off is no clock at all (0, garbage): not judged.
        let Ok(delay) = i64::try_from(delay) else {
            return false;
        };
        if delay.unsigned_abs() >= STAMP_SANITY_MS {
            return false;
        }
        match self.base.get_mut(node) {
            Some(b) => {
                *b = (*b).min(delay);
                delay.saturating_sub(*b) > self.max_ms
            }
            None => {
                if self.base.len() < LAG_NODES {
                    self.base.insert(node.to_string(), delay);
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falling_behind_is_judged_against_each_nodes_baseline() {
        let mut lag = Lag::new(Duration::from_secs(30));
        // node a: 2 ms of delay, then a message that waited 31 s more
        assert!(!lag.behind("a", 100_000, 100_002));
        assert!(!lag.behind("a", 200_000, 230_002), "exactly the limit");
        assert!(lag.behind("a", 300_000, 330_003));
        // node b's clock is a minute behind ours, steadily: not lag
        assert!(!lag.behind("b", 100_000, 160_000));
        assert!(!lag.behind("b", 500_000, 560_001));
        // a stamp of 0 is not judged; a clock ahead of ours moves the baseline
        assert!(!lag.behind("c", 0, 1_700_000_000_000));
        assert!(!lag.behind("c", 0, 1_800_000_000_000));
        assert!(!lag.behind("d", 900_000, 100_000));
        assert!(!lag.behind("d", 900_010, 100_010));
        assert!(
            !lag.behind("e", u64::MAX, 100_000),
            "a stamp past i64 does not wrap"
        );
        assert!(!lag.behind("e", 100_000, 100_010), "nor becomes a baseline");
        assert!(!lag.behind("e", 100_000, 130_000));
        assert!(lag.behind("e", 100_000, 130_011));
    }

    #[test]
    fn lag_zero_never_judges() {
        let mut lag = Lag::new(Duration::ZERO);
        assert!(!lag.behind("a", 100_000, 100_000));
        assert!(!lag.behind("a", 100_000, 900_000));
    }

    #[test]
    fn lag_keeps_a_bounded_number_of_nodes() {
        let mut lag = Lag::new(Duration::from_secs(1));
        for i in 0..LAG_NODES + 10 {
            assert!(!lag.behind(&format!("n{i}"), 0, 0));
        }
        assert_eq!(lag.base.len(), LAG_NODES);
        // an unknown node beyond the bound is never judged
        assert!(!lag.behind("late", 0, 10_000));
        assert!(!lag.behind("late", 0, 20_000));
    }
}
