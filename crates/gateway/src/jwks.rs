//! JWKS: verification keys fetched from an identity provider's key-set endpoint
//! (`--jwt-jwks-url`, as Auth0, Keycloak or Cognito serve it), cached by `kid`.
//!
//! - The set is fetched at start and every `--jwt-jwks-poll` seconds.
//! - A token whose `kid` the cache does not hold makes one refresh, at most once per
//!   `--jwt-jwks-refresh` seconds whatever the tokens say (a flood of random `kid`s
//!   costs the endpoint one request per interval). Fetches are single-flight: callers
//!   that miss while a fetch runs wait for it instead of starting their own.
//! - When the endpoint is down the cached keys are kept and used until
//!   `--jwt-jwks-stale-max` seconds past the refresh that should have replaced them.
//! - Algorithms are pinned by `--jwt-algorithms` (default RS256), never taken from the
//!   token or the key set: a key whose type (or `alg`) does not fit them is not cached,
//!   and a token naming it is refused with that reason.
//!
//! `https://` endpoints are fetched with rustls (the ring provider, as for `rediss://`),
//! trusting the system's root certificates (`SSL_CERT_FILE` / `SSL_CERT_DIR` override
//! them); `http://` too, for an endpoint on a private network. The fetch has a fixed 5 s
//! timeout and reads at most 1 MiB.

use crate::auth::AuthError;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one fetch of the key set may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest key set read.
const MAX_BODY: usize = 1 << 20;

/// The settings of the key-set cache.
#[derive(Debug, Clone)]
pub struct JwksConfig {
    /// The endpoint.
    pub url: Uri,
    /// Periodic refresh interval.
    pub refresh: Duration,
    /// Least time between two refreshes caused by unknown `kid`s.
    pub refresh_min: Duration,
    /// How long past a missed refresh the cached keys are still used.
    pub stale_max: Duration,
    /// The pinned algorithms (one family, not HMAC).
    pub algorithms: Vec<Algorithm>,
}

impl JwksConfig {
    /// Checks the URL and the algorithms; the message names the setting.
    pub fn new(
        url: &str,
        refresh: Duration,
        refresh_min: Duration,
        stale_max: Duration,
        algorithms: Vec<Algorithm>,
    ) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("--jwt-jwks-url {url:?}: {e}"))?;
        match uri.scheme_str() {
            Some("http" | "https") if uri.host().is_some() => {}
            _ => {
                return Err(format!(
                    "--jwt-jwks-url {url:?}: not an https:// or http:// URL"
                ))
            }
        }
        if algorithms
            .iter()
            .any(|a| a.family() == AlgorithmFamily::Hmac)
        {
            return Err("--jwt-jwks-url: key sets hold public keys; --jwt-algorithms must name RSA, ECDSA or EdDSA algorithms, not HMAC".into());
        }
        if refresh.is_zero() {
            return Err("--jwt-jwks-poll must be at least 1 second".into());
        }
        Ok(JwksConfig {
            url: uri,
            refresh,
            refresh_min,
            stale_max,
            algorithms,
        })
    }
}

/// One usable key and the pinned algorithms it can verify.
struct CachedKey {
    key: Arc<DecodingKey>,
    algorithms: Vec<Algorithm>,
}

/// What the cache says about a `kid`.
enum Lookup {
    Found(Arc<CachedKey>),
    /// The set holds it, but it does not fit the pinned algorithms.
    Refused(String),
    /// The set does not hold it.
    Missing,
    /// The set held it, but could not be refreshed for too long.
    Stale,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, Arc<CachedKey>>,
    /// Keys of the set that do not fit the pinned algorithms, with the reason.
    refused: HashMap<String, String>,
    /// When the set was last read successfully.
    fetched: Option<Instant>,
    /// When a fetch was last made (any outcome).
    attempted: Option<Instant>,
    /// When an unknown `kid` last caused a fetch.
    kid_refresh: Option<Instant>,
}

