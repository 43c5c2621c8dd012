//! The client commands that do not depend on a connection (publish, send, presence,
//! ping): [`Command`], run by [`run`] for WebSocket sessions and the HTTP fallback
//! (`POST /client/commands`) alike. The other client messages (auth, join, leave) change a
//! connection's state and are the connection core's ([`crate::conn`]).

use crate::auth::Identity;
use crate::hub::now_ms;
use crate::node::Node;
use roomcast_protocol::StreamPosition;
use roomcast_protocol::{
    ClientMessage, DirectMessage, ErrorCode, EventName, Publication, ReqId, RoomName,
    ServerMessage, UserId,
};
use roomcast_redis_bridge::{BusError, History, HistoryQuery, PublishRequest, SendRequest};

/// The error code for a bus failure (docs/protocol.md section 4.1).
pub fn bus_error(e: &BusError, id: Option<ReqId>) -> ServerMessage {
    match e {
        BusError::Unavailable(m) => ServerMessage::error(ErrorCode::Unavailable, m.clone(), id),
        BusError::Internal(m) => {
            tracing::error!(error = %m, "bus error");
            ServerMessage::error(ErrorCode::Internal, "internal error", id)
        }
    }
}

/// The reply refusing a token without the `publish` right, if `who` lacks it.
fn refuse_publish(who: &Identity, id: &Option<ReqId>) -> Option<ServerMessage> {
    (!who.publish).then(|| {
        ServerMessage::error(
            ErrorCode::Forbidden,
            "this token may not publish",
            id.clone(),
        )
    })
}

/// A room's history after `offset` when the caller knows no epoch (SSE ids, the backend
/// API's `since`): the position is read in the room's current epoch. When it cannot be
/// recovered, the `fallback` most recent messages come instead (`recovered: false`).
pub async fn history_after(
    node: &Node,
    room: &RoomName,
    offset: u64,
    fallback: usize,
) -> Result<History, BusError> {
    let top = node
        .bus
        .history(
            room,
            HistoryQuery {
                since: None,
                limit: 0,
            },
        )
        .await?;
    let since = Some(StreamPosition {
        offset,
        epoch: top.epoch,
    });
    node.bus
        .history(
            room,
            HistoryQuery {
                since,
                limit: fallback,
            },
        )
        .await
}

fn idempotency_key(user: &UserId, id: &Option<ReqId>) -> Option<String> {
    id.as_ref().map(|id| format!("{user}\u{1f}{}", id.key()))
}

/// A `publish` command, as a client sent it.
#[derive(Debug)]
pub struct Publish {
    /// The room.
    pub room: RoomName,
    /// The event name.
    pub event: EventName,
    /// The payload.
    pub data: serde_json::Value,
    /// The request id (acked when present; the idempotency key).
    pub id: Option<ReqId>,
    /// Not kept in history.
    pub volatile: bool,
    /// Whether the publishing connection receives its own message.
    pub echo: bool,
}

/// A `publish` command from connection `conn` (when there is one). Returns the reply (an
/// ack or an error), or `None` when there is nothing to say (success without an id).
pub async fn publish(
    node: &Node,
    who: &Identity,
    conn: Option<&str>,
    p: Publish,
) -> Option<ServerMessage> {
    let (room, event, id) = (p.room, p.event, p.id);
    if let Some(refusal) = refuse_publish(who, &id) {
        return Some(refusal);
    }
    if !who.may_access(&room, node.auth.default_policy) {
        return Some(ServerMessage::error(
            ErrorCode::Forbidden,
            format!("not allowed in room {room}"),
            id,
        ));
    }
    let mut data = p.data;
    if let Some(hooks) = node.hooks.as_ref().filter(|h| h.asks_publish(&room)) {
        match hooks.publish(&who.user, &room, event.as_str(), &data).await {
            Ok(crate::hooks::RoomDecision::Allow(replaced)) => {
                if let Some(d) = replaced {
                    data = d;
                }
            }
            Ok(crate::hooks::RoomDecision::Deny) => {
                return Some(ServerMessage::error(
                    ErrorCode::Forbidden,
                    format!("the publish hook refused the message to {room}"),
                    id,
                ))
            }
            Err(e) => {
                return Some(ServerMessage::error(
                    ErrorCode::Unavailable,
                    e.to_string(),
                    id,
                ))
            }
        }
    }
    let req = PublishRequest {
        publication: Publication {
            room,
            event,
            data,
            from: who.user.clone(),
            offset: None,
            ts: now_ms(),
        },
        volatile: p.volatile,
        idempotency_key: idempotency_key(&who.user, &id),
        skip: if p.echo {
            None
        } else {
            conn.map(str::to_string)
        },
    };
    match node.bus.publish(req).await {
        Ok(res) => id.map(|id| ServerMessage::Ack {
            id,
            offset: res.offset,
        }),
        Err(e) => {
            node.metrics.bus_publish_errors.inc();
            Some(bus_error(&e, id))
        }
    }
}

