//! The rooms a connection joined and the last offset delivered in each (its floor), and
//! the rule that decides whether a frame goes out (queued or express).

use super::Frame;
use roomcast_protocol::RoomName;

/// A frame the floors do not let out: its room is not joined, or its offset was
/// delivered already.
#[derive(Debug)]
pub struct Refused;

/// The rooms a connection joined, each with the last offset delivered there: a sorted
/// vector rather than a map, as most connections join a few rooms (a map's smallest table
/// is four entries and a control block, in every connection). It lives in the
/// connection's mailbox, read by the session and by express writes alike.
#[derive(Debug, Default)]
pub struct Joined(Vec<(RoomName, u64)>);

impl Joined {
    fn find(&self, room: &RoomName) -> Result<usize, usize> {
        self.0
            .binary_search_by(|(r, _)| r.as_str().cmp(room.as_str()))
    }

    /// The last offset delivered in `room`, when it is joined.
    pub fn get(&self, room: &RoomName) -> Option<u64> {
        self.find(room).ok().map(|i| self.0[i].1)
    }

    fn get_mut(&mut self, room: &RoomName) -> Option<&mut u64> {
        let i = self.find(room).ok()?;
        Some(&mut self.0[i].1)
    }

    /// Joins `room` if needed and raises its last offset to at least `offset`.
    pub fn raise(&mut self, room: &RoomName, offset: u64) {
        match self.find(room) {
            Ok(i) => self.0[i].1 = self.0[i].1.max(offset),
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
        self.0.iter().map(|(r, _)| r)
    }

    /// The joined rooms and their last offsets, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&RoomName, u64)> {
        self.0.iter().map(|(r, o)| (r, *o))
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

    #[test]
    fn joined_rooms_keep_the_highest_offset_and_find_every_room() {
        let mut j = Joined::default();
        let names: Vec<String> = (0..50).rev().map(|i| format!("r{i:02}")).collect();
        for (i, n) in names.iter().enumerate() {
            j.raise(&room(n), i as u64);
        }
        assert_eq!(j.len(), 50);
        j.raise(&room("r10"), 3);
        assert_eq!(
            j.get(&room("r10")),
            Some(39),
            "a lower offset does not lower it"
        );
        j.raise(&room("r10"), 100);
        assert_eq!(j.get(&room("r10")), Some(100));
        for n in &names {
            assert!(j.get(&room(n)).is_some(), "{n} is found");
        }
        assert!(j.remove(&room("r10")));
        assert!(!j.remove(&room("r10")));
        assert_eq!(j.get(&room("r10")), None);
        assert_eq!(j.get_mut(&room("zz")), None);
        let listed: Vec<&str> = j.names().map(|r| r.as_str()).collect();
        let mut sorted = listed.clone();
        sorted.sort_unstable();
        assert_eq!(listed, sorted);
        assert_eq!(listed.len(), 49);
    }
}
