//! Issue 13, F6 and F8: token claims the node must refuse (`iat` in the future or of the
//! wrong type), and key material or algorithm lists it must refuse at start (exit 2 with
//! one clear line) rather than failing every token later.
//!
//! The PEM files under tests/keys/ are throwaway keys made for these tests only.

mod support;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use roomcast_protocol::Encoding;
use serde_json::json;
use std::path::PathBuf;
use support::{Client, Closed, TestNode, SECRET};

fn key(name: &str) -> PathBuf {
    support::key_file(name)
}

fn key_arg(name: &str) -> String {
    key(name).display().to_string()
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn hs256(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode")
}

fn rs(alg: Algorithm, claims: serde_json::Value) -> String {
    let pem = std::fs::read(key("rsa_private.pem")).expect("test key");
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_rsa_pem(&pem).expect("rsa key"),
    )
    .expect("encode")
}

/// Connects with `token` in the query and says how the node answered: welcome, or a close.
async fn outcome(node: &TestNode, token: &str) -> Result<(), Closed> {
    let url = format!("{}?token={token}", node.ws_url());
    let mut c = Client::connect_with(&url, Encoding::Json, &[])
        .await
        .expect("upgrade");
    welcome_or_close(&mut c).await
}

/// The welcome (Ok) or the close code that comes first.
async fn welcome_or_close(c: &mut Client) -> Result<(), Closed> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    {
        loop {
            let f = tokio::time::timeout(support::WAIT, c.ws.next())
                .await
                .expect("a frame in time");
            match f {
                Some(Ok(Message::Text(t))) => {
                    let m = Encoding::Json
                        .decode_server(t.as_bytes())
                        .expect("server message");
                    assert!(
                        matches!(m, roomcast_protocol::ServerMessage::Welcome { .. }),
                        "expected welcome, got {m:?}"
                    );
                    return Ok(());
                }
                Some(Ok(Message::Close(c))) => {
                    return Err(c
                        .map(|c| Closed::Code(c.code.into()))
                        .unwrap_or(Closed::NoFrame))
                }
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return Err(Closed::NoFrame),
            }
        }
    }
}

#[tokio::test]
async fn iat_in_the_future_or_not_a_number_is_refused() {
    let node = TestNode::jwt(&["--jwt-leeway", "5"]).await;
    let exp = now() + 600;
    // Control: a token issued now (or a moment ago, or within the leeway) is fine.
    for iat in [
        json!(now()),
        json!(now() - 30),
        json!(now() + 2),
        json!(1.5e9),
    ] {
        let t = hs256(json!({"sub": "u", "exp": exp, "iat": iat}));
        assert_eq!(outcome(&node, &t).await, Ok(()), "iat {iat} is valid");
    }
    // An hour ahead, a string, a negative number, an object: 4002.
    for iat in [
        json!(now() + 3600),
        json!(now() + 60),
        json!("1700000000"),
        json!(-5),
        json!({"t": 1}),
        json!(true),
    ] {
        let t = hs256(json!({"sub": "u", "exp": exp, "iat": iat}));
        assert_eq!(
            outcome(&node, &t).await,
            Err(Closed::Code(4002)),
            "iat {iat} must be refused"
        );
    }
    node.stop().await;
}

/// Runs the real binary with these flags; returns its exit code and stderr. It must
/// stop by itself (every case here is refused before it binds).
async fn start_binary(args: &[&str]) -> (Option<i32>, String) {
    support::exit_of(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("ROOMCAST_JWT_SECRET")
            .env_remove("ROOMCAST_JWT_PUBLIC_KEY")
            .env_remove("ROOMCAST_JWT_ALGORITHMS")
            .env_remove("ROOMCAST_CONFIG"),
    )
    .await
}

