//! A real OAuth 2.0 authorization server for the tests: node `oidc-provider` (tests/authz/,
//! version pinned in its package-lock.json) on a free loopback port. [`AuthServer::start`]
//! installs it on first use (`npm ci`, once per checkout, under a lock shared by every test
//! process), spawns `node tests/authz/server.mjs`, waits for the line naming its endpoints and
//! kills the process on drop.
//!
//! What it serves (see tests/authz/server.mjs): `client_credentials` for the clients
//! [`APP`] (client_secret_basic), `app-post` (client_secret_post), `app-mtls`
//! (certificate-bound tokens: send the PEM URL-encoded in `x-client-cert`) and the gateway's
//! introspection clients [`GATEWAY`] (Basic) and `gateway-post`; opaque access tokens for the
//! resource [`AUDIENCE`] (the default) and JWT access tokens (RS256, `at+jwt`) for
//! [`JWT_RESOURCE`]; RFC 7662 introspection, RFC 7009 revocation, DPoP-bound tokens when a
//! `DPoP` proof is sent to the token endpoint.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{AUDIENCE, HTTP_TIMEOUT};

/// A client with `client_secret_basic` that asks for tokens.
pub const APP: (&str, &str) = ("app", "app-secret");
/// The gateway's client at the introspection endpoint (`client_secret_basic`).
pub const GATEWAY: (&str, &str) = ("gateway", "gateway-secret");
/// The gateway's client with `client_secret_post`.
pub const GATEWAY_POST: (&str, &str) = ("gateway-post", "gateway-post-secret");
/// The resource whose access tokens are JWTs (the default resource, [`AUDIENCE`], gets
/// opaque ones).
pub const JWT_RESOURCE: &str = "https://jwt.api.wetrials.com";

/// Bound on the server's start (the first start may run `npm ci`: longer).
const START_TIMEOUT: Duration = Duration::from_secs(30);
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);

fn authz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/authz")
}

