//! Path normalisation, before matching: percent-decoding of unreserved characters,
//! upper-case hex for what stays encoded, removal of dot segments, empty segments and a
//! trailing slash. The normalised path is also what the upstream receives.
//!
//! Agreement with the upstream needs one more rule: many servers (Flask/Werkzeug, WSGI and
//! CGI servers, some Node routers) decode `%2F` into `/` before routing, and some read `\` as
//! `/`. A segment `7%2Fparticipants` is one segment here and two there, so a route like
//! `/v1/studies/{id}` would cover `/v1/studies/7/participants`. [`has_encoded_separator`]
//! finds such paths; the route table refuses them unless a route opts in.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("request path must start with '/'")]
    NotAbsolute,
    #[error("malformed percent-encoding in path")]
    BadPercent,
    #[error("path contains a control or NUL character")]
    ControlChar,
    #[error("path segment could be read as a dot segment by the upstream")]
    Ambiguous,
}

impl PathError {
    /// The same text as `Display`, without allocating.
    pub fn describe(&self) -> &'static str {
        match self {
            PathError::NotAbsolute => "request path must start with '/'",
            PathError::BadPercent => "malformed percent-encoding in path",
            PathError::ControlChar => "path contains a control or NUL character",
            PathError::Ambiguous => "path segment could be read as a dot segment by the upstream",
        }
    }
}

/// A segment that some servers would still read as `.` or `..`: with a path parameter
/// (`..;x`, Tomcat), or holding an encoded or back slash next to dots (`..%2F`, `..\`).
fn is_ambiguous(segment: &str) -> bool {
    let unified = segment
        .replace("%2F", "/")
        .replace("%5C", "/")
        .replace('\\', "/");
    unified
        .split('/')
        .map(|part| part.split(';').next().unwrap_or(""))
        .any(|part| part == "." || part == "..")
        && segment != "."
        && segment != ".."
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalise the path part of a request target (no query).
///
/// - `%XX` of an unreserved character is decoded (`/v1/%73tudies` -> `/v1/studies`);
///   other escapes stay encoded with upper-case hex (`%2f` -> `%2F`: an encoded slash is
///   data inside a segment, never a separator); `%00` and control characters are refused;
/// - `.` and `..` segments are resolved (RFC 3986 §5.2.4), never above the root;
/// - empty segments (`//`) and a trailing `/` are dropped (`/v1/user/profile/` is
///   `/v1/user/profile`).
///
/// The result is `Cow::Borrowed` when nothing changed: the common case allocates nothing.
pub fn normalize_path(raw: &str) -> Result<std::borrow::Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_canonical(bytes) {
        return Ok(std::borrow::Cow::Borrowed(raw));
    }
    // Decode segment by segment.
    let mut segments: Vec<String> = Vec::new();
    for seg in raw[1..].split('/') {
        let mut out = String::with_capacity(seg.len());
        let sb = seg.as_bytes();
        let mut i = 0;
        while i < sb.len() {
            let b = sb[i];
            if b == b'%' {
                let (h, l) = match (
                    sb.get(i + 1).and_then(|&x| hex(x)),
                    sb.get(i + 2).and_then(|&x| hex(x)),
                ) {
                    (Some(h), Some(l)) => (h, l),
                    _ => return Err(PathError::BadPercent),
                };
                let v = h * 16 + l;
                if v < 0x20 || v == 0x7f {
                    return Err(PathError::ControlChar);
                }
                if is_unreserved(v) {
                    out.push(v as char);
                } else {
                    out.push('%');
                    out.push(char::from(b"0123456789ABCDEF"[(v >> 4) as usize]));
                    out.push(char::from(b"0123456789ABCDEF"[(v & 15) as usize]));
                }
                i += 3;
            } else if b < 0x20 || b == 0x7f {
                return Err(PathError::ControlChar);
            } else {
                // Non-ASCII bytes cannot appear in a &str request path from pingora unless they
                // were sent raw; keep them (the upstream sees the same bytes).
                let ch_len = utf8_len(b);
                out.push_str(&seg[i..i + ch_len]);
                i += ch_len;
            }
        }
        if is_ambiguous(&out) {
            return Err(PathError::Ambiguous);
        }
        match out.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(out),
        }
    }
    let mut path = String::with_capacity(raw.len());
    if segments.is_empty() {
        path.push('/');
    }
    for s in segments {
        path.push('/');
        path.push_str(&s);
    }
    Ok(std::borrow::Cow::Owned(path))
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}

/// Does a normalised path hold an encoded slash or backslash (`%2F`, `%5C`) or a raw `\`?
/// Escapes are upper-case after [`normalize_path`], and a canonical path (the borrowed
/// result) holds neither `%` nor `\`, so this runs only on paths that were rewritten.
pub fn has_encoded_separator(normalised: &str) -> bool {
    normalised.contains('\\') || normalised.contains("%2F") || normalised.contains("%5C")
}