#[tokio::test]
async fn bad_key_material_and_impossible_algorithm_lists_exit_2_at_start() {
    let garbage = std::env::temp_dir().join(format!("roomcast-garbage-{}.pem", std::process::id()));
    std::fs::write(&garbage, b"this is not a key\n").expect("write");
    let garbage_pem =
        std::env::temp_dir().join(format!("roomcast-garbage2-{}.pem", std::process::id()));
    std::fs::write(
        &garbage_pem,
        b"-----BEGIN PUBLIC KEY-----\nAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n-----END PUBLIC KEY-----\n",
    )
    .expect("write");
    let (rsa_priv, rsa_priv1, rsa_pub, ec256, ec384, ed, cert, ec_priv) = (
        key_arg("rsa_private.pem"),
        key_arg("rsa_private_pkcs1.pem"),
        key_arg("rsa_public.pem"),
        key_arg("ec256_public.pem"),
        key_arg("ec384_public.pem"),
        key_arg("ed_public.pem"),
        key_arg("rsa_cert.pem"),
        key_arg("ec256_private.pem"),
    );
    let (g, gp) = (
        garbage.display().to_string(),
        garbage_pem.display().to_string(),
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--jwt-public-key", &rsa_priv], "private key"),
        (vec!["--jwt-public-key", &rsa_priv1], "private key"),
        (vec!["--jwt-public-key", &ec_priv], "private key"),
        (vec!["--jwt-public-key", &cert], "certificate"),
        (vec!["--jwt-public-key", &g], "PEM"),
        (vec!["--jwt-public-key", &gp], "public key"),
        (
            vec![
                "--jwt-public-key",
                &rsa_pub,
                "--jwt-algorithms",
                "RS256,HS256",
            ],
            "one key",
        ),
        (
            vec!["--jwt-secret", "s", "--jwt-algorithms", "HS256,RS256"],
            "one key",
        ),
        (
            vec![
                "--jwt-public-key",
                &rsa_pub,
                "--jwt-algorithms",
                "RS256,ES256",
            ],
            "one key",
        ),
        (
            vec!["--jwt-public-key", &rsa_pub, "--jwt-algorithms", "ES256"],
            "ES256",
        ),
        (
            vec!["--jwt-public-key", &ec256, "--jwt-algorithms", "RS256"],
            "RS256",
        ),
        (
            vec!["--jwt-public-key", &ec384, "--jwt-algorithms", "ES256"],
            "ES256",
        ),
        (
            vec!["--jwt-public-key", &ed, "--jwt-algorithms", "ES256"],
            "ES256",
        ),
        (
            vec!["--jwt-secret", "s", "--jwt-algorithms", "RS256"],
            "RS256",
        ),
        (
            vec!["--jwt-secret", "s", "--jwt-algorithms", "XX999"],
            "XX999",
        ),
        (
            vec!["--jwt-secret", "s", "--jwt-public-key", &rsa_pub],
            "not both",
        ),
    ];
    for (args, says) in cases {
        let (code, stderr) = start_binary(&args).await;
        assert_eq!(code, Some(2), "{args:?} must exit 2; stderr: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, got {stderr:?}");
        assert!(
            lines[0].starts_with("roomcast: ") && lines[0].contains(says),
            "{args:?}: the line says {says:?}: {stderr:?}"
        );
    }
    let _ = std::fs::remove_file(garbage);
    let _ = std::fs::remove_file(garbage_pem);
}

#[tokio::test]
async fn good_keys_and_lists_start_and_verify() {
    use roomcast_gateway::auth::Authenticator;
    use roomcast_gateway::config::Config;
    let claims = json!({"sub": "u", "exp": now() + 600});
    // An RSA public key (SPKI or PKCS#1) with the RSA family listed verifies RS256 and PS256.
    for pubkey in ["rsa_public.pem", "rsa_public_pkcs1.pem"] {
        let cfg = Config::from_args([
            "--jwt-public-key",
            &key_arg(pubkey),
            "--jwt-algorithms",
            "RS256,PS256",
        ])
        .expect("valid config");
        let a = Authenticator::from_config(&cfg).expect("authenticator");
        for alg in [Algorithm::RS256, Algorithm::PS256] {
            a.verify(&rs(alg, claims.clone()))
                .unwrap_or_else(|e| panic!("{pubkey} {alg:?}: {e}"));
        }
        assert!(
            a.verify(&rs(Algorithm::RS384, claims.clone())).is_err(),
            "not listed"
        );
    }
    // Each key type on its own picks its algorithm.
    for (k, list) in [
        ("rsa_public.pem", None),
        ("ec256_public.pem", Some("ES256")),
        ("ec256_public.pem", None),
        ("ec384_public.pem", Some("ES384")),
        ("ed_public.pem", Some("EdDSA")),
    ] {
        let p = key_arg(k);
        let mut args = vec!["--jwt-public-key", p.as_str()];
        if let Some(l) = list {
            args.extend(["--jwt-algorithms", l]);
        }
        Config::from_args(args).unwrap_or_else(|e| panic!("{k} {list:?}: {e}"));
    }
    // A secret takes any HMAC list.
    Config::from_args(["--jwt-secret", "s", "--jwt-algorithms", "HS512,HS256"])
        .expect("HMAC family with a secret");
    Config::from_args([
        "--jwt-public-key",
        &key_arg("rsa_public.pem"),
        "--jwt-algorithms",
        "RS256,RS512,PS384",
    ])
    .expect("the RSA family with an RSA key");
    // And a real node with the RSA key takes an RS256 token end to end.
    let p = key_arg("rsa_public.pem");
    let node = TestNode::start(&["--jwt-public-key", &p]).await;
    assert_eq!(outcome(&node, &rs(Algorithm::RS256, claims)).await, Ok(()));
    node.stop().await;
}
