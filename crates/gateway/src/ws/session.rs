//! A WebSocket session: the frame loop around a [`Conn`]. One task per connection, in
//! one of two states (awaiting auth, authenticated), selecting over the socket, the
//! connection's bounded mailbox (where close requests arrive too), the replies of its
//! pipelined requests and its one deadline (heartbeat, auth timeout, token expiry). It
//! ends with the closing handshake ([`super::close`]).

use super::close::{read_failed, End};
use crate::conn::{Active, Conn, Handled, JoinArgs, Pending, Recover};
use crate::disconnect::Disconnect;
use crate::hub::{Mail, Outbound, Payload};
use crate::limits::TokenBucket;
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use roomcast_protocol::{ClientMessage, Encoding, ErrorCode, ReqId, RoomName, ServerMessage};
use std::future::Future;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// What the upgrade handed to the session.
pub struct Setup {
    /// The connection, admitted and registered.
    pub conn: Conn,
    /// Negotiated encoding.
    pub encoding: Encoding,
    /// A token from the query or the Authorization header.
    pub token: Option<String>,
    /// The connect hook's request and the `since` positions, when there are any (boxed:
    /// most connections have neither, and the session's future keeps this slot).
    pub at_connect: Option<Box<AtConnect>>,
}

/// What a connection brings for its start beyond a token.
#[derive(Default)]
pub struct AtConnect {
    /// What the connect hook is asked, when it decides this connection
    /// ([`crate::node::Node::connect_request`]).
    pub hook: Option<crate::hooks::ConnectRequest>,
    /// Positions (`?since=room:offset:epoch,...`) from which the rooms joined at connect
    /// recover.
    pub since: Vec<(RoomName, roomcast_protocol::StreamPosition)>,
}

/// Where a session is in its life.
pub(super) enum State {
    /// Waiting for an `auth` message until the deadline.
    AwaitingAuth { deadline: Instant },
    /// Authenticated.
    Active(Active),
}

impl State {
    pub(super) fn active(&self) -> Option<&Active> {
        match self {
            State::Active(a) => Some(a),
            State::AwaitingAuth { .. } => None,
        }
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
    /// An express write left bytes in the socket.
    Flush,
    /// A frame from the client.
    Frame(Message),
}

/// Data frames written with one `writev` (two slices each: header and payload).
const WRITE_GROUP: usize = 8;

/// `rate_limited` answers count together toward 4029 while each comes within this many
/// seconds of the previous one; admitted frames between them do not reset the count.
const STRIKE_WINDOW_S: u32 = 10;

pub(super) struct Session<S> {
    pub(super) conn: Conn,
    pub(super) ws: WebSocketStream<S>,
    encoding: Encoding,
    bucket: TokenBucket,
    /// `rate_limited` answers so far, and when the last one was (seconds, wall clock).
    strikes: u32,
    strike_at: u32,
    /// tungstenite may hold a control frame it has not written whole (the pong of a
    /// client's ping): data frames, which the session writes itself, wait for it.
    control: bool,
    last_seen: Instant,
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
pub fn start<S>(ws: WebSocketStream<S>, setup: Setup) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Setup {
        conn,
        encoding,
        token,
        at_connect,
    } = setup;
    let now = Instant::now();
    let cfg = &conn.node.cfg;
    let mut s = Session {
        bucket: TokenBucket::new(cfg.rate_limit, cfg.rate_burst, now.into_std()),
        conn,
        ws,
        encoding,
        strikes: 0,
        strike_at: 0,
        control: false,
        last_seen: now,
        pending: None,
    };
    let mut state = State::AwaitingAuth {
        deadline: now + s.conn.node.cfg.auth_timeout,
    };
    // An async block rather than an async fn taking these as arguments: an async fn
    // keeps its arguments and their moved-in copies in separate slots of the future,
    // which doubled the memory an idle connection holds (measured: 2,432 -> 1,8xx bytes).
    async move {
        let end = match Box::pin(s.begin(&mut state, token, at_connect)).await {
            Some(end) => end,
            None => s.run_loop(&mut state).await,
        };
        // The connection leaves the hub (and its places in the counts) when `s` drops.
        Box::pin(s.finish(state, end)).await;
    }
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Authenticates at once from the token of the upgrade request, the connect hook, or
    /// with `--auth none`; `Some` when the connection must end instead.
    async fn begin(
        &mut self,
        state: &mut State,
        token: Option<String>,
        at_connect: Option<Box<AtConnect>>,
    ) -> Option<End> {
        let AtConnect { hook, since } = at_connect.map(|a| *a).unwrap_or_default();
        match self.conn.identify(hook, token).await? {
            Ok(who) => match self.authenticate(who, None).await {
                Ok(mut active) => {
                    let r = self.join_at_connect(&mut active, since).await;
                    *state = State::Active(active);
                    r.err()
                }
                Err(end) => Some(end),
            },
            Err(d) => Some(End::Close(d)),
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
                recover: Recover::Since {
                    since: from,
                    history: None,
                },
                id: None,
                at_connect: true,
                member_events: true,
            };
            let reply = self.conn.join_reply(active, args).await;
            self.reply(&reply).await?;
        }
        Ok(())
    }

