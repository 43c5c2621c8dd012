//! What one pub/sub message becomes. Every envelope is decoded and checked against its
//! channel; a room message with an offset is planned against its room's track
//! ([`Plan`]): delivered, dropped as a duplicate, or first repaired (a gap) or preceded
//! by a loss (a new epoch). Whatever would move a room's baseline other than one step
//! forward is first checked against the room's stream, so that forged input can neither
//! make the node report a loss nor set a baseline that would make real messages look
//! like one.

use super::repair::{deliver_room, lost, repair, StreamEntry};
use crate::bus::{BusError, BusEvent, BusStats, EventSink};
use crate::redis::bad_input::bad;
use crate::redis::envelope::{self, RoomMessage};
use crate::redis::keys::Channel;
use crate::redis::tracking::Track;
use crate::redis::{OpError, Shared};
use roomcast_protocol::{close, BusMessage, Envelope, MemberChange, RoomName};
use std::sync::Arc;

/// What to do with a room message.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Deliver; the room's track does not change.
    Deliver,
    /// Deliver and record it as the last one.
    Advance,
    /// The first message of a room with no known epoch: deliver and record it, once the
    /// stream says it is real (it sets the baseline every later message is judged by).
    First,
    /// Already delivered (by a repair).
    Drop,
    /// Messages `from..offset` are missing: read them from the stream first.
    Repair { from: u64 },
    /// A message of a new epoch: the room's history was lost and started again (expired
    /// after `history_ttl` without publishes, flushed, or Redis restarted). Local members
    /// hold offsets of the old epoch, which the new one's mean nothing to: the loss is
    /// signalled (`BusEvent::Gap`) before anything of the new epoch is delivered, then
    /// the new epoch is delivered complete from its offset 1.
    NewEpoch,
}

impl Plan {
    /// Whether the message must be checked against the room's stream before it is
    /// acted on: whatever would move the room's baseline other than one step forward
    /// in a known epoch (a forged offset must not make the node report a loss, nor
    /// set a baseline that would make the real messages look like one).
    fn needs_check(&self) -> bool {
        matches!(self, Plan::First | Plan::Repair { .. } | Plan::NewEpoch)
    }
}

/// What to do with a message at `offset` of `epoch`, given the room's track.
fn plan(track: Option<&Track>, offset: u64, epoch: &str) -> Plan {
    match track {
        None => Plan::Deliver,
        Some(Track::Pending) => Plan::First,
        Some(Track::Baseline {
            offset: base,
            epoch: None,
        }) => step(*base, offset, Plan::Deliver, Plan::First),
        Some(Track::Baseline { epoch: Some(e), .. } | Track::Known { epoch: e, .. })
            if e != epoch =>
        {
            Plan::NewEpoch
        }
        Some(Track::Baseline { offset: base, .. }) => {
            step(*base, offset, Plan::Deliver, Plan::Advance)
        }
        Some(Track::Known { offset: last, .. }) => step(*last, offset, Plan::Drop, Plan::Advance),
    }
}

/// Plans a message at `offset` of the room's epoch against the last offset the room's
/// track holds: `old` at or before it, `next` right after it, a repair beyond.
fn step(last: u64, offset: u64, old: Plan, next: Plan) -> Plan {
    if offset <= last {
        old
    } else if offset == last + 1 {
        next
    } else {
        Plan::Repair { from: last + 1 }
    }
}

