//! The Server-Sent Events transport (`GET /sse?rooms=a,b`): the same auth, room rules,
//! queue and limits as a WebSocket session, server to client only. Every event has
//! `id: <room>:<offset>`; a reconnect resumes with `Last-Event-ID` or `?since=`.

use crate::auth::Identity;
use crate::http::{bearer, query_param, text, Body};
use crate::hub::{Mail, Mailbox, Member, Payload, Wire};
use crate::limits::client_ip;
use crate::node::{ConnSlot, Node};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use roomcast_protocol::RoomName;
use roomcast_redis_bridge::HistoryQuery;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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

/// The identity of an HTTP client: its JWT (query `token` or Authorization), the connect
/// hook's answer (a request without a token, or any with `--auth hook`: cookies and the
/// forwarded headers go to the hook), or with `--auth none` the `user` query parameter or
/// a fresh id. `transport` is `sse` or `http`.
#[allow(clippy::result_large_err)] // the error is the response itself, built once per refused request
pub async fn http_identity(
    node: &Node,
    peer: SocketAddr,
    transport: &'static str,
    req: &Request<Incoming>,
) -> Result<Identity, Response<Body>> {
    if !node.auth.enabled() {
        let user = query_param(req, "user")
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| node.new_conn_id().to_string());
        return node
            .auth
            .anonymous(&user)
            .ok_or_else(|| text(StatusCode::BAD_REQUEST, "invalid user\n"));
    }
    let token = query_param(req, "token")
        .filter(|t| !t.is_empty())
        .or_else(|| bearer(req));
    let xff = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let ip = client_ip(peer.ip(), xff, &node.trusted_proxies);
    if let (Some(hook_req), Some(hooks)) = (
        node.connect_request(transport, ip, req.headers(), token.as_deref()),
        node.hooks.as_ref(),
    ) {
        return match hooks.connect(&hook_req).await {
            Ok(crate::hooks::ConnectDecision::Allow(mut who)) => {
                who.join = node.server_rooms(&who);
                Ok(who)
            }
            Ok(crate::hooks::ConnectDecision::Deny { code, .. }) => {
                node.metrics
                    .auth_failures
                    .with_label_values(&["hook_denied"])
                    .inc();
                let status = if code == roomcast_protocol::close::POLICY {
                    StatusCode::FORBIDDEN
                } else {
                    StatusCode::UNAUTHORIZED
                };
                Err(text(status, "refused by the connect hook\n"))
            }
            Err(e) => Err(text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))),
        };
    }
    let Some(token) = token else {
        return Err(text(
            StatusCode::UNAUTHORIZED,
            "a token is required (token query parameter or Authorization: Bearer)\n",
        ));
    };
    node.auth
        .verify_token(&token)
        .await
        .map(|mut who| {
            who.join = node.server_rooms(&who);
            who
        })
        .map_err(|e| {
            node.metrics
                .auth_failures
                .with_label_values(&[e.reason()])
                .inc();
            text(StatusCode::UNAUTHORIZED, format!("{e}\n"))
        })
}

