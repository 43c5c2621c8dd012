//! Issue 16, part 2: a JWKS endpoint served over https. The endpoint's certificate is
//! signed by a throwaway test CA (tests/keys/jwks_ca.pem), which this test process trusts
//! through `SSL_CERT_FILE`, the way an operator adds a private CA. One test per process:
//! the environment variable is set before the node starts and nothing else runs here.

mod support;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use roomcast_protocol::Encoding;
use serde_json::json;
use std::sync::Arc;
use support::{jwk, key_file, Client, TestNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[tokio::test]
async fn keys_are_fetched_over_https() {
    // Before any TLS client exists in this process (read once, at connector creation).
    std::env::set_var("SSL_CERT_FILE", key_file("jwks_ca.pem"));
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(key_file("jwks_tls_cert.pem"))
            .expect("cert file")
            .collect::<Result<_, _>>()
            .expect("certs");
    let key = PrivateKeyDer::from_pem_file(key_file("jwks_tls_key.pem")).expect("tls key");
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (count_tx, mut count) = tokio::sync::watch::channel(0usize);
    let body = json!({"keys": [jwk("rsa1", "k1")]}).to_string();
    let server = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let Ok(mut tls) = acceptor.accept(sock).await else {
                continue;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            count_tx.send_modify(|c| *c += 1);
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(resp.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    });
    let url = format!("https://localhost:{port}/.well-known/jwks.json");
    let node = TestNode::start(&["--jwt-jwks-url", &url]).await;
    tokio::time::timeout(support::WAIT, count.wait_for(|c| *c >= 1))
        .await
        .expect("the node fetches the set over https")
        .expect("server alive");
    let pem = std::fs::read(key_file("rsa_private.pem")).expect("test key");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let token = jsonwebtoken::encode(
        &header,
        &json!({"sub": "alice", "exp": exp}),
        &EncodingKey::from_rsa_pem(&pem).expect("rsa"),
    )
    .expect("encode");
    let url = format!("{}?token={token}", node.ws_url());
    let mut c = Client::connect_with(&url, Encoding::Json, &[])
        .await
        .expect("upgrade");
    let m = c.recv().await;
    assert!(
        matches!(m, roomcast_protocol::ServerMessage::Welcome { .. }),
        "expected welcome, got {m:?}"
    );
    let metrics = support::http(node.addr, "GET", "/metrics", &[], "").await.1;
    assert!(
        metrics.contains("roomcast_jwks_fetches_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    node.stop().await;
    server.abort();
}
