//! wxgate's configuration.
//!
//! One TOML file (see `config/wxgate.example.toml` and the README's configuration reference),
//! then environment variables `WXGATE_<SECTION>__<FIELD>` on top (`WXGATE_SERVER__LISTEN`,
//! `WXGATE_APPS__SHOP__SECRET`). Secrets (app secrets, API keys) may be inline, or come from an
//! environment variable (`secret_env`) or a file (`secret_file`, e.g. a mounted Kubernetes
//! Secret). [`Settings::load`] parses and validates everything once and resolves the secrets
//! into [`secrecy::SecretString`], whose `Debug` never shows the value; nothing in this crate
//! prints a secret, including its errors.
//!
//! # Layout
//! - `raw`: the file's shape, with serde defaults (what users write).
//! - this module: the validated [`Settings`] the server runs on, and [`ConfigError`].

mod raw;
pub mod sending;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
pub use raw::{AppKind, OnUnavailable, RedisMode, Scope, StoreKind, TokenMode};
use secrecy::SecretString;
pub use sending::OnStateLoss;

/// A configuration that cannot be used: every problem found, each with the field at fault.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigError(Vec<String>);

impl ConfigError {
    fn at(field: impl std::fmt::Display, msg: impl std::fmt::Display) -> Self {
        Self(vec![format!("{field}: {msg}")])
    }

    fn one(msg: String) -> Self {
        Self(vec![msg])
    }

    fn many(all: Vec<ConfigError>) -> Self {
        Self(all.into_iter().flat_map(|e| e.0).collect())
    }

    /// Each problem, `field: what is wrong`.
    pub fn problems(&self) -> &[String] {
        &self.0
    }

    /// The same problems with `prefix.` before each field.
    fn under(self, prefix: &str) -> Self {
        Self(
            self.0
                .into_iter()
                .map(|p| format!("{prefix}.{p}"))
                .collect(),
        )
    }
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub upstream: UpstreamSettings,
    pub tracing: TracingSettings,
    pub store: StoreSettings,
    pub token: TokenSettings,
    pub sending: sending::SendingSettings,
    pub queue: QueueSettings,
    /// `server.environment`: selects the registered templates' ids.
    pub environment: String,
    /// Apps by their wxgate name (the `{app}` of the URL).
    pub apps: BTreeMap<String, App>,
    pub api_keys: Vec<ApiKey>,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub workers: usize,
    pub max_body_bytes: usize,
    /// This node's id (defaults to a random one at start-up).
    pub node_id: Option<String>,
    /// Once the server stops accepting, in-flight requests get this long to finish.
    pub shutdown_timeout: Duration,
    /// On SIGTERM, how long the node keeps serving (with `/readyz` failing, `draining`) before it
    /// stops accepting, so load balancers take it out of rotation first.
    pub drain_delay: Duration,
    /// Longest time to read a whole request (headers and body); past it, 408.
    pub request_timeout: Duration,
    /// Most connections the node keeps open at once (split across its workers).
    pub max_connections: usize,
    /// Start even with no app or no API key (otherwise `serve` refuses).
    pub allow_empty_config: bool,
}

/// `[tracing]`: OTLP export of spans (used by a binary built with the `otlp` feature).
#[derive(Debug, Clone)]
pub struct TracingSettings {
    /// Base URL of an OTLP/HTTP receiver (`http://collector:4318`); spans are POSTed to
    /// `<endpoint>/v1/traces` as protobuf. `None`: no export.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute of the exported spans.
    pub service_name: String,
}

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub base_url: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub kind: StoreKind,
    /// Every Redis key starts with it: `<prefix>:{<appid>}:...`.
    pub prefix: String,
    pub on_unavailable: OnUnavailable,
    /// How many replicas share the limits (for `on_unavailable = "local_share"`).
    pub expected_replicas: u64,
    /// Set when `kind = "redis"`.
    pub redis: Option<RedisSettings>,
}

/// Where Redis is and how to log in. `Debug` never shows the passwords.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub mode: RedisMode,
    pub url: Option<String>,
    pub nodes: Vec<String>,
    pub sentinels: Vec<String>,
    pub master_name: Option<String>,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub sentinel_password: Option<SecretString>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    /// PEM CA certificate(s) for `rediss://` (from `tls_ca_file`), else the system's roots.
    pub tls_ca_pem: Option<Vec<u8>>,
}

/// `[queue]`: durable queued delivery (`Prefer: respond-async`) through Redis Streams.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Accept `Prefer: respond-async` and run the workers (Redis store only).
    pub enabled: bool,
    /// Most entries one app's stream may hold (queued + being delivered); past it, 503.
    pub max_backlog: u64,
    /// Messages one node delivers at once, per app.
    pub concurrency: usize,
    /// An entry held this long by a consumer without progress is claimed by another.
    pub claim_idle: Duration,
    /// Deliveries of one message (retryable failures included) before it is dead-lettered.
    pub max_attempts: u32,
    /// How long one blocking stream read waits for new entries.
    pub block: Duration,
    /// How long a worker waits for a permit of a full window before it counts a failed attempt.
    pub max_permit_wait: Duration,
    /// Hosts (lower case, optional `:port`) a `Callback-Url` may point at.
    pub callback_hosts: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// The leader refreshes this long before WeChat's expiry (inside its 5-minute overlap).
    pub refresh_ahead: Duration,
    /// How long a refresh leadership lasts unless renewed.
    pub lease_ttl: Duration,
    /// How often each node's refresher renews (or tries to take) the lease and checks the token.
    pub check_interval: Duration,
    /// How long a send waits for the leader to store a token when there is none.
    pub wait_for_token: Duration,
    /// Token-endpoint calls allowed per app per minute, cluster-wide (storm guard).
    pub fetch_per_minute: u64,
    /// A token is not used this close to its expiry (its trip to WeChat must fit).
    pub expiry_margin: Duration,
}

