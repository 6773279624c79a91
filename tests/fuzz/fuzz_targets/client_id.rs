//! `client_id` extraction on public (OAuth) routes. Input: a first line naming the source
//! (`form`, `json`, `query`, `basic`), then the body, query string or header value.
//! Properties: a `client_id` the gateway finds is the one an authorization server reads:
//! - form body / query: the one value every `client_id` pair decodes to, as Python's
//!   `parse_qs` / Werkzeug read it (there is exactly one); none found means they find no
//!   non-empty one; two pairs are an error (never a silent pick);
//! - JSON body: exactly one top-level `client_id` member, the string serde_json's `Value`
//!   (last key wins, as Python's json.loads) reads too;
//! - Basic: `Basic base64(form-encoded id ":" secret)` gives the id back (RFC 6749 §2.3.1),
//!   and a value the gateway reads as a Basic client is in the Basic scheme.
#![no_main]
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use wetrials_gateway::fuzzing::{basic_client_id, body_client, is_basic, query_client_id};
use wetrials_gateway_fuzz::{form_values, Members};

fn check_form_like(found: Result<Option<String>, &'static str>, raw: &[u8]) {
    let values = form_values(raw, "client_id");
    match found {
        Ok(Some(id)) => {
            assert_eq!(values, vec![id.clone()], "gateway read {id:?}");
            assert!(!id.is_empty());
        }
        Ok(None) => assert!(
            values.len() <= 1 && values.iter().all(|v| v.is_empty()),
            "gateway found no client_id, Python finds {values:?}"
        ),
        Err(_) => assert!(values.len() > 1 || form_values(raw, "client_secret").len() > 1),
    }
}

/// application/x-www-form-urlencoded serialisation of one value.
fn form_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let (kind, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    match kind {
        b"form" => {
            for ct in [
                "application/x-www-form-urlencoded",
                "Application/X-WWW-Form-Urlencoded; charset=utf-8",
            ] {
                let got = body_client(ct, rest);
                check_form_like(
                    got.as_ref().map(|c| c.client_id.clone()).map_err(|e| *e),
                    rest,
                );
                if let Ok(c) = got {
                    assert_eq!(c.has_secret, form_values(rest, "client_secret").len() == 1);
                }
            }
        }
        b"query" => {
            let Ok(q) = std::str::from_utf8(rest) else {
                return;
            };
            check_form_like(query_client_id(Some(q)), rest);
        }
        b"json" => {
            let got = body_client("application/json", rest);
            let members = serde_json::from_slice::<Members>(rest);
            let ids: Vec<&Value> = members
                .as_ref()
                .map(|m| {
                    m.0.iter()
                        .filter(|(k, _)| k == "client_id")
                        .map(|(_, v)| v)
                        .collect()
                })
                .unwrap_or_default();
            match got {
                Ok(c) => {
                    if let Some(id) = &c.client_id {
                        assert_eq!(
                            ids.len(),
                            1,
                            "client_id {id:?} from a body with {} of them",
                            ids.len()
                        );
                        assert_eq!(ids[0].as_str(), Some(id.as_str()));
                        let v: Value =
                            serde_json::from_slice(rest).expect("serde_json reads the body");
                        assert_eq!(
                            v.get("client_id").and_then(Value::as_str),
                            Some(id.as_str())
                        );
                    } else if rest.iter().any(|b| !b.is_ascii_whitespace()) {
                        assert!(
                            ids.iter().all(|v| v.as_str().is_none_or(str::is_empty)),
                            "gateway found no client_id, JSON has {ids:?}"
                        );
                    }
                }
                Err(_) => {
                    // Refused: not an object, malformed, or a client parameter twice.
                    if let Ok(m) = &members {
                        let secrets = m.0.iter().filter(|(k, _)| k == "client_secret").count();
                        assert!(ids.len() > 1 || secrets > 1, "refused a readable body");
                    }
                }
            }
        }
        b"basic" => {
            if let Some(id) = basic_client_id(rest) {
                assert!(!id.is_empty());
                let trimmed = rest.trim_ascii_start();
                assert!(
                    is_basic(trimmed),
                    "{:?} read as Basic",
                    String::from_utf8_lossy(rest)
                );
            }
            // Round trip: the client encodes its id as RFC 6749 §2.3.1 says.
            if let Ok(id) = std::str::from_utf8(rest) {
                if !id.is_empty() {
                    let creds = format!("{}:{}", form_encode(id), form_encode("s:e c"));
                    let header = format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(creds)
                    );
                    assert!(is_basic(header.as_bytes()));
                    assert_eq!(basic_client_id(header.as_bytes()).as_deref(), Some(id));
                    // The same client named in a form body reads the same.
                    let body = format!(
                        "grant_type=client_credentials&client_id={}",
                        form_encode(id)
                    );
                    let c =
                        body_client("application/x-www-form-urlencoded", body.as_bytes()).unwrap();
                    assert_eq!(c.client_id.as_deref(), Some(id));
                }
            }
        }
        _ => {}
    }
});
