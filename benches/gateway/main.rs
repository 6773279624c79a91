//! The gateway's wrk benchmark: `cargo bench --bench gateway` (or `make bench`).
//!
//! Everything runs on loopback. The load generator (`wrk -t1 -c64`), the upstream (nginx
//! `return 200`) and Redis are pinned to CPU 0; the proxy under test alone is pinned to CPU 1
//! with one worker, so req/s measures one core's proxy efficiency. Rows:
//!
//! 1. the upstream alone (the ceiling); 2. nginx as a plain reverse proxy; 3. Traefik and Caddy
//!    as plain reverse proxies; bare: a bare pingora 0.9 proxy (the floor: pingora's own cost);
//!    4. the gateway on a public route (4b: the same with the access log on); 5. a JWT route,
//!    one token; 6. a JWT route, 10k distinct tokens round robin; 7. row 5 plus a memory rate
//!    limit that never trips; 8. row 7 with the Redis backend; 4u and 7u: rows 4 and 7 on a
//!    gateway with `preserve_header_case = false` (headers edited without pingora's spelling
//!    map).
//!
//! Rows run interleaved for several rounds and the table shows medians, with each row's ratio
//! to the public route (×row4), to the bare pingora proxy (×bare) and to nginx (×row2). Then
//! an RSS check walks 100k distinct tokens through a rate-limited route (100k cached tokens,
//! 100k limiter keys). Environment: `BENCH_ROUNDS` (5), `BENCH_SECS` (5), `BENCH_WARMUP` (1),
//! `BENCH_TOKENS` (10000), `BENCH_WALK` (100000), `BENCH_PERF=1` (a 10 s `perf record` of the
//! gateway during row 5, summarised), `BENCH_KEEP=1` (keep the temp dir with configs and logs).
//!
//! Modules: `install` (the pinned tools), `procs` (processes, /proc), `net` (loopback probes),
//! `fixtures` (tokens), `proxies` (the processes under test and their rows), `wrk`, `rows`
//! (rounds, noise, medians), `walk` (the RSS check), `perf`, `report`. The configs they fill in
//! are the other files of this directory.
//!
//! The exit status is 0 whether or not the targets are met (this is a measurement); it is
//! non-zero only when the benchmark itself could not run.

mod fixtures;
mod install;
mod net;
mod perf;
mod procs;
mod proxies;
mod report;
mod rows;
mod walk;
mod wrk;

use std::process::ExitCode;

use proxies::{write, Lab};

type Res<T> = Result<T, String>;

const CONNECTIONS: u32 = 64;
/// A row whose proxy CPU was used this much (%) by other processes is flagged as disturbed.
const NOISY_OTHER_PCT: f64 = 5.0;
const ISSUER: &str = "https://auth.bench.local";
const AUDIENCE: &str = "https://api.wetrials.com";
const SCOPE: &str = "read:studies";
const TOKENS_LUA: &str = include_str!("tokens.lua");

/// What the environment asks for, and the machine's shape.
struct Settings {
    rounds: usize,
    /// Seconds of each measured run, and of the warm-up before it.
    secs: f64,
    warmup: f64,
    rr_count: usize,
    walk_count: usize,
    perf: bool,
    keep: bool,
    /// Clock ticks per second (/proc CPU times are in ticks).
    ticks: f64,
    ncpu: usize,
    /// The proxy under test alone on CPU 1; load generator, upstream and Redis on CPU 0.
    proxy_cpu: usize,
}

impl Settings {
    fn from_env() -> Settings {
        let num = |name: &str, default: f64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(default)
        };
        let flag = |name: &str| std::env::var(name).is_ok_and(|v| v == "1");
        let ncpu = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Settings {
            rounds: num("BENCH_ROUNDS", 5.0).max(1.0) as usize,
            secs: num("BENCH_SECS", 5.0).max(1.0),
            warmup: num("BENCH_WARMUP", 1.0).max(0.0),
            rr_count: num("BENCH_TOKENS", 10_000.0).max(1.0) as usize,
            walk_count: num("BENCH_WALK", 100_000.0).max(1.0) as usize,
            perf: flag("BENCH_PERF"),
            keep: flag("BENCH_KEEP"),
            ticks: procs::clock_ticks_per_sec(),
            ncpu,
            proxy_cpu: if ncpu >= 2 { 1 } else { 0 },
        }
    }
}

fn main() -> ExitCode {
    procs::install_signal_cleanup();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nbenchmark could not run: {e}");
            ExitCode::from(1)
        }
    }
}

fn run() -> Res<()> {
    let s = Settings::from_env();
    report::print_header(&s);
    let [taskset, nginx, wrk, redis, traefik, caddy] = [
        "taskset",
        "nginx",
        "wrk",
        "redis-server",
        "traefik",
        "caddy",
    ]
    .map(install::tool);
    report::print_tools(&[&taskset, &nginx, &wrk, &redis, &traefik, &caddy]);
    let (_, nginx, _) = (taskset?, nginx?, wrk?);

    let tmp = procs::temp_dir()?;
    let dir = tmp.path().to_path_buf();
    let lua = dir.join("tokens.lua");
    write(&lua, TOKENS_LUA)?;
    let fx = fixtures::mint_fixtures(&dir, s.rr_count, s.walk_count)?;

    let mut lab = Lab::start(dir, s.proxy_cpu, &nginx, fx)?;
    let mut rows = vec![
        lab.upstream_row(),
        lab.nginx()?,
        lab.traefik(&traefik),
        lab.caddy(&caddy),
        lab.bare_pingora(),
    ];
    let (gw, gateway_rows) = lab.gateways(s.rr_count, &lua)?;
    rows.extend(gateway_rows);
    rows.push(lab.redis(&redis));

    rows::run_rounds(&mut rows, &mut lab.procs, &s);
    let walk = walk::walk_tokens(&lab.fx, &gw, &lua, s.walk_count, s.ticks);
    let profile = s.perf.then(|| {
        let row5 = wrk::Load::bearer(&gw.addr, "/jwt", &lab.fx.token);
        perf::perf_row5(&lab.dir, gw.pid, &row5)
    });

    report::print_report(&rows, &walk, &s);
    println!("load average at the end: {}", report::loadavg());
    if let Some(p) = profile {
        println!("\n{p}");
    }
    if s.keep {
        println!(
            "\nkept configs, logs and fixtures in {}",
            tmp.keep().display()
        );
    }
    Ok(())
}
