//! Step 2, is the token genuine? Strict parsing of the compact JWS (three base64url segments
//! of JSON objects), header rules (no `none`, no unknown `crit`, no keys carried in the token),
//! issuer chosen by exact `iss`, algorithm from the issuer's allow-list and the key, then the
//! signature and the registered claims through jsonwebtoken.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::jwks::{Issuer, VerifyKey};
use super::AuthError;

/// What the gateway reads of a JOSE header.
#[derive(Debug)]
pub struct JoseHeader {
    pub alg: String,
    pub kid: Option<String>,
}

/// The claims the gateway uses; registered claims are checked by jsonwebtoken.
#[derive(Debug, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub iss: Option<String>,
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub azp: Option<String>,
    #[serde(default)]
    pub scope: Option<ScopeClaim>,
    #[serde(default)]
    pub scp: Option<ScopeClaim>,
    #[serde(default)]
    pub exp: Option<Value>,
    #[serde(default)]
    pub iat: Option<Value>,
}

/// `scope`/`scp`: a space-delimited string or an array of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

impl Claims {
    pub fn scopes(&self) -> Vec<String> {
        let from = |c: &ScopeClaim| -> Vec<String> {
            match c {
                ScopeClaim::Text(s) => s
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
                ScopeClaim::List(v) => v
                    .iter()
                    .flat_map(|s| s.split(' '))
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            }
        };
        match (&self.scope, &self.scp) {
            (Some(s), _) => from(s),
            (None, Some(s)) => from(s),
            (None, None) => Vec::new(),
        }
    }
}

/// A token split and decoded, not yet verified.
pub struct Unverified<'a> {
    pub token: &'a str,
    pub header: JoseHeader,
    /// `iss` of the payload, for choosing the issuer.
    pub iss: Option<String>,
}

fn b64_json(
    segment: &str,
    what: &'static str,
) -> Result<serde_json::Map<String, Value>, AuthError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| AuthError::Malformed(what))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(AuthError::Malformed(what)),
    }
}

/// Split the compact serialisation and check the header.
pub fn parse(token: &str) -> Result<Unverified<'_>, AuthError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed(
            "token is not a JWS in compact form (three segments)",
        ));
    };
    if h.is_empty() || p.is_empty() {
        return Err(AuthError::Malformed("token has an empty segment"));
    }
    if s.is_empty() {
        return Err(AuthError::AlgNotAllowed("unsigned tokens are not accepted"));
    }
    if base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .is_err()
    {
        return Err(AuthError::Malformed("signature is not base64url"));
    }
    let header = b64_json(h, "token header is not base64url-encoded JSON")?;
    let payload = b64_json(p, "token payload is not base64url-encoded JSON")?;

    for embedded in ["jwk", "jku", "x5u", "x5c"] {
        if header.contains_key(embedded) {
            return Err(AuthError::RejectedHeader(
                "keys or key URLs carried in the token are not accepted",
            ));
        }
    }
    if header.contains_key("crit") {
        // We understand no JWS extensions, so any `crit` names one we do not (RFC 7515 §4.1.11).
        return Err(AuthError::RejectedHeader(
            "unsupported critical header extension",
        ));
    }
    if header.contains_key("enc") || header.contains_key("zip") {
        return Err(AuthError::Malformed(
            "encrypted tokens (JWE) are not accepted",
        ));
    }
    if let Some(typ) = header.get("typ") {
        let ok = typ.as_str().is_some_and(|t| {
            let t = t.strip_prefix("application/").unwrap_or(t);
            t.eq_ignore_ascii_case("jwt") || t.eq_ignore_ascii_case("at+jwt")
        });
        if !ok {
            return Err(AuthError::RejectedHeader("token type is not JWT or at+jwt"));
        }
    }
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err(AuthError::Malformed("token header has no alg")),
    };
    if alg.eq_ignore_ascii_case("none") {
        return Err(AuthError::AlgNotAllowed("unsigned tokens are not accepted"));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(AuthError::Malformed("kid is not a string")),
    };
    let iss = match payload.get("iss") {
        None => None,
        Some(Value::String(i)) => Some(i.clone()),
        Some(_) => return Err(AuthError::InvalidClaims("iss is not a string")),
    };
    Ok(Unverified {
        token,
        header: JoseHeader { alg, kid },
        iss,
    })
}

pub fn algorithm_named(alg: &str) -> Option<Algorithm> {
    use Algorithm::*;
    Some(match alg {
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        "ES256" => ES256,
        "ES384" => ES384,
        "EdDSA" => EdDSA,
        "HS256" => HS256,
        "HS384" => HS384,
        "HS512" => HS512,
        _ => return None,
    })
}

