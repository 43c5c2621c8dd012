//! The connection core, free of any transport: who a connection is ([`Active`]), the
//! rooms it joins (their floors live in its mailbox, [`crate::hub::Joined`]), admission, the connect hook and the
//! rooms joined at connect, join/leave, token refresh and expiry, the one dispatch of a
//! client's messages ([`Conn::handle`]), and the cleanup when it ends (hub, presence,
//! metrics, its place in the counts). The WebSocket session ([`crate::ws`]) and the SSE
//! stream ([`crate::sse`]) are read/write adapters around a [`Conn`].

mod admission;
mod join;

pub use admission::{admit, client_addr, gate, http_identity, Admission, Refused};
pub use join::{ask_join_hook, may_join, JoinArgs, JoinRefused, Recover};

use crate::auth::{AuthError, Identity};
use crate::commands::{self, Command, ConnectionCommand};
use crate::disconnect::Disconnect;
use crate::hooks::{ConnectDecision, ConnectRequest};
use crate::hub::{Mailbox, Member, Wire};
use crate::node::Node;
use roomcast_protocol::{ClientMessage, ReqId, RoomName, ServerMessage};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// One client connection of this node, whatever its transport: registered with the hub
/// from [`Conn::open`] until it is dropped, and holding its places in the node's and its
/// address's counts until then.
pub struct Conn {
    /// The node.
    pub node: Arc<Node>,
    /// The cluster-unique connection id.
    pub id: Arc<str>,
    /// How the connection wants its frames.
    pub wire: Wire,
    /// The connection's inbox: frames once authenticated, and close requests (drain,
    /// slow consumer, disconnect) at any time.
    pub mailbox: Arc<Mailbox>,
    _admission: Admission,
}

/// An authenticated connection's state.
pub struct Active {
    /// Who it is; shared with the requests in flight.
    pub who: Arc<Identity>,
    /// When the token stops being valid (exp plus leeway).
    pub expires: Option<Instant>,
}

/// A request that needs nothing of the connection but who it is, on its way: its reply.
pub type Pending = Pin<Box<dyn Future<Output = Option<ServerMessage>> + Send>>;

/// What a client message asks of its transport.
pub enum Handled {
    /// Send these replies, in order.
    Replies(Vec<ServerMessage>),
    /// Send this reply.
    Reply(ServerMessage),
    /// Run this request while reading on (pipelining), and send its reply in request
    /// order.
    Later(Pending),
    /// End the connection.
    End(Disconnect),
}

impl Conn {
    /// A new connection, registered with the hub (so that a drain reaches it at once).
    pub fn open(node: Arc<Node>, id: Arc<str>, wire: Wire, admission: Admission) -> Conn {
        let mailbox = Mailbox::new(node.cfg.outbound_queue);
        node.hub.register(&id, &mailbox);
        Conn {
            node,
            id,
            wire,
            mailbox,
            _admission: admission,
        }
    }

    /// The hub's handle on this connection (built when needed rather than kept: it would
    /// sit in every idle connection's task).
    pub fn member(&self, who: &Identity) -> Member {
        Member {
            id: self.id.clone(),
            user: who.user.clone(),
            wire: self.wire,
            mailbox: self.mailbox.clone(),
        }
    }

    /// When `who`'s token stops being valid (its `exp` plus the leeway).
    pub fn expiry_deadline(&self, who: &Identity) -> Option<Instant> {
        let exp = who.exp?;
        let now_s = crate::hub::now_ms() / 1000;
        let left = (exp + self.node.auth.leeway()).saturating_sub(now_s);
        Some(Instant::now() + Duration::from_secs(left))
    }

    /// Counts and logs a refused token; the connection closes with 4002.
    pub fn auth_failed(&self, e: &AuthError) -> Disconnect {
        self.node
            .metrics
            .auth_failures
            .with_label_values(&[e.reason()])
            .inc();
        tracing::debug!(conn = %self.id, error = %e, "authentication failed");
        Disconnect::INVALID_TOKEN
    }

