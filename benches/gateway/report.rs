//! What the benchmark prints: the header (machine, tool versions), the wrk table with its
//! ratio columns, notes on what disturbed the runs, and the targets.

use crate::install::{version, Tool};
use crate::procs::rss_kib;
use crate::rows::{median, Row};
use crate::walk::Walk;
use crate::{Res, Settings, CONNECTIONS, NOISY_OTHER_PCT};

/// What the header says about the machine and the tools; prints a warning when the proxy
/// cannot have a CPU of its own.
pub(crate) fn print_header(s: &Settings) {
    println!(
        "wetrials-gateway benchmark: req/s of the gateway beside nginx, Traefik, Caddy and a bare pingora proxy"
    );
    println!("machine: {}", machine());
    if s.ncpu < 2 {
        println!("WARNING: one CPU only: the proxy shares CPU 0 with the load generator");
    }
}

/// Each tool's package version against its pin and the version the tool itself reports.
pub(crate) fn print_tools(tools: &[&Res<Tool>]) {
    println!("tools (versions pinned in benches/gateway/install.rs):");
    let mut off_pin = Vec::new();
    for tool in tools {
        match tool {
            Ok(t) => {
                let path = t.path.to_string_lossy();
                let own = match t.pin.cmd {
                    "nginx" => version(&path, &["-v"]),
                    "taskset" => version(&path, &["--version"]),
                    "wrk" => version(&path, &["-v"])
                        .split(" Copyright")
                        .next()
                        .unwrap_or("")
                        .to_string(),
                    "redis-server" => version(&path, &["--version"])
                        .split(" sha=")
                        .next()
                        .unwrap_or("")
                        .to_string(),
                    _ => version(&path, &["version"]),
                };
                println!("  {:<13} {}; {own}", t.pin.cmd, t.describe());
                if !t.on_pin() {
                    off_pin.push(t.pin.package);
                }
            }
            Err(e) => println!("  unavailable: {}", e.lines().next().unwrap_or("")),
        }
    }
    if !off_pin.is_empty() {
        println!(
            "WARNING: {} installed at another version than pinned: figures are not comparable with runs of the pinned versions",
            off_pin.join(", ")
        );
    }
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
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn fmt_num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "-".into()
    }
}

/// The table, its notes and the targets.
pub(crate) fn print_report(rows: &[Row], walk: &Walk, s: &Settings) {
    let (walk_count, rounds, secs) = (s.walk_count, s.rounds, s.secs);
    let find = |id: &str| rows.iter().find(|r| r.id == id && r.measured());
    let r2 = find("2").map(Row::rps).unwrap_or(f64::NAN);
    let r4 = find("4").map(Row::rps).unwrap_or(f64::NAN);
    let bare = find("bare").map(Row::rps).unwrap_or(f64::NAN);

    println!(
        "\nResults: medians of {rounds} rounds of {secs}s; wrk -t1 -c{CONNECTIONS} on CPU 0, proxy under test alone on CPU 1"
    );
    println!(
        "{:<4} {:<48} {:>8} {:>6} {:>8} {:>8} {:>8} {:>7} {:>8} {:>6} {:>6} {:>6} {:>6}",
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
        "×bare",
        "×row2",
        "oth%"
    );
    println!("{}", "-".repeat(147));
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
            "{:<4} {:<48} {:>8} {:>6} {:>8} {:>8} {:>8} {:>7} {:>8} {:>6} {:>6} {:>6} {:>6}",
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
            fmt_num(rps / bare, 2),
            fmt_num(rps / r2, 2),
            fmt_num(r.median(|s| s.other_pct), 1),
        );
    }
    match (&walk.first, &walk.failure) {
        (Some(first), None) => {
            let rps = first.wrk.rps;
            println!(
                "{:<4} {:<48} {:>8} {:>6} {:>8} {:>8} {:>8} {:>7} {:>8} {:>6} {:>6} {:>6} {:>6}",
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
                fmt_num(rps / bare, 2),
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
    println!("±% = half the spread (max-min) of the rounds' req/s around the median; CPU µs = CPU time of the proxy (all threads, all processes) per request; ×bare = req/s against the bare pingora proxy, the floor (it gets no Authorization header); RSS after the row's last run (rows 4-7 share one gateway process, so their RSS includes the token cache of row 6 and the limiter log of row 7); oth% = median share of the proxy's CPU used by other processes during the runs (noise: above a few % the row is disturbed)");

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
        "\nTargets (ratios of medians; '?' = a row involved had oth% > {NOISY_OTHER_PCT}%, rerun on a quiet machine):"
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
    ratio_check("row 4 ≥ 0.95 × bare pingora", "4", "bare", 0.95);
    ratio_check("row 7 ≥ 0.90 × bare pingora", "7", "bare", 0.90);
    ratio_check("row 4u ≥ 0.95 × bare pingora", "4u", "bare", 0.95);
    ratio_check("row 7u ≥ 0.90 × bare pingora", "7u", "bare", 0.90);
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
