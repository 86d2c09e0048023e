//! The `wxgate` binary. It only parses arguments, sets up logging, loads configuration and
//! hands over to the library crates:
//! - `wxgate serve --config FILE`: the gateway.
//! - `wxgate dev`: the quick start: the gateway on 127.0.0.1:8080 with in-memory state and an
//!   embedded fake WeChat holding demo apps, templates and a user; prints a ready `curl`.
//! - `wxgate fake-wechat --listen ADDR [--config FILE]`: the fake WeChat alone.
//! - `wxgate check-config FILE`: validates a configuration file; non-zero exit on error.
//! - `wxgate dlq list|redrive --config FILE APP`: the dead letters of queued delivery.
//! - `wxgate inspect --config FILE [APP...]`: the apps' shared state (token, leader, windows,
//!   quotas, pauses, counts) as a table, `--json` or `--watch`.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use wxgate_config::Settings;
use wxgate_fake_wechat::{demo, FakeConfig, FakeWechat};
use wxgate_server::{Application, BuildOptions};

/// mimalloc instead of glibc's allocator: a send allocates and frees a few hundred small
/// buffers (HTTP, JSON, Redis replies); glibc's malloc/free/consolidate were ~12% of the
/// gateway's CPU under load (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `println!` that never panics: a failed write to stdout is ignored. `println!` panics when
/// stdout is a closed pipe (its reader gone: a log shipper restarted, `| head -1`), which would
/// kill a running gateway or fake WeChat at its banner. What these lines say is also in the
/// logs or the command's effect; `inspect`, whose output is the point, checks its writes.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod client_errors;
mod dev;
mod dlq;
mod flat_json;
mod inspect;
#[cfg(feature = "otlp")]
mod otlp;

#[derive(Parser)]
#[command(
    name = "wxgate",
    version,
    about = "A WeChat template and subscribe message gateway"
)]
struct Cli {
    /// Log format: json (default for serve) or text.
    #[arg(long, global = true, value_enum, env = "WXGATE_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file (TOML); WXGATE_* environment variables override it.
        #[arg(long, short, env = "WXGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the gateway with in-memory state and an embedded fake WeChat (no account needed).
    Dev {
        /// Address of the gateway.
        #[arg(long, default_value = "127.0.0.1:8080", env = "WXGATE_SERVER__LISTEN")]
        listen: SocketAddr,
        /// Address of the embedded fake WeChat (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        fake_listen: SocketAddr,
    },
    /// Run the fake WeChat alone (for tests, benchmarks and demos).
    FakeWechat {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Fake WeChat configuration (TOML); default: the demo apps of `wxgate dev`.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Dead letters of queued delivery (Redis store): list them or put them back on the queue.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Validate a configuration file and print what it configures (never the secrets).
    CheckConfig {
        file: PathBuf,
        /// Also check the template registry against WeChat's template lists (calls WeChat:
        /// stable_token in normal mode and the two list APIs; never invalidates a token).
        #[arg(long)]
        online: bool,
    },
    /// Show the apps' shared state: token (masked), leader, windows, quotas, pauses, counts.
    Inspect {
        /// Configuration file (TOML); WXGATE_* environment variables override it.
        #[arg(long, short, env = "WXGATE_CONFIG")]
        config: Option<PathBuf>,
        /// App names (default: every configured app).
        apps: Vec<String>,
        /// One JSON object per app and line (the shape of GET /v1/admin/apps/{app}/state).
        #[arg(long)]
        json: bool,
        /// Redraw every SECONDS (default 2) until Ctrl-C.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<u64>,
        /// Examine at most this many keys when counting idempotency records and recipients.
        #[arg(long, default_value_t = wxgate_engine::inspect::DEFAULT_SCAN_LIMIT)]
        scan_limit: u64,
    },
}

/// What logging set up that must be stopped at exit (the OTLP exporter, when on).
#[derive(Default)]
struct Telemetry {
    #[cfg(feature = "otlp")]
    otlp: Option<otlp::Exporter>,
}

impl Telemetry {
    /// Exports the spans still queued.
    fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(e) = self.otlp {
            e.shutdown();
        }
    }
}

