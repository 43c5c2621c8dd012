//! The parameters of `/sse` (`rooms=`, `since=`, `Last-Event-ID`) and the `since=` of a
//! WebSocket upgrade: each list counted before any item is parsed.

use roomcast_protocol::RoomName;
use std::collections::{HashMap, HashSet};

/// The longest `/sse` query string a node allowing `max_rooms` rooms per connection
/// accepts: 8 KiB for the token and other parameters, plus 1 KiB per room (each room may
/// be named, percent-encoded, in `rooms=` and again in `since=`). A longer query is
/// answered 414 before any of it is parsed.
pub fn max_query_len(max_rooms: usize) -> usize {
    max_rooms.saturating_mul(1024).saturating_add(8 * 1024)
}

/// Why a parameter of `/sse` was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseParamError {
    /// `rooms=` names more rooms than a connection may join.
    #[error("at most {0} rooms per connection")]
    TooManyRooms(usize),
    /// A name in `rooms=` is not a valid room name.
    #[error("invalid room name {name:?}: {error}")]
    InvalidRoom {
        /// The name as given (cut to 140 bytes).
        name: String,
        /// Why it is invalid.
        error: roomcast_protocol::NameError,
    },
    /// `since=` or `Last-Event-ID` names more positions than a stream may have rooms.
    #[error("{0} names more than {1} positions")]
    TooManyPositions(&'static str, usize),
    /// `Last-Event-ID` is longer than a stream's positions can be.
    #[error("{0} is longer than {1} bytes")]
    TooLong(&'static str, usize),
}

/// The non-empty items of a comma-separated list, trimmed.
fn items(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|x| !x.is_empty())
}

/// Parses `rooms=a,b` (already percent-decoded): at most `max_rooms` names, counted
/// before any name is looked at, so that a huge list costs one scan and no more. A room
/// named twice is listed once.
pub fn parse_rooms(s: &str, max_rooms: usize) -> Result<Vec<RoomName>, SseParamError> {
    if items(s).nth(max_rooms).is_some() {
        return Err(SseParamError::TooManyRooms(max_rooms));
    }
    let mut seen = HashSet::new();
    let mut rooms = Vec::new();
    for name in items(s) {
        let room = RoomName::new(name).map_err(|error| SseParamError::InvalidRoom {
            name: clip(name, 140).to_string(),
            error,
        })?;
        if seen.insert(room.clone()) {
            rooms.push(room);
        }
    }
    Ok(rooms)
}

/// Parses `room:offset,room:offset` (`since=` or `Last-Event-ID`; the room may itself
/// hold `:`; the offset is after the last one): at most `max_rooms` items, counted
/// before any is parsed. Items that are not a valid position are ignored.
pub fn parse_positions(
    s: &str,
    what: &'static str,
    max_rooms: usize,
) -> Result<HashMap<RoomName, u64>, SseParamError> {
    if items(s).nth(max_rooms).is_some() {
        return Err(SseParamError::TooManyPositions(what, max_rooms));
    }
    Ok(items(s)
        .filter_map(|item| {
            let (room, off) = item.rsplit_once(':')?;
            Some((RoomName::new(room).ok()?, off.parse().ok()?))
        })
        .collect())
}

/// Parses the `since=room:offset:epoch,...` of a WebSocket upgrade (the positions from
/// which the rooms joined at connect recover; the room may hold `:`, the offset and epoch
/// cannot). At most `max_rooms` items are read; the ones that are not a position are
/// ignored, like a `join` without `since`.
pub fn parse_ws_since(
    s: &str,
    max_rooms: usize,
) -> Vec<(RoomName, roomcast_protocol::StreamPosition)> {
    items(s)
        .take(max_rooms)
        .filter_map(|item| {
            let mut parts = item.rsplitn(3, ':');
            let epoch = parts.next()?;
            let offset = parts.next()?.parse().ok()?;
            let room = RoomName::new(parts.next()?).ok()?;
            (!epoch.is_empty()).then(|| {
                (
                    room,
                    roomcast_protocol::StreamPosition {
                        offset,
                        epoch: epoch.to_string(),
                    },
                )
            })
        })
        .collect()
}

/// Parses a `Last-Event-ID` header: as [`parse_positions`], after refusing one longer
/// than [`max_query_len`].
pub fn parse_last_event_id(
    s: &str,
    max_rooms: usize,
) -> Result<HashMap<RoomName, u64>, SseParamError> {
    let max = max_query_len(max_rooms);
    if s.len() > max {
        return Err(SseParamError::TooLong("Last-Event-ID", max));
    }
    parse_positions(s, "Last-Event-ID", max_rooms)
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_are_counted_before_any_is_validated() {
        let invalid = ["bad room"; 101].join(",");
        assert_eq!(
            parse_rooms(&invalid, 100),
            Err(SseParamError::TooManyRooms(100))
        );
        let r = parse_rooms(" a , b,,a, ", 3).expect("two rooms");
        assert_eq!(
            r.iter().map(RoomName::as_str).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(matches!(
            parse_rooms(&format!("a,{}", "é".repeat(200)), 100),
            Err(SseParamError::InvalidRoom { name, .. }) if name.len() <= 140
        ));
    }

    #[test]
    fn positions_are_counted_before_any_is_parsed() {
        let many = ["x:1"; 3].join(",");
        assert_eq!(
            parse_positions(&many, "since", 2),
            Err(SseParamError::TooManyPositions("since", 2))
        );
        let p = parse_positions("a:b:7, c:x, :3, d:4", "since", 4).expect("parsed");
        assert_eq!(p.len(), 2);
        assert_eq!(p.get("a:b"), Some(&7));
        assert_eq!(p.get("d"), Some(&4));
        let long = "1".repeat(max_query_len(1) + 1);
        assert_eq!(
            parse_last_event_id(&long, 1),
            Err(SseParamError::TooLong("Last-Event-ID", max_query_len(1)))
        );
    }
}
