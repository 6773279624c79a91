//! A real local token issuer: its own key pairs (RSA, ECDSA P-256, Ed25519, generated with
//! aws-lc-rs), a JWKS and an OIDC discovery document served over HTTP on loopback, and
//! minting of signed JWTs. Used by the `demo` subcommand and by the integration tests
//! (which also use its fetch counter, failure switch and key rotation).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::serve;
use crate::mint::{KeyAlg, SigningKey};

struct Shared {
    keys: Mutex<Vec<SigningKey>>,
    fetches: AtomicUsize,
    failing: AtomicBool,
    garbage: AtomicBool,
    max_age: Mutex<Option<u64>>,
    /// The demo's DPoP client: its key and the token bound to it (see `mint_dpop_bound`).
    dpop_client: Mutex<Option<(SigningKey, String)>>,
    issuer: String,
    base: Mutex<String>,
}

/// A local issuer serving `/.well-known/jwks.json` and `/.well-known/openid-configuration`.
#[derive(Clone)]
pub struct LocalIssuer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    pub audience: String,
}

impl LocalIssuer {
    /// Start on an ephemeral loopback port with one RS256 key (`kid` "rsa-1").
    /// `issuer = None` uses the issuer's own base URL as `iss`.
    pub async fn start(issuer: Option<&str>, audience: &str) -> std::io::Result<LocalIssuer> {
        Self::start_on("127.0.0.1:0", issuer, audience).await
    }

