//! A connection's mailbox: what the node has for it and what it was sent. Its bounded
//! queue of encoded frames, its close request, the rooms it joined with the last offset
//! delivered in each (its floors, [`Joined`]), and, for a WebSocket, an express lane: the
//! fan-out writes a frame straight to the socket when the connection's task waits with
//! nothing queued, instead of queueing it and waking the task. Read by the connection's
//! one task and filled by the hub's fan-out without waiting.

use super::{lock, Joined, Outbound, Payload, Wire};
use crate::metrics::Metrics;
use crate::socket::Sent;
use futures_util::task::AtomicWaker;
use roomcast_protocol::{close, UserId};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// A socket a frame can be written to at once, never waiting: the WebSocket's lane.
pub trait Express: Send + Sync + std::fmt::Debug {
    /// Writes one frame now, all of it, part of it (the rest then waits in the socket for
    /// the next flush) or none of it.
    fn send(&self, payload: &Payload) -> Sent;

    /// Keeps the rest of a frame its session gave up on half written, to go out first.
    fn defer(&self, rest: &[&[u8]]);
}

/// A connection's inbox: its bounded queue of frames, its floors and a close request,
/// behind one small lock and one wake-up, so that an idle connection waits on a single
/// future.
#[derive(Debug)]
pub struct Mailbox {
    inbox: Mutex<Inbox>,
    cap: usize,
    /// The one reader's waker (its session or SSE stream): lighter than a `Notify`, and
    /// the reader's future stays a pointer wide (it is in every idle connection).
    waker: AtomicWaker,
    kick: AtomicU16,
    closed: AtomicBool,
}

#[derive(Debug, Default)]
struct Inbox {
    queue: VecDeque<Outbound>,
    /// The rooms joined and the last offset delivered in each: the one copy, read by the
    /// reader when it takes a frame and by an express write.
    rooms: Joined,
    /// The reader waits with nothing to do: a frame may go out express.
    idle: bool,
    /// An express write went out in part: the reader must flush the socket.
    flush: bool,
    /// Frames were queued without a wake-up ([`Mailbox::push_later`]) and the hub's
    /// linger has not woken the reader since.
    later: bool,
    express: Option<Arc<dyn Express>>,
}

/// What a connection's task takes from its mailbox.
#[derive(Debug)]
pub enum Mail {
    /// A frame to write (already admitted by the floors).
    Frame(Outbound),
    /// An express write left bytes in the socket: flush it.
    Flush,
    /// Close with this code.
    Kick(u16),
}

