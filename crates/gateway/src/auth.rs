//! Authentication: JWT verification (docs/protocol.md section 2) and what a verified token allows.

use crate::config::{AuthMode, Config, RoomPolicy};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
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
    /// Rooms joined at connect without a client `join` (the `join` claim or the connect
    /// hook's `join`; the session adds the personal room). Joining them needs no `rooms`
    /// pattern: the token or the backend chose them.
    pub join: Vec<RoomName>,
}

impl Identity {
    /// Whether this identity may join and publish to `room`.
    pub fn may_access(&self, room: &RoomName, default: RoomPolicy) -> bool {
        match &self.rooms {
            Some(patterns) => patterns.iter().any(|p| glob_match(p, room.as_str())),
            None => default == RoomPolicy::Allow,
        }
    }

    /// Whether this identity may join `room`: [`Identity::may_access`], or a room it
    /// joins at connect.
    pub fn may_join(&self, room: &RoomName, default: RoomPolicy) -> bool {
        self.join.contains(room) || self.may_access(room, default)
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
    /// Rooms joined at connect (server-side subscriptions).
    #[serde(default)]
    join: Option<Vec<String>>,
    /// Issued-at: a NumericDate (any other type fails the token).
    #[serde(default)]
    iat: Option<NumericDate>,
}

/// A JSON number of seconds (RFC 7519 NumericDate); a string or any other type is an error.
#[derive(Deserialize, Clone, Copy)]
#[serde(untagged)]
enum NumericDate {
    Int(u64),
    Float(f64),
}

impl NumericDate {
    fn secs(self) -> Option<f64> {
        match self {
            NumericDate::Int(n) => Some(n as f64),
            NumericDate::Float(f) if f.is_finite() && f >= 0.0 => Some(f),
            NumericDate::Float(_) => None,
        }
    }
}

fn family_name(f: AlgorithmFamily) -> &'static str {
    match f {
        AlgorithmFamily::Hmac => "HMAC, a shared secret",
        AlgorithmFamily::Rsa => "RSA",
        AlgorithmFamily::Ec => "ECDSA",
        AlgorithmFamily::Ed => "EdDSA",
    }
}

fn key_kind(algs: &[Algorithm]) -> &'static str {
    match algs.first() {
        Some(Algorithm::ES256) => "an EC P-256 key",
        Some(Algorithm::ES384) => "an EC P-384 key",
        Some(Algorithm::EdDSA) => "an Ed25519 key",
        Some(a) if a.family() == AlgorithmFamily::Rsa => "an RSA key",
        _ => "a key",
    }
}

/// Reads a PEM public key: the key and every algorithm it can verify (the first is the
/// default). Refuses private keys, certificates, several blocks and anything unreadable.
fn public_key(pem: &[u8]) -> Result<(DecodingKey, Vec<Algorithm>), String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM file (not text)".to_string())?;
    let labels: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("-----BEGIN ")
                .and_then(|r| r.strip_suffix("-----"))
        })
        .collect();
    let label = match labels.as_slice() {
        [] => return Err("not a PEM file (no -----BEGIN line)".into()),
        [one] => *one,
        _ => {
            return Err(format!(
                "holds {} PEM blocks; give one public key",
                labels.len()
            ))
        }
    };
    if label.contains("PRIVATE") {
        return Err(format!(
            "that is a private key ({label}); give the public one (openssl pkey -in KEY -pubout)"
        ));
    }
    if label == "CERTIFICATE" {
        return Err(
            "that is a certificate; give its public key (openssl x509 -in CERT -pubkey -noout)"
                .into(),
        );
    }
    if label != "PUBLIC KEY" && label != "RSA PUBLIC KEY" {
        return Err(format!("a PEM {label:?} is not a public key"));
    }
    let der = pem_body(text).ok_or("the PEM body is not base64")?;
    let bad = || "not an RSA, EC (P-256, P-384) or Ed25519 public key".to_string();
    // OIDs, DER-encoded: id-ecPublicKey with its curve, Ed25519, rsaEncryption.
    const EC_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const EC_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    const EC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
    let has = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
    if label == "RSA PUBLIC KEY" || !(has(EC_KEY) || has(ED25519)) {
        let key = DecodingKey::from_rsa_pem(pem).map_err(|_| bad())?;
        return Ok((key, AlgorithmFamily::Rsa.algorithms().to_vec()));
    }
    if has(ED25519) {
        let key = DecodingKey::from_ed_pem(pem).map_err(|_| bad())?;
        return Ok((key, vec![Algorithm::EdDSA]));
    }
    let alg = if has(EC_P256) {
        Algorithm::ES256
    } else if has(EC_P384) {
        Algorithm::ES384
    } else {
        return Err("an EC key on a curve other than P-256 (ES256) or P-384 (ES384)".into());
    };
    let key = DecodingKey::from_ec_pem(pem).map_err(|_| bad())?;
    Ok((key, vec![alg]))
}

