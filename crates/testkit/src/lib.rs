//! The test kit of roomcast's own test suites (dev-only): the parts every suite starts
//! for real, written once.
//!
//! - [`RedisServer`]: a `redis-server` child on a free loopback port (plain, password,
//!   TLS), killed on drop, restartable empty.
//! - [`Client`]: a real WebSocket client speaking JSON or MessagePack, with request/reply
//!   helpers ([`Client::request`], [`Client::join`], [`Client::publish_acked`]).
//! - [`http`] / [`body_of`]: raw HTTP/1.1 over a TCP socket, so tests see exactly what
//!   went over the wire; [`SseStream`]: an incremental SSE reader.
//! - [`ChildNode`]: the `roomcast` binary as a child process (for kill -9).
//! - [`eventually`]: polling with a bound, for states that have no event to await.
#![allow(unreachable_pub)]

mod child;
mod http;
mod redis_server;
mod sse;
mod ws;

pub use child::{roomcast_bin, ChildNode};
pub use http::{body_of, http};
pub use redis_server::RedisServer;
pub use sse::{SseEvent, SseStream};
pub use ws::{
    epoch_of, err_code, is_direct, is_error, is_member_event, is_message, publication, replayed,
    reply_id, Client, Closed,
};

use std::time::Duration;

/// How long any awaited event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Polls `f` (with a short pause between tries) until it returns `Some`, for at most
/// twice [`WAIT`]; panics with `what` otherwise. For states that have no event to await
/// (readiness, presence expiry).
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {:?}",
            WAIT * 2
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free loopback TCP port (bound and released; a caller retries if it is taken since).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}
