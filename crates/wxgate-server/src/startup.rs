//! Building and running the server. [`Application::build`] binds the listener (port 0 works, for
//! tests), builds every dependency once (store, upstream client, token manager) and hands them
//! to each actix worker through `web::Data`. The binary and the tests share this path.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{middleware, web, App as ActixApp, HttpServer};
use secrecy::ExposeSecret;
use wxgate_config::{OnUnavailable, RedisMode, Settings, StoreKind};
use wxgate_engine::Engine;
use wxgate_store::clock::{Clock, SystemClock};
use wxgate_store::fallback::{self, FallbackLimiter};
use wxgate_store::memory::MemoryStore;
use wxgate_store::redis_store::{RedisConfig, RedisStore, Topology};
use wxgate_store::{SharedState, Store};

use crate::request_id;
use crate::routes;

/// Everything a handler needs, built once per process.
pub struct AppState {
    pub engine: Arc<Engine>,
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
    background: Vec<tokio::task::JoinHandle<()>>,
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
        let (store, local_share) = match opts.store {
            Some(s) => (SharedState::new(s), false),
            None => build_store(&settings, clock.clone())?,
        };
        let node_id = settings.server.node_id.clone().unwrap_or_else(|| {
            format!(
                "wxgate-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            )
        });
        let workers = settings.server.workers;
        let shutdown_timeout = settings.server.shutdown_timeout.as_secs();
        let engine = Arc::new(
            Engine::new(
                Arc::new(settings),
                store,
                clock,
                node_id.clone(),
                local_share,
            )
            .map_err(BuildError::Setup)?,
        );
        // Every node runs the refresher; the lease decides which one fetches. It stops (and
        // releases the leases) when the server stops.
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let background = engine.spawn_background(shutdown_rx);
        let state = web::Data::new(AppState { engine });

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
            background,
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
        for task in self.background {
            let _ = task.await;
        }
        result
    }
}

/// The configured store, and whether its limiter admits from a local share without it. With
/// Redis, the limiter role alone is wrapped in the `on_unavailable` policy.
fn build_store(
    settings: &Settings,
    clock: Arc<dyn Clock>,
) -> Result<(SharedState, bool), BuildError> {
    let st = &settings.store;
    match st.kind {
        StoreKind::Memory => {
            let memory: Arc<dyn Store> = Arc::new(MemoryStore::with_clock(clock));
            Ok((SharedState::new(memory), false))
        }
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
            let redis: Arc<dyn Store> = Arc::new(redis);
            let limiter = FallbackLimiter::new(redis.clone(), policy);
            let local_share = limiter.admits_without_store();
            Ok((
                SharedState::new(redis).with_limiter(Arc::new(limiter)),
                local_share,
            ))
        }
    }
}
