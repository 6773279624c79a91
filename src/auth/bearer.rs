//! Step 2, finding the token: `Authorization: Bearer <token>` (scheme case-insensitive,
//! exactly one header), or — only where a route opts in — a query parameter or a cookie.

use super::AuthError;

/// A token as received. `Debug` never shows it.
#[derive(Clone, Copy)]
pub struct BearerToken<'a>(pub &'a str);

impl std::fmt::Debug for BearerToken<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

/// RFC 6750 §2.1 `b64token`: ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/", then "=" padding.
fn is_b64token(t: &str) -> bool {
    let body = t.trim_end_matches('=');
    // One table load per byte, no branches: the scan runs over every unseen token (~800 bytes).
    !body.is_empty()
        && body
            .bytes()
            .fold(true, |ok, b| ok & B64TOKEN[usize::from(b)])
}

/// The `b64token` characters (without the `=` padding).
static B64TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    t
};

/// Parse the `Authorization` header values of a request.
///
/// - no header, or only another scheme (`Basic …`, `DPoP …`): [`AuthError::MissingToken`]
///   (401 without an error attribute: RFC 6750 §3.1 counts an unsupported authentication
///   method as no credentials);
/// - two headers, an empty value, `Bearer` without a token, spaces or bad characters in the
///   token, or a value longer than `max_len`: [`AuthError::InvalidRequest`] (400).
pub fn from_authorization<'a>(
    values: impl Iterator<Item = &'a [u8]>,
    max_len: usize,
) -> Result<BearerToken<'a>, AuthError> {
    from_authorization_with(values, max_len, false).map(|(_, t)| t)
}

/// The authentication scheme a token came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Bearer,
    /// RFC 9449 §7.1: `Authorization: DPoP <token>`, with a `DPoP` proof header.
    Dpop,
}

/// [`from_authorization`], and with `dpop` also `DPoP <token>` (scheme case-insensitive, the
/// same token rules); without `dpop` a DPoP credential counts as no credentials.
pub(crate) fn from_authorization_with<'a>(
    mut values: impl Iterator<Item = &'a [u8]>,
    max_len: usize,
    dpop: bool,
) -> Result<(Scheme, BearerToken<'a>), AuthError> {
    let Some(first) = values.next() else {
        return Err(AuthError::MissingToken);
    };
    if values.next().is_some() {
        return Err(AuthError::InvalidRequest(
            "more than one Authorization header",
        ));
    }
    if first.len() > max_len {
        return Err(AuthError::InvalidRequest("Authorization header too large"));
    }
    let value = std::str::from_utf8(first)
        .map_err(|_| AuthError::InvalidRequest("Authorization header is not ASCII"))?;
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    let (scheme, rest) = match value.split_once(' ') {
        Some((s, r)) => (s, r),
        None => (value, ""),
    };
    if scheme.is_empty() {
        return Err(AuthError::InvalidRequest("Authorization header is empty"));
    }
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if dpop && scheme.eq_ignore_ascii_case("dpop") {
        Scheme::Dpop
    } else {
        return Err(AuthError::MissingToken);
    };
    let token = rest.trim_start_matches(' ');
    if token.is_empty() {
        return Err(AuthError::InvalidRequest(match scheme {
            Scheme::Bearer => "Bearer token is empty",
            Scheme::Dpop => "DPoP token is empty",
        }));
    }
    // The character check (`check_chars`) runs on a verified-token cache miss only.
    Ok((scheme, BearerToken(token)))
}

/// RFC 6750 §2.1 characters: 400 `invalid_request` otherwise.
pub fn check_chars(token: &str) -> Result<(), AuthError> {
    if is_b64token(token) {
        Ok(())
    } else {
        Err(AuthError::InvalidRequest(
            "Bearer token has invalid characters",
        ))
    }
}

