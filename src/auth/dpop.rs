//! Step 2 for DPoP (RFC 9449): is the `DPoP` proof of this request genuine, fresh and made for
//! it? [`parse_and_verify`] checks the proof on its own (compact JWS, `typ: dpop+jwt`, an
//! allowed asymmetric `alg`, a public `jwk` whose type fits it, the signature by that key, the
//! claims' types), [`check_request`] checks it against the request (`htm`, `htu`, `iat`
//! window, `ath`) and the token's `cnf.jkt` (the RFC 7638 thumbprint of the proof's key).
//! [`ReplayCache`] remembers each proof (`jti` with its key) for the window, in memory (moka);
//! the decision core shares it through Redis when the limiter does.
//!
//! Each refusal is a [`DpopError`] with its own bounded reason. Messages are fixed texts: never
//! the proof, the token or a claim value.

use std::time::Duration;

use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::expiring::Ids;
use crate::policy::normalize_origin as origin;

/// Longest proof accepted, in bytes (a proof carries one public key: RSA 4096 fits).
pub(crate) const MAX_PROOF_BYTES: usize = 8192;
/// Longest `jti` accepted.
const MAX_JTI_BYTES: usize = 256;

/// Why a DPoP proof (or its absence) was refused. `reason` is the bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpopError {
    /// No `DPoP` header with the `DPoP` scheme.
    Missing,
    /// More than one `DPoP` header (RFC 9449 §4.3 check 1).
    Multiple,
    /// Not a compact JWS of JSON objects, or a claim missing or of the wrong type.
    Malformed(&'static str),
    /// `typ` is not `dpop+jwt`.
    Typ,
    /// `alg` symmetric, `none`, unknown or not allowed, or not fitting the key.
    Alg,
    /// `jwk` missing, not a usable public key, or carrying private members.
    Jwk(&'static str),
    /// The signature does not verify with the proof's own `jwk`.
    Signature,
    /// `htm` is not the request's method.
    Htm,
    /// `htu` is not the request's URI (without query and fragment).
    Htu,
    /// `iat` outside the accepted window.
    Iat,
    /// This `jti` was already used with this key within the window.
    Replay,
    /// `ath` missing or not the hash of the access token presented.
    Ath,
    /// The token's `cnf.jkt` is not the thumbprint of the proof's key.
    KeyMismatch,
}

impl DpopError {
    pub fn reason(&self) -> &'static str {
        match self {
            DpopError::Missing => "dpop_missing",
            DpopError::Multiple => "dpop_multiple",
            DpopError::Malformed(_) => "dpop_malformed",
            DpopError::Typ => "dpop_typ",
            DpopError::Alg => "dpop_alg",
            DpopError::Jwk(_) => "dpop_jwk",
            DpopError::Signature => "dpop_signature",
            DpopError::Htm => "dpop_htm",
            DpopError::Htu => "dpop_htu",
            DpopError::Iat => "dpop_iat",
            DpopError::Replay => "dpop_replay",
            DpopError::Ath => "dpop_ath",
            DpopError::KeyMismatch => "dpop_key_mismatch",
        }
    }
}

impl std::fmt::Display for DpopError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DpopError::Missing => "DPoP proof missing: send one DPoP header with the DPoP scheme",
            DpopError::Multiple => "more than one DPoP header",
            DpopError::Malformed(d) | DpopError::Jwk(d) => d,
            DpopError::Typ => "DPoP proof typ is not dpop+jwt",
            DpopError::Alg => "DPoP proof algorithm not allowed",
            DpopError::Signature => "DPoP proof signature does not verify with its jwk",
            DpopError::Htm => "DPoP proof htm does not match the request method",
            DpopError::Htu => "DPoP proof htu does not match the request URI",
            DpopError::Iat => "DPoP proof iat is outside the accepted window",
            DpopError::Replay => "DPoP proof already used (jti replayed)",
            DpopError::Ath => "DPoP proof ath does not match the access token",
            DpopError::KeyMismatch => "DPoP proof key is not the key the token is bound to",
        })
    }
}

