//! Signing keys and token minting, with no server: RSA (RS256, PS256), ECDSA P-256 and Ed25519
//! key pairs generated with aws-lc-rs, their public JWKs, and signed JWTs. The demo's local
//! issuer serves these keys; offline tools and tests install the JWK in an issuer themselves.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

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

/// A signing key with its public JWK: mints tokens without any server (the local issuer
/// serves these; offline tools and tests install the JWK themselves).
pub struct SigningKey {
    kid: String,
    alg: KeyAlg,
    material: Material,
    jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl SigningKey {
    pub fn generate(kid: &str, alg: KeyAlg) -> Result<Self, String> {
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

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// A JWKS document holding this key alone.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk] })
    }

    /// The public key as a DPoP proof carries it (RFC 9449 §4.2): only the members RFC 7638
    /// names for its type, no `kid`, `use` or `alg`.
    pub fn public_jwk(&self) -> Value {
        let members: &[&str] = match self.alg {
            KeyAlg::RS256 | KeyAlg::PS256 => &["e", "kty", "n"],
            KeyAlg::ES256 => &["crv", "kty", "x", "y"],
            KeyAlg::EdDSA => &["crv", "kty", "x"],
        };
        let mut out = serde_json::Map::new();
        for m in members {
            if let Some(v) = self.jwk.get(*m) {
                out.insert((*m).to_string(), v.clone());
            }
        }
        Value::Object(out)
    }

    /// RFC 7638 thumbprint of the public key: what a DPoP-bound token's `cnf.jkt` names.
    pub fn thumbprint(&self) -> String {
        // The canonical form: the required members in lexicographic order (as `public_jwk`
        // lists them), no whitespace, written out here so no map ordering is relied on.
        let jwk = self.public_jwk();
        let members: Vec<String> = ["crv", "e", "kty", "n", "x", "y"]
            .iter()
            .filter_map(|m| Some(format!("{}:{}", Value::from(*m), jwk.get(*m)?)))
            .collect();
        let canonical = format!("{{{}}}", members.join(","));
        b64(&Sha256::digest(canonical.as_bytes()))
    }

    /// A DPoP proof for one request (RFC 9449 §4.2): `typ: dpop+jwt`, this key's public JWK, a
    /// fresh random `jti`, `iat` now, and `ath` of `access_token` when given.
    pub fn dpop_proof(&self, htm: &str, htu: &str, access_token: Option<&str>) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut random = [0u8; 16];
        let jti = match SystemRandom::new().fill(&mut random) {
            Ok(()) => b64(&random),
            // Never a repeated `jti` (a verifier refuses it as a replay), even without the RNG.
            Err(_) => {
                static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("{}-{}-{n}", now.as_nanos(), std::process::id())
            }
        };
        let iat = now.as_secs();
        let mut claims = json!({"jti": jti, "htm": htm, "htu": htu, "iat": iat});
        if let Some(token) = access_token {
            claims["ath"] = Value::from(b64(&Sha256::digest(token.as_bytes())));
        }
        self.mint(
            json!({"typ": "dpop+jwt", "jwk": self.public_jwk(), "kid": null}),
            &claims,
        )
    }

    /// Sign `claims`; `header` entries are merged into the JOSE header (`{"alg", "typ",
    /// "kid"}`; a `null` removes an entry, e.g. `{"kid": null}` for a token without kid).
    pub fn mint(&self, header: Value, claims: &Value) -> String {
        let mut h = json!({"alg": self.alg_name(), "typ": "JWT", "kid": self.kid});
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
        match self.sign(signing_input.as_bytes()) {
            Ok(sig) => format!("{signing_input}.{}", b64(&sig)),
            Err(_) => String::from("signing-failed"),
        }
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
