//! The demo chat served at `/demo`: static files built from clients/js/demo and
//! compiled into the binary, so that a fresh node shows something in a browser at once.

use crate::http::util::{full, Body};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

const INDEX: &[u8] = include_bytes!("../../../clients/js/demo/dist/index.html");
const APP: &[u8] = include_bytes!("../../../clients/js/demo/dist/app.js");
const STYLE: &[u8] = include_bytes!("../../../clients/js/demo/dist/style.css");

/// Serves `/demo`, `/demo/` and its assets; `None` for other paths. `query` is kept
/// on the redirect from `/demo` (the page reads `?name=&room=`).
pub fn serve(path: &str, query: Option<&str>) -> Option<Response<Body>> {
    let (body, ctype): (&'static [u8], &'static str) = match path {
        "/demo/" | "/demo/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/demo/app.js" => (APP, "text/javascript; charset=utf-8"),
        "/demo/style.css" => (STYLE, "text/css; charset=utf-8"),
        "/demo" => {
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
            let to = match query {
                Some(q) if !q.is_empty() => format!("/demo/?{q}"),
                _ => "/demo/".to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&to) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return Some(r);
        }
        _ => return None,
    };
    let mut r = Response::new(full(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(r)
}
