//! Claims turned into headers: `sub`, `client_id`/`azp`, `scope`/`scp` reach
//! the upstream as `X-Auth-Subject`, `X-Auth-Client-Id`, `X-Auth-Scopes` exactly as the token
//! says, or the token is refused with 401 `invalid_token` and a fixed description, and nothing
//! reaches the upstream. Never trimmed, split, re-decoded or silently dropped.

mod common;

use common::*;
use serde_json::{json, Value};

/// `studies` `GET /v1/studies/{id}` needs `read:studies`; `any` `/v1/any/*` any valid token.
struct Env {
    issuer: LocalIssuer,
    echo: EchoUpstream,
    gw: TestGateway,
}

impl Env {
    async fn start() -> Env {
        let issuer = local_issuer().await;
        let echo = echo_upstream().await;
        let cfg = Config::new()
            .issuer(IssuerSpec::local("main", &issuer))
            .upstream(UpstreamSpec::echo("api", &echo))
            .route(
                RouteSpec::new("studies", "/v1/studies/{id}", "api")
                    .methods(&["GET"])
                    .scopes(&["read:studies"]),
            )
            .route(RouteSpec::new("any", "/v1/any/*", "api"));
        let gw = TestGateway::start(&cfg).await;
        Env { issuer, echo, gw }
    }

    /// A token for `user-1` with `read:studies`, `client_id` `demo-client`, changed by `patch`
    /// (a `null` removes a claim).
    fn mint(&self, changes: Value) -> String {
        let claims = self.issuer.claims("user-1", "read:studies", 3600);
        self.issuer.mint(&patch(claims, changes))
    }

    /// `GET path` with the token: the reply, and whether the upstream was reached.
    async fn get(&self, path: &str, token: &str) -> (Reply, bool) {
        let before = self.echo.hits();
        let r = send(self.gw.get(path).bearer_auth(token)).await;
        (r, self.echo.hits() != before)
    }

    /// The token is refused: 401 `invalid_token` naming `claim` (never its value), and the
    /// upstream got nothing.
    async fn refuses(&self, path: &str, token: &str, claim: &str, value: &str, what: &str) {
        let (r, reached) = self.get(path, token).await;
        assert!(
            !reached,
            "{what}: a refused token reached the upstream: {}",
            r.describe()
        );
        assert_eq!(
            r.status,
            401,
            "{what}: expected 401, got:\n{}",
            r.describe()
        );
        let description = assert_invalid_token(&r);
        assert_eq!(
            description,
            format!("token claim {claim} cannot be forwarded faithfully"),
            "{what}"
        );
        let text = r.text();
        assert!(!text.contains(token), "{what}: the answer echoes the token");
        if value.trim().len() > 2 {
            assert!(
                !text.contains(value.trim()),
                "{what}: the answer echoes the claim value: {text}"
            );
        }
    }

    /// The token is accepted: the upstream got the request; its `x-auth-*` headers.
    async fn forwards(&self, path: &str, token: &str, what: &str) -> Value {
        let (r, reached) = self.get(path, token).await;
        assert_eq!(
            r.status,
            200,
            "{what}: expected 200, got:\n{}",
            r.describe()
        );
        assert!(reached, "{what}: 200 without reaching the upstream");
        r.echo()["headers"].clone()
    }
}