/// `npm ci` in tests/authz unless the pinned oidc-provider is installed already. Test
/// processes run at once: a lock directory (mkdir is atomic) lets one install while the
/// others wait.
fn ensure_installed() {
    let dir = authz_dir();
    let installed = || {
        let lock: Value = serde_json::from_slice(
            &std::fs::read(dir.join("package-lock.json")).expect("tests/authz/package-lock.json"),
        )
        .expect("package-lock.json is JSON");
        let want = lock["packages"]["node_modules/oidc-provider"]["version"].clone();
        std::fs::read(dir.join("node_modules/oidc-provider/package.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|p| p["version"] == want)
    };
    if installed() {
        return;
    }
    let lock = dir.join(".install-lock");
    let deadline = std::time::Instant::now() + INSTALL_TIMEOUT;
    while std::fs::create_dir(&lock).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "waited too long for {} (remove it if no install runs)",
            lock.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    if !installed() {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .output();
        let _ = std::fs::remove_dir(&lock);
        let out = out.expect("npm (install nodejs and npm: `make deps`)");
        assert!(
            out.status.success(),
            "npm ci in tests/authz failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        let _ = std::fs::remove_dir(&lock);
    }
}

/// A running oidc-provider; killed on drop.
pub struct AuthServer {
    child: Child,
    endpoints: Value,
    log: tempfile::NamedTempFile,
    http: reqwest::Client,
}

impl AuthServer {
    /// Start with the default clients and resources.
    pub async fn start() -> AuthServer {
        Self::start_with(serde_json::json!({})).await
    }

    /// Start with settings overriding the defaults of server.mjs (`clients`, `resources`,
    /// `access_token_ttl`).
    pub async fn start_with(settings: Value) -> AuthServer {
        tokio::task::spawn_blocking(move || Self::spawn(&settings))
            .await
            .expect("spawn oidc-provider")
    }

    fn spawn(settings: &Value) -> AuthServer {
        ensure_installed();
        let log = tempfile::NamedTempFile::new().expect("log file");
        let mut child = Command::new("node")
            .arg("server.mjs")
            .current_dir(authz_dir())
            .env("AUTHZ_CONFIG", settings.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.reopen().expect("log file"))
            .spawn()
            .expect("node (install nodejs: `make deps`)");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // The first line names the endpoints; the rest is drained until the process ends
        // (a closed pipe would kill node at its next `console.log`).
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next().and_then(Result::ok).unwrap_or_default());
            for _ in lines.map_while(Result::ok) {}
        });
        let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
        let endpoints: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "oidc-provider did not start: {}",
                    std::fs::read_to_string(log.path()).unwrap_or_default()
                );
            }
        };
        AuthServer {
            child,
            endpoints,
            log,
            // A fresh connection per request: node may close an idle keep-alive connection
            // just as it is reused (seen as "connection reset" after a revocation).
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(HTTP_TIMEOUT)
                .pool_max_idle_per_host(0)
                .build()
                .expect("reqwest client"),
        }
    }

    fn endpoint(&self, name: &str) -> String {
        self.endpoints[name].as_str().expect(name).to_string()
    }

    /// `http://127.0.0.1:PORT`, the `iss` of its tokens.
    pub fn issuer(&self) -> String {
        self.endpoint("issuer")
    }
    pub fn token_endpoint(&self) -> String {
        self.endpoint("token_endpoint")
    }
    pub fn introspection_endpoint(&self) -> String {
        self.endpoint("introspection_endpoint")
    }
    pub fn revocation_endpoint(&self) -> String {
        self.endpoint("revocation_endpoint")
    }
    pub fn jwks_uri(&self) -> String {
        self.endpoint("jwks_uri")
    }
    pub fn discovery_url(&self) -> String {
        self.endpoint("discovery_url")
    }
    /// Its stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// The token endpoint's JSON answer to a `client_credentials` request by `client`
    /// (client_secret_basic) with `scope`, `resource` when given, and `headers` (a `DPoP`
    /// proof, an `x-client-cert`). Panics unless 200.
    pub async fn token_response(
        &self,
        client: (&str, &str),
        scope: &str,
        resource: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Value {
        let mut form = vec![("grant_type", "client_credentials"), ("scope", scope)];
        if let Some(r) = resource {
            form.push(("resource", r));
        }
        let mut req = self
            .http
            .post(self.token_endpoint())
            .basic_auth(client.0, Some(client.1))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(&form));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("token request");
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.expect("token response JSON");
        assert_eq!(status, 200, "token endpoint: {body}");
        body
    }

    /// An opaque access token for [`APP`] with `scope` (audience [`AUDIENCE`]).
    pub async fn client_credentials_token(&self, scope: &str) -> String {
        self.access_token(scope, None).await
    }

    /// A JWT access token (RS256, `typ: at+jwt`, audience [`JWT_RESOURCE`]) for [`APP`].
    pub async fn client_credentials_jwt(&self, scope: &str) -> String {
        self.access_token(scope, Some(JWT_RESOURCE)).await
    }

    async fn access_token(&self, scope: &str, resource: Option<&str>) -> String {
        let v = self.token_response(APP, scope, resource, &[]).await;
        v["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    /// RFC 7662 answer for `token`, asked as [`GATEWAY`].
    pub async fn introspect(&self, token: &str) -> Value {
        let resp = self
            .http
            .post(self.introspection_endpoint())
            .basic_auth(GATEWAY.0, Some(GATEWAY.1))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(&[("token", token)]))
            .send()
            .await
            .expect("introspection request");
        resp.json().await.expect("introspection JSON")
    }

    /// RFC 7009: revoke `token` as [`APP`] (the client it was issued to). Panics unless 200.
    pub async fn revoke(&self, token: &str) {
        let resp = self
            .http
            .post(self.revocation_endpoint())
            .basic_auth(APP.0, Some(APP.1))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(&[
                ("token", token),
                ("token_type_hint", "access_token"),
            ]))
            .send()
            .await
            .expect("revocation request");
        assert_eq!(resp.status().as_u16(), 200, "revocation refused");
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn form_body(pairs: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push('&');
        }
        s.push_str(&urlencode(k));
        s.push('=');
        s.push_str(&urlencode(v));
    }
    s
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
