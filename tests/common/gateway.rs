//! The gateway process under test: [`TestGateway`] spawns the binary on fresh ports with a
//! rendered config, waits for it ([`Wait`]), talks to it and kills it on drop; [`run_bin`] runs
//! the binary to completion (CLI subcommands).

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{free_addr, metric_value, send, Config, Reply, HTTP_TIMEOUT, READY_TIMEOUT};

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_wetrials-gateway")
}

/// What `TestGateway::spawn` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// `GET /readyz` answers 200.
    Ready,
    /// Admin `/healthz` answers 200 and the data port accepts connections.
    Listening,
}

/// A running gateway process; killed (SIGKILL) on drop.
pub struct TestGateway {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    admin: SocketAddr,
    config_path: PathBuf,
    log_path: PathBuf,
    client: reqwest::Client,
    pub config: Config,
}

/// A reqwest client for tests: no proxy from the environment, bounded time.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .build()
        .expect("reqwest client")
}

impl TestGateway {
    /// Start and wait until `/readyz` says 200.
    pub async fn start(cfg: &Config) -> TestGateway {
        Self::spawn(cfg, Wait::Ready).await
    }

    /// Start and wait only for the listeners (for tests of the not-ready state).
    pub async fn start_unready(cfg: &Config) -> TestGateway {
        Self::spawn(cfg, Wait::Listening).await
    }

    /// Start with fresh ports (retried when a port was taken meanwhile) and wait.
    pub async fn spawn(cfg: &Config, wait: Wait) -> TestGateway {
        Self::spawn_rendered(|addr, admin, dir| cfg.render(addr, admin, dir), cfg, wait).await
    }

