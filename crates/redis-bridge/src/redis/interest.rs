//! What a node in rooms mode listens to: the channels of the rooms and users it holds
//! locally (docs/protocol.md section 6). The hub says what it wants (`want` / `unwant`, cheap
//! and synchronous, under its own lock); the subscriber task, which owns the pub/sub
//! connection, turns the difference between what is wanted and what is subscribed into
//! SUBSCRIBE and UNSUBSCRIBE commands, many channels per command, and tells joins
//! waiting in `ready` once their channel is confirmed. A channel nobody wants any more
//! is unsubscribed only after the linger, so that churn costs no command.

use super::lock;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// Channels named in one SUBSCRIBE or UNSUBSCRIBE command at most.
pub(crate) const BATCH: usize = 1000;

/// The node's wanted and subscribed channels. Std mutex: short map operations only,
/// never held across an await.
#[derive(Default)]
pub(crate) struct Interest {
    channels: Mutex<HashMap<String, Entry>>,
    /// Wakes the subscriber when there is something to (un)subscribe.
    wake: Notify,
}

#[derive(Default)]
struct Entry {
    /// A local room member or user connection needs this channel.
    wanted: bool,
    /// Redis confirmed the subscription on the current connection.
    subscribed: bool,
    /// When it stopped being wanted (the linger runs from there).
    unwanted_at: Option<Instant>,
    /// Joins waiting for the confirmation.
    waiters: Vec<oneshot::Sender<()>>,
}

/// What the subscriber should do now.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Work {
    /// Wanted and not subscribed.
    pub(crate) subscribe: Vec<String>,
    /// Subscribed, and unwanted for longer than the linger.
    pub(crate) unsubscribe: Vec<String>,
    /// When the next lingering channel is due (none: no channel lingers).
    pub(crate) next_due: Option<Instant>,
}

impl Interest {
    /// A local member needs `channel`.
    pub(crate) fn want(&self, channel: String) {
        let mut ch = lock(&self.channels);
        let e = ch.entry(channel).or_default();
        e.wanted = true;
        e.unwanted_at = None;
        if !e.subscribed {
            drop(ch);
            self.wake.notify_one();
        }
    }

    /// No local member needs `channel` any more; it lingers, then is unsubscribed.
    pub(crate) fn unwant(&self, channel: &str) {
        let mut ch = lock(&self.channels);
        if let Some(e) = ch.get_mut(channel) {
            e.wanted = false;
            e.unwanted_at = Some(Instant::now());
            drop(ch);
            self.wake.notify_one();
        }
    }

