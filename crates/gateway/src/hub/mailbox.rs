//! A connection's mailbox: its bounded queue of encoded frames and its close request,
//! read by the connection's one task and filled by the hub's fan-out without waiting.

use super::{lock, Outbound, Wire};
use crate::metrics::Metrics;
use futures_util::task::AtomicWaker;
use roomcast_protocol::{close, UserId};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// A connection's inbox: its bounded queue of frames and a close request, behind one
/// small lock and one wake-up, so that an idle connection waits on a single future.
#[derive(Debug)]
pub struct Mailbox {
    queue: Mutex<VecDeque<Outbound>>,
    cap: usize,
    /// The one reader's waker (its session or SSE stream): lighter than a `Notify`, and
    /// the reader's future stays a pointer wide (it is in every idle connection).
    waker: AtomicWaker,
    kick: AtomicU16,
    closed: AtomicBool,
}

/// What a connection's task takes from its mailbox.
#[derive(Debug)]
pub enum Mail {
    /// A frame to write.
    Frame(Outbound),
    /// Close with this code.
    Kick(u16),
}

impl Mailbox {
    /// An empty mailbox holding at most `cap` frames.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Mailbox {
            queue: Mutex::new(VecDeque::new()),
            cap: cap.max(1),
            waker: AtomicWaker::new(),
            kick: AtomicU16::new(0),
            closed: AtomicBool::new(false),
        })
    }

    /// Asks the connection to close with `code` (the first code asked wins).
    pub fn kick(&self, code: u16) {
        if self
            .kick
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.waker.wake();
        }
    }

    /// Queues a frame without waiting. A full queue drops a volatile frame and closes the
    /// connection (4008) for anything else. Returns whether it was queued.
    pub(super) fn push(&self, item: Outbound, volatile: bool, metrics: &Metrics) -> bool {
        if self.closed.load(Ordering::Relaxed) || self.kick.load(Ordering::Relaxed) != 0 {
            return false;
        }
        {
            let mut q = lock(&self.queue);
            if q.len() >= self.cap {
                drop(q);
                if !volatile {
                    metrics.slow_consumer_closes.inc();
                    self.kick(close::SLOW_CONSUMER);
                }
                return false;
            }
            q.push_back(item);
        }
        self.waker.wake();
        true
    }

    /// The next frame, or the close request; waits until there is one. Only one task
    /// reads a mailbox.
    pub fn next(&self) -> impl std::future::Future<Output = Mail> + '_ {
        std::future::poll_fn(move |cx| self.poll_next(cx))
    }

    /// Polls for the next frame or close request, waking the reader when one comes.
    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Mail> {
        if let Some(m) = self.ready() {
            return Poll::Ready(m);
        }
        self.waker.register(cx.waker());
        // A push or kick between the check above and the registration has woken no one:
        // look again now that the waker is in place.
        match self.ready() {
            Some(m) => Poll::Ready(m),
            None => Poll::Pending,
        }
    }

    /// Waits for a close request only, leaving queued frames where they are: a session
    /// blocked in a write to a full socket awaits this beside the write, so that a kick
    /// ends it whatever it is waiting for. Only the mailbox's one reader calls it, and
    /// not while it also waits in [`Mailbox::next`] (they share one waker).
    pub fn kicked(&self) -> impl std::future::Future<Output = u16> + '_ {
        std::future::poll_fn(move |cx| {
            let code = self.kick.load(Ordering::Acquire);
            if code != 0 {
                return Poll::Ready(code);
            }
            self.waker.register(cx.waker());
            match self.kick.load(Ordering::Acquire) {
                0 => Poll::Pending,
                code => Poll::Ready(code),
            }
        })
    }

    fn ready(&self) -> Option<Mail> {
        let code = self.kick.load(Ordering::Acquire);
        if code != 0 {
            return Some(Mail::Kick(code));
        }
        self.try_next().map(Mail::Frame)
    }

    /// The next frame if one is queued.
    pub fn try_next(&self) -> Option<Outbound> {
        lock(&self.queue).pop_front()
    }

    /// Refuses further frames and drops the queued ones (the connection is gone).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        lock(&self.queue).clear();
    }
}

/// The hub's handle on one local connection.
#[derive(Debug, Clone)]
pub struct Member {
    /// Connection id (cluster-unique).
    pub id: Arc<str>,
    /// The user.
    pub user: UserId,
    /// Its wire format.
    pub wire: Wire,
    /// Its inbox.
    pub mailbox: Arc<Mailbox>,
}

impl Member {
    /// Queues a frame; see [`Mailbox::push`].
    pub(super) fn push(&self, item: Outbound, volatile: bool, metrics: &Metrics) -> bool {
        self.mailbox.push(item, volatile, metrics)
    }

    /// Asks this connection to close with `code`.
    pub fn kick(&self, code: u16) {
        self.mailbox.kick(code);
    }
}

/// Kicks every mailbox with `code`, evenly over `spread`.
pub(super) async fn kick_spread(all: &[Arc<Mailbox>], code: u16, spread: std::time::Duration) {
    let n = all.len().max(1) as u32;
    let start = tokio::time::Instant::now();
    for (i, m) in all.iter().enumerate() {
        tokio::time::sleep_until(start + spread * i as u32 / n).await;
        m.kick(code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Frame, Payload};
    use bytes::Bytes;

    #[test]
    fn a_full_queue_drops_volatile_and_kicks_for_the_rest() {
        let metrics = Metrics::new();
        let m = Mailbox::new(2);
        let frame = || {
            Arc::new(Frame {
                room: None,
                offset: None,
                payload: Payload::Binary(Bytes::from_static(b"x")),
            })
        };
        assert!(m.push(frame(), false, &metrics));
        assert!(m.push(frame(), false, &metrics));
        assert!(
            !m.push(frame(), true, &metrics),
            "volatile is dropped when full"
        );
        assert_eq!(m.kick.load(Ordering::Acquire), 0, "and the member stays");
        assert!(!m.push(frame(), false, &metrics));
        assert_eq!(m.kick.load(Ordering::Acquire), close::SLOW_CONSUMER);
        assert_eq!(metrics.slow_consumer_closes.get(), 1);
    }

    #[tokio::test]
    async fn mailbox_wakes_on_push_and_on_kick() {
        let metrics = Arc::new(Metrics::new());
        let m = Mailbox::new(4);
        let (m2, mt) = (m.clone(), metrics.clone());
        let pusher = tokio::spawn(async move {
            m2.push(
                Arc::new(Frame {
                    room: None,
                    offset: Some(7),
                    payload: Payload::Binary(Bytes::new()),
                }),
                false,
                &mt,
            )
        });
        match m.next().await {
            Mail::Frame(f) => assert_eq!(f.offset, Some(7)),
            Mail::Kick(c) => panic!("unexpected kick {c}"),
        }
        assert!(pusher.await.expect("pusher"));
        m.kick(close::GOING_AWAY);
        assert!(matches!(m.next().await, Mail::Kick(close::GOING_AWAY)));
    }
}
