//! Instructions per request, beside a bare pingora proxy: `cargo bench --bench instructions`
//! (or `make bench-instructions`).
//!
//! req/s on these shared machines swings ±20 % between rounds; instruction counts do not.
//! Each row runs one proxy (one worker thread) under `valgrind --tool=callgrind`, sends
//! `BENCH_WARMUP_REQS` (300) keep-alive requests, zeroes the counters
//! (`callgrind_control -z`), sends `BENCH_REQS` (2000) keep-alive `GET`s on one connection,
//! dumps (`callgrind_control -d`) and divides the dump's total by the number of requests:
//! user-space instructions per request, repeatable to about 0.5 %.
//!
//! Rows: the bare pingora proxy (`benches/bare/main.rs`, built with the same crate,
//! features, profile and allocator), the same with an 800-byte `Authorization` header, and
//! the gateway on a public route, a JWT route (one cached RS256 token), JWT + a memory limit
//! that never trips, JWT + the same limit on Redis (when `redis-server` is installed), and
//! the walk (a new RS256 token every request), a DPoP route (a bound token, cached, with a new
//! ES256 proof every request: the proof is verified every time by design, and its `jti`
//! enters the replay cache) and an opaque token on an introspecting issuer (a cache hit after
//! the first call). The upstream and the introspection endpoint are tiny keep-alive HTTP
//! servers in this process; the tokens and proofs are minted in this process and the gateway
//! reads the JWKS from a file, so nothing else runs inside the measured process.
//!
//! `BENCH_ROWS=bare,public` measures only the rows whose names contain one of the words.
//! `BENCH_KEEP=1` keeps the temp dir (configs, logs, callgrind dumps for
//! `callgrind_annotate`). Exit status 0 whatever the figures; non-zero only when the
//! benchmark itself could not run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use wetrials_gateway::demo::{KeyAlg, LocalIssuer, SigningKey};

/// The pinned tools of the wrk benchmark; only valgrind's pin serves here.
#[allow(dead_code)]
#[path = "gateway/install.rs"]
mod install;
use install::have;

type Res<T> = Result<T, String>;

const GATEWAY_BIN: &str = env!("CARGO_BIN_EXE_wetrials-gateway");
const BARE_BIN: &str = env!("CARGO_BIN_EXE_bare-pingora");
const GATEWAY_TOML: &str = include_str!("gateway/gateway.toml");
const ISSUER: &str = "https://auth.bench.local";
const AUDIENCE: &str = "https://api.wetrials.com";
const SCOPE: &str = "read:studies";
/// The `Authorization` header of the JWT rows (and of the bare row that carries one).
const HEADER_BYTES: usize = 800;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ------------------------------------------------------------------ the upstream

/// A keep-alive HTTP/1.1 server on loopback answering every request (its head read, then its
/// `Content-Length` body) with the same `response` bytes; its address.
fn start_server(response: Vec<u8>) -> Res<String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener
        .local_addr()
        .map_err(|e| e.to_string())?
        .to_string();
    let response = std::sync::Arc::new(response);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let response = response.clone();
            std::thread::spawn(move || answer_each(conn, &response));
        }
    });
    Ok(addr)
}

fn answer_each(conn: TcpStream, response: &[u8]) {
    let _ = conn.set_nodelay(true);
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    loop {
        let mut length = 0usize;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" || line == "\n" => break,
                Ok(_) => {
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() || writer.write_all(response).is_err() {
            return;
        }
    }
}

/// The upstream: a 2-byte 200 to everything.
fn start_upstream() -> Res<String> {
    start_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok".to_vec(),
    )
}