impl State {
    /// Whether the cached keys may still be used at `now`.
    fn fresh(&self, now: Instant, cfg: &JwksConfig) -> bool {
        self.fetched
            .is_some_and(|t| now.saturating_duration_since(t) <= cfg.refresh + cfg.stale_max)
    }

    /// Whether an unknown `kid` may cause a fetch at `now`.
    fn may_refresh_for_kid(&self, now: Instant, cfg: &JwksConfig) -> bool {
        self.kid_refresh
            .is_none_or(|t| now.saturating_duration_since(t) >= cfg.refresh_min)
    }
}

/// Metrics of the key-set cache, registered with the node's by `Metrics::register`.
pub struct JwksStats {
    /// Fetches by result (`ok`, `failed`).
    pub fetches: IntCounterVec,
    /// Tokens that named a `kid` the set does not hold.
    pub unknown_kids: IntCounter,
    /// Usable keys cached.
    pub keys: IntGauge,
}

impl JwksStats {
    fn new() -> Self {
        // Constant names: a failure is a programming error caught by the first test.
        let fetches = IntCounterVec::new(
            Opts::new(
                "roomcast_jwks_fetches_total",
                "Fetches of the JWK set, by result",
            ),
            &["result"],
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        for r in ["ok", "failed"] {
            fetches.with_label_values(&[r]);
        }
        JwksStats {
            fetches,
            unknown_kids: IntCounter::new(
                "roomcast_jwks_unknown_kids_total",
                "Tokens naming a kid the cached JWK set does not hold",
            )
            .unwrap_or_else(|e| panic!("metric: {e}")),
            keys: IntGauge::new("roomcast_jwks_keys", "Usable keys in the cached JWK set")
                .unwrap_or_else(|e| panic!("metric: {e}")),
        }
    }

    /// The collectors, for a registry.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.fetches.clone()),
            Box::new(self.unknown_kids.clone()),
            Box::new(self.keys.clone()),
        ]
    }
}