/// The algorithm to verify with: the header's, only if the issuer allows it.
pub fn allowed_algorithm(issuer: &Issuer, header: &JoseHeader) -> Result<Algorithm, AuthError> {
    let alg =
        algorithm_named(&header.alg).ok_or(AuthError::AlgNotAllowed("algorithm not allowed"))?;
    if !issuer.cfg.algorithms.contains(&alg) {
        return Err(AuthError::AlgNotAllowed("algorithm not allowed"));
    }
    Ok(alg)
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Verify signature and registered claims with one key.
pub fn verify_with(
    issuer: &Issuer,
    token: &Unverified<'_>,
    alg: Algorithm,
    key: &VerifyKey,
) -> Result<Claims, AuthError> {
    let mut v = Validation::new(alg);
    v.set_issuer(&[issuer.cfg.issuer.as_str()]);
    v.set_audience(&issuer.cfg.audiences);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v.validate_nbf = true;
    v.validate_exp = true;
    v.leeway = issuer.cfg.leeway.as_secs();
    let data = jsonwebtoken::decode::<Claims>(token.token, &key.key, &v).map_err(map_error)?;
    let claims = data.claims;
    if let Some(iat) = &claims.iat {
        let iat = iat
            .as_f64()
            .ok_or(AuthError::InvalidClaims("iat is not a number"))?;
        if iat > (now_secs() + issuer.cfg.leeway.as_secs()) as f64 {
            return Err(AuthError::NotYetValid("token issued in the future"));
        }
    }
    Ok(claims)
}

fn map_error(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid("token not valid yet (nbf)"),
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
            "exp" => AuthError::InvalidClaims("token has no exp claim"),
            "aud" => AuthError::WrongAudience,
            "iss" => AuthError::WrongIssuer,
            _ => AuthError::InvalidClaims("a required claim is missing"),
        },
        ErrorKind::InvalidClaimFormat(_) => {
            AuthError::InvalidClaims("a registered claim has the wrong type")
        }
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => AuthError::AlgNotAllowed("algorithm not allowed"),
        ErrorKind::Json(_) => AuthError::InvalidClaims("claims have the wrong types"),
        ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
            AuthError::Malformed("token is not valid base64url JSON")
        }
        _ => AuthError::BadSignature,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn token(h: Value, p: Value) -> String {
        format!("{}.{}.c2ln", enc(&h), enc(&p))
    }

    #[test]
    fn parse_good_token_reads_alg_kid_iss() {
        let t = token(
            serde_json::json!({"alg": "RS256", "kid": "k1", "typ": "at+jwt"}),
            serde_json::json!({"iss": "https://auth.wetrials.com"}),
        );
        let u = parse(&t).unwrap();
        assert_eq!(u.header.alg, "RS256");
        assert_eq!(u.header.kid.as_deref(), Some("k1"));
        assert_eq!(u.iss.as_deref(), Some("https://auth.wetrials.com"));
    }

    #[test]
    fn parse_structural_garbage_is_malformed() {
        for bad in [
            "abc",
            "a.b",
            "a.b.c.d",
            "a.b.c.d.e",
            "!!.??.c2ln",
            "e30.e30.***",
            "bnVsbA.e30.c2ln",
        ] {
            assert!(
                matches!(parse(bad), Err(AuthError::Malformed(_))),
                "{bad}: {:?}",
                parse(bad).err()
            );
        }
    }

    #[test]
    fn parse_alg_none_is_refused() {
        let t = format!(
            "{}.{}.",
            enc(&serde_json::json!({"alg": "none"})),
            enc(&serde_json::json!({}))
        );
        assert!(matches!(parse(&t), Err(AuthError::AlgNotAllowed(_))));
        let t = token(serde_json::json!({"alg": "nOnE"}), serde_json::json!({}));
        assert!(matches!(parse(&t), Err(AuthError::AlgNotAllowed(_))));
    }

    #[test]
    fn parse_embedded_keys_and_crit_are_refused() {
        for h in [
            serde_json::json!({"alg": "RS256", "jwk": {"kty": "RSA"}}),
            serde_json::json!({"alg": "RS256", "jku": "https://evil/jwks"}),
            serde_json::json!({"alg": "RS256", "x5u": "https://evil/cert"}),
            serde_json::json!({"alg": "RS256", "x5c": ["MII"]}),
            serde_json::json!({"alg": "RS256", "crit": ["exp"], "exp": 1}),
            serde_json::json!({"alg": "RS256", "typ": "JOSE+JSON"}),
        ] {
            let t = token(h.clone(), serde_json::json!({}));
            assert!(
                matches!(parse(&t), Err(AuthError::RejectedHeader(_))),
                "{h}"
            );
        }
    }

    #[test]
    fn scopes_come_from_scope_or_scp() {
        let c: Claims = serde_json::from_value(serde_json::json!({"scope": "a b  c"})).unwrap();
        assert_eq!(c.scopes(), vec!["a", "b", "c"]);
        let c: Claims = serde_json::from_value(serde_json::json!({"scp": ["a", "b"]})).unwrap();
        assert_eq!(c.scopes(), vec!["a", "b"]);
        let c: Claims = serde_json::from_value(serde_json::json!({"scp": "x y"})).unwrap();
        assert_eq!(c.scopes(), vec!["x", "y"]);
        let c: Claims = serde_json::from_value(serde_json::json!({})).unwrap();
        assert!(c.scopes().is_empty());
    }
}
