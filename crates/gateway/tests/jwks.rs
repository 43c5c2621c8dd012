//! Issue 16, part 2: keys from a JWKS endpoint (`--jwt-jwks-url`). Every test runs a real
//! HTTP server on loopback that serves a JWK set and counts the requests it gets.
//!
//! The keys under tests/keys/ are throwaway keys made for these tests only;
//! `jwks_public.json` holds the public halves of rsa_private.pem (rsa1), rsa2_private.pem
//! (rsa2) and ec256_private.pem (ec256) as JWKs, without `kid`s (each test names them).

mod support;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use roomcast_protocol::Encoding;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use support::{jwk, key_file, Client, Closed, TestNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// A token for `sub` signed with a private key file, naming `kid`.
fn signed(alg: Algorithm, private: &str, kid: &str, sub: &str) -> String {
    let pem = std::fs::read(key_file(private)).expect("test key");
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .expect("private key");
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    jsonwebtoken::encode(&header, &json!({"sub": sub, "exp": exp}), &key).expect("encode")
}

/// A JWKS endpoint (plain http; tests/jwks_https.rs has TLS): serves the current set to every GET, counts requests, can go down.
struct JwksServer {
    addr: SocketAddr,
    set: Arc<Mutex<Value>>,
    count: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let set = Arc::new(Mutex::new(json!({ "keys": keys })));
        let (count_tx, count) = watch::channel(0usize);
        let served = set.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                // The request head; the client sends no body with its GET.
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    assert!(buf.len() < 16 * 1024, "request head too large");
                }
                count_tx.send_modify(|c| *c += 1);
                let body = served.lock().expect("set").to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            }
        });
        JwksServer {
            addr,
            set,
            count,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn replace(&self, keys: Vec<Value>) {
        *self.set.lock().expect("set") = json!({ "keys": keys });
    }

    fn requests(&self) -> usize {
        *self.count.borrow()
    }

    /// Waits until the node has fetched at least `n` times.
    async fn fetched(&mut self, n: usize) {
        tokio::time::timeout(support::WAIT, self.count.wait_for(|c| *c >= n))
            .await
            .expect("the node fetches the JWK set")
            .expect("server alive");
    }

    /// Stops answering: the port refuses connections from now on.
    async fn down(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A node that takes keys from `server`, RS256 pinned unless `extra` says otherwise;
/// unknown-kid refreshes are limited to one an hour, so that the counts are exact.
async fn node(server: &JwksServer, extra: &[&str]) -> TestNode {
    let url = server.url();
    let mut args = vec!["--jwt-jwks-url", &url, "--jwt-jwks-refresh", "3600"];
    args.extend_from_slice(extra);
    TestNode::start(&args).await
}

/// Connects with `token` and says how the node answered: welcome, or the close code.
async fn outcome(node: &TestNode, token: &str) -> Result<(), Closed> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("{}?token={token}", node.ws_url());
    let mut c = Client::connect_with(&url, Encoding::Json, &[])
        .await
        .expect("upgrade");
    loop {
        let f = tokio::time::timeout(support::WAIT, c.ws.next())
            .await
            .expect("a frame in time");
        match f {
            Some(Ok(Message::Text(_))) => return Ok(()),
            Some(Ok(Message::Close(c))) => {
                return Err(c
                    .map(|c| Closed::Code(c.code.into()))
                    .unwrap_or(Closed::NoFrame))
            }
            Some(Ok(_)) => continue,
            _ => return Err(Closed::NoFrame),
        }
    }
}

#[tokio::test]
async fn a_token_signed_by_a_jwks_key_is_accepted_and_others_refused() {
    let mut server = JwksServer::start(vec![jwk("rsa1", "k1")]).await;
    let n = node(&server, &[]).await;
    server.fetched(1).await;
    let ok = signed(Algorithm::RS256, "rsa_private.pem", "k1", "alice");
    assert_eq!(outcome(&n, &ok).await, Ok(()));
    // Signed by another key that claims k1: the signature does not verify.
    let forged = signed(Algorithm::RS256, "rsa2_private.pem", "k1", "mallory");
    assert_eq!(outcome(&n, &forged).await, Err(Closed::Code(4002)));
    // The algorithm is pinned by config (RS256), not by the token.
    let ps = signed(Algorithm::RS384, "rsa_private.pem", "k1", "alice");
    assert_eq!(outcome(&n, &ps).await, Err(Closed::Code(4002)));
    n.stop().await;
}

#[tokio::test]
async fn rotation_a_new_kid_causes_one_refresh_and_is_accepted() {
    let mut server = JwksServer::start(vec![jwk("rsa1", "old")]).await;
    let n = node(&server, &[]).await;
    server.fetched(1).await;
    let old = signed(Algorithm::RS256, "rsa_private.pem", "old", "alice");
    assert_eq!(outcome(&n, &old).await, Ok(()));
    assert_eq!(server.requests(), 1, "a cached kid costs no fetch");
    // The provider rotates: the new key is published, the old one withdrawn.
    server.replace(vec![jwk("rsa2", "new")]);
    let new = signed(Algorithm::RS256, "rsa2_private.pem", "new", "bob");
    assert_eq!(outcome(&n, &new).await, Ok(()));
    assert_eq!(server.requests(), 2, "one refresh for the new kid");
    assert_eq!(outcome(&n, &new).await, Ok(()));
    assert_eq!(server.requests(), 2);
    // The withdrawn key is gone with the refresh.
    assert_eq!(outcome(&n, &old).await, Err(Closed::Code(4002)));
    n.stop().await;
}

#[tokio::test]
async fn unknown_kids_fetch_at_most_once_per_interval() {
    let mut server = JwksServer::start(vec![jwk("rsa1", "k1")]).await;
    let n = node(&server, &[]).await;
    server.fetched(1).await;
    let before = server.requests();
    // Sequential and concurrent tokens with random kids.
    for i in 0..10 {
        let t = signed(
            Algorithm::RS256,
            "rsa_private.pem",
            &format!("rand-{i}"),
            "x",
        );
        assert_eq!(outcome(&n, &t).await, Err(Closed::Code(4002)));
    }
    let mut tasks = Vec::new();
    let n = Arc::new(n);
    for i in 0..20 {
        let n = n.clone();
        tasks.push(tokio::spawn(async move {
            let t = signed(
                Algorithm::RS256,
                "rsa_private.pem",
                &format!("many-{i}"),
                "x",
            );
            outcome(&n, &t).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), Err(Closed::Code(4002)));
    }
    assert_eq!(
        server.requests(),
        before + 1,
        "30 tokens with unknown kids cost one fetch"
    );
    // Known keys still work.
    let ok = signed(Algorithm::RS256, "rsa_private.pem", "k1", "alice");
    assert_eq!(outcome(&n, &ok).await, Ok(()));
    let metrics = support::http(n.addr, "GET", "/metrics", &[], "").await.1;
    assert!(
        metrics.contains("roomcast_jwks_unknown_kids_total 30"),
        "{metrics}"
    );
    if let Ok(n) = Arc::try_unwrap(n) {
        n.stop().await;
    }
}

#[tokio::test]
async fn endpoint_down_cached_keys_still_work() {
    let mut server = JwksServer::start(vec![jwk("rsa1", "k1")]).await;
    let n = node(&server, &[]).await;
    server.fetched(1).await;
    server.down().await;
    // An unknown kid makes the node try the endpoint, which fails...
    let unknown = signed(Algorithm::RS256, "rsa_private.pem", "k9", "x");
    assert_eq!(outcome(&n, &unknown).await, Err(Closed::Code(4002)));
    let metrics = support::http(n.addr, "GET", "/metrics", &[], "").await.1;
    assert!(
        metrics.contains("roomcast_jwks_fetches_total{result=\"failed\"} 1"),
        "{metrics}"
    );
    // ...and the keys it had still verify.
    let ok = signed(Algorithm::RS256, "rsa_private.pem", "k1", "alice");
    assert_eq!(outcome(&n, &ok).await, Ok(()));
    n.stop().await;
}

#[tokio::test]
async fn a_key_of_the_wrong_type_for_the_pinned_algorithm_is_refused() {
    // The set holds an EC key; the node pins RS256.
    let mut server = JwksServer::start(vec![jwk("ec256", "ec"), jwk("rsa1", "rsa")]).await;
    let n = node(&server, &[]).await;
    server.fetched(1).await;
    let ec = signed(Algorithm::ES256, "ec256_private.pem", "ec", "alice");
    assert_eq!(outcome(&n, &ec).await, Err(Closed::Code(4002)));
    // An RS256 token that names the EC key is refused too (no key confusion).
    let confused = signed(Algorithm::RS256, "rsa_private.pem", "ec", "alice");
    assert_eq!(outcome(&n, &confused).await, Err(Closed::Code(4002)));
    assert_eq!(server.requests(), 1, "a refused key is known: no refresh");
    n.stop().await;
    // With ES256 pinned the same EC key verifies, and the RSA key is the wrong type.
    let n = node(&server, &["--jwt-algorithms", "ES256"]).await;
    server.fetched(2).await;
    assert_eq!(outcome(&n, &ec).await, Ok(()));
    let rsa = signed(Algorithm::RS256, "rsa_private.pem", "rsa", "alice");
    assert_eq!(outcome(&n, &rsa).await, Err(Closed::Code(4002)));
    n.stop().await;
}

#[tokio::test]
async fn bad_jwks_settings_are_refused_at_start() {
    use roomcast_gateway::config::Config;
    let e = Config::from_args(["--jwt-jwks-url", "ftp://idp.example/jwks"]).expect_err("not http");
    assert!(
        e.to_string().contains("not an https:// or http:// URL"),
        "{e}"
    );
    let e = Config::from_args([
        "--jwt-jwks-url",
        "http://127.0.0.1:1/jwks",
        "--jwt-algorithms",
        "HS256",
    ])
    .expect_err("HMAC");
    assert!(e.to_string().contains("HMAC"), "{e}");
    let e = Config::from_args([
        "--jwt-jwks-url",
        "http://127.0.0.1:1/jwks",
        "--jwt-secret",
        "s",
    ])
    .expect_err("two key sources");
    assert!(e.to_string().contains("one source of keys"), "{e}");
}
