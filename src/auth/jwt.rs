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
pub(crate) struct Claims {
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
    /// RFC 7800 confirmation: the key the token is bound to.
    #[serde(default)]
    pub cnf: Option<Confirmation>,
}

/// `cnf` members the gateway enforces: a client certificate's SHA-256 thumbprint (RFC 8705
/// §3.1) and a DPoP key's JWK thumbprint (RFC 9449 §6.1). A bound token is accepted only with
/// that certificate, or with a DPoP proof by that key.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Confirmation {
    #[serde(rename = "x5t#S256", default)]
    pub x5t_s256: Option<String>,
    #[serde(default)]
    pub jkt: Option<String>,
}

/// What a token is bound to, checked on every request (also on a verified-token cache hit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Binding {
    /// SHA-256 of the DER of the client certificate the token was issued to.
    pub cert_sha256: Option<[u8; 32]>,
    /// The base64url JWK SHA-256 thumbprint (RFC 7638) of the DPoP key.
    pub jkt: Option<Box<str>>,
}

impl Confirmation {
    /// `None` for an unbound token; a malformed thumbprint refuses the token.
    pub(crate) fn binding(&self) -> Result<Option<Binding>, AuthError> {
        let cert_sha256 = match &self.x5t_s256 {
            None => None,
            Some(t) => {
                let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(t)
                    .map_err(|_| AuthError::InvalidClaims("cnf x5t#S256 is not base64url"))?;
                Some(<[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                    AuthError::InvalidClaims("cnf x5t#S256 is not a SHA-256 thumbprint")
                })?)
            }
        };
        let jkt = match &self.jkt {
            Some(j)
                if j.len() != 43
                    || !j
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                return Err(AuthError::InvalidClaims(
                    "cnf jkt is not a base64url SHA-256 thumbprint",
                ))
            }
            other => other.as_deref().map(Box::from),
        };
        Ok((cert_sha256.is_some() || jkt.is_some()).then_some(Binding { cert_sha256, jkt }))
    }
}

/// `scope`/`scp`: a space-delimited string or an array of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

impl Claims {
    /// The identity the gateway forwards (`X-Auth-Subject`, `X-Auth-Client-Id`,
    /// `X-Auth-Scopes`), checked against each claim's grammar. A value that an upstream would not
    /// read back exactly as the token says it (trimmed, split, dropped or re-decoded) refuses the
    /// whole token: forwarding something else than what the issuer signed is worse than a 401.
    ///
    /// - `sub`, `client_id` (else `azp`): non-empty printable ASCII (0x20–0x7E) without a leading
    ///   or trailing space. Non-ASCII is refused rather than encoded: header bytes above 0x7E are
    ///   opaque `obs-text` that upstreams decode differently (WSGI reads them as Latin-1), and an
    ///   encoding would change what every existing upstream reads for the same header.
    /// - `scope`, or `scp` when `scope` is absent, as a string: scope-tokens (RFC 6749 §3.3,
    ///   `%x21 / %x23-5B / %x5D-7E`) separated by spaces. Runs of spaces are tolerated since the
    ///   forwarded value is rebuilt with single spaces; any other separator is refused.
    /// - `scp` as an array: every element one scope-token (no space inside, not empty).
    pub(crate) fn identity(&self) -> Result<Identity<'_>, AuthError> {
        let sub = match self.sub.as_deref() {
            Some(s) if !is_header_text(s) => return Err(AuthError::UnforwardableClaim("sub")),
            other => other,
        };
        let client_id = match (self.client_id.as_deref(), self.azp.as_deref()) {
            (Some(c), _) if !is_header_text(c) => {
                return Err(AuthError::UnforwardableClaim("client_id"))
            }
            (Some(c), _) => Some(c),
            (None, Some(a)) if !is_header_text(a) => {
                return Err(AuthError::UnforwardableClaim("azp"))
            }
            (None, a) => a,
        };
        let (claim, name) = match (&self.scope, &self.scp) {
            (Some(s), _) => (Some(s), "scope"),
            (None, s) => (s.as_ref(), "scp"),
        };
        let mut scopes = String::new();
        let mut push = |token: &str| -> Result<(), AuthError> {
            if !is_scope_token(token) {
                return Err(AuthError::UnforwardableClaim(name));
            }
            if !scopes.is_empty() {
                scopes.push(' ');
            }
            scopes.push_str(token);
            Ok(())
        };
        match claim {
            Some(ScopeClaim::Text(s)) => {
                for token in s.split(' ').filter(|t| !t.is_empty()) {
                    push(token)?;
                }
            }
            Some(ScopeClaim::List(v)) => {
                for token in v {
                    push(token)?;
                }
            }
            None => {}
        }
        Ok(Identity {
            sub,
            client_id,
            scopes,
        })
    }
}

