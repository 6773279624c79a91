//! The processes under test, each started from a fixture of this directory and turned into a
//! row: the upstream (nginx `return 200`, CPU 0), nginx, Traefik and Caddy as plain reverse
//! proxies, the bare pingora proxy, and the gateways (memory limiter, access log, Redis).
//! Every proxy runs alone on the proxy CPU with one worker.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::fixtures::Fixtures;
use crate::install::{version, Tool};
use crate::net::{free_port, redis_commands, wait_ready};
use crate::procs::{spawn, Output, Proc};
use crate::rows::Row;
use crate::wrk::Load;
use crate::{Res, AUDIENCE, ISSUER};

const GATEWAY_BIN: &str = env!("CARGO_BIN_EXE_wetrials-gateway");
const BARE_BIN: &str = env!("CARGO_BIN_EXE_bare-pingora");

const UPSTREAM_NGINX: &str = include_str!("upstream-nginx.conf");
const PROXY_NGINX: &str = include_str!("proxy-nginx.conf");
const TRAEFIK_DYNAMIC: &str = include_str!("traefik-dynamic.yml");
const CADDYFILE: &str = include_str!("Caddyfile");
const GATEWAY_TOML: &str = include_str!("gateway.toml");

/// The temp dir, the upstream and every process started so far (ended when dropped).
pub(crate) struct Lab {
    pub(crate) dir: PathBuf,
    /// The CPU of the proxy under test, as `taskset -c` takes it.
    cpu: String,
    nginx: PathBuf,
    pub(crate) fx: Fixtures,
    up_port: String,
    upstream: String,
    upstream_pid: u32,
    pub(crate) procs: Vec<Proc>,
}

/// The gateway of rows 4-7 (the walk and the perf profile use it too).
pub(crate) struct Gateway {
    pub(crate) pid: u32,
    pub(crate) addr: String,
    pub(crate) admin: String,
}

impl Lab {
    /// Start the upstream every proxy forwards to (row 1), on CPU 0.
    pub(crate) fn start(dir: PathBuf, proxy_cpu: usize, nginx: &Tool, fx: Fixtures) -> Res<Lab> {
        let up_port = free_port()?.to_string();
        let upstream = format!("127.0.0.1:{up_port}");
        let mut up = start_nginx(
            &dir,
            &nginx.path,
            "upstream-nginx",
            "0",
            UPSTREAM_NGINX,
            &[("PORT", &up_port)],
        )?;
        wait_ready(&mut up, &upstream, "/", Duration::from_secs(10))?;
        Ok(Lab {
            dir,
            cpu: proxy_cpu.to_string(),
            nginx: nginx.path.clone(),
            fx,
            up_port,
            upstream,
            upstream_pid: up.pid(),
            procs: vec![up],
        })
    }

    /// Row 1: the upstream alone, the ceiling of every proxy row.
    pub(crate) fn upstream_row(&self) -> Row {
        Row::new(
            "1",
            "upstream alone (nginx return 200, CPU 0)",
            Load::plain(&self.upstream, "/"),
            Some(self.upstream_pid),
        )
    }

    fn add(&mut self, id: &'static str, what: String, load: Load, p: Proc) -> Row {
        let row = Row::new(id, what, load, Some(p.pid()));
        self.procs.push(p);
        row
    }

    /// Row 2: nginx as a plain reverse proxy with an upstream keep-alive pool.
    pub(crate) fn nginx(&mut self) -> Res<Row> {
        let p = free_port()?.to_string();
        let addr = format!("127.0.0.1:{p}");
        let mut ng = start_nginx(
            &self.dir,
            &self.nginx,
            "proxy-nginx",
            &self.cpu,
            PROXY_NGINX,
            &[("PORT", &p), ("UPSTREAM_PORT", &self.up_port)],
        )?;
        wait_ready(&mut ng, &addr, "/", Duration::from_secs(10))?;
        Ok(self.add(
            "2",
            "nginx reverse proxy".into(),
            Load::plain(&addr, "/"),
            ng,
        ))
    }

