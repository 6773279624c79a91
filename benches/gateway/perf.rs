//! `BENCH_PERF=1`: a `perf record` of the gateway during a 10 s row-5 run, summarised.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::install;
use crate::procs::spawn_registered;
use crate::wrk::{parse_wrk, wrk_command, Load};

/// `perf record -e cpu-clock -g` of the gateway during a 10 s row-5 run; the flat profile.
pub(crate) fn perf_row5(dir: &Path, pid: u32, load: &Load) -> String {
    let mut out = String::from("perf profile of the gateway during a 10 s row-5 run\n");
    match install::tool("perf") {
        Ok(perf) => out.push_str(&format!("({})\n", perf.describe())),
        Err(e) => {
            out.push_str(&format!("unavailable: {e}\n"));
            return out;
        }
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
