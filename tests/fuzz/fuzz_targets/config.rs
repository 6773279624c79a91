//! The config loader (`config::from_str_with`, what `load` and `check` run). Input: TOML text.
//! Properties: it never panics; a syntax error says where (line and column); every other
//! problem names its location (section, key or route); a config it accepts builds a route
//! table. Environment references expand to fixed values.
//! Inputs naming an upstream peer that is not a literal `ip:port` are skipped: validation
//! resolves peers, and the fuzzer must not send DNS queries.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wetrials_gateway::config::ConfigError;
use wetrials_gateway::fuzzing::{config_from_str_with, route_table};

fn env(name: &str) -> Option<String> {
    match name {
        "REDIS_URL" => Some("redis://127.0.0.1:6379/0".into()),
        "PORT" => Some("8080".into()),
        _ => None,
    }
}

/// Any string under a `peers` key (at any depth) that would need a name lookup.
fn needs_dns(v: &toml::Value, under_peers: bool) -> bool {
    match v {
        toml::Value::String(s) => {
            under_peers && (s.contains('$') || s.parse::<std::net::SocketAddr>().is_err())
        }
        toml::Value::Array(a) => a.iter().any(|x| needs_dns(x, under_peers)),
        toml::Value::Table(t) => t
            .iter()
            .any(|(k, x)| needs_dns(x, under_peers || k == "peers")),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = raw.parse::<toml::Table>() {
        if needs_dns(&toml::Value::Table(t), false) {
            return;
        }
    }
    match config_from_str_with(raw, &env, Path::new("/nonexistent")) {
        Ok(cfg) => {
            let table = route_table(&cfg);
            assert_eq!(table.len(), cfg.routes.len());
        }
        Err(ConfigError::Syntax(msg)) => {
            assert!(
                msg.contains("line "),
                "syntax error without a location: {msg}"
            );
        }
        Err(ConfigError::Invalid(problems)) => {
            assert!(!problems.is_empty());
            for p in &problems {
                assert!(
                    !p.location.is_empty(),
                    "problem without a location: {}",
                    p.message
                );
            }
        }
        Err(ConfigError::Read { .. }) => panic!("from_str read a file"),
    }
});
