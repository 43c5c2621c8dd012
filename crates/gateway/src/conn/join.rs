//! Joining and leaving rooms, for every transport: the room rules (token claims, the join
//! hook, the per-connection limit), then the live-then-history join of DESIGN-NOTES §2.

use super::{Active, Conn};
use crate::auth::Identity;
use crate::node::Node;
use roomcast_protocol::{ErrorCode, ReqId, RoomName, ServerMessage, StreamPosition};
use roomcast_redis_bridge::{BusError, History, HistoryQuery};

/// Where a join's replay starts.
#[derive(Debug, Clone)]
pub enum Recover {
    /// A client's `join`: from a position (`since`, with its epoch), else the last
    /// `history` messages (none by default).
    Since {
        /// Where the client left off.
        since: Option<StreamPosition>,
        /// Messages of history to replay when there is no position.
        history: Option<u32>,
    },
    /// An SSE position (`room:offset`, no epoch): read in the room's current epoch; when
    /// it cannot be recovered, the `--max-recover` most recent messages come instead.
    After(u64),
}

/// One join.
pub struct JoinArgs {
    /// The room.
    pub room: RoomName,
    /// Where the replay starts.
    pub recover: Recover,
    /// The request id to answer with.
    pub id: Option<ReqId>,
    /// A room of the token, hook or personal room (or one the caller already checked),
    /// which neither `rooms` patterns nor the join hook decide.
    pub at_connect: bool,
    /// Whether this connection hears the room's member events.
    pub member_events: bool,
}

/// Why a join was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinRefused {
    /// The token's `rooms` (or the default policy) do not allow the room.
    #[error("not allowed in room {0}")]
    Forbidden(RoomName),
    /// The join hook said no.
    #[error("the join hook refused room {0}")]
    HookDenied(RoomName),
    /// The join hook could not be asked.
    #[error("{0}")]
    HookFailed(String),
    /// The connection holds `--max-rooms` rooms.
    #[error("at most {0} rooms per connection")]
    RoomLimit(usize),
    /// Presence or history failed on the bus.
    #[error("{0}")]
    Bus(BusError),
}

impl JoinRefused {
    /// The error reply of a client's `join` (docs/protocol.md section 4.1).
    pub fn reply(self, id: Option<ReqId>) -> ServerMessage {
        let code = match &self {
            JoinRefused::Forbidden(_) | JoinRefused::HookDenied(_) => ErrorCode::Forbidden,
            JoinRefused::HookFailed(_) => ErrorCode::Unavailable,
            JoinRefused::RoomLimit(_) => ErrorCode::RoomLimit,
            JoinRefused::Bus(e) => return crate::commands::bus_error(e, id),
        };
        ServerMessage::error(code, self.to_string(), id)
    }
}

/// Whether `who`'s token (or the default policy) allows `room`.
pub fn may_join(node: &Node, who: &Identity, room: &RoomName) -> Result<(), JoinRefused> {
    if who.may_join(room, node.auth.default_policy) {
        Ok(())
    } else {
        Err(JoinRefused::Forbidden(room.clone()))
    }
}

/// Asks the join hook about `room` when it decides it: rooms that match its patterns,
/// except those joined at connect and a re-join (asked the first time).
pub async fn ask_join_hook(
    node: &Node,
    who: &Identity,
    room: &RoomName,
    rejoin: bool,
) -> Result<(), JoinRefused> {
    let Some(hooks) = node.hooks.as_ref().filter(|h| h.asks_join(room)) else {
        return Ok(());
    };
    if rejoin || who.join.contains(room) {
        return Ok(());
    }
    match hooks.join(&who.user, room).await {
        Ok(crate::hooks::RoomDecision::Allow(_)) => Ok(()),
        Ok(crate::hooks::RoomDecision::Deny) => Err(JoinRefused::HookDenied(room.clone())),
        Err(e) => Err(JoinRefused::HookFailed(e.to_string())),
    }
}

