//! A WebSocket session: one task per connection, with explicit state (awaiting auth,
//! authenticated), selecting over the socket, its bounded outbound queue (where drain and
//! disconnect requests arrive too) and its deadlines (heartbeat, auth timeout, token
//! expiry). It ends with the closing handshake of RFC 6455 section 7: it answers a
//! client's Close, and after a Close of its own it reads on until the client's answer.

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
    /// The connect hook's request and the `since` positions, when there are any (boxed:
    /// most connections have neither, and the session's future keeps this slot).
    pub at_connect: Option<Box<AtConnect>>,
}

/// What a connection brings for its start beyond a token.
#[derive(Default)]
pub struct AtConnect {
    /// What the connect hook is asked, when it decides this connection
    /// ([`Node::connect_request`]).
    pub hook: Option<crate::hooks::ConnectRequest>,
    /// Positions (`?since=room:offset:epoch,...`) from which the rooms joined at connect
    /// recover.
    pub since: Vec<(RoomName, roomcast_protocol::StreamPosition)>,
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
    /// The node closes: send this Close frame, then read until the client answers.
    Close(u16, &'static str),
    /// The client sent a Close frame: send the answer tungstenite queued, then go.
    Answer,
    /// The connection is gone (or unusable): just let go of it.
    Drop,
}

/// How long a closing connection is read after the node's Close frame, waiting for the
/// client's (docs/protocol.md section 4.3): so that neither the Close frame nor the frames
/// before it are lost to a TCP reset while the client is still sending.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// `rate_limited` answers count together toward 4029 while each comes within this many
/// seconds of the previous one; admitted frames between them do not reset the count.
const STRIKE_WINDOW_S: u32 = 10;

struct Session<S> {
    node: Arc<Node>,
    ws: WebSocketStream<S>,
    conn_id: Arc<str>,
    encoding: Encoding,
    bucket: TokenBucket,
    /// `rate_limited` answers so far, and when the last one was (seconds, wall clock).
    strikes: u32,
    strike_at: u32,
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
        at_connect,
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
        strike_at: 0,
        last_seen: now,
        mailbox: Mailbox::new(node_queue),
        pending: None,
    };
    s.node.hub.register(&s.conn_id, &s.mailbox);
    let mut state = State::AwaitingAuth {
        deadline: now + s.node.cfg.auth_timeout,
    };
    let guards = (slot, ip_guard);
    // An async block rather than an async fn taking these as arguments: an async fn
    // keeps its arguments and their moved-in copies in separate slots of the future,
    // which doubled the memory an idle connection holds (measured: 2,432 -> 1,8xx bytes).
    async move {
        let end = match Box::pin(s.begin(&mut state, token, at_connect)).await {
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
    async fn begin(
        &mut self,
        state: &mut State,
        token: Option<String>,
        at_connect: Option<Box<AtConnect>>,
    ) -> Option<End> {
        let AtConnect { hook, since } = at_connect.map(|a| *a).unwrap_or_default();
        let initial = match (hook, token) {
            (Some(req), _) => match ask_connect_hook(&self.node, &self.conn_id, &req).await {
                Ok(who) => Some(Ok(who)),
                Err(end) => return Some(end),
            },
            (None, Some(t)) => Some(self.node.auth.verify_token(&t).await),
            (None, None) => self.node.auth.anonymous(&self.conn_id).map(Ok),
        };
        match initial {
            Some(Ok(who)) => match self.authenticate(who, None).await {
                Ok(mut active) => {
                    let r = self.join_at_connect(&mut active, since).await;
                    *state = State::Active(active);
                    r.err()
                }
                Err(end) => Some(end),
            },
            Some(Err(e)) => Some(self.auth_failed(&e)),
            None => None,
        }
    }

    /// Joins the rooms of the token or hook (`join`) and the personal room, each answered
    /// with `joined` as if the client had asked; a position in `since` recovers it.
    async fn join_at_connect(
        &mut self,
        active: &mut Active,
        since: Vec<(RoomName, roomcast_protocol::StreamPosition)>,
    ) -> Result<(), End> {
        let rooms = active.who.join.clone();
        for room in rooms {
            let from = since
                .iter()
                .find(|(r, _)| *r == room)
                .map(|(_, p)| p.clone());
            let args = JoinArgs {
                room,
                history: None,
                since: from,
                id: None,
                at_connect: true,
                member_events: true,
            };
            let reply = self.join(active, args).await;
            self.reply(&reply).await?;
        }
        Ok(())
    }

    /// The id of a request this session refuses before handling it, for the error reply.
    /// The frame is bounded by the hard frame cap, so decoding it for this is cheap enough.
    fn request_id(&self, bytes: &[u8]) -> Option<ReqId> {
        // A frame that does not decode whole may still carry a usable id (the decoder
        // reads it apart), and its refusal must carry it too.
        match self.encoding.decode_client(bytes) {
            Ok(m) => m.id().cloned(),
            Err(e) => e.id,
        }
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

    async fn authenticate(&mut self, mut who: Identity, id: Option<ReqId>) -> Result<Active, End> {
        who.join = self.node.server_rooms(&who);
        let member = self.member(&who);
        self.node.hub.add_user(&member);
        // Rooms mode: after `welcome` the user's direct messages reach this connection.
        // They are at most once anyway: a bus that cannot confirm does not refuse it.
        if let Err(e) = self.node.bus.user_ready(&who.user).await {
            tracing::debug!(user = %who.user, error = %e, "user channel not confirmed");
        }
        let welcome = ServerMessage::Welcome {
            session: self.conn_id.to_string(),
            node: self.node.node_id.clone(),
            user: who.user.clone(),
            heartbeat: self.node.cfg.heartbeat.as_secs(),
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
                        Some(Err(e)) => return self.read_failed(e),
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
        self.send(Message::Ping(bytes::Bytes::new())).await?;
        self.flush().await
    }

    /// What a read error means for the connection (RFC 6455 section 7.4.1): a frame that
    /// breaks the framing rules closes with 1002, text that is not UTF-8 with 1007, a
    /// message over the size cap with 1009; a lost socket is just gone.
    fn read_failed(&self, e: WsError) -> End {
        use tokio_tungstenite::tungstenite::error::ProtocolError;
        tracing::debug!(conn = %self.conn_id, error = %e, "read failed");
        match e {
            WsError::Capacity(_) => End::Close(close::TOO_BIG, "message too big"),
            WsError::Utf8(_) => End::Close(close::INVALID_PAYLOAD, "invalid UTF-8"),
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => End::Drop,
            WsError::Protocol(_) => End::Close(close::PROTOCOL_ERROR, "protocol error"),
            _ => End::Drop,
        }
    }

    /// What a write error means: a socket that took nothing for `--write-timeout` is a
    /// slow consumer (4008); anything else means the connection is gone.
    fn write_failed(&self, e: WsError) -> End {
        match e {
            WsError::Io(io) if crate::socket::is_stalled(&io) => {
                self.node.metrics.slow_consumer_closes.inc();
                End::Close(close::SLOW_CONSUMER, STALLED_REASON)
            }
            _ => End::Drop,
        }
    }

    /// Queues one frame for the socket (writing what the socket takes). It ends early when
    /// the connection is kicked (a drain, a disconnect, a full queue), so that a session
    /// blocked on a client that reads nothing still closes when asked.
    async fn send(&mut self, msg: Message) -> Result<(), End> {
        let Session { ws, mailbox, .. } = self;
        let r = tokio::select! {
            biased;
            r = ws.feed(msg) => r,
            code = mailbox.kicked() => return Err(End::Close(code, kick_reason(code))),
        };
        r.map_err(|e| self.write_failed(e))
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
                self.send(msg).await?;
                n += 1;
            }
            if n < 64 {
                item = self.mailbox.try_next();
            }
        }
        self.flush().await
    }

    /// Flushes: a socket that accepts nothing for `--write-timeout` is a slow consumer,
    /// and a kick ends the wait (see [`Session::send`]).
    async fn flush(&mut self) -> Result<(), End> {
        let Session { ws, mailbox, .. } = self;
        let r = tokio::select! {
            biased;
            r = ws.flush() => r,
            code = mailbox.kicked() => return Err(End::Close(code, kick_reason(code))),
        };
        r.map_err(|e| self.write_failed(e))
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
        self.send(frame).await?;
        self.flush().await
    }

    async fn on_frame(&mut self, state: &mut State, msg: Message) -> Result<(), End> {
        let (bytes, binary): (&[u8], bool) = match &msg {
            Message::Text(t) => (t.as_bytes(), false),
            Message::Binary(b) => (b.as_ref(), true),
            Message::Close(_) => return Err(End::Answer),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(()),
        };
        self.node.metrics.bytes_in.inc_by(bytes.len() as u64);
        if let State::AwaitingAuth { .. } = state {
            return self.on_first_frame(state, bytes, binary).await;
        }
        if !self.bucket.try_take(Instant::now().into_std()) {
            self.node.metrics.rate_limited.inc();
            let now_s = (crate::hub::now_ms() / 1000) as u32;
            if now_s.wrapping_sub(self.strike_at) > STRIKE_WINDOW_S {
                self.strikes = 0;
            }
            self.strike_at = now_s;
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
            State::AwaitingAuth { .. } => {
                Err(End::Close(close::NOT_AUTHENTICATED, "authenticate first"))
            }
            State::Active(active) => self.on_command(active, cmd).await,
        }
    }

    /// The first message of a connection that has no token yet: a valid `auth` message,
    /// or a close with 4003 for anything else (a frame of the wrong kind, an oversized
    /// one, one that does not decode, another type).
    async fn on_first_frame(
        &mut self,
        state: &mut State,
        bytes: &[u8],
        binary: bool,
    ) -> Result<(), End> {
        let refuse = End::Close(close::NOT_AUTHENTICATED, "authenticate first");
        if bytes.len() > self.node.cfg.max_message_size || binary != self.encoding.is_binary() {
            return Err(refuse);
        }
        match self.encoding.decode_client(bytes) {
            Ok(ClientMessage::Auth { token, id }) => {
                self.node
                    .metrics
                    .messages_in
                    .with_label_values(&["auth"])
                    .inc();
                match self.node.auth.verify_token(&token).await {
                    Ok(who) => {
                        *state = State::Active(self.authenticate(who, id).await?);
                        Ok(())
                    }
                    Err(e) => Err(self.auth_failed(&e)),
                }
            }
            _ => Err(refuse),
        }
    }

    async fn on_command(&mut self, active: &mut Active, cmd: ClientMessage) -> Result<(), End> {
        let node = self.node.clone();
        let reply = match cmd {
            ClientMessage::Auth { token, id } => {
                if !node.auth.enabled() {
                    Some(ServerMessage::AuthOk { exp: 0, id })
                } else {
                    let fresh = if node.auth.by_hook() {
                        // Under --auth hook the fresh token goes to the connect hook.
                        let req = crate::hooks::ConnectRequest {
                            ip: String::new(),
                            transport: "ws",
                            headers: Default::default(),
                            cookies: Default::default(),
                            auth: serde_json::json!({ "token": token }),
                        };
                        match ask_connect_hook(&self.node, &self.conn_id, &req).await {
                            Ok(who) => Ok(who),
                            Err(end) => return Err(end),
                        }
                    } else {
                        node.auth.verify_token(&token).await
                    };
                    match fresh.map(|mut who| {
                        who.join = node.server_rooms(&who);
                        who
                    }) {
                        Ok(who) if who.user != active.who.user => {
                            return Err(self.auth_failed(&AuthError::OtherUser))
                        }
                        Ok(who) => {
                            active.expires = self.expiry_deadline(&who);
                            let exp = who.exp.unwrap_or(0);
                            active.who = Arc::new(who);
                            // A narrower `rooms` claim takes effect at once: the rooms the
                            // new token does not allow are left, each with a `left`.
                            let lost: Vec<RoomName> = active
                                .rooms
                                .names()
                                .filter(|r| !active.who.may_join(r, node.auth.default_policy))
                                .cloned()
                                .collect();
                            for room in lost {
                                self.leave_room(active, &room).await;
                                self.reply(&ServerMessage::Left { room, id: None }).await?;
                            }
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
                member_events,
            } => {
                let args = JoinArgs {
                    room,
                    history,
                    since,
                    id,
                    at_connect: false,
                    member_events,
                };
                Some(self.join(active, args).await)
            }
            ClientMessage::Leave { room, id } => {
                if !active.rooms.remove(&room) {
                    Some(ServerMessage::error(
                        ErrorCode::NotJoined,
                        format!("not in room {room}"),
                        id,
                    ))
                } else {
                    self.leave_room(active, &room).await;
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

    /// Leaves a room this connection had joined: live delivery and presence.
    async fn leave_room(&mut self, active: &mut Active, room: &RoomName) {
        active.rooms.remove(room);
        self.node.hub.leave(room, &self.conn_id);
        if let Err(e) = self
            .node
            .bus
            .presence_leave(room, &active.who.user, &self.conn_id)
            .await
        {
            tracing::warn!(%room, error = %e, "presence leave failed; the entry will expire");
        }
    }

    /// Joins `room` (again: a re-join replays from `since` and is otherwise a no-op).
    /// `at_connect`: a room of the token, hook or personal room, which neither `rooms`
    /// patterns nor the join hook decide.
    async fn join(&mut self, active: &mut Active, args: JoinArgs) -> ServerMessage {
        let JoinArgs {
            room,
            history,
            since,
            id,
            at_connect,
            member_events,
        } = args;
        let node = self.node.clone();
        let rejoin = active.rooms.get(&room).is_some();
        if !at_connect {
            if !active.who.may_join(&room, node.auth.default_policy) {
                return ServerMessage::error(
                    ErrorCode::Forbidden,
                    format!("not allowed in room {room}"),
                    id,
                );
            }
            // The join hook decides rooms that match its patterns, except those the
            // connection joined at connect and a re-join (asked the first time).
            if let Some(hooks) = node.hooks.as_ref().filter(|h| h.asks_join(&room)) {
                if !rejoin && !active.who.join.contains(&room) {
                    match hooks.join(&active.who.user, &room).await {
                        Ok(crate::hooks::RoomDecision::Allow(_)) => {}
                        Ok(crate::hooks::RoomDecision::Deny) => {
                            return ServerMessage::error(
                                ErrorCode::Forbidden,
                                format!("the join hook refused room {room}"),
                                id,
                            )
                        }
                        Err(e) => {
                            return ServerMessage::error(ErrorCode::Unavailable, e.to_string(), id)
                        }
                    }
                }
            }
        }
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
            node.hub
                .join_with(&room, &self.member(&active.who), member_events);
        }
        let (user, conn) = (&active.who.user, &self.conn_id);
        let presence = async {
            if rejoin {
                Ok(())
            } else {
                node.bus.presence_join(&room, user, conn).await
            }
        };
        // Rooms mode: the room's channel must be subscribed before history is read, or a
        // message published in between would be in neither (the no-gap rule).
        let read = async {
            node.bus.room_ready(&room).await?;
            node.bus.history(&room, HistoryQuery { since, limit }).await
        };
        // Presence and history do not wait for each other: one round trip, not two.
        let (added, read) = tokio::join!(presence, read);
        if let Err(e) = added {
            node.hub.leave(&room, &self.conn_id);
            return commands::bus_error(&e, id);
        }
        match read {
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
                // A first join that cannot be answered is undone (live delivery, presence).
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

    /// Ends the connection: it leaves its rooms and presence at once (a kicked or stalled
    /// connection must not stay a member while its close handshake runs), and closes.
    async fn finish(mut self, state: State, end: End) {
        let node = self.node.clone();
        let conn = self.conn_id.clone();
        // What is still queued will not be sent: free it now, not after the handshake.
        self.mailbox.close();
        if let State::Active(active) = &state {
            node.hub.remove_user(&self.member(&active.who));
            for room in active.rooms.names() {
                node.hub.leave(room, &conn);
            }
            if let End::Close(close::SLOW_CONSUMER, reason) = end {
                tracing::warn!(session = %conn, user = %active.who.user, reason, "slow consumer closed (4008)");
            }
        }
        let presence = async {
            if let State::Active(active) = &state {
                let leaves = active
                    .rooms
                    .names()
                    .map(|room| node.bus.presence_leave(room, &active.who.user, &conn));
                for r in futures_util::future::join_all(leaves).await {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "presence leave failed at close; the entry will expire");
                    }
                }
            }
        };
        tokio::join!(presence, self.close(end));
    }

    /// The closing handshake (RFC 6455 section 7), bounded by [`CLOSE_LINGER`].
    async fn close(&mut self, end: End) {
        match end {
            End::Drop => {}
            // tungstenite queued the answer (echoing the client's code) when it read the
            // Close; flushing sends it (and reports the connection closed).
            End::Answer => {
                let _ = tokio::time::timeout(CLOSE_LINGER, self.ws.flush()).await;
            }
            End::Close(code, reason) => {
                self.node
                    .metrics
                    .closes
                    .with_label_values(&[&code.to_string()])
                    .inc();
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                };
                // The Close waits behind what the socket has not taken yet: it may take as
                // long as the socket keeps taking bytes (the socket's own write timeout
                // ends a stall), so that a client that reads late still learns the code.
                let send_by = Instant::now() + self.node.cfg.write_timeout() + CLOSE_LINGER;
                match tokio::time::timeout_at(send_by, self.ws.close(Some(frame))).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
                let linger = Instant::now() + CLOSE_LINGER;
                // Read on, discarding, until the client's Close (or the end of the
                // socket, or the linger): closing now, with the client still sending,
                // would make the kernel reset the connection and lose what was sent.
                while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(linger, self.ws.next()).await
                {
                    if let Message::Close(_) = msg {
                        break;
                    }
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

/// Asks the connect hook who this connection is: a deny closes with the hook's code,
/// a failure with 1013 (try later): never allowed by default.
async fn ask_connect_hook(
    node: &Node,
    conn_id: &str,
    req: &crate::hooks::ConnectRequest,
) -> Result<Identity, End> {
    use crate::hooks::ConnectDecision;
    let Some(hooks) = node.hooks.as_ref() else {
        return Err(End::Close(close::INTERNAL, "no connect hook"));
    };
    match hooks.connect(req).await {
        Ok(ConnectDecision::Allow(who)) => Ok(who),
        Ok(ConnectDecision::Deny { code, reason }) => {
            node.metrics
                .auth_failures
                .with_label_values(&["hook_denied"])
                .inc();
            tracing::debug!(conn = %conn_id, code, reason, "connect hook denied");
            Err(End::Close(code, "refused by the connect hook"))
        }
        Err(_) => Err(End::Close(
            close::OVERLOADED,
            "authentication unavailable; try later",
        )),
    }
}

/// What the session's one timer is waiting for.
#[derive(Debug, Clone, Copy)]
enum Due {
    Heartbeat,
    AuthTimeout,
    Expired,
}

/// The reason of a 4008 sent because the socket took nothing for `--write-timeout`.
const STALLED_REASON: &str = "slow consumer: the socket accepted nothing for the write timeout";

fn kick_reason(code: u16) -> &'static str {
    match code {
        close::SLOW_CONSUMER => "slow consumer: outbound queue overflowed",
        close::INVALID_TOKEN => "disconnected by the server",
        close::OVERLOADED => "messages were lost; reconnect and re-join",
        close::GOING_AWAY => "node is draining; reconnect",
        _ => "closed by the server",
    }
}

/// One join, from a client's `join` or from the rooms a connection joins at connect.
struct JoinArgs {
    room: RoomName,
    /// Messages of history to replay (a client's `history`).
    history: Option<u32>,
    /// Where the client left off (recovery).
    since: Option<roomcast_protocol::StreamPosition>,
    /// The request id to answer with.
    id: Option<ReqId>,
    /// A room of the token, hook or personal room, which neither `rooms` patterns nor the
    /// join hook decide.
    at_connect: bool,
    /// Whether this connection hears the room's member events.
    member_events: bool,
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
