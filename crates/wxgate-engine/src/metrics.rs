//! The Prometheus metrics the engine records (served by the HTTP crate at `GET /metrics`). Labels are app names, API names,
//! errcodes and classes from the errcode table, and stable outcome codes — never a token, a
//! secret, an openid or a request id, so cardinality stays bounded by configuration.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{OnceLock, RwLock};

use wxgate_protocol::api::Api;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SendLabels {
    pub app: String,
    pub api: String,
    /// `sent`, or the error `code` the caller got.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub app: String,
    pub api: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WechatErrorLabels {
    pub app: String,
    pub api: String,
    pub errcode: String,
    /// The class from `wxgate_protocol::errcode::TABLE`.
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PermitLabels {
    pub app: String,
    pub api: String,
    /// `granted`, `wait`, `held` (full only after a state loss), `blocked` or `unavailable`.
    pub decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    pub app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub app: String,
    /// `ok`, or why not (`errcode_<n>`, `transport`, `store`, `unavailable`).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route pattern (`/v1/apps/{app}/messages/template`), never the raw path;
    /// `unmatched` for a path no route matches.
    pub route: String,
    pub method: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub api: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScriptLabels {
    /// The store operation (`acquire`, `token_write`, ...: the script's file name).
    pub script: String,
}

fn fast_histogram() -> Histogram {
    // 0.25 ms .. ~4 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

fn send_histogram() -> Histogram {
    // 1 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    pub sends: Family<SendLabels, Counter>,
    pub send_seconds: Family<ApiLabels, Histogram, fn() -> Histogram>,
    pub upstream_attempts: Family<ApiLabels, Counter>,
    pub wechat_errors: Family<WechatErrorLabels, Counter>,
    pub permits: Family<PermitLabels, Counter>,
    pub token_fetches: Family<TokenLabels, Counter>,
    pub state_losses: Family<AppLabels, Counter>,
    pub idempotency_takeovers: Family<AppLabels, Counter>,
    pub build_info: Family<BuildLabels, Gauge>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub upstream_seconds: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
    pub permit_wait_seconds: Family<ApiLabels, Histogram, fn() -> Histogram>,
    pub token_age_seconds: Family<AppLabels, Gauge<f64, AtomicU64>>,
    pub token_expires_in_seconds: Family<AppLabels, Gauge<f64, AtomicU64>>,
    pub token_leader: Family<AppLabels, Gauge>,
    pub window_utilisation: Family<ApiLabels, Gauge<f64, AtomicU64>>,
    pub store_seconds: Family<ScriptLabels, Histogram, fn() -> Histogram>,
    pub store_errors: Family<ScriptLabels, Counter>,
    /// Entries in the app's stream (queued + being delivered), as this node last read it.
    pub queue_depth: Family<AppLabels, Gauge>,
    /// Age of the app's oldest queued entry in seconds (0 when empty).
    pub queue_oldest_age_seconds: Family<AppLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Messages in the app's dead-letter stream.
    pub queue_dead_letters: Family<AppLabels, Gauge>,
    /// Queued messages this node finished, by final state (`sent` | `failed`): the drain rate
    /// is its rate summed over nodes.
    pub queue_drained: Family<QueueLabels, Counter>,
    /// `store_seconds` by script name, resolved once per script (see [`SendSeries`]).
    store_series: RwLock<HashMap<&'static str, Histogram>>,
    /// `http_requests` by (route, method, status), resolved once each.
    http_series: RwLock<HashMap<(&'static str, &'static str, u16), Counter>>,
}

/// The series a successful send of one app and API touches, each resolved from its family on
/// first use and kept: a send then costs no label strings and no family lookups (building the
/// labels and hashing them was ~1 µs per send, measured with `perf` in BENCHMARKS.md). A series
/// appears in `/metrics` when it is first used, as it would through its family.
#[derive(Clone)]
pub struct SendSeries {
    app: String,
    api: Api,
    sent: OnceLock<Counter>,
    send_seconds: OnceLock<Histogram>,
    upstream_attempts: OnceLock<Counter>,
    upstream_seconds: OnceLock<Histogram>,
    permits_granted: OnceLock<Counter>,
    permit_wait_seconds: OnceLock<Histogram>,
}

impl SendSeries {
    pub fn new(app: &str, api: Api) -> Self {
        Self {
            app: app.to_string(),
            api,
            sent: OnceLock::new(),
            send_seconds: OnceLock::new(),
            upstream_attempts: OnceLock::new(),
            upstream_seconds: OnceLock::new(),
            permits_granted: OnceLock::new(),
            permit_wait_seconds: OnceLock::new(),
        }
    }

    fn labels(&self) -> ApiLabels {
        Metrics::api(&self.app, self.api.as_str())
    }

    /// `sends{outcome="sent"}`.
    pub fn sent(&self, m: &Metrics) -> &Counter {
        self.sent.get_or_init(|| {
            m.sends
                .get_or_create(&SendLabels {
                    app: self.app.clone(),
                    api: self.api.as_str().into(),
                    outcome: "sent".into(),
                })
                .clone()
        })
    }

    pub fn send_seconds(&self, m: &Metrics) -> &Histogram {
        self.send_seconds
            .get_or_init(|| m.send_seconds.get_or_create(&self.labels()).clone())
    }

    pub fn upstream_attempts(&self, m: &Metrics) -> &Counter {
        self.upstream_attempts
            .get_or_init(|| m.upstream_attempts.get_or_create(&self.labels()).clone())
    }

    pub fn upstream_seconds(&self, m: &Metrics) -> &Histogram {
        self.upstream_seconds.get_or_init(|| {
            m.upstream_seconds
                .get_or_create(&UpstreamLabels {
                    api: self.api.as_str().into(),
                })
                .clone()
        })
    }

    /// `permits{decision="granted"}`.
    pub fn permits_granted(&self, m: &Metrics) -> &Counter {
        self.permits_granted.get_or_init(|| {
            m.permits
                .get_or_create(&PermitLabels {
                    app: self.app.clone(),
                    api: self.api.as_str().into(),
                    decision: "granted".into(),
                })
                .clone()
        })
    }

    pub fn permit_wait_seconds(&self, m: &Metrics) -> &Histogram {
        self.permit_wait_seconds
            .get_or_init(|| m.permit_wait_seconds.get_or_create(&self.labels()).clone())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub app: String,
    /// `sent` or `failed`.
    pub state: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wxgate");
        let sends = Family::<SendLabels, Counter>::default();
        registry.register("sends", "Send requests answered, by outcome", sends.clone());
        let send_seconds =
            Family::<ApiLabels, Histogram, fn() -> Histogram>::new_with_constructor(send_histogram);
        registry.register(
            "send_duration_seconds",
            "Time from a send request's arrival to its answer",
            send_seconds.clone(),
        );
        let upstream_attempts = Family::<ApiLabels, Counter>::default();
        registry.register(
            "upstream_attempts",
            "Calls made to WeChat's send APIs (retries included)",
            upstream_attempts.clone(),
        );
        let wechat_errors = Family::<WechatErrorLabels, Counter>::default();
        registry.register(
            "wechat_errors",
            "Non-zero errcodes WeChat answered to sends, with their class",
            wechat_errors.clone(),
        );
        let permits = Family::<PermitLabels, Counter>::default();
        registry.register(
            "permits",
            "Permit decisions of the shared limiter",
            permits.clone(),
        );
        let token_fetches = Family::<TokenLabels, Counter>::default();
        registry.register(
            "token_fetches",
            "Calls to WeChat's token endpoints made by this node (as the refresh leader)",
            token_fetches.clone(),
        );
        let state_losses = Family::<AppLabels, Counter>::default();
        registry.register(
            "state_losses",
            "Times this node found that the shared store had lost the limiter's state",
            state_losses.clone(),
        );
        let idempotency_takeovers = Family::<AppLabels, Counter>::default();
        registry.register(
            "idempotency_takeovers",
            "Idempotency claims taken over from requests that did not finish (a crashed node)",
            idempotency_takeovers.clone(),
        );
        let queue_depth = Family::<AppLabels, Gauge>::default();
        registry.register(
            "queue_depth",
            "Entries in the app's queue stream (queued and being delivered)",
            queue_depth.clone(),
        );
        let queue_oldest_age_seconds =
            Family::<AppLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "queue_oldest_age_seconds",
            "Age of the app's oldest queued entry (0 when the queue is empty)",
            queue_oldest_age_seconds.clone(),
        );
        let queue_dead_letters = Family::<AppLabels, Gauge>::default();
        registry.register(
            "queue_dead_letters",
            "Messages in the app's dead-letter stream",
            queue_dead_letters.clone(),
        );
        let queue_drained = Family::<QueueLabels, Counter>::default();
        registry.register(
            "queue_drained",
            "Queued messages this node finished, by final state",
            queue_drained.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "build_info",
            "Always 1; the version label says which build this node runs",
            build_info.clone(),
        );
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route pattern, method and status",
            http_requests.clone(),
        );
        let upstream_seconds =
            Family::<UpstreamLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                send_histogram,
            );
        registry.register(
            "upstream_duration_seconds",
            "Latency of calls to WeChat's send APIs, by API",
            upstream_seconds.clone(),
        );
        let permit_wait_seconds =
            Family::<ApiLabels, Histogram, fn() -> Histogram>::new_with_constructor(send_histogram);
        registry.register(
            "permit_wait_seconds",
            "Time from asking the shared limiter for a permit to getting one (waits included)",
            permit_wait_seconds.clone(),
        );
        let token_age_seconds = Family::<AppLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "token_age_seconds",
            "Age of the app's shared access_token (sampled every few seconds)",
            token_age_seconds.clone(),
        );
        let token_expires_in_seconds = Family::<AppLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "token_expires_in_seconds",
            "Time until the app's shared access_token expires (sampled every few seconds)",
            token_expires_in_seconds.clone(),
        );
        let token_leader = Family::<AppLabels, Gauge>::default();
        registry.register(
            "token_leader",
            "1 while this node holds the app's token-refresh lease, else 0 (sampled)",
            token_leader.clone(),
        );
        let window_utilisation = Family::<ApiLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "window_utilisation_ratio",
            "Use of the fullest configured window of the app and API, 0 to 1 (sampled)",
            window_utilisation.clone(),
        );
        let store_seconds =
            Family::<ScriptLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                fast_histogram,
            );
        registry.register(
            "redis_operation_duration_seconds",
            "Latency of shared-store (Redis) operations, by script",
            store_seconds.clone(),
        );
        let store_errors = Family::<ScriptLabels, Counter>::default();
        registry.register(
            "redis_operation_errors",
            "Shared-store (Redis) operations that failed, by script",
            store_errors.clone(),
        );
        Self {
            queue_depth,
            queue_oldest_age_seconds,
            queue_dead_letters,
            queue_drained,
            build_info,
            http_requests,
            upstream_seconds,
            permit_wait_seconds,
            token_age_seconds,
            token_expires_in_seconds,
            token_leader,
            window_utilisation,
            store_seconds,
            store_errors,
            state_losses,
            idempotency_takeovers,
            registry,
            sends,
            send_seconds,
            upstream_attempts,
            wechat_errors,
            permits,
            token_fetches,
            store_series: RwLock::default(),
            http_series: RwLock::default(),
        }
    }

    /// The `http_requests` counter of a route pattern, method and status: resolved from its
    /// family once, then without building label strings.
    pub fn http_request(&self, route: &'static str, method: &'static str, status: u16) -> Counter {
        cached(&self.http_series, (route, method, status), || {
            self.http_requests
                .get_or_create(&HttpLabels {
                    route: route.to_string(),
                    method: method.to_string(),
                    status: status.to_string(),
                })
                .clone()
        })
    }

    pub fn api(app: &str, api: &str) -> ApiLabels {
        ApiLabels {
            app: app.to_string(),
            api: api.to_string(),
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// `cache[key]`, made by `make` (from its family) the first time: a series is then reached
/// without building its label strings.
fn cached<K: std::hash::Hash + Eq, M: Clone>(
    cache: &RwLock<HashMap<K, M>>,
    key: K,
    make: impl FnOnce() -> M,
) -> M {
    if let Some(m) = cache.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return m.clone();
    }
    let m = make();
    cache
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, m.clone());
    m
}

impl wxgate_store::StoreObserver for Metrics {
    fn observe(&self, script: &'static str, seconds: f64, ok: bool) {
        let labels = || ScriptLabels {
            script: script.to_string(),
        };
        cached(&self.store_series, script, || {
            self.store_seconds.get_or_create(&labels()).clone()
        })
        .observe(seconds);
        if !ok {
            self.store_errors.get_or_create(&labels()).inc();
        }
    }
}
