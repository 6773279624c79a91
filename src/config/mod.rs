//! Step 0, what the operator asked for: `load(path)` reads the TOML file, substitutes
//! `${ENV}` references, checks every key and returns the runtime configuration, or every
//! problem at once with its location (`check` prints them; `serve` refuses to start).

mod admin;
mod file;
mod introspection;
mod schema;
mod validate;

pub use admin::{AdminToken, Authority, Host};
pub use file::*;
pub use introspection::{IntrospectionAuth, IntrospectionConfig};
pub use validate::*;

use std::path::Path;

/// One problem found in the file, with where it is (`routes[2] "studies-read".scopes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub location: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.location.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.location, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Syntax(String),
    #[error("{} problem(s) in the config:\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// Every problem as a line, for `check` and for the reload log.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid(p) => p.iter().map(|p| p.to_string()).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// Read, substitute, parse and validate a config file.
pub fn load(path: impl AsRef<Path>) -> Result<GatewayConfig, ConfigError> {
    let path = path.as_ref();
    let raw = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    from_str_with(&raw, &|name| std::env::var(name).ok(), base)
}

/// Parse and validate TOML text (environment from the process).
pub fn from_str(raw: &str) -> Result<GatewayConfig, ConfigError> {
    from_str_with(raw, &|name| std::env::var(name).ok(), Path::new("."))
}

/// Parse and validate TOML text with an injectable environment (tests).
pub fn from_str_with(
    raw: &str,
    env: &dyn Fn(&str) -> Option<String>,
    base_dir: &Path,
) -> Result<GatewayConfig, ConfigError> {
    let mut table: toml::Table =
        toml::from_str(raw).map_err(|e| ConfigError::Syntax(format!("invalid TOML: {e}")))?;
    // Unknown keys are collected (and removed) first, so they are reported together with
    // every other problem instead of stopping at the first one.
    let mut problems = Vec::new();
    schema::remove_unknown_keys(&mut table, raw, &mut problems);
    if problems.is_empty() {
        // Straight from the text: type errors then carry line, column and key.
        toml::from_str::<GatewayFile>(raw)
            .map_err(|e| ConfigError::Syntax(format!("config error: {e}")))?;
    }
    let mut value = toml::Value::Table(table);
    substitute_env(&mut value, String::new(), env, &mut problems);
    let file: GatewayFile = match value.try_into() {
        Ok(f) => f,
        Err(e) => {
            let e: toml::de::Error = e;
            // Reached only beside unknown keys (else the typed parse above stopped first);
            // the key path is only in the error's text: "in `server.listen`".
            let text = e.to_string();
            let location = text
                .lines()
                .find_map(|l| l.strip_prefix("in `")?.strip_suffix('`'))
                .unwrap_or("(top level)")
                .to_string();
            problems.push(Problem {
                location,
                message: format!("config error: {}", e.message()),
            });
            return Err(ConfigError::Invalid(problems));
        }
    };
    match validate(&file, base_dir) {
        Ok(cfg) if problems.is_empty() => Ok(cfg),
        Ok(_) => Err(ConfigError::Invalid(problems)),
        Err(ConfigError::Invalid(more)) => {
            problems.extend(more);
            Err(ConfigError::Invalid(problems))
        }
        Err(other) => Err(other),
    }
}

fn substitute_env(
    value: &mut toml::Value,
    at: String,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    match value {
        toml::Value::String(s) if s.contains('$') => match expand(s, env) {
            Ok(expanded) => *s = expanded,
            Err(message) => problems.push(Problem {
                location: at,
                message,
            }),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute_env(item, format!("{at}[{i}]"), env, problems);
            }
        }
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                let loc = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                substitute_env(v, loc, env, problems);
            }
        }
        _ => {}
    }
}