    pub async fn start_on(
        bind: &str,
        issuer: Option<&str>,
        audience: &str,
    ) -> std::io::Result<LocalIssuer> {
        let first = SigningKey::generate("rsa-1", KeyAlg::RS256).map_err(std::io::Error::other)?;
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let base = format!("http://{addr}");
        let shared = Arc::new(Shared {
            keys: Mutex::new(vec![first]),
            fetches: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            garbage: AtomicBool::new(false),
            max_age: Mutex::new(None),
            dpop_client: Mutex::new(None),
            issuer: issuer.map(str::to_string).unwrap_or_else(|| base.clone()),
            base: Mutex::new(base),
        });
        let s = shared.clone();
        serve(listener, move |req| handle(s.clone(), req));
        Ok(LocalIssuer {
            shared,
            addr,
            audience: audience.to_string(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn issuer(&self) -> &str {
        &self.shared.issuer
    }

    pub fn jwks_uri(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    pub fn discovery_url(&self) -> String {
        format!("http://{}/.well-known/openid-configuration", self.addr)
    }

    /// The JWKS document as served.
    pub fn jwks(&self) -> Value {
        json!({"keys": self.shared.keys.lock().iter().map(|k| k.jwk().clone()).collect::<Vec<_>>()})
    }

    /// JWKS requests served so far.
    pub fn fetch_count(&self) -> usize {
        self.shared.fetches.load(Ordering::SeqCst)
    }

    /// Answer JWKS requests with 500 while set.
    pub fn set_failing(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::SeqCst);
    }

    /// Answer JWKS requests with 200 and a non-JWKS body while set.
    pub fn set_garbage(&self, garbage: bool) {
        self.shared.garbage.store(garbage, Ordering::SeqCst);
    }

    /// `Cache-Control: max-age` on JWKS responses.
    pub fn set_max_age(&self, secs: Option<u64>) {
        *self.shared.max_age.lock() = secs;
    }

    /// Publish a new key (rotation); returns its kid.
    pub fn add_key(&self, kid: &str, alg: KeyAlg) -> Result<String, String> {
        let key = SigningKey::generate(kid, alg)?;
        self.shared.keys.lock().push(key);
        Ok(kid.to_string())
    }

    /// Stop publishing a key.
    pub fn remove_key(&self, kid: &str) {
        self.shared.keys.lock().retain(|k| k.kid() != kid);
    }

    /// Mint `claims` bound (RFC 9449 `cnf.jkt`) to a DPoP client key that this issuer keeps
    /// for the demo, generated on first use; [`Self::dpop_proof_url`] signs proofs with it
    /// for the last token minted here. A real client holds its key itself.
    pub fn mint_dpop_bound(&self, claims: &Value) -> Result<String, String> {
        let mut client = self.shared.dpop_client.lock();
        let key = match client.take() {
            Some((key, _)) => key,
            None => SigningKey::generate("demo-dpop-client", KeyAlg::ES256)?,
        };
        let mut claims = claims.clone();
        claims["cnf"] = json!({"jkt": key.thumbprint()});
        let token = self.mint(&claims);
        *client = Some((key, token.clone()));
        Ok(token)
    }

    /// `GET` here with `htm` and `htu` query parameters answers a fresh DPoP proof (text/plain)
    /// by the demo client's key for the token of [`Self::mint_dpop_bound`].
    pub fn dpop_proof_url(&self) -> String {
        format!("http://{}/demo/dpop-proof", self.addr)
    }

    /// Standard claims for this issuer: `sub`, `scope`, `client_id`, expiring in `ttl` seconds.
    pub fn claims(&self, sub: &str, scope: &str, ttl: i64) -> Value {
        let now = now();
        json!({
            "iss": self.shared.issuer,
            "sub": sub,
            "aud": self.audience,
            "iat": now,
            "exp": now + ttl,
            "scope": scope,
            "client_id": "demo-client",
        })
    }

    /// Sign claims with the first published key.
    pub fn mint(&self, claims: &Value) -> String {
        let kid = self
            .shared
            .keys
            .lock()
            .first()
            .map(|k| k.kid().to_string())
            .unwrap_or_default();
        self.mint_with(&kid, json!({}), claims)
    }

    /// Sign with the key `kid`; `header` entries are merged into the JOSE header (a `null`
    /// removes an entry, e.g. `{"kid": null}` for a token without kid).
    pub fn mint_with(&self, kid: &str, header: Value, claims: &Value) -> String {
        let keys = self.shared.keys.lock();
        match keys.iter().find(|k| k.kid() == kid) {
            Some(key) => key.mint(header, claims),
            None => String::from("no-such-key"),
        }
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn handle(shared: Arc<Shared>, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/.well-known/jwks.json" => {
            shared.fetches.fetch_add(1, Ordering::SeqCst);
            if shared.failing.load(Ordering::SeqCst) {
                return super::respond(
                    500,
                    "application/json",
                    "{\"error\":\"down\"}".into(),
                    None,
                );
            }
            if shared.garbage.load(Ordering::SeqCst) {
                return super::respond(200, "text/html", "<html>maintenance</html>".into(), None);
            }
            let body = json!({"keys": shared.keys.lock().iter().map(|k| k.jwk().clone()).collect::<Vec<_>>()});
            let cc = shared
                .max_age
                .lock()
                .map(|a| format!("public, max-age={a}"));
            super::respond(200, "application/jwk-set+json", body.to_string(), cc)
        }
        "/.well-known/openid-configuration" => {
            let base = shared.base.lock().clone();
            let body = json!({
                "issuer": shared.issuer,
                "jwks_uri": format!("{base}/.well-known/jwks.json"),
                "token_endpoint": format!("{base}/v1/oauth/token"),
                "authorization_endpoint": format!("{base}/v1/oauth/authorize"),
            });
            super::respond(200, "application/json", body.to_string(), None)
        }
        "/demo/dpop-proof" => {
            let query = req.uri().query().unwrap_or("");
            let param = |name: &str| {
                form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.into_owned())
            };
            let client = shared.dpop_client.lock();
            match (param("htm"), param("htu"), client.as_ref()) {
                (Some(htm), Some(htu), Some((key, token))) => super::respond(
                    200,
                    "text/plain",
                    key.dpop_proof(&htm, &htu, Some(token)),
                    None,
                ),
                (_, _, None) => super::respond(
                    404,
                    "application/json",
                    "{\"error\":\"no DPoP-bound token was minted\"}".into(),
                    None,
                ),
                _ => super::respond(
                    400,
                    "application/json",
                    "{\"error\":\"htm and htu query parameters are required\"}".into(),
                    None,
                ),
            }
        }
        _ => super::respond(
            404,
            "application/json",
            "{\"error\":\"not_found\"}".into(),
            None,
        ),
    }
}
