//! Oracles for the fuzz targets: how another implementation (a decoding upstream, Python's
//! `parse_qs`/Werkzeug, `json.loads`) reads the same bytes. Written independently of the
//! gateway's code on purpose.

/// Percent-decode once, as Werkzeug/`urllib.parse.unquote_to_bytes` do: a `%` not followed by
/// two hex digits stays as it is.
pub fn percent_decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// Every value of `name` in a form-urlencoded string, as Python's
/// `parse_qs(s, keep_blank_values=True)` (separator `&` only, since 3.10) and Werkzeug's
/// `url_decode` read it: pairs split at the first `=`, `+` is a space, then percent-decoding
/// and UTF-8 with replacement characters.
pub fn form_values(s: &[u8], name: &str) -> Vec<String> {
    let decode = |part: &[u8]| {
        let plus: Vec<u8> = part
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        String::from_utf8_lossy(&percent_decode(&plus)).into_owned()
    };
    s.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            (decode(k) == name).then(|| decode(v))
        })
        .collect()
}

/// The top-level members of a JSON object in document order, duplicates kept.
pub struct Members(pub Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = m.next_key::<String>()? {
                    out.push((k, m.next_value()?));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Does a route template (`/a/{x}/b/*`) match a path as a decoding upstream splits it
/// (segments already percent-decoded)? Literals are compared decoded too.
pub fn template_matches_decoded(template: &str, segments: &[Vec<u8>]) -> bool {
    let (body, prefix) = match template.strip_suffix("/*") {
        Some(b) => (b, true),
        None => (template, false),
    };
    let tpl: Vec<&str> = body.split('/').filter(|s| !s.is_empty()).collect();
    if segments.len() < tpl.len() || (!prefix && segments.len() != tpl.len()) {
        return false;
    }
    tpl.iter().zip(segments).all(|(t, s)| {
        (t.starts_with('{') && t.ends_with('}') && !s.is_empty())
            || percent_decode(t.as_bytes()) == *s
    })
}

/// Split header-ish fuzz input into lines (`\n`), at most `max`.
pub fn lines(data: &[u8], max: usize) -> Vec<&[u8]> {
    data.split(|&b| b == b'\n').take(max).collect()
}