/// One WeChat app (Official Account or Mini Program).
#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    pub appid: String,
    pub kind: AppKind,
    pub token_mode: TokenMode,
    /// None for `token_mode = "external"`.
    pub secret: Option<SecretString>,
    /// Where the secret came from ("inline", "env:NAME", "file:PATH"), for `check-config`.
    pub secret_source: String,
    /// The Redis key of an external token.
    pub external_token_key: Option<String>,
    /// `/readyz` requires a usable token for this app.
    pub required: bool,
    pub limits: sending::AppLimits,
    /// Registered templates by alias.
    pub templates: BTreeMap<String, sending::TemplateDef>,
    /// Refuse unregistered `template_id`s.
    pub strict_templates: bool,
}

/// Which apps an API key may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppScope {
    All,
    Only(Vec<String>),
}

impl AppScope {
    pub fn allows(&self, app: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(apps) => apps.iter().any(|a| a == app),
        }
    }
}

/// A caller's bearer key.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub name: String,
    pub key: SecretString,
    pub apps: AppScope,
    pub scopes: Vec<Scope>,
}

impl Settings {
    /// What a serving node lacks to be of any use: no app, or no API key to call it with.
    /// Empty unless `server.allow_empty_config` says to start anyway.
    pub fn missing_for_serving(&self) -> Vec<&'static str> {
        if self.server.allow_empty_config {
            return Vec::new();
        }
        let mut missing = Vec::new();
        if self.apps.is_empty() {
            missing.push("apps (no [apps.<name>] table: every send would be refused)");
        }
        if self.api_keys.is_empty() {
            missing.push("api_keys (no [api_keys.<name>] table: every caller would get 401)");
        }
        missing
    }

    /// Loads `path` (if given) and the `WXGATE_*` environment, then validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::new();
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::one(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        Self::from_figment(fig.merge(env_provider()))
    }

    /// Parses a TOML string (no environment), then validates. For tests and embedded configs.
    pub fn from_toml_str(toml: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(toml)))
    }

    fn from_figment(fig: Figment) -> Result<Self, ConfigError> {
        let raw: raw::RawSettings = fig
            .extract()
            .map_err(|e| ConfigError::one(figment_message(e)))?;
        raw.validate()
    }
}

/// `WXGATE_SERVER__LISTEN` → `server.listen`. `WXGATE_CONFIG` names the file and `WXGATE_LOG`
/// the log filter; they are not settings.
fn env_provider() -> Env {
    Env::prefixed("WXGATE_")
        .split("__")
        .ignore(&["config", "log", "log_format"])
}

fn figment_message(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let path = e.path.join(".");
            let kind = e.kind.to_string();
            let src = e
                .metadata
                .as_ref()
                .map(|m| m.name.to_string())
                .unwrap_or_default();
            if path.is_empty() {
                format!("{kind} ({src})")
            } else {
                format!("{path}: {kind} ({src})")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn resolve_secret(
    field: &str,
    inline: Option<String>,
    env: Option<String>,
    file: Option<PathBuf>,
) -> Result<(SecretString, String), ConfigError> {
    let given = [inline.is_some(), env.is_some(), file.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if given != 1 {
        return Err(ConfigError::at(
            field,
            format!("set exactly one of `{field}`, `{field}_env`, `{field}_file` (found {given})"),
        ));
    }
    let (value, source) = if let Some(v) = inline {
        (v, "inline".to_string())
    } else if let Some(name) = env {
        let v = std::env::var(&name).map_err(|_| {
            ConfigError::at(
                format!("{field}_env"),
                format!("environment variable {name} is not set"),
            )
        })?;
        (v, format!("env:{name}"))
    } else {
        let path = file.expect("one source is set");
        let v = std::fs::read_to_string(&path).map_err(|e| {
            ConfigError::at(
                format!("{field}_file"),
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        (
            v.trim_end_matches(['\r', '\n']).to_string(),
            format!("file:{}", path.display()),
        )
    };
    if value.trim().is_empty() {
        return Err(ConfigError::at(
            field,
            format!("the secret from {source} is empty"),
        ));
    }
    Ok((SecretString::from(value), source))
}

/// Like [`resolve_secret`], but none of the three fields is also fine.
fn resolve_optional_secret(
    field: &str,
    inline: Option<String>,
    env: Option<String>,
    file: Option<PathBuf>,
) -> Result<Option<SecretString>, ConfigError> {
    if inline.is_none() && env.is_none() && file.is_none() {
        return Ok(None);
    }
    resolve_secret(field, inline, env, file).map(|(s, _)| Some(s))
}

#[cfg(test)]
mod tests;