    /// `spawn` with the config text made by `text` for the chosen ports; `cfg` supplies the
    /// child's environment and is kept as the gateway's config.
    async fn spawn_rendered<F>(text: F, cfg: &Config, wait: Wait) -> TestGateway
    where
        F: Fn(SocketAddr, SocketAddr, &Path) -> String,
    {
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("wtgw-test-")
                .tempdir()
                .expect("tempdir");
            let addr = free_addr();
            let mut admin = free_addr();
            while admin == addr {
                admin = free_addr();
            }
            let config_path = dir.path().join("gateway.toml");
            fs::write(&config_path, text(addr, admin, dir.path())).expect("write config");
            let log_path = dir.path().join("gateway.log");
            let env: Vec<(&str, &str)> = cfg
                .env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let child = spawn_logged(
                &["--config", config_path.to_str().expect("utf-8 path")],
                &env,
                &log_path,
            );
            let mut gw = TestGateway {
                child,
                dir,
                addr,
                admin,
                config_path,
                log_path,
                client: client(),
                config: cfg.clone(),
            };
            match gw.wait_until(wait).await {
                Ok(()) => return gw,
                Err(log) => {
                    if log.contains("in use") || log.contains("AddrInUse") {
                        last_log = log;
                        continue; // another process took a port: retry with new ones
                    }
                    panic!(
                        "gateway did not start ({wait:?}); config:\n{}\nlog:\n{log}",
                        fs::read_to_string(&gw.config_path).unwrap_or_default()
                    );
                }
            }
        }
        panic!("gateway could not bind free ports after 5 attempts; last log:\n{last_log}");
    }

    /// Poll every 50 ms; `Err(log)` when the process exits or the time is up.
    async fn wait_until(&mut self, wait: Wait) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let probe = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(1))
            .build()
            .expect("client");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("[exited: {status}]\n{}", self.logs()));
            }
            let log = self.logs();
            if log.contains("is in use, will try again") {
                // pingora retries a taken port forever: give up on these ports.
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!("[port in use]\n{log}"));
            }
            let ok = match wait {
                // /readyz can open a moment before the data listener accepts (they are two
                // pingora services): wait for both, or a first request may be refused.
                Wait::Ready => {
                    matches!(
                        probe.get(self.admin_url("/readyz")).send().await,
                        Ok(r) if r.status() == 200
                    ) && tokio::net::TcpStream::connect(self.addr).await.is_ok()
                }
                Wait::Listening => {
                    matches!(probe.get(self.admin_url("/healthz")).send().await, Ok(r) if r.status() == 200)
                        && tokio::net::TcpStream::connect(self.addr).await.is_ok()
                }
            };
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!(
                    "[not {wait:?} within {READY_TIMEOUT:?}]\n{}",
                    self.logs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until `/readyz` answers 200 (after a `start_unready`), or panic with the log.
    pub async fn wait_ready(&mut self) {
        if let Err(log) = self.wait_until(Wait::Ready).await {
            panic!("gateway did not become ready:\n{log}");
        }
    }

    /// Data listener address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Admin listener address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Wait up to `timeout` for the log to contain `needle`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.logs().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Send a signal by name or number (`"HUP"`, `"TERM"`, `"QUIT"`, `"9"`) with `kill`.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.pid());
    }

    /// `Some(status)` once the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Wait up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Replace the config file with `cfg` rendered for this gateway's ports and directory
    /// (reload it with `signal("HUP")` or `reload()`).
    pub fn rewrite_config(&mut self, cfg: &Config) {
        fs::write(
            &self.config_path,
            cfg.render(self.addr, self.admin, self.dir.path()),
        )
        .expect("write config");
        self.config = cfg.clone();
    }

    /// Replace the config file with raw text.
    pub fn rewrite_config_raw(&self, toml: &str) {
        fs::write(&self.config_path, toml).expect("write config");
    }

    /// Start a second process on the same config with `--upgrade` (pingora zero-downtime
    /// upgrade: it takes the listeners over once this one gets SIGQUIT); output to `log`.
    /// The caller owns (and must kill) the returned child.
    pub fn spawn_upgrade(&self, log: &Path) -> Child {
        let env: Vec<(&str, &str)> = self
            .config
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        spawn_logged(
            &[
                "--config",
                self.config_path.to_str().expect("utf-8 path"),
                "--upgrade",
            ],
            &env,
            log,
        )
    }

    /// `POST /reload` on the admin listener.
    pub async fn reload(&self) -> Reply {
        send(self.client.post(self.admin_url("/reload"))).await
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path))
    }

    pub fn request(&self, method: &str, path: &str) -> reqwest::RequestBuilder {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        self.client.request(m, self.url(path))
    }

    /// `GET path` with `Authorization: Bearer token`.
    pub async fn get_with_token(&self, path: &str, token: &str) -> Reply {
        send(self.get(path).bearer_auth(token)).await
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        let r = send(self.client.get(self.admin_url("/metrics"))).await;
        assert_eq!(r.status, 200, "/metrics: {}", r.text());
        r.text()
    }

    /// Sum of the samples of `name` whose labels include every pair of `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics().await, name, labels)
    }

    /// Status of `GET /readyz`.
    pub async fn readyz(&self) -> u16 {
        send(self.client.get(self.admin_url("/readyz")))
            .await
            .status
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawn the binary with `args` and extra `env`, stdout and stderr appended to `log`.
pub fn spawn_logged(args: &[&str], env: &[(&str, &str)], log: &Path) -> Child {
    let out = fs::File::create(log).expect("create log file");
    let err = out.try_clone().expect("clone log file");
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn wetrials-gateway")
}

/// Run the binary to completion (bounded), returning (exit status, stdout, stderr).
pub fn run_bin(
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> (ExitStatus, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            fs::File::create(&out_path).expect("stdout file"),
        ))
        .stderr(Stdio::from(
            fs::File::create(&err_path).expect("stderr file"),
        ))
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn wetrials-gateway");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "wetrials-gateway {args:?} still running after {timeout:?}; stderr:\n{}",
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status,
        fs::read_to_string(&out_path).unwrap_or_default(),
        fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

impl TestGateway {
    /// Start on a config *text* (e.g. a shipped file with its addresses replaced):
    /// `text(listen, admin, dir)` renders it for fresh ports; waits for `/readyz` = 200.
    pub async fn start_text<F>(text: F) -> TestGateway
    where
        F: Fn(SocketAddr, SocketAddr, &Path) -> String,
    {
        Self::spawn_rendered(text, &Config::new(), Wait::Ready).await
    }
}