/// What became of one pub/sub message.
pub(super) enum Handled {
    /// Delivered or dropped; for a room message with an offset that was delivered, its
    /// node and stamp (the lag check).
    Done(Option<(String, u64)>),
    /// A message could not be checked against Redis: let the connection go and
    /// re-synchronise every watched room from history (which delivers it if it is real).
    Resync(&'static str),
}

/// Decodes one pub/sub message and delivers what it carries. Nothing read here is
/// trusted more than a client frame (docs/protocol.md section 6): what is malformed, on the
/// wrong channel, forged or out of range is counted, logged at a rate limit and dropped;
/// it never closes a client.
pub(super) async fn on_message(
    shared: &Shared,
    delivery: &dyn EventSink,
    channel: &str,
    payload: &[u8],
) -> Handled {
    let env = match Envelope::from_msgpack(payload) {
        Ok(env) => env,
        Err(e) => {
            bad(
                shared,
                "undecodable or invalid envelope",
                channel,
                &e.message,
            );
            return Handled::Done(None);
        }
    };
    BusStats::incr(&shared.stats.messages_received);
    let source = channel;
    let channel = shared.keys.parse_channel(channel);
    let node = env.node;
    match (channel, env.msg) {
        (Channel::Room(name), msg @ BusMessage::Message { .. }) => {
            let Some(m) = envelope::room_message(msg) else {
                bad(shared, "not a room message", source, "");
                return Handled::Done(None);
            };
            if m.publication.room.as_str() != name {
                bad(shared, "room message on another room's channel", source, "");
                return Handled::Done(None);
            }
            let stamp = m.publication.offset.map(|_| (node, m.publication.ts));
            match on_room_message(shared, delivery, m, payload).await {
                Ok(true) => Handled::Done(stamp),
                Ok(false) => Handled::Done(None),
                Err(why) => Handled::Resync(why),
            }
        }
        (Channel::Room(name), BusMessage::MemberJoined { room, user }) if room.as_str() == name => {
            delivery.deliver(BusEvent::Member {
                change: MemberChange::Joined,
                room,
                user,
            });
            Handled::Done(None)
        }
        (Channel::Room(name), BusMessage::MemberLeft { room, user }) if room.as_str() == name => {
            delivery.deliver(BusEvent::Member {
                change: MemberChange::Left,
                room,
                user,
            });
            Handled::Done(None)
        }
        (Channel::User(name), msg @ BusMessage::Direct { .. }) => {
            let BusMessage::Direct { ref to, .. } = msg else {
                return Handled::Done(None);
            };
            if to.as_str() != name {
                bad(
                    shared,
                    "direct message on another user's channel",
                    source,
                    "",
                );
                return Handled::Done(None);
            }
            let to = to.clone();
            if let Some(message) = msg.into_direct() {
                delivery.deliver(BusEvent::Direct {
                    to,
                    message: Arc::new(message),
                });
            }
            Handled::Done(None)
        }
        (Channel::Control, BusMessage::Disconnect { user, code }) => {
            // Only a code a client can receive and that means "disconnected": never one
            // that RFC 6455 forbids on the wire (0, 1, 1005, ...) or a frame error.
            if close::valid_for_disconnect(code) {
                delivery.deliver(BusEvent::Disconnect { user, code });
            } else {
                BusStats::incr(&shared.stats.bad_controls);
                bad(
                    shared,
                    "disconnect with a close code a disconnect may not carry",
                    source,
                    &code.to_string(),
                );
            }
            Handled::Done(None)
        }
        _ => {
            bad(
                shared,
                "message of a kind its channel does not carry",
                source,
                "",
            );
            Handled::Done(None)
        }
    }
}

/// Delivers a room message in its room's order, repairing gaps and signalling lost
/// history first. `Ok(false)`: dropped as forged (counted); `Err`: it could not be
/// checked (Redis failed), the subscription must re-synchronise.
async fn on_room_message(
    shared: &Shared,
    delivery: &dyn EventSink,
    m: RoomMessage,
    payload: &[u8],
) -> Result<bool, &'static str> {
    if !shared.tracking.holds(&m.publication.room) {
        // No local member (a room is watched from its first local join, under the hub's
        // lock): pattern mode receives every room's messages, rooms mode only those of a
        // left room whose channel still lingers. Counted, to show what each mode costs.
        BusStats::incr(&shared.stats.unwanted_room_messages);
    }
    let Some(offset) = m.publication.offset else {
        // volatile or emitter message: no order to keep, and it moves nothing
        deliver_room(delivery, m);
        return Ok(true);
    };
    let room = m.publication.room.clone();
    // The envelope decoder refuses an offset without an epoch.
    let Some(epoch) = m.epoch.clone() else {
        bad(shared, "an offset without an epoch", room.as_str(), "");
        return Ok(false);
    };
    let plan = shared.tracking.with(&room, |t| plan(t, offset, &epoch));
    if plan.needs_check() {
        match written_by_the_script(shared, &room, offset, &epoch, payload).await {
            Ok(true) => {}
            Ok(false) => {
                BusStats::incr(&shared.stats.forged_offsets);
                bad(
                    shared,
                    "room message whose offset or epoch the room's history does not hold",
                    room.as_str(),
                    &format!("offset {offset} epoch {epoch}"),
                );
                return Ok(false);
            }
            Err(e) => {
                tracing::warn!(%room, error = %e, "cannot check a room message against history");
                return Err("cannot check a room message against history");
            }
        }
    }
    match plan {
        Plan::Deliver => deliver_room(delivery, m),
        Plan::Drop => tracing::trace!(%room, offset, "duplicate dropped"),
        Plan::Advance | Plan::First => {
            deliver_room(delivery, m);
            shared
                .tracking
                .set(&room, Track::delivered_live(offset, epoch, payload));
        }
        Plan::Repair { from } => {
            repair(shared, delivery, &room, from, offset - 1, &epoch).await;
            deliver_room(delivery, m);
            shared
                .tracking
                .set(&room, Track::delivered_live(offset, epoch, payload));
        }
        Plan::NewEpoch => {
            // The loss first: no member of the old epoch may see an offset of the new.
            lost(shared, delivery, &room, "history lost: a new epoch started");
            if offset > 1 {
                repair(shared, delivery, &room, 1, offset - 1, &epoch).await;
            }
            deliver_room(delivery, m);
            shared
                .tracking
                .set(&room, Track::delivered_live(offset, epoch, payload));
        }
    }
    Ok(true)
}

