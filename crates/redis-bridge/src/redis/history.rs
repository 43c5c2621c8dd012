//! Reading a room's history (the history script: the room's meta and the end of its
//! stream, or what a client missed since a position) and noting it as the room's
//! baseline when the room is watched.

use super::bad_input::bad;
use super::{envelope, Shared};
use crate::bus::{BusError, History, HistoryQuery};
use crate::common::random_epoch;
use roomcast_protocol::{Envelope, RoomName};

/// A room's history as `query` asks (docs/protocol.md section 3).
pub(super) async fn read(
    shared: &Shared,
    room: &RoomName,
    query: HistoryQuery,
) -> Result<History, BusError> {
    let mut inv = shared.scripts.history.prepare_invoke();
    inv.key(shared.keys.meta(room))
        .key(shared.keys.history(room));
    args(shared, &mut inv, &query);
    let answer: Answer = shared
        .run("history", async {
            let mut c = shared.conn().await?;
            Ok(inv.invoke_async(&mut c).await?)
        })
        .await?;
    Ok(decode(shared, room, answer))
}

/// What the history read answers: epoch, offset, recovered (0/1), envelopes.
pub(super) type Answer = (String, u64, u8, Vec<Vec<u8>>);

/// The history read's arguments (after its keys: meta, history).
fn args(shared: &Shared, inv: &mut redis::ScriptInvocation<'_>, query: &HistoryQuery) {
    inv.arg(random_epoch())
        .arg(Shared::ms(shared.cfg.history_ttl))
        .arg(shared.cfg.history_size);
    query_args(inv, query);
    inv.arg(shared.cfg.max_recover);
}

/// What a read asks for, as the history function of the scripts takes it: since offset
/// ('' for none), since epoch, limit. Also one join's part of the join script's arguments.
pub(super) fn query_args(inv: &mut redis::ScriptInvocation<'_>, query: &HistoryQuery) {
    inv.arg(
        query
            .since
            .as_ref()
            .map(|s| s.offset.to_string())
            .unwrap_or_default(),
    )
    .arg(query.since.as_ref().map(|s| s.epoch.as_str()).unwrap_or(""))
    .arg(query.limit);
}

/// The history read's answer as a [`History`]; notes the room's baseline.
pub(super) fn decode(shared: &Shared, room: &RoomName, answer: Answer) -> History {
    let (epoch, offset, recovered, entries) = answer;
    // A member of a watched room now holds this epoch (see `Tracking::note_read`).
    shared.tracking.note_read(room, offset, &epoch);
    let mut messages = Vec::with_capacity(entries.len());
    for raw in entries {
        match Envelope::from_msgpack(&raw)
            .ok()
            .and_then(|e| envelope::room_message(e.msg))
        {
            Some(m) => messages.push(m.publication),
            None => bad(
                shared,
                "undecodable history entry skipped",
                room.as_str(),
                "",
            ),
        }
    }
    History {
        epoch,
        offset,
        messages,
        recovered: recovered == 1,
    }
}
