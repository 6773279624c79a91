//! Certificate-bound tokens (RFC 8705 §3) end to end: the TLS listener verifies client
//! certificates against `client_ca_path`; a token whose `cnf` holds `x5t#S256` passes only
//! with the certificate it names, in our own handshake or — from a trusted proxy only — in
//! `client_cert_header`. A DPoP-bound token (`cnf.jkt`) sent as a bearer token is refused
//! (RFC 9449 §7.1). Certificates are made with the `openssl` CLI; the last test takes its
//! bound tokens (JWT and opaque) from a real authorization server, node oidc-provider.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::json;
use sha2::{Digest, Sha256};

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`name`.ca.pem / .key) in `dir`.
fn ca(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.ca.pem")),
        dir.join(format!("{name}.ca.key")),
    );
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        &format!("/CN={name} CA"),
        "-days",
        "1",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    (cert, key)
}

/// A leaf certificate signed by `ca`: (cert.pem, key.pem); `server` adds the loopback names.
fn leaf(dir: &Path, name: &str, ca: &(PathBuf, PathBuf), server: bool) -> (PathBuf, PathBuf) {
    let (cert, key, csr, ext) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.csr")),
        dir.join(format!("{name}.ext")),
    );
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        &format!("/CN={name}"),
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
    ]);
    let exts = if server {
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    } else {
        "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n"
    };
    std::fs::write(&ext, exts).unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        csr.to_str().unwrap(),
        "-CA",
        ca.0.to_str().unwrap(),
        "-CAkey",
        ca.1.to_str().unwrap(),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        ext.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    (cert, key)
}

/// base64url SHA-256 of the certificate's DER: its `x5t#S256`.
fn thumbprint(cert: &Path) -> String {
    let pem = std::fs::read_to_string(cert).unwrap();
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("");
    let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap();
    b64url(&Sha256::digest(&der))
}

fn client(trust: &Path, identity: Option<&(PathBuf, PathBuf)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(trust).unwrap()).unwrap()]);
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(cert).unwrap();
        pem.extend(std::fs::read(key).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

struct Pki {
    _dir: tempfile::TempDir,
    ca: (PathBuf, PathBuf),
    server: (PathBuf, PathBuf),
    alice: (PathBuf, PathBuf),
    bob: (PathBuf, PathBuf),
    stranger: (PathBuf, PathBuf),
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let other = ca(dir.path(), "other");
    let ca = ca(dir.path(), "clients");
    let server = leaf(dir.path(), "server", &ca, true);
    let alice = leaf(dir.path(), "alice", &ca, false);
    let bob = leaf(dir.path(), "bob", &ca, false);
    let stranger = leaf(dir.path(), "stranger", &other, false);
    Pki {
        _dir: dir,
        ca,
        server,
        alice,
        bob,
        stranger,
    }
}

fn routes(cfg: Config) -> Config {
    cfg.route(
        RouteSpec::new("studies", "/v1/studies/{id}", "api")
            .methods(&["GET"])
            .scopes(&["read:studies"]),
    )
}

#[tokio::test]
async fn a_certificate_bound_token_passes_only_with_its_certificate() {
    let p = pki();
    let (li, echo) = (local_issuer().await, echo_upstream().await);
    let cfg = routes(Config::basic(&li, &echo)).server_set(
        "tls",
        json!({
            "cert_path": p.server.0.display().to_string(),
            "key_path": p.server.1.display().to_string(),
            "client_ca_path": p.ca.0.display().to_string(),
            "client_auth": "optional",
        }),
    );
    let gw = TestGateway::start(&cfg).await;
    let url = format!("https://127.0.0.1:{}/v1/studies/1", gw.addr().port());
    let bound = li.mint(&patch(
        li.claims("alice", "read:studies", 600),
        json!({"cnf": {"x5t#S256": thumbprint(&p.alice.0)}}),
    ));
    let plain = token(&li, "carol", "read:studies");
    let get = |c: reqwest::Client, t: String| {
        let url = url.clone();
        async move { send(c.get(url).bearer_auth(t)).await }
    };
    // With alice's certificate: forwarded.
    let r = get(client(&p.ca.0, Some(&p.alice)), bound.clone()).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    // Without a certificate, or with bob's (same CA): 401 invalid_token.
    for (who, c) in [
        ("no certificate", client(&p.ca.0, None)),
        ("bob's certificate", client(&p.ca.0, Some(&p.bob))),
    ] {
        let r = get(c, bound.clone()).await;
        let challenge = assert_invalid_token(&r);
        assert!(
            challenge.contains("client certificate"),
            "{who}: {challenge}"
        );
    }
    // A certificate from a CA the listener does not trust: the handshake fails.
    let stranger = client(&p.ca.0, Some(&p.stranger))
        .get(url.clone())
        .bearer_auth(bound.clone())
        .send()
        .await;
    assert!(
        stranger.is_err(),
        "an untrusted client certificate was accepted"
    );
    // An unbound token does not care about certificates.
    assert_eq!(get(client(&p.ca.0, None), plain.clone()).await.status, 200);
    assert_eq!(get(client(&p.ca.0, Some(&p.bob)), plain).await.status, 200);
    // The refusals are counted by reason.
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "gateway_rejections_total",
            &[("route", "studies"), ("reason", "certificate_mismatch")]
        ),
        2.0
    );
}

