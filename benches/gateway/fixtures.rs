//! The tokens: minted in this process, written to files before anything is measured.

use std::path::{Path, PathBuf};
use std::time::Instant;

use wetrials_gateway::demo::{KeyAlg, LocalIssuer};

use crate::{Res, AUDIENCE, ISSUER, SCOPE};

/// Tokens outlive any run of the benchmark.
const TOKEN_TTL_SECS: i64 = 6 * 3600;

pub(crate) struct Fixtures {
    pub(crate) jwks: PathBuf,
    /// The long-lived token of rows 5, 7 and 8.
    pub(crate) token: String,
    /// Row 6: distinct tokens, one per line.
    pub(crate) round_robin: PathBuf,
    /// The RSS check: distinct tokens walked once.
    pub(crate) walk: PathBuf,
}

/// Mint every token in-process with `LocalIssuer`. Minting holds the issuer's key lock, so
/// each thread gets its own issuer (same `iss`, its own key and `kid`); the JWKS file holds
/// all their public keys, and the gateway reads it from disk (no issuer on the measured core).
pub(crate) fn mint_fixtures(dir: &Path, round_robin: usize, walk: usize) -> Res<Fixtures> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let issuers: Vec<LocalIssuer> = rt.block_on(async {
        let mut v = Vec::new();
        for t in 0..threads {
            let issuer = LocalIssuer::start(Some(ISSUER), AUDIENCE)
                .await
                .map_err(|e| format!("local issuer: {e}"))?;
            if t > 0 {
                issuer.add_key(&format!("rsa-bench-{t}"), KeyAlg::RS256)?;
                issuer.remove_key("rsa-1");
            }
            v.push(issuer);
        }
        Ok::<_, String>(v)
    })?;
    let keys: Vec<serde_json::Value> = issuers
        .iter()
        .flat_map(|i| i.jwks()["keys"].as_array().cloned().unwrap_or_default())
        .collect();
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, serde_json::json!({ "keys": keys }).to_string())
        .map_err(|e| e.to_string())?;

    let started = Instant::now();
    let token = issuers[0].mint(&issuers[0].claims("bench-user", SCOPE, TOKEN_TTL_SECS));
    let mint_many = |prefix: &str, count: usize| -> Vec<String> {
        let mut out = vec![String::new(); count];
        std::thread::scope(|s| {
            let handles: Vec<_> = issuers
                .iter()
                .enumerate()
                .map(|(t, issuer)| {
                    s.spawn(move || {
                        (t..count)
                            .step_by(threads)
                            .map(|i| {
                                let sub = format!("{prefix}-{i:06}");
                                (i, issuer.mint(&issuer.claims(&sub, SCOPE, TOKEN_TTL_SECS)))
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                if let Ok(part) = h.join() {
                    for (i, tok) in part {
                        out[i] = tok;
                    }
                }
            }
        });
        out
    };
    let write_lines = |path: &Path, tokens: &[String]| -> Res<()> {
        if let Some(bad) = tokens.iter().find(|t| t.split('.').count() != 3) {
            return Err(format!("minting failed: {bad:?}"));
        }
        let mut text = tokens.join("\n");
        text.push('\n');
        std::fs::write(path, text).map_err(|e| e.to_string())
    };
    let rr_path = dir.join("tokens-round-robin.txt");
    write_lines(&rr_path, &mint_many("rr-user", round_robin))?;
    let walk_path = dir.join("tokens-walk.txt");
    write_lines(&walk_path, &mint_many("walk-user", walk))?;
    println!(
        "minted {} RS256 tokens in {:.1}s ({threads} threads); JWKS in {}",
        1 + round_robin + walk,
        started.elapsed().as_secs_f64(),
        jwks.display()
    );
    drop(rt);
    Ok(Fixtures {
        jwks,
        token,
        round_robin: rr_path,
        walk: walk_path,
    })
}
