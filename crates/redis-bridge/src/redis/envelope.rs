//! Building envelopes (PROTOCOL.md section 6) for the scripts, and reading them back
//! from pub/sub payloads and history entries.

use crate::bus::BusError;
use roomcast_protocol::{BusMessage, Envelope, Publication};

/// A room message envelope cut for the publish script: `head` is everything before the
/// `msg` map's header, `body` the map's fields, `fields` how many there are. The script
/// appends `offset` and `epoch` and writes a header counting them.
pub(crate) struct SplitEnvelope {
    pub(crate) head: Vec<u8>,
    pub(crate) fields: u8,
    pub(crate) body: Vec<u8>,
}

/// Encodes `p` (without offset and epoch) from `node`, split for the publish script.
pub(crate) fn split_message(
    node: &str,
    p: &Publication,
    skip: Option<&str>,
) -> Result<SplitEnvelope, BusError> {
    let msg = BusMessage::Message {
        room: p.room.clone(),
        event: p.event.clone(),
        data: p.data.clone(),
        from: p.from.clone(),
        offset: None,
        ts: p.ts,
        epoch: None,
        skip: skip.map(str::to_string),
    };
    let inner = rmp_serde::to_vec_named(&msg)
        .map_err(|e| BusError::Internal(format!("encode message: {e}")))?;
    let full = Envelope::new(node, msg)
        .to_msgpack()
        .map_err(|e| BusError::Internal(format!("encode envelope: {e}")))?;
    // `msg` is the envelope's last field, so its encoding ends the envelope; its header
    // is a fixmap (at most 9 fields here), which leaves room for the two the script adds.
    let header = inner.first().copied().unwrap_or(0);
    let fields = header & 0x0f;
    if !full.ends_with(&inner) || header & 0xf0 != 0x80 || fields + 2 > 15 {
        return Err(BusError::Internal("unexpected envelope layout".into()));
    }
    let head = full[..full.len() - inner.len()].to_vec();
    let body = inner[1..].to_vec();
    Ok(SplitEnvelope { head, fields, body })
}

/// Encodes any envelope from `node`.
pub(crate) fn encode(node: &str, msg: BusMessage) -> Result<Vec<u8>, BusError> {
    Envelope::new(node, msg)
        .to_msgpack()
        .map_err(|e| BusError::Internal(format!("encode envelope: {e}")))
}

/// A room message read from the bus or from history.
#[derive(Debug)]
pub(crate) struct RoomMessage {
    pub(crate) publication: Publication,
    pub(crate) epoch: Option<String>,
    pub(crate) skip: Option<String>,
}

/// Decodes a room message envelope; `None` when it is not one.
pub(crate) fn room_message(msg: BusMessage) -> Option<RoomMessage> {
    let publication = msg.to_publication()?;
    match msg {
        BusMessage::Message { epoch, skip, .. } => Some(RoomMessage {
            publication,
            epoch,
            skip,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_protocol::{EventName, RoomName, UserId};

    /// What the publish script does, in Rust: the spliced bytes must decode to the
    /// message with its offset and epoch.
    #[test]
    fn splice_decodes() {
        let p = Publication {
            room: RoomName::new("r").expect("room"),
            event: EventName::new("e").expect("event"),
            data: serde_json::json!({"a": [1, 2.5, {}], "b": null, "c": {}}),
            from: UserId::new("u").expect("user"),
            offset: None,
            ts: 7,
        };
        let s = split_message("n1", &p, Some("c1")).expect("split");
        let mut bytes = s.head.clone();
        bytes.push(0x80 + s.fields + 2);
        bytes.extend_from_slice(&s.body);
        bytes.extend(rmp_serde::to_vec("offset").expect("k"));
        bytes.extend(rmp_serde::to_vec(&42u64).expect("v"));
        bytes.extend(rmp_serde::to_vec("epoch").expect("k"));
        bytes.extend(rmp_serde::to_vec("abc").expect("v"));
        let env = Envelope::from_msgpack(&bytes).expect("decode");
        assert_eq!(env.node, "n1");
        let m = room_message(env.msg).expect("room message");
        assert_eq!(m.publication.offset, Some(42));
        assert_eq!(m.publication.data, p.data);
        assert_eq!(m.epoch.as_deref(), Some("abc"));
        assert_eq!(m.skip.as_deref(), Some("c1"));
    }
}
