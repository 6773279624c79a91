//! The command line: `check --config`, `--config` refusing an invalid file, `${ENV}`
//! substitution, `--help`, and the `demo` subcommand end to end (its printed curl commands
//! really give 200 / 403 / 401).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const RUN: Duration = Duration::from_secs(20);

fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// A small valid config; `{peer}` and `{jwks}` are filled in.
fn valid_toml(peer: &str, jwks: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:18080"

[admin]
listen = "127.0.0.1:19091"

[[issuers]]
name = "main"
issuer = "https://auth.example.test"
audiences = ["https://api.example.test"]
jwks_uri = "{jwks}"
algorithms = ["RS256", "ES256"]

[[upstreams]]
name = "api"
peers = ["{peer}"]

[[routes]]
name = "studies-read"
methods = ["GET"]
path = "/v1/studies/{{id}}"
upstream = "api"
scopes = ["read:studies"]
[routes.rate_limit]
requests = 20
period = "1m"
key = ["cookie:session", "ip"]
"#
    )
}

/// Lines of the form `  - location: message`.
fn problems(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("- "))
        .collect()
}

#[test]
fn check_shipped_config_exits_0() {
    let path = shipped_config();
    let (status, out, err) = run_bin(&["check", "--config", path.to_str().unwrap()], &[], RUN);
    assert!(
        status.success(),
        "check config/gateway.toml failed:\n{out}\n{err}"
    );
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn check_valid_config_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "ok.toml",
        &valid_toml("127.0.0.1:9000", "http://127.0.0.1:8900/jwks.json"),
    );
    let (status, out, err) = run_bin(&["check", "--config", &f], &[], RUN);
    assert!(status.success(), "{out}\n{err}");
}

#[test]
fn check_broken_config_reports_every_problem_with_location() {
    let dir = tempfile::tempdir().unwrap();
    let bad = valid_toml("127.0.0.1:9000", "relative/jwks.json")
        .replace(
            "listen = \"127.0.0.1:18080\"",
            "listen = \"not-an-address\"",
        )
        .replace(
            "algorithms = [\"RS256\", \"ES256\"]",
            "algorithms = [\"RS256\", \"HS256\", \"none\"]",
        )
        .replace("upstream = \"api\"", "upstream = \"apx\"")
        .replace("methods = [\"GET\"]", "methods = [\"get\"]")
        .replace("period = \"1m\"", "period = \"soon\"")
        .replace("\"cookie:session\"", "\"cookie:\"");
    let f = write(dir.path(), "bad.toml", &bad);
    let (status, out, err) = run_bin(&["check", "--config", &f], &[], RUN);
    assert!(
        !status.success(),
        "a broken file passed check:\n{out}\n{err}"
    );
    for expected in [
        "server.listen",
        "issuers[0] \"main\".jwks_uri",
        "issuers[0] \"main\".algorithms[1]",
        "issuers[0] \"main\".algorithms[2]",
        "routes[0] \"studies-read\".upstream",
        "apx",
        "routes[0] \"studies-read\".methods[0]",
        "routes[0] \"studies-read\".rate_limit.period",
        "routes[0] \"studies-read\".rate_limit.key[0]",
    ] {
        assert!(err.contains(expected), "{expected:?} not reported:\n{err}");
    }
    assert!(
        problems(&err).len() >= 8,
        "every problem on its own line:\n{err}"
    );
}

#[test]
fn check_unknown_key_is_reported_with_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let text = valid_toml("127.0.0.1:9000", "http://127.0.0.1:8900/jwks.json").replace(
        "scopes = [\"read:studies\"]",
        "scopes = [\"read:studies\"]\ncolour = \"blue\"",
    );
    let line = text.lines().position(|l| l.starts_with("colour")).unwrap() + 1;
    let f = write(dir.path(), "unknown.toml", &text);
    let (status, out, err) = run_bin(&["check", "--config", &f], &[], RUN);
    assert!(!status.success(), "unknown key accepted:\n{out}\n{err}");
    assert!(err.contains("colour"), "{err}");
    assert!(
        err.contains(&format!("line {line}")),
        "line {line} not named:\n{err}"
    );
}

#[test]
fn check_unknown_key_and_other_problems_are_all_reported() {
    // "every problem at once": an unknown key must not hide the other problems.
    let dir = tempfile::tempdir().unwrap();
    let text = valid_toml("127.0.0.1:9000", "http://127.0.0.1:8900/jwks.json")
        .replace(
            "algorithms = [\"RS256\", \"ES256\"]",
            "algorithms = [\"RS256\", \"HS256\"]",
        )
        .replace("upstream = \"api\"", "upstream = \"apx\"")
        .replace(
            "scopes = [\"read:studies\"]",
            "scopes = [\"read:studies\"]\ncolour = \"blue\"",
        );
    let line = text.lines().position(|l| l.starts_with("colour")).unwrap() + 1;
    let f = write(dir.path(), "mixed.toml", &text);
    let (status, _out, err) = run_bin(&["check", "--config", &f], &[], RUN);
    assert!(!status.success());
    assert!(
        err.contains("colour") && err.contains(&format!("line {line}")),
        "unknown key:\n{err}"
    );
    assert!(
        err.contains("HS256"),
        "the bad algorithm is not reported beside the unknown key:\n{err}"
    );
    assert!(
        err.contains("apx"),
        "the unknown upstream is not reported beside the unknown key:\n{err}"
    );
}

