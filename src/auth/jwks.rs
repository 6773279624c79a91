//! Step 2, whose keys? Each issuer's JWKS: fetched at start-up (readiness waits for it),
//! refreshed in the background on a TTL that honours `Cache-Control: max-age` within bounds,
//! refetched on an unknown `kid` at most once per cooldown, and the last good key set kept
//! when the endpoint fails or returns garbage. `DecodingKey`s are built once per key.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::Mutex;
use serde_json::Value;
use tracing::{info, warn};

use crate::config::{IssuerConfig, JwksSource};
use crate::metrics::Metrics;

/// Largest JWKS or discovery document accepted.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("fetch failed: {0}")]
    Fetch(String),
    #[error("http status {0}")]
    Status(u16),
    #[error("document larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    #[error("not a JWKS document: {0}")]
    Parse(String),
    #[error("discovery document: {0}")]
    Discovery(String),
    #[error("no usable signing keys in the set")]
    NoUsableKeys,
}

/// The key families we verify with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    pub fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (KeyKind::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (KeyKind::EcP256, ES256)
                | (KeyKind::EcP384, ES384)
                | (KeyKind::Ed25519, EdDSA)
        )
    }
}

/// One published verification key.
pub struct VerifyKey {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's own `alg`, when it names one: the token's `alg` must then equal it.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

impl VerifyKey {
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish()
    }
}

/// The current key set of an issuer.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Arc<VerifyKey>>,
    /// Changes whenever a key disappears or changes, so cached verifications made with it
    /// stop counting.
    pub generation: u64,
}

impl KeySet {
    pub fn by_kid(&self, kid: &str) -> Option<&Arc<VerifyKey>> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }
}

/// An issuer: its config and its keys.
pub struct Issuer {
    pub cfg: IssuerConfig,
    /// Unique per `Issuer` value of this process: a verified-token cache entry counts only for
    /// the very issuer that verified it (a reload that changes an issuer's config makes a new
    /// one, whose tokens are verified again).
    uid: u64,
    keys: ArcSwap<KeySet>,
    ready: AtomicBool,
    /// Unix seconds of the last successful fetch (0 = never).
    last_success: AtomicU64,
    schedule: Mutex<Schedule>,
    refetch: tokio::sync::Mutex<()>,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
}

struct Schedule {
    /// Last fetch caused by an unknown `kid` (background refreshes don't count, so a key
    /// published just after a routine refresh is still picked up at once).
    last_kid_refetch: Option<Instant>,
    next_due: Instant,
    failures: u32,
}

impl Issuer {
    pub fn new(cfg: IssuerConfig, http: reqwest::Client, metrics: Arc<Metrics>) -> Self {
        static NEXT_UID: AtomicU64 = AtomicU64::new(1);
        Issuer {
            cfg,
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            keys: ArcSwap::from_pointee(KeySet::default()),
            ready: AtomicBool::new(false),
            last_success: AtomicU64::new(0),
            schedule: Mutex::new(Schedule {
                last_kid_refetch: None,
                next_due: Instant::now(),
                failures: 0,
            }),
            refetch: tokio::sync::Mutex::new(()),
            http,
            metrics,
        }
    }

    /// The issuer under a changed config: when the key source is the same, it starts with the
    /// old keys and readiness (a reload that changes, say, `leeway_secs` must not make its
    /// tokens wait for a fetch); otherwise it starts empty.
    pub fn successor(
        cfg: IssuerConfig,
        old: &Issuer,
        http: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Self {
        let same_source = cfg.jwks == old.cfg.jwks;
        let next = Issuer::new(cfg, http, metrics);
        if same_source && old.is_ready() {
            next.keys.store(old.keys.load_full());
            next.ready.store(true, Ordering::Release);
            next.last_success
                .store(old.last_success.load(Ordering::Relaxed), Ordering::Relaxed);
            let due = old.schedule.lock().next_due;
            next.schedule.lock().next_due = due;
        }
        next
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub(crate) fn uid(&self) -> u64 {
        self.uid
    }

    /// True once a key set was loaded; never goes back.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.keys.load()
    }

    pub fn generation(&self) -> u64 {
        self.keys.load().generation
    }

    /// For the admin console: Unix seconds of the last successful fetch (0: never), seconds
    /// until the next scheduled refresh, and failed fetches in a row.
    pub(crate) fn refresh_state(&self) -> (u64, u64, u32) {
        let s = self.schedule.lock();
        (
            self.last_success.load(Ordering::Relaxed),
            s.next_due
                .saturating_duration_since(Instant::now())
                .as_secs(),
            s.failures,
        )
    }

    /// Is a background refresh due now?
    pub fn refresh_due(&self, now: Instant) -> bool {
        now >= self.schedule.lock().next_due
    }

    /// Fetch now and install the result; on failure keep the previous keys and schedule a
    /// retry with backoff (1 s doubling up to the refresh interval).
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        self.refresh_using(&self.http).await
    }

