//! A WebSocket session: one task per connection, with explicit state (awaiting auth,
//! authenticated, draining), selecting over the socket, its bounded outbound queue, its
//! deadlines (heartbeat, auth timeout, token expiry) and the node's drain signal.

use crate::auth::{AuthError, Identity};
use crate::commands;
use crate::hub::{Frame, Mail, Mailbox, Member, Outbound, Payload, Wire};
use crate::limits::{IpGuard, TokenBucket};
use crate::node::{ConnSlot, Node};
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use roomcast_protocol::{
    close, ClientMessage, Encoding, ErrorCode, ReqId, RoomName, ServerMessage,
};
use roomcast_redis_bridge::HistoryQuery;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// What the upgrade handed to the session.
pub struct Setup {
    /// Connection id.
    pub conn_id: Arc<str>,
    /// Negotiated encoding.
    pub encoding: Encoding,
    /// A token from the query or the Authorization header.
    pub token: Option<String>,
    /// The connection's slot in the node count.
    pub slot: ConnSlot,
    /// The connection's slot in its IP's count.
    pub ip_guard: Option<IpGuard>,
}

/// Where a session is in its life.
enum State {
    /// Waiting for an `auth` message until the deadline.
    AwaitingAuth { deadline: Instant },
    /// Authenticated.
    Active(Active),
}

struct Active {
    /// Shared with the requests in flight.
    who: Arc<Identity>,
    /// Joined rooms and the last offset delivered in each (drops replays and repeats).
    rooms: Joined,
    /// When the token stops being valid (exp plus leeway).
    expires: Option<Instant>,
}

/// A connection-free request (publish, send, presence, ping) on its way: its reply.
type Pending = Pin<Box<dyn Future<Output = Option<ServerMessage>> + Send>>;

/// The rooms a connection joined, each with the last offset delivered there: a sorted
/// vector rather than a map, as most connections join a few rooms (a map's smallest table
/// is four entries and a control block, in every connection).
#[derive(Default)]
struct Joined(Vec<(RoomName, u64)>);

impl Joined {
    fn find(&self, room: &RoomName) -> Result<usize, usize> {
        self.0
            .binary_search_by(|(r, _)| r.as_str().cmp(room.as_str()))
    }

    fn get(&self, room: &RoomName) -> Option<u64> {
        self.find(room).ok().map(|i| self.0[i].1)
    }

    fn get_mut(&mut self, room: &RoomName) -> Option<&mut u64> {
        let i = self.find(room).ok()?;
        Some(&mut self.0[i].1)
    }

    /// Joins `room` if needed and raises its last offset to at least `offset`.
    fn raise(&mut self, room: &RoomName, offset: u64) {
        match self.find(room) {
            Ok(i) => self.0[i].1 = self.0[i].1.max(offset),
            Err(i) => {
                if self.0.capacity() == 0 {
                    self.0.reserve_exact(1);
                }
                self.0.insert(i, (room.clone(), offset));
            }
        }
    }