/// The key-set cache. Cheap to share; the refresher task is started by [`Jwks::spawn_refresher`].
pub struct Jwks {
    cfg: JwksConfig,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// Std mutex: held for map reads and swaps only, never across an await.
    state: Mutex<State>,
    /// Single flight: one fetch at a time; a caller that waited re-checks the cache.
    fetching: tokio::sync::Mutex<()>,
    /// Counters.
    pub stats: JwksStats,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("request: {0}")]
    Request(String),
    #[error("status {0}")]
    Status(u16),
    #[error("body: {0}")]
    Body(String),
    #[error("not a JWK set: {0}")]
    Json(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl Jwks {
    /// A cache with nothing fetched yet. Fails for an https:// URL when the system has no
    /// root certificates to trust.
    pub fn new(cfg: JwksConfig) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = if cfg.url.scheme_str() == Some("https") {
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_native_roots(provider)
                .map_err(|e| {
                    format!("--jwt-jwks-url: no trusted root certificates for https ({e}); install ca-certificates or set SSL_CERT_FILE")
                })?
        } else {
            // Plain http: TLS is never used, no roots needed.
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("tls: {e}"))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
        };
        let connector = tls.https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1)
            .build(connector);
        Ok(Jwks {
            cfg,
            client,
            state: Mutex::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
            stats: JwksStats::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fetches at once and then every `--jwt-jwks-poll`, as a task of the node that ends
    /// when the drain starts.
    pub fn spawn_refresher(self: &Arc<Self>, tasks: &crate::lifecycle::Lifecycle) {
        let this = self.clone();
        let stop = tasks.draining();
        tasks.spawn("jwks-refresher", async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = this.refresh(false) => {}
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(this.cfg.refresh) => {}
                }
            }
            tracing::debug!("JWKS refresher stopped");
        });
    }

    /// The key for `token` and the validation to verify it with (`base` with the
    /// algorithms narrowed to what the key fits).
    pub async fn key_for(
        &self,
        token: &str,
        base: &Validation,
    ) -> Result<(Arc<DecodingKey>, Validation), AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("{:?}", e.kind())))?;
        let kid = header
            .kid
            .ok_or_else(|| AuthError::Invalid("the token names no key (kid)".into()))?;
        let found = match self.lookup(&kid, Instant::now()) {
            Lookup::Found(k) => k,
            Lookup::Refused(why) => return Err(AuthError::Invalid(why)),
            first => {
                // Unknown, or the cache is too old: one fetch (rate limited), then again.
                if matches!(first, Lookup::Missing) {
                    self.stats.unknown_kids.inc();
                }
                self.refresh_for_kid().await;
                match self.lookup(&kid, Instant::now()) {
                    Lookup::Found(k) => k,
                    Lookup::Refused(why) => return Err(AuthError::Invalid(why)),
                    Lookup::Missing => {
                        return Err(AuthError::Invalid(format!("no key {kid:?} in the JWK set")))
                    }
                    Lookup::Stale => return Err(AuthError::Invalid(
                        "the JWK set could not be refreshed for longer than --jwt-jwks-stale-max"
                            .into(),
                    )),
                }
            }
        };
        if !found.algorithms.contains(&header.alg) {
            return Err(AuthError::Invalid(format!(
                "key {kid:?} does not verify {:?}",
                header.alg
            )));
        }
        let mut v = base.clone();
        v.algorithms = found.algorithms.clone();
        Ok((found.key.clone(), v))
    }

    /// The cached key `kid`, if the cache holds it, has not refused it and is not too old.
    fn lookup(&self, kid: &str, now: Instant) -> Lookup {
        let st = self.state();
        if let Some(why) = st.refused.get(kid) {
            return Lookup::Refused(format!("key {kid:?} refused: {why}"));
        }
        match st.keys.get(kid) {
            Some(_) if !st.fresh(now, &self.cfg) => Lookup::Stale,
            Some(k) => Lookup::Found(k.clone()),
            None => Lookup::Missing,
        }
    }

    /// A refresh for an unknown `kid`: at most one per `--jwt-jwks-refresh`.
    async fn refresh_for_kid(&self) {
        if !self.state().may_refresh_for_kid(Instant::now(), &self.cfg) {
            return;
        }
        self.refresh(true).await;
    }

    /// Fetches the set (single flight). A caller that waited for another's fetch does not
    /// fetch again if that one was recent enough.
    async fn refresh(&self, for_kid: bool) {
        let asked = Instant::now();
        let _flight = self.fetching.lock().await;
        {
            let mut st = self.state();
            if st.attempted.is_some_and(|t| t >= asked) {
                // Someone fetched while we waited: use that.
                return;
            }
            if for_kid {
                if !st.may_refresh_for_kid(Instant::now(), &self.cfg) {
                    return;
                }
                st.kid_refresh = Some(Instant::now());
            }
            st.attempted = Some(Instant::now());
        }
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await {
            Ok(Ok(body)) => match self.install(&body) {
                Ok((n, refused)) => {
                    self.stats.fetches.with_label_values(&["ok"]).inc();
                    self.stats.keys.set(n as i64);
                    tracing::debug!(keys = n, refused, "JWK set fetched");
                }
                Err(e) => self.failed(&e),
            },
            Ok(Err(e)) => self.failed(&e),
            Err(_) => self.failed(&FetchError::Timeout(FETCH_TIMEOUT)),
        }
    }

    fn failed(&self, e: &FetchError) {
        self.stats.fetches.with_label_values(&["failed"]).inc();
        // At most one line per fetch, and fetches are rate limited.
        tracing::warn!(url = %self.cfg.url, error = %e, "JWK set fetch failed; keeping the cached keys");
    }

    async fn fetch(&self) -> Result<Bytes, FetchError> {
        let resp = self
            .client
            .get(self.cfg.url.clone())
            .await
            .map_err(|e| FetchError::Request(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(FetchError::Status(resp.status().as_u16()));
        }
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| FetchError::Body(e.to_string()))?;
        Ok(body.to_bytes())
    }

    /// Replaces the cache with the keys of `body`: (usable keys, refused keys).
    fn install(&self, body: &[u8]) -> Result<(usize, usize), FetchError> {
        let (keys, refused) = parse_set(body, &self.cfg.algorithms)?;
        let counts = (keys.len(), refused.len());
        for (kid, why) in &refused {
            tracing::info!(kid, reason = %why, "JWK not usable with the pinned algorithms");
        }
        let mut st = self.state();
        st.keys = keys;
        st.refused = refused;
        st.fetched = Some(Instant::now());
        Ok(counts)
    }

    /// How many usable keys the cache holds.
    pub fn key_count(&self) -> usize {
        self.state().keys.len()
    }
}