impl Mailbox {
    /// An empty mailbox holding at most `cap` frames.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Mailbox {
            inbox: Mutex::new(Inbox::default()),
            cap: cap.max(1),
            waker: AtomicWaker::new(),
            kick: AtomicU16::new(0),
            closed: AtomicBool::new(false),
        })
    }

    /// Gives the mailbox a socket for express writes (a WebSocket session, once upgraded).
    pub fn attach(&self, express: Arc<dyn Express>) {
        lock(&self.inbox).express = Some(express);
    }

    /// The reader is about to wait: from now until [`Mailbox::busy`], frames may go out
    /// express, unless something is queued.
    pub fn idle(&self) {
        let mut g = lock(&self.inbox);
        g.idle = g.queue.is_empty() && !g.flush;
    }

    /// The reader has work (and may write to the socket itself): frames are queued.
    pub fn busy(&self) {
        lock(&self.inbox).idle = false;
    }

    /// Hands the rest of a half-written frame to the socket (see [`Express::defer`]); a
    /// connection without an express lane has no such writes.
    pub fn defer(&self, rest: &[&[u8]]) {
        if let Some(x) = &lock(&self.inbox).express {
            x.defer(rest);
        }
    }

    /// Reads or changes the floors (see [`Joined`]).
    pub fn floors<R>(&self, f: impl FnOnce(&mut Joined) -> R) -> R {
        f(&mut lock(&self.inbox).rooms)
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

    /// Delivers a frame without waiting: express when the reader is idle with nothing
    /// queued and the socket takes it, else queued. A full queue drops a volatile frame
    /// and closes the connection (4008) for anything else. Returns whether it was
    /// delivered (a frame the floors refuse counts as delivered: the reader would have
    /// dropped it the same way).
    pub(super) fn push(
        &self,
        item: Outbound,
        volatile: bool,
        express: bool,
        metrics: &Metrics,
    ) -> bool {
        if self.closed.load(Ordering::Relaxed) || self.kick.load(Ordering::Relaxed) != 0 {
            return false;
        }
        {
            let mut g = lock(&self.inbox);
            let inbox = &mut *g;
            let lane = inbox.express.as_ref().filter(|_| express);
            if let (true, true, Some(x)) = (inbox.idle, inbox.queue.is_empty(), lane) {
                let Ok(raise) = inbox.rooms.admission(&item) else {
                    return true;
                };
                let sent = x.send(&item.payload);
                if sent != Sent::Not {
                    if let Some((last, offset)) = raise {
                        *last = offset;
                    }
                    metrics.express_writes.inc();
                }
                match sent {
                    Sent::All => return true,
                    Sent::Part => {
                        inbox.idle = false;
                        inbox.flush = true;
                        drop(g);
                        self.waker.wake();
                        return true;
                    }
                    Sent::Not => {}
                }
            }
            if g.queue.len() >= self.cap {
                drop(g);
                if !volatile {
                    metrics.slow_consumer_closes.inc();
                    self.kick(close::SLOW_CONSUMER);
                }
                return false;
            }
            g.queue.push_back(item);
            g.idle = false;
        }
        self.waker.wake();
        true
    }

    /// Queues a frame without waking the reader (member events: a burst of joins then
    /// leaves in one `writev` per member); the same limits as [`Mailbox::push`]. Returns
    /// whether it was queued and whether the reader now needs a later wake-up
    /// ([`Mailbox::wake_later`]): the first frame queued this way since the last one.
    pub(super) fn push_later(&self, item: Outbound, metrics: &Metrics) -> (bool, bool) {
        if self.closed.load(Ordering::Relaxed) || self.kick.load(Ordering::Relaxed) != 0 {
            return (false, false);
        }
        let mut g = lock(&self.inbox);
        if g.queue.len() >= self.cap {
            drop(g);
            metrics.slow_consumer_closes.inc();
            self.kick(close::SLOW_CONSUMER);
            return (false, false);
        }
        g.queue.push_back(item);
        g.idle = false;
        (true, !std::mem::replace(&mut g.later, true))
    }

    /// Wakes the reader for what [`Mailbox::push_later`] queued.
    pub(super) fn wake_later(&self) {
        lock(&self.inbox).later = false;
        self.waker.wake();
    }

    /// The next frame, flush or close request; waits until there is one. Only one task
    /// reads a mailbox.
    pub fn next(&self) -> impl std::future::Future<Output = Mail> + '_ {
        std::future::poll_fn(move |cx| self.poll_next(cx))
    }

    /// Polls for the next frame, flush or close request, waking the reader when one comes.
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
        let mut g = lock(&self.inbox);
        if std::mem::take(&mut g.flush) {
            return Some(Mail::Flush);
        }
        Self::pop(&mut g).map(Mail::Frame)
    }

    /// The next queued frame the floors admit (raising them), dropping those they refuse:
    /// messages of rooms left since, and repeats of what a recovering join replayed.
    fn pop(g: &mut Inbox) -> Option<Outbound> {
        while let Some(f) = g.queue.pop_front() {
            if g.rooms.admit(&f) {
                return Some(f);
            }
        }
        None
    }

    /// The next frame if one is queued (see [`Mailbox::next`]).
    pub fn try_next(&self) -> Option<Outbound> {
        Self::pop(&mut lock(&self.inbox))
    }

    /// Everything queued, as queued (no floors): for tests of the fan-out.
    #[cfg(test)]
    pub(super) fn queued(&self) -> Vec<Outbound> {
        lock(&self.inbox).queue.drain(..).collect()
    }

    /// Refuses further frames and drops the queued ones and the express lane (the
    /// connection is gone); the floors stay, for the leaves that follow.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let mut g = lock(&self.inbox);
        g.queue.clear();
        g.idle = false;
        g.express = None;
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
    use crate::hub::Frame;
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
        assert!(m.push(frame(), false, true, &metrics));
        assert!(m.push(frame(), false, true, &metrics));
        assert!(
            !m.push(frame(), true, true, &metrics),
            "volatile is dropped when full"
        );
        assert_eq!(m.kick.load(Ordering::Acquire), 0, "and the member stays");
        assert!(!m.push(frame(), false, true, &metrics));
        assert_eq!(m.kick.load(Ordering::Acquire), close::SLOW_CONSUMER);
        assert_eq!(metrics.slow_consumer_closes.get(), 1);
    }

    /// A socket that takes what it is told to and records it.
    #[derive(Debug, Default)]
    struct Fake {
        answer: Mutex<Option<Sent>>,
        got: Mutex<Vec<u64>>,
    }

    impl Express for Fake {
        fn send(&self, payload: &Payload) -> Sent {
            let a = lock(&self.answer).unwrap_or(Sent::All);
            if a != Sent::Not {
                let Payload::Binary(b) = payload else {
                    panic!("binary only")
                };
                lock(&self.got).push(u64::from(b[0]));
            }
            a
        }

        fn defer(&self, _: &[&[u8]]) {}
    }

    fn msg(room: &str, offset: u64) -> Outbound {
        Arc::new(Frame {
            room: Some(Arc::new(
                roomcast_protocol::RoomName::new(room).expect("room"),
            )),
            offset: Some(offset),
            payload: Payload::Binary(Bytes::from(vec![offset as u8])),
        })
    }

    /// A mailbox with a recording socket, joined to room `r` at offset `floor`.
    fn express_mailbox(
        floor: u64,
    ) -> (
        Arc<Mailbox>,
        Arc<Fake>,
        Metrics,
        roomcast_protocol::RoomName,
    ) {
        let fake = Arc::new(Fake::default());
        let m = Mailbox::new(8);
        m.attach(fake.clone());
        let room = roomcast_protocol::RoomName::new("r").expect("room");
        m.floors(|f| f.raise(&Arc::new(room.clone()), floor));
        (m, fake, Metrics::new(), room)
    }

    fn queued_offsets(m: &Mailbox) -> Vec<u64> {
        std::iter::from_fn(|| m.try_next())
            .filter_map(|f| f.offset)
            .collect()
    }

    /// Express writes go out only while the reader is idle with nothing queued, and only
    /// what the floors admit (raising them); everything else is queued as before, and a
    /// partial write asks the reader to flush.
    #[test]
    fn express_writes_follow_the_floors_and_the_reader() {
        let (m, fake, metrics, room) = express_mailbox(5);

        // Busy (the default): queued, and the reader's floors drop the repeat.
        assert!(m.push(msg("r", 5), false, true, &metrics));
        assert!(m.push(msg("r", 6), false, true, &metrics));
        assert_eq!(queued_offsets(&m), vec![6]);
        assert!(lock(&fake.got).is_empty());

        // Idle: express, past the floor only; a room not joined is dropped.
        m.idle();
        assert!(
            m.push(msg("r", 6), false, true, &metrics),
            "a repeat is dropped quietly"
        );
        assert!(m.push(msg("r", 7), false, true, &metrics));
        assert!(m.push(msg("other", 1), false, true, &metrics));
        assert_eq!(*lock(&fake.got), vec![7]);
        assert_eq!(m.floors(|f| f.get(&room)), Some(7));
        assert_eq!(metrics.express_writes.get(), 1);
        assert!(m.try_next().is_none());

        // The socket refuses: queued, and the floor is not raised by the refusal.
        *lock(&fake.answer) = Some(Sent::Not);
        assert!(m.push(msg("r", 8), false, true, &metrics));
        // Something queued: nothing goes express until the reader has taken it.
        *lock(&fake.answer) = None;
        assert!(m.push(msg("r", 9), false, true, &metrics));
        assert_eq!(queued_offsets(&m), vec![8, 9]);
        assert_eq!(*lock(&fake.got), vec![7]);

        // A partial write: the reader is told to flush, and is no longer idle.
        m.idle();
        *lock(&fake.answer) = Some(Sent::Part);
        assert!(m.push(msg("r", 10), false, true, &metrics));
        assert!(matches!(m.ready(), Some(Mail::Flush)));
        *lock(&fake.answer) = None;
        assert!(m.push(msg("r", 11), false, true, &metrics));
        assert_eq!(queued_offsets(&m), vec![11]);

        // A closed mailbox writes nothing.
        m.idle();
        m.close();
        assert!(!m.push(msg("r", 12), false, true, &metrics));
        assert_eq!(*lock(&fake.got), vec![7, 10]);
    }

    /// Frames queued for later ask for one wake-up per burst, and hold express writes
    /// back until the reader has taken them (they are older).
    #[test]
    fn frames_queued_for_later_ask_one_wake_up_and_keep_their_place() {
        let (m, fake, metrics, _) = express_mailbox(0);
        m.idle();
        let event = || {
            Arc::new(Frame {
                room: None,
                offset: None,
                payload: Payload::Binary(Bytes::from_static(b"e")),
            })
        };
        assert_eq!(m.push_later(event(), &metrics), (true, true));
        assert_eq!(m.push_later(event(), &metrics), (true, false));
        assert!(m.push(msg("r", 1), false, true, &metrics));
        assert!(
            lock(&fake.got).is_empty(),
            "nothing overtakes the queued events"
        );
        m.wake_later();
        assert_eq!(m.push_later(event(), &metrics), (true, true));
        let offsets: Vec<Option<u64>> = std::iter::from_fn(|| m.try_next())
            .map(|f| f.offset)
            .collect();
        assert_eq!(offsets, vec![None, None, Some(1), None]);
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
                true,
                &mt,
            )
        });
        match m.next().await {
            Mail::Frame(f) => assert_eq!(f.offset, Some(7)),
            other => panic!("unexpected {other:?}"),
        }
        assert!(pusher.await.expect("pusher"));
        m.kick(close::GOING_AWAY);
        assert!(matches!(m.next().await, Mail::Kick(close::GOING_AWAY)));
    }
}