/// An RFC 7662 endpoint answering every call: the opaque token is active, with the scope.
fn start_introspection() -> Res<String> {
    let exp = wetrials_gateway::demo::now() + 6 * 3600;
    let body = serde_json::json!({
        "active": true, "scope": SCOPE, "sub": "bench-opaque", "client_id": "bench",
        "iss": ISSUER, "aud": AUDIENCE, "exp": exp, "token_type": "access_token",
    })
    .to_string();
    start_server(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

// ------------------------------------------------------------------ the client

/// One keep-alive connection sending `GET path` with `headers`, reading each response.
struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: &str) -> Res<Client> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        Ok(Client { stream, reader })
    }

    /// Send one request; the response status.
    fn get(&mut self, path: &str, headers: &str) -> Res<u16> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n{headers}\r\n");
        self.stream
            .write_all(req.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader
                .read_line(&mut line)
                .map_err(|e| e.to_string())?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        self.reader
            .read_exact(&mut body)
            .map_err(|e| e.to_string())?;
        Ok(status)
    }
}

// ------------------------------------------------------------------ callgrind

/// A process under callgrind, killed on drop.
struct Measured {
    child: Child,
    dump_prefix: PathBuf,
}

impl Measured {
    fn start(dir: &Path, name: &str, program: &str, args: &[String]) -> Res<Measured> {
        let dump_prefix = dir.join(format!("callgrind.{name}"));
        let log =
            std::fs::File::create(dir.join(format!("{name}.log"))).map_err(|e| e.to_string())?;
        let mut cmd = Command::new("valgrind");
        cmd.arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", dump_prefix.display()))
            .arg("--dump-instr=no")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let child = cmd.spawn().map_err(|e| format!("valgrind: {e}"))?;
        Ok(Measured { child, dump_prefix })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn control(&self, flag: &str) -> Res<()> {
        let out = Command::new("callgrind_control")
            .arg(flag)
            .arg(self.pid().to_string())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "callgrind_control {flag}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// The `summary:`/`totals:` instruction count of the newest dump.
    fn dumped_total(&self) -> Res<u64> {
        let dir = self.dump_prefix.parent().unwrap_or(Path::new("."));
        let stem = self
            .dump_prefix
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut dumps: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
            .map_err(|e| e.to_string())?
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{stem}."))
            })
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        dumps.sort();
        let (_, newest) = dumps.last().ok_or("no callgrind dump was written")?;
        let text = std::fs::read_to_string(newest).map_err(|e| e.to_string())?;
        text.lines()
            .find_map(|l| {
                l.strip_prefix("summary:")
                    .or_else(|| l.strip_prefix("totals:"))
            })
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| format!("no total in {}", newest.display()))
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> Res<String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.to_string())
}

/// Wait until `path` on `addr` answers 200 (valgrind starts slowly).
fn wait_for(addr: &str, path: &str, headers: &str, proc_: &mut Measured) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = proc_.child.try_wait() {
            return Err(format!("exited with {status}"));
        }
        if let Ok(mut c) = Client::connect(addr) {
            if c.get(path, headers) == Ok(200) {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("{addr}{path} never answered 200"))
}

struct Row {
    name: &'static str,
    per_request: Option<f64>,
    note: String,
}

/// The floor a row is compared with: the bare proxy, with the `Authorization` header when
/// the row sends one of that size.
fn floor_of(name: &str) -> &'static str {
    let with_header = ["JWT", "walk", "DPoP", "pingora + header"]
        .iter()
        .any(|w| name.contains(w));
    if with_header {
        "bare pingora + header"
    } else {
        "bare pingora"
    }
}

