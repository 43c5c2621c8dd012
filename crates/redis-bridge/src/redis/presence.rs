//! Presence in Redis (DESIGN-NOTES.md section 6): who is in a room, cluster-wide.
//!
//! Per room, a ZSET of entries `<user>\x1f<conn>\x1f<node>` scored by their expiry time
//! (Redis `TIME`, so node clocks do not matter) and a HASH of connections per user. The
//! scripts publish `member_joined` on a user's first connection and `member_left` on
//! the last, so events are about users, not connections. Every entry is owned by the
//! node that added it: the node re-adds its entries every `presence_ttl / 3` (which also
//! heals entries lost with a Redis restart), and sweeps expired entries (a dead node's)
//! of the rooms it watches; a read sweeps the room first.

use super::conn::Conn;
use super::keys::Keys;
use super::{envelope, OpError, Shared};
use crate::bus::{BusError, PresenceSnapshot};
use crate::common::lock;
use futures_util::future::join_all;
use roomcast_protocol::{BusMessage, Count, Member, MemberChange, RoomName, UserId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Expired entries a sweep removes at most, per room and run.
const SWEEP_MAX: usize = 1000;
/// A room with at most `limit` x this many users (and at least [`FULL_READ_MIN`]) is read
/// whole, so that its first `limit` members by name are listed; a bigger one is sampled.
const FULL_READ_FACTOR: usize = 4;
/// Rooms up to this many users are always read whole.
const FULL_READ_MIN: usize = 1000;
/// Scripts sent in one pipelined batch by the refresher.
const BATCH: usize = 256;

/// This node's presence entries: (room, connection) -> user. Std mutex: held for map
/// updates and snapshots only.
#[derive(Default)]
pub(crate) struct LocalPresence {
    entries: Mutex<HashMap<(RoomName, String), UserId>>,
}

fn key_ttl_ms(shared: &Shared) -> u64 {
    Shared::ms(shared.cfg.presence_ttl)
        .saturating_mul(3)
        .max(1000)
}

/// A call of a presence script on `room`, with the keys every one takes: the room's
/// entries, its users and its channel (for member events).
fn invocation<'a>(
    shared: &Shared,
    script: &'a redis::Script,
    room: &RoomName,
) -> redis::ScriptInvocation<'a> {
    let mut inv = script.prepare_invoke();
    presence_keys(shared, &mut inv, room);
    inv
}

/// The keys every presence step of `room` takes: its entries, its users and its channel
/// (for member events).
fn presence_keys(shared: &Shared, inv: &mut redis::ScriptInvocation<'_>, room: &RoomName) {
    inv.key(shared.keys.presence(room))
        .key(shared.keys.presence_users(room))
        .key(shared.keys.room_channel(room));
}

/// A call of a script that sweeps `room`'s expired entries first (read, sweep): which
/// node sweeps, the room (for member events) and how many entries at most.
fn sweeping<'a>(
    shared: &Shared,
    script: &'a redis::Script,
    room: &RoomName,
) -> redis::ScriptInvocation<'a> {
    let mut inv = invocation(shared, script, room);
    inv.arg(&shared.cfg.node_id)
        .arg(room.as_str())
        .arg(SWEEP_MAX);
    inv
}

/// A change of one presence entry.
#[derive(Clone, Copy)]
enum Change {
    /// Add (or refresh) the entry; `member_joined` on the user's first connection.
    Join,
    /// Remove the entry; `member_left` on the user's last connection.
    Leave,
}

/// Runs the join or leave script for one entry (join also refreshes).
async fn run_script(
    shared: &Shared,
    conn: &mut Conn,
    change: Change,
    room: &RoomName,
    user: &UserId,
    conn_id: &str,
) -> Result<(), OpError> {
    let script = match change {
        Change::Join => &shared.scripts.presence_join,
        Change::Leave => &shared.scripts.presence_leave,
    };
    let mut inv = invocation(shared, script, room);
    match change {
        Change::Join => add_args(shared, &mut inv, room, user, conn_id)?,
        Change::Leave => {
            inv.arg(Keys::presence_entry(user, conn_id, &shared.cfg.node_id))
                .arg(user.as_str())
                .arg(member_event(shared, MemberChange::Left, room, user)?);
        }
    }
    inv.invoke_async::<i64>(conn).await?;
    Ok(())
}

