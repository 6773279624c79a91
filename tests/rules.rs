//! Route-table tests (`wetrials-gateway test`), end to end through the binary: the shipped
//! cases pass against the shipped config; a failing case prints its diff and the decision
//! trace and exits 1; `--format junit` reports the same; a bad cases file is refused with
//! every problem located (exit 2); a token given in a case is never printed.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const RUN: Duration = Duration::from_secs(60);

fn shipped(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn the_shipped_route_table_passes_its_shipped_cases() {
    let (status, out, err) = run_bin(
        &[
            "test",
            "--config",
            &shipped("gateway.toml"),
            &shipped("gateway.tests.toml"),
        ],
        &[],
        RUN,
    );
    assert_eq!(status.code(), Some(0), "{out}\n{err}");
    let summary = out.lines().last().unwrap_or_default();
    let passed: usize = summary
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary line: {out}"));
    assert!(summary.ends_with("passed, 0 failed"), "{summary}");
    // An allow and a deny case for each of the 19 routes, at least.
    assert!(passed >= 38, "{summary}");
    assert!(out.lines().filter(|l| l.starts_with("ok    ")).count() == passed);
}

#[test]
fn a_failing_case_prints_its_diff_and_the_decision_then_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    // A literal token (a stand-in JWT that does not verify) must never be printed.
    let literal = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2VjcmV0LXNpZ25hdHVyZS1ieXRlcw";
    let cases = write(
        dir.path(),
        "cases.toml",
        &format!(
            r#"
[[case]]
name = "reader cannot write studies"
request = {{ method = "POST", path = "/v1/studies/42" }}
token = {{ sub = "u1", scope = "read:studies write:studies" }}
expect = {{ status = 403, route = "studies-write", scope = "write:studies" }}

[[case]]
name = "a literal token that does not verify"
request = {{ path = "/v1/studies/42" }}
token = "{literal}"
expect = {{ status = 200 }}

[[case]]
name = "this one passes"
request = {{ path = "/v1/nowhere" }}
expect = {{ status = 404, route = "none" }}
"#
        ),
    );
    let (status, out, err) = run_bin(
        &[
            "test",
            "--config",
            &shipped("gateway.toml"),
            cases.to_str().unwrap(),
        ],
        &[],
        RUN,
    );
    assert_eq!(status.code(), Some(1), "{out}\n{err}");
    assert!(out.contains("FAIL  reader cannot write studies"), "{out}");
    assert!(
        out.contains("status: expected 403, got 200 (forwarded)"),
        "{out}"
    );
    assert!(out.contains("route     studies-write"), "{out}");
    assert!(out.contains("missing") || out.contains(": ok"), "{out}");
    assert!(
        out.contains("FAIL  a literal token that does not verify"),
        "{out}"
    );
    assert!(out.contains("token     refused"), "{out}");
    assert!(out.contains("ok    this one passes"), "{out}");
    assert!(out.trim_end().ends_with("1 passed, 2 failed"), "{out}");
    assert!(
        !out.contains(literal) && !err.contains(literal),
        "token printed:\n{out}"
    );
    assert!(
        !out.contains("c2VjcmV0LXNpZ25hdHVyZS1ieXRlcw"),
        "signature printed"
    );

    let (status, xml, _) = run_bin(
        &[
            "test",
            "--format",
            "junit",
            "--config",
            &shipped("gateway.toml"),
            cases.to_str().unwrap(),
        ],
        &[],
        RUN,
    );
    assert_eq!(status.code(), Some(1));
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert!(xml.contains(r#"tests="3" failures="2""#), "{xml}");
    assert_eq!(xml.matches("<failure ").count(), 2, "{xml}");
    assert!(xml.contains(r#"name="this one passes"/>"#), "{xml}");
    assert!(!xml.contains(literal));
}

#[test]
fn a_bad_cases_file_is_refused_with_every_problem_located() {
    let dir = tempfile::tempdir().unwrap();
    let cases = write(
        dir.path(),
        "bad.toml",
        r#"
[[case]]
name = "one"
request = { path = "/v1/x", colour = "red" }
expect = { status = 99 }

[[case]]
name = "one"
request = { path = "/v1/y" }
repeat = 0
expect = { status = 200, route = 7 }
"#,
    );
    let (status, out, err) = run_bin(
        &[
            "test",
            "--config",
            &shipped("gateway.toml"),
            cases.to_str().unwrap(),
        ],
        &[],
        RUN,
    );
    assert_eq!(status.code(), Some(2), "{out}\n{err}");
    let f = cases.to_str().unwrap();
    for want in [
        format!("{f}: case 1 (\"one\").request: unknown key \"colour\""),
        format!("{f}: case 1 (\"one\").expect.status"),
        format!("{f}: case 2 (\"one\").repeat"),
        format!("{f}: case 2 (\"one\").expect.route"),
        format!("{f}: case 2 (\"one\"): name \"one\" is also case 1"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    assert!(out.is_empty(), "no case runs when the file is bad: {out}");
}