/// The authenticator of `--jwt-jwks-url` (called from `Authenticator::from_config`
/// with the checked `--jwt-algorithms`, if given).
pub(crate) fn authenticator(
    cfg: &crate::config::Config,
    url: &str,
    algorithms: Option<Vec<Algorithm>>,
) -> Result<crate::auth::Authenticator, String> {
    if cfg.jwt_secret.is_some() || cfg.jwt_public_key.is_some() {
        return Err(
            "give one of --jwt-secret, --jwt-public-key and --jwt-jwks-url (one source of keys)"
                .into(),
        );
    }
    // Without a list: RS256, what Auth0, Keycloak and Cognito sign with by default.
    let algorithms = algorithms.unwrap_or_else(|| vec![Algorithm::RS256]);
    let jwks = Jwks::new(JwksConfig::new(
        url,
        cfg.jwt_jwks_poll,
        cfg.jwt_jwks_refresh,
        cfg.jwt_jwks_stale_max,
        algorithms.clone(),
    )?)?;
    Ok(crate::auth::Authenticator::with_jwks(cfg, jwks, algorithms))
}

type Parsed = (HashMap<String, Arc<CachedKey>>, HashMap<String, String>);

/// Reads a JWK set: each key with a `kid` is either usable with the pinned algorithms or
/// refused with a reason; keys without a `kid`, or for encryption, are skipped. One
/// unreadable key does not spoil the others.
fn parse_set(body: &[u8], pinned: &[Algorithm]) -> Result<Parsed, FetchError> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let raw: RawSet = serde_json::from_slice(body).map_err(|e| FetchError::Json(e.to_string()))?;
    let (mut keys, mut refused) = (HashMap::new(), HashMap::new());
    for v in raw.keys {
        let Some(kid) = v.get("kid").and_then(|k| k.as_str()).map(str::to_string) else {
            continue;
        };
        let jwk: Jwk = match serde_json::from_value(v) {
            Ok(j) => j,
            Err(e) => {
                refused.insert(kid, format!("unreadable: {e}"));
                continue;
            }
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        match usable(&jwk, pinned) {
            Ok(algorithms) => match DecodingKey::from_jwk(&jwk) {
                Ok(key) => {
                    keys.insert(
                        kid,
                        Arc::new(CachedKey {
                            key: Arc::new(key),
                            algorithms,
                        }),
                    );
                }
                Err(e) => {
                    refused.insert(kid, format!("unreadable: {:?}", e.kind()));
                }
            },
            Err(why) => {
                refused.insert(kid, why);
            }
        }
    }
    Ok((keys, refused))
}

