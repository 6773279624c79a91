//! The route table: path templates (exact, `{param}` = one segment, trailing `/*` = prefix of
//! zero or more segments), an optional method list, first match in file order wins.

use std::sync::Arc;

use http::Method;

use super::{LimitGroup, RequiredScopes};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
}

/// A parsed `path` of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    raw: String,
    segments: Vec<Segment>,
    prefix: bool,
}

impl PathTemplate {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if !raw.starts_with('/') {
            return Err(format!("{raw:?} must start with '/'"));
        }
        let (body, prefix) = if raw == "/*" {
            ("", true)
        } else if let Some(b) = raw.strip_suffix("/*") {
            (b, true)
        } else {
            (raw, false)
        };
        let mut segments = Vec::new();
        let trimmed = body.trim_start_matches('/');
        if !trimmed.is_empty() {
            for seg in trimmed.split('/') {
                if seg.is_empty() {
                    return Err(format!("{raw:?} has an empty segment or a trailing '/'"));
                }
                if seg.starts_with('{') || seg.ends_with('}') {
                    let name = seg
                        .strip_prefix('{')
                        .and_then(|s| s.strip_suffix('}'))
                        .ok_or_else(|| format!("{raw:?}: unbalanced braces in segment {seg:?}"))?;
                    if name.is_empty()
                        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        return Err(format!("{raw:?}: parameter {seg:?} must be {{name}} with letters, digits or '_'"));
                    }
                    segments.push(Segment::Param);
                } else {
                    if seg.contains(['{', '}', '*', '?', '#']) {
                        return Err(format!("{raw:?}: segment {seg:?} may not contain '{{', '}}', '*', '?' or '#' (a prefix is written as a trailing \"/*\")"));
                    }
                    let slashed = format!("/{seg}");
                    let canonical =
                        super::normalize_path(&slashed).map_err(|e| format!("{raw:?}: {e}"))?;
                    if canonical != slashed {
                        return Err(format!(
                            "{raw:?}: segment {seg:?} is not in normal form (requests are matched after normalisation; write {:?})",
                            canonical.trim_start_matches('/')
                        ));
                    }
                    segments.push(Segment::Literal(seg.to_string()));
                }
            }
        }
        Ok(PathTemplate {
            raw: raw.to_string(),
            segments,
            prefix,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Does this template match a normalised path?
    pub fn matches(&self, path: &str) -> bool {
        let mut parts = path.split('/').skip(1).filter(|s| !s.is_empty());
        for seg in &self.segments {
            match (seg, parts.next()) {
                (Segment::Literal(lit), Some(p)) if lit == p => {}
                (Segment::Param, Some(_)) => {}
                _ => return false,
            }
        }
        self.prefix || parts.next().is_none()
    }
}

/// Who may use a route: a verified bearer token (`jwt`, the default) or anyone (`none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Jwt,
    None,
}

/// DPoP (RFC 9449) on a route or, as the default of its routes, an issuer: `off` (the `DPoP`
/// scheme counts as no credentials), `allowed` (Bearer or DPoP; DPoP-bound tokens need DPoP),
/// `required` (only DPoP-bound tokens with a proof).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DpopMode {
    Off,
    #[default]
    Allowed,
    Required,
}

/// Whether a route's authentication and scope checks refuse (`enforce`, the default) or only
/// report what they would have refused (`report`): the request is forwarded, counted in
/// `gateway_report_only_denials_total` and logged with `would_deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouteMode {
    #[default]
    Enforce,
    Report,
}

/// A route as the request path uses it (built from the config by `state`).
#[derive(Debug)]
pub struct Route {
    /// Position in the file (and in the snapshot's per-route metric handles).
    pub index: usize,
    pub name: String,
    pub methods: Option<Vec<Method>>,
    pub path: PathTemplate,
    /// Index into the snapshot's upstreams.
    pub upstream: usize,
    pub auth: AuthMode,
    pub scopes: RequiredScopes,
    /// Names of the issuers whose tokens are accepted here; `None` = all.
    pub issuers: Option<Vec<String>>,
    pub token_query_param: Option<String>,
    pub token_cookie: Option<String>,
    /// Limits grouped by key, each with the limiter scope it is counted under (the route's
    /// name for the first group, `name#i` for the others, so two groups never share a log).
    pub limits: Vec<(String, LimitGroup)>,
    /// `20;w=60, 200;w=3600` policy text of every limit, built once as the `RateLimit-Policy`
    /// header value (each response clones it: a reference count, no copy).
    pub limit_policy: http::HeaderValue,
    /// Keep encoded slashes in paths (`%2F`, `%5C`, `\\`) instead of refusing them.
    pub allow_encoded_slashes: bool,
    /// `None`: the server default.
    pub require_tls: Option<bool>,
    /// Introspect every token here (RFC 7662), JWTs too.
    pub introspect: bool,
    /// `report`: authentication and scope refusals are reported, not enforced.
    pub mode: RouteMode,
    /// `None`: the default of the token's issuer.
    pub dpop: Option<DpopMode>,
}

