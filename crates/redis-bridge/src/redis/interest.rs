//! What a node in rooms mode listens to: the channels of the rooms and users it holds
//! locally (docs/protocol.md section 6). The hub says what it wants (`want` / `unwant`, cheap
//! and synchronous, under its own lock); the subscriber task, which owns the pub/sub
//! connection, turns the difference between what is wanted and what is subscribed into
//! SUBSCRIBE and UNSUBSCRIBE commands, many channels per command, and tells joins
//! waiting in `ready` once their channel is confirmed. A channel nobody wants any more
//! is unsubscribed only after the linger, so that churn costs no command.

use crate::common::lock;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// Channels named in one SUBSCRIBE or UNSUBSCRIBE command at most.
pub(crate) const BATCH: usize = 1000;

/// Whose channel it is (for the subscription gauges).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Room,
    User,
}

/// The node's wanted and subscribed channels. Std mutex: short map operations only,
/// never held across an await.
#[derive(Default)]
pub(crate) struct Interest {
    channels: Mutex<Channels>,
    /// Wakes the subscriber when there is something to (un)subscribe.
    wake: Notify,
}

/// Every channel the node wants or holds, and the two short lists the subscriber works
/// from, so that its work costs what changed, not what the node holds.
#[derive(Default)]
struct Channels {
    all: HashMap<String, Entry>,
    /// Wanted (or waited for) and not subscribed.
    to_subscribe: HashSet<String>,
    /// Subscribed and wanted by nobody: unsubscribed when their linger is over.
    lingering: HashSet<String>,
    /// Subscribed now: rooms, users.
    subscribed: (u64, u64),
}

struct Entry {
    kind: Kind,
    /// A local room member or user connection needs this channel.
    wanted: bool,
    /// Redis confirmed the subscription on the current connection.
    subscribed: bool,
    /// When it stopped being wanted (the linger runs from there).
    unwanted_at: Instant,
    /// Joins waiting for the confirmation.
    waiters: Vec<oneshot::Sender<()>>,
}

impl Entry {
    fn new(kind: Kind) -> Self {
        Entry {
            kind,
            wanted: false,
            subscribed: false,
            unwanted_at: Instant::now(),
            waiters: Vec::new(),
        }
    }

    /// Someone needs the channel: wanted, or a join waits for it.
    fn needed(&self) -> bool {
        self.wanted || !self.waiters.is_empty()
    }
}

impl Channels {
    fn count(&mut self, kind: Kind, up: bool) {
        let c = match kind {
            Kind::Room => &mut self.subscribed.0,
            Kind::User => &mut self.subscribed.1,
        };
        *c = if up { *c + 1 } else { c.saturating_sub(1) };
    }
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
    pub(crate) fn want(&self, channel: String, kind: Kind) {
        let mut ch = lock(&self.channels);
        let ch = &mut *ch;
        ch.lingering.remove(&channel);
        let e = ch
            .all
            .entry(channel.clone())
            .or_insert_with(|| Entry::new(kind));
        e.wanted = true;
        if !e.subscribed {
            ch.to_subscribe.insert(channel);
            self.wake.notify_one();
        }
    }

    /// No local member needs `channel` any more; it lingers, then is unsubscribed.
    pub(crate) fn unwant(&self, channel: &str) {
        let mut ch = lock(&self.channels);
        let ch = &mut *ch;
        let Some(e) = ch.all.get_mut(channel) else {
            return;
        };
        e.wanted = false;
        e.unwanted_at = Instant::now();
        if e.subscribed {
            ch.lingering.insert(channel.to_string());
            self.wake.notify_one();
        } else if !e.needed() {
            ch.all.remove(channel);
            ch.to_subscribe.remove(channel);
        }
    }