/// Values an upstream would not read back as the token says them: trimmed (edge spaces),
/// normalised or split (tab), refused by the header parser and so silently dropped (CR, LF,
/// NUL, DEL and other controls), or decoded as Latin-1 by WSGI-style stacks (non-ASCII).
const UNFORWARDABLE: &[&str] = &[
    " admin",
    "admin ",
    "  ",
    "",
    "ad\tmin",
    "admin\r\nx-auth-scopes: admin:write",
    "admin\n",
    "ad\u{0}min",
    "ad\u{7f}min",
    "ad\u{1b}min",
    "jos\u{e9}",
    "\u{1f600}",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_is_forwarded_exactly_or_rejected_401() {
    let env = Env::start().await;
    for good in ["user one", "a\"b\\c", "~!@#$%^&*()_+=[]{};':,./<>?`|", "42"] {
        let h = env
            .forwards("/v1/any/x", &env.mint(json!({"sub": good})), good)
            .await;
        assert_eq!(h["x-auth-subject"], good, "{h}");
    }
    for bad in UNFORWARDABLE {
        let t = env.mint(json!({"sub": bad}));
        env.refuses("/v1/any/x", &t, "sub", bad, &format!("sub {bad:?}"))
            .await;
    }
    // A token without `sub` is still fine: no header, nothing invented.
    let h = env
        .forwards("/v1/any/x", &env.mint(json!({"sub": null})), "no sub")
        .await;
    assert!(h.get("x-auth-subject").is_none(), "{h}");
    let m = env.gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "gateway_auth_decisions_total",
            &[("issuer", "main"), ("result", "unforwardable_claim")]
        ),
        UNFORWARDABLE.len() as f64,
        "each refusal is counted under its own reason"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_and_azp_are_forwarded_exactly_or_rejected_401() {
    let env = Env::start().await;
    let h = env
        .forwards(
            "/v1/any/x",
            &env.mint(json!({"client_id": "app one"})),
            "client_id",
        )
        .await;
    assert_eq!(h["x-auth-client-id"], "app one", "{h}");
    let h = env
        .forwards(
            "/v1/any/x",
            &env.mint(json!({"client_id": null, "azp": "spa-1"})),
            "azp",
        )
        .await;
    assert_eq!(h["x-auth-client-id"], "spa-1", "{h}");
    for bad in UNFORWARDABLE {
        let t = env.mint(json!({"client_id": bad}));
        env.refuses(
            "/v1/any/x",
            &t,
            "client_id",
            bad,
            &format!("client_id {bad:?}"),
        )
        .await;
        let t = env.mint(json!({"client_id": null, "azp": bad}));
        env.refuses("/v1/any/x", &t, "azp", bad, &format!("azp {bad:?}"))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_string_outside_rfc6749_grammar_is_rejected_401() {
    let env = Env::start().await;
    // Runs of spaces separate scope-tokens as one space does; the header is rebuilt.
    let h = env
        .forwards(
            "/v1/studies/1",
            &env.mint(json!({"scope": " read:studies   read:profile "})),
            "runs of spaces",
        )
        .await;
    assert_eq!(h["x-auth-scopes"], "read:studies read:profile", "{h}");
    for bad in [
        "read:profile\tread:studies",
        "read:studies\r\nx-auth-subject: admin",
        "read:studies\n",
        "read:studies \u{0}",
        "read:studies \u{7f}",
        "read:studies \"admin\"",
        "read:studies a\\b",
        "read:studies r\u{e9}ad",
        "read:studies\u{a0}admin:write",
    ] {
        let t = env.mint(json!({"scope": bad}));
        env.refuses("/v1/studies/1", &t, "scope", "", &format!("scope {bad:?}"))
            .await;
        let t = env.mint(json!({"scope": null, "scp": bad}));
        env.refuses(
            "/v1/studies/1",
            &t,
            "scp",
            "",
            &format!("scp string {bad:?}"),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scp_array_element_with_a_space_is_rejected_401_not_split_into_scopes() {
    let env = Env::start().await;
    let h = env
        .forwards(
            "/v1/studies/1",
            &env.mint(json!({"scope": null, "scp": ["read:profile", "read:studies"]})),
            "scp array",
        )
        .await;
    assert_eq!(h["x-auth-scopes"], "read:profile read:studies", "{h}");
    // One element "read:profile read:studies" is not two scopes: before the fix it granted
    // `read:studies` and was forwarded as two.
    for bad in [
        json!(["read:profile read:studies"]),
        json!(["read:studies", ""]),
        json!(["read:studies", " admin"]),
        json!(["read:studies", "admin\twrite"]),
        json!(["read:studies", "admin\r\n"]),
        json!(["read:studies", "\u{e9}"]),
    ] {
        let t = env.mint(json!({"scope": null, "scp": bad}));
        env.refuses("/v1/studies/1", &t, "scp", "", &format!("scp {bad}"))
            .await;
    }
}
