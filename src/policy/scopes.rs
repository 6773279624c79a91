//! Step 2b, may this token use the route? `scopes` are all required, `any_scopes` at least
//! one. The token's scopes come from `scope` (space-delimited) or `scp` (array or string).

/// What a route requires.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequiredScopes {
    all: Vec<String>,
    any: Vec<String>,
    /// The `scope="..."` attribute of a 403, built once.
    challenge: String,
}

/// A 403: the scopes that would satisfy the route, space-separated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingScopes(pub String);

impl RequiredScopes {
    pub fn new(all: Vec<String>, any: Vec<String>) -> Self {
        let mut parts: Vec<&str> = all.iter().map(String::as_str).collect();
        for s in &any {
            if !parts.contains(&s.as_str()) {
                parts.push(s);
            }
        }
        let challenge = parts.join(" ");
        RequiredScopes {
            all,
            any,
            challenge,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty() && self.any.is_empty()
    }

    /// `granted` is the token's scopes, space-separated.
    pub fn check(&self, granted: &str) -> Result<(), MissingScopes> {
        let has = |want: &String| granted.split(' ').any(|g| g == want);
        let all_ok = self.all.iter().all(has);
        let any_ok = self.any.is_empty() || self.any.iter().any(has);
        if all_ok && any_ok {
            Ok(())
        } else {
            Err(MissingScopes(self.challenge.clone()))
        }
    }
}

/// `read:studies write:studies` (all required), `one of: a b` (any), both with `; `, or `none`.
impl std::fmt::Display for RequiredScopes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.all.is_empty(), self.any.is_empty()) {
            (true, true) => f.write_str("none"),
            (false, true) => f.write_str(&self.all.join(" ")),
            (true, false) => write!(f, "one of: {}", self.any.join(" ")),
            (false, false) => write!(f, "{}; one of: {}", self.all.join(" "), self.any.join(" ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn scopes_all_required() {
        let r = RequiredScopes::new(s(&["read:studies", "read:participants"]), vec![]);
        assert!(r.check("read:participants read:studies x").is_ok());
        let e = r.check("read:studies").unwrap_err();
        assert_eq!(e.0, "read:studies read:participants");
        assert!(r.check("").is_err());
    }

    #[test]
    fn scopes_any_needs_one() {
        let r = RequiredScopes::new(vec![], s(&["admin:read", "read:studies"]));
        assert!(r.check("read:studies").is_ok());
        assert!(r.check("admin:read").is_ok());
        assert_eq!(
            r.check("read:profile").unwrap_err().0,
            "admin:read read:studies"
        );
    }

    #[test]
    fn scopes_prefix_of_a_scope_does_not_count() {
        let r = RequiredScopes::new(s(&["admin:write"]), vec![]);
        assert!(r.check("admin:writer admin:wr ADMIN:WRITE").is_err());
    }

    #[test]
    fn scopes_none_required_always_pass() {
        assert!(RequiredScopes::default().check("").is_ok());
    }
}
