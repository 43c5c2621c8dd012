//! Authentication: JWT verification (PROTOCOL.md §2) and what a verified token allows.

use crate::config::{AuthMode, Config, RoomPolicy};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use roomcast_protocol::{RoomName, UserId};
use serde::Deserialize;
use std::str::FromStr;

/// Why a token was refused (close 4002); the reason also labels the auth-failure metric.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// The token is malformed, badly signed or fails a claim check.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// A refresh token names another user.
    #[error("token is for another user")]
    OtherUser,
}

impl AuthError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Expired => "expired",
            AuthError::Invalid(_) => "invalid",
            AuthError::OtherUser => "other_user",
        }
    }
}

/// What an authenticated connection may do.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user id (`sub`).
    pub user: UserId,
    /// Token expiry, seconds since the Unix epoch (none with `--auth none`).
    pub exp: Option<u64>,
    /// Room patterns from the `rooms` claim; `None` means the server's default policy.
    pub rooms: Option<Vec<String>>,
    /// May publish (the `publish` claim).
    pub publish: bool,
    /// May ask for presence (the `presence` claim).
    pub presence: bool,
}

impl Identity {
    /// Whether this identity may join and publish to `room`.
    pub fn may_access(&self, room: &RoomName, default: RoomPolicy) -> bool {
        match &self.rooms {
            Some(patterns) => patterns.iter().any(|p| glob_match(p, room.as_str())),
            None => default == RoomPolicy::Allow,
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default)]
    publish: Option<bool>,
    #[serde(default)]
    presence: Option<bool>,
}

/// Verifies tokens with the configured key and rules; the accepted algorithms come
/// from configuration, never from the token (`alg: none` is never accepted).
pub struct Authenticator {
    mode: AuthMode,
    key: Option<DecodingKey>,
    validation: Validation,
    /// The room policy for tokens without a `rooms` claim.
    pub default_policy: RoomPolicy,
}

impl Authenticator {
    /// Builds the verifier from configuration; fails with a message naming the setting.
    pub fn from_config(cfg: &Config) -> Result<Self, String> {
        let (key, default_algs): (Option<DecodingKey>, Vec<Algorithm>) =
            match (&cfg.jwt_secret, &cfg.jwt_public_key) {
                (Some(secret), _) => (
                    Some(DecodingKey::from_secret(secret.as_bytes())),
                    vec![Algorithm::HS256],
                ),
                (None, Some(path)) => {
                    let pem = std::fs::read(path)
                        .map_err(|e| format!("--jwt-public-key {}: {e}", path.display()))?;
                    let text = String::from_utf8_lossy(&pem);
                    // Try the key kinds in turn; the first that parses decides the default algorithm.
                    if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                        (Some(k), vec![Algorithm::RS256])
                    } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                        (Some(k), vec![Algorithm::ES256])
                    } else if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
                        (Some(k), vec![Algorithm::EdDSA])
                    } else {
                        let hint = if text.contains("PRIVATE") {
                            " (that is a private key: give the public one)"
                        } else {
                            ""
                        };
                        return Err(format!(
                        "--jwt-public-key {}: not an RSA, EC or Ed25519 public key in PEM{hint}",
                        path.display()
                    ));
                    }
                }
                (None, None) if cfg.auth == AuthMode::Jwt => {
                    return Err("--auth jwt needs --jwt-secret or --jwt-public-key".into());
                }
                (None, None) => (None, vec![Algorithm::HS256]),
            };
        let algorithms = match &cfg.jwt_algorithms {
            Some(list) => crate::config::split_list(list)
                .iter()
                .map(|a| {
                    Algorithm::from_str(a)
                        .map_err(|_| format!("--jwt-algorithms: unknown algorithm {a:?}"))
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => default_algs,
        };
        if algorithms.is_empty() {
            return Err("--jwt-algorithms must name at least one algorithm".into());
        }
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = cfg.jwt_leeway;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &cfg.jwt_audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &cfg.jwt_issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Authenticator {
            mode: cfg.auth,
            key,
            validation,
            default_policy: cfg.default_room_policy,
        })
    }

    /// The mode, as the welcome message names it.
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            AuthMode::Jwt => "jwt",
            AuthMode::None => "none",
        }
    }

    /// Whether tokens are checked at all.
    pub fn enabled(&self) -> bool {
        self.mode == AuthMode::Jwt
    }

    /// The identity of an unauthenticated connection with `--auth none`.
    pub fn anonymous(&self, conn_id: &str) -> Option<Identity> {
        if self.enabled() {
            return None;
        }
        Some(Identity {
            user: UserId::new(conn_id).ok()?,
            exp: None,
            rooms: None,
            publish: true,
            presence: true,
        })
    }

    /// Verifies a token.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let key = self
            .key
            .as_ref()
            .ok_or_else(|| AuthError::Invalid("no key configured".into()))?;
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                    other => AuthError::Invalid(format!("{other:?}")),
                }
            })?;
        let c = data.claims;
        let user = UserId::new(&c.sub).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if user.as_str() == roomcast_protocol::SERVER_USER {
            // Reserved for the backend API: a client must not look like the backend.
            return Err(AuthError::Invalid(format!(
                "sub {:?} is reserved",
                roomcast_protocol::SERVER_USER
            )));
        }
        Ok(Identity {
            user,
            exp: Some(c.exp),
            rooms: c.rooms,
            publish: c.publish.unwrap_or(true),
            presence: c.presence.unwrap_or(true),
        })
    }

    /// The configured clock leeway, seconds.
    pub fn leeway(&self) -> u64 {
        self.validation.leeway
    }
}

