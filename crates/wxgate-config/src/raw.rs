//! The configuration file's shape, with defaults. Unknown keys are errors, so a typo is caught
//! by `wxgate check-config` instead of silently ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sending::{self, RawAppLimits, RawIdempotency, RawRetry, RawSending, RawTemplate};
use crate::{
    resolve_optional_secret, resolve_secret, ApiKey, App, AppScope, ConfigError, QueueSettings,
    RedisSettings, ServerSettings, Settings, StoreSettings, TokenSettings, UpstreamSettings,
};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawSettings {
    server: RawServer,
    upstream: RawUpstream,
    tracing: RawTracing,
    store: RawStore,
    token: RawToken,
    limits: RawSending,
    retry: RawRetry,
    idempotency: RawIdempotency,
    queue: RawQueue,
    /// Environment name → glob every template id of that environment must match.
    template_id_patterns: BTreeMap<String, String>,
    apps: BTreeMap<String, RawApp>,
    api_keys: BTreeMap<String, RawApiKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    /// Selects each registered template's id (`ids.<environment>`).
    environment: String,
    listen: String,
    workers: usize,
    max_body_bytes: usize,
    node_id: Option<String>,
    shutdown_timeout_secs: u64,
    drain_delay_secs: u64,
    /// Time to read a whole request (headers and body).
    request_timeout_ms: u64,
    /// Connections kept open at once, across the node's workers.
    max_connections: usize,
    /// Start even with no app or no API key configured.
    allow_empty_config: bool,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            environment: "default".into(),
            listen: "0.0.0.0:8080".into(),
            workers: 2,
            max_body_bytes: 64 * 1024,
            node_id: None,
            shutdown_timeout_secs: 10,
            drain_delay_secs: 5,
            request_timeout_ms: 10_000,
            max_connections: 10_000,
            allow_empty_config: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawUpstream {
    base_url: String,
    connect_timeout_ms: u64,
    request_timeout_ms: u64,
    pool_max_idle_per_host: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTracing {
    otlp_endpoint: Option<String>,
    service_name: String,
}

impl Default for RawTracing {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "wxgate".into(),
        }
    }
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            base_url: "https://api.weixin.qq.com".into(),
            connect_timeout_ms: 3_000,
            request_timeout_ms: 5_000,
            pool_max_idle_per_host: 64,
        }
    }
}

/// Which shared-state backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// In-process state: a single node only.
    #[default]
    Memory,
    /// Redis (standalone, Sentinel or Cluster): any number of replicas.
    Redis,
}

/// What sends do when the shared store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Refuse with 503 and `Retry-After` (default): never send what the cluster cannot count.
    #[default]
    FailClosed,
    /// Admit from this node's share of each limit (limit ÷ `expected_replicas`).
    LocalShare,
}

/// How Redis is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    #[default]
    Standalone,
    Sentinel,
    Cluster,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    kind: StoreKind,
    prefix: String,
    on_unavailable: OnUnavailable,
    expected_replicas: u64,
    redis: RawRedis,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            kind: StoreKind::Memory,
            prefix: "wxgate".into(),
            on_unavailable: OnUnavailable::FailClosed,
            expected_replicas: 1,
            redis: RawRedis::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRedis {
    mode: RedisMode,
    url: Option<String>,
    nodes: Vec<String>,
    sentinels: Vec<String>,
    master_name: Option<String>,
    username: Option<String>,
    password: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    sentinel_password: Option<String>,
    sentinel_password_env: Option<String>,
    sentinel_password_file: Option<PathBuf>,
    connect_timeout_ms: u64,
    command_timeout_ms: u64,
    /// A PEM file of CA certificates to trust for `rediss://` (a private CA).
    tls_ca_file: Option<PathBuf>,
}

impl Default for RawRedis {
    fn default() -> Self {
        Self {
            mode: RedisMode::Standalone,
            url: None,
            nodes: Vec::new(),
            sentinels: Vec::new(),
            master_name: None,
            username: None,
            password: None,
            password_env: None,
            password_file: None,
            sentinel_password: None,
            sentinel_password_env: None,
            sentinel_password_file: None,
            connect_timeout_ms: 1_000,
            command_timeout_ms: 1_000,
            tls_ca_file: None,
        }
    }
}

