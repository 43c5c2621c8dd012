//! What a request asks for, read once from its method and path: the node's dispatch
//! and the backend API's metrics label both come from this one value.

use hyper::Method;

/// A node's routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET /ws`: the WebSocket upgrade.
    Ws,
    /// `GET /healthz`.
    Healthz,
    /// `GET /readyz`.
    Readyz,
    /// `GET /metrics`.
    Metrics,
    /// `GET /sse`.
    Sse,
    /// `GET /`.
    Root,
    /// `/admin` and anything under `/admin/`, any method (only when the admin page is on;
    /// otherwise an unknown path like any other).
    Admin,
    /// `GET /demo...`.
    Demo,
    /// `/client/commands` and `/api/...`: each holds one of its client address's request
    /// slots and is counted by [`Api::label`].
    Api(Api<'a>),
    /// Anything else: 404.
    NotFound,
}

/// The backend API's routes (`/api/...`) and the HTTP fallback (`/client/commands`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api<'a> {
    /// `POST /client/commands`.
    ClientCommands,
    /// `/client/commands` with another method: 404, counted only when refused for the
    /// address's request slots.
    ClientCommandsOther,
    /// `POST /api/publish`.
    Publish,
    /// `POST /api/send`.
    Send,
    /// `POST /api/disconnect`.
    Disconnect,
    /// `GET /api/rooms/{room}/presence`, the room still percent-encoded.
    Presence(&'a str),
    /// `GET /api/rooms/{room}/history`, the room still percent-encoded.
    History(&'a str),
    /// `GET /api/rooms/{room}/{other}`: 404 once the room is found valid (400 if not).
    RoomOther(&'a str),
    /// Publish, send or disconnect with another method than POST: 405.
    NotPost(&'static str),
    /// No such route under `/api/`: 404, counted under this label.
    Unknown(&'static str),
}

impl<'a> Route<'a> {
    /// The route of `method` on `path`; `admin` says whether the admin page is on.
    pub fn parse(method: &Method, path: &'a str, admin: bool) -> Self {
        let get = method == Method::GET;
        match path {
            "/ws" if get => Route::Ws,
            "/healthz" if get => Route::Healthz,
            "/readyz" if get => Route::Readyz,
            "/metrics" if get => Route::Metrics,
            "/sse" if get => Route::Sse,
            "/" if get => Route::Root,
            p if admin && (p == "/admin" || p.starts_with("/admin/")) => Route::Admin,
            p if get && p.starts_with("/demo") => Route::Demo,
            "/client/commands" if method == Method::POST => Route::Api(Api::ClientCommands),
            "/client/commands" => Route::Api(Api::ClientCommandsOther),
            p if p.starts_with("/api/") => Route::Api(Api::parse(method, p)),
            _ => Route::NotFound,
        }
    }
}

impl<'a> Api<'a> {
    /// An `/api/...` route.
    fn parse(method: &Method, path: &'a str) -> Self {
        let post = method == Method::POST;
        match path {
            "/api/publish" if post => Api::Publish,
            "/api/send" if post => Api::Send,
            "/api/disconnect" if post => Api::Disconnect,
            "/api/publish" => Api::NotPost("publish"),
            "/api/send" => Api::NotPost("send"),
            "/api/disconnect" => Api::NotPost("disconnect"),
            p if method == Method::GET && p.starts_with("/api/rooms/") => {
                match p["/api/rooms/".len()..].rsplit_once('/') {
                    Some((room, "presence")) => Api::Presence(room),
                    Some((room, "history")) => Api::History(room),
                    Some((room, _)) => Api::RoomOther(room),
                    None => Api::Unknown(unknown_label(p)),
                }
            }
            p => Api::Unknown(unknown_label(p)),
        }
    }

    /// The `route` label of `roomcast_api_requests_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Api::ClientCommands | Api::ClientCommandsOther => "client_commands",
            Api::Publish => "publish",
            Api::Send => "send",
            Api::Disconnect => "disconnect",
            Api::Presence(_) => "presence",
            Api::History(_) => "history",
            Api::RoomOther(_) => "unknown",
            Api::NotPost(label) | Api::Unknown(label) => label,
        }
    }
}

/// The label of a path under `/api/` that no route serves: by its last segment, so that
/// a mistyped room route is still counted with its kind.
fn unknown_label(path: &str) -> &'static str {
    if path.ends_with("/presence") {
        "presence"
    } else if path.ends_with("/history") {
        "history"
    } else {
        "unknown"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_labels() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(Route::parse(&get, "/ws", false), Route::Ws);
        assert_eq!(Route::parse(&post, "/ws", false), Route::NotFound);
        assert_eq!(Route::parse(&get, "/admin/x", false), Route::NotFound);
        assert_eq!(Route::parse(&post, "/admin/x", true), Route::Admin);
        assert_eq!(Route::parse(&get, "/demo/app.js", false), Route::Demo);
        let api = |m: &Method, p: &'static str| match Route::parse(m, p, false) {
            Route::Api(a) => Some((a, a.label())),
            _ => None,
        };
        assert_eq!(
            api(&get, "/api/rooms/a%2Fb/presence"),
            Some((Api::Presence("a%2Fb"), "presence"))
        );
        assert_eq!(
            api(&get, "/api/rooms/a/b/history"),
            Some((Api::History("a/b"), "history"))
        );
        assert_eq!(
            api(&get, "/api/rooms/a/x"),
            Some((Api::RoomOther("a"), "unknown"))
        );
        assert_eq!(
            api(&post, "/api/rooms/a/presence"),
            Some((Api::Unknown("presence"), "presence"))
        );
        assert_eq!(
            api(&get, "/api/publish"),
            Some((Api::NotPost("publish"), "publish"))
        );
        assert_eq!(
            api(&get, "/client/commands"),
            Some((Api::ClientCommandsOther, "client_commands"))
        );
        assert_eq!(api(&get, "/apix"), None);
    }
}
