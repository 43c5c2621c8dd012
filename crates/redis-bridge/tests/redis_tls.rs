//! `rediss://`: a node talks to a TLS-only `redis-server` (its own binary, because the
//! test trusts a self-signed certificate through the process-wide `SSL_CERT_FILE`).

mod support;

use roomcast_redis_bridge::{Bus, PublishRequest, RedisBus};
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_deliver_over_tls() {
    let (server, cert) = RedisServer::start_tls();
    // rustls-native-certs reads the trusted roots from here; nothing else in this
    // test binary runs concurrently.
    std::env::set_var("SSL_CERT_FILE", &cert);
    let (delivery, mut events) = collector();
    let bus = RedisBus::connect(&server.url(), config("tls"))
        .await
        .expect("connect over TLS");
    bus.start(delivery).await.expect("start");
    assert!(events.state().await);
    let req = PublishRequest {
        publication: publication("r", "alice", json!("secret")),
        volatile: false,
        idempotency_key: None,
        skip: None,
    };
    assert_eq!(bus.publish(req).await.expect("publish").offset, Some(1));
    assert_eq!(events.message().await.0.data, json!("secret"));
    bus.close().await;
}