/// Warm up, zero, send `n` requests (header `headers(i)`), dump: instructions per request.
fn measure(
    proc_: &Measured,
    addr: &str,
    path: &str,
    warmup: usize,
    n: usize,
    headers: &dyn Fn(usize) -> String,
) -> Res<f64> {
    let mut c = Client::connect(addr)?;
    for i in 0..warmup {
        let s = c.get(path, &headers(i))?;
        if s != 200 {
            return Err(format!("warm-up request answered {s}"));
        }
    }
    proc_.control("-z")?;
    for i in 0..n {
        let s = c.get(path, &headers(warmup + i))?;
        if s != 200 {
            return Err(format!("request {i} answered {s}"));
        }
    }
    proc_.control("-d")?;
    // The dump is written by the measured process itself; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match proc_.dumped_total() {
            Ok(total) => return Ok(total as f64 / n as f64),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

// ------------------------------------------------------------------ fixtures

struct Tokens {
    jwks: PathBuf,
    one: String,
    walk: Vec<String>,
    /// The DPoP client's key and the token bound to it (`cnf.jkt`), the same size as `one`.
    dpop_key: SigningKey,
    dpop_bound: String,
}

/// RS256 tokens padded to an `HEADER_BYTES` Authorization header; the JWKS on disk.
fn mint(dir: &Path, walk: usize) -> Res<Tokens> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let issuer = rt
        .block_on(LocalIssuer::start(Some(ISSUER), AUDIENCE))
        .map_err(|e| format!("local issuer: {e}"))?;
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, issuer.jwks().to_string()).map_err(|e| e.to_string())?;
    let dpop_key = SigningKey::generate("bench-dpop-client", KeyAlg::ES256)?;
    let jkt = dpop_key.thumbprint();
    let padded = |sub: &str, bound: bool| {
        let mut claims = issuer.claims(sub, SCOPE, 6 * 3600);
        if bound {
            claims["cnf"] = serde_json::json!({ "jkt": jkt });
        }
        let bare = issuer.mint(&claims).len() + "Authorization: Bearer ".len();
        // base64url grows 4/3: pad the claims so the header lands near HEADER_BYTES.
        let pad = HEADER_BYTES.saturating_sub(bare) * 3 / 4;
        claims["pad"] = serde_json::Value::String("x".repeat(pad.saturating_sub(10)));
        issuer.mint(&claims)
    };
    let one = padded("bench-user", false);
    let walk = (0..walk)
        .map(|i| padded(&format!("walk-{i:06}"), false))
        .collect();
    let dpop_bound = padded("bench-dpop-user", true);
    drop(rt);
    Ok(Tokens {
        jwks,
        one,
        walk,
        dpop_key,
        dpop_bound,
    })
}

fn gateway_config(
    dir: &Path,
    listen: &str,
    admin: &str,
    upstream: &str,
    rate_limit: &str,
    jwks: &Path,
    introspection: &str,
) -> String {
    let mut text = GATEWAY_TOML.to_string();
    for (k, v) in [
        ("LISTEN", listen),
        ("ADMIN", admin),
        ("DIR", &dir.to_string_lossy()),
        ("LEVEL", "warn"),
        ("ACCESS_LOG", "false"),
        ("RATE_LIMIT", rate_limit),
        ("ISSUER", ISSUER),
        ("AUDIENCE", AUDIENCE),
        ("JWKS", &jwks.to_string_lossy()),
        ("UPSTREAM", upstream),
        ("INTROSPECTION", introspection),
    ] {
        text = text.replace(&format!("{{{{{k}}}}}"), v);
    }
    text
}

// ------------------------------------------------------------------ main

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchmark could not run: {e}");
            ExitCode::from(1)
        }
    }
}