/// Whether a room message is one the publish script wrote: the script XADDs the exact
/// bytes it PUBLISHes (at `<offset>-0`, before the PUBLISH, atomically), so a real
/// message is in the room's stream, or, if trimmed since, at or below the room's
/// offset in the same epoch. An offset ahead of the room's, an epoch the room does not
/// have, or other bytes at that offset are not the script's.
async fn written_by_the_script(
    shared: &Shared,
    room: &RoomName,
    offset: u64,
    epoch: &str,
    payload: &[u8],
) -> Result<bool, BusError> {
    let id = format!("{offset}-0");
    let mut p = redis::pipe();
    p.cmd("XRANGE")
        .arg(shared.keys.history(room))
        .arg(&id)
        .arg(&id);
    p.cmd("HMGET").arg(shared.keys.meta(room)).arg("e").arg("s");
    let (entries, (meta_epoch, meta_offset)): (Vec<StreamEntry>, (Option<String>, Option<u64>)) =
        shared
            .run("check a room message", async {
                let mut c = shared.conn().await?;
                p.query_async(&mut c).await.map_err(OpError::from)
            })
            .await?;
    if let Some((_, fields)) = entries.first() {
        return Ok(fields
            .iter()
            .any(|(k, d)| k == "d" && d.as_slice() == payload));
    }
    Ok(meta_epoch.as_deref() == Some(epoch) && meta_offset.is_some_and(|s| offset <= s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(offset: u64) -> Track {
        Track::Known {
            offset,
            epoch: "e".into(),
            sig: None,
        }
    }

    #[test]
    fn plans() {
        assert_eq!(plan(None, 5, "e"), Plan::Deliver);
        assert_eq!(plan(Some(&Track::Pending), 5, "e"), Plan::First);
        assert_eq!(plan(Some(&known(4)), 5, "e"), Plan::Advance);
        assert_eq!(plan(Some(&known(5)), 5, "e"), Plan::Drop);
        assert_eq!(plan(Some(&known(2)), 5, "e"), Plan::Repair { from: 3 });
        assert_eq!(
            plan(Some(&known(2)), 1, "f"),
            Plan::NewEpoch,
            "a new history"
        );
        assert_eq!(plan(Some(&known(9)), 3, "f"), Plan::NewEpoch);
        let soft = Track::Baseline {
            offset: 4,
            epoch: Some("e".into()),
        };
        assert_eq!(plan(Some(&soft), 3, "e"), Plan::Deliver);
        assert_eq!(plan(Some(&soft), 5, "e"), Plan::Advance);
        assert_eq!(plan(Some(&soft), 7, "e"), Plan::Repair { from: 5 });
        assert_eq!(plan(Some(&soft), 5, "f"), Plan::NewEpoch);
        let empty = Track::Baseline {
            offset: 0,
            epoch: None,
        };
        assert_eq!(plan(Some(&empty), 1, "x"), Plan::First);
        assert_eq!(plan(Some(&empty), 3, "x"), Plan::Repair { from: 1 });
        // only one step forward in a known epoch goes unchecked
        for (p, checked) in [
            (Plan::Deliver, false),
            (Plan::Advance, false),
            (Plan::Drop, false),
            (Plan::First, true),
            (Plan::Repair { from: 1 }, true),
            (Plan::NewEpoch, true),
        ] {
            assert_eq!(p.needs_check(), checked, "{p:?}");
        }
    }
}
