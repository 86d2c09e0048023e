//! Building and running the server. [`Application::build`] binds the listener (port 0 works, for
//! tests), builds every dependency once (store, upstream client, token manager) and hands them
//! to each actix worker through `web::Data`. The binary and the tests share this path.
//! [`Application::run_until_stopped`] serves until a signal (or a [`DrainHandle`]) starts the
//! graceful drain (see [`crate::drain`]), or until stopped through [`Application::handle`].

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

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

use crate::drain::{self, DrainHandle, Signals};
use crate::request_id;
use crate::route_table;

/// Everything a handler needs, built once per process.
pub struct AppState {
    pub engine: Arc<Engine>,
    /// Set once the drain starts: `/readyz` fails, responses close their connections.
    pub drain: DrainHandle,
    /// The OpenAPI document served at `/openapi.json`, built once.
    pub openapi_json: String,
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
    /// SIGTERM/SIGINT start the graceful drain (see [`crate::drain`]). Off for in-process
    /// tests, which can start the same drain with [`Application::drain_handle`].
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
    engine: Arc<Engine>,
    drain: DrainHandle,
    signals: Option<Signals>,
    drain_delay: Duration,
    shutdown_timeout: Duration,
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
        let shutdown_timeout = settings.server.shutdown_timeout;
        let drain_delay = settings.server.drain_delay;
        let request_timeout = settings.server.request_timeout;
        let max_connections = settings.server.max_connections;
        // Registered before anything runs: a signal from now on starts the drain.
        let signals = if opts.handle_signals {
            Some(
                Signals::register()
                    .map_err(|e| BuildError::Setup(format!("cannot handle SIGTERM/SIGINT: {e}")))?,
            )
        } else {
            None
        };
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
        let mut background = engine.spawn_background(shutdown_rx.clone());
        // Queued delivery: every node drains every app's stream (Redis store only).
        background.extend(engine.spawn_queue_workers(shutdown_rx));
        let drain = DrainHandle::default();
        let state = web::Data::new(AppState {
            engine: engine.clone(),
            drain: drain.clone(),
            openapi_json: crate::openapi::json(),
        });

        let server = HttpServer::new(move || {
            ActixApp::new()
                .app_data(state.clone())
                .wrap(middleware::from_fn(drain::middleware))
                .wrap(middleware::from_fn(crate::http_metrics::middleware))
                .wrap(middleware::from_fn(request_id::middleware))
                .configure(route_table::configure)
        })
        .workers(workers)
        .on_connect(crate::body::remember_socket)
        // Headers must arrive within the request timeout (the body is bounded by the handlers).
        .client_request_timeout(request_timeout)
        // A connection being closed (after a 408 or 413) is dropped if the client lingers.
        .client_disconnect_timeout(std::time::Duration::from_secs(1))
        // actix counts connections per worker.
        .max_connections(max_connections.div_ceil(workers).max(1))
        .shutdown_timeout(shutdown_timeout.as_secs())
        // The drain handles the signals (actix would stop accepting at once).
        .disable_signals();
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
            engine,
            drain,
            signals,
            drain_delay,
            shutdown_timeout,
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

    /// A handle to stop the server at once (`handle.stop(true)` lets in-flight requests
    /// finish; no drain delay).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// A handle to start the graceful drain, as SIGTERM does.
    pub fn drain_handle(&self) -> DrainHandle {
        self.drain.clone()
    }