    /// Asks the connect hook who this connection is: a deny closes with the hook's code,
    /// a failure with 1013 (try later): never allowed by default.
    pub async fn ask_connect_hook(&self, req: &ConnectRequest) -> Result<Identity, Disconnect> {
        let Some(hooks) = self.node.hooks.as_ref() else {
            return Err(Disconnect::NO_CONNECT_HOOK);
        };
        match hooks.connect(req).await {
            Ok(ConnectDecision::Allow(who)) => Ok(who),
            Ok(ConnectDecision::Deny { code, reason }) => {
                self.node
                    .metrics
                    .auth_failures
                    .with_label_values(&["hook_denied"])
                    .inc();
                tracing::debug!(conn = %self.id, code, reason, "connect hook denied");
                Err(Disconnect::hook_denied(code))
            }
            Err(_) => Err(Disconnect::AUTH_UNAVAILABLE),
        }
    }

    /// Who a connection is at connect: the connect hook's answer, the token's, or with
    /// `--auth none` an anonymous identity; `None` when it must send `auth` first.
    pub async fn identify(
        &self,
        hook: Option<ConnectRequest>,
        token: Option<String>,
    ) -> Option<Result<Identity, Disconnect>> {
        match (hook, token) {
            (Some(req), _) => Some(self.ask_connect_hook(&req).await),
            (None, Some(t)) => Some(
                self.node
                    .auth
                    .verify_token(&t)
                    .await
                    .map_err(|e| self.auth_failed(&e)),
            ),
            (None, None) => self.node.auth.anonymous(&self.id).map(Ok),
        }
    }

    /// Authenticates the connection as `who`: the rooms it joins at connect are settled,
    /// its user's direct messages reach it.
    pub async fn activate(&self, mut who: Identity) -> Active {
        who.join = self.node.server_rooms(&who);
        self.node.hub.add_user(&self.member(&who));
        // Rooms mode: after `welcome` the user's direct messages reach this connection.
        // They are at most once anyway: a bus that cannot confirm does not refuse it.
        if let Err(e) = self.node.bus.user_ready(&who.user).await {
            tracing::debug!(user = %who.user, error = %e, "user channel not confirmed");
        }
        Active {
            expires: self.expiry_deadline(&who),
            who: Arc::new(who),
        }
    }

    /// The `welcome` of an authenticated connection.
    pub fn welcome(&self, active: &Active, id: Option<ReqId>) -> ServerMessage {
        ServerMessage::Welcome {
            session: self.id.to_string(),
            node: self.node.node_id.clone(),
            user: active.who.user.clone(),
            heartbeat: self.node.cfg.heartbeat.as_secs(),
            auth: self.node.auth.mode_name().to_string(),
            id,
        }
    }

    /// Handles one client message of an authenticated connection: the one dispatch over
    /// [`ClientMessage`] (split by [`Command::try_from`]).
    pub async fn handle(&self, active: &mut Active, msg: ClientMessage) -> Handled {
        let cmd = match Command::try_from(msg) {
            Ok(cmd) => {
                // Publishes and the like need nothing of the connection but who it is:
                // they run while the socket is read on, so that a client may pipeline
                // them. The bus takes publishes in the order their futures first run,
                // which is the order they came in.
                let (node, who, conn) = (self.node.clone(), active.who.clone(), self.id.clone());
                return Handled::Later(Box::pin(async move {
                    commands::run(&node, &who, Some(&conn), cmd).await
                }));
            }
            Err(cmd) => cmd,
        };
        match cmd {
            ConnectionCommand::Auth { token, id } => match self.refresh(active, token, id).await {
                Ok(replies) => Handled::Replies(replies),
                Err(end) => Handled::End(end),
            },
            ConnectionCommand::Join(j) => {
                let args = JoinArgs {
                    room: j.room,
                    recover: Recover::Since {
                        since: j.since,
                        history: j.history,
                    },
                    id: j.id,
                    at_connect: false,
                    member_events: j.member_events,
                };
                Handled::Reply(self.join_reply(active, args).await)
            }
            ConnectionCommand::Leave { room, id } => {
                if !self.joined(&room) {
                    Handled::Reply(ServerMessage::error(
                        roomcast_protocol::ErrorCode::NotJoined,
                        format!("not in room {room}"),
                        id,
                    ))
                } else {
                    self.leave(active, &room).await;
                    Handled::Reply(ServerMessage::Left { room, id })
                }
            }
        }
    }

