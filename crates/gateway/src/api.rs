//! The backend API (docs/protocol.md section 5) and the HTTP fallback for client commands
//! (`POST /client/commands`). Errors are `{"error": {"code", "message"}}` with a
//! 4xx/5xx status; the OpenAPI document is docs/openapi.json.

use crate::commands;
use crate::http::route::Api;
use crate::http::util::{bearer, json, key_matches, percent_decode, query_param, Body};
use crate::node::Node;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use roomcast_protocol::{
    close, Encoding, ErrorCode, EventName, Publication, RoomName, ServerMessage, UserId,
    SERVER_USER,
};
use roomcast_redis_bridge::{BusError, HistoryQuery, PublishRequest, SendRequest};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;

/// An API failure: status, error code (docs/protocol.md section 5), message.
struct ApiError(StatusCode, &'static str, String);

impl ApiError {
    fn bad(msg: impl Into<String>) -> Self {
        ApiError(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidMessage.as_str(),
            msg.into(),
        )
    }

    fn response(self) -> Response<Body> {
        json(
            self.0,
            &json!({"error": {"code": self.1, "message": self.2}}),
        )
    }
}

impl From<BusError> for ApiError {
    fn from(e: BusError) -> Self {
        match e {
            BusError::Unavailable(m) => ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable.as_str(),
                m,
            ),
            BusError::Internal(m) => ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal.as_str(),
                m,
            ),
        }
    }
}

type ApiResult = Result<Response<Body>, ApiError>;

/// The 404 of a path no route serves (`{"error": {"code": "not_found", ...}}`).
pub fn not_found(path: &str) -> Response<Body> {
    ApiError(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {path}"),
    )
    .response()
}

/// Answers `/api/*` and `/client/commands`. Each of these requests holds one of its
/// client IP's `--max-http-per-ip` slots until it is answered, and must send its body
/// within `--http-body-timeout`, so that half-sent bodies cannot pile up.
pub async fn route(
    node: Arc<Node>,
    peer: SocketAddr,
    route: Api<'_>,
    req: Request<Incoming>,
) -> Response<Body> {
    let label = route.label();
    let xff = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let ip = crate::limits::client_ip(peer.ip(), xff, &node.trusted_proxies);
    let Some(_slot) = node
        .ip_limiter
        .acquire_request(ip, node.cfg.max_http_per_ip)
    else {
        node.metrics
            .errors
            .with_label_values(&[ErrorCode::RateLimited.as_str()])
            .inc();
        node.metrics
            .api_requests
            .with_label_values(&[label, StatusCode::TOO_MANY_REQUESTS.as_str()])
            .inc();
        let mut resp = ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited.as_str(),
            format!(
                "more than {} requests in progress from this address",
                node.cfg.max_http_per_ip
            ),
        )
        .response();
        // The body was not read: this connection cannot carry another request.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    };
    let result = match route {
        Api::ClientCommands => client_commands(&node, peer, req).await,
        // Not a route: answered like any unknown path, and not counted.
        Api::ClientCommandsOther => return not_found(req.uri().path()),
        api_route => match check_key(&node, &req) {
            Err(e) => Err(e),
            Ok(()) => api(&node, api_route, req).await,
        },
    };
    let mut resp = result.unwrap_or_else(ApiError::response);
    if resp.status() == StatusCode::REQUEST_TIMEOUT {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    node.metrics
        .api_requests
        .with_label_values(&[label, resp.status().as_str()])
        .inc();
    resp
}

fn check_key(node: &Node, req: &Request<Incoming>) -> Result<(), ApiError> {
    let unauthorized = |m: &str| ApiError(StatusCode::UNAUTHORIZED, "unauthorized", m.to_string());
    if node.api_keys.is_empty() {
        return Err(unauthorized(
            "the backend API is disabled: no --api-keys configured",
        ));
    }
    let Some(key) = bearer(req) else {
        return Err(unauthorized("Authorization: Bearer <api key> is required"));
    };
    if key_matches(&node.api_keys, &key) {
        Ok(())
    } else {
        Err(unauthorized("unknown api key"))
    }
}

async fn read_json(node: &Node, req: Request<Incoming>) -> Result<Value, ApiError> {
    let limit = node.cfg.max_message_size.saturating_mul(16);
    let timeout = node.cfg.http_body_timeout;
    let read = tokio::time::timeout(timeout, Limited::new(req.into_body(), limit).collect());
    let Ok(read) = read.await else {
        return Err(ApiError(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!(
                "the body did not arrive within {} s (--http-body-timeout)",
                node.cfg.http_body_timeout.as_secs()
            ),
        ));
    };
    let body = match read {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Err(ApiError(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorCode::TooLarge.as_str(),
                    format!("body larger than {limit} bytes"),
                ));
            }
            return Err(ApiError::bad(format!("cannot read body: {e}")));
        }
    };
    parse_json(&body)
}

fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("body is not JSON: {e}")))
}