/// A proof whose signature verified, with the claims the request checks read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Proof {
    /// RFC 7638 thumbprint (base64url SHA-256) of the proof's `jwk`.
    pub jkt: String,
    pub jti: String,
    pub htm: String,
    pub htu: String,
    pub iat: i64,
    pub ath: Option<String>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn b64_json(segment: &str, what: &'static str) -> Result<Map<String, Value>, DpopError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| DpopError::Malformed(what))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(DpopError::Malformed(what)),
    }
}

/// `ath` of a token: base64url(SHA-256(ASCII token)) (RFC 9449 §4.2).
pub(crate) fn ath(token: &str) -> String {
    b64(&Sha256::digest(token.as_bytes()))
}

/// RFC 7638 JWK thumbprint: the required members of the key type, in lexicographic order,
/// no whitespace, SHA-256, base64url.
pub(crate) fn thumbprint(jwk: &Map<String, Value>) -> Result<String, DpopError> {
    let members: &[&str] = match jwk.get("kty").and_then(Value::as_str) {
        Some("EC") => &["crv", "kty", "x", "y"],
        Some("RSA") => &["e", "kty", "n"],
        Some("OKP") => &["crv", "kty", "x"],
        _ => return Err(DpopError::Jwk("DPoP proof jwk has no supported kty")),
    };
    let mut out = String::from("{");
    for (i, m) in members.iter().enumerate() {
        let v = jwk
            .get(*m)
            .and_then(Value::as_str)
            .ok_or(DpopError::Jwk("DPoP proof jwk lacks a required member"))?;
        if i > 0 {
            out.push(',');
        }
        // `to_string` of a JSON string: quoted and escaped as RFC 7638 §3 asks.
        out.push_str(&Value::from(*m).to_string());
        out.push(':');
        out.push_str(&Value::from(v).to_string());
    }
    out.push('}');
    Ok(b64(&Sha256::digest(out.as_bytes())))
}

/// Private-key members of RSA, EC and OKP JWKs (RFC 7518 §6.2.2, §6.3.2; RFC 8037 §2).
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Whether `alg` fits the key's type and curve.
fn fits(alg: Algorithm, jwk: &Map<String, Value>) -> bool {
    let kty = jwk.get("kty").and_then(Value::as_str);
    let crv = jwk.get("crv").and_then(Value::as_str);
    match alg {
        Algorithm::ES256 => kty == Some("EC") && crv == Some("P-256"),
        Algorithm::ES384 => kty == Some("EC") && crv == Some("P-384"),
        Algorithm::EdDSA => kty == Some("OKP") && crv == Some("Ed25519"),
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => kty == Some("RSA"),
        _ => false,
    }
}

/// Check the proof on its own: structure, header, key, signature, claim types (RFC 9449 §4.3
/// checks 2 to 7). `allowed`: the configured proof algorithms (asymmetric only).
pub(crate) fn parse_and_verify(proof: &str, allowed: &[Algorithm]) -> Result<Proof, DpopError> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(DpopError::Malformed("DPoP proof too large"));
    }
    let mut parts = proof.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(DpopError::Malformed(
            "DPoP proof is not a JWS in compact form",
        ));
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(DpopError::Malformed("DPoP proof has an empty segment"));
    }
    let header = b64_json(h, "DPoP proof header is not base64url-encoded JSON")?;
    let claims = b64_json(p, "DPoP proof payload is not base64url-encoded JSON")?;
    if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
        return Err(DpopError::Typ);
    }
    if header.contains_key("crit") {
        return Err(DpopError::Malformed(
            "DPoP proof names an unsupported critical header",
        ));
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(|a| a.parse::<Algorithm>().ok())
        .filter(|a| allowed.contains(a))
        .ok_or(DpopError::Alg)?;
    let Some(Value::Object(jwk)) = header.get("jwk") else {
        return Err(DpopError::Jwk("DPoP proof header has no jwk object"));
    };
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err(DpopError::Jwk("DPoP proof jwk holds private key members"));
    }
    if !fits(alg, jwk) {
        return Err(DpopError::Alg);
    }
    let jkt = thumbprint(jwk)?;
    let parsed: Jwk = serde_json::from_value(Value::Object(jwk.clone()))
        .map_err(|_| DpopError::Jwk("DPoP proof jwk is not a valid public key"))?;
    let key = DecodingKey::from_jwk(&parsed)
        .map_err(|_| DpopError::Jwk("DPoP proof jwk is not a valid public key"))?;
    let mut v = Validation::new(alg);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    // Only the signature: the claims are read below.
    jsonwebtoken::decode::<Value>(proof, &key, &v).map_err(|_| DpopError::Signature)?;

    let text = |name: &str, missing: &'static str| -> Result<String, DpopError> {
        match claims.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(DpopError::Malformed(missing)),
        }
    };
    let jti = text("jti", "DPoP proof has no jti string")?;
    if jti.len() > MAX_JTI_BYTES {
        return Err(DpopError::Malformed("DPoP proof jti is too long"));
    }
    let htm = text("htm", "DPoP proof has no htm string")?;
    let htu = text("htu", "DPoP proof has no htu string")?;
    let iat = match claims.get("iat") {
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .ok_or(DpopError::Malformed("DPoP proof iat is not a number"))?,
        _ => return Err(DpopError::Malformed("DPoP proof has no iat number")),
    };
    let ath = match claims.get("ath") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(DpopError::Ath),
    };
    Ok(Proof {
        jkt,
        jti,
        htm,
        htu,
        iat,
        ath,
    })
}