/// The DER bytes of a one-block PEM text.
fn pem_body(text: &str) -> Option<Vec<u8>> {
    let b64: String = text
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN "))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END "))
        .collect();
    crate::http::base64_decode(b64.as_bytes()).filter(|d| !d.is_empty())
}

/// Verifies tokens with the configured key and rules; the accepted algorithms come
/// from configuration, never from the token (`alg: none` is never accepted).
pub struct Authenticator {
    mode: AuthMode,
    key: Option<DecodingKey>,
    /// Keys from `--jwt-jwks-url` instead of one configured key (crate::jwks).
    pub jwks: Option<std::sync::Arc<crate::jwks::Jwks>>,
    validation: Validation,
    /// The room policy for tokens without a `rooms` claim.
    pub default_policy: RoomPolicy,
}

impl Authenticator {
    /// Builds the verifier from configuration; fails with a one-line message naming the
    /// setting. Key material that cannot verify a token (a private key, a certificate,
    /// garbage, a key of another type than the algorithms) and algorithm lists that no
    /// single key can serve (HMAC mixed with a public-key family, RSA with EC, an EC curve
    /// that is not the algorithm's) are refused here, at start, not token by token.
    pub fn from_config(cfg: &Config) -> Result<Self, String> {
        let algorithms = match cfg.jwt_algorithm_list() {
            Some(list) => {
                let algs = list
                    .iter()
                    .map(|a| {
                        Algorithm::from_str(a)
                            .map_err(|_| format!("--jwt-algorithms: unknown algorithm {a:?} (known: HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if algs.is_empty() {
                    return Err("--jwt-algorithms must name at least one algorithm".into());
                }
                let family = algs[0].family();
                if let Some(other) = algs.iter().find(|a| a.family() != family) {
                    return Err(format!(
                        "--jwt-algorithms: {:?} and {other:?} cannot be verified with one key ({} and {}); list algorithms of one family",
                        algs[0],
                        family_name(family),
                        family_name(other.family())
                    ));
                }
                Some(algs)
            }
            None => None,
        };
        if let Some(url) = &cfg.jwt_jwks_url {
            return crate::jwks::authenticator(cfg, url, algorithms);
        }
        let (key, default_algs): (Option<DecodingKey>, Vec<Algorithm>) = match (
            &cfg.jwt_secret,
            &cfg.jwt_public_key,
        ) {
            (Some(_), Some(_)) => return Err(
                "give --jwt-secret or --jwt-public-key, not both (one key verifies every token)"
                    .into(),
            ),
            (Some(secret), None) => {
                if secret.is_empty() {
                    return Err("--jwt-secret must not be empty".into());
                }
                (
                    Some(DecodingKey::from_secret(secret.as_bytes())),
                    AlgorithmFamily::Hmac.algorithms().to_vec(),
                )
            }
            (None, Some(path)) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("--jwt-public-key {}: {e}", path.display()))?;
                let (key, algs) = public_key(&pem)
                    .map_err(|e| format!("--jwt-public-key {}: {e}", path.display()))?;
                (Some(key), algs)
            }
            (None, None) if cfg.auth == AuthMode::Jwt => {
                return Err("--auth jwt needs --jwt-secret (HS256), --jwt-public-key (RS256/ES256/EdDSA) or --jwt-jwks-url; use --auth none for development".into());
            }
            (None, None) => (None, vec![Algorithm::HS256]),
        };
        let algorithms = match algorithms {
            Some(algs) => {
                if key.is_some() {
                    // default_algs is every algorithm the key can verify.
                    if let Some(a) = algs.iter().find(|a| !default_algs.contains(a)) {
                        let what = if cfg.jwt_secret.is_some() {
                            "an HMAC secret (--jwt-secret)".to_string()
                        } else {
                            format!("the key in --jwt-public-key ({})", key_kind(&default_algs))
                        };
                        return Err(format!(
                            "--jwt-algorithms: {a:?} cannot be verified with {what}; it fits {}",
                            default_algs
                                .iter()
                                .map(|a| format!("{a:?}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                }
                algs
            }
            // Without a list: the key's first (and most common) algorithm.
            None => default_algs.into_iter().take(1).collect(),
        };
        Ok(Authenticator {
            mode: cfg.auth,
            key,
            jwks: None,
            validation: Self::validation(cfg, algorithms),
            default_policy: cfg.default_room_policy,
        })
    }

    /// The claim rules of `cfg` with these algorithms.
    pub(crate) fn validation(cfg: &Config, algorithms: Vec<Algorithm>) -> Validation {
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = cfg.jwt_leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &cfg.jwt_audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &cfg.jwt_issuer {
            validation.set_issuer(&[iss]);
        }
        validation
    }

    /// An authenticator whose keys come from a JWK set (crate::jwks).
    pub(crate) fn with_jwks(
        cfg: &Config,
        jwks: crate::jwks::Jwks,
        algorithms: Vec<Algorithm>,
    ) -> Self {
        Authenticator {
            mode: cfg.auth,
            key: None,
            jwks: Some(std::sync::Arc::new(jwks)),
            validation: Self::validation(cfg, algorithms),
            default_policy: cfg.default_room_policy,
        }
    }

    /// The mode, as the welcome message names it.
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            AuthMode::Jwt => "jwt",
            AuthMode::None => "none",
            AuthMode::Hook => "hook",
        }
    }

    /// Whether connections authenticate at all (a JWT or the connect hook).
    pub fn enabled(&self) -> bool {
        self.mode != AuthMode::None
    }

    /// Whether every connection is decided by the connect hook (`--auth hook`).
    pub fn by_hook(&self) -> bool {
        self.mode == AuthMode::Hook
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
            join: Vec::new(),
        })
    }

    /// Verifies a token, with the key its `kid` names when keys come from a JWK set
    /// (which may fetch the set; see crate::jwks).
    pub async fn verify_token(&self, token: &str) -> Result<Identity, AuthError> {
        match &self.jwks {
            Some(jwks) => {
                let (key, validation) = jwks.key_for(token, &self.validation).await?;
                self.verify_with(token, &key, &validation)
            }
            None => self.verify(token),
        }
    }

    /// Verifies a token with the configured key.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let key = self
            .key
            .as_ref()
            .ok_or_else(|| AuthError::Invalid("no key configured".into()))?;
        self.verify_with(token, key, &self.validation)
    }

    fn verify_with(
        &self,
        token: &str,
        key: &DecodingKey,
        validation: &Validation,
    ) -> Result<Identity, AuthError> {
        let data =
            jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                other => AuthError::Invalid(format!("{other:?}")),
            })?;
        let c = data.claims;
        if let Some(iat) = c.iat {
            // Issued in the future (beyond the clock leeway): a clock or a forger at
            // work; refused like a token whose nbf has not come.
            let now = jsonwebtoken::get_current_timestamp() as f64;
            match iat.secs() {
                Some(t) if t <= now + self.validation.leeway as f64 => {}
                Some(_) => return Err(AuthError::Invalid("iat is in the future".into())),
                None => return Err(AuthError::Invalid("iat is not a NumericDate".into())),
            }
        }
        let user = UserId::new(&c.sub).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if user.as_str() == roomcast_protocol::SERVER_USER {
            // Reserved for the backend API: a client must not look like the backend.
            return Err(AuthError::Invalid(format!(
                "sub {:?} is reserved",
                roomcast_protocol::SERVER_USER
            )));
        }
        let join = c
            .join
            .unwrap_or_default()
            .iter()
            .map(|r| RoomName::new(r).map_err(|e| AuthError::Invalid(format!("join: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Identity {
            user,
            exp: Some(c.exp),
            rooms: c.rooms,
            publish: c.publish.unwrap_or(true),
            presence: c.presence.unwrap_or(true),
            join,
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