/// The presence add's arguments (after its keys): the entry, the user, the entry's ttl,
/// the `member_joined` envelope and the keys' ttl.
fn add_args(
    shared: &Shared,
    inv: &mut redis::ScriptInvocation<'_>,
    room: &RoomName,
    user: &UserId,
    conn_id: &str,
) -> Result<(), OpError> {
    inv.arg(Keys::presence_entry(user, conn_id, &shared.cfg.node_id))
        .arg(user.as_str())
        .arg(Shared::ms(shared.cfg.presence_ttl))
        .arg(member_event(shared, MemberChange::Joined, room, user)?)
        .arg(key_ttl_ms(shared));
    Ok(())
}

/// The envelope a presence script publishes on a user's first connection (joined) or
/// last (left).
fn member_event(
    shared: &Shared,
    change: MemberChange,
    room: &RoomName,
    user: &UserId,
) -> Result<Vec<u8>, OpError> {
    let event = BusMessage::member(change, room.clone(), user.clone());
    envelope::encode(&shared.cfg.node_id, event).map_err(|e| OpError::Bad(e.to_string()))
}

/// One join's presence part of the join script's call (see `scripts::JOIN`): its keys
/// (the room's entries, users and channel) and arguments (entry, user, envelope).
pub(super) fn join_part(
    shared: &Shared,
    inv: &mut redis::ScriptInvocation<'_>,
    room: &RoomName,
    user: &UserId,
    conn_id: &str,
) -> Result<(), OpError> {
    presence_keys(shared, inv, room);
    inv.arg(Keys::presence_entry(user, conn_id, &shared.cfg.node_id))
        .arg(user.as_str())
        .arg(member_event(shared, MemberChange::Joined, room, user)?);
    Ok(())
}

/// The join script's arguments every join of a batch shares, presence's part: the entry's
/// ttl and the keys' ttl.
pub(super) fn join_shared_args(shared: &Shared, inv: &mut redis::ScriptInvocation<'_>) {
    inv.arg(Shared::ms(shared.cfg.presence_ttl))
        .arg(key_ttl_ms(shared));
}

/// Notes a connection's entry as this node's (refreshed from now on, removed on close);
/// `false` forgets it again (a join that failed: if Redis did apply it, it expires).
pub(super) fn note_local(
    shared: &Shared,
    room: &RoomName,
    user: &UserId,
    conn_id: &str,
    held: bool,
) {
    let key = (room.clone(), conn_id.to_string());
    if held {
        lock(&shared.presence.entries).insert(key, user.clone());
    } else {
        lock(&shared.presence.entries).remove(&key);
    }
}

/// Adds a connection to a room's presence. On failure the entry is forgotten locally
/// too (if Redis did apply it, it expires unrefreshed).
pub(crate) async fn join(
    shared: &Shared,
    room: &RoomName,
    user: &UserId,
    conn_id: &str,
) -> Result<(), BusError> {
    note_local(shared, room, user, conn_id, true);
    let r = shared
        .run("presence join", async {
            let mut c = shared.conn().await?;
            run_script(shared, &mut c, Change::Join, room, user, conn_id).await
        })
        .await;
    if r.is_err() {
        note_local(shared, room, user, conn_id, false);
    }
    r
}

/// Removes a connection from a room's presence.
pub(crate) async fn leave(
    shared: &Shared,
    room: &RoomName,
    user: &UserId,
    conn_id: &str,
) -> Result<(), BusError> {
    lock(&shared.presence.entries).remove(&(room.clone(), conn_id.to_string()));
    shared
        .run("presence leave", async {
            let mut c = shared.conn().await?;
            run_script(shared, &mut c, Change::Leave, room, user, conn_id).await
        })
        .await
}