/// The request a proof must have been made for.
pub(crate) struct Expected<'a> {
    pub method: &'a str,
    /// `scheme://authority/path` of the request, already normalised ([`normalize_htu`]).
    pub htu: &'a str,
    pub now: i64,
    pub max_age: Duration,
    pub leeway: Duration,
    pub token: &'a str,
    /// `cnf.jkt` of the verified token.
    pub jkt: &'a str,
}

/// RFC 9449 §4.3 checks 8, 9, 11 and 12 (`htm`, `htu`, `iat`, `ath`, `cnf.jkt`). `path_norm`
/// normalises the path of the proof's `htu` as the request's path was.
pub(crate) fn check_request(
    p: &Proof,
    want: &Expected<'_>,
    path_norm: impl Fn(&str) -> Option<String>,
) -> Result<(), DpopError> {
    if p.htm != want.method {
        return Err(DpopError::Htm);
    }
    if normalize_htu(&p.htu, path_norm).as_deref() != Some(want.htu) {
        return Err(DpopError::Htu);
    }
    let (age, leeway) = (want.max_age.as_secs() as i64, want.leeway.as_secs() as i64);
    if p.iat > want.now + leeway || p.iat < want.now - age - leeway {
        return Err(DpopError::Iat);
    }
    // Compared in constant time: not secret, but there is no reason to leak how much matched.
    let eq = |a: &str, b: &str| {
        a.len() == b.len() && subtle::ConstantTimeEq::ct_eq(a.as_bytes(), b.as_bytes()).into()
    };
    match &p.ath {
        Some(a) if eq(a, &ath(want.token)) => {}
        _ => return Err(DpopError::Ath),
    }
    if !eq(&p.jkt, want.jkt) {
        return Err(DpopError::KeyMismatch);
    }
    Ok(())
}

/// `scheme://authority` + `path` normalised for comparison (RFC 3986 §6.2.2, §6.2.3): scheme
/// and host lower-cased, the default port dropped, an empty path as `/`; query and fragment
/// dropped (RFC 9449 §4.3 check 9). `None` if it is not an absolute http(s) URI.
pub(crate) fn normalize_htu(
    uri: &str,
    path_norm: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    let uri = uri.split(['?', '#']).next().unwrap_or("");
    let (scheme, rest) = uri.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Some(format!(
        "{}{}",
        origin(&scheme, authority)?,
        path_norm(path)?
    ))
}

/// Proofs seen within the window, by a keyed hash of (key thumbprint, `jti`): moka with a
/// time to live of the window and LRU eviction (every new proof is admitted; when full the
/// oldest entry goes first). One per process, carried over reloads.
pub(crate) struct ReplayCache {
    seen: moka::sync::Cache<u128, ()>,
    ids: Ids,
    window: Duration,
}