    /// A token refresh (`auth` on an authenticated connection): the same user, a new
    /// expiry; the rooms the new token does not allow are left at once, each with a
    /// `left` before the `auth_ok`.
    async fn refresh(
        &self,
        active: &mut Active,
        token: String,
        id: Option<ReqId>,
    ) -> Result<Vec<ServerMessage>, Disconnect> {
        let node = &self.node;
        if !node.auth.enabled() {
            return Ok(vec![ServerMessage::AuthOk { exp: 0, id }]);
        }
        let fresh = if node.auth.by_hook() {
            // Under --auth hook the fresh token goes to the connect hook.
            let req = ConnectRequest {
                ip: String::new(),
                transport: "ws",
                headers: Default::default(),
                cookies: Default::default(),
                auth: serde_json::json!({ "token": token }),
            };
            self.ask_connect_hook(&req).await?
        } else {
            node.auth
                .verify_token(&token)
                .await
                .map_err(|e| self.auth_failed(&e))?
        };
        let mut who = fresh;
        who.join = node.server_rooms(&who);
        if who.user != active.who.user {
            return Err(self.auth_failed(&AuthError::OtherUser));
        }
        active.expires = self.expiry_deadline(&who);
        let exp = who.exp.unwrap_or(0);
        active.who = Arc::new(who);
        let lost: Vec<RoomName> = self.mailbox.floors(|f| {
            f.names()
                .filter(|r| !active.who.may_join(r, node.auth.default_policy))
                .cloned()
                .collect()
        });
        let mut replies = Vec::with_capacity(lost.len() + 1);
        for room in lost {
            self.leave(active, &room).await;
            replies.push(ServerMessage::Left { room, id: None });
        }
        replies.push(ServerMessage::AuthOk { exp, id });
        Ok(replies)
    }

    /// The first half of the end, at once and without the bus: nothing more is queued
    /// (what is queued will not be sent), the connection leaves its user and its rooms
    /// (a kicked or stalled connection must not stay a member while its transport
    /// closes). `end`: why, when the node ends it (counted in the `closes` metric by the
    /// transport).
    pub fn release(&self, active: Option<&Active>, end: Option<&Disconnect>) {
        self.mailbox.close();
        let Some(active) = active else { return };
        self.node.hub.remove_user(&self.member(&active.who));
        for room in self.rooms() {
            self.node.hub.leave(&room, &self.id);
        }
        if let Some(d) = end.filter(|d| d.is_slow_consumer()) {
            tracing::warn!(session = %self.id, user = %active.who.user, reason = d.reason, "slow consumer closed (4008)");
        }
    }

    /// The second half: the connection's presence entries go (bounded by the bus
    /// timeout; an entry that cannot be removed expires).
    pub async fn leave_presence(&self, active: Option<&Active>) {
        let Some(active) = active else { return };
        let rooms = self.rooms();
        let leaves = rooms.iter().map(|room| {
            self.node
                .bus
                .presence_leave(room, &active.who.user, &self.id)
        });
        for r in futures_util::future::join_all(leaves).await {
            if let Err(e) = r {
                tracing::debug!(error = %e, "presence leave failed at close; the entry will expire");
            }
        }
    }

    /// [`Conn::leave_presence`] for a transport that ends in a `Drop` (SSE): the rooms are
    /// taken from `active` and left in a task of the node's, bounded by the bus timeout.
    pub fn leave_presence_later(&self, active: &mut Active) {
        let rooms = self.mailbox.floors(std::mem::take);
        if rooms.is_empty() {
            return;
        }
        let (node, user, conn) = (self.node.clone(), active.who.user.clone(), self.id.clone());
        self.node.tasks.spawn_session(async move {
            for room in rooms.names() {
                let _ = node.bus.presence_leave(room, &user, &conn).await;
            }
        });
    }

    /// Whether this connection is in `room`.
    pub fn joined(&self, room: &RoomName) -> bool {
        self.mailbox.floors(|f| f.get(room).is_some())
    }

    /// The rooms this connection is in, in name order.
    pub fn rooms(&self) -> Vec<RoomName> {
        self.mailbox.floors(|f| f.names().cloned().collect())
    }

    /// Counts a close the node asked for in the `closes` metric.
    pub fn count_close(&self, d: &Disconnect) {
        self.node
            .metrics
            .closes
            .with_label_values(&[&d.code.to_string()])
            .inc();
    }
}

impl Drop for Conn {
    /// The last of the end: the hub forgets the connection; then its places in the counts
    /// go (the fields drop after this).
    fn drop(&mut self) {
        self.node.hub.unregister(&self.id);
    }
}