/// Who is in a room (after sweeping its expired entries).
pub(crate) async fn read(
    shared: &Shared,
    room: &RoomName,
    limit: usize,
) -> Result<PresenceSnapshot, BusError> {
    let mut inv = sweeping(shared, &shared.scripts.presence_read, room);
    inv.arg(limit.saturating_mul(FULL_READ_FACTOR).max(FULL_READ_MIN))
        .arg(limit.max(1));
    let (users, connections, flat): (u64, u64, Vec<(String, i64)>) = shared
        .run("presence", async {
            let mut c = shared.conn().await?;
            Ok(inv.invoke_async(&mut c).await?)
        })
        .await?;
    let mut members: Vec<Member> = flat
        .into_iter()
        .filter_map(|(u, n)| {
            let user = UserId::new(&u).ok()?;
            Some(Member {
                user,
                connections: u32::try_from(n.max(0)).unwrap_or(u32::MAX),
            })
        })
        .collect();
    members.sort_by(|a, b| a.user.cmp(&b.user));
    members.truncate(limit);
    Ok(PresenceSnapshot {
        members,
        count: Count { users, connections },
    })
}

/// Removes every entry of this node (on close), publishing member_left as needed.
pub(crate) async fn remove_all(shared: &Shared) {
    let entries: Vec<((RoomName, String), UserId)> =
        lock(&shared.presence.entries).drain().collect();
    if entries.is_empty() {
        return;
    }
    let r = shared
        .run("presence cleanup", async {
            let c = shared.conn().await?;
            for chunk in entries.chunks(BATCH) {
                let results =
                    join_all(chunk.iter().map(|((room, conn_id), user)| {
                        let mut c = c.clone();
                        async move {
                            run_script(shared, &mut c, Change::Leave, room, user, conn_id).await
                        }
                    }))
                    .await;
                for r in results {
                    r?;
                }
            }
            Ok(())
        })
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "removing presence on close failed; the entries will expire");
    }
}

/// The refresher: every `presence_ttl / 3`, re-adds this node's entries and sweeps the
/// watched rooms.
pub(crate) async fn keep_alive(shared: Arc<Shared>) {
    let every = (shared.cfg.presence_ttl / 3).max(Duration::from_millis(10));
    // The first round one period after the start: a new bus holds no entries yet.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = refresh(&shared).await {
            tracing::debug!(error = %e, "presence refresh failed");
        }
        if let Err(e) = sweep_watched(&shared).await {
            tracing::debug!(error = %e, "presence sweep failed");
        }
    }
    tracing::debug!("presence refresher stopped");
}

async fn refresh(shared: &Shared) -> Result<(), BusError> {
    let entries: Vec<((RoomName, String), UserId)> = lock(&shared.presence.entries)
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for chunk in entries.chunks(BATCH) {
        shared
            .run("presence refresh", async {
                let c = shared.conn().await?;
                let results = join_all(chunk.iter().map(|((room, conn_id), user)| {
                    let mut c = c.clone();
                    async move {
                        // Skip entries removed meanwhile (a leave racing the refresh).
                        let still = lock(&shared.presence.entries)
                            .contains_key(&(room.clone(), conn_id.clone()));
                        if still {
                            run_script(shared, &mut c, Change::Join, room, user, conn_id).await
                        } else {
                            Ok(())
                        }
                    }
                }))
                .await;
                results.into_iter().collect::<Result<Vec<()>, OpError>>()
            })
            .await?;
    }
    Ok(())
}

async fn sweep_watched(shared: &Shared) -> Result<(), BusError> {
    let rooms = shared.tracking.rooms();
    for chunk in rooms.chunks(BATCH) {
        shared
            .run("presence sweep", async {
                let c = shared.conn().await?;
                let results = join_all(chunk.iter().map(|room| {
                    let mut c = c.clone();
                    async move {
                        let inv = sweeping(shared, &shared.scripts.presence_sweep, room);
                        inv.invoke_async::<i64>(&mut c).await.map_err(OpError::from)
                    }
                }))
                .await;
                results.into_iter().collect::<Result<Vec<i64>, OpError>>()
            })
            .await?;
    }
    Ok(())
}
