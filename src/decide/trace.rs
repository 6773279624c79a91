//! The steps a decision took, for the people who own the rules (`test`, `explain`). The proxy
//! passes [`Off`]: every `step` call takes a closure that `Off` never runs, so on the request
//! path nothing is built, formatted or allocated for a trace nobody reads.

use serde::Serialize;

/// Where the steps of one decision go.
pub(crate) trait Trace {
    /// Record one step; `step` is called only by a trace that keeps it.
    fn step(&mut self, step: impl FnOnce() -> Step);

    /// Whether steps are kept: guards the loops that only a trace needs.
    fn records(&self) -> bool;
}

/// No trace: the request path.
pub(crate) struct Off;

impl Trace for Off {
    #[inline(always)]
    fn step(&mut self, _: impl FnOnce() -> Step) {}

    #[inline(always)]
    fn records(&self) -> bool {
        false
    }
}

/// Keeps every step, in order.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct Recorder {
    pub steps: Vec<Step>,
}

impl Trace for Recorder {
    fn step(&mut self, step: impl FnOnce() -> Step) {
        self.steps.push(step());
    }

    fn records(&self) -> bool {
        true
    }
}

/// One step of a decision. Never holds a token or a signature; claims values may appear (they
/// are what a rule owner debugs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub(crate) enum Step {
    /// The request target's form (RFC 9112 §3.2): `origin` or `absolute` (with its authority).
    Target {
        form: &'static str,
        authority: Option<String>,
    },
    /// The path as received and as routed (after normalisation).
    Path { raw: String, routed: String },
    /// A route tried before the one that matched (or when none did), and why it did not.
    RouteTried { route: String, why: String },
    /// The route that matched, or `None`.
    Route { matched: Option<String> },
    /// Whether the request arrived over TLS and whether the route requires it.
    Tls { https: bool, required: bool },
    /// The route is public: no credentials are checked.
    Public,
    /// Where the token came from: `authorization`, `query`, `cookie`, or `none`.
    Credentials { source: &'static str },
    /// The token's verification: its issuer (when its `iss` named one) and the result
    /// (`ok` or the refusal reason).
    Token {
        issuer: Option<String>,
        result: &'static str,
    },
    /// The DPoP proof's checks (RFC 9449): the `htu` it must name (when known), and the result
    /// (`ok` or the refusal reason). `explain` records no `jti`.
    Dpop {
        htu: Option<String>,
        result: &'static str,
    },
    /// RFC 7662: the token was introspected by `issuer`, answered from `source` (`endpoint`
    /// or `cache`).
    Introspection {
        issuer: String,
        source: &'static str,
    },
    /// Scopes the route requires, the token grants, and (when refused) the `scope=` a 403
    /// names.
    Scopes {
        required: String,
        granted: String,
        missing: Option<String>,
    },
    /// A public route's client, as an authorization server would read it.
    Client { client_id: Option<String> },
    /// One limit group: its limiter scope, key source and key, and the limiter's answer.
    Limit {
        scope: String,
        source: String,
        key: String,
        allowed: bool,
        limit: u32,
        remaining: u32,
    },
    /// A gate that only reports (report mode, a `report_only` limit) would have refused with
    /// `status` for `reason`; the decision goes on.
    WouldDeny { status: u16, reason: &'static str },
    /// The end: forwarded (`status` 0) or refused with `status` for `reason`.
    Verdict { status: u16, reason: &'static str },
}

impl std::fmt::Display for Step {
    /// One line for people: `route     studies-read`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Target { form, authority } => match authority {
                Some(a) => write!(f, "target    {form}-form, authority {a}"),
                None => write!(f, "target    {form}-form"),
            },
            Step::Path { raw, routed } if raw == routed => write!(f, "path      {raw}"),
            Step::Path { raw, routed } => write!(f, "path      {raw} -> {routed} (normalised)"),
            Step::RouteTried { route, why } => write!(f, "route     not {route}: {why}"),
            Step::Route { matched: Some(r) } => write!(f, "route     {r}"),
            Step::Route { matched: None } => write!(f, "route     none matches"),
            Step::Tls { https, required } => write!(
                f,
                "tls       {} ({})",
                if *https { "https" } else { "plain http" },
                if *required {
                    "route requires https"
                } else {
                    "not required"
                }
            ),
            Step::Public => write!(f, "auth      public route: no credentials checked"),
            Step::Credentials { source: "none" } => write!(f, "token     none sent"),
            Step::Credentials { source } => write!(f, "token     from {source}"),
            Step::Token {
                issuer,
                result: "ok",
            } => write!(
                f,
                "token     valid, issuer {}",
                issuer.as_deref().unwrap_or("-")
            ),
            Step::Token { issuer, result } => write!(
                f,
                "token     refused: {result} (issuer {})",
                issuer.as_deref().unwrap_or("not identified")
            ),
            Step::Dpop { htu, result } => write!(
                f,
                "dpop      proof {} (htu {})",
                if *result == "ok" {
                    "valid: typ, alg, key, signature, htm, htu, iat, jti, ath, cnf.jkt".to_string()
                } else {
                    format!("refused: {result}")
                },
                htu.as_deref().unwrap_or("unknown")
            ),
            Step::Introspection { issuer, source } => write!(
                f,
                "introspect by issuer {issuer}, answer from {}",
                if *source == "cache" {
                    "the cache"
                } else {
                    "its endpoint (RFC 7662)"
                }
            ),
            Step::Scopes {
                required,
                granted,
                missing,
            } => match missing {
                None => write!(f, "scopes    required {required}; granted {granted:?}: ok"),
                Some(m) => write!(
                    f,
                    "scopes    required {required}; granted {granted:?}: missing ({m})"
                ),
            },
            Step::Client { client_id } => write!(
                f,
                "client    {}",
                client_id.as_deref().unwrap_or("none named")
            ),
            Step::Limit {
                scope,
                source,
                key,
                allowed,
                limit,
                remaining,
            } => write!(
                f,
                "limit     {scope}: key {key} (from {source}): {}, {remaining} of {limit} left",
                if *allowed { "allowed" } else { "refused" }
            ),
            Step::WouldDeny { status, reason } => {
                write!(
                    f,
                    "report    would refuse {status} ({reason}); not enforced"
                )
            }
            Step::Verdict { status: 0, .. } => write!(f, "verdict   forwarded"),
            Step::Verdict { status, reason } => write!(f, "verdict   {status} ({reason})"),
        }
    }
}
