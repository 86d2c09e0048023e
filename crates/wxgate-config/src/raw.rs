//! The configuration file's shape, with defaults. Unknown keys are errors, so a typo is caught
//! by `wxgate check-config` instead of silently ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    resolve_secret, ApiKey, App, AppScope, ConfigError, ServerSettings, Settings, StoreSettings,
    TokenSettings, UpstreamSettings,
};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawSettings {
    server: RawServer,
    upstream: RawUpstream,
    store: RawStore,
    token: RawToken,
    apps: BTreeMap<String, RawApp>,
    api_keys: BTreeMap<String, RawApiKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: String,
    workers: usize,
    max_body_bytes: usize,
    node_id: Option<String>,
    shutdown_timeout_secs: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            workers: 2,
            max_body_bytes: 64 * 1024,
            node_id: None,
            shutdown_timeout_secs: 10,
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
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    kind: StoreKind,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawToken {
    refresh_ahead_secs: u64,
}

impl Default for RawToken {
    fn default() -> Self {
        Self {
            refresh_ahead_secs: 300,
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
}

impl TokenMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stable => "stable",
            Self::Classic => "classic",
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKey {
    key: Option<String>,
    key_env: Option<String>,
    key_file: Option<PathBuf>,
    /// App names, or `["*"]` for every app.
    apps: Vec<String>,
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
    pub(crate) fn validate(self) -> Result<Settings, ConfigError> {
        let listen = self.server.listen.parse().map_err(|_| {
            ConfigError::at(
                "server.listen",
                format!("`{}` is not an IP:port", self.server.listen),
            )
        })?;
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
        if let Some(id) = &self.server.node_id {
            if id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_whitespace()) {
                return Err(ConfigError::at(
                    "server.node_id",
                    "1 to 128 characters, no spaces",
                ));
            }
        }
        let base = self.upstream.base_url.trim_end_matches('/');
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

        let mut apps = BTreeMap::new();
        let mut appids = BTreeSet::new();
        for (name, app) in self.apps {
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
            let (secret, secret_source) =
                resolve_secret("secret", app.secret, app.secret_env, app.secret_file)
                    .map_err(|e| ConfigError(format!("apps.{name}.{}", e.0)))?;
            apps.insert(
                name.clone(),
                App {
                    name,
                    appid: app.appid,
                    kind: app.kind,
                    token_mode: app.token_mode,
                    secret,
                    secret_source,
                },
            );
        }

        let mut api_keys = Vec::new();
        for (name, k) in self.api_keys {
            if !valid_name(&name) {
                return Err(ConfigError::at(
                    format!("api_keys.{name}"),
                    "key names are 1-64 chars of a-z, 0-9, '-' and '_'",
                ));
            }
            let (key, _) = resolve_secret("key", k.key, k.key_env, k.key_file)
                .map_err(|e| ConfigError(format!("api_keys.{name}.{}", e.0)))?;
            {
                use secrecy::ExposeSecret;
                if key.expose_secret().len() < 16 {
                    return Err(ConfigError::at(
                        format!("api_keys.{name}.key"),
                        "API keys must be at least 16 characters",
                    ));
                }
            }
            let scope = if k.apps.iter().any(|a| a == "*") {
                AppScope::All
            } else {
                for a in &k.apps {
                    if !apps.contains_key(a) {
                        return Err(ConfigError::at(
                            format!("api_keys.{name}.apps"),
                            format!("unknown app `{a}`"),
                        ));
                    }
                }
                AppScope::Only(k.apps)
            };
            api_keys.push(ApiKey {
                name,
                key,
                apps: scope,
            });
        }
        {
            use secrecy::ExposeSecret;
            for (i, a) in api_keys.iter().enumerate() {
                if api_keys[i + 1..]
                    .iter()
                    .any(|b| b.key.expose_secret() == a.key.expose_secret())
                {
                    return Err(ConfigError::at(
                        format!("api_keys.{}", a.name),
                        "two API keys have the same value",
                    ));
                }
            }
        }

        Ok(Settings {
            server: ServerSettings {
                listen,
                workers: self.server.workers,
                max_body_bytes: self.server.max_body_bytes,
                node_id: self.server.node_id,
                shutdown_timeout: Duration::from_secs(self.server.shutdown_timeout_secs),
            },
            upstream: UpstreamSettings {
                base_url: base.to_string(),
                connect_timeout: Duration::from_millis(self.upstream.connect_timeout_ms),
                request_timeout: Duration::from_millis(self.upstream.request_timeout_ms),
                pool_max_idle_per_host: self.upstream.pool_max_idle_per_host,
            },
            store: StoreSettings {
                kind: self.store.kind,
            },
            token: TokenSettings {
                refresh_ahead: Duration::from_secs(self.token.refresh_ahead_secs),
            },
            apps,
            api_keys,
        })
    }
}
