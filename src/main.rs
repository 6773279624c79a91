//! The `wetrials-gateway` binary: serve a config, `check` one, `test` its route table,
//! `explain` a request, or run the `demo`.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wetrials-gateway",
    version,
    about = "JWT-validating, scope-enforcing, rate-limiting reverse proxy for the WeTrials API"
)]
struct Cli {
    /// Config file to serve.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Take the listeners over from a running instance (send it SIGQUIT after starting this).
    #[arg(long, short = 'u')]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file: exit 0, or print every problem with its location and exit 1.
    Check {
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
    },
    /// Route-table tests: decide each case of the CASES files with the proxy's own decision
    /// code, offline. Exit 0: all passed; 1: a case failed; 2: a bad config or cases file.
    Test {
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// Output: `text` (one line per case, a diff and the decision for each failure) or
        /// `junit` (XML for CI systems).
        #[arg(long, value_name = "FORMAT", default_value = "text")]
        format: TestFormat,
        #[arg(value_name = "CASES", required = true)]
        cases: Vec<PathBuf>,
    },
    /// Explain what the gateway would do with one request, step by step, with the proxy's own
    /// decision code. The token is read from --token-file or stdin (never from the command
    /// line, which `ps` shows). Exit 0: forwarded; 1: refused; 2: could not explain.
    Explain {
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        #[arg(long, default_value = "GET")]
        method: String,
        /// The request target, e.g. /v1/studies/42?x=1.
        #[arg(long)]
        path: String,
        /// A request header, `Name: value`; repeat for more.
        #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// File holding the bearer token (else stdin, when it is not a terminal).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Use this JWKS document as every issuer's keys instead of fetching them.
        #[arg(long, value_name = "FILE")]
        jwks_file: Option<PathBuf>,
        /// The request body (a public route's client_id may be read from it).
        #[arg(long)]
        body: Option<String>,
        /// The request arrived over HTTPS.
        #[arg(long)]
        tls: bool,
        /// The client's address (default 127.0.0.1).
        #[arg(long)]
        peer: Option<std::net::IpAddr>,
        /// JSON for machines.
        #[arg(long)]
        json: bool,
    },
    /// Run a local issuer, an echo upstream and the gateway; print curl commands to try.
    Demo {
        /// Data listener (default 127.0.0.1:8080, or a free port when taken).
        #[arg(long)]
        listen: Option<String>,
        /// Admin listener (default 127.0.0.1:9091, or a free port when taken).
        #[arg(long)]
        admin_listen: Option<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TestFormat {
    Text,
    Junit,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { config }) => match wetrials_gateway::config::load(&config) {
            Ok(cfg) => {
                println!(
                    "{}: ok ({} routes, {} issuers, {} upstreams)",
                    config.display(),
                    cfg.routes.len(),
                    cfg.issuers.len(),
                    cfg.upstreams.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: invalid", config.display());
                for p in e.problems() {
                    eprintln!("  - {p}");
                }
                ExitCode::from(1)
            }
        },
        Some(Command::Test {
            config,
            format,
            cases,
        }) => {
            let format = match format {
                TestFormat::Text => wetrials_gateway::rules::Format::Text,
                TestFormat::Junit => wetrials_gateway::rules::Format::Junit,
            };
            ExitCode::from(wetrials_gateway::rules::run(&config, &cases, format))
        }
        Some(Command::Explain {
            config,
            method,
            path,
            headers,
            token_file,
            jwks_file,
            body,
            tls,
            peer,
            json,
        }) => ExitCode::from(wetrials_gateway::rules::explain_cli(
            wetrials_gateway::rules::ExplainArgs {
                config,
                method,
                path,
                headers,
                token_file,
                jwks_file,
                body,
                tls,
                peer,
                json,
            },
        )),
        Some(Command::Demo {
            listen,
            admin_listen,
        }) => {
            wetrials_gateway::telemetry::init(&wetrials_gateway::config::LoggingSettings {
                format: wetrials_gateway::config::LogFormat::Text,
                level: "warn".into(),
                access_log: false,
            });
            match wetrials_gateway::demo::run(listen, admin_listen) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("demo failed: {e}");
                    ExitCode::from(1)
                }
            }
        }
        None => {
            let Some(path) = cli.config else {
                eprintln!("usage: wetrials-gateway --config FILE | check --config FILE | demo (see --help)");
                return ExitCode::from(64);
            };
            let cfg = match wetrials_gateway::config::load(&path) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("{}: refusing to start", path.display());
                    for p in e.problems() {
                        eprintln!("  - {p}");
                    }
                    return ExitCode::from(1);
                }
            };
            wetrials_gateway::telemetry::init(&cfg.logging);
            tracing::info!(config = %path.display(), listen = %cfg.server.listen, admin = %cfg.admin.listen, routes = cfg.routes.len(), "starting");
            match wetrials_gateway::server::build(cfg, Some(path), cli.upgrade) {
                Ok(server) => server.run_forever(),
                Err(e) => {
                    eprintln!("cannot start: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// mimalloc instead of glibc malloc: pingora's per-request header maps make many small
/// allocations, and glibc's malloc/free/consolidate was ~13% of the gateway's CPU under load
/// (mimalloc: ~3%; +5-15% req/s). Built without transparent huge pages (`no_thp`): they added
/// ~10 MiB of RSS at idle for no measurable speed-up here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
