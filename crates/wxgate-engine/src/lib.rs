//! wxgate's send engine: everything between a validated message and WeChat's answer, with no
//! HTTP. The HTTP API and a queue worker use it alike.
//!
//! # Layout
//! - [`Engine`]: built once per process from the settings and the shared state; `send`,
//!   `resolve` (the template registry), `token` / `invalidate_token` (the central token API),
//!   `readiness`, and the background tasks (token refresher, registry check).
//! - [`outcome`]: [`Sent`] or a typed [`SendError`] — class, errcode, reset time, field.
//! - `idempotency`: the claim protocol (a renewed lease; takeover after a crash).
//! - `send`: the attempts of one send (permits, token, retries, pauses).
//! - `permit`: one permit per attempt from the shared limiter; state-loss detection.
//! - [`token`]: one token owner per app for the cluster, a per-node cache in front of it.
//! - `registry`: templates by alias, per environment, checked against WeChat's lists.
//! - [`message`]: [`Outgoing`], a message for one of WeChat's send APIs.
//! - [`metrics`]: the Prometheus metrics the engine records.
//!
//! **Architecture invariant:** no HTTP here — no status codes, no actix. Every decision is
//! taken on typed values (errcode classes, store causes), never on an error's text.

pub mod idempotency;
pub mod inspect;
pub mod message;
pub mod metrics;
pub mod outcome;
mod permit;
pub mod queue;
pub mod registry;
mod send;
pub mod token;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wxgate_config::sending::TemplateKind;
use wxgate_config::{App, Settings, TokenMode};
use wxgate_protocol::api::Api;
use wxgate_store::clock::{Clock, SystemClock};
use wxgate_store::memory::MemoryStore;
use wxgate_store::SharedState;
use wxgate_upstream::{UpstreamConfig, WechatClient};

pub use message::Outgoing;
pub use metrics::Metrics;
pub use outcome::{LimitedBy, SendError, Sent};
pub use token::{Token, TokenError};

use crate::metrics::SendLabels;
use crate::registry::Registry;
use crate::token::{TokenConfig, TokenManager};

/// One send, as a caller asks for it.
pub struct SendRequest<'a> {
    pub app: &'a App,
    /// The caller's API key name: idempotency keys are scoped by it.
    pub caller: &'a str,
    /// The caller's idempotency key; for a template send without one, its `client_msg_id`.
    pub idempotency_key: Option<&'a str>,
    pub message: Outgoing,
    /// How long to wait for a permit when a window is full (`Prefer: wait=N`, capped).
    pub wait_for_permit: Option<Duration>,
    pub request_id: &'a str,
    /// When the request arrived: the retry deadline counts from here.
    pub started: Instant,
}

/// The outcome of [`Engine::send`].
#[derive(Debug)]
pub struct Delivery {
    pub result: Result<Sent, SendError>,
    /// Replayed from the idempotency key: the request that produced it.
    pub replayed_from: Option<String>,
}

impl Delivery {
    fn now(result: Result<Sent, SendError>) -> Self {
        Self {
            result,
            replayed_from: None,
        }
    }
}

/// Why the engine is not ready.
pub type NotReady = String;

/// Built once per process.
pub struct Engine {
    settings: Arc<Settings>,
    store: SharedState,
    client: WechatClient,
    tokens: Arc<TokenManager>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    node_id: String,
    /// Per appid, the highest grant sequence this node has seen (state-loss detection).
    seen: HashMap<String, AtomicU64>,
    /// Whether the limiter admits from a local share while the store is unreachable.
    local_share: bool,
    /// Per app name, the metric series of its sends ([`Api::SENDS`] order).
    series: HashMap<String, [metrics::SendSeries; 2]>,
}

/// The WeChat client as `[upstream]` configures it.
pub fn wechat_client(settings: &Settings) -> Result<WechatClient, String> {
    WechatClient::new(&UpstreamConfig {
        base_url: settings.upstream.base_url.clone(),
        connect_timeout: settings.upstream.connect_timeout,
        request_timeout: settings.upstream.request_timeout,
        pool_max_idle_per_host: settings.upstream.pool_max_idle_per_host,
        ..UpstreamConfig::default()
    })
    .map_err(|e| e.to_string())
}