    /// `refresh` with another HTTP client: for fetching before the server's runtimes exist
    /// (a client's pooled connections belong to the runtime that made them).
    pub async fn refresh_using(&self, http: &reqwest::Client) -> Result<usize, JwksError> {
        let result = self.fetch(http).await;
        let now = Instant::now();
        match result {
            Ok((keys, max_age)) => {
                let count = keys.len();
                self.install(keys);
                let every = max_age
                    .map(|a| a.clamp(self.cfg.min_refresh, self.cfg.max_refresh))
                    .unwrap_or(self.cfg.refresh);
                let mut s = self.schedule.lock();
                s.failures = 0;
                s.next_due = now + every;
                drop(s);
                let unix = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                self.last_success.store(unix, Ordering::Relaxed);
                self.metrics.jwks_fetch(&self.cfg.name, true, count, unix);
                if !self.ready.swap(true, Ordering::AcqRel) {
                    info!(issuer = %self.cfg.name, keys = count, "jwks loaded; issuer ready");
                }
                Ok(count)
            }
            Err(e) => {
                let mut s = self.schedule.lock();
                s.failures = s.failures.saturating_add(1);
                let backoff = Duration::from_secs(1u64 << s.failures.min(6).saturating_sub(1))
                    .min(self.cfg.refresh);
                s.next_due = now + backoff;
                drop(s);
                self.metrics.jwks_fetch(&self.cfg.name, false, 0, 0);
                warn!(issuer = %self.cfg.name, error = %e, "jwks fetch failed; keeping previous keys");
                Err(e)
            }
        }
    }

    /// A token named a `kid` we do not hold: refetch once, unless a fetch happened within the
    /// cooldown. Concurrent callers share one fetch. Returns whether a fetch was made.
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        let _one_at_a_time = self.refetch.lock().await;
        {
            let mut s = self.schedule.lock();
            if s.last_kid_refetch
                .is_some_and(|t| t.elapsed() < self.cfg.unknown_kid_cooldown)
            {
                return false;
            }
            s.last_kid_refetch = Some(Instant::now());
        }
        let _ = self.refresh().await;
        true
    }

    /// Install the keys of a JWKS document given here instead of fetched (offline tools:
    /// route-table tests, `explain --jwks-file`); the issuer is ready afterwards.
    pub fn install_jwks(&self, doc: &[u8]) -> Result<usize, JwksError> {
        let (keys, _skipped) = parse_jwks(doc)?;
        if keys.is_empty() {
            return Err(JwksError::NoUsableKeys);
        }
        let count = keys.len();
        self.install(keys);
        self.ready.store(true, Ordering::Release);
        Ok(count)
    }

    fn install(&self, keys: Vec<VerifyKey>) {
        let old = self.keys.load();
        // Same keys (same kid and same material) keep the generation: cached verifications
        // stay valid across a routine refresh.
        let removed_or_changed = old.keys.iter().any(|o| {
            !keys.iter().any(|n| {
                n.kid == o.kid && n.kind == o.kind && n.alg == o.alg && same_key(&n.key, &o.key)
            })
        });
        let generation = if removed_or_changed {
            old.generation + 1
        } else {
            old.generation
        };
        self.keys.store(Arc::new(KeySet {
            keys: keys.into_iter().map(Arc::new).collect(),
            generation,
        }));
    }

    async fn fetch(
        &self,
        http: &reqwest::Client,
    ) -> Result<(Vec<VerifyKey>, Option<Duration>), JwksError> {
        let (body, max_age) = match &self.cfg.jwks {
            JwksSource::Url(url) => self.get(http, url).await?,
            JwksSource::File(path) => {
                let body = tokio::fs::read(path)
                    .await
                    .map_err(|e| JwksError::Fetch(format!("{}: {e}", path.display())))?;
                if body.len() > MAX_DOCUMENT_BYTES {
                    return Err(JwksError::TooLarge);
                }
                (body, None)
            }
            JwksSource::Discovery(url) => {
                let (doc, _) = self.get(http, url).await?;
                let doc: Value = serde_json::from_slice(&doc)
                    .map_err(|e| JwksError::Discovery(format!("not JSON: {e}")))?;
                if let Some(iss) = doc.get("issuer").and_then(Value::as_str) {
                    if iss != self.cfg.issuer {
                        return Err(JwksError::Discovery(format!(
                            "issuer {iss:?} differs from the configured {:?}",
                            self.cfg.issuer
                        )));
                    }
                }
                let jwks_uri = doc
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
                    .ok_or_else(|| JwksError::Discovery("no http(s) jwks_uri".into()))?;
                self.get(http, jwks_uri).await?
            }
        };
        let (keys, skipped) = parse_jwks(&body)?;
        for s in skipped {
            warn!(issuer = %self.cfg.name, "skipping jwk: {s}");
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKeys);
        }
        Ok((keys, max_age))
    }

    async fn get(
        &self,
        http: &reqwest::Client,
        url: &str,
    ) -> Result<(Vec<u8>, Option<Duration>), JwksError> {
        let mut resp = http
            .get(url)
            .header(
                http::header::ACCEPT,
                "application/jwk-set+json, application/json;q=0.9, */*;q=0.1",
            )
            .timeout(self.cfg.fetch_timeout)
            .send()
            .await
            .map_err(|e| JwksError::Fetch(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(JwksError::Status(resp.status().as_u16()));
        }
        if resp
            .content_length()
            .is_some_and(|l| l as usize > MAX_DOCUMENT_BYTES)
        {
            return Err(JwksError::TooLarge);
        }
        let max_age = resp
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_max_age);
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| JwksError::Fetch(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(JwksError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age))
    }
}