/// Opens an event stream.
pub async fn open(node: Arc<Node>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let h = req.headers();
    if !node.origins.allows_header(h.get(header::ORIGIN)) {
        return text(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    if node.is_draining() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "node is draining\n");
    }
    // Bound the work before parsing anything: the query's length, then the number of
    // rooms and positions, before any name is validated or matched against the token.
    let max_rooms = node.cfg.max_rooms;
    let max_query = max_query_len(max_rooms);
    if req.uri().query().map_or(0, str::len) > max_query {
        return text(
            StatusCode::URI_TOO_LONG,
            format!("the query is longer than {max_query} bytes\n"),
        );
    }
    let who = match http_identity(&node, peer, "sse", &req).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let bad = |e: SseParamError| text(StatusCode::BAD_REQUEST, format!("{e}\n"));
    let mut rooms = match parse_rooms(&query_param(&req, "rooms").unwrap_or_default(), max_rooms) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    // The rooms of the token or hook (`join`) and the personal room come too, as for a
    // WebSocket; with them, `rooms=` may be left out.
    for room in &who.join {
        if !rooms.contains(room) {
            rooms.push(room.clone());
        }
    }
    if rooms.is_empty() {
        return text(StatusCode::BAD_REQUEST, "rooms=a,b is required\n");
    }
    if rooms.len() > max_rooms {
        return bad(SseParamError::TooManyRooms(max_rooms));
    }
    if let Some(room) = rooms
        .iter()
        .find(|r| !who.may_join(r, node.auth.default_policy))
    {
        return text(
            StatusCode::FORBIDDEN,
            format!("not allowed in room {room}\n"),
        );
    }
    if let Some(hooks) = node.hooks.as_ref() {
        for room in rooms
            .iter()
            .filter(|r| hooks.asks_join(r) && !who.join.contains(r))
        {
            match hooks.join(&who.user, room).await {
                Ok(crate::hooks::RoomDecision::Allow(_)) => {}
                Ok(crate::hooks::RoomDecision::Deny) => {
                    return text(
                        StatusCode::FORBIDDEN,
                        format!("the join hook refused room {room}\n"),
                    )
                }
                Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
            }
        }
    }
    let mut since = match parse_positions(
        &query_param(&req, "since").unwrap_or_default(),
        "since",
        max_rooms,
    ) {
        Ok(s) => s,
        Err(e) => return bad(e),
    };
    if let Some(last) = h.get("last-event-id") {
        // A header that is not visible ASCII cannot hold a position: ignored, as before.
        if let Ok(last) = last.to_str() {
            match parse_last_event_id(last, max_rooms) {
                Ok(p) => since.extend(p),
                Err(e) => return bad(e),
            }
        }
    }
    let xff = h.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    let Some(ip_guard) = node
        .ip_limiter
        .acquire(client_ip(peer.ip(), xff, &node.trusted_proxies))
    else {
        return text(
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections from this address\n",
        );
    };
    let Some(slot) = node.try_connect("sse") else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "node is full\n");
    };

    let conn_id = node.new_conn_id();
    let mailbox = Mailbox::new(node.cfg.outbound_queue);
    node.hub.register(&conn_id, &mailbox);
    let member = Member {
        id: conn_id.clone(),
        user: who.user.clone(),
        wire: Wire::Sse,
        mailbox,
    };
    node.hub.add_user(&member);
    let mut guard = Guard {
        node: node.clone(),
        member,
        rooms: Vec::new(),
        _slot: slot,
        _ip: ip_guard,
    };
    let mut prelude = String::from(":ok\n\n");
    let mut floors: BTreeMap<RoomName, u64> = BTreeMap::new();
    for room in rooms {
        // Live first, history after, repeats dropped by offset (as for a WebSocket join).
        node.hub.join(&room, &guard.member);
        guard.rooms.push(room.clone());
        if let Err(e) = node.bus.presence_join(&room, &who.user, &conn_id).await {
            return text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"));
        }
        // Rooms mode: subscribed before history is read (the no-gap rule).
        if let Err(e) = node.bus.room_ready(&room).await {
            return text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"));
        }
        // When a position cannot be recovered (history trimmed, or lost and restarted:
        // an offset past the room's end), replay what the history holds, not nothing.
        let history = match since.get(&room) {
            Some(&offset) => {
                crate::commands::history_after(&node, &room, offset, node.cfg.max_recover).await
            }
            None => {
                node.bus
                    .history(
                        &room,
                        HistoryQuery {
                            since: None,
                            limit: 0,
                        },
                    )
                    .await
            }
        };
        match history {
            Ok(h) => {
                for p in &h.messages {
                    let id = p.offset.map(|o| format!("{}:{}", p.room, o));
                    if let Some(Payload::Text(t)) = crate::hub::encode_for(
                        Wire::Sse,
                        &roomcast_protocol::MessageFrame(p),
                        id.as_deref(),
                    ) {
                        prelude.push_str(&t);
                    }
                }
                floors.insert(room, h.offset);
            }
            Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        }
    }

    let hb = node.cfg.heartbeat_interval();
    let expires = who.exp.map(|exp| {
        let left = (exp + node.auth.leeway()).saturating_sub(crate::hub::now_ms() / 1000);
        tokio::time::Instant::now() + Duration::from_secs(left)
    });
    let state = Pump {
        guard,
        floors,
        hb: tokio::time::interval_at(tokio::time::Instant::now() + hb, hb),
        expires,
        prelude: Some(prelude),
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        let b = st.next().await?;
        Some((b, st))
    });
    let body = StreamBody::new(stream.map(|b| Ok::<_, Infallible>(Frame::data(b)))).boxed_unsync();
    let mut resp = Response::new(body);
    let hs = resp.headers_mut();
    hs.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    hs.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    hs.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// Releases an SSE client's membership when its stream ends.