    /// `None` when `channel` is subscribed already; otherwise a receiver that fires when
    /// it is (and fails if the channel is given up before).
    pub(crate) fn ready(&self, channel: &str, kind: Kind) -> Option<oneshot::Receiver<()>> {
        let mut ch = lock(&self.channels);
        let ch = &mut *ch;
        let e = ch
            .all
            .entry(channel.to_string())
            .or_insert_with(|| Entry::new(kind));
        if e.subscribed {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        e.waiters.push(tx);
        ch.to_subscribe.insert(channel.to_string());
        self.wake.notify_one();
        Some(rx)
    }

    /// Waits until there may be work.
    pub(crate) async fn changed(&self) {
        self.wake.notified().await
    }

    /// What to (un)subscribe now: the channels waiting for a subscription, and the
    /// lingering ones whose time has come.
    pub(crate) fn work(&self, now: Instant, linger: Duration) -> Work {
        let mut w = Work::default();
        let ch = lock(&self.channels);
        w.subscribe = ch.to_subscribe.iter().take(BATCH).cloned().collect();
        for name in &ch.lingering {
            let Some(e) = ch.all.get(name) else { continue };
            let due = e.unwanted_at + linger;
            if due > now {
                w.next_due = Some(w.next_due.map_or(due, |d: Instant| d.min(due)));
            } else if w.unsubscribe.len() < BATCH {
                w.unsubscribe.push(name.clone());
            } else {
                w.next_due = Some(now);
            }
        }
        w
    }

    /// Redis confirmed these subscriptions: joins waiting for them go on.
    pub(crate) fn subscribed(&self, names: &[String]) {
        let mut ch = lock(&self.channels);
        let ch = &mut *ch;
        for n in names {
            ch.to_subscribe.remove(n);
            let Some(e) = ch.all.get_mut(n) else { continue };
            if e.subscribed {
                continue;
            }
            e.subscribed = true;
            for w in e.waiters.drain(..) {
                let _ = w.send(());
            }
            let (kind, wanted) = (e.kind, e.wanted);
            ch.count(kind, true);
            if !wanted {
                // Given up while the command was on its way: it lingers from now.
                if let Some(e) = ch.all.get_mut(n) {
                    e.unwanted_at = Instant::now();
                }
                ch.lingering.insert(n.clone());
            }
        }
    }

    /// These were unsubscribed; a channel wanted again meanwhile is subscribed anew.
    pub(crate) fn unsubscribed(&self, names: &[String]) {
        let mut ch = lock(&self.channels);
        let ch = &mut *ch;
        let mut again = false;
        for n in names {
            ch.lingering.remove(n);
            let Some(e) = ch.all.get_mut(n) else { continue };
            if !e.subscribed {
                continue;
            }
            e.subscribed = false;
            let (kind, needed) = (e.kind, e.needed());
            ch.count(kind, false);
            if needed {
                ch.to_subscribe.insert(n.clone());
                again = true;
            } else {
                ch.all.remove(n);
            }
        }
        if again {
            self.wake.notify_one();
        }
    }

    /// The connection was lost: nothing is subscribed any more. What is needed is
    /// subscribed again on the next connection; what lingered is forgotten.
    pub(crate) fn reset(&self) {
        let mut ch = lock(&self.channels);
        let ch = &mut *ch;
        ch.all.retain(|_, e| {
            e.subscribed = false;
            e.needed()
        });
        ch.to_subscribe = ch.all.keys().cloned().collect();
        ch.lingering.clear();
        ch.subscribed = (0, 0);
    }

    /// Every channel needed now, for the subscription of a new connection.
    pub(crate) fn wanted(&self) -> Vec<String> {
        lock(&self.channels).to_subscribe.iter().cloned().collect()
    }

    /// Whether a local member (or a waiting join) needs `channel` now.
    pub(crate) fn needed(&self, channel: &str) -> bool {
        lock(&self.channels)
            .all
            .get(channel)
            .is_some_and(|e| e.needed())
    }

    /// Channels subscribed now: (rooms, users).
    pub(crate) fn counts(&self) -> (u64, u64) {
        lock(&self.channels).subscribed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_channel_lingers_and_comes_back_without_a_command() {
        let i = Interest::default();
        let linger = Duration::from_secs(2);
        i.want("r:a".into(), Kind::Room);
        let w = i.work(Instant::now(), linger);
        assert_eq!(w.subscribe, vec!["r:a".to_string()]);
        i.subscribed(&w.subscribe);
        assert_eq!(i.counts(), (1, 0));
        assert!(
            i.ready("r:a", Kind::Room).is_none(),
            "subscribed: a join need not wait"
        );

        // Left, then back within the linger: nothing to do.
        i.unwant("r:a");
        let w = i.work(Instant::now(), linger);
        assert!(w.subscribe.is_empty() && w.unsubscribe.is_empty());
        assert!(w.next_due.is_some());
        i.want("r:a".into(), Kind::Room);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(i.work(Instant::now(), linger), Work::default());

        // Left for longer than the linger: unsubscribed once.
        i.unwant("r:a");
        tokio::time::advance(Duration::from_secs(3)).await;
        let w = i.work(Instant::now(), linger);
        assert_eq!(w.unsubscribe, vec!["r:a".to_string()]);
        i.unsubscribed(&w.unsubscribe);
        assert_eq!(i.work(Instant::now(), linger), Work::default());
        assert_eq!(i.counts(), (0, 0));
    }

    #[tokio::test]
    async fn a_waiting_join_goes_on_when_its_channel_is_confirmed() {
        let i = Interest::default();
        i.want("r:b".into(), Kind::Room);
        let rx = i.ready("r:b", Kind::Room).expect("not subscribed yet");
        let w = i.work(Instant::now(), Duration::from_secs(2));
        i.subscribed(&w.subscribe);
        rx.await.expect("confirmed");
        // A lost connection: wanted channels are subscribed again, nothing else.
        i.want("r:c".into(), Kind::Room);
        i.subscribed(&["r:c".to_string()]);
        i.unwant("r:c");
        i.reset();
        assert_eq!(i.wanted(), vec!["r:b".to_string()]);
    }
}