impl Conn {
    /// Joins a room (again: a re-join replays and is otherwise a no-op): live delivery
    /// starts first, into the mailbox, which the caller does not read until the join is
    /// answered; presence and history are read after, at once; what both hold is dropped
    /// by offset ([`crate::hub::Joined::admit`]). A first join that fails is undone.
    pub async fn join(&self, active: &mut Active, args: &JoinArgs) -> Result<History, JoinRefused> {
        let node = &self.node;
        let room = &args.room;
        let rejoin = self.joined(room);
        if !args.at_connect {
            may_join(node, &active.who, room)?;
            ask_join_hook(node, &active.who, room, rejoin).await?;
        }
        if !rejoin && self.mailbox.floors(|f| f.len()) >= node.cfg.max_rooms {
            return Err(JoinRefused::RoomLimit(node.cfg.max_rooms));
        }
        // The hub's key of the room, for the floor raised below.
        let key = if rejoin {
            node.hub.room_key(room)
        } else {
            node.hub
                .join_with(room, &self.member(&active.who), args.member_events)
        };
        let (user, conn) = (&active.who.user, &self.id);
        // Rooms mode: the room's channel must be subscribed before history is read, or a
        // message published in between would be in neither (the no-gap rule).
        let read = async {
            node.bus.room_ready(room).await?;
            match &args.recover {
                Recover::Since { since, history } => {
                    let limit = (history.unwrap_or(0) as usize).min(node.cfg.max_recover);
                    let query = HistoryQuery {
                        since: since.clone(),
                        limit,
                    };
                    if rejoin {
                        node.bus.history(room, query).await
                    } else {
                        // Presence and history in one call (one round trip per join).
                        node.bus.join_room(room, user, conn, query).await
                    }
                }
                // When a position cannot be recovered (history trimmed, or lost and
                // restarted: an offset past the room's end), replay what history holds.
                Recover::After(offset) => {
                    let presence = async {
                        if rejoin {
                            Ok(())
                        } else {
                            node.bus.presence_join(room, user, conn).await
                        }
                    };
                    let (added, read) = tokio::join!(
                        presence,
                        crate::commands::history_after(node, room, *offset, node.cfg.max_recover)
                    );
                    added?;
                    read
                }
            }
        };
        match read.await {
            Ok(h) => {
                self.mailbox.floors(|f| f.raise(&key, h.offset));
                Ok(h)
            }
            Err(e) => {
                if !rejoin {
                    node.hub.leave(room, conn);
                    // Redis answered: undo the presence add it may have applied (removing
                    // an entry that is not there is silent). Redis out of reach: the
                    // entry, if it was added, expires unrefreshed, and the refusal is not
                    // held up by a second timeout.
                    if !matches!(e, BusError::Unavailable(_)) {
                        let _ = node.bus.presence_leave(room, user, conn).await;
                    }
                }
                Err(JoinRefused::Bus(e))
            }
        }
    }

    /// A join answered as a `joined` message (or the error).
    pub async fn join_reply(&self, active: &mut Active, args: JoinArgs) -> ServerMessage {
        match self.join(active, &args).await {
            Ok(h) => ServerMessage::Joined {
                room: args.room,
                offset: h.offset,
                epoch: h.epoch,
                recovered: h.recovered,
                messages: h.messages,
                id: args.id,
            },
            Err(e) => e.reply(args.id),
        }
    }

    /// Leaves a room this connection had joined: live delivery and presence.
    pub async fn leave(&self, active: &mut Active, room: &RoomName) {
        self.mailbox.floors(|f| f.remove(room));
        self.node.hub.leave(room, &self.id);
        if let Err(e) = self
            .node
            .bus
            .presence_leave(room, &active.who.user, &self.id)
            .await
        {
            tracing::warn!(%room, error = %e, "presence leave failed; the entry will expire");
        }
    }
}