/// A `send` command.
pub async fn send(
    node: &Node,
    who: &Identity,
    to: UserId,
    event: EventName,
    data: serde_json::Value,
    id: Option<ReqId>,
) -> Option<ServerMessage> {
    if let Some(refusal) = refuse_publish(who, &id) {
        return Some(refusal);
    }
    let req = SendRequest {
        to,
        message: DirectMessage {
            from: who.user.clone(),
            event,
            data,
            ts: now_ms(),
        },
        idempotency_key: idempotency_key(&who.user, &id),
    };
    match node.bus.send(req).await {
        Ok(_) => id.map(|id| ServerMessage::Ack { id, offset: None }),
        Err(e) => {
            node.metrics.bus_publish_errors.inc();
            Some(bus_error(&e, id))
        }
    }
}

/// The default and largest member list of a presence reply.
pub const PRESENCE_LIMIT: u32 = 1000;

/// The member list a presence request gets: what it asked for, at most
/// [`PRESENCE_LIMIT`] (a larger one would make Redis read the whole room).
pub fn presence_limit(asked: Option<u32>) -> usize {
    asked.unwrap_or(PRESENCE_LIMIT).min(PRESENCE_LIMIT) as usize
}

/// A `presence` command.
pub async fn presence(
    node: &Node,
    who: &Identity,
    room: RoomName,
    limit: Option<u32>,
    id: Option<ReqId>,
) -> ServerMessage {
    if !who.presence {
        return ServerMessage::error(ErrorCode::Forbidden, "this token may not see presence", id);
    }
    if !who.may_access(&room, node.auth.default_policy) {
        return ServerMessage::error(
            ErrorCode::Forbidden,
            format!("not allowed in room {room}"),
            id,
        );
    }
    match node.bus.presence(&room, presence_limit(limit)).await {
        Ok(p) => ServerMessage::Presence {
            room,
            members: p.members,
            count: p.count,
            id,
        },
        Err(e) => bus_error(&e, id),
    }
}

/// A client message that needs no connection state: what [`run`] handles.
#[derive(Debug)]
pub enum Command {
    /// `publish`.
    Publish(Publish),
    /// `send`.
    Send {
        /// The user it goes to.
        to: UserId,
        /// The event name.
        event: EventName,
        /// The payload.
        data: serde_json::Value,
        /// The request id.
        id: Option<ReqId>,
    },
    /// `presence`.
    Presence {
        /// The room.
        room: RoomName,
        /// The longest member list wanted.
        limit: Option<u32>,
        /// The request id.
        id: Option<ReqId>,
    },
    /// `ping`.
    Ping {
        /// The request id.
        id: Option<ReqId>,
    },
}

/// A `join` command, as a client sent it.
#[derive(Debug)]
pub struct Join {
    /// The room.
    pub room: RoomName,
    /// Messages of history to replay.
    pub history: Option<u32>,
    /// Where the client left off (recovery).
    pub since: Option<StreamPosition>,
    /// The request id.
    pub id: Option<ReqId>,
    /// Whether the connection hears the room's member events.
    pub member_events: bool,
}

/// A client message that changes a connection's state: only a connection runs it
/// ([`crate::conn::Conn::handle`]), never the HTTP fallback.
#[derive(Debug)]
pub enum ConnectionCommand {
    /// `auth`: a token for a connection that has none yet, or a refresh.
    Auth {
        /// The token.
        token: String,
        /// The request id.
        id: Option<ReqId>,
    },
    /// `join`.
    Join(Join),
    /// `leave`.
    Leave {
        /// The room.
        room: RoomName,
        /// The request id.
        id: Option<ReqId>,
    },
}