/// Sets up logging; with `tracing` settings that name an OTLP endpoint (and the `otlp`
/// feature), span export too.
fn init_logging(
    format: LogFormat,
    tracing_settings: Option<&wxgate_config::TracingSettings>,
) -> Telemetry {
    #[cfg_attr(not(feature = "otlp"), allow(unused_mut))]
    let mut telemetry = Telemetry::default();
    let endpoint = tracing_settings.and_then(|t| t.otlp_endpoint.as_deref());
    #[cfg(feature = "otlp")]
    let mut otlp_error = None;
    #[cfg(feature = "otlp")]
    if let (Some(endpoint), Some(t)) = (endpoint, tracing_settings) {
        match otlp::Exporter::start(endpoint, &t.service_name) {
            Ok(e) => telemetry.otlp = Some(e),
            Err(e) => otlp_error = Some(e),
        }
    }
    #[cfg(feature = "otlp")]
    let otlp_layer = telemetry.otlp.as_ref().map(otlp::Exporter::layer);
    #[cfg(not(feature = "otlp"))]
    let otlp_layer: Option<tracing_subscriber::layer::Identity> = None;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_env("WXGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal, never in a file or a log pipeline.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let fmt = tracing_subscriber::fmt::layer().with_ansi(ansi);
    let fmt = match format {
        LogFormat::Json => fmt
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(flat_json::FlatJson)
            .boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    // A client's protocol error is reported by `client_errors`, not logged one by one.
    let fmt = fmt.with_filter(tracing_subscriber::filter::filter_fn(|m| {
        !client_errors::is_client_protocol_error(m)
    }));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(client_errors::ClientErrors::start(
            std::time::Duration::from_secs(10),
        ))
        .with(otlp_layer)
        .init();
    #[cfg(feature = "otlp")]
    match (&telemetry.otlp, otlp_error, endpoint) {
        (Some(_), _, Some(endpoint)) => {
            tracing::info!(otlp_endpoint = endpoint, "exporting spans over OTLP/HTTP")
        }
        (_, Some(e), _) => tracing::error!(error = %e, "spans are not exported"),
        _ => {}
    }
    #[cfg(not(feature = "otlp"))]
    if endpoint.is_some() {
        tracing::warn!(
            "tracing.otlp_endpoint is set but this binary was built without the `otlp` feature: spans are not exported"
        );
    }
    telemetry
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => {
            // Configuration first: it says where spans go. Its errors are reported below.
            let settings = Settings::load(config.as_deref());
            let telemetry = init_logging(
                cli.log_format.unwrap_or(LogFormat::Json),
                settings.as_ref().ok().map(|s| &s.tracing),
            );
            let result = match settings {
                Ok(settings) => serve(config, settings).await,
                Err(e) => Err(format!("configuration: {e}")),
            };
            telemetry.shutdown();
            result
        }
        Command::Dev {
            listen,
            fake_listen,
        } => {
            init_logging(cli.log_format.unwrap_or(LogFormat::Text), None);
            dev::run(listen, fake_listen).await
        }
        Command::FakeWechat { listen, config } => {
            init_logging(cli.log_format.unwrap_or(LogFormat::Text), None);
            fake_wechat(listen, config).await
        }
        Command::CheckConfig { file, online } => check_config(&file, online).await,
        Command::Dlq { command } => dlq::run(command).await,
        Command::Inspect {
            config,
            apps,
            json,
            watch,
            scan_limit,
        } => {
            inspect::run(
                config.as_deref(),
                inspect::Options {
                    apps,
                    json,
                    watch,
                    scan_limit,
                },
            )
            .await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
    }
}

async fn serve(config: Option<PathBuf>, settings: Settings) -> Result<(), String> {
    let missing = settings.missing_for_serving();
    if !missing.is_empty() {
        let source = match &config {
            Some(path) => format!("configuration {}", path.display()),
            None => "no configuration file (--config FILE or WXGATE_CONFIG)".to_string(),
        };
        return Err(format!(
            "refusing to serve: {source} configures no {}; set server.allow_empty_config = true to start anyway",
            missing.join(", and no ")
        ));
    }
    let app = Application::build(
        settings,
        BuildOptions {
            handle_signals: true,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    tracing::info!(addr = %app.local_addr(), node_id = app.node_id(), "wxgate listening");
    app.run_until_stopped().await.map_err(|e| e.to_string())
}

async fn fake_wechat(listen: SocketAddr, config: Option<PathBuf>) -> Result<(), String> {
    let cfg = match config {
        Some(path) => FakeConfig::from_toml_file(&path).map_err(|e| e.to_string())?,
        None => FakeConfig::demo(),
    };
    let listener =
        TcpListener::bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let fake = FakeWechat::start(cfg, listener)
        .await
        .map_err(|e| e.to_string())?;
    say!("fake WeChat listening on {}", fake.base_url());
    say!("  calls it received: curl {}/_fake/calls", fake.base_url());
    say!(
        "  demo OA appid {} (secret {})",
        demo::OA_APPID,
        demo::OA_SECRET
    );
    tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
    fake.stop().await;
    Ok(())
}

async fn check_config(file: &std::path::Path, online: bool) -> Result<(), String> {
    let s = Settings::load(Some(file)).map_err(|e| {
        let problems = e.problems();
        let n = problems.len();
        format!(
            "{}: {n} problem{}:\n{}",
            file.display(),
            if n == 1 { "" } else { "s" },
            problems
                .iter()
                .map(|p| format!("  - {p}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    say!("{}: OK", file.display());
    say!(
        "  server: listens on {} with {} worker{}; upstream {}",
        s.server.listen,
        s.server.workers,
        if s.server.workers == 1 { "" } else { "s" },
        s.upstream.base_url
    );
    let store = match (&s.store.kind, &s.store.redis) {
        (wxgate_config::StoreKind::Memory, _) => {
            "in memory (one node only: limits and tokens are not shared)".to_string()
        }
        (wxgate_config::StoreKind::Redis, Some(r)) => {
            let at = match r.mode {
                wxgate_config::RedisMode::Standalone => format!(
                    "standalone {}",
                    wxgate_store::redis_store::redact_url(r.url.as_deref().unwrap_or(""))
                ),
                wxgate_config::RedisMode::Sentinel => format!(
                    "Sentinel master `{}` via {} sentinel{}",
                    r.master_name.as_deref().unwrap_or(""),
                    r.sentinels.len(),
                    if r.sentinels.len() == 1 { "" } else { "s" }
                ),
                wxgate_config::RedisMode::Cluster => {
                    format!("Cluster with {} seed nodes", r.nodes.len())
                }
            };
            format!("Redis ({at}), key prefix `{}`", s.store.prefix)
        }
        (wxgate_config::StoreKind::Redis, None) => "Redis".to_string(),
    };
    say!("  store: {store}");
    let q = &s.queue;
    if !q.enabled {
        say!("  queue: disabled (Prefer: respond-async answers 501)");
    } else if s.store.kind == wxgate_config::StoreKind::Memory {
        say!("  queue: needs the Redis store (Prefer: respond-async answers 501)");
    } else {
        say!(
            "  queue: backlog up to {} per app, {} deliveries at once per node, claim after {} ms idle, {} attempts, callbacks to {}",
            q.max_backlog,
            q.concurrency,
            q.claim_idle.as_millis(),
            q.max_attempts,
            if q.callback_hosts.is_empty() {
                "no host".to_string()
            } else {
                q.callback_hosts.join(", ")
            }
        );
    }
    if let Some(endpoint) = &s.tracing.otlp_endpoint {
        let built = if cfg!(feature = "otlp") {
            ""
        } else {
            " — but this binary was built without the `otlp` feature: nothing will be exported"
        };
        say!(
            "  tracing: spans to {endpoint}/v1/traces as service `{}`{built}",
            s.tracing.service_name
        );
    }
    for app in s.apps.values() {
        say!(
            "  app {}: appid {}, {}, token {}, secret from {}",
            app.name,
            app.appid,
            app.kind.as_str(),
            app.token_mode.as_str(),
            app.secret_source
        );
    }
    for key in &s.api_keys {
        let apps = match &key.apps {
            wxgate_config::AppScope::All => "every app".to_string(),
            wxgate_config::AppScope::Only(list) => list.join(", "),
        };
        let scopes: Vec<&str> = key
            .scopes
            .iter()
            .map(|sc| match sc {
                wxgate_config::Scope::Send => "send",
                wxgate_config::Scope::Token => "token",
                wxgate_config::Scope::Admin => "admin",
            })
            .collect();
        say!(
            "  api key {}: apps {apps}; may {}",
            key.name,
            scopes.join(" and ")
        );
    }
    for missing in s.missing_for_serving() {
        say!("  note: `wxgate serve` would refuse to start: no {missing}");
    }
    if online {
        match wxgate_server::check_templates_online(&s).await {
            Ok(problems) if problems.is_empty() => {
                say!("  templates: every registered id is in WeChat's lists, fields match")
            }
            Ok(problems) => return Err(format!("template registry: {}", problems.join("; "))),
            Err(e) => return Err(format!("cannot check templates against WeChat: {e}")),
        }
    }
    for app in s.apps.values() {
        for t in app.templates.values() {
            say!("  template {}.{}: {}", app.name, t.alias, t.id);
        }
    }
    Ok(())
}
