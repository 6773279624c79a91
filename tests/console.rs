//! The admin console in a real headless browser (Debian `chromium`, which `make test`
//! installs): the page renders the shipped route table and issuers from the running gateway,
//! an explain submitted through the page shows the decision, the page loads nothing from
//! elsewhere, and with `[admin] token` set the data stays behind the token.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const SHIPPED_ISS: &str = "https://auth.wetrials.com";
const SHIPPED_AUD: &str = "https://api.wetrials.com";

/// The shipped config on test ports, in front of a local issuer and an echo upstream.
fn shipped(
    listen: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    dir: &Path,
    li: &LocalIssuer,
    echo: &EchoUpstream,
    extra_admin: &str,
) -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml"))
        .unwrap();
    text.replacen(
        "listen = \"127.0.0.1:8080\"",
        &format!(
            "listen = \"{listen}\"\nupgrade_sock = \"{}\"\npid_file = \"{}\"",
            dir.join("upgrade.sock").display(),
            dir.join("gateway.pid").display()
        ),
        1,
    )
    .replacen(
        "listen = \"127.0.0.1:9091\"",
        &format!("listen = \"{admin}\"\n{extra_admin}"),
        1,
    )
    .replacen(
        "jwks_uri = \"https://auth.wetrials.com/.well-known/jwks.json\"",
        &format!("jwks_uri = \"{}\"", li.jwks_uri()),
        1,
    )
    .replace("127.0.0.1:9000", &echo.addr().to_string())
    .replace("127.0.0.1:9001", &echo.addr().to_string())
}

/// The DOM of `url` after its scripts ran (Chromium's virtual time lets fetches finish).
async fn dom(url: String) -> String {
    tokio::task::spawn_blocking(move || {
        let profile = tempfile::tempdir().unwrap();
        let out = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--virtual-time-budget=8000",
                "--timeout=30000",
                &format!("--user-data-dir={}", profile.path().display()),
                "--dump-dom",
                &url,
            ])
            .output()
            .expect("chromium (Debian package `chromium`; `make test` installs it)");
        assert!(
            out.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap()
}

/// The text of the element with `id` (up to its closing tag), tags stripped.
fn text_of(dom: &str, open: &str, close: &str) -> String {
    let start = dom
        .find(open)
        .unwrap_or_else(|| panic!("no {open} in:\n{dom}"));
    let rest = &dom[start..];
    let end = rest.find(close).unwrap_or(rest.len());
    let mut text = String::new();
    let mut in_tag = false;
    for c in rest[..end].chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.replace("&gt;", ">")
        .replace("&lt;", "<")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

#[tokio::test]
async fn the_console_renders_the_shipped_route_table_and_an_explain() {
    let li = LocalIssuer::start(Some(SHIPPED_ISS), SHIPPED_AUD)
        .await
        .unwrap();
    let echo = echo_upstream().await;
    let gw = TestGateway::start_text(|l, a, d| shipped(l, a, d, &li, &echo, "")).await;
    // Some traffic, so the rates have something to show.
    assert_eq!(gw.get("/v1/nowhere").send().await.unwrap().status(), 404);

    let url = format!(
        "http://{}/#explain?method=DELETE&path=/v1/studies/7/../../admin/users/5",
        gw.admin_addr()
    );
    let dom = dom(url).await;
    let routes = text_of(&dom, "<table id=\"routes\"", "</table>");
    for name in [
        "oauth-authorize",
        "oauth-token",
        "studies-read",
        "studies-write",
        "participants-read",
        "admin-users",
        "admin-write",
    ] {
        assert!(routes.contains(name), "route {name} missing:\n{routes}");
    }
    assert!(
        routes.contains("/v1/studies/{id}/participants/*"),
        "{routes}"
    );
    assert!(routes.contains("write:studies"), "{routes}");
    assert!(routes.contains("60;w=60, 300;w=60"), "{routes}");
    let issuers = text_of(&dom, "<table id=\"issuers\"", "</table>");
    assert!(
        issuers.contains("wetrials") && issuers.contains("rsa-1"),
        "{issuers}"
    );
    assert!(
        issuers.contains("RS256") && issuers.contains("ok"),
        "{issuers}"
    );
    // The explain from the link ran through the page's form code and shows the decision.
    let result = text_of(&dom, "<pre id=\"explain-result\"", "</pre>");
    assert!(result.contains("401 missing"), "{result}");
    assert!(
        result.contains("/v1/studies/7/../../admin/users/5 -> /v1/admin/users/5"),
        "{result}"
    );
    assert!(result.contains("route     admin-users"), "{result}");
    assert!(result.contains("verdict   401 (missing)"), "{result}");
    // Explaining counted nothing.
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(&m, "gateway_rejections_total", &[("route", "admin-users")]),
        0.0
    );
}

#[tokio::test]
async fn the_console_is_self_contained_and_its_data_stays_behind_the_admin_token() {
    let li = LocalIssuer::start(Some(SHIPPED_ISS), SHIPPED_AUD)
        .await
        .unwrap();
    let echo = echo_upstream().await;
    let gw = TestGateway::start_text(|l, a, d| {
        shipped(l, a, d, &li, &echo, "token = \"console-test-token-123\"")
    })
    .await;
    let c = gw.client();
    // The page, script and style carry no data: served without the token, with a strict CSP,
    // and nothing in them points elsewhere.
    let page = send(c.get(gw.admin_url("/"))).await;
    assert_eq!(page.status, 200, "{}", page.describe());
    let csp = page.header("content-security-policy").unwrap_or_default();
    let csp = csp.as_str();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    for asset in ["/", "/console.js", "/console.css"] {
        let r = send(c.get(gw.admin_url(asset))).await;
        assert_eq!(r.status, 200, "{asset}");
        let body = r.text();
        assert!(
            !body.contains("http://") && !body.contains("https://") && !body.contains("//cdn"),
            "{asset} refers to another site"
        );
    }
    // The data and explain need the token.
    let r = send(c.get(gw.admin_url("/console.json"))).await;
    assert_eq!(r.status, 401);
    let r = send(
        c.get(gw.admin_url("/console.json"))
            .header("authorization", "Bearer console-test-token-123"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("studies-read"));
    // In the browser, without the token the page asks for it and shows no route.
    let dom = dom(format!("http://{}/", gw.admin_addr())).await;
    assert!(dom.contains("needs its admin token"), "{dom}");
    let routes = text_of(&dom, "<table id=\"routes\"", "</table>");
    assert!(!routes.contains("studies-read"), "{routes}");
}