    /// Row 3a: Traefik as a plain reverse proxy.
    pub(crate) fn traefik(&mut self, tool: &Res<Tool>) -> Row {
        let started = (|| -> Res<(Proc, String)> {
            let bin = &tool.as_ref().map_err(Clone::clone)?.path;
            let d = subdir(&self.dir, "traefik")?;
            let dynamic = d.join("dynamic.yml");
            write(
                &dynamic,
                &fill(TRAEFIK_DYNAMIC, &[("UPSTREAM_PORT", &self.up_port)]),
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
            let mut p = spawn(
                "traefik",
                &self.cpu,
                bin,
                &args,
                &[],
                Output::Log(&self.dir),
            )?;
            wait_ready(&mut p, &addr, "/", Duration::from_secs(20))?;
            Ok((p, addr))
        })();
        match (started, tool) {
            (Ok((p, addr)), Ok(tool)) => {
                let v = version(&tool.path.to_string_lossy(), &["version"]);
                let what = format!(
                    "Traefik reverse proxy ({})",
                    v.trim_start_matches("Version:").trim()
                );
                self.add("3a", what, Load::plain(&addr, "/"), p)
            }
            (Err(e), _) => Row::unavailable("3a", "Traefik reverse proxy", e),
            (_, Err(e)) => Row::unavailable("3a", "Traefik reverse proxy", e.clone()),
        }
    }

    /// Row 3b: Caddy as a plain reverse proxy.
    pub(crate) fn caddy(&mut self, tool: &Res<Tool>) -> Row {
        let started = (|| -> Res<(Proc, String)> {
            let bin = &tool.as_ref().map_err(Clone::clone)?.path;
            let d = subdir(&self.dir, "caddy")?;
            let port = free_port()?.to_string();
            let file = d.join("Caddyfile");
            write(
                &file,
                &fill(
                    CADDYFILE,
                    &[("PORT", &port), ("UPSTREAM_PORT", &self.up_port)],
                ),
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
            let mut p = spawn("caddy", &self.cpu, bin, &args, &env, Output::Log(&self.dir))?;
            wait_ready(&mut p, &addr, "/", Duration::from_secs(20))?;
            Ok((p, addr))
        })();
        match (started, tool) {
            (Ok((p, addr)), Ok(tool)) => {
                let v = version(&tool.path.to_string_lossy(), &["version"]);
                let v = v.split_whitespace().next().unwrap_or("");
                let what = format!("Caddy reverse proxy ({v})");
                self.add("3b", what, Load::plain(&addr, "/"), p)
            }
            (Err(e), _) => Row::unavailable("3b", "Caddy reverse proxy", e),
            (_, Err(e)) => Row::unavailable("3b", "Caddy reverse proxy", e.clone()),
        }
    }

    /// Row "bare": the floor. A pingora 0.9 proxy whose `ProxyHttp` only returns one
    /// `HttpPeer` (benches/bare/main.rs, built like the gateway), one worker thread, on the
    /// proxy CPU, asked for the public route's path.
    pub(crate) fn bare_pingora(&mut self) -> Row {
        let started = (|| -> Res<(Proc, String)> {
            let addr = format!("127.0.0.1:{}", free_port()?);
            let args = [
                "--listen".to_string(),
                addr.clone(),
                "--upstream".to_string(),
                self.upstream.clone(),
                "--threads".to_string(),
                "1".to_string(),
            ];
            let mut p = spawn(
                "bare-pingora",
                &self.cpu,
                Path::new(BARE_BIN),
                &args,
                &[],
                Output::Log(&self.dir),
            )?;
            wait_ready(&mut p, &addr, "/public", Duration::from_secs(20))?;
            Ok((p, addr))
        })();
        match started {
            Ok((p, addr)) => self.add(
                "bare",
                "bare pingora 0.9 (returns one HttpPeer)".into(),
                Load::plain(&addr, "/public"),
                p,
            ),
            Err(e) => Row::unavailable("bare", "bare pingora 0.9", e),
        }
    }

    /// Rows 4-7 on one gateway (memory limiter, access log off) and row 4b on a second one
    /// with the access log on (level info, output to /dev/null).
    pub(crate) fn gateways(&mut self, rr_count: usize, lua: &Path) -> Res<(Gateway, Vec<Row>)> {
        let memory = "[rate_limit]\nbackend = \"memory\"";
        let (p, addr, admin) = self.start_gateway(GatewaySpec {
            name: "gateway",
            level: "warn",
            access_log: false,
            rate_limit: memory.into(),
            output: Output::Log(&self.dir),
            preserve_header_case: true,
        })?;
        let gw = Gateway {
            pid: p.pid(),
            addr,
            admin,
        };
        self.procs.push(p);
        let on_gw = |id, what: &str, load| Row::new(id, what, load, Some(gw.pid));
        let mut rows = vec![on_gw(
            "4",
            "gateway, public route",
            Load::plain(&gw.addr, "/public"),
        )];
        let accesslog = self.start_gateway(GatewaySpec {
            name: "gateway-accesslog",
            level: "info",
            access_log: true,
            rate_limit: memory.into(),
            output: Output::Discard,
            preserve_header_case: true,
        });
        rows.push(match accesslog {
            Ok((p, addr, _)) => self.add(
                "4b",
                "gateway, public route, access log on (/dev/null)".into(),
                Load::plain(&addr, "/public"),
                p,
            ),
            Err(e) => Row::unavailable("4b", "gateway, public route, access log on", e),
        });
        let token = &self.fx.token;
        rows.push(on_gw(
            "5",
            "gateway, JWT route, one token",
            Load::bearer(&gw.addr, "/jwt", token),
        ));
        let round_robin = Load {
            url: format!("http://{}/jwt", gw.addr),
            headers: Vec::new(),
            script: Some((
                lua.to_path_buf(),
                vec![self.fx.round_robin.to_string_lossy().to_string()],
            )),
        };
        let what = format!("gateway, JWT route, {rr_count} tokens round robin");
        let mut r6 = on_gw("6", &what, round_robin);
        r6.admin = Some(gw.admin.clone());
        rows.push(r6);
        rows.push(on_gw(
            "7",
            "gateway, JWT + memory rate limit",
            Load::bearer(&gw.addr, "/jwt-limited", token),
        ));
        // Rows 4u and 7u: rows 4 and 7 with `preserve_header_case = false` (headers edited
        // without pingora's spelling map), on a third gateway.
        match self.start_gateway(GatewaySpec {
            name: "gateway-unspelled",
            level: "warn",
            access_log: false,
            rate_limit: memory.into(),
            output: Output::Log(&self.dir),
            preserve_header_case: false,
        }) {
            Ok((p, addr, _)) => {
                let pid = p.pid();
                self.procs.push(p);
                rows.push(Row::new(
                    "4u",
                    "row 4, preserve_header_case = false",
                    Load::plain(&addr, "/public"),
                    Some(pid),
                ));
                rows.push(Row::new(
                    "7u",
                    "row 7, preserve_header_case = false",
                    Load::bearer(&addr, "/jwt-limited", token),
                    Some(pid),
                ));
            }
            Err(e) => {
                rows.push(Row::unavailable(
                    "4u",
                    "row 4, preserve_header_case = false",
                    e.clone(),
                ));
                rows.push(Row::unavailable(
                    "7u",
                    "row 7, preserve_header_case = false",
                    e,
                ));
            }
        }
        Ok((gw, rows))
    }

    /// Row 8: row 7 with the Redis backend, its own gateway and redis-server (on CPU 0).
    pub(crate) fn redis(&mut self, tool: &Res<Tool>) -> Row {
        let started = (|| -> Res<(Proc, Proc, String, String)> {
            let bin = &tool.as_ref().map_err(Clone::clone)?.path;
            let port = free_port()?.to_string();
            let d = subdir(&self.dir, "redis")?;
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
            let mut redis = spawn("redis", "0", bin, &args, &[], Output::Log(&self.dir))?;
            let raddr = format!("127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(10);
            while redis_commands(&raddr).is_none() {
                if Instant::now() > deadline || !redis.alive() {
                    return Err(format!("redis-server not ready; {}", redis.log_tail()));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let (gw, addr, _) = self.start_gateway(GatewaySpec {
                name: "gateway-redis",
                level: "warn",
                access_log: false,
                // fail_closed: a Redis fault shows up as 503s (non-2xx) instead of silently
                // measuring the local fallback.
                rate_limit: format!(
                    "[rate_limit]\nbackend = \"redis\"\nredis_url = \"redis://{raddr}/0\"\non_backend_error = \"fail_closed\""
                ),
                output: Output::Log(&self.dir),
                preserve_header_case: true,
            })?;
            Ok((redis, gw, addr, raddr))
        })();
        match started {
            Ok((redis, gw, addr, raddr)) => {
                let mut r = Row::new(
                    "8",
                    "gateway, JWT + Redis rate limit",
                    Load::bearer(&addr, "/jwt-limited", &self.fx.token),
                    Some(gw.pid()),
                );
                r.redis = Some(raddr);
                r.redis_pid = Some(redis.pid());
                self.procs.push(redis);
                self.procs.push(gw);
                r
            }
            Err(e) => Row::unavailable("8", "gateway, JWT + Redis rate limit", e),
        }
    }

    /// Start a gateway (one worker thread) on the proxy CPU; returns it with its (data, admin)
    /// addresses once `/readyz` answers.
    fn start_gateway(&self, spec: GatewaySpec) -> Res<(Proc, String, String)> {
        let d = subdir(&self.dir, spec.name)?;
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
                ("JWKS", &self.fx.jwks.to_string_lossy()),
                ("UPSTREAM", &self.upstream),
                ("INTROSPECTION", ""),
            ],
        );
        let toml = if spec.preserve_header_case {
            toml
        } else {
            toml.replacen("[server]\n", "[server]\npreserve_header_case = false\n", 1)
        };
        let conf = d.join("gateway.toml");
        write(&conf, &toml)?;
        let mut p = spawn(
            spec.name,
            &self.cpu,
            Path::new(GATEWAY_BIN),
            &["--config".to_string(), conf.to_string_lossy().to_string()],
            &[],
            spec.output,
        )?;
        wait_ready(&mut p, &admin, "/readyz", Duration::from_secs(30))?;
        Ok((p, listen, admin))
    }
}

struct GatewaySpec<'a> {
    name: &'a str,
    level: &'a str,
    access_log: bool,
    rate_limit: String,
    output: Output<'a>,
    preserve_header_case: bool,
}

/// Replace `{{KEY}}` placeholders of a fixture.
pub(crate) fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{{{k}}}}}"), v);
    }
    s
}

pub(crate) fn write(path: &Path, text: &str) -> Res<()> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn subdir(dir: &Path, name: &str) -> Res<PathBuf> {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    Ok(d)
}

fn start_nginx(
    dir: &Path,
    nginx: &Path,
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
    spawn(name, cpu, nginx, &args, &[], Output::Log(dir))
}
