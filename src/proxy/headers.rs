//! Header edits on the forwarded request and the upstream's answer, two ways.
//!
//! pingora's header types keep the names twice (the `http` map of values, and an ordered map
//! of the names as spelled on the wire, so that HTTP/1 case survives a proxy), allow edits
//! only through `insert_header`/`remove_header`, and size both maps to the header count they
//! parsed. Each insert parses the name again into a new `HeaderName` (copying a non-standard
//! one), writes both maps, and grows both: on a JWT request with a limit the eleven headers
//! the gateway adds cost more instructions than the whole decision (docs/performance.md).
//!
//! - `server.preserve_header_case = true` (the default): the edits go through pingora's
//!   methods ([`HeaderEdit`] on `RequestHeader`/`ResponseHeader`), names passed as
//!   `&'static str`, which pingora neither parses into a copy nor allocates; every name the
//!   client or the upstream sent goes on as they spelled it.
//! - `false`: the header is taken apart into `http`'s own parts (pingora's `From` impls, no
//!   copy), the one map reserved once and edited with prebuilt names ([`HeaderEdit`] on
//!   `http::HeaderMap`), and put back without the spelling map. Names then go on the wire as
//!   pingora writes a map alone: title case for a dozen common ones (`Content-Type`, `Host`),
//!   lower case for the rest, as Envoy and HAProxy send them by default. HTTP names are
//!   case-insensitive (RFC 9110 §5.1) and HTTP/2 peers see lower case anyway; the request
//!   target, the status, a custom reason phrase and every value are kept as they were.

use http::header::AsHeaderName;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

/// The header edits the proxy makes, on whichever form the header is in.
pub(super) trait HeaderEdit {
    fn map(&self) -> &HeaderMap;
    /// Replace every value of `name` with `value`.
    fn set(&mut self, name: &'static HeaderName, value: HeaderValue) -> Result<()>;
    fn remove<'a, N: ?Sized>(&mut self, name: &'a N)
    where
        &'a N: AsHeaderName;
}

impl HeaderEdit for HeaderMap {
    fn map(&self) -> &HeaderMap {
        self
    }

    fn set(&mut self, name: &'static HeaderName, value: HeaderValue) -> Result<()> {
        // Cloning a static name copies no bytes.
        self.insert(name.clone(), value);
        Ok(())
    }

    fn remove<'a, N: ?Sized>(&mut self, name: &'a N)
    where
        &'a N: AsHeaderName,
    {
        HeaderMap::remove(self, name);
    }
}

/// How pingora's spelling map gets a name the gateway sets: the spelling pingora itself gives
/// that `HeaderName` (title case for the standard names it knows, of which `Host` is the one
/// the gateway sets; the name's own text otherwise), as a `&'static str`, the one form pingora
/// takes without copying it into a new buffer.
fn spelled(name: &'static HeaderName) -> &'static str {
    if name == http::header::HOST {
        "Host"
    } else {
        name.as_str()
    }
}

/// pingora's own types: `insert_header`/`remove_header`, names spelled as pingora spells them.
macro_rules! pingora_header_edit {
    ($($t:ty),*) => {$(
        impl HeaderEdit for $t {
            fn map(&self) -> &HeaderMap {
                &self.headers
            }

            fn set(&mut self, name: &'static HeaderName, value: HeaderValue) -> Result<()> {
                self.insert_header(spelled(name), value)
            }

            fn remove<'a, N: ?Sized>(&mut self, name: &'a N)
            where
                &'a N: AsHeaderName,
            {
                self.remove_header(name);
            }
        }
    )*};
}

pingora_header_edit!(RequestHeader, ResponseHeader);

/// Edit the forwarded request's headers as `http`'s map, with room for `added` more (one
/// growth at most). The names' spelling is not kept; the request target is, byte for byte
/// (set again when the URI alone would not give it back).
pub(super) fn edit_request(
    up: &mut RequestHeader,
    added: usize,
    edit: impl FnOnce(&mut HeaderMap) -> Result<()>,
) -> Result<()> {
    let raw = up.raw_path();
    let verbatim = (!raw.is_empty()
        && Some(raw) != up.uri.path_and_query().map(|p| p.as_str().as_bytes()))
    .then(|| raw.to_vec());
    let end_stream = up.send_end_stream();
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = http::request::Parts::from(std::mem::replace(up, placeholder));
    parts.headers.reserve(added);
    let edited = edit(&mut parts.headers);
    *up = RequestHeader::from(parts);
    if let Some(raw) = verbatim {
        up.set_raw_path(&raw)?;
    }
    if let Some(end) = end_stream {
        up.set_send_end_stream(end);
    }
    edited
}

