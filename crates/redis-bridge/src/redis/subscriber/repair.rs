//! Gap repair: reading the messages pub/sub lost from a room's stream (the publish script
//! appends each one there before it publishes it) and delivering them in order, or, when
//! the stream no longer holds them all, telling the room's members (`BusEvent::Gap`).

use crate::bus::{BusEvent, BusStats, EventSink};
use crate::redis::envelope::{self, RoomMessage};
use crate::redis::Shared;
use roomcast_protocol::{Envelope, RoomName};
use std::sync::Arc;

/// One XRANGE entry: id and field/value pairs.
pub(super) type StreamEntry = (String, Vec<(String, Vec<u8>)>);
/// Delivers one room message to the node.
pub(super) fn deliver_room(delivery: &dyn EventSink, m: RoomMessage) {
    delivery.deliver(BusEvent::Message {
        publication: Arc::new(m.publication),
        except_conn: m.skip,
    });
}

/// Counts and logs a loss that cannot be repaired and tells the room's members.
pub(super) fn lost(shared: &Shared, delivery: &dyn EventSink, room: &RoomName, why: &str) {
    BusStats::incr(&shared.stats.gaps_lost);
    tracing::warn!(%room, why, "messages lost on the bus cannot be recovered");
    delivery.deliver(BusEvent::Gap { room: room.clone() });
}

/// Reads `from..=to` of `epoch` from the room's stream and delivers it, or reports a gap.
pub(super) async fn repair(
    shared: &Shared,
    delivery: &dyn EventSink,
    room: &RoomName,
    from: u64,
    to: u64,
    epoch: &str,
) {
    match read_range(shared, room, from, to, epoch).await {
        Ok(messages) => {
            BusStats::incr(&shared.stats.gap_repairs);
            tracing::info!(%room, from, to, "gap on the bus repaired from history");
            for m in messages {
                deliver_room(delivery, m);
            }
        }
        Err(why) => lost(shared, delivery, room, &why),
    }
}

/// The messages `from..=to` of `epoch`, complete, or why not.
async fn read_range(
    shared: &Shared,
    room: &RoomName,
    from: u64,
    to: u64,
    epoch: &str,
) -> Result<Vec<RoomMessage>, String> {
    let count = to + 1 - from;
    let most = (shared.cfg.history_size as u64).max(shared.cfg.max_recover as u64);
    if count > most {
        return Err(format!("{count} messages missing, more than history holds"));
    }
    let key = shared.keys.history(room);
    let entries: Vec<StreamEntry> = shared
        .run("gap repair", async {
            let mut c = shared.conn().await?;
            let v = redis::cmd("XRANGE")
                .arg(&key)
                .arg(format!("{from}-0"))
                .arg(format!("{to}-0"))
                .arg("COUNT")
                .arg(count)
                .query_async(&mut c)
                .await?;
            Ok(v)
        })
        .await
        .map_err(|e| e.to_string())?;
    if entries.len() as u64 != count {
        return Err(format!(
            "history holds {} of {count} missing messages",
            entries.len()
        ));
    }
    let mut out = Vec::with_capacity(entries.len());
    for (i, (_, fields)) in entries.into_iter().enumerate() {
        let expected = from + i as u64;
        let m = fields
            .into_iter()
            .find(|(k, _)| k == "d")
            .and_then(|(_, d)| Envelope::from_msgpack(&d).ok())
            .and_then(|env| envelope::room_message(env.msg))
            .ok_or_else(|| "undecodable history entry".to_string())?;
        if m.publication.offset != Some(expected) || m.epoch.as_deref() != Some(epoch) {
            return Err("history does not match (epoch changed)".into());
        }
        out.push(m);
    }
    Ok(out)
}