fn redis_url(field: &str, url: &str) -> Result<(), ConfigError> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(ConfigError::at(
            field,
            "must be a redis:// or rediss:// URL",
        ));
    }
    Ok(())
}

impl RawRedis {
    fn validate(self) -> Result<RedisSettings, ConfigError> {
        let at = |f: &str| format!("store.redis.{f}");
        match self.mode {
            RedisMode::Standalone => {
                let url = self.url.as_deref().ok_or_else(|| {
                    ConfigError::at(at("url"), "required when store.redis.mode = \"standalone\"")
                })?;
                redis_url(&at("url"), url)?;
            }
            RedisMode::Cluster => {
                if self.nodes.is_empty() {
                    return Err(ConfigError::at(at("nodes"), "list at least one seed node"));
                }
                for n in &self.nodes {
                    redis_url(&at("nodes"), n)?;
                }
            }
            RedisMode::Sentinel => {
                if self.sentinels.is_empty() {
                    return Err(ConfigError::at(
                        at("sentinels"),
                        "list at least one sentinel",
                    ));
                }
                for n in &self.sentinels {
                    redis_url(&at("sentinels"), n)?;
                }
                if self.master_name.as_deref().is_none_or(str::is_empty) {
                    return Err(ConfigError::at(
                        at("master_name"),
                        "required with sentinels",
                    ));
                }
            }
        }
        let password = resolve_optional_secret(
            "password",
            self.password,
            self.password_env,
            self.password_file,
        )
        .map_err(|e| e.under("store.redis"))?;
        let sentinel_password = resolve_optional_secret(
            "sentinel_password",
            self.sentinel_password,
            self.sentinel_password_env,
            self.sentinel_password_file,
        )
        .map_err(|e| e.under("store.redis"))?;
        for (f, v) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("command_timeout_ms", self.command_timeout_ms),
        ] {
            if !(1..=60_000).contains(&v) {
                return Err(ConfigError::at(at(f), "must be between 1 and 60000"));
            }
        }
        let tls_ca_pem = match &self.tls_ca_file {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    ConfigError::at(
                        at("tls_ca_file"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(ConfigError::at(
                        at("tls_ca_file"),
                        "not a PEM certificate file",
                    ));
                }
                Some(pem)
            }
        };
        Ok(RedisSettings {
            tls_ca_pem,
            mode: self.mode,
            url: self.url,
            nodes: self.nodes,
            sentinels: self.sentinels,
            master_name: self.master_name,
            username: self.username,
            password,
            sentinel_password,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            command_timeout: Duration::from_millis(self.command_timeout_ms),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawToken {
    refresh_ahead_secs: u64,
    lease_ttl_ms: u64,
    check_interval_ms: u64,
    wait_for_token_ms: u64,
    fetch_per_minute: u64,
    expiry_margin_ms: u64,
}

impl Default for RawToken {
    fn default() -> Self {
        Self {
            refresh_ahead_secs: 240,
            lease_ttl_ms: 15_000,
            check_interval_ms: 1_000,
            wait_for_token_ms: 5_000,
            fetch_per_minute: 20,
            expiry_margin_ms: 10_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawQueue {
    enabled: bool,
    max_backlog: u64,
    concurrency: usize,
    claim_idle_ms: u64,
    max_attempts: u32,
    block_ms: u64,
    max_permit_wait_secs: u64,
    callback_hosts: Vec<String>,
}

impl Default for RawQueue {
    fn default() -> Self {
        Self {
            enabled: true,
            max_backlog: 100_000,
            concurrency: 8,
            claim_idle_ms: 30_000,
            max_attempts: 5,
            block_ms: 2_000,
            max_permit_wait_secs: 600,
            callback_hosts: Vec::new(),
        }
    }
}

/// The kind of WeChat account behind an app; it decides which subscribe API is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AppKind {
    /// Official (Service) Account: template messages and `subscribe/bizsend`.
    OfficialAccount,
    /// Mini Program: `subscribe/send`.
    MiniProgram,
}

impl AppKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OfficialAccount => "official_account",
            Self::MiniProgram => "mini_program",
        }
    }
}

/// How an app's access_token is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TokenMode {
    /// `/cgi-bin/stable_token`, normal mode (never `force_refresh`).
    #[default]
    Stable,
    /// `/cgi-bin/token` (each fetch invalidates older tokens).
    Classic,
    /// Another system owns the token; wxgate only reads it from `external_token_key` in Redis.
    External,
}

impl TokenMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stable => "stable",
            Self::Classic => "classic",
            Self::External => "external",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    appid: String,
    kind: AppKind,
    #[serde(default)]
    token_mode: TokenMode,
    secret: Option<String>,
    secret_env: Option<String>,
    secret_file: Option<PathBuf>,
    /// `token_mode = "external"`: the Redis key another system keeps the token in.
    external_token_key: Option<String>,
    /// `/readyz` needs a usable token for this app.
    #[serde(default = "yes")]
    required: bool,
    #[serde(default)]
    limits: RawAppLimits,
    /// API name → calls per Beijing day.
    #[serde(default)]
    quotas: BTreeMap<String, u64>,
    /// Registered templates by alias.
    #[serde(default)]
    templates: BTreeMap<String, RawTemplate>,
    /// Refuse `template_id`s that are not registered.
    #[serde(default)]
    strict_templates: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKey {
    key: Option<String>,
    key_env: Option<String>,
    key_file: Option<PathBuf>,
    /// App names, or `["*"]` for every app.
    apps: Vec<String>,
    /// What the key may do: `send` (messages) and/or `token` (the central token API).
    #[serde(default = "default_scopes")]
    scopes: Vec<Scope>,
}

fn default_scopes() -> Vec<Scope> {
    vec![Scope::Send]
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// `POST /v1/apps/{app}/messages/*`.
    Send,
    /// `GET /v1/apps/{app}/access_token` and `.../access_token/invalidate`.
    Token,
    /// `GET /v1/admin/apps/{app}/state` and `DELETE /v1/admin/apps/{app}/blocks/{api}`.
    Admin,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn valid_appid(s: &str) -> bool {
    s.len() == 18 && s.starts_with("wx") && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl RawSettings {
    /// Validates everything and reports every problem found: each section, app and API key is
    /// checked on its own (within one of them, the first problem).
    pub(crate) fn validate(self) -> Result<Settings, ConfigError> {
        let mut problems: Vec<ConfigError> = Vec::new();
        let listen = self.server.listen.parse().map_err(|_| {
            ConfigError::at(
                "server.listen",
                format!("`{}` is not an IP:port", self.server.listen),
            )
        });
        let server_ok = (|| -> Result<(), ConfigError> {
            if self.server.workers == 0 || self.server.workers > 256 {
                return Err(ConfigError::at(
                    "server.workers",
                    "must be between 1 and 256",
                ));
            }
            if !(1024..=16 * 1024 * 1024).contains(&self.server.max_body_bytes) {
                return Err(ConfigError::at(
                    "server.max_body_bytes",
                    "must be between 1024 and 16777216",
                ));
            }
            if !(100..=300_000).contains(&self.server.request_timeout_ms) {
                return Err(ConfigError::at(
                    "server.request_timeout_ms",
                    "must be between 100 and 300000",
                ));
            }
            if !(1..=1_000_000).contains(&self.server.max_connections) {
                return Err(ConfigError::at(
                    "server.max_connections",
                    "must be between 1 and 1000000",
                ));
            }
            if self.server.drain_delay_secs > 300 {
                return Err(ConfigError::at(
                    "server.drain_delay_secs",
                    "must be at most 300",
                ));
            }
            if let Some(id) = &self.server.node_id {
                if id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_whitespace()) {
                    return Err(ConfigError::at(
                        "server.node_id",
                        "1 to 128 characters, no spaces",
                    ));
                }
            }
            Ok(())
        })();
        let base = self.upstream.base_url.trim_end_matches('/').to_string();
        let upstream_ok = (|| -> Result<(), ConfigError> {
            if !(base.starts_with("https://") || base.starts_with("http://"))
                || base.contains(['?', '#'])
            {
                return Err(ConfigError::at(
                    "upstream.base_url",
                    format!(
                        "`{}` is not an http(s) URL without query",
                        self.upstream.base_url
                    ),
                ));
            }
            for (field, v) in [
                (
                    "upstream.connect_timeout_ms",
                    self.upstream.connect_timeout_ms,
                ),
                (
                    "upstream.request_timeout_ms",
                    self.upstream.request_timeout_ms,
                ),
            ] {
                if !(1..=120_000).contains(&v) {
                    return Err(ConfigError::at(field, "must be between 1 and 120000"));
                }
            }

            Ok(())
        })();
        problems.extend(listen.as_ref().err().cloned());
        problems.extend(server_ok.err());
        problems.extend(upstream_ok.err());
        let otlp_endpoint = self
            .tracing
            .otlp_endpoint
            .as_deref()
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty());
        if let Some(e) = &otlp_endpoint {
            let host = e.strip_prefix("http://").unwrap_or("");
            if host.is_empty() || host.contains(['?', '#', ' ']) {
                problems.push(ConfigError::at(
                    "tracing.otlp_endpoint",
                    format!(
                        "`{e}` is not an http:// URL of an OTLP/HTTP receiver (e.g. http://otel-collector:4318; spans go to <endpoint>/v1/traces)"
                    ),
                ));
            }
        }
        if self.tracing.service_name.trim().is_empty() || self.tracing.service_name.len() > 128 {
            problems.push(ConfigError::at(
                "tracing.service_name",
                "must be 1 to 128 characters",
            ));
        }

        let mut apps = BTreeMap::new();
        let mut appids = BTreeSet::new();
        let app_names: BTreeSet<String> = self.apps.keys().cloned().collect();
        for (name, app) in self.apps {
            let one = (|| -> Result<App, ConfigError> {
                let at = |f: &str| format!("apps.{name}.{f}");
                if !valid_name(&name) {
                    return Err(ConfigError::at(
                        format!("apps.{name}"),
                        "app names are 1-64 chars of a-z, 0-9, '-' and '_'",
                    ));
                }
                if !valid_appid(&app.appid) {
                    return Err(ConfigError::at(
                        at("appid"),
                        format!(
                            "`{}` is not a WeChat appid (wx + 16 letters or digits)",
                            app.appid
                        ),
                    ));
                }
                if !appids.insert(app.appid.clone()) {
                    return Err(ConfigError::at(
                        at("appid"),
                        "another app has the same appid",
                    ));
                }
                let (secret, secret_source) = if app.token_mode == TokenMode::External {
                    if app.secret.is_some() || app.secret_env.is_some() || app.secret_file.is_some()
                    {
                        return Err(ConfigError::at(
                            at("secret"),
                            "an external-token app needs no secret: wxgate never fetches its token",
                        ));
                    }
                    let key = app.external_token_key.as_deref().unwrap_or("");
                    if key.is_empty() || key.len() > 512 || key.chars().any(char::is_whitespace) {
                        return Err(ConfigError::at(
                        at("external_token_key"),
                        "required with token_mode = \"external\": the Redis key holding the token",
                    ));
                    }
                    if self.store.kind != StoreKind::Redis {
                        return Err(ConfigError::at(
                            at("token_mode"),
                            "\"external\" reads the token from Redis: set store.kind = \"redis\"",
                        ));
                    }
                    (None, format!("external:{key}"))
                } else {
                    if app.external_token_key.is_some() {
                        return Err(ConfigError::at(
                            at("external_token_key"),
                            "only used with token_mode = \"external\"",
                        ));
                    }
                    let (s, src) =
                        resolve_secret("secret", app.secret, app.secret_env, app.secret_file)
                            .map_err(|e| e.under(&format!("apps.{name}")))?;
                    (Some(s), src)
                };
                let limits = sending::app_limits(&name, app.limits, app.quotas)?;
                let templates = sending::templates(
                    &name,
                    app.templates,
                    &self.server.environment,
                    &self.template_id_patterns,
                )?;
                if app.strict_templates && templates.is_empty() {
                    return Err(ConfigError::at(
                        at("strict_templates"),
                        "register templates first",
                    ));
                }
                Ok(App {
                    name: name.clone(),
                    appid: app.appid,
                    kind: app.kind,
                    token_mode: app.token_mode,
                    secret,
                    secret_source,
                    external_token_key: app.external_token_key,
                    required: app.required,
                    limits,
                    templates,
                    strict_templates: app.strict_templates,
                })
            })();
            match one {
                Ok(a) => {
                    apps.insert(name, a);
                }
                Err(e) => problems.push(e),
            }
        }

        let mut api_keys = Vec::new();
        for (name, k) in self.api_keys {
            let one = (|| -> Result<ApiKey, ConfigError> {
                if !valid_name(&name) {
                    return Err(ConfigError::at(
                        format!("api_keys.{name}"),
                        "key names are 1-64 chars of a-z, 0-9, '-' and '_'",
                    ));
                }
                let (key, source) = resolve_secret("key", k.key, k.key_env, k.key_file)
                    .map_err(|e| e.under(&format!("api_keys.{name}")))?;
                {
                    use secrecy::ExposeSecret;
                    if key.expose_secret().len() < 16 {
                        // Named after the field the user wrote the key's source in.
                        let field = match source.split(':').next() {
                            Some("env") => "key_env",
                            Some("file") => "key_file",
                            _ => "key",
                        };
                        return Err(ConfigError::at(
                            format!("api_keys.{name}.{field}"),
                            "API keys must be at least 16 characters",
                        ));
                    }
                }
                let scope = if k.apps.iter().any(|a| a == "*") {
                    AppScope::All
                } else {
                    for a in &k.apps {
                        if !app_names.contains(a) {
                            return Err(ConfigError::at(
                                format!("api_keys.{name}.apps"),
                                format!("unknown app `{a}`"),
                            ));
                        }
                    }
                    AppScope::Only(k.apps)
                };
                if k.scopes.is_empty() {
                    return Err(ConfigError::at(
                        format!("api_keys.{name}.scopes"),
                        "list at least one of \"send\", \"token\"",
                    ));
                }
                Ok(ApiKey {
                    name: name.clone(),
                    key,
                    scopes: k.scopes,
                    apps: scope,
                })
            })();
            match one {
                Ok(k) => api_keys.push(k),
                Err(e) => problems.push(e),
            }
        }
        {
            use secrecy::ExposeSecret;
            for (i, a) in api_keys.iter().enumerate() {
                if api_keys[i + 1..]
                    .iter()
                    .any(|b| b.key.expose_secret() == a.key.expose_secret())
                {
                    problems.push(ConfigError::at(
                        format!("api_keys.{}", a.name),
                        "two API keys have the same value",
                    ));
                }
            }
        }

        let st = self.store;
        let store = (|| -> Result<StoreSettings, ConfigError> {
            if !(1..=64).contains(&st.prefix.len())
                || !st
                    .prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.'))
            {
                return Err(ConfigError::at(
                    "store.prefix",
                    "1-64 characters of a-z, A-Z, 0-9, '-', '_', ':', '.' (no braces)",
                ));
            }
            if st.expected_replicas == 0 {
                return Err(ConfigError::at(
                    "store.expected_replicas",
                    "must be at least 1",
                ));
            }
            let redis = match st.kind {
                StoreKind::Redis => Some(st.redis.validate()?),
                StoreKind::Memory => None,
            };
            Ok(StoreSettings {
                kind: st.kind,
                prefix: st.prefix,
                on_unavailable: st.on_unavailable,
                expected_replicas: st.expected_replicas,
                redis,
            })
        })();

        let t = &self.token;
        let token = (|| -> Result<TokenSettings, ConfigError> {
            if t.lease_ttl_ms < 3 * t.check_interval_ms {
                return Err(ConfigError::at(
                "token.lease_ttl_ms",
                "must be at least 3 × token.check_interval_ms, so a live leader always renews in time",
            ));
            }
            if !(10..=600_000).contains(&t.check_interval_ms) {
                return Err(ConfigError::at(
                    "token.check_interval_ms",
                    "must be between 10 and 600000",
                ));
            }
            if t.fetch_per_minute == 0 {
                return Err(ConfigError::at(
                    "token.fetch_per_minute",
                    "must be at least 1",
                ));
            }
            if t.expiry_margin_ms > 600_000 {
                return Err(ConfigError::at(
                    "token.expiry_margin_ms",
                    "must be at most 600000",
                ));
            }
            Ok(TokenSettings {
                expiry_margin: Duration::from_millis(t.expiry_margin_ms),
                refresh_ahead: Duration::from_secs(t.refresh_ahead_secs),
                lease_ttl: Duration::from_millis(t.lease_ttl_ms),
                check_interval: Duration::from_millis(t.check_interval_ms),
                wait_for_token: Duration::from_millis(t.wait_for_token_ms),
                fetch_per_minute: t.fetch_per_minute,
            })
        })();

        let q = &self.queue;
        let queue = (|| -> Result<QueueSettings, ConfigError> {
            if !(1..=100_000_000).contains(&q.max_backlog) {
                return Err(ConfigError::at(
                    "queue.max_backlog",
                    "must be between 1 and 100000000",
                ));
            }
            if !(1..=256).contains(&q.concurrency) {
                return Err(ConfigError::at(
                    "queue.concurrency",
                    "must be between 1 and 256",
                ));
            }
            if !(100..=3_600_000).contains(&q.claim_idle_ms) {
                return Err(ConfigError::at(
                    "queue.claim_idle_ms",
                    "must be between 100 and 3600000",
                ));
            }
            if !(1..=100).contains(&q.max_attempts) {
                return Err(ConfigError::at(
                    "queue.max_attempts",
                    "must be between 1 and 100",
                ));
            }
            if !(10..=60_000).contains(&q.block_ms) {
                return Err(ConfigError::at(
                    "queue.block_ms",
                    "must be between 10 and 60000",
                ));
            }
            if !(1..=86_400).contains(&q.max_permit_wait_secs) {
                return Err(ConfigError::at(
                    "queue.max_permit_wait_secs",
                    "must be between 1 and 86400",
                ));
            }
            for h in &q.callback_hosts {
                let ok = !h.is_empty()
                    && h.len() <= 253
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':'));
                if !ok {
                    return Err(ConfigError::at(
                        "queue.callback_hosts",
                        format!(
                            "`{h}` is not a host name (letters, digits, '-', '.', optional :port)"
                        ),
                    ));
                }
            }
            Ok(QueueSettings {
                enabled: q.enabled,
                max_backlog: q.max_backlog,
                concurrency: q.concurrency,
                claim_idle: Duration::from_millis(q.claim_idle_ms),
                max_attempts: q.max_attempts,
                block: Duration::from_millis(q.block_ms),
                max_permit_wait: Duration::from_secs(q.max_permit_wait_secs),
                callback_hosts: q
                    .callback_hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
            })
        })();