/// `${NAME}` is replaced by the variable; `$${` stands for a literal `${`.
fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(body) = after.strip_prefix("${") {
            let end = body
                .find('}')
                .ok_or_else(|| "unterminated ${...} reference".to_string())?;
            let name = &body[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid environment variable name {name:?}"));
            }
            let val = env(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&val);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "REDIS_URL" => Some("redis://10.1.2.3:6379/0".into()),
            _ => None,
        }
    }

    #[test]
    fn expand_env_reference_is_substituted() {
        assert_eq!(
            expand("a-${REDIS_URL}-b", &env).unwrap(),
            "a-redis://10.1.2.3:6379/0-b"
        );
        assert_eq!(expand("cost $5", &env).unwrap(), "cost $5");
        assert_eq!(expand("lit $${X}", &env).unwrap(), "lit ${X}");
    }

    #[test]
    fn expand_missing_env_is_an_error() {
        let e = expand("${NOPE_NOT_SET}", &env).unwrap_err();
        assert!(e.contains("NOPE_NOT_SET"), "{e}");
        assert!(expand("${UNTERMINATED", &env).is_err());
    }

    #[test]
    fn unknown_key_is_rejected_with_location() {
        let err = from_str_with(
            "[server]\nlisten = \"127.0.0.1:1\"\nlisn = 1\n",
            &env,
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("lisn"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn unknown_keys_are_reported_with_every_other_problem() {
        let raw = "[server]\nlisn = 1\n[[upstreams]]\nname = \"api\"\npeers = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\npath = \"/x\"\nupstream = \"nope\"\nauth = \"none\"\nscoeps = []\n";
        let err = from_str_with(raw, &env, Path::new(".")).unwrap_err();
        let all = err.problems().join("\n");
        assert!(all.contains("server.lisn: unknown key (line 2)"), "{all}");
        assert!(
            all.contains("routes[0] \"r\".scoeps: unknown key (line 11)"),
            "{all}"
        );
        assert!(all.contains("unknown upstream \"nope\""), "{all}");
    }

    #[test]
    fn type_error_beside_an_unknown_key_names_its_location() {
        // Found by the `config` fuzz target: this problem had an empty location.
        let err = from_str_with("[server]\nlisten = 8080\nbogus = 1\n", &env, Path::new("."))
            .unwrap_err();
        let ConfigError::Invalid(problems) = &err else {
            panic!("{err}")
        };
        assert!(
            problems.iter().all(|p| !p.location.is_empty()),
            "{problems:?}"
        );
        let all = err.problems().join("\n");
        assert!(all.contains("server.bogus: unknown key"), "{all}");
        assert!(
            all.contains("server.listen: config error: invalid type"),
            "{all}"
        );
    }

    #[test]
    fn missing_env_in_value_reports_location() {
        let err = from_str_with(
            "[rate_limit]\nbackend = \"redis\"\nredis_url = \"${MISSING_VAR_X}\"\n",
            &env,
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("rate_limit.redis_url"), "{err}");
        assert!(err.contains("MISSING_VAR_X"), "{err}");
    }

    #[test]
    fn shipped_gateway_toml_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml");
        let cfg = load(path).unwrap_or_else(|e| panic!("config/gateway.toml: {e}"));
        // The three documented limits are written in (README "Rate limits").
        let limit = |name: &str| {
            let r = cfg
                .routes
                .iter()
                .find(|r| r.name == name)
                .unwrap_or_else(|| panic!("route {name}"));
            let g = &r.limit_groups[0];
            (
                g.limits[0].requests,
                g.limits[0].period.as_secs(),
                g.key.clone(),
            )
        };
        assert_eq!(limit("oauth-authorize").0, 20);
        assert_eq!(limit("oauth-authorize").1, 60);
        assert_eq!(limit("oauth-token").0, 60);
        assert_eq!(limit("oauth-refresh").0, 60);
        assert_eq!(limit("oauth-userinfo").0, 120);
        assert_eq!(
            limit("oauth-token").2[0],
            crate::policy::KeySource::ClientId
        );
        assert_eq!(limit("oauth-userinfo").2[0], crate::policy::KeySource::Sub);
    }
}