impl Engine {
    /// `local_share`: the limiter admits from a local share while the store is unreachable
    /// (then an unreachable store does not make the node unready).
    pub fn new(
        settings: Arc<Settings>,
        store: SharedState,
        clock: Arc<dyn Clock>,
        node_id: String,
        local_share: bool,
    ) -> Result<Self, String> {
        let client = wechat_client(&settings)?;
        let metrics = Arc::new(Metrics::new());
        store.health.set_observer(metrics.clone());
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
                expiry_margin_ms: t.expiry_margin.as_millis() as u64,
            },
            settings.apps.values(),
            metrics.clone(),
        ));
        let registry = Arc::new(Registry::new(&settings));
        let seen = settings
            .apps
            .values()
            .map(|a| (a.appid.clone(), AtomicU64::new(0)))
            .collect();
        let series = settings
            .apps
            .values()
            .map(|a| {
                let [t, s] = Api::SENDS;
                (
                    a.name.clone(),
                    [
                        metrics::SendSeries::new(&a.name, t),
                        metrics::SendSeries::new(&a.name, s),
                    ],
                )
            })
            .collect();
        Ok(Self {
            settings,
            store,
            client,
            tokens,
            registry,
            metrics,
            clock,
            node_id,
            seen,
            local_share,
            series,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The metric series of `app`'s sends of `api`: the kept ones of a configured app, fresh
    /// ones (resolved through the families on use) for anything else.
    pub(crate) fn series(&self, app: &App, api: Api) -> std::borrow::Cow<'_, metrics::SendSeries> {
        let kept = self
            .series
            .get(&app.name)
            .and_then(|s| Api::SENDS.iter().position(|a| *a == api).map(|i| &s[i]));
        match kept {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(metrics::SendSeries::new(&app.name, api)),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn backend(&self) -> &'static str {
        self.store.health.backend()
    }

    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    fn seen_seq(&self, appid: &str) -> &AtomicU64 {
        self.seen
            .get(appid)
            .expect("a grant sequence per configured app")
    }

    /// Resolves a template alias to the app's WeChat id (for this environment) and checks
    /// `data` against the template's fields. A registered template whose fields are not known
    /// yet has them read from WeChat's lists first, so nothing unchecked is ever sent.
    pub async fn resolve(&self, app: &App, msg: &mut Outgoing) -> Result<(), SendError> {
        let kind = match msg {
            Outgoing::Template(_) => TemplateKind::Template,
            _ => TemplateKind::Subscribe,
        };
        if self.registry.needs_fields(app, msg.template_id()) {
            self.registry
                .verify(app, &self.tokens, &self.client, &self.store)
                .await
                .map_err(|detail| SendError::TemplatesUnavailable {
                    template_id: msg.template_id().to_string(),
                    detail,
                })?;
        }
        let id = self
            .registry
            .check(app, msg.template_id(), kind, msg.data())?;
        *msg.template_id_mut() = id;
        Ok(())
    }

    /// Sends one message: idempotency, permits, token, attempts. Records the outcome in the
    /// metrics and one log line.
    pub async fn send(&self, req: SendRequest<'_>) -> Delivery {
        let SendRequest {
            app,
            caller,
            idempotency_key,
            mut message,
            wait_for_permit,
            request_id,
            started,
        } = req;
        let api = message.api();
        // The caller's key (header, else a template's client_msg_id) makes the request
        // idempotent.
        let key = idempotency_key
            .map(str::to_string)
            .or_else(|| message.client_msg_id().map(str::to_string));
        // WeChat de-duplicates template messages on client_msg_id: always set one, so a retry
        // after an unknown outcome cannot notify the user twice. Derived from the key when there
        // is one (every replica derives the same), else fresh.
        if let Outgoing::Template(m) = &mut message {
            if m.client_msg_id.is_none() {
                m.client_msg_id = Some(match &key {
                    Some(k) => idempotency::derived_client_msg_id(caller, k),
                    None => format!("wxg-{}", uuid::Uuid::new_v4().simple()),
                });
            }
        }
        let delivery = match &key {
            Some(k) => {
                self.send_claimed(
                    app,
                    caller,
                    k,
                    message,
                    wait_for_permit,
                    request_id,
                    started,
                )
                .await
            }
            None => {
                let mut log = send::AttemptLog::default();
                Delivery::now(
                    self.attempts(app, &message, wait_for_permit, started, None, &mut log)
                        .await,
                )
            }
        };
        self.record(app, api, started, &delivery);
        delivery
    }

    fn record(&self, app: &App, api: Api, started: Instant, d: &Delivery) {
        let elapsed = started.elapsed();
        let latency_ms = elapsed.as_millis() as u64;
        let series = self.series(app, api);
        match &d.result {
            Ok(_) => series.sent(&self.metrics).inc(),
            Err(e) => self
                .metrics
                .sends
                .get_or_create(&SendLabels {
                    app: app.name.clone(),
                    api: api.as_str().into(),
                    outcome: e.code().as_str().into(),
                })
                .inc(),
        };
        series
            .send_seconds(&self.metrics)
            .observe(elapsed.as_secs_f64());
        match &d.result {
            Ok(sent) => tracing::info!(
                app = %app.name,
                api = api.as_str(),
                msgid = sent.msgid,
                attempts = sent.attempts,
                latency_ms,
                replayed = d.replayed_from.is_some(),
                "sent"
            ),
            Err(e) => tracing::warn!(
                app = %app.name,
                api = api.as_str(),
                code = e.code().as_str(),
                errcode = e.wechat_errcode(),
                latency_ms,
                error = %e,
                "send failed"
            ),
        }
    }

    /// The cluster's access_token for `app` (the central token API).
    pub async fn token(&self, app: &App) -> Result<Token, SendError> {
        Ok(self.tokens.get(app).await?)
    }

    /// WeChat rejected `bad`: the same single-flight recovery a send gets. Returns whether the
    /// store held it.
    pub async fn invalidate_token(&self, app: &App, bad: &str) -> Result<bool, SendError> {
        Ok(self.tokens.report_bad(app, bad, None).await?)
    }

    /// Ready when the shared store answers (or the limiter admits from a local share without
    /// it), every `required` app has a usable token, and the template registry matches WeChat.
    pub async fn readiness(&self) -> Result<(), NotReady> {
        if let Err(e) = self.store.health.ping().await {
            if !self.local_share {
                return Err(e.to_string());
            }
        }
        let mut missing = Vec::new();
        for app in self.settings.apps.values().filter(|a| a.required) {
            if !self.tokens.has_token(app).await {
                missing.push(app.name.clone());
            }
        }
        if !missing.is_empty() {
            return Err(format!(
                "no usable access_token yet for: {}",
                missing.join(", ")
            ));
        }
        let problems: Vec<String> = self
            .settings
            .apps
            .values()
            .flat_map(|a| self.registry.problems(a))
            .collect();
        if !problems.is_empty() {
            return Err(format!("template registry: {}", problems.join("; ")));
        }
        Ok(())
    }

    /// Releases the token-refresh leases this node holds (the refresher does it when it
    /// stops), so another node's refresher takes them at its next tick.
    pub async fn release_leases(&self) {
        self.tokens.release_leases().await;
    }

    /// Runs the background work until `shutdown` turns true: every app's token refresher
    /// (released leases at the end, so another node takes over at once) and the registry check.
    pub fn spawn_background(
        self: &Arc<Self>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let refresher = tokio::spawn(self.tokens.clone().run_refresher(shutdown.clone()));
        let shutdown_sampler = shutdown.clone();
        let me = self.clone();
        let verifier = tokio::spawn(async move { me.verify_templates(shutdown.clone()).await });
        let me = self.clone();
        let sampler = tokio::spawn(async move { me.sample_state(shutdown_sampler).await });
        vec![refresher, verifier, sampler]
    }

    /// Every few seconds, the gauges that describe shared state: each app's token age and
    /// time to expiry, whether this node leads its refresh, and each configured window's use
    /// (the fullest window per API), and the queue's depth, oldest entry age and dead letters.
    /// One read-only script per app (and the queue's counts where there is a queue).
    async fn sample_state(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            for app in self.settings.apps.values() {
                let Ok(s) = inspect::read_app_state(
                    self.store.inspect.as_ref(),
                    self.backend(),
                    &self.settings,
                    app,
                    // The counts are not sampled: no scan at all.
                    0,
                )
                .await
                else {
                    continue;
                };
                let labels = metrics::AppLabels {
                    app: app.name.clone(),
                };
                let (age, left) = s.token.as_ref().map_or((0.0, 0.0), |t| {
                    (t.age_ms as f64 / 1000.0, t.expires_in_ms as f64 / 1000.0)
                });
                self.metrics
                    .token_age_seconds
                    .get_or_create(&labels)
                    .set(age);
                self.metrics
                    .token_expires_in_seconds
                    .get_or_create(&labels)
                    .set(left);
                let leads = s.leader.as_ref().is_some_and(|l| l.node == self.node_id);
                self.metrics
                    .token_leader
                    .get_or_create(&labels)
                    .set(i64::from(leads));
                let mut fullest: std::collections::BTreeMap<wxgate_protocol::api::Api, f64> =
                    Default::default();
                for w in &s.windows {
                    let ratio = if w.limit == 0 {
                        1.0
                    } else {
                        w.used as f64 / w.limit as f64
                    };
                    let e = fullest.entry(w.api).or_insert(0.0);
                    *e = e.max(ratio);
                }
                for (api, ratio) in fullest {
                    self.metrics
                        .window_utilisation
                        .get_or_create(&Metrics::api(&app.name, api.as_str()))
                        .set(ratio);
                }
                self.sample_queue(app).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Checks every app's template registry against WeChat's lists once, retrying every 30 s
    /// while WeChat or the store cannot be asked, until shutdown.
    async fn verify_templates(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            let mut pending = false;
            for app in self.settings.apps.values() {
                if self.registry.verified(app) {
                    continue;
                }
                if let Err(e) = self
                    .registry
                    .verify(app, &self.tokens, &self.client, &self.store)
                    .await
                {
                    pending = true;
                    tracing::warn!(app = %app.name, error = %e, "cannot check the template registry against WeChat yet");
                }
            }
            if !pending {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// `wxgate check-config --online`: checks every app's template registry against WeChat's
/// template lists, with a token from `/cgi-bin/stable_token` in normal mode (which never
/// invalidates a token in use, whatever the app's mode), in memory, touching no shared state.
/// Returns the problems found; `Err` when WeChat could not be asked.
pub async fn check_templates_online(settings: &Settings) -> Result<Vec<String>, String> {
    // Classic apps are checked with a stable token: the two families never affect each other.
    let apps: Vec<App> = settings
        .apps
        .values()
        .filter(|a| a.token_mode != TokenMode::External && !a.templates.is_empty())
        .map(|a| App {
            token_mode: TokenMode::Stable,
            ..a.clone()
        })
        .collect();
    let mut checked = settings.clone();
    checked.apps = apps.iter().map(|a| (a.name.clone(), a.clone())).collect();
    checked.token.refresh_ahead = Duration::ZERO;
    checked.token.wait_for_token = Duration::from_secs(1);
    checked.token.fetch_per_minute = 10;
    let engine = Engine::new(
        Arc::new(checked),
        SharedState::new(Arc::new(MemoryStore::new())),
        Arc::new(SystemClock),
        "check-config".into(),
        false,
    )?;
    let mut problems = Vec::new();
    for app in &apps {
        engine
            .registry
            .verify(app, &engine.tokens, &engine.client, &engine.store)
            .await
            .map_err(|e| format!("app `{}`: {e}", app.name))?;
        problems.extend(engine.registry.problems(app));
    }
    Ok(problems)
}