    /// Serves until the drain (a signal or [`Application::drain_handle`]) or a stop through
    /// [`Application::handle`]; then stops the token refresher, which releases this node's
    /// leases, and waits for it. See [`crate::drain`] for the phases.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Self {
            server,
            node_id,
            shutdown,
            background,
            engine,
            drain,
            mut signals,
            drain_delay,
            shutdown_timeout,
            ..
        } = self;
        let handle = server.handle();
        let mut server = std::pin::pin!(server);
        let result = 'run: {
            let why = tokio::select! {
                r = &mut server => break 'run r,
                s = drain::next_signal(&mut signals) => s,
                () = drain.requested() => "drain requested",
            };
            drain.mark_draining();
            tracing::info!(
                node_id = %node_id,
                signal = why,
                drain_delay_ms = drain_delay.as_millis() as u64,
                "draining: /readyz answers 503, still serving until the drain delay ends"
            );
            tokio::select! {
                r = &mut server => break 'run r,
                () = tokio::time::sleep(drain_delay) => {}
                s = drain::next_signal(&mut signals) => {
                    tracing::info!(signal = s, "second signal: skipping the rest of the drain delay");
                }
                () = drain.requested() => {
                    tracing::info!("drain requested again: skipping the rest of the drain delay");
                }
            }
            tracing::info!(
                shutdown_timeout_ms = shutdown_timeout.as_millis() as u64,
                "stopping: handing off token-refresh leadership, no longer accepting; in-flight requests may finish"
            );
            // The refresher releases the leases while the listener closes.
            let _ = shutdown.send(true);
            let (r, ()) = tokio::join!(&mut server, handle.stop(true));
            r
        };
        let _ = shutdown.send(true);
        for task in background {
            let _ = task.await;
        }
        // An in-flight request that found no token may have taken a lease back meanwhile.
        engine.release_leases().await;
        if drain.is_draining() {
            tracing::info!(node_id = %node_id, "stopped: every in-flight request answered or timed out");
        }
        result
    }
}

/// An engine on the configured store that runs nothing in the background: for the operator
/// commands (`wxgate dlq`), which only read and move queue entries.
pub fn offline_engine(settings: Settings, node_id: &str) -> Result<Engine, BuildError> {
    let (store, local_share) = build_store(&settings, Arc::new(SystemClock))?;
    Engine::new(
        Arc::new(settings),
        store,
        Arc::new(SystemClock),
        node_id.to_string(),
        local_share,
    )
    .map_err(BuildError::Setup)
}

/// The configured store, and whether its limiter admits from a local share without it. With
/// Redis, the limiter role alone is wrapped in the `on_unavailable` policy.
fn build_store(
    settings: &Settings,
    clock: Arc<dyn Clock>,
) -> Result<(SharedState, bool), BuildError> {
    let st = &settings.store;
    let (store, queue) = open_stores(settings, clock)?;
    match st.kind {
        StoreKind::Memory => Ok((SharedState::new(store), false)),
        StoreKind::Redis => {
            let policy = match st.on_unavailable {
                OnUnavailable::FailClosed => fallback::OnUnavailable::FailClosed,
                OnUnavailable::LocalShare => fallback::OnUnavailable::LocalShare {
                    expected_replicas: st.expected_replicas,
                },
            };
            let limiter = FallbackLimiter::new(store.clone(), policy);
            let local_share = limiter.admits_without_store();
            let mut shared = SharedState::new(store).with_limiter(Arc::new(limiter));
            if let Some(queue) = queue {
                shared = shared.with_queue(queue);
            }
            Ok((shared, local_share))
        }
    }
}

/// The configured store itself, without a fallback policy: what `serve` builds on, and what
/// `wxgate inspect` reads.
pub fn open_store(
    settings: &Settings,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn Store>, BuildError> {
    Ok(open_stores(settings, clock)?.0)
}

/// The store, and its queue where it has one (Redis).
type Stores = (Arc<dyn Store>, Option<Arc<dyn wxgate_store::Queue>>);

/// The configured store, and its queue where it has one (Redis).
fn open_stores(settings: &Settings, clock: Arc<dyn Clock>) -> Result<Stores, BuildError> {
    let st = &settings.store;
    match st.kind {
        StoreKind::Memory => Ok((Arc::new(MemoryStore::with_clock(clock)), None)),
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
            let redis = Arc::new(redis);
            Ok((redis.clone(), Some(redis)))
        }
    }
}