/// The pinned algorithms a key can verify, or why none.
fn usable(jwk: &Jwk, pinned: &[Algorithm]) -> Result<Vec<Algorithm>, String> {
    let (kind, fits): (&str, Vec<Algorithm>) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => ("an RSA key", AlgorithmFamily::Rsa.algorithms().to_vec()),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => ("an EC P-256 key", vec![Algorithm::ES256]),
            EllipticCurve::P384 => ("an EC P-384 key", vec![Algorithm::ES384]),
            _ => ("an EC key on an unsupported curve", vec![]),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            ("an Ed25519 key", vec![Algorithm::EdDSA])
        }
        AlgorithmParameters::OctetKeyPair(_) => ("an OKP key on an unsupported curve", vec![]),
        AlgorithmParameters::OctetKey(_) => ("a symmetric (oct) key", vec![]),
        _ => ("a key of an unknown type", vec![]),
    };
    let mut algs: Vec<Algorithm> = pinned
        .iter()
        .copied()
        .filter(|a| fits.contains(a))
        .collect();
    if let Some(declared) = &jwk.common.key_algorithm {
        // A key that declares its algorithm is used for that one only.
        match Algorithm::try_from(*declared) {
            Ok(d) => algs.retain(|a| *a == d),
            Err(_) => algs.clear(),
        }
    }
    if algs.is_empty() {
        let names: Vec<String> = pinned.iter().map(|a| format!("{a:?}")).collect();
        return Err(format!(
            "{kind}{} does not fit the pinned algorithms ({})",
            jwk.common
                .key_algorithm
                .map(|a| format!(" for {a:?}"))
                .unwrap_or_default(),
            names.join(", ")
        ));
    }
    Ok(algs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> JwksConfig {
        JwksConfig::new(
            "http://127.0.0.1:1/jwks",
            Duration::from_secs(300),
            Duration::from_secs(30),
            Duration::from_secs(600),
            vec![Algorithm::RS256],
        )
        .expect("config")
    }

    #[test]
    fn staleness_and_kid_rate_limit() {
        let c = cfg();
        let t0 = Instant::now();
        let st = State {
            fetched: Some(t0),
            kid_refresh: Some(t0),
            ..State::default()
        };
        assert!(st.fresh(t0 + Duration::from_secs(900), &c));
        assert!(!st.fresh(t0 + Duration::from_secs(901), &c));
        assert!(!st.may_refresh_for_kid(t0 + Duration::from_secs(29), &c));
        assert!(st.may_refresh_for_kid(t0 + Duration::from_secs(30), &c));
        assert!(State::default().may_refresh_for_kid(t0, &c));
        assert!(!State::default().fresh(t0, &c));
    }

    #[test]
    fn config_refusals() {
        let d = Duration::from_secs(1);
        assert!(JwksConfig::new("https://x/jwks", d, d, d, vec![Algorithm::RS256]).is_ok());
        assert!(JwksConfig::new("https:///jwks", d, d, d, vec![Algorithm::RS256]).is_err());
        assert!(JwksConfig::new("ftp://x/jwks", d, d, d, vec![Algorithm::RS256]).is_err());
        assert!(JwksConfig::new("http://x/jwks", d, d, d, vec![Algorithm::HS256]).is_err());
        assert!(JwksConfig::new("http://x/jwks", d, d, d, vec![Algorithm::ES256]).is_ok());
    }

    #[test]
    fn key_types_against_pinned_algorithms() {
        let set = serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "ec",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "broken"},
            {"kty": "EC", "crv": "P-256", "kid": "ec384", "alg": "ES384",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]});
        let body = serde_json::to_vec(&set).expect("json");
        let (keys, refused) = parse_set(&body, &[Algorithm::RS256]).expect("set");
        assert!(keys.is_empty());
        assert!(refused["ec"].contains("EC P-256"), "{refused:?}");
        assert!(refused["sym"].contains("symmetric"), "{refused:?}");
        assert!(refused.contains_key("broken"));
        assert!(!refused.contains_key("enc"), "encryption keys are skipped");
        let (keys, refused) = parse_set(&body, &[Algorithm::ES256, Algorithm::ES384]).expect("set");
        assert_eq!(keys.len(), 1, "{refused:?}");
        assert_eq!(keys["ec"].algorithms, vec![Algorithm::ES256]);
        assert!(refused.contains_key("ec384"), "a P-256 key declared ES384");
        assert!(parse_set(b"not json", &[Algorithm::RS256]).is_err());
    }
}