impl Route {
    fn allows(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|ms| ms.contains(method))
    }

    /// Why this route does not take `method` `path` (for `explain`); empty when it does.
    pub(crate) fn mismatch(&self, method: &Method, path: &str) -> String {
        let mut why = Vec::new();
        if !self.allows(method) {
            let listed: Vec<&str> = self.methods.iter().flatten().map(Method::as_str).collect();
            why.push(format!("method {method} not in [{}]", listed.join(", ")));
        }
        if !self.path.matches(path) {
            why.push(format!("path does not match {}", self.path.as_str()));
        }
        why.join("; ")
    }
}

/// Routes in file order.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        RouteTable {
            routes: routes.into_iter().map(Arc::new).collect(),
        }
    }

    /// First route (file order) whose method list and template match the normalised path.
    pub fn find(&self, method: &Method, path: &str) -> Option<&Arc<Route>> {
        self.routes
            .iter()
            .find(|r| r.allows(method) && r.path.matches(path))
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(p: &str) -> PathTemplate {
        PathTemplate::parse(p).unwrap()
    }

    #[test]
    fn template_exact_matches_only_itself() {
        assert!(t("/v1/user/profile").matches("/v1/user/profile"));
        assert!(!t("/v1/user/profile").matches("/v1/user/profile/x"));
        assert!(!t("/v1/user/profile").matches("/v1/user"));
        assert!(t("/").matches("/"));
        assert!(!t("/").matches("/x"));
    }

    #[test]
    fn template_param_matches_one_segment() {
        let p = t("/v1/studies/{id}");
        assert!(p.matches("/v1/studies/42"));
        assert!(!p.matches("/v1/studies"));
        assert!(!p.matches("/v1/studies/42/participants"));
        assert!(t("/v1/studies/{id}/participants").matches("/v1/studies/7/participants"));
    }

    #[test]
    fn template_prefix_matches_zero_or_more_segments() {
        let p = t("/v1/admin/*");
        assert!(p.matches("/v1/admin"));
        assert!(p.matches("/v1/admin/users/1"));
        assert!(!p.matches("/v1/administrators"));
        assert!(t("/*").matches("/anything/at/all"));
        assert!(t("/*").matches("/"));
    }

    #[test]
    fn template_bad_forms_are_refused() {
        for bad in [
            "v1/x",
            "/v1//x",
            "/v1/x/",
            "/v1/{}",
            "/v1/{a",
            "/v1/a*",
            "/v1/%73tudies",
            "/v1/./x",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    fn route(name: &str, methods: Option<Vec<Method>>, path: &str) -> Route {
        Route {
            index: 0,
            name: name.into(),
            methods,
            path: t(path),
            upstream: 0,
            auth: AuthMode::Jwt,
            scopes: RequiredScopes::default(),
            issuers: None,
            token_query_param: None,
            token_cookie: None,
            limits: vec![],
            limit_policy: http::HeaderValue::from_static(""),
            allow_encoded_slashes: false,
            require_tls: None,
            introspect: false,
            mode: RouteMode::Enforce,
            dpop: None,
        }
    }

    #[test]
    fn table_first_match_in_file_order_wins() {
        let table = RouteTable::new(vec![
            route("read", Some(vec![Method::GET]), "/v1/studies/{id}"),
            route(
                "write",
                Some(vec![Method::PUT, Method::PATCH]),
                "/v1/studies/{id}",
            ),
            route("catchall", None, "/v1/*"),
        ]);
        let find = |m: Method, p: &str| table.find(&m, p).map(|r| r.name.clone());
        assert_eq!(find(Method::GET, "/v1/studies/1").as_deref(), Some("read"));
        assert_eq!(find(Method::PUT, "/v1/studies/1").as_deref(), Some("write"));
        assert_eq!(
            find(Method::DELETE, "/v1/studies/1").as_deref(),
            Some("catchall")
        );
        assert_eq!(find(Method::GET, "/v2/x"), None);
    }
}