fn same_key(a: &DecodingKey, b: &DecodingKey) -> bool {
    use jsonwebtoken::DecodingKeyKind as K;
    match (a.kind(), b.kind()) {
        (K::SecretOrDer(x), K::SecretOrDer(y)) => x == y,
        (K::RsaModulusExponent { n: n1, e: e1 }, K::RsaModulusExponent { n: n2, e: e2 }) => {
            n1 == n2 && e1 == e2
        }
        _ => false,
    }
}

/// `max-age=N` of a Cache-Control value (`no-store`/`no-cache` give none).
pub(crate) fn parse_max_age(v: &str) -> Option<Duration> {
    let mut max_age = None;
    for part in v.split(',') {
        let part = part.trim();
        if part.eq_ignore_ascii_case("no-store") || part.eq_ignore_ascii_case("no-cache") {
            return None;
        }
        if let Some((k, val)) = part.split_once('=') {
            if k.trim().eq_ignore_ascii_case("max-age") {
                max_age = val
                    .trim()
                    .trim_matches('"')
                    .parse::<u64>()
                    .ok()
                    .map(Duration::from_secs);
            }
        }
    }
    max_age
}

fn b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// A JWK's `alg`: only the asymmetric algorithms the gateway verifies with.
fn parse_alg(s: &str) -> Option<Algorithm> {
    s.parse::<Algorithm>()
        .ok()
        .filter(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
}

/// Parse a JWKS document: the usable keys, and a reason for each key skipped.
pub(crate) fn parse_jwks(body: &[u8]) -> Result<(Vec<VerifyKey>, Vec<String>), JwksError> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| JwksError::Parse(e.to_string()))?;
    let list = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| JwksError::Parse("no \"keys\" array".into()))?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, jwk) in list.iter().enumerate() {
        match parse_jwk(jwk) {
            Ok(k) => keys.push(k),
            Err(why) => {
                let kid = jwk.get("kid").and_then(Value::as_str).unwrap_or("-");
                skipped.push(format!("keys[{i}] (kid {kid:?}): {why}"));
            }
        }
    }
    Ok((keys, skipped))
}