    /// Authenticates as `who` and says `welcome`.
    async fn authenticate(
        &mut self,
        who: crate::auth::Identity,
        id: Option<ReqId>,
    ) -> Result<Active, End> {
        let active = self.conn.activate(who).await;
        let welcome = self.conn.welcome(&active, id);
        if self.reply(&welcome).await.is_err() {
            // Undo what authentication registered; `finish` sees an Active state only
            // when this returns Ok.
            self.conn
                .node
                .hub
                .remove_user(&self.conn.member(&active.who));
            return Err(End::Abandon);
        }
        Ok(active)
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
        let node = self.conn.node.clone();
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
            // While the session waits here, the fan-out may write frames to the socket
            // itself (express) instead of queueing them and waking this task.
            self.conn.mailbox.idle();
            let event = tokio::select! {
                biased;
                _ = &mut timer => match due {
                    Due::AuthTimeout => return End::Close(Disconnect::AUTH_TIMEOUT),
                    Due::Expired => {
                        node.metrics.auth_failures.with_label_values(&["expired"]).inc();
                        return End::Close(Disconnect::TOKEN_EXPIRED);
                    }
                    Due::Heartbeat => {
                        if self.last_seen.elapsed() >= hb * 2 {
                            tracing::debug!(conn = %self.conn.id, "heartbeat missed; closing");
                            return End::Abandon;
                        }
                        next_ping = Instant::now() + hb;
                        Event::Ping
                    }
                },
                reply = next_reply(&mut self.pending) => match reply {
                    Some(r) => Event::Reply(r),
                    None => continue,
                },
                mail = self.conn.mailbox.next() => match mail {
                    Mail::Kick(code) => return End::Close(Disconnect::kicked(code)),
                    Mail::Frame(item) => Event::Mail(item),
                    Mail::Flush => Event::Flush,
                },
                frame = self.ws.next(), if self.pending_len() < max_pending => {
                    self.last_seen = Instant::now();
                    match frame {
                        None => return End::Abandon,
                        Some(Err(e)) => {
                            tracing::debug!(conn = %self.conn.id, error = %e, "read failed");
                            return read_failed(e);
                        }
                        Some(Ok(msg)) => Event::Frame(msg),
                    }
                }
            };
            self.conn.mailbox.busy();
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
            Event::Flush => Box::pin(self.flush()),
            Event::Frame(msg) => Box::pin(self.on_frame(state, msg)),
        }
    }

    async fn ping(&mut self) -> Result<(), End> {
        self.send(Message::Ping(bytes::Bytes::new())).await?;
        self.flush().await
    }

    /// What a write error means: a socket that took nothing for `--write-timeout` is a
    /// slow consumer (4008); anything else means the connection is gone.
    fn write_failed(&self, e: WsError) -> End {
        match e {
            WsError::Io(io) if crate::socket::is_stalled(&io) => {
                self.conn.node.metrics.slow_consumer_closes.inc();
                End::Close(Disconnect::STALLED)
            }
            _ => End::Abandon,
        }
    }

    /// Queues one frame for the socket (writing what the socket takes). It ends early when
    /// the connection is kicked (a drain, a disconnect, a full queue), so that a session
    /// blocked on a client that reads nothing still closes when asked.
    async fn send(&mut self, msg: Message) -> Result<(), End> {
        let Session { ws, conn, .. } = self;
        let r = tokio::select! {
            biased;
            r = ws.feed(msg) => r,
            code = conn.mailbox.kicked() => return Err(End::Close(Disconnect::kicked(code))),
        };
        r.map_err(|e| self.write_failed(e))
    }

    async fn reply_owned(&mut self, msg: ServerMessage) -> Result<(), End> {
        self.reply(&msg).await
    }

    fn pending_len(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.len())
    }

    /// Writes one queued frame and whatever else is queued (up to a batch of 64), a few
    /// frames per `writev`.
    async fn write_batch(&mut self, state: &mut State, first: Outbound) -> Result<(), End> {
        if !matches!(state, State::Active(_)) {
            return Ok(());
        }
        let mut next = Some(first);
        let mut written = 0;
        while let Some(f) = next.take() {
            let mut batch: [Option<Outbound>; WRITE_GROUP] = Default::default();
            batch[0] = Some(f);
            let mut n = 1;
            while n < WRITE_GROUP && written + n < 64 {
                let Some(f) = self.conn.mailbox.try_next() else {
                    break;
                };
                batch[n] = Some(f);
                n += 1;
            }
            let group: [Option<&Payload>; WRITE_GROUP] =
                std::array::from_fn(|i| batch[i].as_deref().map(|f| &f.payload));
            self.write_frames(&group[..n]).await?;
            written += n;
            if written < 64 {
                next = self.conn.mailbox.try_next();
            }
        }
        Ok(())
    }

    /// Writes data frames to the socket itself: each frame's header and its shared payload,
    /// up to [`WRITE_GROUP`] frames in one `writev`. tungstenite's own write buffer is left
    /// to control frames (ping, pong, close) and flushed first, so that a pong it still
    /// holds is not cut; a connection that only ever receives data keeps no write buffer.
    /// Like [`Session::send`], a kick ends the wait and a stalled socket is a slow consumer.
    async fn write_frames(&mut self, frames: &[Option<&Payload>]) -> Result<(), End> {
        if self.control {
            self.flush().await?;
            self.control = false;
        }
        let mut heads = [([0u8; 10], 0usize); WRITE_GROUP];
        let mut bodies: [&[u8]; WRITE_GROUP] = [&[]; WRITE_GROUP];
        let mut count = 0;
        for (p, (head, h)) in frames.iter().flatten().zip(heads.iter_mut()) {
            let (opcode, body): (u8, &[u8]) = match p {
                Payload::Text(t) => (0x1, t.as_bytes()),
                Payload::Binary(b) => (0x2, b),
            };
            *h = super::frame_header(opcode, body.len(), head);
            bodies[count] = body;
            count += 1;
        }
        let mut slices = [std::io::IoSlice::new(&[]); 2 * WRITE_GROUP];
        for i in 0..count {
            slices[2 * i] = std::io::IoSlice::new(&heads[i].0[..heads[i].1]);
            slices[2 * i + 1] = std::io::IoSlice::new(bodies[i]);
        }
        let mut rest = &mut slices[..2 * count];
        let mut done = 0usize;
        let Session { ws, conn, .. } = self;
        let end = loop {
            if rest.is_empty() {
                return Ok(());
            }
            let r = tokio::select! {
                biased;
                r = ws.get_mut().write_vectored(rest) => r,
                code = conn.mailbox.kicked() => break End::Close(Disconnect::kicked(code)),
            };
            match r {
                Ok(0) => break End::Abandon,
                Ok(n) => {
                    done += n;
                    std::io::IoSlice::advance_slices(&mut rest, n);
                }
                Err(e) => break self.write_failed(WsError::Io(e)),
            }
        };
        // Given up in the middle of a frame: its rest goes out before the Close.
        let mut start = 0;
        for i in 0..count {
            let head = &heads[i].0[..heads[i].1];
            let len = head.len() + bodies[i].len();
            if done > start && done < start + len {
                let at = done - start;
                let parts: [&[u8]; 2] = if at < head.len() {
                    [&head[at..], bodies[i]]
                } else {
                    [&[], &bodies[i][at - head.len()..]]
                };
                self.conn.mailbox.defer(&parts);
                break;
            }
            start += len;
        }
        Err(end)
    }

    /// Flushes: a socket that accepts nothing for `--write-timeout` is a slow consumer,
    /// and a kick ends the wait (see [`Session::send`]).
    async fn flush(&mut self) -> Result<(), End> {
        let Session { ws, conn, .. } = self;
        let r = tokio::select! {
            biased;
            r = ws.flush() => r,
            code = conn.mailbox.kicked() => return Err(End::Close(Disconnect::kicked(code))),
        };
        r.map_err(|e| self.write_failed(e))
    }

    async fn reply(&mut self, msg: &ServerMessage) -> Result<(), End> {
        let Some(payload) = crate::hub::encode_for(self.conn.wire, msg, None) else {
            return Err(End::Close(Disconnect::ENCODING_FAILED));
        };
        let m = &self.conn.node.metrics;
        m.messages_out.with_label_values(&[msg.kind()]).inc();
        m.bytes_out.inc_by(payload.len() as u64);
        if let ServerMessage::Error { code, .. } = msg {
            m.errors.with_label_values(&[code.as_str()]).inc();
        }
        self.write_frames(&[Some(&payload)]).await
    }

    async fn on_frame(&mut self, state: &mut State, msg: Message) -> Result<(), End> {
        let (bytes, binary): (&[u8], bool) = match &msg {
            Message::Text(t) => (t.as_bytes(), false),
            Message::Binary(b) => (b.as_ref(), true),
            Message::Close(_) => return Err(End::Answer),
            Message::Ping(_) => {
                self.control = true;
                return Ok(());
            }
            Message::Pong(_) | Message::Frame(_) => return Ok(()),
        };
        let node = self.conn.node.clone();
        node.metrics.bytes_in.inc_by(bytes.len() as u64);
        let State::Active(active) = state else {
            return self.on_first_frame(state, bytes, binary).await;
        };
        if !self.bucket.try_take(Instant::now().into_std()) {
            node.metrics.rate_limited.inc();
            let now_s = (crate::hub::now_ms() / 1000) as u32;
            if now_s.wrapping_sub(self.strike_at) > STRIKE_WINDOW_S {
                self.strikes = 0;
            }
            self.strike_at = now_s;
            self.strikes += 1;
            if self.strikes >= node.cfg.rate_limit_strikes {
                return Err(End::Close(Disconnect::RATE_LIMIT_ABUSE));
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
        if bytes.len() > node.cfg.max_message_size {
            let id = self.request_id(bytes);
            return self
                .reply(&ServerMessage::error(
                    ErrorCode::TooLarge,
                    format!("message larger than {} bytes", node.cfg.max_message_size),
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
        node.metrics
            .messages_in
            .with_label_values(&[cmd.kind()])
            .inc();
        match self.conn.handle(active, cmd).await {
            Handled::Reply(r) => self.reply(&r).await,
            Handled::Replies(rs) => {
                for r in &rs {
                    self.reply(r).await?;
                }
                Ok(())
            }
            Handled::Later(request) => {
                self.pending
                    .get_or_insert_with(Default::default)
                    .push_back(request);
                Ok(())
            }
            Handled::End(d) => Err(End::Close(d)),
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
        let refuse = End::Close(Disconnect::NOT_AUTHENTICATED);
        let node = self.conn.node.clone();
        if bytes.len() > node.cfg.max_message_size || binary != self.encoding.is_binary() {
            return Err(refuse);
        }
        match self.encoding.decode_client(bytes) {
            Ok(ClientMessage::Auth { token, id }) => {
                node.metrics.messages_in.with_label_values(&["auth"]).inc();
                match node.auth.verify_token(&token).await {
                    Ok(who) => {
                        *state = State::Active(self.authenticate(who, id).await?);
                        Ok(())
                    }
                    Err(e) => Err(End::Close(self.conn.auth_failed(&e))),
                }
            }
            _ => Err(refuse),
        }
    }
}

/// What the session's one timer is waiting for.
#[derive(Debug, Clone, Copy)]
enum Due {
    Heartbeat,
    AuthTimeout,
    Expired,
}