/// A token from an opted-in query parameter or cookie: same character rules.
pub(crate) fn from_value(value: &str, max_len: usize) -> Result<BearerToken<'_>, AuthError> {
    if value.len() > max_len {
        return Err(AuthError::InvalidRequest("token too large"));
    }
    if !is_b64token(value) {
        return Err(AuthError::InvalidRequest("token has invalid characters"));
    }
    Ok(BearerToken(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(values: &[&str]) -> Result<String, AuthError> {
        let t = from_authorization(values.iter().map(|v| v.as_bytes()), 8192)?;
        check_chars(t.0)?;
        Ok(t.0.to_string())
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(parse(&["Bearer abc.def.ghi"]).unwrap(), "abc.def.ghi");
        assert_eq!(parse(&["bearer abc.def.ghi"]).unwrap(), "abc.def.ghi");
        assert_eq!(parse(&["BEARER  abc.def.ghi"]).unwrap(), "abc.def.ghi");
    }

    #[test]
    fn b64token_accepts_exactly_the_rfc6750_characters() {
        let allowed = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/";
        for b in 0u8..=127 {
            let t = format!("a{}b", b as char);
            assert_eq!(
                is_b64token(&t),
                allowed.contains(b as char),
                "byte {b:#04x} inside a token"
            );
        }
        assert!(!is_b64token("ab\u{e9}c"), "non-ASCII");
        assert!(is_b64token("abc=="), "trailing padding");
        assert!(!is_b64token("a=b"), "padding inside");
        assert!(!is_b64token("=="), "padding only");
    }

    #[test]
    fn bearer_missing_header_or_other_scheme_is_missing_token() {
        assert!(matches!(parse(&[]), Err(AuthError::MissingToken)));
        for other in [
            "Basic dXNlcjpwYXNz",
            "DPoP abc.def.ghi",
            "Digest username=\"x\"",
            "Bearerabc",
        ] {
            assert!(
                matches!(parse(&[other]), Err(AuthError::MissingToken)),
                "{other}"
            );
        }
    }

    #[test]
    fn bearer_bad_forms_are_invalid_request() {
        for bad in [
            vec!["Bearer"],
            vec!["Bearer "],
            vec!["Bearer a b"],
            vec!["Bearer a\"b"],
            vec!["Basic dXNlcjpwYXNz", "Bearer a.b.c"],
            vec!["Bearer a.b.c", "Bearer a.b.c"],
            vec![""],
        ] {
            assert!(
                matches!(parse(&bad), Err(AuthError::InvalidRequest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn dpop_scheme_is_read_only_when_accepted() {
        fn one(v: &str, dpop: bool) -> Result<(Scheme, BearerToken<'_>), AuthError> {
            from_authorization_with(std::iter::once(v.as_bytes()), 8192, dpop)
        }
        assert_eq!(
            one("DPoP a.b.c", true).map(|(s, t)| (s, t.0)),
            Ok((Scheme::Dpop, "a.b.c"))
        );
        assert_eq!(
            one("dpop  a.b.c", true).map(|(s, t)| (s, t.0)),
            Ok((Scheme::Dpop, "a.b.c"))
        );
        assert!(matches!(
            one("DPoP a.b.c", false),
            Err(AuthError::MissingToken)
        ));
        assert!(matches!(
            one("DPoP ", true),
            Err(AuthError::InvalidRequest(_))
        ));
        assert_eq!(
            one("Bearer a.b.c", true).map(|(s, t)| (s, t.0)),
            Ok((Scheme::Bearer, "a.b.c"))
        );
    }

    #[test]
    fn bearer_oversized_header_is_invalid_request() {
        let big = format!("Bearer {}", "a".repeat(9000));
        assert!(matches!(parse(&[&big]), Err(AuthError::InvalidRequest(_))));
    }

    #[test]
    fn bearer_token_debug_hides_the_token() {
        assert_eq!(
            format!("{:?}", BearerToken("secret.token.value")),
            "BearerToken(..)"
        );
    }
}