/// Edit the upstream's answer as `http`'s map, with room for `added` more. The names'
/// spelling is not kept; a reason phrase other than the status's own is.
pub(super) fn edit_response(
    resp: &mut ResponseHeader,
    added: usize,
    edit: impl FnOnce(&mut HeaderMap) -> Result<()>,
) -> Result<()> {
    let canonical = resp.status.canonical_reason();
    let reason = resp
        .get_reason_phrase()
        .filter(|r| Some(*r) != canonical)
        .map(str::to_owned);
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts = http::response::Parts::from(std::mem::replace(resp, placeholder));
    parts.headers.reserve(added);
    let edited = edit(&mut parts.headers);
    *resp = ResponseHeader::from(parts);
    if reason.is_some() {
        resp.set_reason_phrase(reason.as_deref())?;
    }
    edited
}

/// A value for a header the gateway sets; one that is not a header value fails the request
/// rather than going on without it.
pub(super) fn value<V: TryInto<HeaderValue>>(v: V) -> Result<HeaderValue> {
    v.try_into()
        .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "invalid header value"))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn wire_req(h: &RequestHeader) -> String {
        let mut buf = Vec::new();
        h.header_to_h1_wire(&mut buf);
        String::from_utf8(buf).unwrap()
    }

    /// An answer's header lines as pingora writes them on HTTP/1.
    pub(in crate::proxy) fn wire_resp(h: &ResponseHeader) -> String {
        let mut buf = Vec::new();
        h.header_to_h1_wire(&mut buf);
        String::from_utf8(buf).unwrap()
    }

    static X_ADDED: HeaderName = HeaderName::from_static("x-added");

    #[test]
    fn both_forms_make_the_same_edits() {
        let mut up = RequestHeader::build("GET", b"/v1/a%2Fb?q=1&q=2", Some(3)).unwrap();
        up.append_header("X-Custom", "one").unwrap();
        up.append_header("x-custom", "two").unwrap();
        up.append_header("Authorization", "Bearer t").unwrap();
        let mut plain = up.clone();

        up.set(&X_ADDED, HeaderValue::from_static("v")).unwrap();
        HeaderEdit::remove(&mut up, &http::header::AUTHORIZATION);
        edit_request(&mut plain, 2, |m| {
            m.set(&X_ADDED, HeaderValue::from_static("v"))?;
            HeaderEdit::remove(m, &http::header::AUTHORIZATION);
            Ok(())
        })
        .unwrap();

        assert_eq!(up.headers, plain.headers);
        assert_eq!(up.raw_path(), plain.raw_path());
        assert_eq!(plain.raw_path(), b"/v1/a%2Fb?q=1&q=2");
        // Kept spelling, then `http`'s.
        assert_eq!(
            wire_req(&up),
            "X-Custom: one\r\nx-custom: two\r\nx-added: v\r\n"
        );
        assert_eq!(
            wire_req(&plain),
            "x-custom: one\r\nx-custom: two\r\nx-added: v\r\n"
        );
    }

    #[test]
    fn a_failed_edit_still_puts_the_request_back() {
        let mut up = RequestHeader::build("POST", b"/x", None).unwrap();
        up.append_header("Host", "a").unwrap();
        let r = edit_request(&mut up, 1, |_| {
            Err(Error::explain(ErrorType::InvalidHTTPHeader, "no"))
        });
        assert!(r.is_err());
        assert_eq!(up.method, http::Method::POST);
        assert_eq!(up.raw_path(), b"/x");
        assert_eq!(up.headers.get("host").unwrap(), "a");
    }

    #[test]
    fn the_answer_keeps_its_status_reason_and_values() {
        let mut resp = ResponseHeader::build(201, Some(2)).unwrap();
        resp.set_reason_phrase(Some("Made It")).unwrap();
        resp.append_header("X-Upstream", "u").unwrap();
        resp.append_header("Content-Type", "text/plain").unwrap();
        edit_response(&mut resp, 1, |m| {
            m.set(&X_ADDED, HeaderValue::from_static("v"))
        })
        .unwrap();
        assert_eq!(resp.status.as_u16(), 201);
        assert_eq!(resp.get_reason_phrase(), Some("Made It"));
        assert_eq!(
            wire_resp(&resp),
            "x-upstream: u\r\nContent-Type: text/plain\r\nx-added: v\r\n"
        );

        let mut ok = ResponseHeader::build(200, None).unwrap();
        edit_response(&mut ok, 1, |_| Ok(())).unwrap();
        assert_eq!(ok.get_reason_phrase(), Some("OK"));
    }

    #[test]
    fn an_invalid_value_is_an_error_not_a_header() {
        assert!(value("ok").is_ok());
        assert!(value("bad\r\nx: y").is_err());
    }
}
