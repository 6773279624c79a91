//! A real local token issuer: its own key pairs (RSA, ECDSA P-256, Ed25519, generated with
//! aws-lc-rs), a JWKS and an OIDC discovery document served over HTTP on loopback, and
//! minting of signed JWTs. Used by the `demo` subcommand and by the integration tests
//! (which also use its fetch counter, failure switch and key rotation).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::serve;

/// Signing algorithm of a local key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlg {
    RS256,
    PS256,
    ES256,
    EdDSA,
}

enum Material {
    Rsa(aws_lc_rs::rsa::KeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

struct SigningKey {
    kid: String,
    alg: KeyAlg,
    material: Material,
    jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl SigningKey {
    fn generate(kid: &str, alg: KeyAlg) -> Result<Self, String> {
        let err = |e: aws_lc_rs::error::Unspecified| format!("key generation failed: {e}");
        let (material, jwk) = match alg {
            KeyAlg::RS256 | KeyAlg::PS256 => {
                let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .map_err(err)?;
                let pk = kp.public_key();
                let n = pk.modulus();
                let e = pk.exponent();
                let jwk = json!({
                    "kty": "RSA", "use": "sig", "kid": kid,
                    "alg": if alg == KeyAlg::RS256 { "RS256" } else { "PS256" },
                    "n": b64(n.big_endian_without_leading_zero()),
                    "e": b64(e.big_endian_without_leading_zero()),
                });
                (Material::Rsa(kp), jwk)
            }
            KeyAlg::ES256 => {
                let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(err)?;
                let point = kp.public_key().as_ref().to_vec();
                if point.len() != 65 {
                    return Err("unexpected EC point encoding".into());
                }
                let jwk = json!({
                    "kty": "EC", "use": "sig", "kid": kid, "alg": "ES256", "crv": "P-256",
                    "x": b64(&point[1..33]), "y": b64(&point[33..65]),
                });
                (Material::Ec(kp), jwk)
            }
            KeyAlg::EdDSA => {
                let kp = Ed25519KeyPair::generate().map_err(err)?;
                let jwk = json!({
                    "kty": "OKP", "use": "sig", "kid": kid, "alg": "EdDSA", "crv": "Ed25519",
                    "x": b64(kp.public_key().as_ref()),
                });
                (Material::Ed(kp), jwk)
            }
        };
        Ok(SigningKey {
            kid: kid.to_string(),
            alg,
            material,
            jwk,
        })
    }

    fn alg_name(&self) -> &'static str {
        match self.alg {
            KeyAlg::RS256 => "RS256",
            KeyAlg::PS256 => "PS256",
            KeyAlg::ES256 => "ES256",
            KeyAlg::EdDSA => "EdDSA",
        }
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, String> {
        let rng = SystemRandom::new();
        match &self.material {
            Material::Rsa(kp) => {
                let mut sig = vec![0u8; kp.public_modulus_len()];
                let pad: &'static dyn aws_lc_rs::signature::RsaEncoding =
                    if self.alg == KeyAlg::PS256 {
                        &aws_lc_rs::signature::RSA_PSS_SHA256
                    } else {
                        &aws_lc_rs::signature::RSA_PKCS1_SHA256
                    };
                kp.sign(pad, &rng, msg, &mut sig)
                    .map_err(|e| e.to_string())?;
                Ok(sig)
            }
            Material::Ec(kp) => Ok(kp
                .sign(&rng, msg)
                .map_err(|e| e.to_string())?
                .as_ref()
                .to_vec()),
            Material::Ed(kp) => Ok(kp.sign(msg).as_ref().to_vec()),
        }
    }
}

struct Shared {
    keys: Mutex<Vec<SigningKey>>,
    fetches: AtomicUsize,
    failing: AtomicBool,
    garbage: AtomicBool,
    max_age: Mutex<Option<u64>>,
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
        json!({"keys": self.shared.keys.lock().iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
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
        self.shared.keys.lock().retain(|k| k.kid != kid);
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
            .map(|k| k.kid.clone())
            .unwrap_or_default();
        self.mint_with(&kid, json!({}), claims)
    }

    /// Sign with the key `kid`; `header` entries are merged into the JOSE header (a `null`
    /// removes an entry, e.g. `{"kid": null}` for a token without kid).
    pub fn mint_with(&self, kid: &str, header: Value, claims: &Value) -> String {
        let keys = self.shared.keys.lock();
        let Some(key) = keys.iter().find(|k| k.kid == kid) else {
            return String::from("no-such-key");
        };
        let mut h = json!({"alg": key.alg_name(), "typ": "JWT", "kid": key.kid});
        if let (Some(hm), Some(extra)) = (h.as_object_mut(), header.as_object()) {
            for (k, v) in extra {
                if v.is_null() {
                    hm.remove(k);
                } else {
                    hm.insert(k.clone(), v.clone());
                }
            }
        }
        let signing_input = format!(
            "{}.{}",
            b64(h.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        match key.sign(signing_input.as_bytes()) {
            Ok(sig) => format!("{signing_input}.{}", b64(&sig)),
            Err(_) => String::from("signing-failed"),
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
            let body = json!({"keys": shared.keys.lock().iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
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
        _ => super::respond(
            404,
            "application/json",
            "{\"error\":\"not_found\"}".into(),
            None,
        ),
    }
}
