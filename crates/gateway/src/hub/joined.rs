//! The rooms a connection joined and the last offset delivered in each (its floor), and
//! the rule that decides whether a frame goes out (queued or express).

use super::Frame;
use roomcast_protocol::RoomName;
use std::sync::Arc;

/// A room's name as the hub shares it: one allocation per room with local members, held
/// by the frames of its messages and by its members' floors, so that a delivery finds the
/// room by comparing pointers (no read of the name, which would be a cache miss per
/// delivery). A key made apart (a room the hub no longer holds) still matches by name.
pub type RoomKey = Arc<RoomName>;

/// A frame the floors do not let out: its room is not joined, or its offset was
/// delivered already.
#[derive(Debug)]
pub struct Refused;

/// The rooms a connection joined, each with the last offset delivered there: a sorted
/// vector rather than a map, as most connections join a few rooms (a map's smallest table
/// is four entries and a control block, in every connection). It lives in the
/// connection's mailbox, read by the session and by express writes alike.
#[derive(Debug, Default)]
pub struct Joined(Vec<(RoomKey, u64)>);

/// Up to this many joined rooms, a frame's room is first looked for by pointer, one entry
/// after the other, before the search by name.
const BY_POINTER: usize = 4;

impl Joined {
    fn find(&self, room: &RoomName) -> Result<usize, usize> {
        self.0
            .binary_search_by(|(r, _)| r.as_str().cmp(room.as_str()))
    }

    /// Where the frame's room is: by pointer when the frame and the floor share the
    /// hub's key (every live message), else by name.
    fn find_key(&self, room: &RoomKey) -> Option<usize> {
        if self.0.len() <= BY_POINTER {
            if let Some(i) = self.0.iter().position(|(r, _)| Arc::ptr_eq(r, room)) {
                return Some(i);
            }
        }
        self.find(room).ok()
    }

    /// The last offset delivered in `room`, when it is joined.
    pub fn get(&self, room: &RoomName) -> Option<u64> {
        self.find(room).ok().map(|i| self.0[i].1)
    }

    fn get_mut(&mut self, room: &RoomKey) -> Option<&mut u64> {
        let i = self.find_key(room)?;
        Some(&mut self.0[i].1)
    }

    /// Joins `room` if needed and raises its last offset to at least `offset`. The key
    /// should be the hub's ([`Hub::join_with`](super::Hub::join_with)), so that
    /// deliveries find the room by pointer.
    pub fn raise(&mut self, room: &RoomKey, offset: u64) {
        match self.find(room) {
            Ok(i) => {
                let (key, last) = &mut self.0[i];
                *last = (*last).max(offset);
                if !Arc::ptr_eq(key, room) {
                    *key = room.clone();
                }
            }
            Err(i) => {
                if self.0.capacity() == 0 {
                    self.0.reserve_exact(1);
                }
                self.0.insert(i, (room.clone(), offset));
            }
        }
    }

    /// Leaves `room`; whether it was joined.
    pub fn remove(&mut self, room: &RoomName) -> bool {
        match self.find(room) {
            Ok(i) => {
                self.0.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    /// How many rooms are joined.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no room is joined.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The joined rooms, in name order.
    pub fn names(&self) -> impl Iterator<Item = &RoomName> {
        self.0.iter().map(|(r, _)| &**r)
    }

    /// The joined rooms and their last offsets, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&RoomName, u64)> {
        self.0.iter().map(|(r, o)| (&**r, *o))
    }

    /// [`Joined::admit`] in two steps, for a frame that may not go out after all: `Err`
    /// when the floors refuse it, else the floor to raise to its offset once it went out
    /// (`None`: nothing to raise).
    pub fn admission(&mut self, frame: &Frame) -> Result<Option<(&mut u64, u64)>, Refused> {
        let Some(room) = &frame.room else {
            return Ok(None);
        };
        let last = self.get_mut(room).ok_or(Refused)?;
        match frame.offset {
            None => Ok(None),
            Some(o) if o <= *last => Err(Refused),
            Some(o) => Ok(Some((last, o))),
        }
    }

    /// Decides whether a queued frame goes out: room messages only for joined rooms and
    /// only past the last offset delivered there (which it then raises). This is what
    /// drops the repeats of the live-then-history join (DESIGN-NOTES §2).
    pub fn admit(&mut self, frame: &Frame) -> bool {
        let Some(room) = &frame.room else { return true };
        let Some(last) = self.get_mut(room) else {
            return false;
        };
        if let Some(o) = frame.offset {
            if o <= *last {
                return false;
            }
            *last = o;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(s: &str) -> RoomName {
        RoomName::try_from(s.to_string()).expect("valid room name")
    }

    fn key(s: &str) -> RoomKey {
        Arc::new(room(s))
    }

    fn frame(room: &RoomKey, offset: u64) -> Frame {
        Frame {
            room: Some(room.clone()),
            offset: Some(offset),
            payload: super::super::Payload::Binary(bytes::Bytes::from_static(b"x")),
        }
    }

    #[test]
    fn a_frame_finds_its_room_by_the_shared_key_or_by_name() {
        for rooms in [1, BY_POINTER, BY_POINTER + 3] {
            let mut j = Joined::default();
            let keys: Vec<RoomKey> = (0..rooms).map(|i| key(&format!("r{i}"))).collect();
            for k in &keys {
                j.raise(k, 5);
            }
            for k in &keys {
                assert!(j.admit(&frame(k, 6)), "the hub's key, {rooms} rooms");
                // A key of its own with the same name (a frame built apart).
                assert!(
                    j.admit(&frame(&key(k.as_str()), 7)),
                    "same name, {rooms} rooms"
                );
                assert!(!j.admit(&frame(k, 7)), "offset 7 went out already");
            }
            assert!(!j.admit(&frame(&key("elsewhere"), 1)), "a room not joined");
        }
    }

    #[test]
    fn joined_rooms_keep_the_highest_offset_and_find_every_room() {
        let mut j = Joined::default();
        let names: Vec<String> = (0..50).rev().map(|i| format!("r{i:02}")).collect();
        for (i, n) in names.iter().enumerate() {
            j.raise(&key(n), i as u64);
        }
        assert_eq!(j.len(), 50);
        j.raise(&key("r10"), 3);
        assert_eq!(
            j.get(&room("r10")),
            Some(39),
            "a lower offset does not lower it"
        );
        j.raise(&key("r10"), 100);
        assert_eq!(j.get(&room("r10")), Some(100));
        for n in &names {
            assert!(j.get(&room(n)).is_some(), "{n} is found");
        }
        assert!(j.remove(&room("r10")));
        assert!(!j.remove(&room("r10")));
        assert_eq!(j.get(&room("r10")), None);
        assert_eq!(j.get_mut(&key("zz")), None);
        let listed: Vec<&str> = j.names().map(|r| r.as_str()).collect();
        let mut sorted = listed.clone();
        sorted.sort_unstable();
        assert_eq!(listed, sorted);
        assert_eq!(listed.len(), 49);
    }
}