    /// Leaves `room`; whether it was joined.
    fn remove(&mut self, room: &RoomName) -> bool {
        match self.find(room) {
            Ok(i) => {
                self.0.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn names(&self) -> impl Iterator<Item = &RoomName> {
        self.0.iter().map(|(r, _)| r)
    }
}

/// What woke a session and needs work (and maybe the socket).
enum Event {
    /// The heartbeat is due.
    Ping,
    /// A pipelined request's reply, in request order.
    Reply(ServerMessage),
    /// The first of the queued frames.
    Mail(Outbound),
    /// A frame from the client.
    Frame(Message),
}

/// Why the loop ended.
enum End {
    Close(u16, &'static str),
    Drop,
}

struct Session<S> {
    node: Arc<Node>,
    ws: WebSocketStream<S>,
    conn_id: Arc<str>,
    encoding: Encoding,
    bucket: TokenBucket,
    strikes: u32,
    last_seen: Instant,
    /// The connection's inbox: frames once authenticated, and close requests (drain,
    /// slow consumer, disconnect) at any time.
    mailbox: Arc<Mailbox>,
    /// Requests in flight, answered in the order they came (at most
    /// `--max-pending-requests`; the socket is not read while that many wait). Created
    /// at the first one, so that a connection that never publishes does not pay for it.
    pending: Option<Box<FuturesOrdered<Pending>>>,
}

/// The next reply of the requests in flight; never ready when there are none.
async fn next_reply(pending: &mut Option<Box<FuturesOrdered<Pending>>>) -> Option<ServerMessage> {
    match pending {
        Some(p) if !p.is_empty() => p.next().await.flatten(),
        _ => std::future::pending().await,
    }
}

/// Builds the session of an upgraded connection; the future it returns runs the session
/// to its end. Everything is built here, outside the future, so that the future (the
/// memory every connection holds while it lives) keeps one copy of it.
pub fn start<S>(
    node: Arc<Node>,
    ws: WebSocketStream<S>,
    setup: Setup,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Setup {
        conn_id,
        encoding,
        token,
        slot,
        ip_guard,
    } = setup;
    let now = Instant::now();
    let node_queue = node.cfg.outbound_queue;
    let mut s = Session {
        bucket: TokenBucket::new(node.cfg.rate_limit, node.cfg.rate_burst, now.into_std()),
        node,
        ws,
        conn_id,
        encoding,
        strikes: 0,
        last_seen: now,
        mailbox: Mailbox::new(node_queue),
        pending: None,
    };
    s.node.hub.register(&s.conn_id, &s.mailbox);
    let mut state = State::AwaitingAuth {
        deadline: now + Duration::from_secs(s.node.cfg.auth_timeout),
    };
    let guards = (slot, ip_guard);
    // An async block rather than an async fn taking these as arguments: an async fn
    // keeps its arguments and their moved-in copies in separate slots of the future,
    // which doubled the memory an idle connection holds (measured: 2,432 -> 1,8xx bytes).
    async move {
        let end = match Box::pin(s.begin(&mut state, token)).await {
            Some(end) => end,
            None => s.run_loop(&mut state).await,
        };
        let (hub, id) = (s.node.hub.clone(), s.conn_id.clone());
        Box::pin(s.finish(state, end)).await;
        hub.unregister(&id);
        drop(guards);
    }
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Authenticates at once from the token of the upgrade request, or with `--auth
    /// none`; `Some` when the connection must end instead.
    async fn begin(&mut self, state: &mut State, token: Option<String>) -> Option<End> {
        let initial = match token {
            Some(t) => Some(self.node.auth.verify(&t)),
            None => self.node.auth.anonymous(&self.conn_id).map(Ok),
        };
        match initial {
            Some(Ok(who)) => match self.authenticate(who, None).await {
                Ok(active) => {
                    *state = State::Active(active);
                    None
                }
                Err(end) => Some(end),
            },
            Some(Err(e)) => Some(self.auth_failed(&e)),
            None => None,
        }
    }

    /// The id of a request this session refuses before handling it, for the error reply.
    /// The frame is bounded by the hard frame cap, so decoding it for this is cheap enough.
    fn request_id(&self, bytes: &[u8]) -> Option<ReqId> {
        self.encoding
            .decode_client(bytes)
            .ok()
            .and_then(|m| m.id().cloned())
    }

    fn auth_failed(&self, e: &AuthError) -> End {
        self.node
            .metrics
            .auth_failures
            .with_label_values(&[e.reason()])
            .inc();
        tracing::debug!(conn = %self.conn_id, error = %e, "authentication failed");
        End::Close(close::INVALID_TOKEN, "invalid or expired token")
    }

    fn expiry_deadline(&self, who: &Identity) -> Option<Instant> {
        let exp = who.exp?;
        let now_s = crate::hub::now_ms() / 1000;
        let left = (exp + self.node.auth.leeway()).saturating_sub(now_s);
        Some(Instant::now() + Duration::from_secs(left))
    }

    async fn authenticate(&mut self, who: Identity, id: Option<ReqId>) -> Result<Active, End> {
        let member = self.member(&who);
        self.node.hub.add_user(&member);
        let welcome = ServerMessage::Welcome {
            session: self.conn_id.to_string(),
            node: self.node.node_id.clone(),
            user: who.user.clone(),
            heartbeat: self.node.cfg.heartbeat,
            auth: self.node.auth.mode_name().to_string(),
            id,
        };
        let expires = self.expiry_deadline(&who);
        let active = Active {
            who: Arc::new(who),
            rooms: Joined::default(),
            expires,
        };
        if self.reply(&welcome).await.is_err() {
            // Undo what authentication registered; `finish` sees an Active state only
            // when this returns Ok.
            self.node.hub.remove_user(&member);
            return Err(End::Drop);
        }
        Ok(active)
    }

    /// The hub's handle on this connection (built when needed rather than kept: it would
    /// sit in every idle connection's task).
    fn member(&self, who: &Identity) -> Member {
        Member {
            id: self.conn_id.clone(),
            user: who.user.clone(),
            wire: Wire::from(self.encoding),
            mailbox: self.mailbox.clone(),
        }
    }

    /// The next deadline of the connection and what it is for: one timer per
    /// connection, re-armed only when the deadline changes.
    fn next_deadline(&self, state: &State, next_ping: Instant) -> (Instant, Due) {
        let mut due = (next_ping, Due::Heartbeat);
        let mut consider = |at: Option<Instant>, what: Due| {
            if let Some(at) = at {
                if at < due.0 {
                    due = (at, what);
                }
            }
        };
        match state {
            State::AwaitingAuth { deadline } => consider(Some(*deadline), Due::AuthTimeout),
            State::Active(a) => consider(a.expires, Due::Expired),
        }
        due
    }

    async fn run_loop(&mut self, state: &mut State) -> End {
        let node = self.node.clone();
        let hb = node.cfg.heartbeat_interval();
        let max_pending = node.cfg.max_pending_requests.max(1);
        let mut next_ping = Instant::now() + hb;
        let (first, _) = self.next_deadline(state, next_ping);
        let timer = tokio::time::sleep_until(first);
        tokio::pin!(timer);
        loop {
            let (at, due) = self.next_deadline(state, next_ping);
            if timer.deadline() != at {
                timer.as_mut().reset(at);
            }
            // Each branch either ends the session or names the work to do; the work runs
            // in one boxed future, so that its state (an encoder, a reply, a write in
            // progress) is not part of every idle connection's task.
            let event = tokio::select! {
                biased;
                _ = &mut timer => match due {
                    Due::AuthTimeout => return End::Close(close::AUTH_TIMEOUT, "authentication timeout"),
                    Due::Expired => {
                        node.metrics.auth_failures.with_label_values(&["expired"]).inc();
                        return End::Close(close::INVALID_TOKEN, "token expired");
                    }
                    Due::Heartbeat => {
                        if self.last_seen.elapsed() >= hb * 2 {
                            tracing::debug!(conn = %self.conn_id, "heartbeat missed; closing");
                            return End::Drop;
                        }
                        next_ping = Instant::now() + hb;
                        Event::Ping
                    }
                },
                reply = next_reply(&mut self.pending) => match reply {
                    Some(r) => Event::Reply(r),
                    None => continue,
                },
                mail = self.mailbox.next() => match mail {
                    Mail::Kick(code) => return End::Close(code, kick_reason(code)),
                    Mail::Frame(item) => Event::Mail(item),
                },
                frame = self.ws.next(), if self.pending_len() < max_pending => {
                    self.last_seen = Instant::now();
                    match frame {
                        None => return End::Drop,
                        Some(Err(WsError::Capacity(_))) => return End::Close(close::TOO_BIG, "message too big"),
                        Some(Err(e)) => {
                            tracing::debug!(conn = %self.conn_id, error = %e, "socket error");
                            return End::Drop;
                        }
                        Some(Ok(msg)) => Event::Frame(msg),
                    }
                }
            };
            if let Err(end) = self.work(state, event).await {
                return end;
            }
        }
    }

    /// The work an event asks for, boxed one kind at a time: the delivery path (`Mail`)
    /// allocates only what a write needs, and the event is moved into its box rather than
    /// kept in the session's task.
    fn work<'a>(
        &'a mut self,
        state: &'a mut State,
        event: Event,
    ) -> Pin<Box<dyn Future<Output = Result<(), End>> + Send + 'a>> {
        match event {
            Event::Ping => Box::pin(self.ping()),
            Event::Reply(r) => Box::pin(self.reply_owned(r)),
            Event::Mail(item) => Box::pin(self.write_batch(state, item)),
            Event::Frame(msg) => Box::pin(self.on_frame(state, msg)),
        }
    }

    async fn ping(&mut self) -> Result<(), End> {
        if self
            .ws
            .feed(Message::Ping(bytes::Bytes::new()))
            .await
            .is_err()
        {
            return Err(End::Drop);
        }
        self.flush().await
    }

    async fn reply_owned(&mut self, msg: ServerMessage) -> Result<(), End> {
        self.reply(&msg).await
    }

    fn pending_len(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.len())
    }

    /// Writes one queued item and whatever else is queued (up to a batch), then flushes once.
    async fn write_batch(&mut self, state: &mut State, first: Outbound) -> Result<(), End> {
        let State::Active(active) = state else {
            return Ok(());
        };
        let mut item = Some(first);
        let mut n = 0;
        while let Some(it) = item.take() {
            if admit(active, &it) {
                let msg = match &it.payload {
                    Payload::Text(t) => Message::Text(t.clone()),
                    Payload::Binary(b) => Message::Binary(b.clone()),
                };
                if self.ws.feed(msg).await.is_err() {
                    return Err(End::Drop);
                }
                n += 1;
            }
            if n < 64 {
                item = self.mailbox.try_next();
            }
        }
        self.flush().await
    }

    /// Flushes, giving up on a socket that accepts nothing for two heartbeats.
    async fn flush(&mut self) -> Result<(), End> {
        let limit = self.node.cfg.heartbeat_interval() * 2;
        match tokio::time::timeout(limit, self.ws.flush()).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Drop),
        }
    }

    async fn reply(&mut self, msg: &ServerMessage) -> Result<(), End> {
        let Some(payload) = crate::hub::encode_for(Wire::from(self.encoding), msg, None) else {
            return Err(End::Close(close::INTERNAL, "encoding failed"));
        };
        let m = &self.node.metrics;
        m.messages_out.with_label_values(&[msg.kind()]).inc();
        m.bytes_out.inc_by(payload.len() as u64);
        if let ServerMessage::Error { code, .. } = msg {
            m.errors.with_label_values(&[code.as_str()]).inc();
        }
        let frame = match payload {
            Payload::Text(t) => Message::Text(t),
            Payload::Binary(b) => Message::Binary(b),
        };
        if self.ws.feed(frame).await.is_err() {
            return Err(End::Drop);
        }
        self.flush().await
    }

    async fn on_frame(&mut self, state: &mut State, msg: Message) -> Result<(), End> {
        let (bytes, binary): (&[u8], bool) = match &msg {
            Message::Text(t) => (t.as_bytes(), false),
            Message::Binary(b) => (b.as_ref(), true),
            Message::Close(_) => return Err(End::Drop),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(()),
        };
        self.node.metrics.bytes_in.inc_by(bytes.len() as u64);
        if !self.bucket.try_take(Instant::now().into_std()) {
            self.node.metrics.rate_limited.inc();
            self.strikes += 1;
            if self.strikes >= self.node.cfg.rate_limit_strikes {
                return Err(End::Close(close::RATE_LIMIT_ABUSE, "rate limit abused"));
            }
            let id = self.request_id(bytes);
            return self
                .reply(&ServerMessage::error(
                    ErrorCode::RateLimited,
                    "too many requests; slow down",
                    id,
                ))
                .await;
        }
        self.strikes = 0;
        if bytes.len() > self.node.cfg.max_message_size {
            let id = self.request_id(bytes);
            return self
                .reply(&ServerMessage::error(
                    ErrorCode::TooLarge,
                    format!(
                        "message larger than {} bytes",
                        self.node.cfg.max_message_size
                    ),
                    id,
                ))
                .await;
        }
        if binary != self.encoding.is_binary() {
            let what = if binary {
                "binary frame on the JSON subprotocol"
            } else {
                "text frame on the MessagePack subprotocol"
            };
            return self
                .reply(&ServerMessage::error(ErrorCode::InvalidMessage, what, None))
                .await;
        }
        let cmd = match self.encoding.decode_client(bytes) {
            Ok(c) => c,
            Err(e) => {
                if matches!(state, State::AwaitingAuth { .. }) {
                    return Err(End::Close(close::NOT_AUTHENTICATED, "authenticate first"));
                }
                return self
                    .reply(&ServerMessage::error(e.code, e.message, e.id))
                    .await;
            }
        };
        self.node
            .metrics
            .messages_in
            .with_label_values(&[cmd.kind()])
            .inc();
        match state {
            State::AwaitingAuth { .. } => match cmd {
                ClientMessage::Auth { token, id } => match self.node.auth.verify(&token) {
                    Ok(who) => {
                        *state = State::Active(self.authenticate(who, id).await?);
                        Ok(())
                    }
                    Err(e) => Err(self.auth_failed(&e)),
                },
                _ => Err(End::Close(close::NOT_AUTHENTICATED, "authenticate first")),
            },
            State::Active(active) => self.on_command(active, cmd).await,
        }
    }

    async fn on_command(&mut self, active: &mut Active, cmd: ClientMessage) -> Result<(), End> {
        let node = self.node.clone();
        let reply = match cmd {
            ClientMessage::Auth { token, id } => {
                if !node.auth.enabled() {
                    Some(ServerMessage::AuthOk { exp: 0, id })
                } else {
                    match node.auth.verify(&token) {
                        Ok(who) if who.user != active.who.user => {
                            return Err(self.auth_failed(&AuthError::OtherUser))
                        }
                        Ok(who) => {
                            active.expires = self.expiry_deadline(&who);
                            let exp = who.exp.unwrap_or(0);
                            active.who = Arc::new(who);
                            Some(ServerMessage::AuthOk { exp, id })
                        }
                        Err(e) => return Err(self.auth_failed(&e)),
                    }
                }
            }
            ClientMessage::Join {
                room,
                history,
                since,
                id,
            } => Some(self.join(active, room, history, since, id).await),
            ClientMessage::Leave { room, id } => {
                if !active.rooms.remove(&room) {
                    Some(ServerMessage::error(
                        ErrorCode::NotJoined,
                        format!("not in room {room}"),
                        id,
                    ))
                } else {
                    node.hub.leave(&room, &self.conn_id);
                    if let Err(e) = node
                        .bus
                        .presence_leave(&room, &active.who.user, &self.conn_id)
                        .await
                    {
                        tracing::warn!(%room, error = %e, "presence leave failed; the entry will expire");
                    }
                    Some(ServerMessage::Left { room, id })
                }
            }
            other => {
                // Publishes and the like need nothing of the session but who it is: they
                // run while the socket is read on, so that a client may pipeline them.
                // The bus takes publishes in the order their futures first run, which is
                // the order they came in.
                let (who, conn) = (active.who.clone(), self.conn_id.clone());
                let request: Pending = Box::pin(async move {
                    match commands::run(&node, &who, Some(&conn), other).await {
                        Ok(reply) => reply,
                        // Every other type is handled above.
                        Err(other) => Some(ServerMessage::error(
                            ErrorCode::Internal,
                            format!("{} is not handled here", other.kind()),
                            other.id().cloned(),
                        )),
                    }
                });
                self.pending
                    .get_or_insert_with(Default::default)
                    .push_back(request);
                return Ok(());
            }
        };
        match reply {
            Some(r) => self.reply(&r).await,
            None => Ok(()),
        }
    }

    async fn join(
        &mut self,
        active: &mut Active,
        room: RoomName,
        history: Option<u32>,
        since: Option<roomcast_protocol::StreamPosition>,
        id: Option<ReqId>,
    ) -> ServerMessage {
        let node = self.node.clone();
        if !active.who.may_access(&room, node.auth.default_policy) {
            return ServerMessage::error(
                ErrorCode::Forbidden,
                format!("not allowed in room {room}"),
                id,
            );
        }
        let rejoin = active.rooms.get(&room).is_some();
        if !rejoin && active.rooms.len() >= node.cfg.max_rooms {
            return ServerMessage::error(
                ErrorCode::RoomLimit,
                format!("at most {} rooms per connection", node.cfg.max_rooms),
                id,
            );
        }
        let limit = (history.unwrap_or(0) as usize).min(node.cfg.max_recover);
        if !rejoin {
            // Live delivery starts first (into the queue, which this task does not read
            // until the join is answered); history is read after; what both hold is
            // dropped by offset when the queue is read (DESIGN-NOTES §2).
            node.hub.join(&room, &self.member(&active.who));
            if let Err(e) = node
                .bus
                .presence_join(&room, &active.who.user, &self.conn_id)
                .await
            {
                node.hub.leave(&room, &self.conn_id);
                return commands::bus_error(&e, id);
            }
        }
        match node.bus.history(&room, HistoryQuery { since, limit }).await {
            Ok(h) => {
                active.rooms.raise(&room, h.offset);
                ServerMessage::Joined {
                    room,
                    offset: h.offset,
                    epoch: h.epoch,
                    recovered: h.recovered,
                    messages: h.messages,
                    id,
                }
            }
            Err(e) => {
                if !rejoin {
                    node.hub.leave(&room, &self.conn_id);
                    let _ = node
                        .bus
                        .presence_leave(&room, &active.who.user, &self.conn_id)
                        .await;
                }
                commands::bus_error(&e, id)
            }
        }
    }

    async fn finish(mut self, state: State, end: End) {
        if let End::Close(code, reason) = end {
            self.node
                .metrics
                .closes
                .with_label_values(&[&code.to_string()])
                .inc();
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(Some(frame))).await;
        }
        if let State::Active(active) = state {
            let node = &self.node;
            node.hub.remove_user(&self.member(&active.who));
            for room in active.rooms.names() {
                node.hub.leave(room, &self.conn_id);
            }
            let leaves = active.rooms.names().map(|room| {
                node.bus
                    .presence_leave(room, &active.who.user, &self.conn_id)
            });
            for r in futures_util::future::join_all(leaves).await {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "presence leave failed at close; the entry will expire");
                }
            }
        }
    }
}