#[test]
fn check_invalid_toml_syntax_is_reported_with_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let text = valid_toml("127.0.0.1:9000", "http://127.0.0.1:8900/jwks.json")
        .replace("name = \"api\"", "name = \"api");
    let line = text.lines().position(|l| l == "name = \"api").unwrap() + 1;
    let f = write(dir.path(), "syntax.toml", &text);
    let (status, _out, err) = run_bin(&["check", "--config", &f], &[], RUN);
    assert!(!status.success());
    assert!(
        err.contains(&format!("line {line}")),
        "line {line} not named:\n{err}"
    );
}

#[test]
fn check_missing_file_exits_nonzero() {
    let (status, _out, err) = run_bin(
        &["check", "--config", "/nonexistent/wtgw/gateway.toml"],
        &[],
        RUN,
    );
    assert!(!status.success());
    assert!(err.contains("/nonexistent/wtgw/gateway.toml"), "{err}");
}

#[test]
fn serve_invalid_config_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let listen = DeadPort::new(); // reserved so nothing else listens there
    let text = valid_toml("127.0.0.1:9000", "http://127.0.0.1:8900/jwks.json")
        .replace("127.0.0.1:18080", &listen.addr.to_string())
        .replace("upstream = \"api\"", "upstream = \"apx\"")
        .replace(
            "algorithms = [\"RS256\", \"ES256\"]",
            "algorithms = [\"none\"]",
        );
    let f = write(dir.path(), "bad.toml", &text);
    let (status, _out, err) = run_bin(&["--config", &f], &[], RUN);
    assert!(!status.success(), "started with an invalid config:\n{err}");
    assert!(err.contains("routes[0] \"studies-read\".upstream"), "{err}");
    assert!(err.contains("issuers[0] \"main\".algorithms[0]"), "{err}");
}

#[test]
fn serve_without_config_prints_usage_and_fails() {
    let (status, out, err) = run_bin(&[], &[], RUN);
    assert!(!status.success());
    assert!(format!("{out}{err}").contains("--config"), "{out}{err}");
}

#[test]
fn help_mentions_check_and_demo() {
    let (status, out, err) = run_bin(&["--help"], &[], RUN);
    assert!(status.success(), "{err}");
    assert!(out.contains("check"), "{out}");
    assert!(out.contains("demo"), "{out}");
    assert!(out.contains("--config"), "{out}");
}

// ------------------------------------------------------------------ ${ENV}

#[test]
fn env_reference_is_substituted_in_check() {
    let dir = tempfile::tempdir().unwrap();
    let text = valid_toml("${WTGW_TEST_PEER}", "${WTGW_TEST_JWKS}");
    let f = write(dir.path(), "env.toml", &text);
    let env = [
        ("WTGW_TEST_PEER", "127.0.0.1:9000"),
        ("WTGW_TEST_JWKS", "http://127.0.0.1:8900/jwks.json"),
    ];
    let (status, out, err) = run_bin(&["check", "--config", &f], &env, RUN);
    assert!(status.success(), "{out}\n{err}");
    // The substituted value is validated like any other.
    let env = [
        ("WTGW_TEST_PEER", "127.0.0.1:9000"),
        ("WTGW_TEST_JWKS", "relative/path.json"),
    ];
    let (status, _out, err) = run_bin(&["check", "--config", &f], &env, RUN);
    assert!(!status.success());
    assert!(err.contains("jwks_uri"), "{err}");
}