impl ReplayCache {
    pub(crate) fn new(capacity: u64, window: Duration) -> Self {
        ReplayCache {
            seen: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(window)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build(),
            ids: Ids::new(),
            window,
        }
    }

    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    /// Record the proof; `true` if it was not seen within the window (atomic per proof).
    pub(crate) fn first_use(&self, jkt: &str, jti: &str) -> bool {
        self.seen
            .entry(self.ids.of((jkt, jti)))
            .or_insert(())
            .is_fresh()
    }

    /// Whether the proof was seen, recording nothing (`explain`).
    pub(crate) fn seen(&self, jkt: &str, jti: &str) -> bool {
        self.seen.contains_key(&self.ids.of((jkt, jti)))
    }
}

/// The id of a proof in a shared store: hex of 128 bits of SHA-256 of (thumbprint, `jti`),
/// the same in every replica; attacker-chosen text never reaches the store's key.
pub(crate) fn shared_id(jkt: &str, jti: &str) -> String {
    let mut h = Sha256::new();
    h.update(jkt.as_bytes());
    h.update([0u8]);
    h.update(jti.as_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_DPOP_ALGORITHMS as DEFAULT_ALGORITHMS;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    /// The minting side (`SigningKey::dpop_proof`, used by the demo and the benchmarks) makes
    /// proofs this side accepts, for every key type, with the thumbprint it computes itself.
    #[test]
    fn minted_proofs_verify_with_their_own_thumbprint() {
        use crate::mint::{KeyAlg, SigningKey};
        for alg in [KeyAlg::ES256, KeyAlg::RS256, KeyAlg::PS256, KeyAlg::EdDSA] {
            let key = SigningKey::generate("client", alg).unwrap();
            let proof = key.dpop_proof("POST", "https://api.example/v1/x", Some("tok"));
            let p = parse_and_verify(&proof, DEFAULT_ALGORITHMS).unwrap();
            assert_eq!(p.jkt, key.thumbprint(), "{alg:?}");
            assert_eq!(
                p.jkt,
                thumbprint(key.public_jwk().as_object().unwrap()).unwrap()
            );
            assert_eq!((p.htm.as_str(), p.ath), ("POST", Some(ath("tok"))));
            let again = parse_and_verify(&key.dpop_proof("POST", "u", None), DEFAULT_ALGORITHMS);
            assert_ne!(again.unwrap().jti, p.jti, "a fresh jti each proof");
        }
    }

    /// RFC 9449 §7.1 Figure 13 with its access token (Figure 12): every request check passes,
    /// and the example key's thumbprint is the RFC's `jkt` (Figures 8 and 9).
    #[test]
    fn the_rfc9449_resource_proof_checks_against_its_request_and_token() {
        let proof = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90ZWN0ZWRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNFc05yV0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFFbyJ9.2oW9RP35yRqzhrtNP86L-Ey71EOptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA";
        let token = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";
        let jkt = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";
        let p = parse_and_verify(proof, DEFAULT_ALGORITHMS).unwrap();
        assert_eq!(p.jkt, jkt);
        let id = |s: &str| Some(s.to_string());
        let want = Expected {
            method: "GET",
            htu: "https://resource.example.org/protectedresource",
            now: 1562262618,
            max_age: Duration::from_secs(60),
            leeway: Duration::from_secs(5),
            token,
            jkt,
        };
        assert_eq!(check_request(&p, &want, id), Ok(()));
        let other = |f: &dyn Fn(&mut Expected<'_>)| {
            let mut w = Expected { ..want };
            f(&mut w);
            check_request(&p, &w, id)
        };
        assert_eq!(other(&|w| w.method = "POST"), Err(DpopError::Htm));
        assert_eq!(
            other(&|w| w.htu = "https://resource.example.org/other"),
            Err(DpopError::Htu)
        );
        assert_eq!(other(&|w| w.now = 1562262618 + 66), Err(DpopError::Iat));
        assert_eq!(other(&|w| w.now = 1562262618 - 6), Err(DpopError::Iat));
        assert_eq!(other(&|w| w.token = "another"), Err(DpopError::Ath));
        assert_eq!(
            other(&|w| w.jkt = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"),
            Err(DpopError::KeyMismatch)
        );
    }

    /// RFC 7638 §3.1.
    #[test]
    fn thumbprint_of_the_rfc7638_example_key() {
        let jwk = obj(json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        }));
        assert_eq!(
            thumbprint(&jwk).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    /// RFC 9449 §4.1 Figure 3: the example proof parses (its signature is over the example
    /// key; the example is from 2019, so only its structure and claims are checked here).
    #[test]
    fn the_rfc9449_example_proof_parses() {
        let proof = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg";
        let p = parse_and_verify(proof, DEFAULT_ALGORITHMS).unwrap();
        assert_eq!(p.htm, "POST");
        assert_eq!(p.htu, "https://server.example.com/token");
        assert_eq!(p.jti, "-BwC3ESc6acc2lTc");
        assert_eq!(p.iat, 1562262616);
        assert_eq!(p.ath, None);
        // Tampering with the payload breaks the signature.
        let mut parts: Vec<&str> = proof.split('.').collect();
        let other = b64(
            br#"{"jti":"x","htm":"GET","htu":"https://server.example.com/token","iat":1562262616}"#,
        );
        parts[1] = &other;
        assert_eq!(
            parse_and_verify(&parts.join("."), DEFAULT_ALGORITHMS),
            Err(DpopError::Signature)
        );
    }

    /// RFC 9449 §7.1 Figure 13: `ath` of the example access token.
    #[test]
    fn ath_of_the_rfc9449_example_token() {
        assert_eq!(
            ath("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
            "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
        );
    }

    #[test]
    fn htu_normalisation_ignores_case_default_port_query_and_fragment() {
        let id = |p: &str| Some(p.to_string());
        for (a, b) in [
            (
                "HTTPS://API.Example.com:443/v1/x?q=1#f",
                "https://api.example.com/v1/x",
            ),
            ("http://h:80", "http://h/"),
            ("http://h:8080/a", "http://h:8080/a"),
            ("http://[::1]:8080/a", "http://[::1]:8080/a"),
            ("http://[::1]/a", "http://[::1]/a"),
        ] {
            assert_eq!(normalize_htu(a, id).as_deref(), Some(b), "{a}");
        }
        for bad in ["/relative", "ftp://h/x", "https://user@h/x", "https://h:x/"] {
            assert_eq!(normalize_htu(bad, id), None, "{bad}");
        }
    }

    #[test]
    fn private_members_and_symmetric_algs_are_refused() {
        let h = |v: Value| b64(v.to_string().as_bytes());
        let claims = h(json!({"jti": "a", "htm": "GET", "htu": "https://h/", "iat": 1}));
        let ec = json!({"kty": "EC", "crv": "P-256", "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs", "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA"});
        let mut private = ec.clone();
        private["d"] = json!("AAAA");
        let proof = format!(
            "{}.{claims}.c2ln",
            h(json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": private}))
        );
        assert!(matches!(
            parse_and_verify(&proof, DEFAULT_ALGORITHMS),
            Err(DpopError::Jwk(_))
        ));
        for alg in ["HS256", "none", "ES384"] {
            let proof = format!(
                "{}.{claims}.c2ln",
                h(json!({"typ": "dpop+jwt", "alg": alg, "jwk": ec}))
            );
            assert_eq!(
                parse_and_verify(&proof, DEFAULT_ALGORITHMS),
                Err(DpopError::Alg),
                "{alg}"
            );
        }
        let proof = format!(
            "{}.{claims}.c2ln",
            h(json!({"typ": "JWT", "alg": "ES256", "jwk": ec}))
        );
        assert_eq!(
            parse_and_verify(&proof, DEFAULT_ALGORITHMS),
            Err(DpopError::Typ)
        );
    }

    #[test]
    fn replay_cache_admits_a_proof_once_and_peeking_records_nothing() {
        let c = ReplayCache::new(100, Duration::from_secs(60));
        assert!(!c.seen("k", "j1"));
        assert!(!c.seen("k", "j1"), "peeking must not record");
        assert!(c.first_use("k", "j1"));
        assert!(!c.first_use("k", "j1"));
        assert!(c.seen("k", "j1"));
        assert!(c.first_use("other", "j1"), "a jti is per key");
        assert_ne!(shared_id("k", "j1"), shared_id("k", "j2"));
        assert_eq!(shared_id("k", "j1").len(), 32);
    }
}