/// Decides whether a queued item goes out: room messages only for joined rooms and
/// only past the last offset delivered there.
fn admit(active: &mut Active, frame: &Frame) -> bool {
    let Some(room) = &frame.room else { return true };
    let Some(last) = active.rooms.get_mut(room) else {
        return false;
    };
    if let Some(o) = frame.offset {
        if o <= *last {
            return false;
        }
        *last = o;
    }
    true
}

/// What the session's one timer is waiting for.
#[derive(Debug, Clone, Copy)]
enum Due {
    Heartbeat,
    AuthTimeout,
    Expired,
}

fn kick_reason(code: u16) -> &'static str {
    match code {
        close::SLOW_CONSUMER => "slow consumer: outbound queue overflowed",
        close::INVALID_TOKEN => "disconnected by the server",
        close::OVERLOADED => "messages were lost; reconnect and re-join",
        close::GOING_AWAY => "node is draining; reconnect",
        _ => "closed by the server",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(s: &str) -> RoomName {
        RoomName::try_from(s.to_string()).expect("valid room name")
    }

    #[test]
    fn joined_rooms_keep_the_highest_offset_and_find_every_room() {
        let mut j = Joined::default();
        let names: Vec<String> = (0..50).rev().map(|i| format!("r{i:02}")).collect();
        for (i, n) in names.iter().enumerate() {
            j.raise(&room(n), i as u64);
        }
        assert_eq!(j.len(), 50);
        j.raise(&room("r10"), 3);
        assert_eq!(
            j.get(&room("r10")),
            Some(39),
            "a lower offset does not lower it"
        );
        j.raise(&room("r10"), 100);
        assert_eq!(j.get(&room("r10")), Some(100));
        for n in &names {
            assert!(j.get(&room(n)).is_some(), "{n} is found");
        }
        assert!(j.remove(&room("r10")));
        assert!(!j.remove(&room("r10")));
        assert_eq!(j.get(&room("r10")), None);
        assert_eq!(j.get_mut(&room("zz")), None);
        let listed: Vec<&str> = j.names().map(|r| r.as_str()).collect();
        let mut sorted = listed.clone();
        sorted.sort_unstable();
        assert_eq!(listed, sorted);
        assert_eq!(listed.len(), 49);
    }
}
