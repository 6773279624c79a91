//! The processes the benchmark starts (each pinned to a CPU, ended with its descendants when
//! dropped or on Ctrl-C / SIGTERM) and what it reads about them from /proc.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::Res;

/// Pids of every process started here, for the Ctrl-C / SIGTERM handler.
pub(crate) static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// Set by the Ctrl-C / SIGTERM handler: start nothing new.
static STOPPING: AtomicBool = AtomicBool::new(false);
/// The temp dir, removed by the Ctrl-C / SIGTERM handler too.
static TEMP_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// A process started by the benchmark; dropping it ends it and its descendants.
pub(crate) struct Proc {
    pub(crate) name: String,
    child: Child,
    log: Option<PathBuf>,
}

impl Proc {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub(crate) fn log_tail(&self) -> String {
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
pub(crate) fn spawn_registered(cmd: &mut Command) -> Res<Child> {
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

/// The temp dir of configs, logs and fixtures, removed when dropped (unless kept) and by the
/// Ctrl-C / SIGTERM handler.
pub(crate) fn temp_dir() -> Res<tempfile::TempDir> {
    let tmp = tempfile::Builder::new()
        .prefix("wtgw-bench-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    if let Ok(mut d) = TEMP_DIR.lock() {
        *d = Some(tmp.path().to_path_buf());
    }
    Ok(tmp)
}

/// On Ctrl-C or SIGTERM: end everything started here, then exit.
pub(crate) fn install_signal_cleanup() {
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
pub(crate) enum Output<'a> {
    /// To `DIR/NAME.log`.
    Log(&'a Path),
    /// To /dev/null (row 4b: the access log's cost without a disk behind it).
    Discard,
}

/// Start `program args` pinned to `cpu` with `taskset` (which execs, so the pid is the
/// program's).
pub(crate) fn spawn(
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

pub(crate) fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    all.extend(descendants(pid));
    all
}

/// utime + stime (fields 14 and 15, all threads) of a process and its descendants, in ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
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
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let mut total = 0;
    for p in tree(pid) {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        total += line.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    }
    Some(total)
}

pub(crate) fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// `/proc/stat` counters of one CPU: (user + nice + system, steal, total), in ticks.
pub(crate) fn cpu_stat(cpu: usize) -> Option<(u64, u64, u64)> {
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
