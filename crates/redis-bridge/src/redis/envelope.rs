//! Building envelopes (docs/protocol.md section 6) for the scripts, and reading them back
//! from pub/sub payloads and history entries.

use crate::bus::BusError;
use roomcast_protocol::{BusMessage, Envelope, Publication, RoomName, UserId};

/// A room message cut for the publish script: the `msg` map's fields and how many there
/// are. The script puts the node's envelope head before them, appends `offset` and
/// `epoch`, and writes a header counting them.
pub(crate) struct SplitEnvelope {
    /// The `msg` map's field count (its header, rewritten by the script).
    pub(crate) fields: u8,
    /// The `msg` map as encoded: its header byte, then its fields.
    encoded: Vec<u8>,
}

impl SplitEnvelope {
    /// The `msg` map's fields, without its header.
    pub(crate) fn body(&self) -> &[u8] {
        self.encoded.get(1..).unwrap_or_default()
    }
}

/// Everything an envelope from `node` holds before its `msg` map's header: the same
/// for every message of a node, so it is built once (and checked against a whole
/// envelope's encoding, so that splicing stays right if the envelope changes).
pub(crate) fn envelope_head(node: &str) -> Result<Vec<u8>, BusError> {
    let probe = BusMessage::Message {
        room: RoomName::new("r").map_err(|e| BusError::Internal(e.to_string()))?,
        event: roomcast_protocol::EventName::new("e")
            .map_err(|e| BusError::Internal(e.to_string()))?,
        data: serde_json::Value::Null,
        from: UserId::new("u").map_err(|e| BusError::Internal(e.to_string()))?,
        offset: None,
        ts: 0,
        epoch: None,
        skip: None,
    };
    let inner = rmp_serde::to_vec_named(&probe)
        .map_err(|e| BusError::Internal(format!("encode message: {e}")))?;
    let full = Envelope::new(node, probe)
        .to_msgpack()
        .map_err(|e| BusError::Internal(format!("encode envelope: {e}")))?;
    // `msg` is the envelope's last field, so its encoding ends the envelope.
    if !full.ends_with(&inner) {
        return Err(BusError::Internal("unexpected envelope layout".into()));
    }
    Ok(full[..full.len() - inner.len()].to_vec())
}

/// Encodes `p` (without offset and epoch), split for the publish script, which puts
/// the node's [`envelope_head`] before it and the offset and epoch after it.
pub(crate) fn split_message(
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
    let encoded = rmp_serde::to_vec_named(&msg)
        .map_err(|e| BusError::Internal(format!("encode message: {e}")))?;
    // Its header is a fixmap (at most 9 fields here), which leaves room for the two the
    // script adds.
    let header = encoded.first().copied().unwrap_or(0);
    let fields = header & 0x0f;
    if header & 0xf0 != 0x80 || fields + 2 > 15 {
        return Err(BusError::Internal("unexpected envelope layout".into()));
    }
    Ok(SplitEnvelope { fields, encoded })
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
    let (publication, epoch, skip) = msg.into_publication()?;
    Some(RoomMessage {
        publication,
        epoch,
        skip,
    })
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
        let s = split_message(&p, Some("c1")).expect("split");
        let mut bytes = envelope_head("n1").expect("head");
        bytes.push(0x80 + s.fields + 2);
        bytes.extend_from_slice(s.body());
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