#[derive(Deserialize)]
pub struct PublishBody {
    room: RoomName,
    event: EventName,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    volatile: bool,
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
pub struct SendBody {
    user: UserId,
    event: EventName,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
pub struct DisconnectBody {
    user: UserId,
}

/// Decodes an API body (`what`: publish, send, disconnect). A refusal names the first
/// field that is missing or has the wrong shape, in the words of docs/protocol.md (the
/// decoder's own message names no field for a wrong type).
fn body<T: for<'de> Deserialize<'de>>(what: &str, v: &Value) -> Result<T, ApiError> {
    T::deserialize(v)
        .map_err(|e| ApiError::bad(body_problem(what, v).unwrap_or_else(|| format!("{what}: {e}"))))
}

fn body_problem(what: &str, v: &Value) -> Option<String> {
    const ROOM: &str = "a room name (a string of 1 to 128 bytes: letters, digits and _-:.@/=+#~!$)";
    const USER: &str = "a user id (a string of 1 to 128 bytes, no control characters)";
    const EVENT: &str = "an event name (a string of 1 to 64 bytes, no control characters)";
    const ID: &str = "a string (an idempotency key)";
    const FLAG: &str = "true or false";
    let Some(m) = v.as_object() else {
        return Some(format!("{what}: the body must be a JSON object"));
    };
    // (field, expected shape, required)
    let fields: &[(&str, &str, bool)] = match what {
        "publish" => &[
            ("room", ROOM, true),
            ("event", EVENT, true),
            ("volatile", FLAG, false),
            ("id", ID, false),
        ],
        "send" => &[
            ("user", USER, true),
            ("event", EVENT, true),
            ("id", ID, false),
        ],
        "disconnect" => &[("user", USER, true)],
        _ => &[],
    };
    for &(field, expected, required) in fields {
        let why = match (m.get(field), expected) {
            (None, _) if required => Some("missing".to_string()),
            (None, _) | (Some(Value::Null), ID) => None,
            (Some(Value::Bool(_)), FLAG) | (Some(Value::String(_)), ID) => None,
            (Some(Value::String(s)), ROOM) => RoomName::new(s).err().map(name_problem),
            (Some(Value::String(s)), USER) => UserId::new(s).err().map(name_problem),
            (Some(Value::String(s)), EVENT) => EventName::new(s).err().map(name_problem),
            (Some(_), _) => Some("wrong type".to_string()),
        };
        if let Some(why) = why {
            return Some(format!("{field}: {why}; expected {expected}"));
        }
    }
    None
}

/// A name's problem in the words the client decoder uses (the field is named before it).
fn name_problem(e: roomcast_protocol::NameError) -> String {
    use roomcast_protocol::NameError;
    match e {
        NameError::Empty(_) => "must not be empty".to_string(),
        NameError::TooLong(_, n) => format!("is longer than {n} bytes"),
        NameError::BadChar(_, c) => format!("contains a character that is not allowed: {c:?}"),
    }
}

fn server_user() -> UserId {
    UserId::new(SERVER_USER).unwrap_or_else(|_| unreachable!("\"server\" is a valid user id"))
}

async fn publish_one(node: &Node, v: Value) -> Result<Value, ApiError> {
    let b: PublishBody = body("publish", &v)?;
    let size = serde_json::to_vec(&b.data).map(|v| v.len()).unwrap_or(0);
    if size > node.cfg.max_message_size {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge.as_str(),
            format!("data larger than {} bytes", node.cfg.max_message_size),
        ));
    }
    let req = PublishRequest {
        publication: Publication {
            room: b.room,
            event: b.event,
            data: b.data,
            from: server_user(),
            offset: None,
            ts: crate::hub::now_ms(),
        },
        volatile: b.volatile,
        idempotency_key: b.id.map(|id| format!("{SERVER_USER}\u{1f}api\u{1f}{id}")),
        skip: None,
    };
    let res = node
        .bus
        .publish(req)
        .await
        .inspect_err(|_| node.metrics.bus_publish_errors.inc())?;
    Ok(match res.offset {
        Some(o) => json!({"offset": o, "epoch": res.epoch}),
        None => json!({}),
    })
}

