//! Building and running the server. [`Application::build`] binds the listener (port 0 works, for
//! tests), builds every dependency once (store, upstream client, token manager) and hands them
//! to each actix worker through `web::Data`. The binary and the tests share this path.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{middleware, web, App as ActixApp, HttpServer};
use secrecy::ExposeSecret;
use wxgate_config::{OnUnavailable, RedisMode, Settings, StoreKind};
use wxgate_store::clock::{Clock, SystemClock};
use wxgate_store::fallback::{self, FallbackStore};
use wxgate_store::memory::MemoryStore;
use wxgate_store::redis_store::{RedisConfig, RedisStore, Topology};
use wxgate_store::Store;
use wxgate_upstream::{UpstreamConfig, WechatClient};

use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::request_id;
use crate::routes;
use crate::token::{TokenConfig, TokenManager};

/// Everything a handler needs, built once per process.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: Arc<dyn Store>,
    pub client: WechatClient,
    pub tokens: Arc<TokenManager>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub node_id: String,
    /// Per-node permit counter (see `send::permit`).
    pub permits: std::sync::atomic::AtomicU64,
}

impl AppState {
    pub fn next_permit(&self) -> u64 {
        self.permits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// Optional overrides of what `build` would otherwise create from the settings.
#[derive(Default)]
pub struct BuildOptions {
    /// An already bound listener (else `settings.server.listen` is bound).
    pub listener: Option<TcpListener>,
    /// A store to use instead of the configured one.
    pub store: Option<Arc<dyn Store>>,
    /// The clock for per-node decisions (token freshness); tests move it by hand.
    pub clock: Option<Arc<dyn Clock>>,
    /// Let actix handle SIGINT/SIGTERM (graceful stop). Off for in-process tests.
    pub handle_signals: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

/// A built, not yet running, server.
pub struct Application {
    addr: SocketAddr,
    server: Server,
    node_id: String,
    shutdown: tokio::sync::watch::Sender<bool>,
    refresher: tokio::task::JoinHandle<()>,
    verifier: tokio::task::JoinHandle<()>,
}

impl Application {
    pub fn build(settings: Settings, opts: BuildOptions) -> Result<Self, BuildError> {
        let listener = match opts.listener {
            Some(l) => l,
            None => {
                TcpListener::bind(settings.server.listen).map_err(|source| BuildError::Bind {
                    addr: settings.server.listen.to_string(),
                    source,
                })?
            }
        };
        let addr = listener
            .local_addr()
            .map_err(|e| BuildError::Setup(e.to_string()))?;
        let clock: Arc<dyn Clock> = opts.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let store: Arc<dyn Store> = match opts.store {
            Some(s) => s,
            None => build_store(&settings, clock.clone())?,
        };
        let client = wechat_client(&settings).map_err(BuildError::Setup)?;
        let node_id = settings.server.node_id.clone().unwrap_or_else(|| {
            format!(
                "wxgate-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            )
        });
        let metrics = Arc::new(Metrics::new());
        let t = &settings.token;
        let tokens = Arc::new(TokenManager::new(
            store.clone(),
            client.clone(),
            clock.clone(),
            TokenConfig {
                node_id: node_id.clone(),
                refresh_ahead_ms: t.refresh_ahead.as_millis() as u64,
                lease_ttl_ms: t.lease_ttl.as_millis() as u64,
                check_interval: t.check_interval,
                wait_for_token: t.wait_for_token,
                fetch_per_minute: t.fetch_per_minute,
            },
            settings.apps.values(),
            metrics.clone(),
        ));
        // Every node runs the refresher; the lease decides which one fetches. It stops (and
        // releases the leases) when the server stops.
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let refresher = tokio::spawn(tokens.clone().run_refresher(shutdown_rx));
        let workers = settings.server.workers;
        let shutdown_timeout = settings.server.shutdown_timeout.as_secs();
        let registry = Arc::new(Registry::new(&settings));
        let settings = Arc::new(settings);
        let verifier = tokio::spawn(verify_templates(
            settings.clone(),
            registry.clone(),
            tokens.clone(),
            client.clone(),
            store.clone(),
            shutdown.subscribe(),
        ));
        let state = web::Data::new(AppState {
            settings,
            store,
            client,
            tokens,
            registry,
            metrics,
            clock,
            node_id: node_id.clone(),
            permits: std::sync::atomic::AtomicU64::new(0),
        });

        let mut server = HttpServer::new(move || {
            ActixApp::new()
                .app_data(state.clone())
                .wrap(middleware::from_fn(request_id::middleware))
                .service(
                    web::resource("/v1/apps/{app}/messages/template")
                        .route(web::post().to(routes::send_template))
                        .default_service(web::to(routes::method_not_allowed)),
                )
                .service(
                    web::resource("/v1/apps/{app}/messages/subscribe")
                        .route(web::post().to(routes::send_subscribe))
                        .default_service(web::to(routes::method_not_allowed)),
                )
                .service(
                    web::resource("/v1/apps/{app}/access_token")
                        .route(web::get().to(routes::access_token))
                        .default_service(web::to(routes::method_not_allowed)),
                )
                .service(
                    web::resource("/v1/apps/{app}/access_token/invalidate")
                        .route(web::post().to(routes::invalidate_token))
                        .default_service(web::to(routes::method_not_allowed)),
                )
                .route("/healthz", web::get().to(routes::healthz))
                .route("/metrics", web::get().to(routes::metrics))
                .route("/readyz", web::get().to(routes::readyz))
                .default_service(web::to(routes::not_found))
        })
        .workers(workers)
        .shutdown_timeout(shutdown_timeout);
        if !opts.handle_signals {
            server = server.disable_signals();
        }
        let server = server
            .listen(listener)
            .map_err(|source| BuildError::Bind {
                addr: addr.to_string(),
                source,
            })?
            .run();
        Ok(Self {
            addr,
            server,
            node_id,
            shutdown,
            refresher,
            verifier,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// A handle to stop the server (`handle.stop(true)` drains in-flight requests).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped (signal or handle), then stops the token refresher, which
    /// releases this node's leases, and waits for it.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        let _ = self.shutdown.send(true);
        let _ = self.refresher.await;
        let _ = self.verifier.await;
        result
    }
}

/// The WeChat client as `[upstream]` configures it.
fn wechat_client(settings: &Settings) -> Result<WechatClient, String> {
    WechatClient::new(&UpstreamConfig {
        base_url: settings.upstream.base_url.clone(),
        connect_timeout: settings.upstream.connect_timeout,
        request_timeout: settings.upstream.request_timeout,
        pool_max_idle_per_host: settings.upstream.pool_max_idle_per_host,
        ..UpstreamConfig::default()
    })
    .map_err(|e| e.to_string())
}

/// The configured store. Redis is wrapped in the `on_unavailable` policy for `acquire`.
fn build_store(settings: &Settings, clock: Arc<dyn Clock>) -> Result<Arc<dyn Store>, BuildError> {
    let st = &settings.store;
    match st.kind {
        StoreKind::Memory => Ok(Arc::new(MemoryStore::with_clock(clock))),
        StoreKind::Redis => {
            let r = st
                .redis
                .as_ref()
                .ok_or_else(|| BuildError::Setup("store.redis is missing".into()))?;
            let topology = match r.mode {
                RedisMode::Standalone => Topology::Standalone {
                    url: r.url.clone().unwrap_or_default(),
                },
                RedisMode::Sentinel => Topology::Sentinel {
                    sentinels: r.sentinels.clone(),
                    master_name: r.master_name.clone().unwrap_or_default(),
                },
                RedisMode::Cluster => Topology::Cluster {
                    nodes: r.nodes.clone(),
                },
            };
            let redis = RedisStore::new(RedisConfig {
                topology,
                prefix: st.prefix.clone(),
                username: r.username.clone(),
                password: r.password.as_ref().map(|p| p.expose_secret().to_string()),
                sentinel_password: r
                    .sentinel_password
                    .as_ref()
                    .or(r.password.as_ref())
                    .map(|p| p.expose_secret().to_string()),
                connect_timeout: r.connect_timeout,
                command_timeout: r.command_timeout,
                tls_ca_pem: r.tls_ca_pem.clone(),
            })
            .map_err(|e| BuildError::Setup(e.to_string()))?;
            let policy = match st.on_unavailable {
                OnUnavailable::FailClosed => fallback::OnUnavailable::FailClosed,
                OnUnavailable::LocalShare => fallback::OnUnavailable::LocalShare {
                    expected_replicas: st.expected_replicas,
                },
            };
            Ok(Arc::new(FallbackStore::new(Arc::new(redis), policy)))
        }
    }
}

/// Checks every app's template registry against WeChat's lists once, retrying every 30 s
/// while WeChat or the store cannot be asked, until shutdown.
async fn verify_templates(
    settings: Arc<Settings>,
    registry: Arc<Registry>,
    tokens: Arc<TokenManager>,
    client: WechatClient,
    store: Arc<dyn Store>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let mut pending = false;
        for app in settings.apps.values() {
            if registry.verified(app) {
                continue;
            }
            if let Err(e) = registry.verify(app, &tokens, &client, &*store).await {
                pending = true;
                tracing::warn!(app = %app.name, error = %e, "cannot check the template registry against WeChat yet");
            }
        }
        if !pending {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// `wxgate check-config --online`: checks every app's template registry against WeChat's
/// template lists, with a token from `/cgi-bin/stable_token` in normal mode (which never
/// invalidates a token in use, whatever the app's mode), in memory, touching no shared state.
/// Returns the problems found; `Err` when WeChat could not be asked.
pub async fn check_templates_online(settings: &Settings) -> Result<Vec<String>, String> {
    let client = wechat_client(settings)?;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    // Classic apps are checked with a stable token: the two families never affect each other.
    let apps: Vec<wxgate_config::App> = settings
        .apps
        .values()
        .filter(|a| a.token_mode != wxgate_config::TokenMode::External && !a.templates.is_empty())
        .map(|a| wxgate_config::App {
            token_mode: wxgate_config::TokenMode::Stable,
            ..a.clone()
        })
        .collect();
    let tokens = TokenManager::new(
        store.clone(),
        client.clone(),
        Arc::new(SystemClock),
        TokenConfig {
            node_id: "check-config".into(),
            refresh_ahead_ms: 0,
            lease_ttl_ms: 60_000,
            check_interval: std::time::Duration::from_secs(1),
            wait_for_token: std::time::Duration::from_secs(1),
            fetch_per_minute: 10,
        },
        apps.iter(),
        Arc::new(Metrics::new()),
    );
    let mut checked = settings.clone();
    checked.apps = apps.iter().map(|a| (a.name.clone(), a.clone())).collect();
    let registry = Registry::new(&checked);
    let mut problems = Vec::new();
    for app in &apps {
        registry
            .verify(app, &tokens, &client, &*store)
            .await
            .map_err(|e| format!("app `{}`: {e}", app.name))?;
        problems.extend(registry.problems(app));
    }
    Ok(problems)
}