#[tokio::test]
async fn a_required_client_certificate_is_enforced_in_the_handshake() {
    let p = pki();
    let (li, echo) = (local_issuer().await, echo_upstream().await);
    let cfg = routes(Config::basic(&li, &echo)).server_set(
        "tls",
        json!({
            "cert_path": p.server.0.display().to_string(),
            "key_path": p.server.1.display().to_string(),
            "client_ca_path": p.ca.0.display().to_string(),
            "client_auth": "required",
        }),
    );
    let gw = TestGateway::start(&cfg).await;
    let url = format!("https://127.0.0.1:{}/v1/studies/1", gw.addr().port());
    let t = token(&li, "carol", "read:studies");
    assert!(client(&p.ca.0, None)
        .get(&url)
        .bearer_auth(&t)
        .send()
        .await
        .is_err());
    let r = send(client(&p.ca.0, Some(&p.bob)).get(&url).bearer_auth(&t)).await;
    assert_eq!(r.status, 200, "{}", r.describe());
}

/// URL-encoded PEM, as nginx's `$ssl_client_escaped_cert`.
fn escaped(cert: &Path) -> String {
    let pem = std::fs::read_to_string(cert).unwrap();
    let mut out = String::new();
    for b in pem.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[tokio::test]
async fn behind_a_tls_proxy_the_certificate_header_counts_only_from_trusted_proxies() {
    let p = pki();
    let (li, echo) = (local_issuer().await, echo_upstream().await);
    let bound = li.mint(&patch(
        li.claims("alice", "read:studies", 600),
        json!({"cnf": {"x5t#S256": thumbprint(&p.alice.0)}}),
    ));
    let trusted = routes(Config::basic(&li, &echo))
        .trusted_proxies(&["127.0.0.1/32"])
        .server_set("client_cert_header", "x-client-cert");
    let gw = TestGateway::start(&trusted).await;
    let ok = send(
        gw.get("/v1/studies/1")
            .bearer_auth(&bound)
            .header("x-client-cert", escaped(&p.alice.0)),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.describe());
    let other = send(
        gw.get("/v1/studies/1")
            .bearer_auth(&bound)
            .header("x-client-cert", escaped(&p.bob.0)),
    )
    .await;
    assert_invalid_token(&other);
    let garbage = send(
        gw.get("/v1/studies/1")
            .bearer_auth(&bound)
            .header("x-client-cert", "not a certificate"),
    )
    .await;
    assert_invalid_token(&garbage);
    drop(gw);

    // The same header from a peer that is not a trusted proxy is the client's own claim:
    // ignored for the binding, and not passed upstream.
    let untrusted = routes(Config::basic(&li, &echo))
        .trusted_proxies(&["10.0.0.0/8"])
        .server_set("client_cert_header", "x-client-cert");
    let gw = TestGateway::start(&untrusted).await;
    let r = send(
        gw.get("/v1/studies/1")
            .bearer_auth(&bound)
            .header("x-client-cert", escaped(&p.alice.0)),
    )
    .await;
    assert_invalid_token(&r);
    let plain = token(&li, "carol", "read:studies");
    let r = send(
        gw.get("/v1/studies/1")
            .bearer_auth(&plain)
            .header("x-client-cert", escaped(&p.alice.0)),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    assert!(
        seen["headers"].get("x-client-cert").is_none(),
        "the client's certificate header reached the upstream: {seen}"
    );
}

#[tokio::test]
async fn a_dpop_bound_token_sent_as_a_bearer_token_is_refused() {
    let (li, echo) = (local_issuer().await, echo_upstream().await);
    let gw = TestGateway::start(&routes(Config::basic(&li, &echo))).await;
    let bound = li.mint(&patch(
        li.claims("alice", "read:studies", 600),
        json!({"cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}}),
    ));
    let r = send(gw.get("/v1/studies/1").bearer_auth(&bound)).await;
    let challenge = assert_invalid_token(&r);
    assert!(challenge.contains("DPoP"), "{challenge}");
    // A malformed thumbprint refuses the token too.
    let bad = li.mint(&patch(
        li.claims("alice", "read:studies", 600),
        json!({"cnf": {"x5t#S256": "short"}}),
    ));
    assert_invalid_token(&send(gw.get("/v1/studies/1").bearer_auth(&bad)).await);
}

/// The same binding with tokens from a real authorization server (node oidc-provider, client
/// `app-mtls` with `tls_client_certificate_bound_access_tokens`): a JWT access token bound to
/// alice's certificate over our own TLS handshake, and an opaque one whose binding comes from
/// the introspection answer's `cnf`, with the certificate from a trusted proxy's header.
#[tokio::test]
async fn certificate_bound_tokens_from_oidc_provider_pass_only_with_their_certificate() {
    let p = pki();
    let authz = AuthServer::start().await;
    let echo = echo_upstream().await;
    let alice = escaped(&p.alice.0);
    let jwt = authz
        .token_response(
            ("app-mtls", "app-mtls-secret"),
            "read:studies",
            Some(JWT_RESOURCE),
            &[("x-client-cert", &alice)],
        )
        .await;
    assert_eq!(jwt["token_type"], "Bearer", "{jwt}");
    let jwt = jwt["access_token"].as_str().unwrap().to_string();
    let claims: serde_json::Value =
        serde_json::from_slice(&b64url_decode(&token_parts(&jwt)[1])).unwrap();
    assert_eq!(
        claims["cnf"]["x5t#S256"],
        thumbprint(&p.alice.0),
        "{claims}"
    );
    let opaque = authz
        .token_response(
            ("app-mtls", "app-mtls-secret"),
            "read:studies",
            None,
            &[("x-client-cert", &alice)],
        )
        .await["access_token"]
        .as_str()
        .unwrap()
        .to_string();

    let issuer = IssuerSpec::new("authz", &authz.issuer())
        .audiences(&[AUDIENCE, JWT_RESOURCE])
        .jwks_uri(&authz.jwks_uri())
        .set("introspection_endpoint", authz.introspection_endpoint())
        .set("introspection_client_id", GATEWAY.0)
        .set("introspection_client_secret", GATEWAY.1);
    // Our own TLS handshake verifies the client certificate.
    let tls = Config::new()
        .issuer(issuer.clone())
        .upstream(UpstreamSpec::echo("api", &echo))
        .route(RouteSpec::new("studies", "/v1/studies/*", "api").scopes(&["read:studies"]))
        .server_set(
            "tls",
            json!({
                "cert_path": p.server.0.display().to_string(),
                "key_path": p.server.1.display().to_string(),
                "client_ca_path": p.ca.0.display().to_string(),
            }),
        );
    let gw = TestGateway::start(&tls).await;
    let url = format!("https://127.0.0.1:{}/v1/studies/1", gw.addr().port());
    for t in [&jwt, &opaque] {
        let ok = send(client(&p.ca.0, Some(&p.alice)).get(&url).bearer_auth(t)).await;
        assert_eq!(ok.status, 200, "{}", ok.describe());
        assert_invalid_token(&send(client(&p.ca.0, Some(&p.bob)).get(&url).bearer_auth(t)).await);
        assert_invalid_token(&send(client(&p.ca.0, None).get(&url).bearer_auth(t)).await);
    }
    drop(gw);
    // Behind a TLS proxy: the certificate in the header from a trusted peer.
    let proxied = Config::new()
        .issuer(issuer)
        .upstream(UpstreamSpec::echo("api", &echo))
        .route(RouteSpec::new("studies", "/v1/studies/*", "api").scopes(&["read:studies"]))
        .trusted_proxies(&["127.0.0.1/32"])
        .server_set("client_cert_header", "x-client-cert");
    let gw = TestGateway::start(&proxied).await;
    for t in [&jwt, &opaque] {
        let ok = send(
            gw.get("/v1/studies/1")
                .bearer_auth(t)
                .header("x-client-cert", &alice),
        )
        .await;
        assert_eq!(ok.status, 200, "{}", ok.describe());
        let bob = escaped(&p.bob.0);
        assert_invalid_token(
            &send(
                gw.get("/v1/studies/1")
                    .bearer_auth(t)
                    .header("x-client-cert", &bob),
            )
            .await,
        );
    }
}
