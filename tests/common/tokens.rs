//! Tokens by hand: valid ones from a [`LocalIssuer`], and hostile ones built from their parts
//! (`alg: none`, any header, HMAC with a public key, patched claims).

use base64::Engine;
use serde_json::{json, Value};

use super::LocalIssuer;

pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn b64url_decode(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .expect("base64url")
}

/// `b64(header).b64(claims).b64(signature)` — any header, any signature bytes.
pub fn compose(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes()),
        b64url(signature)
    )
}

/// An HS256 token signed with `secret` (e.g. an RSA public key: the key-confusion attack).
pub fn hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64url(tag.as_ref()))
}

/// `claims` with `patch` merged in (a `null` removes the key).
pub fn patch(mut claims: Value, patch: Value) -> Value {
    if let (Some(c), Some(p)) = (claims.as_object_mut(), patch.as_object()) {
        for (k, v) in p {
            if v.is_null() {
                c.remove(k);
            } else {
                c.insert(k.clone(), v.clone());
            }
        }
    }
    claims
}

/// The JWK of `kid` as the issuer publishes it.
pub fn jwk_of(issuer: &LocalIssuer, kid: &str) -> Value {
    issuer.jwks()["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid).cloned())
        .unwrap_or_else(|| panic!("no key {kid} in {}", issuer.jwks()))
}

/// The three parts of a compact token.
pub fn token_parts(token: &str) -> Vec<String> {
    token.split('.').map(str::to_string).collect()
}

/// A valid token with `scope` for 1 h from the issuer's first key.
pub fn token(issuer: &LocalIssuer, sub: &str, scope: &str) -> String {
    issuer.mint(&issuer.claims(sub, scope, 3600))
}

/// The JOSE header `LocalIssuer` writes for an RS256 key.
pub fn rs256_header(kid: &str) -> Value {
    json!({"alg": "RS256", "typ": "JWT", "kid": kid})
}