/// Fast check: only unreserved characters and safe sub-delims, no `%`, no empty or dot
/// segments, no trailing slash.
fn is_canonical(b: &[u8]) -> bool {
    if b == b"/" {
        return true;
    }
    if b.last() == Some(&b'/') {
        return false;
    }
    let mut seg_start = true;
    let mut seg_len = 0usize;
    let mut dots = 0usize;
    for &c in &b[1..] {
        if c == b'/' {
            if seg_len == 0 || (dots == seg_len && seg_len <= 2) {
                return false;
            }
            seg_start = true;
            seg_len = 0;
            dots = 0;
            continue;
        }
        let _ = seg_start;
        seg_start = false;
        if !(c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b'='
                    | b':'
                    | b'@'
            ))
        {
            return false;
        }
        seg_len += 1;
        if c == b'.' {
            dots += 1;
        }
    }
    !(seg_len == 0 || (dots == seg_len && seg_len <= 2))
}

/// `scheme://host[:port]` normalised: lower case, no default port, no userinfo accepted.
pub(crate) fn normalize_origin(scheme: &str, authority: &str) -> Option<String> {
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return None,
    };
    let authority = authority.to_ascii_lowercase();
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')? + 1;
        let port = match &authority[end..] {
            "" => None,
            rest => Some(rest.strip_prefix(':')?),
        };
        (&authority[..end], port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority.as_str(), None),
        }
    };
    if host.is_empty() || host.contains('@') || (!host.starts_with('[') && host.contains(':')) {
        return None;
    }
    match port {
        None | Some("") => Some(format!("{scheme}://{host}")),
        Some(p) if p == default_port => Some(format!("{scheme}://{host}")),
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => Some(format!("{scheme}://{host}:{p}")),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalize_path(p).unwrap().into_owned()
    }

    #[test]
    fn normalize_canonical_path_is_borrowed() {
        assert!(matches!(
            normalize_path("/v1/studies/42").unwrap(),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(n("/"), "/");
    }

    #[test]
    fn normalize_percent_encoded_unreserved_is_decoded() {
        assert_eq!(n("/v1/%73tudies/1"), "/v1/studies/1");
        assert_eq!(n("/v1/%53tudies/1"), "/v1/Studies/1");
        assert_eq!(n("/v1/studies/%2e%2e/admin"), "/v1/admin");
    }

    #[test]
    fn normalize_dot_segments_are_resolved() {
        assert_eq!(n("/v1/x/../studies/1"), "/v1/studies/1");
        assert_eq!(n("/v1/./studies/./1"), "/v1/studies/1");
        assert_eq!(n("/../../v1/studies"), "/v1/studies");
        assert_eq!(n("/v1/studies/1/.."), "/v1/studies");
        assert_eq!(n("/a/b/..."), "/a/b/...");
    }

    #[test]
    fn normalize_empty_segments_and_trailing_slash_are_dropped() {
        assert_eq!(n("/v1//user///profile/"), "/v1/user/profile");
        assert_eq!(n("//"), "/");
    }

    #[test]
    fn normalize_encoded_slash_stays_data() {
        assert_eq!(n("/v1/studies/a%2fb"), "/v1/studies/a%2Fb");
        assert_eq!(n("/v1/studies%2F1"), "/v1/studies%2F1");
    }

    #[test]
    fn normalize_segments_other_servers_read_as_dots_are_refused() {
        for bad in [
            "/v1/public/..;/admin/x",
            "/v1/public/.;x/admin",
            "/v1/public/..%2Fadmin",
            "/v1/public/..%2fadmin",
            "/v1/public/..%5Cadmin",
            "/v1/public/..\\admin",
            "/v1/%2e%2e;/admin",
        ] {
            assert_eq!(normalize_path(bad), Err(PathError::Ambiguous), "{bad}");
        }
        assert_eq!(n("/v1/a;b=c/x"), "/v1/a;b=c/x");
        assert_eq!(n("/v1/..x/y"), "/v1/..x/y");
    }

    #[test]
    fn encoded_separators_are_found_in_any_spelling() {
        for p in [
            "/v1/studies/7%2Fparticipants",
            "/v1/studies/7%2fparticipants",
            "/v1/admin/users%5C42",
            "/v1/admin/users%5c42",
            "/v1/admin/users\\42",
        ] {
            let n = normalize_path(p).unwrap();
            assert!(has_encoded_separator(&n), "{p} -> {n}");
        }
        for p in [
            "/v1/studies/7",
            "/v1/%73tudies/7",
            "/v1/a%20b",
            "/v1/a%252Fb",
        ] {
            let n = normalize_path(p).unwrap();
            assert!(!has_encoded_separator(&n), "{p} -> {n}");
        }
    }

    #[test]
    fn normalize_bad_input_is_refused() {
        assert_eq!(normalize_path("v1/x"), Err(PathError::NotAbsolute));
        assert_eq!(normalize_path("/v1/%zz"), Err(PathError::BadPercent));
        assert_eq!(normalize_path("/v1/%4"), Err(PathError::BadPercent));
        assert_eq!(normalize_path("/v1/%00x"), Err(PathError::ControlChar));
        assert_eq!(normalize_path("/v1/a\u{1}"), Err(PathError::ControlChar));
    }
}
