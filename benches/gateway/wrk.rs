//! The load generator: `wrk -t1 -c64` on CPU 0, and reading its output.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::procs::{spawn_registered, LIVE};
use crate::{Res, CONNECTIONS};

#[derive(Debug, Clone, Default)]
pub(crate) struct WrkResult {
    pub(crate) rps: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) requests: u64,
    pub(crate) non2xx: u64,
    pub(crate) socket_errors: u64,
}

/// `1.23ms` -> 1230.0 (µs).
fn parse_duration_us(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let mult = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    Some(v * mult)
}

pub(crate) fn parse_wrk(out: &str) -> Res<WrkResult> {
    let mut r = WrkResult::default();
    let mut got_rps = false;
    let mut in_dist = false;
    for line in out.lines() {
        let t = line.trim();
        if t.starts_with("Latency Distribution") {
            in_dist = true;
            continue;
        }
        if in_dist {
            if let Some((pct, val)) = t.split_once('%') {
                match pct.trim() {
                    "50" => r.p50_us = parse_duration_us(val).unwrap_or(f64::NAN),
                    "99" => r.p99_us = parse_duration_us(val).unwrap_or(f64::NAN),
                    _ => {}
                }
                continue;
            }
            in_dist = false;
        }
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v
                .trim()
                .parse()
                .map_err(|_| format!("bad Requests/sec: {t}"))?;
            got_rps = true;
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.non2xx = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            r.socket_errors = v
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        } else if t.contains(" requests in ") {
            r.requests = t
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    if !got_rps {
        return Err(format!("could not read wrk's output:\n{out}"));
    }
    Ok(r)
}

/// What one row sends.
#[derive(Clone)]
pub(crate) struct Load {
    pub(crate) url: String,
    pub(crate) headers: Vec<String>,
    /// Lua script and its arguments.
    pub(crate) script: Option<(PathBuf, Vec<String>)>,
}

impl Load {
    /// `GET http://ADDR PATH`, nothing else.
    pub(crate) fn plain(addr: &str, path: &str) -> Load {
        Load {
            url: format!("http://{addr}{path}"),
            headers: Vec::new(),
            script: None,
        }
    }

    /// The same with `Authorization: Bearer TOKEN`.
    pub(crate) fn bearer(addr: &str, path: &str, token: &str) -> Load {
        Load {
            headers: vec![format!("Authorization: Bearer {token}")],
            ..Load::plain(addr, path)
        }
    }
}

pub(crate) fn wrk_command(load: &Load, secs: f64) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0", "wrk", "-t1"])
        .arg(format!("-c{CONNECTIONS}"))
        .arg(format!("-d{}s", secs.max(1.0).round() as u64))
        .arg("--latency");
    for h in &load.headers {
        cmd.arg("-H").arg(h);
    }
    if let Some((script, _)) = &load.script {
        cmd.arg("-s").arg(script);
    }
    cmd.arg(&load.url);
    if let Some((_, args)) = &load.script {
        cmd.args(args);
    }
    cmd.stdin(Stdio::null());
    cmd
}

pub(crate) fn run_wrk(load: &Load, secs: f64) -> Res<WrkResult> {
    let child = spawn_registered(
        wrk_command(load, secs)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .map_err(|e| format!("wrk: {e}"))?;
    let pid = child.id();
    let out = child.wait_with_output();
    if let Ok(mut live) = LIVE.lock() {
        live.retain(|p| *p != pid);
    }
    let out = out.map_err(|e| format!("wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "wrk failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse_wrk(&text)
}
