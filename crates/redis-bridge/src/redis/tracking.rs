//! The rooms this node holds and how far each has been delivered: the gap state, with
//! one owner. The bus marks a room watched on its first local member and forgets it on
//! the last; the subscriber records what it delivers, plans each message against it and
//! repairs from it after a cut; a history read may supply a baseline. Every change goes
//! through this type, whichever the subscription mode (pattern, rooms, Redis Cluster).
//!
//! Std mutex: held for map lookups only, never across an await.

use roomcast_protocol::RoomName;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::mpsc;

use crate::common::lock;

/// How far a watched room has been delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Track {
    /// Just watched: nothing known yet; the first message (or the room's meta, read
    /// by the subscriber) sets the baseline.
    Pending,
    /// A baseline read (the room's meta, or a member's history read), not a delivery:
    /// messages up to `offset` were published before that read and may still arrive;
    /// they are delivered as they come. The next one after must be `offset + 1`.
    /// `epoch: None`: the room had no history then.
    Baseline { offset: u64, epoch: Option<String> },
    /// Every message of `epoch` up to `offset` has been delivered.
    /// `sig`: the SHA-1 of the envelope delivered at `offset`, when it came live:
    /// after a cut it tells whether the room's stream still holds that message there, or
    /// another one took its offset (publishes lost in a failover, then re-used).
    Known {
        offset: u64,
        epoch: String,
        sig: Option<Sig>,
    },
}

impl Track {
    /// The baseline of a room whose meta reads `meta` (offset and epoch; `None`: the
    /// room has no history).
    pub(crate) fn baseline(meta: Option<(u64, String)>) -> Track {
        match meta {
            Some((offset, epoch)) => Track::Baseline {
                offset,
                epoch: Some(epoch),
            },
            None => Track::Baseline {
                offset: 0,
                epoch: None,
            },
        }
    }

    /// Every message of `epoch` up to `offset` is delivered (or known lost), none of them
    /// live: no signature to check after a cut.
    pub(crate) fn known(offset: u64, epoch: String) -> Track {
        Track::Known {
            offset,
            epoch,
            sig: None,
        }
    }

    /// The message at `offset` of `epoch` was just delivered live, its envelope `payload`.
    pub(crate) fn delivered_live(offset: u64, epoch: String, payload: &[u8]) -> Track {
        Track::Known {
            offset,
            epoch,
            sig: Some(signature(payload)),
        }
    }
}

/// The signature of an envelope kept in [`Track::Known`]: its SHA-1. Raw bytes, taken
/// for every live room message: hex (what the epoch script compares) only when needed.
pub(crate) type Sig = [u8; 20];

/// The signature of an envelope.
pub(crate) fn signature(payload: &[u8]) -> Sig {
    sha1_smol::Sha1::from(payload).digest().bytes()
}

/// A signature in hex, as Redis's `redis.sha1hex` writes it.
pub(crate) fn sig_hex(sig: &Sig) -> String {
    use std::fmt::Write;
    sig.iter().fold(String::with_capacity(40), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The watched rooms and their tracks, and the queue of rooms whose baseline offset the
/// subscriber should read.
pub(crate) struct Tracking {
    rooms: Mutex<HashMap<RoomName, Track>>,
    baseline_tx: mpsc::UnboundedSender<RoomName>,
    baseline_rx: Mutex<Option<mpsc::UnboundedReceiver<RoomName>>>,
}

impl Tracking {
    pub(crate) fn new() -> Self {
        let (baseline_tx, baseline_rx) = mpsc::unbounded_channel();
        Tracking {
            rooms: Mutex::new(HashMap::new()),
            baseline_tx,
            baseline_rx: Mutex::new(Some(baseline_rx)),
        }
    }

    /// Starts tracking `room` (its first local member); a new room is queued for the
    /// subscriber to read its baseline.
    pub(crate) fn watch(&self, room: &RoomName) {
        let new = {
            let mut w = lock(&self.rooms);
            if w.contains_key(room) {
                false
            } else {
                w.insert(room.clone(), Track::Pending);
                true
            }
        };
        if new {
            // If the subscriber is gone (closed), there is nothing to track anyway.
            let _ = self.baseline_tx.send(room.clone());
        }
    }

    /// Stops tracking `room` (its last local member left).
    pub(crate) fn unwatch(&self, room: &RoomName) {
        lock(&self.rooms).remove(room);
    }

    /// Whether `room` has local members.
    pub(crate) fn holds(&self, room: &RoomName) -> bool {
        lock(&self.rooms).contains_key(room)
    }

    /// The track of `room`, if it is watched.
    pub(crate) fn get(&self, room: &RoomName) -> Option<Track> {
        lock(&self.rooms).get(room).cloned()
    }

    /// Runs `f` on the track of `room` (none if unwatched) without copying it.
    pub(crate) fn with<R>(&self, room: &RoomName, f: impl FnOnce(Option<&Track>) -> R) -> R {
        f(lock(&self.rooms).get(room))
    }

    /// Records `track` as where `room` stands, if it is still watched.
    pub(crate) fn set(&self, room: &RoomName, track: Track) {
        if let Some(t) = lock(&self.rooms).get_mut(room) {
            *t = track;
        }
    }

    /// Every watched room.
    pub(crate) fn rooms(&self) -> Vec<RoomName> {
        lock(&self.rooms).keys().cloned().collect()
    }

    /// Sets the baseline of rooms still `Pending` from their metas (offset and epoch;
    /// `None`: the room has no history).
    pub(crate) fn set_baselines(&self, rooms: &[RoomName], metas: Vec<Option<(u64, String)>>) {
        let mut w = lock(&self.rooms);
        for (room, meta) in rooms.iter().zip(metas) {
            if let Some(t @ Track::Pending) = w.get_mut(room) {
                *t = Track::baseline(meta);
            }
        }
    }

    /// A member of `room` read its history at `offset` of `epoch`: if the room's epoch
    /// is not known yet, this read is as good a baseline, and a later loss of the epoch is
    /// then signalled to that member too (it must never take another epoch's offsets).
    pub(crate) fn note_read(&self, room: &RoomName, offset: u64, epoch: &str) {
        if let Some(t) = lock(&self.rooms).get_mut(room) {
            if matches!(t, Track::Pending | Track::Baseline { epoch: None, .. }) {
                *t = Track::baseline(Some((offset, epoch.to_string())));
            }
        }
    }

    /// The baseline queue, for the one subscriber task (`None` once taken).
    pub(crate) fn take_baselines(&self) -> Option<mpsc::UnboundedReceiver<RoomName>> {
        lock(&self.baseline_rx).take()
    }
}

#[cfg(test)]
mod sig_tests {
    /// The hex form is the one Redis's `redis.sha1hex` gives (the epoch script compares them).
    #[test]
    fn the_hex_signature_is_sha1hex() {
        assert_eq!(
            super::sig_hex(&super::signature(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }
}