#[test]
fn env_reference_missing_is_reported_with_location() {
    let dir = tempfile::tempdir().unwrap();
    let text = valid_toml("${WTGW_TEST_UNSET_PEER}", "http://127.0.0.1:8900/jwks.json");
    let f = write(dir.path(), "env.toml", &text);
    let (status, _out, err) = run_bin(&["check", "--config", &f], &[], RUN);
    assert!(!status.success(), "a missing variable passed");
    assert!(err.contains("WTGW_TEST_UNSET_PEER"), "{err}");
    assert!(err.contains("upstreams[0]"), "location not named:\n{err}");
    let (status, _out, err) = run_bin(&["--config", &f], &[], RUN);
    assert!(!status.success(), "served with a missing variable");
    assert!(err.contains("WTGW_TEST_UNSET_PEER"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_reference_is_substituted_when_serving() {
    let li = local_issuer().await;
    let echo = echo_upstream().await;
    let cfg = Config::new()
        .issuer(IssuerSpec::local("main", &li).jwks_uri("${WTGW_TEST_JWKS_URI}"))
        .upstream(UpstreamSpec::new(
            "api",
            &["${WTGW_TEST_UPSTREAM}".to_string()],
        ))
        .route(RouteSpec::new("api", "/v1/*", "api"))
        .env("WTGW_TEST_JWKS_URI", &li.jwks_uri())
        .env("WTGW_TEST_UPSTREAM", &echo.addr().to_string());
    let gw = TestGateway::start(&cfg).await;
    let r = gw
        .get_with_token("/v1/x", &token(&li, "env-user", ""))
        .await;
    assert_eq!(r.echo()["headers"]["x-auth-subject"], "env-user");
    assert_eq!(echo.hits(), 1);
}

// ------------------------------------------------------------------ demo

/// `(url, token)` of every printed curl command carrying a bearer token, in order.
fn demo_curls(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter(|l| l.starts_with("curl ") && l.contains("Authorization: Bearer "))
        .filter_map(|l| {
            let url = l
                .split_whitespace()
                .find(|w| w.starts_with("http://"))?
                .to_string();
            let token = l
                .split("Authorization: Bearer ")
                .nth(1)?
                .trim_end_matches('\'')
                .to_string();
            Some((url, token))
        })
        .collect()
}

/// The demo process, killed on drop.
struct Demo {
    child: std::process::Child,
    listen: std::net::SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Start `demo --listen --admin-listen` on free ports and wait for its `/readyz`.
    async fn start() -> Demo {
        let c = client();
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let log = dir.path().join("demo.log");
            let listen = free_addr();
            let mut admin = free_addr();
            while admin == listen {
                admin = free_addr();
            }
            let child = spawn_logged(
                &[
                    "demo",
                    "--listen",
                    &listen.to_string(),
                    "--admin-listen",
                    &admin.to_string(),
                ],
                &[],
                &log,
            );
            let mut demo = Demo {
                child,
                listen,
                log,
                _dir: dir,
            };
            let deadline = std::time::Instant::now() + READY_TIMEOUT;
            loop {
                if let Ok(Some(status)) = demo.child.try_wait() {
                    panic!("demo exited ({status}):\n{}", demo.output());
                }
                if demo.output().contains("is in use, will try again") {
                    break; // port taken meanwhile: retry with others
                }
                if matches!(c.get(format!("http://{admin}/readyz")).send().await, Ok(r) if r.status() == 200)
                {
                    return demo;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "demo not ready:\n{}",
                    demo.output()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("demo could not get free ports");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_curl_commands_whose_tokens_give_200_403_401() {
    let demo = Demo::start().await;
    let c = client();
    let out = demo.output();
    assert!(out.contains("curl "), "no curl commands printed:\n{out}");
    let curls = demo_curls(&out);
    assert!(
        curls.len() >= 3,
        "allowed / missing scope / expired commands expected:\n{out}"
    );
    for (url, _) in &curls {
        assert!(
            url.starts_with(&format!("http://{}/", demo.listen)),
            "{url} is not the demo gateway"
        );
    }
    let mut statuses = Vec::new();
    for (url, token) in curls.iter().take(3) {
        let r = send(c.get(url).bearer_auth(token)).await;
        statuses.push(r.status);
    }
    assert_eq!(
        statuses,
        vec![200, 403, 401],
        "allowed / missing scope / expired"
    );
    // The commands without a token behave as printed too.
    let plain: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("curl -si http://") && !l.contains("Authorization"))
        .collect();
    assert!(!plain.is_empty(), "{out}");
    let url = plain[0].split_whitespace().nth(2).unwrap();
    assert_eq!(send(c.get(url)).await.status, 401, "{}", plain[0]);
}

/// The printed DPoP block, run as printed by bash and curl: the fresh proof is accepted, the
/// same proof again is a replay, and the bound token sent as Bearer is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_dpop_commands_answer_200_then_replay_then_bound_as_bearer() {
    let demo = Demo::start().await;
    let out = demo.output();
    let lines: Vec<&str> = out.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("P=$(curl "))
        .unwrap_or_else(|| panic!("no DPoP proof command printed:\n{out}"));
    let script: Vec<&str> = lines[start..]
        .iter()
        .take_while(|l| !l.is_empty())
        .copied()
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert_eq!(
        script.len(),
        4,
        "proof + three requests expected: {script:?}"
    );
    assert!(script[1].contains("Authorization: DPoP ") && script[1].contains("DPoP: $P"));
    let script = script.join("\n");
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash")
            .args(["-c", &script])
            .output()
            .expect("bash")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let answers: Vec<&str> = stdout.split("HTTP/1.1 ").skip(1).collect();
    let status = |a: &str| a.get(..3).unwrap_or("").to_string();
    assert_eq!(
        answers.iter().map(|a| status(a)).collect::<Vec<_>>(),
        ["200", "401", "401"],
        "{stdout}"
    );
    let header = |a: &str| {
        a.lines()
            .find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
            .unwrap_or("")
            .to_string()
    };
    // The echo upstream saw the first request with the token's subject.
    assert!(answers[0].contains("user-123"), "{}", answers[0]);
    assert!(
        header(answers[1]).contains("DPoP ") && header(answers[1]).contains("invalid_dpop_proof"),
        "{}",
        answers[1]
    );
    assert!(
        header(answers[2]).contains("Bearer ") && header(answers[2]).contains("invalid_token"),
        "{}",
        answers[2]
    );
}
