//! The Server-Sent Events transport (`GET /sse?rooms=a,b`): a write-only adapter around
//! the connection core, with the same auth, room rules, queue and limits as a WebSocket
//! session, server to client only. Every event has `id: <room>:<offset>`; a reconnect
//! resumes with `Last-Event-ID` or `?since=`.

mod params;

pub use params::{
    max_query_len, parse_last_event_id, parse_positions, parse_rooms, parse_ws_since, SseParamError,
};

use crate::conn::{self, Active, Conn, JoinArgs, Recover};
use crate::disconnect::Disconnect;
use crate::http::util::{query_param, text, Body};
use crate::hub::{Mail, Payload, Wire};
use crate::node::Node;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Opens an event stream.
pub async fn open(node: Arc<Node>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let h = req.headers();
    if let Err(refused) = conn::gate(&node, h) {
        return refused.response();
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
    let who = match conn::http_identity(&node, peer, "sse", &req).await {
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
    // Every room is checked before any is joined: a stream is all its rooms or nothing.
    let refused = |e: conn::JoinRefused| {
        let status = match e {
            conn::JoinRefused::Forbidden(_) | conn::JoinRefused::HookDenied(_) => {
                StatusCode::FORBIDDEN
            }
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        text(status, format!("{e}\n"))
    };
    if let Some(e) = rooms
        .iter()
        .find_map(|r| conn::may_join(&node, &who, r).err())
    {
        return refused(e);
    }
    for room in &rooms {
        if let Err(e) = conn::ask_join_hook(&node, &who, room, false).await {
            return refused(e);
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
    let ip = conn::client_addr(&node, peer, h);
    let admission = match conn::admit(&node, ip, "sse") {
        Ok(a) => a,
        Err(refused) => return refused.response(),
    };

    let conn = Conn::open(node.clone(), node.new_conn_id(), Wire::Sse, admission);
    let active = conn.activate(who).await;
    let hb = node.cfg.heartbeat_interval();
    let mut stream = SseStream {
        conn,
        active,
        hb: tokio::time::interval_at(tokio::time::Instant::now() + hb, hb),
        prelude: Some(String::from(":ok\n\n")),
    };
    for room in rooms {
        let recover = match since.get(&room) {
            Some(&offset) => Recover::After(offset),
            None => Recover::Since {
                since: None,
                history: None,
            },
        };
        let args = JoinArgs {
            room,
            recover,
            id: None,
            // Checked above, all of them.
            at_connect: true,
            member_events: true,
        };
        match stream.conn.join(&mut stream.active, &args).await {
            Ok(h) => stream.replay(&h.messages),
            Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        }
    }

    let stream = futures_util::stream::unfold(stream, |mut st| async move {
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

/// An SSE client's stream: its connection and what it has joined, read by the response
/// body; the connection ends when the body is dropped (the client went, or the stream
/// ended).
struct SseStream {
    conn: Conn,
    active: Active,
    hb: tokio::time::Interval,
    /// What goes first: `:ok` and the history each room replays.
    prelude: Option<String>,
}

impl Drop for SseStream {
    fn drop(&mut self) {
        self.conn.release(Some(&self.active), None);
        // Presence removal needs the bus: done in the background, bounded by the bus timeout.
        self.conn.leave_presence_later(&mut self.active);
    }
}

impl SseStream {
    /// Adds a join's history to the prelude, each message an event with its id.
    fn replay(&mut self, messages: &[roomcast_protocol::Publication]) {
        let Some(prelude) = self.prelude.as_mut() else {
            return;
        };
        for p in messages {
            let id = p.offset.map(|o| format!("{}:{}", p.room, o));
            if let Some(Payload::Text(t)) = crate::hub::encode_for(
                Wire::Sse,
                &roomcast_protocol::MessageFrame(p),
                id.as_deref(),
            ) {
                prelude.push_str(&t);
            }
        }
    }

    /// `event` followed by an id-only block naming the stream's position in every room
    /// (`id: a:2,b:7`). Browsers record it as the last event id without firing an event,
    /// so a reconnect's `Last-Event-ID` resumes every room of the stream, not only the
    /// room of the last event.
    fn rooms_len(&self) -> usize {
        self.conn.mailbox.floors(|f| f.len())
    }

    fn with_positions(&self, event: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(event.len() + 64);
        out.extend_from_slice(event);
        out.extend_from_slice(b"id: ");
        self.conn.mailbox.floors(|floors| {
            for (i, (room, offset)) in floors.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(format!("{room}:{offset}").as_bytes());
            }
        });
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    /// The next chunk of the stream, or `None` when it ends (drain and other kicks, expiry).
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(p) = self.prelude.take() {
            if self.rooms_len() > 1 {
                return Some(self.with_positions(p.as_bytes()));
            }
            return Some(Bytes::from(p));
        }
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(self.active.expires.unwrap_or(far)) => return None,
                mail = self.conn.mailbox.next() => {
                    let frame = match mail {
                        Mail::Kick(code) => {
                            self.conn.count_close(&Disconnect::kicked(code));
                            return None;
                        }
                        Mail::Frame(f) => f,
                        // SSE has no express lane: nothing to flush.
                        Mail::Flush => continue,
                    };
                    match &frame.payload {
                        Payload::Text(t) if frame.offset.is_some() && self.rooms_len() > 1 => {
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