    /// `None` when `channel` is subscribed already; otherwise a receiver that fires when
    /// it is (and fails if the channel is given up before).
    pub(crate) fn ready(&self, channel: &str) -> Option<oneshot::Receiver<()>> {
        let mut ch = lock(&self.channels);
        let e = ch.entry(channel.to_string()).or_default();
        if e.subscribed {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        e.waiters.push(tx);
        drop(ch);
        self.wake.notify_one();
        Some(rx)
    }

    /// Waits until there may be work.
    pub(crate) async fn changed(&self) {
        self.wake.notified().await
    }

    /// What to (un)subscribe now: forgets the channels that are neither wanted nor
    /// subscribed, and gives up the lingering ones whose time has come.
    pub(crate) fn work(&self, now: Instant, linger: Duration) -> Work {
        let mut w = Work::default();
        let mut ch = lock(&self.channels);
        ch.retain(|name, e| {
            if e.wanted || !e.waiters.is_empty() {
                if !e.subscribed && w.subscribe.len() < BATCH {
                    w.subscribe.push(name.clone());
                }
                return true;
            }
            let due = e.unwanted_at.map_or(now, |t| t + linger);
            if !e.subscribed {
                return false;
            }
            if due <= now {
                if w.unsubscribe.len() < BATCH {
                    // Stays until the UNSUBSCRIBE is sent (`unsubscribed`).
                    w.unsubscribe.push(name.clone());
                } else {
                    w.next_due = Some(now);
                }
            } else {
                w.next_due = Some(w.next_due.map_or(due, |d: Instant| d.min(due)));
            }
            true
        });
        w
    }

    /// Redis confirmed these subscriptions: joins waiting for them go on.
    pub(crate) fn subscribed(&self, names: &[String]) {
        let mut ch = lock(&self.channels);
        for n in names {
            if let Some(e) = ch.get_mut(n) {
                e.subscribed = true;
                for w in e.waiters.drain(..) {
                    let _ = w.send(());
                }
            }
        }
    }

    /// These were unsubscribed; a channel wanted again meanwhile is subscribed anew.
    pub(crate) fn unsubscribed(&self, names: &[String]) {
        let mut ch = lock(&self.channels);
        let mut again = false;
        for n in names {
            if let Some(e) = ch.get_mut(n) {
                e.subscribed = false;
                if e.wanted || !e.waiters.is_empty() {
                    again = true;
                } else {
                    ch.remove(n);
                }
            }
        }
        drop(ch);
        if again {
            self.wake.notify_one();
        }
    }

    /// The connection was lost: nothing is subscribed any more. What is wanted will be
    /// subscribed again on the next connection; what lingered is forgotten.
    pub(crate) fn reset(&self) {
        let mut ch = lock(&self.channels);
        ch.retain(|_, e| {
            e.subscribed = false;
            e.wanted || !e.waiters.is_empty()
        });
    }

    /// Every channel wanted now, for the subscription of a new connection.
    pub(crate) fn wanted(&self) -> Vec<String> {
        lock(&self.channels)
            .iter()
            .filter(|(_, e)| e.wanted || !e.waiters.is_empty())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Subscribed channels, counted by `is_room` (rooms, users).
    pub(crate) fn counts(&self, is_room: impl Fn(&str) -> bool) -> (u64, u64) {
        let ch = lock(&self.channels);
        let (mut rooms, mut users) = (0, 0);
        for (n, e) in ch.iter() {
            if e.subscribed {
                if is_room(n) {
                    rooms += 1;
                } else {
                    users += 1;
                }
            }
        }
        (rooms, users)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_channel_lingers_and_comes_back_without_a_command() {
        let i = Interest::default();
        let linger = Duration::from_secs(2);
        i.want("r:a".into());
        let w = i.work(Instant::now(), linger);
        assert_eq!(w.subscribe, vec!["r:a".to_string()]);
        i.subscribed(&w.subscribe);
        assert!(i.ready("r:a").is_none(), "subscribed: a join need not wait");

        // Left, then back within the linger: nothing to do.
        i.unwant("r:a");
        let w = i.work(Instant::now(), linger);
        assert!(w.subscribe.is_empty() && w.unsubscribe.is_empty());
        assert!(w.next_due.is_some());
        i.want("r:a".into());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(i.work(Instant::now(), linger), Work::default());

        // Left for longer than the linger: unsubscribed once.
        i.unwant("r:a");
        tokio::time::advance(Duration::from_secs(3)).await;
        let w = i.work(Instant::now(), linger);
        assert_eq!(w.unsubscribe, vec!["r:a".to_string()]);
        i.unsubscribed(&w.unsubscribe);
        assert_eq!(i.work(Instant::now(), linger), Work::default());
        assert_eq!(i.counts(|_| true), (0, 0));
    }

    #[tokio::test]
    async fn a_waiting_join_goes_on_when_its_channel_is_confirmed() {
        let i = Interest::default();
        i.want("r:b".into());
        let rx = i.ready("r:b").expect("not subscribed yet");
        let w = i.work(Instant::now(), Duration::from_secs(2));
        i.subscribed(&w.subscribe);
        rx.await.expect("confirmed");
        // A lost connection: wanted channels are subscribed again, nothing else.
        i.want("r:c".into());
        i.subscribed(&["r:c".to_string()]);
        i.unwant("r:c");
        i.reset();
        assert_eq!(i.wanted(), vec!["r:b".to_string()]);
    }
}
