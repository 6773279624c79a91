//! The rows of the wrk table: what each sends to which process, its samples over the rounds
//! (req/s, latency, proxy CPU per request, the machine's noise) and their medians.

use crate::net::{http_get, metric, redis_commands};
use crate::procs::{cpu_stat, cpu_ticks, rss_kib, Proc};
use crate::wrk::{run_wrk, Load, WrkResult};
use crate::{Settings, CONNECTIONS};

#[derive(Debug, Clone, Default)]
pub(crate) struct Sample {
    pub(crate) wrk: WrkResult,
    pub(crate) cpu_us_per_req: f64,
    /// The round it was measured in (1-based; 0 for the walk).
    pub(crate) round: usize,
    /// Share of the proxy's CPU (CPU 1) that other processes used during the run, in %: the
    /// machine's noise (rustc, tests, ...), which the table must be read against.
    pub(crate) other_pct: f64,
    /// Time the hypervisor took from this VM's CPUs during the run, in %.
    pub(crate) steal_pct: f64,
}

/// CPU counters around one measured run: `other_pct` and `steal_pct` of a [`Sample`].
struct Noise {
    proxy: Option<(u64, u64, u64)>,
    all: Vec<Option<(u64, u64, u64)>>,
}

impl Noise {
    pub(crate) fn start(proxy_cpu: usize) -> Noise {
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
    pub(crate) fn end(&self, proxy_cpu: usize, target_ticks: u64) -> (f64, f64) {
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

pub(crate) struct Row {
    pub(crate) id: &'static str,
    pub(crate) what: String,
    pub(crate) load: Load,
    /// The process under test (its tree is measured).
    pub(crate) pid: Option<u32>,
    pub(crate) unavailable: Option<String>,
    pub(crate) samples: Vec<Sample>,
    pub(crate) rss_kib: Option<u64>,
    pub(crate) notes: Vec<String>,
    /// Gateway admin address, for the token-cache counters of row 6.
    pub(crate) admin: Option<String>,
    /// Redis address and pid, for the command counter and memory of row 8.
    pub(crate) redis: Option<String>,
    pub(crate) redis_pid: Option<u32>,
    pub(crate) cache_hits: f64,
    pub(crate) cache_misses: f64,
    pub(crate) redis_cmds: u64,
}

impl Row {
    pub(crate) fn new(
        id: &'static str,
        what: impl Into<String>,
        load: Load,
        pid: Option<u32>,
    ) -> Row {
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

    pub(crate) fn unavailable(id: &'static str, what: impl Into<String>, why: String) -> Row {
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

    pub(crate) fn measured(&self) -> bool {
        self.unavailable.is_none() && !self.samples.is_empty()
    }

    pub(crate) fn median(&self, f: impl Fn(&Sample) -> f64) -> f64 {
        median(self.samples.iter().map(f).collect())
    }

    pub(crate) fn rps(&self) -> f64 {
        self.median(|s| s.wrk.rps)
    }

    pub(crate) fn p99(&self) -> f64 {
        self.median(|s| s.wrk.p99_us)
    }

    pub(crate) fn non2xx(&self) -> u64 {
        self.samples
            .iter()
            .map(|s| s.wrk.non2xx + s.wrk.socket_errors)
            .sum()
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
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
fn run_row(row: &mut Row, procs: &mut [Proc], round: usize, cfg: &Settings) {
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

/// A 2xx preflight for every row, then `rounds` rounds that run each row once in turn, so the
/// machine's noise spreads over all rows alike.
pub(crate) fn run_rounds(rows: &mut [Row], procs: &mut [Proc], s: &Settings) {
    for row in rows.iter_mut() {
        preflight(row);
    }
    let measured = rows.iter().filter(|r| r.unavailable.is_none()).count();
    println!(
        "running {} rounds x {measured} rows ({}s each after {}s warm-up, wrk -t1 -c{CONNECTIONS}; ~{:.0}s)",
        s.rounds,
        s.secs,
        s.warmup,
        measured as f64 * (s.warmup + s.secs + 0.3) * s.rounds as f64
    );
    for round in 1..=s.rounds {
        for row in rows.iter_mut() {
            run_row(row, procs, round, s);
        }
        let summary: Vec<String> = rows
            .iter()
            .filter_map(|r| {
                r.samples
                    .last()
                    .map(|s| format!("{}={:.0}", r.id, s.wrk.rps))
            })
            .collect();
        println!("  round {round}/{}: req/s {}", s.rounds, summary.join(" "));
    }
}
