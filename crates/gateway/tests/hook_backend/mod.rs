//! A real HTTP backend for hook tests: a hyper server on a loopback port that records
//! every request (path, headers, body, whether its signature verifies) and answers with
//! what the test's handler says.
#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::Sha256;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The secret the tests sign hook requests with.
pub const HOOK_SECRET: &str = "hook-test-secret";

/// One request the backend received.
#[derive(Debug, Clone)]
pub struct Call {
    /// The path (`/connect`, `/join`, `/publish`).
    pub path: String,
    /// The JSON body.
    pub body: Value,
    /// Whether `X-Roomcast-Signature` is the HMAC of the body under
    /// [`HOOK_SECRET`].
    pub signed: bool,
}

/// What the handler answers: a status and a body.
pub type Answer = Pin<Box<dyn Future<Output = (u16, String)> + Send>>;
type Handler = Arc<dyn Fn(Call) -> Answer + Send + Sync>;

/// The backend: lives until dropped.
pub struct HookBackend {
    pub addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    seen: mpsc::UnboundedReceiver<Call>,
    stop: CancellationToken,
}

impl Drop for HookBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn verify(headers: &hyper::HeaderMap, body: &[u8]) -> bool {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let (Some(sig), Some(ts)) = (get("x-roomcast-signature"), get("x-roomcast-timestamp")) else {
        return false;
    };
    let Some(hex) = sig.strip_prefix("sha256=") else {
        return false;
    };
    let Some(bytes) = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).expect("hmac key");
    mac.update(body);
    // The time the header names is the body's `ts`, which the signature covers.
    let body_ts = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("ts").map(|t| t.to_string()));
    mac.verify_slice(&bytes).is_ok() && body_ts.as_deref() == Some(ts)
}

impl HookBackend {
    /// Starts a backend answering every request with `handler`.
    pub async fn start(handler: impl Fn(Call) -> Answer + Send + Sync + 'static) -> HookBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let handler: Handler = Arc::new(handler);
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (tx, seen) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let (c, s) = (calls.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = s.cancelled() => return,
                    r = listener.accept() => match r { Ok((st, _)) => st, Err(_) => continue },
                };
                let (handler, calls, tx, s2) = (handler.clone(), c.clone(), tx.clone(), s.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (handler, calls, tx) = (handler.clone(), calls.clone(), tx.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            let headers = req.headers().clone();
                            let body = req.into_body().collect().await?.to_bytes();
                            // Every body carries the send time `ts` (checked against the
                            // header by `verify`); tests see the application's fields.
                            let mut fields: Value =
                                serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let has_ts = fields
                                .as_object_mut()
                                .and_then(|o| o.remove("ts"))
                                .is_some_and(|t| t.is_u64());
                            let call = Call {
                                path,
                                body: if has_ts { fields } else { Value::Null },
                                signed: verify(&headers, &body),
                            };
                            calls.lock().expect("calls").push(call.clone());
                            let _ = tx.send(call.clone());
                            let (status, text) = handler(call).await;
                            let mut resp = Response::new(Full::new(Bytes::from(text)));
                            *resp.status_mut() =
                                hyper::StatusCode::from_u16(status).expect("status");
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = s2.cancelled() => {}
                    }
                });
            }
        });
        HookBackend {
            addr,
            calls,
            seen,
            stop,
        }
    }

    /// A backend answering every request 200 with `json`.
    pub async fn answering(json: Value) -> HookBackend {
        let text = json.to_string();
        Self::start(move |_| {
            let t = text.clone();
            Box::pin(async move { (200, t) })
        })
        .await
    }

    /// The URL of `path` on this backend.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Every request so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }

    /// Waits for the next request.
    pub async fn next_call(&mut self) -> Call {
        tokio::time::timeout(crate::support::WAIT, self.seen.recv())
            .await
            .expect("a hook call in time")
            .expect("backend alive")
    }
}

/// An answer in JSON with status 200.
pub fn ok(v: Value) -> Answer {
    Box::pin(async move { (200, v.to_string()) })
}

/// An address on loopback where nothing listens (bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr")
}