async fn api(node: &Node, route: Api<'_>, req: Request<Incoming>) -> ApiResult {
    let no_route = || ApiError(StatusCode::NOT_FOUND, "not_found", "no such route".into());
    let room =
        |raw: &str| RoomName::new(&percent_decode(raw)).map_err(|e| ApiError::bad(e.to_string()));
    match route {
        Api::Publish => {
            let body = read_json(node, req).await?;
            match body {
                // The batch form: a list in, a list of results out, in order.
                Value::Array(items) => {
                    let mut out = Vec::with_capacity(items.len());
                    for item in items {
                        out.push(match publish_one(node, item).await {
                            Ok(v) => v,
                            Err(e) => json!({"error": {"code": e.1, "message": e.2}}),
                        });
                    }
                    Ok(json(StatusCode::OK, &json!({"results": out})))
                }
                v => Ok(json(StatusCode::OK, &publish_one(node, v).await?)),
            }
        }
        Api::Send => {
            let b: SendBody = body("send", &read_json(node, req).await?)?;
            let req = SendRequest {
                to: b.user,
                message: roomcast_protocol::DirectMessage {
                    from: server_user(),
                    event: b.event,
                    data: b.data,
                    ts: crate::hub::now_ms(),
                },
                idempotency_key: b.id.map(|id| format!("{SERVER_USER}\u{1f}api\u{1f}{id}")),
            };
            node.bus.send(req).await?;
            // `{}`: no count of connections reached. The message goes out once on the
            // bus and each node delivers it to what it holds; this node cannot know
            // what the others hold (PUBLISH counts subscribed nodes, and every node
            // subscribes). docs/openapi.json says so.
            Ok(json(StatusCode::OK, &json!({})))
        }
        Api::Disconnect => {
            let b: DisconnectBody = body("disconnect", &read_json(node, req).await?)?;
            node.bus
                .disconnect_user(&b.user, close::INVALID_TOKEN)
                .await?;
            // `{}` for the reason given under /api/send.
            Ok(json(StatusCode::OK, &json!({})))
        }
        Api::Presence(raw) => {
            let room = room(raw)?;
            let limit =
                commands::presence_limit(query_param(&req, "limit").and_then(|l| l.parse().ok()));
            let p = node.bus.presence(&room, limit).await?;
            Ok(json(
                StatusCode::OK,
                &json!({"room": room, "members": p.members, "count": p.count}),
            ))
        }
        Api::History(raw) => {
            let room = room(raw)?;
            let limit = query_param(&req, "limit")
                .and_then(|l| l.parse::<usize>().ok())
                .unwrap_or(100)
                .min(node.cfg.max_recover);
            let since = match query_param(&req, "since") {
                Some(s) => Some(
                    s.parse::<u64>()
                        .map_err(|_| ApiError::bad("since must be an offset (integer)"))?,
                ),
                None => None,
            };
            let h = match since {
                Some(offset) => {
                    let mut h = commands::history_after(node, &room, offset, 0).await?;
                    h.messages.truncate(limit);
                    h
                }
                None => {
                    node.bus
                        .history(&room, HistoryQuery { since: None, limit })
                        .await?
                }
            };
            Ok(json(
                StatusCode::OK,
                &json!({"room": room, "epoch": h.epoch, "offset": h.offset, "recovered": h.recovered, "messages": h.messages}),
            ))
        }
        Api::RoomOther(raw) => {
            room(raw)?;
            Err(no_route())
        }
        Api::NotPost(_) => Err(ApiError(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use POST".into(),
        )),
        Api::Unknown(_) | Api::ClientCommands | Api::ClientCommandsOther => Err(no_route()),
    }
}

/// `POST /client/commands`: one client message or a list, as the user of the JWT,
/// under the same room rules and rate limits as /ws; answers the list of replies.
async fn client_commands(node: &Node, peer: SocketAddr, req: Request<Incoming>) -> ApiResult {
    let who = match crate::conn::http_identity(node, peer, "http", &req).await {
        Ok(w) => w,
        Err(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable.as_str(),
                "authentication unavailable (the connect hook failed); try later".into(),
            ));
        }
        Err(_) => {
            node.metrics.errors.with_label_values(&["forbidden"]).inc();
            return Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid user token is required (Authorization: Bearer)".into(),
            ));
        }
    };
    let body = read_json(node, req).await?;
    let items = match body {
        Value::Array(items) => items,
        v => vec![v],
    };
    if items.len() > 100 {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge.as_str(),
            "at most 100 commands per request".into(),
        ));
    }
    let mut replies = Vec::new();
    for item in items {
        let bytes = serde_json::to_vec(&item).unwrap_or_default();
        let cmd = match Encoding::Json.decode_client(&bytes) {
            Ok(c) => c,
            Err(e) => {
                replies.push(ServerMessage::error(e.code, e.message, e.id));
                continue;
            }
        };
        node.metrics
            .messages_in
            .with_label_values(&[cmd.kind()])
            .inc();
        if !node.http_rate.allow(&who.user) {
            node.metrics.rate_limited.inc();
            replies.push(ServerMessage::error(
                ErrorCode::RateLimited,
                "too many requests; slow down",
                cmd.id().cloned(),
            ));
            continue;
        }
        if bytes.len() > node.cfg.max_message_size {
            replies.push(ServerMessage::error(
                ErrorCode::TooLarge,
                format!("message larger than {} bytes", node.cfg.max_message_size),
                cmd.id().cloned(),
            ));
            continue;
        }
        // Without a connection there is nothing to skip: the publisher's own SSE stream
        // receives its messages whatever `echo` says.
        let reply = match commands::Command::try_from(cmd) {
            Ok(cmd) => commands::run(node, &who, None, cmd).await,
            Err(needs_connection) => Some(needs_connection.refusal()),
        };
        if let Some(r) = reply {
            if let ServerMessage::Error { code, .. } = &r {
                node.metrics
                    .errors
                    .with_label_values(&[code.as_str()])
                    .inc();
            }
            replies.push(r);
        }
    }
    Ok(json(StatusCode::OK, &replies))
}
