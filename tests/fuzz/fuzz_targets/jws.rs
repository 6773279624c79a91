//! Compact JWS parsing before the signature check (`auth::jwt::parse`).
//! Input: a token, or `header JSON \n payload JSON` (encoded here, so the fuzzer works on JSON).
//! Properties: an accepted token has three segments whose header and payload are base64url
//! JSON objects; the gateway reads `alg`, `kid` and `iss` as an independent decode does; no
//! `none`, no carried keys (`jwk`, `jku`, `x5u`, `x5c`), no `crit`, no JWE; where
//! jsonwebtoken (which verifies the signature) also reads the header, it reads the same
//! `alg` and `kid`. Errors are of the 401 kinds, never a panic.
#![no_main]
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use wetrials_gateway::fuzzing::AuthError;
use wetrials_gateway::fuzzing::parse_jws;

fn object(segment: &str) -> Option<serde_json::Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let token: String = match data.iter().position(|&b| b == b'\n') {
        Some(i) => format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(&data[..i]),
            URL_SAFE_NO_PAD.encode(&data[i + 1..])
        ),
        None => match std::str::from_utf8(data) {
            Ok(s) => s.to_string(),
            Err(_) => return,
        },
    };
    match parse_jws(&token) {
        Ok(u) => {
            assert_eq!(u.token, token);
            let parts: Vec<&str> = token.split('.').collect();
            assert_eq!(parts.len(), 3);
            assert!(parts.iter().all(|p| !p.is_empty()));
            assert!(URL_SAFE_NO_PAD.decode(parts[2]).is_ok());
            let header = object(parts[0]).expect("header is a base64url JSON object");
            let payload = object(parts[1]).expect("payload is a base64url JSON object");
            assert_eq!(
                header.get("alg").and_then(Value::as_str),
                Some(u.header.alg.as_str())
            );
            assert!(!u.header.alg.eq_ignore_ascii_case("none"));
            assert_eq!(
                header.get("kid").and_then(Value::as_str),
                u.header.kid.as_deref()
            );
            assert_eq!(payload.get("iss").and_then(Value::as_str), u.iss.as_deref());
            for k in ["jwk", "jku", "x5u", "x5c", "crit", "enc", "zip"] {
                assert!(!header.contains_key(k), "accepted a header with {k}");
            }
            // jsonwebtoken parses the header again for the signature check: where it can,
            // it must see the same algorithm and key id (no duplicate-key games).
            if let Ok(h) = jsonwebtoken::decode_header(&token) {
                assert_eq!(format!("{:?}", h.alg), u.header.alg, "alg read differently");
                assert_eq!(h.kid, u.header.kid, "kid read differently");
            }
        }
        Err(e) => {
            assert!(
                matches!(
                    e,
                    AuthError::Malformed(_)
                        | AuthError::RejectedHeader(_)
                        | AuthError::AlgNotAllowed(_)
                        | AuthError::InvalidClaims(_)
                ),
                "unexpected error kind {e:?}"
            );
            // The texts are `&'static str` (AuthError's type), so no token can reach them.
            assert!(!e.to_string().is_empty());
        }
    }
});
