//! Whole HTTP answers through reqwest: [`send`] reads a [`Reply`], and the `assert_*` helpers
//! check a gateway error answer (status, `WWW-Authenticate`, the JSON error body).

use std::fmt::Write as _;

use serde_json::Value;

use super::REALM;

/// A whole response, read eagerly.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}); status {}: {}",
                self.status,
                self.text()
            )
        })
    }

    /// For a forwarded request: the echo upstream's description of what it received.
    pub fn echo(&self) -> Value {
        assert_eq!(
            self.status,
            200,
            "expected a forwarded 200, got: {}",
            self.describe()
        );
        self.json()
    }

    pub fn describe(&self) -> String {
        let mut s = format!("{}", self.status);
        for (k, v) in &self.headers {
            let _ = write!(s, "\n{k}: {}", String::from_utf8_lossy(v.as_bytes()));
        }
        let _ = write!(s, "\n\n{}", self.text());
        s
    }
}

/// Send and read the whole response; panics on transport errors.
pub async fn send(rb: reqwest::RequestBuilder) -> Reply {
    let resp = rb
        .send()
        .await
        .unwrap_or_else(|e| panic!("request failed: {e:?}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("reading body failed: {e:?}"))
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

/// A gateway error answer: `status`, JSON content type, `{"error": error, "error_description": <non-empty>}`.
/// Returns the body.
pub fn assert_json_error(r: &Reply, status: u16, error: &str) -> Value {
    assert_eq!(r.status, status, "status; got:\n{}", r.describe());
    let ct = r.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("application/json"),
        "content-type {ct:?}; got:\n{}",
        r.describe()
    );
    let body = r.json();
    assert_eq!(body["error"], error, "error code; got:\n{}", r.describe());
    let desc = body["error_description"].as_str().unwrap_or_default();
    assert!(
        !desc.is_empty(),
        "error_description missing; got:\n{}",
        r.describe()
    );
    body
}

/// 401 without a token: `WWW-Authenticate: Bearer realm="…"` and no error attribute.
pub fn assert_missing_token(r: &Reply) {
    assert_eq!(r.status, 401, "got:\n{}", r.describe());
    let w = r.header("www-authenticate").unwrap_or_default();
    assert!(w.starts_with("Bearer "), "WWW-Authenticate {w:?}");
    assert!(
        w.contains(&format!("realm=\"{REALM}\"")),
        "WWW-Authenticate {w:?}"
    );
    assert!(
        !w.contains("error="),
        "no error attribute without a token (RFC 6750 §3.1): {w:?}"
    );
    let body = r.json();
    assert!(
        body["error"].is_string() && body["error_description"].is_string(),
        "{body}"
    );
}

/// 400: `WWW-Authenticate: Bearer ... error="invalid_request"` and the JSON body.
pub fn assert_invalid_request(r: &Reply) {
    assert_json_error(r, 400, "invalid_request");
    let w = r.header("www-authenticate").unwrap_or_default();
    assert!(
        w.starts_with("Bearer "),
        "WWW-Authenticate {w:?}; got:\n{}",
        r.describe()
    );
    assert!(
        w.contains("error=\"invalid_request\""),
        "WWW-Authenticate {w:?}"
    );
}

/// 401 `invalid_token` with an `error_description` attribute; returns the description.
pub fn assert_invalid_token(r: &Reply) -> String {
    let body = assert_json_error(r, 401, "invalid_token");
    let w = r.header("www-authenticate").unwrap_or_default();
    assert!(
        w.starts_with("Bearer "),
        "WWW-Authenticate {w:?}; got:\n{}",
        r.describe()
    );
    assert!(
        w.contains("error=\"invalid_token\""),
        "WWW-Authenticate {w:?}"
    );
    assert!(w.contains("error_description=\""), "WWW-Authenticate {w:?}");
    body["error_description"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// 403 `insufficient_scope` naming `scope` in the challenge.
pub fn assert_insufficient_scope(r: &Reply, scope: &str) {
    assert_json_error(r, 403, "insufficient_scope");
    let w = r.header("www-authenticate").unwrap_or_default();
    assert!(
        w.starts_with("Bearer "),
        "WWW-Authenticate {w:?}; got:\n{}",
        r.describe()
    );
    assert!(
        w.contains("error=\"insufficient_scope\""),
        "WWW-Authenticate {w:?}"
    );
    assert!(
        w.contains(&format!("scope=\"{scope}\"")),
        "WWW-Authenticate {w:?} should name scope {scope:?}"
    );
}