/// Matches `text` against `pattern`, where `*` matches any run of characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("chat:*", "chat:lobby"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("user:42", "user:42"));
        assert!(!glob_match("user:42", "user:421"));
        assert!(glob_match("a*c*e", "abcde"));
        assert!(!glob_match("chat:*", "chatx"));
        assert!(glob_match("*:end", "x:y:end"));
    }

    fn auth(extra: &[&str]) -> Authenticator {
        let mut args = vec!["--jwt-secret", "k"];
        args.extend_from_slice(extra);
        Authenticator::from_config(&Config::from_args(args).expect("config")).expect("auth")
    }

    fn token(claims: serde_json::Value, alg: Algorithm) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(alg),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"k"),
        )
        .expect("encode")
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn verifies_claims() {
        let a = auth(&[]);
        let id = a.verify(&token(serde_json::json!({"sub": "u1", "exp": now() + 60, "rooms": ["chat:*"], "publish": false}), Algorithm::HS256)).expect("valid");
        assert_eq!(id.user.as_str(), "u1");
        assert!(!id.publish);
        assert!(id.may_access(&RoomName::new("chat:x").expect("room"), RoomPolicy::Deny));
        assert!(!id.may_access(&RoomName::new("other").expect("room"), RoomPolicy::Allow));
        assert_eq!(
            a.verify(&token(
                serde_json::json!({"sub": "u", "exp": now() - 100}),
                Algorithm::HS256
            ))
            .err(),
            Some(AuthError::Expired)
        );
        assert!(
            a.verify(&token(
                serde_json::json!({"exp": now() + 60}),
                Algorithm::HS256
            ))
            .is_err(),
            "sub required"
        );
        assert!(
            a.verify(&token(serde_json::json!({"sub": "u"}), Algorithm::HS256))
                .is_err(),
            "exp required"
        );
        assert!(
            a.verify(&token(
                serde_json::json!({"sub": "u", "exp": now() + 60, "nbf": now() + 600}),
                Algorithm::HS256
            ))
            .is_err(),
            "nbf checked"
        );
        // The algorithm list comes from config: an HS384 token is refused.
        assert!(a
            .verify(&token(
                serde_json::json!({"sub": "u", "exp": now() + 60}),
                Algorithm::HS384
            ))
            .is_err());
        assert!(a.verify("not.a.token").is_err());
        assert!(
            a.verify(&token(
                serde_json::json!({"sub": "server", "exp": now() + 60}),
                Algorithm::HS256
            ))
            .is_err(),
            "reserved sub"
        );
    }

    #[test]
    fn refuses_alg_none() {
        use base64_like::encode;
        let a = auth(&[]);
        let t = format!(
            "{}.{}.",
            encode(br#"{"alg":"none","typ":"JWT"}"#),
            encode(format!(r#"{{"sub":"u","exp":{}}}"#, now() + 60).as_bytes())
        );
        assert!(a.verify(&t).is_err());
    }

    #[test]
    fn audience_and_issuer() {
        let a = auth(&["--jwt-audience", "app", "--jwt-issuer", "me"]);
        let ok = serde_json::json!({"sub": "u", "exp": now() + 60, "aud": "app", "iss": "me"});
        assert!(a.verify(&token(ok, Algorithm::HS256)).is_ok());
        let bad = serde_json::json!({"sub": "u", "exp": now() + 60, "aud": "other", "iss": "me"});
        assert!(a.verify(&token(bad, Algorithm::HS256)).is_err());
    }

    /// base64url without padding, enough for the test.
    mod base64_like {
        pub fn encode(b: &[u8]) -> String {
            const T: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for c in b.chunks(3) {
                let n = (c[0] as u32) << 16
                    | (*c.get(1).unwrap_or(&0) as u32) << 8
                    | *c.get(2).unwrap_or(&0) as u32;
                let k = c.len() + 1;
                for i in 0..k {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                }
            }
            out
        }
    }
}