impl ConnectionCommand {
    /// The message's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectionCommand::Auth { .. } => "auth",
            ConnectionCommand::Join(_) => "join",
            ConnectionCommand::Leave { .. } => "leave",
        }
    }

    /// The request id.
    pub fn id(&self) -> Option<&ReqId> {
        match self {
            ConnectionCommand::Auth { id, .. }
            | ConnectionCommand::Join(Join { id, .. })
            | ConnectionCommand::Leave { id, .. } => id.as_ref(),
        }
    }

    /// The reply of a transport without connections (the HTTP fallback).
    pub fn refusal(&self) -> ServerMessage {
        ServerMessage::error(
            ErrorCode::InvalidMessage,
            format!(
                "{} is not available over HTTP: receive with /sse?rooms=",
                self.kind()
            ),
            self.id().cloned(),
        )
    }
}

impl TryFrom<ClientMessage> for Command {
    type Error = ConnectionCommand;

    /// Splits the client messages in two: the one match over [`ClientMessage`] that both
    /// the connection core and the HTTP fallback go through.
    fn try_from(m: ClientMessage) -> Result<Command, ConnectionCommand> {
        Ok(match m {
            ClientMessage::Publish {
                room,
                event,
                data,
                id,
                volatile,
                echo,
            } => Command::Publish(Publish {
                room,
                event,
                data,
                id,
                volatile,
                echo,
            }),
            ClientMessage::Send {
                to,
                event,
                data,
                id,
            } => Command::Send {
                to,
                event,
                data,
                id,
            },
            ClientMessage::Presence { room, limit, id } => Command::Presence { room, limit, id },
            ClientMessage::Ping { id } => Command::Ping { id },
            ClientMessage::Auth { token, id } => return Err(ConnectionCommand::Auth { token, id }),
            ClientMessage::Join {
                room,
                history,
                since,
                id,
                member_events,
            } => {
                return Err(ConnectionCommand::Join(Join {
                    room,
                    history,
                    since,
                    id,
                    member_events,
                }))
            }
            ClientMessage::Leave { room, id } => return Err(ConnectionCommand::Leave { room, id }),
        })
    }
}

/// Runs a command for `who`, from connection `conn` when there is one (its own publishes
/// skip it unless they ask for an echo). `None`: nothing to answer.
pub async fn run(
    node: &Node,
    who: &Identity,
    conn: Option<&str>,
    cmd: Command,
) -> Option<ServerMessage> {
    match cmd {
        Command::Publish(p) => publish(node, who, conn, p).await,
        Command::Send {
            to,
            event,
            data,
            id,
        } => send(node, who, to, event, data, id).await,
        Command::Presence { room, limit, id } => Some(presence(node, who, room, limit, id).await),
        Command::Ping { id } => Some(ServerMessage::Pong { id }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_presence_limit_is_capped() {
        assert_eq!(presence_limit(None), 1000);
        assert_eq!(presence_limit(Some(5)), 5);
        assert_eq!(presence_limit(Some(4_000_000_000)), 1000);
    }

    /// Every client message goes one of two ways: the connection-free commands to
    /// [`run`], the others (with their kind and id) to a connection, or refused by the
    /// HTTP fallback as `invalid_message`.
    #[test]
    fn client_messages_split_into_commands_and_connection_commands() {
        let decode = |s: &str| {
            roomcast_protocol::Encoding::Json
                .decode_client(s.as_bytes())
                .expect("a valid client message")
        };
        for (json, connection) in [
            (r#"{"type":"auth","token":"t","id":1}"#, true),
            (r#"{"type":"join","room":"r","id":1}"#, true),
            (r#"{"type":"leave","room":"r","id":1}"#, true),
            (r#"{"type":"publish","room":"r","event":"e","id":1}"#, false),
            (r#"{"type":"send","to":"u","event":"e","id":1}"#, false),
            (r#"{"type":"presence","room":"r","id":1}"#, false),
            (r#"{"type":"ping","id":1}"#, false),
        ] {
            let msg = decode(json);
            let (kind, id) = (msg.kind(), msg.id().cloned());
            match Command::try_from(msg) {
                Ok(_) => assert!(!connection, "{json} needs a connection"),
                Err(c) => {
                    assert!(connection, "{json} needs no connection");
                    assert_eq!((c.kind(), c.id().cloned()), (kind, id.clone()));
                    match c.refusal() {
                        ServerMessage::Error { code, id: rid, .. } => {
                            assert_eq!(code, ErrorCode::InvalidMessage);
                            assert_eq!(rid, id);
                        }
                        other => panic!("not an error: {other:?}"),
                    }
                }
            }
        }
    }
}
