//! Step 2, who is calling? `Authenticator::authenticate` takes the bearer token, finds its
//! issuer by exact `iss`, verifies it against that issuer's cached JWKS keys and returns the
//! caller's `Principal`. Verified tokens are cached (keyed by a secret-keyed 128-bit hash of the
//! token, never past the token's `exp` plus leeway, dropped when the issuer's keys change), so a
//! client repeating its token skips the signature check.

pub(crate) mod bearer;
pub(crate) mod dpop;
pub(crate) mod inspect;
pub(crate) mod introspect;
pub(crate) mod jwks;
pub(crate) mod jwt;

use std::collections::HashMap;
use std::sync::Arc;

pub(crate) use bearer::BearerToken;
pub(crate) use jwks::Issuer;

use crate::expiring::{Expiring, ExpiringMap, Ids, WhenFull};
use crate::metrics::Metrics;

/// Expired cached tokens are dropped within this time (or when their shard is full, or when hit).
const CACHE_SWEEP_INTERVAL_MS: u64 = 10_000;

/// Why a token was not accepted. Messages are fixed texts: never the token, never a claim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    MissingToken,
    #[error("{0}")]
    InvalidRequest(&'static str),
    #[error("{0}")]
    Malformed(&'static str),
    #[error("{0}")]
    RejectedHeader(&'static str),
    #[error("{0}")]
    AlgNotAllowed(&'static str),
    #[error("token expired")]
    Expired,
    #[error("{0}")]
    NotYetValid(&'static str),
    #[error("signature verification failed")]
    BadSignature,
    #[error("unknown signing key")]
    UnknownKid,
    #[error("token issuer is not trusted")]
    WrongIssuer,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("{0}")]
    InvalidClaims(&'static str),
    #[error("token issuer is not accepted on this route")]
    IssuerNotAllowed,
    #[error("signing keys of the issuer are not loaded yet")]
    KeysUnavailable,
    /// A claim the gateway forwards as a header is outside its grammar (the claim's name, never
    /// its value).
    #[error("token claim {0} cannot be forwarded faithfully")]
    UnforwardableClaim(&'static str),
    /// RFC 7662: the authorization server says the token is not active (revoked, expired,
    /// unknown).
    #[error("token is not active")]
    Inactive,
    /// The introspection endpoint failed, timed out or answered garbage: 503, never admitted.
    #[error("token introspection is unavailable")]
    IntrospectionUnavailable,
    /// A certificate-bound token (RFC 8705) without that client certificate.
    #[error("token is bound to a client certificate that this request did not present")]
    CertificateMismatch,
    /// A DPoP-bound token (RFC 9449 §7.1) presented without a proof by its key.
    #[error("token is bound to a DPoP key; send it with a DPoP proof")]
    DpopBound,
    /// A DPoP proof refused (RFC 9449 §4.3), each check with its own reason.
    #[error("{0}")]
    Dpop(dpop::DpopError),
    /// `dpop = "required"`, and the token was not sent with the DPoP scheme.
    #[error("this resource requires a DPoP-bound token sent with the DPoP scheme and a proof")]
    DpopRequired,
    /// The DPoP scheme with a token that is not DPoP-bound (RFC 9449 §4.3 check 12).
    #[error("token sent with the DPoP scheme is not DPoP-bound")]
    DpopUnbound,
    /// The shared DPoP replay cache failed and the limiter fails closed (503).
    #[error("DPoP replay cache unavailable; try again shortly")]
    ReplayCacheUnavailable,
}

impl AuthError {
    /// Nothing is wrong with the token; the gateway could not decide now (keys not loaded,
    /// the introspection endpoint or the DPoP replay cache unreachable): 503, retry shortly.
    pub(crate) fn is_unavailable(&self) -> bool {
        matches!(
            self,
            AuthError::KeysUnavailable
                | AuthError::ReplayCacheUnavailable
                | AuthError::IntrospectionUnavailable
        )
    }

    /// Bounded metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing",
            AuthError::InvalidRequest(_) => "invalid_request",
            AuthError::Malformed(_) => "malformed",
            AuthError::RejectedHeader(_) => "rejected_header",
            AuthError::AlgNotAllowed(_) => "alg_not_allowed",
            AuthError::Expired => "expired",
            AuthError::NotYetValid(_) => "not_yet_valid",
            AuthError::BadSignature => "bad_signature",
            AuthError::UnknownKid => "unknown_kid",
            AuthError::WrongIssuer | AuthError::IssuerNotAllowed => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::InvalidClaims(_) => "invalid_claims",
            AuthError::KeysUnavailable => "keys_unavailable",
            AuthError::UnforwardableClaim(_) => "unforwardable_claim",
            AuthError::Inactive => "inactive",
            AuthError::IntrospectionUnavailable => "introspection_unavailable",
            AuthError::CertificateMismatch => "certificate_mismatch",
            AuthError::DpopBound => "dpop_bound",
            AuthError::Dpop(e) => e.reason(),
            AuthError::DpopRequired => "dpop_required",
            AuthError::DpopUnbound => "dpop_unbound",
            AuthError::ReplayCacheUnavailable => "dpop_replay_cache_unavailable",
        }
    }
}

/// The verified caller. Kept compact — its three strings share one allocation, the issuer is
/// an index (its name: [`Authenticator::issuer_name`]) — since up to `TOKEN_CACHE_CAPACITY` of
/// them live in the verified-token cache.
#[derive(Debug)]
pub struct Principal {
    /// Index of the issuer in [`Authenticator::issuers`] of the snapshot that verified it.
    pub issuer_index: usize,
    /// [`Issuer::uid`] of that issuer: after a reload the index may name another issuer.
    issuer_uid: u64,
    /// The issuer's key-set generation this was verified under.
    generation: u64,
    /// `sub`, then `client_id`, then the space-separated scopes.
    text: Box<str>,
    sub_len: Option<u32>,
    client_id_len: Option<u32>,
    pub strip_authorization: bool,
    /// What the token is bound to (`cnf`); boxed, since most tokens are bearer tokens and up
    /// to `TOKEN_CACHE_CAPACITY` principals are cached.
    pub(crate) binding: Option<Box<jwt::Binding>>,
}

/// A cache entry: the principal and the time (ms) from which it is stale (`exp` + leeway).
struct CachedToken {
    principal: Arc<Principal>,
    stale_at_ms: u64,
}

impl Expiring for CachedToken {
    fn deadline(&self) -> u64 {
        self.stale_at_ms
    }
}

impl Principal {
    /// Only a checked [`jwt::Identity`] goes in, so every string read back is a valid header
    /// value.
    fn pack(identity: &jwt::Identity<'_>) -> (Box<str>, Option<u32>, Option<u32>) {
        let (sub, client_id, scopes) = (identity.sub(), identity.client_id(), identity.scopes());
        let mut text = String::with_capacity(
            sub.map_or(0, str::len) + client_id.map_or(0, str::len) + scopes.len(),
        );
        text.push_str(sub.unwrap_or(""));
        text.push_str(client_id.unwrap_or(""));
        text.push_str(scopes);
        let len = |s: Option<&str>| s.map(|s| s.len() as u32);
        (text.into_boxed_str(), len(sub), len(client_id))
    }

    /// The token's `sub`.
    pub fn sub(&self) -> Option<&str> {
        self.sub_len.map(|n| &self.text[..n as usize])
    }

    /// The token's `client_id`, else `azp`.
    pub fn client_id(&self) -> Option<&str> {
        let start = self.sub_len.unwrap_or(0) as usize;
        self.client_id_len
            .map(|n| &self.text[start..start + n as usize])
    }

    /// Granted scopes, space-separated (also the `X-Auth-Scopes` value).
    pub fn scopes(&self) -> &str {
        let start = (self.sub_len.unwrap_or(0) + self.client_id_len.unwrap_or(0)) as usize;
        &self.text[start..]
    }
}

/// All issuers plus the verified-token cache. Built at start-up and on every reload.
pub struct Authenticator {
    issuers: Vec<Arc<Issuer>>,
    by_iss: HashMap<String, usize>,
    /// Shared with the previous snapshot's authenticator across a reload (see [`Self::new`]).
    cache: Arc<TokenCache>,
    metrics: Arc<Metrics>,
    /// By issuer index: the issuers with an `introspection_endpoint`.
    introspectors: Vec<Option<Arc<introspect::Introspector>>>,
}

/// What a route asks of authentication besides a valid token.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RouteAuth<'a> {
    /// The route's `issuers` (`None`: all): an opaque token goes to the one introspecting
    /// issuer among them (config validation allows at most one per route).
    pub issuers: Option<&'a [String]>,
    /// `introspect = true`: a valid JWT is introspected too.
    pub introspect: bool,
}

/// The verified-token cache and the keyed PRF of its ids (the two only make sense together).
struct TokenCache {
    map: ExpiringMap<CachedToken>,
    ids: Ids,
}

impl Authenticator {
    /// `previous`: the authenticator of the snapshot being replaced. Its verified-token cache
    /// is carried over, so a reload does not re-verify every token in flight; an entry counts
    /// only while the issuer that verified it is still in place unchanged ([`Issuer::uid`]) with
    /// the same key generation, so tokens of issuers whose config changed are verified again,
    /// and entries verified with keys a refresh removed still stop counting.
    pub fn new(
        issuers: Vec<Arc<Issuer>>,
        cache_capacity: u64,
        metrics: Arc<Metrics>,
        previous: Option<&Authenticator>,
    ) -> Self {
        let by_iss = issuers
            .iter()
            .enumerate()
            .map(|(i, iss)| (iss.cfg.issuer.clone(), i))
            .collect();
        // Full shards evict the tokens closest to expiry first: an evicted token is verified
        // again on its next use, so eviction costs time, never a different answer (unlike the
        // rate limiter, whose store refuses new keys instead).
        let cache = match previous {
            Some(p) => p.cache.clone(),
            None => Arc::new(TokenCache {
                map: ExpiringMap::new(
                    cache_capacity,
                    CACHE_SWEEP_INTERVAL_MS,
                    WhenFull::EvictSoonest,
                ),
                ids: Ids::new(),
            }),
        };
        // An issuer's introspection cache survives a reload that keeps the issuer unchanged
        // at the same index (a cached principal names its issuer by index).
        let introspectors = issuers
            .iter()
            .enumerate()
            .map(|(i, issuer)| {
                let kept = previous
                    .and_then(|p| p.introspectors.get(i).cloned().flatten())
                    .filter(|old| old.issuer_uid == issuer.uid());
                kept.or_else(|| introspect::Introspector::new(i, issuer, &metrics).map(Arc::new))
            })
            .collect();
        Authenticator {
            issuers,
            by_iss,
            cache,
            metrics,
            introspectors,
        }
    }

    pub fn issuers(&self) -> &[Arc<Issuer>] {
        &self.issuers
    }

    /// Every issuer has loaded keys at least once.
    pub fn ready(&self) -> bool {
        self.issuers.iter().all(|i| i.is_ready())
    }

    pub fn cached_tokens(&self) -> u64 {
        self.cache.map.len()
    }

    /// The configured name of the issuer that verified `p` (`-` if `p` is from another snapshot
    /// with more issuers, which the proxy never mixes).
    /// What `token` says about itself, checked against these issuers (for `explain`).
    pub(crate) fn inspect(&self, token: &str) -> inspect::TokenFacts {
        inspect::inspect(token, &self.issuers, (jwt::now_millis() / 1000) as i64)
    }

    pub fn issuer_name(&self, p: &Principal) -> &str {
        self.issuers.get(p.issuer_index).map_or("-", |i| i.name())
    }

    /// Verify a token; `Ok` carries the caller. Never echoes the token. `issuer_seen` is set to
    /// the issuer's index as soon as the token's `iss` matched one (for metric labels on failure).
    pub async fn authenticate(
        &self,
        token: BearerToken<'_>,
        issuer_seen: &mut Option<usize>,
    ) -> Result<Arc<Principal>, AuthError> {
        self.authenticate_for(token, RouteAuth::default(), issuer_seen, &mut None)
            .await
    }

    /// [`Self::authenticate`] for a route: a token that is not a JWS, or whose `iss` names no
    /// issuer, is introspected by the route's introspecting issuer (if it has one); on an
    /// `introspect = true` route a valid JWT is introspected too. `introspected` is set to where
    /// the introspection answer came from (`endpoint` or `cache`) when there was one.
    pub(crate) async fn authenticate_for(
        &self,
        token: BearerToken<'_>,
        route: RouteAuth<'_>,
        issuer_seen: &mut Option<usize>,
        introspected: &mut Option<&'static str>,
    ) -> Result<Arc<Principal>, AuthError> {
        let id = self.cache.ids.of(token.0);
        let p = self
            .verify(token, id, route, issuer_seen, introspected)
            .await?;
        if route.introspect && introspected.is_none() {
            // Revocation-sensitive route: the server must still call the JWT active.
            let intro = self.introspectors.get(p.issuer_index).cloned().flatten();
            let intro = intro.ok_or(AuthError::IssuerNotAllowed)?;
            intro.check(id, token.0, introspected).await?;
        }
        Ok(p)
    }

    /// The introspecting issuer an opaque token goes to on a route accepting `allowed`.
    fn opaque_issuer(&self, allowed: Option<&[String]>) -> Option<usize> {
        let mut found = None;
        for (i, issuer) in self.issuers.iter().enumerate() {
            if self.introspectors[i].is_none()
                || allowed.is_some_and(|l| !l.iter().any(|n| n == issuer.name()))
            {
                continue;
            }
            if found.is_some() {
                // Two candidates: refused by config validation; never guess where to send it.
                return None;
            }
            found = Some(i);
        }
        found
    }

    async fn verify(
        &self,
        token: BearerToken<'_>,
        id: u128,
        route: RouteAuth<'_>,
        issuer_seen: &mut Option<usize>,
        introspected: &mut Option<&'static str>,
    ) -> Result<Arc<Principal>, AuthError> {
        let now_ms = jwt::now_millis();
        let now = now_ms / 1000;
        let hit = self.cache.map.get_or_remove(id, |c| {
            let p = &c.principal;
            let issuer = self.issuers.get(p.issuer_index)?;
            (now_ms < c.stale_at_ms
                && p.issuer_uid == issuer.uid()
                && p.generation == issuer.generation())
            .then(|| p.clone())
        });
        if let Some(p) = hit {
            self.metrics.token_cache(true);
            return Ok(p);
        }
        self.metrics.token_cache(false);

        // Only tokens that passed every check are cached, so the character check of RFC 6750
        // is needed on a miss only.
        bearer::check_chars(token.0)?;
        let parsed = jwt::parse(token.0);
        // Opaque to us: not a JWS at all, or one whose `iss` names no issuer.
        let opaque = match &parsed {
            Err(AuthError::Malformed(_)) => true,
            Ok(u) => u
                .iss
                .as_deref()
                .is_none_or(|i| !self.by_iss.contains_key(i)),
            Err(_) => false,
        };
        if let Some(index) = opaque.then(|| self.opaque_issuer(route.issuers)).flatten() {
            *issuer_seen = Some(index);
            let intro = self.introspectors[index].clone();
            if let Some(intro) = intro {
                return intro.check(id, token.0, introspected).await;
            }
        }
        let unverified = parsed?;
        let iss = unverified.iss.as_deref().ok_or(AuthError::WrongIssuer)?;
        let &index = self.by_iss.get(iss).ok_or(AuthError::WrongIssuer)?;
        *issuer_seen = Some(index);
        let issuer = &self.issuers[index];
        let alg = jwt::allowed_algorithm(issuer, &unverified.header)?;
        if !issuer.is_ready() {
            return Err(AuthError::KeysUnavailable);
        }
        let generation = issuer.generation();
        let claims = match &unverified.header.kid {
            Some(kid) => {
                let key = match issuer.keys().by_kid(kid).cloned() {
                    Some(k) => k,
                    None => {
                        // Maybe the issuer rotated: one shared, throttled refetch.
                        issuer.refetch_for_unknown_kid().await;
                        issuer
                            .keys()
                            .by_kid(kid)
                            .cloned()
                            .ok_or(AuthError::UnknownKid)?
                    }
                };
                if !key.accepts(alg) {
                    return Err(AuthError::AlgNotAllowed(
                        "algorithm does not fit the signing key",
                    ));
                }
                jwt::verify_with(issuer, &unverified, alg, &key)?
            }
            None => {
                // No kid: each published key whose type fits the algorithm.
                let keys = issuer.keys();
                let mut result = Err(AuthError::UnknownKid);
                for key in keys.keys.iter().filter(|k| k.accepts(alg)) {
                    match jwt::verify_with(issuer, &unverified, alg, key) {
                        Err(AuthError::BadSignature) => result = Err(AuthError::BadSignature),
                        other => {
                            result = other;
                            break;
                        }
                    }
                }
                result?
            }
        };

        let exp = claims
            .exp
            .as_ref()
            .and_then(|v| v.as_u64())
            .ok_or(AuthError::InvalidClaims("token has no exp claim"))?;
        let identity = claims.identity()?;
        let binding = match &claims.cnf {
            Some(cnf) => cnf.binding()?.map(Box::new),
            None => None,
        };
        let (text, sub_len, client_id_len) = Principal::pack(&identity);
        let principal = Arc::new(Principal {
            issuer_index: index,
            issuer_uid: issuer.uid(),
            strip_authorization: issuer.cfg.strip_authorization,
            generation,
            text,
            sub_len,
            client_id_len,
            binding,
        });
        if exp > now {
            // Stale once `now` (whole seconds) passes exp + leeway, as `jwt` checks it.
            let stale_at_ms = exp
                .saturating_add(issuer.cfg.leeway.as_secs())
                .saturating_add(1)
                .saturating_mul(1000);
            self.cache.map.insert(
                id,
                now_ms,
                CachedToken {
                    principal: principal.clone(),
                    stale_at_ms,
                },
            );
        }
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(claims: serde_json::Value) -> (Box<str>, Option<u32>, Option<u32>) {
        let claims: jwt::Claims = serde_json::from_value(claims).unwrap();
        Principal::pack(&claims.identity().unwrap())
    }

    #[test]
    fn principal_packs_and_reads_its_strings() {
        let (text, s, c) = pack(serde_json::json!({
            "sub": "user-1", "client_id": "app", "scope": "read:a  write:b"
        }));
        let p = Principal {
            issuer_index: 0,
            issuer_uid: 0,
            strip_authorization: false,
            generation: 0,
            text,
            sub_len: s,
            client_id_len: c,
            binding: None,
        };
        assert_eq!(p.sub(), Some("user-1"));
        assert_eq!(p.client_id(), Some("app"));
        assert_eq!(p.scopes(), "read:a write:b");
        let (text, s, c) = pack(serde_json::json!({"azp": "x"}));
        let q = Principal {
            text,
            sub_len: s,
            client_id_len: c,
            ..p
        };
        assert_eq!(q.sub(), None);
        assert_eq!(q.client_id(), Some("x"));
        assert_eq!(q.scopes(), "");
    }
}
