//! Writing the gateway's own answers with pingora: a [`Reject`] of the decision core, a status
//! pingora decided on its own, and the raw bytes the connection layer writes before any
//! request is parsed. What the answers say is decided in `decide::reject`.

use bytes::Bytes;
use pingora::http::ResponseHeader;

use crate::decide::{json_error, Reject};

/// The whole response header of a rejection (body length included).
pub(crate) fn response_header(
    reject: &Reject,
    request_id: &http::HeaderValue,
    body_len: usize,
) -> pingora::Result<ResponseHeader> {
    let mut h = error_header(reject.status(), request_id, body_len)?;
    for (name, value) in reject.headers() {
        h.insert_header(name, value.as_ref())?;
    }
    Ok(h)
}

/// A whole HTTP/1.1 error answer as bytes, for the connection layer (`conn.rs`), which writes
/// before any request is parsed: JSON body, no caching, `Connection: close`.
pub(crate) fn raw_error_response(
    status: u16,
    error: &str,
    description: &str,
    extra: &[(&str, &str)],
) -> Bytes {
    let body = json_error(error, description);
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&body);
    Bytes::from(bytes)
}

/// Room for every header of a rejection: the four below, `WWW-Authenticate`, `Retry-After`
/// or `Upgrade` + `Connection`, the four `RateLimit-*`, and what pingora adds on the way out.
const ANSWER_HEADERS: usize = 14;

/// Status, JSON content type, no caching, length, request id.
///
/// Built without pingora's spelling map: every name here is the gateway's own, and for such a
/// name the map would hold exactly what pingora writes without it (a `HeaderName` in its
/// titled form, a `&'static str` as given), so the wire is the same and nothing is parsed
/// twice or grown.
pub(crate) fn error_header(
    status: u16,
    request_id: &http::HeaderValue,
    body_len: usize,
) -> pingora::Result<ResponseHeader> {
    let h = ResponseHeader::build_no_case(status, Some(ANSWER_HEADERS))?;
    fill_error_header(h, request_id, body_len)
}

fn fill_error_header(
    mut h: ResponseHeader,
    request_id: &http::HeaderValue,
    body_len: usize,
) -> pingora::Result<ResponseHeader> {
    h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    h.insert_header(http::header::CONTENT_LENGTH, body_len.to_string())?;
    h.insert_header("x-request-id", request_id.clone())?;
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::proxy::headers::tests::wire_resp as wire;

    #[test]
    fn answers_without_the_spelling_map_are_the_same_on_the_wire() {
        let rid = http::HeaderValue::from_static("rid");
        for reject in [
            Reject::TlsRequired { status: 426 },
            Reject::RateLimited {
                retry_after_secs: 7,
            },
            Reject::LimiterUnavailable,
            Reject::NoRoute,
        ] {
            let fast = response_header(&reject, &rid, 10).unwrap();
            let mut spelled = fill_error_header(
                ResponseHeader::build(reject.status(), Some(6)).unwrap(),
                &rid,
                10,
            )
            .unwrap();
            for (name, value) in reject.headers() {
                spelled.insert_header(name, value.as_ref()).unwrap();
            }
            assert!(!fast.has_case() && spelled.has_case());
            assert_eq!(wire(&fast), wire(&spelled), "{reject:?}");
            assert!(wire(&fast).starts_with("Content-Type: application/json\r\n"));
        }
    }

    #[test]
    fn a_426_carries_upgrade_and_a_429_retry_after() {
        let h = response_header(
            &Reject::TlsRequired { status: 426 },
            &http::HeaderValue::from_static("rid"),
            10,
        )
        .unwrap();
        assert_eq!(h.status.as_u16(), 426);
        assert_eq!(h.headers.get("upgrade").unwrap(), "TLS/1.3, TLS/1.2");
        assert_eq!(h.headers.get("x-request-id").unwrap(), "rid");
        let h = response_header(
            &Reject::RateLimited {
                retry_after_secs: 7,
            },
            &http::HeaderValue::from_static("rid"),
            10,
        )
        .unwrap();
        assert_eq!(h.status.as_u16(), 429);
        assert_eq!(h.headers.get("retry-after").unwrap(), "7");
        assert_eq!(h.headers.get("content-length").unwrap(), "10");
    }
}