fn parse_jwk(jwk: &Value) -> Result<VerifyKey, String> {
    let field = |name: &str| jwk.get(name).and_then(Value::as_str);
    if let Some(u) = field("use") {
        if u != "sig" {
            return Err(format!("use {u:?} is not \"sig\""));
        }
    }
    if let Some(ops) = jwk.get("key_ops").and_then(Value::as_array) {
        if !ops.iter().any(|o| o.as_str() == Some("verify")) {
            return Err("key_ops does not include \"verify\"".into());
        }
    }
    let alg = match field("alg") {
        None => None,
        Some(a) => Some(parse_alg(a).ok_or_else(|| format!("unsupported alg {a:?}"))?),
    };
    let kid = field("kid").map(str::to_string);
    let kty = field("kty").ok_or("no kty")?;
    let (kind, key) = match kty {
        "RSA" => {
            let n = field("n").ok_or("RSA key without n")?;
            let e = field("e").ok_or("RSA key without e")?;
            let bits = b64(n).ok_or("n is not base64url")?;
            let significant = bits.iter().skip_while(|b| **b == 0).count();
            if significant < 256 {
                return Err(format!(
                    "RSA modulus of {} bits is below 2048",
                    significant * 8
                ));
            }
            b64(e).ok_or("e is not base64url")?;
            let key = DecodingKey::from_rsa_components(n, e).map_err(|e| e.to_string())?;
            (KeyKind::Rsa, key)
        }
        "EC" => {
            let crv = field("crv").ok_or("EC key without crv")?;
            let kind = match crv {
                "P-256" => KeyKind::EcP256,
                "P-384" => KeyKind::EcP384,
                other => return Err(format!("unsupported curve {other:?}")),
            };
            let x = field("x").ok_or("EC key without x")?;
            let y = field("y").ok_or("EC key without y")?;
            let want = if kind == KeyKind::EcP256 { 32 } else { 48 };
            if b64(x).map(|v| v.len()) != Some(want) || b64(y).map(|v| v.len()) != Some(want) {
                return Err("EC coordinates have the wrong length".into());
            }
            let key = DecodingKey::from_ec_components(x, y).map_err(|e| e.to_string())?;
            (kind, key)
        }
        "OKP" => {
            let crv = field("crv").ok_or("OKP key without crv")?;
            if crv != "Ed25519" {
                return Err(format!("unsupported curve {crv:?}"));
            }
            let x = field("x").ok_or("OKP key without x")?;
            if b64(x).map(|v| v.len()) != Some(32) {
                return Err("Ed25519 key has the wrong length".into());
            }
            let key = DecodingKey::from_ed_components(x).map_err(|e| e.to_string())?;
            (KeyKind::Ed25519, key)
        }
        "oct" => return Err("symmetric (oct) keys are never used".into()),
        other => return Err(format!("unsupported kty {other:?}")),
    };
    if let Some(a) = alg {
        if !kind.fits(a) {
            return Err(format!("alg {a:?} does not fit a {kind:?} key"));
        }
    }
    Ok(VerifyKey {
        kid,
        kind,
        alg,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: &str = "u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw";

    #[test]
    fn jwks_usable_keys_are_parsed_and_others_skipped() {
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "r1", "use": "sig", "alg": "RS256", "n": N, "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": N, "e": "AQAB"},
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "short", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "badalg", "alg": "ES256", "n": N, "e": "AQAB"},
            {"kty": "XYZ"}
        ]});
        let (keys, skipped) = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("r1"));
        assert!(keys[0].accepts(Algorithm::RS256));
        assert!(
            !keys[0].accepts(Algorithm::PS256),
            "JWK alg pins the algorithm"
        );
        assert_eq!(skipped.len(), 6, "{skipped:?}");
    }

    #[test]
    fn jwks_garbage_is_an_error() {
        assert!(parse_jwks(b"<html>").is_err());
        assert!(parse_jwks(b"{\"no\":1}").is_err());
    }

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            parse_max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(parse_max_age("max-age=60, no-store"), None);
        assert_eq!(parse_max_age("private"), None);
    }

    #[test]
    fn key_kind_fits_only_its_algorithms() {
        assert!(KeyKind::Rsa.fits(Algorithm::PS256));
        assert!(!KeyKind::Rsa.fits(Algorithm::HS256));
        assert!(!KeyKind::EcP256.fits(Algorithm::ES384));
        assert!(KeyKind::Ed25519.fits(Algorithm::EdDSA));
    }
}