/// What a verified token says about its caller, every value valid as an HTTP header value as
/// is (only [`Claims::identity`] builds one).
#[derive(Debug)]
pub(crate) struct Identity<'a> {
    sub: Option<&'a str>,
    client_id: Option<&'a str>,
    scopes: String,
}

impl<'a> Identity<'a> {
    /// `sub`.
    pub(crate) fn sub(&self) -> Option<&'a str> {
        self.sub
    }

    /// `client_id`, else `azp`.
    pub(crate) fn client_id(&self) -> Option<&'a str> {
        self.client_id
    }

    /// The granted scope-tokens, joined by single spaces.
    pub(crate) fn scopes(&self) -> &str {
        &self.scopes
    }
}

/// Non-empty printable ASCII with no space at either end: an HTTP header value that no
/// recipient trims, splits or decodes differently.
fn is_header_text(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter().all(|c| (0x20..=0x7e).contains(c))
        && b.first() != Some(&b' ')
        && b.last() != Some(&b' ')
}

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| matches!(c, 0x21 | 0x23..=0x5b | 0x5d..=0x7e))
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

/// The algorithm to verify with: the header's, only if the issuer allows it.
pub(crate) fn allowed_algorithm(
    issuer: &Issuer,
    header: &JoseHeader,
) -> Result<Algorithm, AuthError> {
    let alg = header
        .alg
        .parse::<Algorithm>()
        .ok()
        .ok_or(AuthError::AlgNotAllowed("algorithm not allowed"))?;
    if !issuer.cfg.algorithms.contains(&alg) {
        return Err(AuthError::AlgNotAllowed("algorithm not allowed"));
    }
    Ok(alg)
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Verify signature and registered claims with one key.
pub(crate) fn verify_with(
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

    fn identity(claims: Value) -> Result<(Option<String>, Option<String>, String), AuthError> {
        let c: Claims = serde_json::from_value(claims).unwrap();
        let i = c.identity()?;
        Ok((
            i.sub().map(str::to_string),
            i.client_id().map(str::to_string),
            i.scopes().to_string(),
        ))
    }

    fn scopes(claims: Value) -> Result<String, AuthError> {
        identity(claims).map(|(_, _, s)| s)
    }

    #[test]
    fn scopes_come_from_scope_or_scp() {
        assert_eq!(scopes(serde_json::json!({"scope": "a b"})).unwrap(), "a b");
        assert_eq!(
            scopes(serde_json::json!({"scp": ["a", "b"]})).unwrap(),
            "a b"
        );
        assert_eq!(scopes(serde_json::json!({"scp": "x y"})).unwrap(), "x y");
        assert_eq!(scopes(serde_json::json!({})).unwrap(), "");
        assert_eq!(scopes(serde_json::json!({"scope": ""})).unwrap(), "");
        assert_eq!(scopes(serde_json::json!({"scp": []})).unwrap(), "");
        // `scope` wins; `scp` is then neither read nor checked.
        assert_eq!(
            scopes(serde_json::json!({"scope": "a", "scp": ["b c"]})).unwrap(),
            "a"
        );
    }

    #[test]
    fn scope_string_runs_of_spaces_are_rebuilt_with_single_spaces() {
        for s in ["a b  c", " a b c", "a b c ", "  a   b c  "] {
            assert_eq!(
                scopes(serde_json::json!({"scope": s})).unwrap(),
                "a b c",
                "{s:?}"
            );
            assert_eq!(
                scopes(serde_json::json!({"scp": s})).unwrap(),
                "a b c",
                "{s:?}"
            );
        }
        assert_eq!(scopes(serde_json::json!({"scope": "   "})).unwrap(), "");
        // Every scope-token character is kept as is.
        let all = "!#$%&'()*+,-./0123456789:;<=>?@AZ[]^_`az{|}~";
        assert_eq!(scopes(serde_json::json!({"scope": all})).unwrap(), all);
    }

    #[test]
    fn scope_string_outside_the_grammar_is_unforwardable() {
        for bad in [
            "a\tb",
            "a\t",
            "a\rb",
            "a\nb",
            "a\u{0}b",
            "a\u{7f}",
            "a\"b",
            "a\\b",
            "r\u{e9}ad",
            "a\u{a0}b",
            "a\u{3000}b",
        ] {
            assert_eq!(
                scopes(serde_json::json!({"scope": bad})),
                Err(AuthError::UnforwardableClaim("scope")),
                "{bad:?}"
            );
            assert_eq!(
                scopes(serde_json::json!({"scp": bad})),
                Err(AuthError::UnforwardableClaim("scp")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn scp_array_element_must_be_one_scope_token() {
        for bad in ["read:a write:b", "", " a", "a ", "a\tb", "a\"", "\u{e9}"] {
            assert_eq!(
                scopes(serde_json::json!({"scp": ["ok", bad]})),
                Err(AuthError::UnforwardableClaim("scp")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sub_and_client_id_must_be_printable_ascii_without_edge_spaces() {
        let ok = identity(serde_json::json!({"sub": "user one", "client_id": "a\"b\\c~"}));
        assert_eq!(
            ok.unwrap(),
            (
                Some("user one".into()),
                Some("a\"b\\c~".into()),
                String::new()
            )
        );
        let absent = identity(serde_json::json!({})).unwrap();
        assert_eq!(absent, (None, None, String::new()));
        for bad in [
            "",
            " ",
            " admin",
            "admin ",
            "ad\tmin",
            "ad\rmin",
            "ad\nmin",
            "ad\u{0}min",
            "ad\u{7f}min",
            "ad\u{1b}min",
            "jos\u{e9}",
            "\u{1f600}",
        ] {
            assert_eq!(
                identity(serde_json::json!({"sub": bad})),
                Err(AuthError::UnforwardableClaim("sub")),
                "{bad:?}"
            );
            assert_eq!(
                identity(serde_json::json!({"client_id": bad, "azp": "fine"})),
                Err(AuthError::UnforwardableClaim("client_id")),
                "{bad:?}"
            );
            assert_eq!(
                identity(serde_json::json!({"azp": bad})),
                Err(AuthError::UnforwardableClaim("azp")),
                "{bad:?}"
            );
        }
        // `azp` stands in for `client_id` only when `client_id` is absent.
        let (_, cid, _) = identity(serde_json::json!({"azp": "app"})).unwrap();
        assert_eq!(cid.as_deref(), Some("app"));
        let (_, cid, _) = identity(serde_json::json!({"client_id": "c", "azp": " x"})).unwrap();
        assert_eq!(cid.as_deref(), Some("c"));
    }

    #[test]
    fn unforwardable_claim_names_the_claim_never_its_value() {
        let e = identity(serde_json::json!({"sub": " secret-admin"})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "token claim sub cannot be forwarded faithfully"
        );
        assert_eq!(e.reason(), "unforwardable_claim");
    }
}
