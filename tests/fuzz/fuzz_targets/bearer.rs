//! `Authorization` parsing. Input: header values, one per line.
//! Properties: a token returned is a non-empty substring of the one header value, after a
//! `Bearer` scheme; once `check_chars` accepts it, it holds only RFC 6750 b64token
//! characters (no space or tab); a well-formed `Bearer <b64token>` round-trips.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wetrials_gateway::fuzzing::AuthError;
use wetrials_gateway::fuzzing::{check_chars, from_authorization};
use wetrials_gateway_fuzz::lines;

const MAX: usize = 8192;

fn b64token(t: &str) -> bool {
    let body = t.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-._~+/".contains(&c))
}

fuzz_target!(|data: &[u8]| {
    let values = if data.is_empty() {
        Vec::new()
    } else {
        lines(data, 4)
    };
    let got = from_authorization(values.iter().copied(), MAX);
    match &got {
        Ok(token) => {
            assert_eq!(
                values.len(),
                1,
                "a token from several Authorization headers"
            );
            let value = values[0];
            let t = token.0.as_bytes();
            let start = t.as_ptr() as usize - value.as_ptr() as usize;
            assert!(
                start + t.len() <= value.len(),
                "token is not inside the header value"
            );
            assert!(!t.is_empty());
            assert!(!t.starts_with(b" ") && !t.ends_with(b" ") && !t.ends_with(b"\t"));
            let scheme = std::str::from_utf8(&value[..start]).unwrap();
            assert!(
                scheme
                    .trim_matches([' ', '\t'])
                    .eq_ignore_ascii_case("bearer"),
                "token after a scheme that is not Bearer: {scheme:?}"
            );
            match check_chars(token.0) {
                Ok(()) => {
                    assert!(b64token(token.0), "check_chars accepted {:?}", token.0);
                    assert!(!t
                        .iter()
                        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control()));
                }
                Err(e) => {
                    assert!(matches!(e, AuthError::InvalidRequest(_)));
                    assert!(!b64token(token.0), "check_chars refused {:?}", token.0);
                }
            }
        }
        Err(AuthError::MissingToken) => {
            // No header, or one whose scheme is not Bearer.
            if let [v] = values.as_slice() {
                let v = String::from_utf8_lossy(v);
                let v = v.trim_matches([' ', '\t']);
                let scheme = v.split(' ').next().unwrap_or("");
                assert!(
                    !scheme.eq_ignore_ascii_case("bearer"),
                    "Bearer read as no token: {v:?}"
                );
            } else {
                assert!(values.is_empty(), "two headers must be invalid_request");
            }
        }
        Err(AuthError::InvalidRequest(msg)) => {
            // A fixed text (`&'static str`): the header value cannot appear in it.
            assert!(!msg.is_empty());
        }
        Err(other) => panic!("unexpected error kind {other:?}"),
    }
    // Round trip: `Bearer <b64token>` gives the token back, whatever the scheme's case.
    if let Ok(s) = std::str::from_utf8(data) {
        if b64token(s) && s.len() + 7 <= MAX {
            for scheme in ["Bearer ", "bearer  ", "BEARER "] {
                let header = format!("{scheme}{s}");
                let t = from_authorization(std::iter::once(header.as_bytes()), MAX)
                    .expect("a well-formed bearer header");
                assert_eq!(t.0, s);
                check_chars(t.0).expect("b64token characters");
            }
        }
    }
});