struct Guard {
    node: Arc<Node>,
    member: Member,
    rooms: Vec<RoomName>,
    _slot: ConnSlot,
    _ip: crate::limits::IpGuard,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let node = self.node.clone();
        node.hub.remove_user(&self.member);
        node.hub.unregister(&self.member.id);
        for room in &self.rooms {
            node.hub.leave(room, &self.member.id);
        }
        let rooms = std::mem::take(&mut self.rooms);
        let (user, conn) = (self.member.user.clone(), self.member.id.clone());
        // Presence removal needs the bus: done in the background, bounded by the bus timeout.
        tokio::spawn(async move {
            for room in rooms {
                let _ = node.bus.presence_leave(&room, &user, &conn).await;
            }
        });
    }
}

struct Pump {
    guard: Guard,
    floors: BTreeMap<RoomName, u64>,
    hb: tokio::time::Interval,
    expires: Option<tokio::time::Instant>,
    prelude: Option<String>,
}

impl Pump {
    /// `event` followed by an id-only block naming the stream's position in every room
    /// (`id: a:2,b:7`). Browsers record it as the last event id without firing an event,
    /// so a reconnect's `Last-Event-ID` resumes every room of the stream, not only the
    /// room of the last event.
    fn with_positions(&self, event: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(event.len() + 16 * self.floors.len() + 8);
        out.extend_from_slice(event);
        out.extend_from_slice(b"id: ");
        for (i, (room, offset)) in self.floors.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(format!("{room}:{offset}").as_bytes());
        }
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    /// The next chunk of the stream, or `None` when it ends (drain and other kicks, expiry).
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(p) = self.prelude.take() {
            if self.floors.len() > 1 {
                return Some(self.with_positions(p.as_bytes()));
            }
            return Some(Bytes::from(p));
        }
        let node = self.guard.node.clone();
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(self.expires.unwrap_or(far)) => return None,
                mail = self.guard.member.mailbox.next() => {
                    let frame = match mail {
                        Mail::Kick(code) => {
                            node.metrics.closes.with_label_values(&[&code.to_string()]).inc();
                            return None;
                        }
                        Mail::Frame(f) => f,
                    };
                    if let Some(room) = &frame.room {
                        let Some(last) = self.floors.get_mut(room) else { continue };
                        if let Some(o) = frame.offset {
                            if o <= *last {
                                continue;
                            }
                            *last = o;
                        }
                    }
                    match &frame.payload {
                        Payload::Text(t) if frame.offset.is_some() && self.floors.len() > 1 => {
                            return Some(self.with_positions(t.as_bytes()));
                        }
                        Payload::Text(t) => return Some(Bytes::from(t.clone())),
                        Payload::Binary(_) => continue,
                    }
                }
                _ = self.hb.tick() => return Some(Bytes::from_static(b": hb\n\n")),
            }
        }
    }
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