fn run() -> Res<()> {
    let valgrind = install::tool("valgrind")?;
    if !have("callgrind_control") {
        return Err("callgrind_control missing beside valgrind".into());
    }
    let warmup = env_num("BENCH_WARMUP_REQS", 300);
    let n = env_num("BENCH_REQS", 2000);
    let tmp = std::env::temp_dir().join(format!("wtgw-instr-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
    let upstream = start_upstream()?;
    let introspection = format!(
        "introspection_endpoint = \"http://{}/introspect\"\nintrospection_client_id = \"gateway\"\nintrospection_client_secret = \"bench-secret\"\nintrospection_cache_secs = 3600",
        start_introspection()?
    );
    // A 43-character opaque token, as authorization servers issue them (256 random bits).
    let opaque = format!("Authorization: Bearer {}\r\n", "o".repeat(43));
    let tokens = mint(&tmp, warmup + n)?;
    let bearer = format!("Authorization: Bearer {}\r\n", tokens.one);
    println!(
        "instructions per request (callgrind), {warmup} warm-up + {n} measured keep-alive GETs; Authorization header {} bytes",
        bearer.len() - 2
    );
    println!("valgrind: {}", valgrind.describe());
    let mut rows: Vec<Row> = Vec::new();

    // Bare pingora, without and with the header.
    {
        let listen = free_addr()?;
        let mut p = Measured::start(
            &tmp,
            "bare",
            BARE_BIN,
            &[
                "--listen".into(),
                listen.clone(),
                "--upstream".into(),
                upstream.clone(),
                "--threads".into(),
                "1".into(),
            ],
        )?;
        wait_for(&listen, "/public", "", &mut p)?;
        for (name, headers) in [
            ("bare pingora", String::new()),
            ("bare pingora + header", bearer.clone()),
        ] {
            add(&mut rows, name, || {
                measure(&p, &listen, "/public", warmup, n, &|_| headers.clone())
            });
        }
    }

    // The gateway, memory backend: public, JWT, JWT + limit, walk.
    let redis = if have("redis-server") {
        start_redis(&tmp).ok()
    } else {
        None
    };
    // The memory and Redis backends, each once as shipped and once with
    // `preserve_header_case = false` (headers edited without pingora's spelling map).
    let backends: Vec<(&str, String)> = {
        let memory = "[rate_limit]\nbackend = \"memory\"".to_string();
        let redis = redis.as_ref().map(|(_, url)| {
            format!("[rate_limit]\nbackend = \"redis\"\nredis_url = \"{url}\"\ntimeout_ms = 1000\non_backend_error = \"fail_closed\"")
        });
        let mut v = vec![("memory", memory.clone())];
        v.extend(redis.clone().map(|r| ("redis", r)));
        v.push(("memory-unspelled", memory));
        v.extend(redis.map(|r| ("redis-unspelled", r)));
        v
    };
    for (backend, rate_limit) in &backends {
        let unspelled = backend.ends_with("-unspelled");
        let wanted: &[&str] = match *backend {
            "memory" => &[
                "gateway, public route",
                "gateway, JWT route (cached token)",
                "gateway, JWT + memory limit",
                "gateway, DPoP route (cached token, new proof each)",
                "gateway, introspected opaque token (cache hit)",
                "gateway, walk (new RS256 token each)",
            ],
            "redis" => &["gateway, JWT + Redis limit"],
            "memory-unspelled" => &[
                "gateway, public route, preserve_header_case = false",
                "gateway, JWT + memory limit, preserve_header_case = false",
            ],
            _ => &["gateway, JWT + Redis limit, preserve_header_case = false"],
        };
        if !wanted.iter().any(|name| selected(name)) {
            continue;
        }
        let d = tmp.join(format!("gateway-{backend}"));
        std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        let listen = free_addr()?;
        let admin = free_addr()?;
        let conf = d.join("gateway.toml");
        let mut text = gateway_config(
            &d,
            &listen,
            &admin,
            &upstream,
            rate_limit,
            &tokens.jwks,
            &introspection,
        );
        if unspelled {
            text = text.replacen("[server]\n", "[server]\npreserve_header_case = false\n", 1);
        }
        std::fs::write(&conf, text).map_err(|e| e.to_string())?;
        let mut p = Measured::start(
            &tmp,
            &format!("gateway-{backend}"),
            GATEWAY_BIN,
            &["--config".into(), conf.to_string_lossy().into_owned()],
        )?;
        wait_for(&listen, "/public", "", &mut p)?;
        if *backend == "memory" {
            add(&mut rows, "gateway, public route", || {
                measure(&p, &listen, "/public", warmup, n, &|_| String::new())
            });
            add(&mut rows, "gateway, JWT route (cached token)", || {
                measure(&p, &listen, "/jwt", warmup, n, &|_| bearer.clone())
            });
            add(&mut rows, "gateway, JWT + memory limit", || {
                measure(&p, &listen, "/jwt-limited", warmup, n, &|_| bearer.clone())
            });
            // Proofs are made as the requests go (an `iat` older than 60 s is refused).
            let dpop = |_: usize| {
                let proof = tokens.dpop_key.dpop_proof(
                    "GET",
                    "http://bench/dpop",
                    Some(&tokens.dpop_bound),
                );
                format!(
                    "Authorization: DPoP {}\r\nDPoP: {proof}\r\n",
                    tokens.dpop_bound
                )
            };
            add(
                &mut rows,
                "gateway, DPoP route (cached token, new proof each)",
                || measure(&p, &listen, "/dpop", warmup, n, &dpop),
            );
            add(
                &mut rows,
                "gateway, introspected opaque token (cache hit)",
                || measure(&p, &listen, "/opaque", warmup, n, &|_| opaque.clone()),
            );
            add(&mut rows, "gateway, walk (new RS256 token each)", || {
                measure(&p, &listen, "/jwt", warmup, n, &|i| {
                    format!("Authorization: Bearer {}\r\n", tokens.walk[i])
                })
            });
        } else if *backend == "redis" {
            add(&mut rows, "gateway, JWT + Redis limit", || {
                measure(&p, &listen, "/jwt-limited", warmup, n, &|_| bearer.clone())
            });
        } else if *backend == "memory-unspelled" {
            add(
                &mut rows,
                "gateway, public route, preserve_header_case = false",
                || measure(&p, &listen, "/public", warmup, n, &|_| String::new()),
            );
            add(
                &mut rows,
                "gateway, JWT + memory limit, preserve_header_case = false",
                || measure(&p, &listen, "/jwt-limited", warmup, n, &|_| bearer.clone()),
            );
        } else {
            add(
                &mut rows,
                "gateway, JWT + Redis limit, preserve_header_case = false",
                || measure(&p, &listen, "/jwt-limited", warmup, n, &|_| bearer.clone()),
            );
        }
    }
    if redis.is_none() {
        rows.push(Row {
            name: "gateway, JWT + Redis limit",
            per_request: None,
            note: "redis-server not installed".into(),
        });
    }
    if let Some((mut child, _)) = redis {
        let _ = child.kill();
        let _ = child.wait();
    }

    print_table(&rows);
    if std::env::var("BENCH_KEEP").is_ok() {
        println!("kept {}", tmp.display());
    } else {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}

/// `BENCH_ROWS=public,memory` measures only the rows whose names contain one of those words
/// (the bare proxy's rows included); unset, every row.
fn add(rows: &mut Vec<Row>, name: &'static str, measure: impl FnOnce() -> Res<f64>) {
    if selected(name) {
        rows.push(row(name, measure()));
    }
}

fn selected(name: &str) -> bool {
    match std::env::var("BENCH_ROWS") {
        Ok(words) => words
            .split(',')
            .map(str::trim)
            .any(|w| !w.is_empty() && name.contains(w)),
        Err(_) => true,
    }
}

fn row(name: &'static str, r: Res<f64>) -> Row {
    match r {
        Ok(v) => Row {
            name,
            per_request: Some(v),
            note: String::new(),
        },
        Err(e) => Row {
            name,
            per_request: None,
            note: e,
        },
    }
}

/// A throwaway redis-server on a free port: (process, URL).
fn start_redis(dir: &Path) -> Res<(Child, String)> {
    let addr = free_addr()?;
    let port = addr.rsplit(':').next().unwrap_or("0").to_string();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&addr).is_err() {
        if Instant::now() > deadline {
            return Err("redis-server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((child, format!("redis://{addr}")))
}

fn print_table(rows: &[Row]) {
    let floor = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .and_then(|r| r.per_request)
    };
    println!("\n| proxy | instructions / request | ratio to the floor |");
    println!("|---|---:|---|");
    for r in rows {
        let Some(v) = r.per_request else {
            println!("| {} | — | {} |", r.name, r.note);
            continue;
        };
        let base_name = floor_of(r.name);
        let ratio = if r.name.starts_with("bare pingora") {
            "floor".to_string()
        } else {
            match floor(base_name) {
                Some(b) => format!("{:.2}× {base_name}", v / b),
                None => "—".into(),
            }
        };
        println!("| {} | {:.1}k | {ratio} |", r.name, v / 1000.0);
    }
}