        let sending = sending::sending(
            self.limits,
            self.retry,
            self.idempotency,
            Duration::from_millis(self.upstream.request_timeout_ms),
        );
        if self.server.environment.is_empty() || !valid_name(&self.server.environment) {
            problems.push(ConfigError::at(
                "server.environment",
                "1-64 chars of a-z, 0-9, '-' and '_'",
            ));
        }
        let (listen, store, token, sending, queue) = match (listen, store, token, sending, queue) {
            (Ok(l), Ok(st), Ok(t), Ok(se), Ok(qu)) if problems.is_empty() => (l, st, t, se, qu),
            (l, st, t, se, qu) => {
                problems.extend(st.err());
                problems.extend(t.err());
                problems.extend(se.err());
                problems.extend(qu.err());
                let _ = l;
                return Err(ConfigError::many(problems));
            }
        };
        let environment = self.server.environment.clone();

        Ok(Settings {
            server: ServerSettings {
                listen,
                workers: self.server.workers,
                max_body_bytes: self.server.max_body_bytes,
                node_id: self.server.node_id,
                shutdown_timeout: Duration::from_secs(self.server.shutdown_timeout_secs),
                drain_delay: Duration::from_secs(self.server.drain_delay_secs),
                request_timeout: Duration::from_millis(self.server.request_timeout_ms),
                max_connections: self.server.max_connections,
                allow_empty_config: self.server.allow_empty_config,
            },
            upstream: UpstreamSettings {
                base_url: base.to_string(),
                connect_timeout: Duration::from_millis(self.upstream.connect_timeout_ms),
                request_timeout: Duration::from_millis(self.upstream.request_timeout_ms),
                pool_max_idle_per_host: self.upstream.pool_max_idle_per_host,
            },
            tracing: crate::TracingSettings {
                otlp_endpoint,
                service_name: self.tracing.service_name.trim().to_string(),
            },
            store,
            token,
            sending,
            queue,
            environment,
            apps,
            api_keys,
        })
    }
}
