//! The fake's world: token timings, apps, their limits, templates and users.
//!
//! Read from TOML (`wxgate fake-wechat --config FILE`) or built in code ([`FakeConfig::demo`]).
//! Unknown fields are errors, so a misspelt limit never silently means "unlimited".

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Everything the fake needs to know. Every field has a default; the default world has no apps.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FakeConfig {
    /// Lifetime of every token the fake issues.
    pub expires_in_secs: u64,
    /// Classic `/cgi-bin/token`: the previous token stays valid this long after a new fetch
    /// (never past its own expiry); any older one is invalid at once.
    pub classic_overlap_secs: u64,
    /// `/cgi-bin/stable_token` normal mode: a call within this many seconds of the current
    /// token's expiry issues a new token (the old one stays valid until its own expiry).
    pub stable_rotate_before_secs: u64,
    /// `force_refresh=true` calls allowed per Beijing calendar day (per app).
    pub force_refresh_per_day: u32,
    /// A forced refresh sooner than this after the previous one returns the current token.
    pub force_refresh_min_interval_secs: u64,
    /// Template send: one message per openid + `client_msg_id` within this window.
    pub dedup_window_secs: u64,
    /// The record keeps at most this many calls; the oldest are dropped first.
    pub max_records: usize,
    /// actix-web worker threads. One is usually fastest on small machines.
    pub workers: usize,
    pub apps: Vec<AppConfig>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            expires_in_secs: 7200,
            classic_overlap_secs: 300,
            stable_rotate_before_secs: 300,
            force_refresh_per_day: 20,
            force_refresh_min_interval_secs: 30,
            dedup_window_secs: 600,
            max_records: 1_000_000,
            workers: 1,
            apps: Vec::new(),
        }
    }
}

/// Which kind of WeChat account an app is; it decides which APIs the app may call (48001).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppKind {
    /// Official (Service) Account: template send, subscribe bizsend, both template listings.
    OfficialAccount,
    /// Mini Program: subscribe send and the subscribe template listing.
    MiniProgram,
}

/// One app (appid) the fake knows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub appid: String,
    pub secret: String,
    #[serde(default = "default_app_kind")]
    pub kind: AppKind,
    /// Any openid starting with `o` exists, follows the OA and has unlimited subscriptions to
    /// every template of the right kind. Meant for benchmarks, where users are generated.
    #[serde(default)]
    pub accept_any_openid: bool,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub templates: Vec<TemplateConfig>,
    #[serde(default)]
    pub users: Vec<UserConfig>,
}

fn default_app_kind() -> AppKind {
    AppKind::OfficialAccount
}

/// Per-app limits. `0` (or absent) means unlimited. Per-minute limits count per calendar
/// minute of the fake's clock (or per calendar window of [`Limits::window_ms`]), per-day
/// limits per Beijing calendar day, as WeChat does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub template_send_per_minute: u64,
    pub template_send_per_day: u64,
    /// Shared by `subscribe/send` and `subscribe/bizsend` (an app only ever has one of them).
    pub subscribe_send_per_minute: u64,
    pub subscribe_send_per_day: u64,
    pub token_per_day: u64,
    pub stable_token_per_minute: u64,
    pub stable_token_per_day: u64,
    /// Length of the "minute" every `*_per_minute` limit of this app counts in, in
    /// milliseconds: calls are counted per calendar window `floor(now_ms / window_ms)` of the
    /// fake's clock (windows aligned to the unix epoch), and a call over the limit is answered
    /// 45011 as usual. Default (and absent) 60000, WeChat's calendar minute; `0` also means
    /// 60000. Tests set it shorter (e.g. 2000) to see a limit recover without a minute's wait.
    /// Per-day limits are not affected.
    pub window_ms: u64,
}

/// WeChat's calendar minute, the default [`Limits::window_ms`].
const DEFAULT_WINDOW_MS: u64 = 60_000;

impl Default for Limits {
    /// Everything unlimited, counted per calendar minute.
    fn default() -> Self {
        Limits {
            template_send_per_minute: 0,
            template_send_per_day: 0,
            subscribe_send_per_minute: 0,
            subscribe_send_per_day: 0,
            token_per_day: 0,
            stable_token_per_minute: 0,
            stable_token_per_day: 0,
            window_ms: DEFAULT_WINDOW_MS,
        }
    }
}

impl Limits {
    /// The window the `*_per_minute` limits count in: [`Limits::window_ms`], with `0` read as
    /// 60000.
    pub fn effective_window_ms(&self) -> u64 {
        if self.window_ms == 0 {
            DEFAULT_WINDOW_MS
        } else {
            self.window_ms
        }
    }
}

/// Template message (OA) or subscribe message template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateKind {
    /// For `/cgi-bin/message/template/send`, listed by `get_all_private_template`.
    Template,
    /// For `subscribe/send` and `subscribe/bizsend`, listed by `wxaapi/newtmpl/gettemplate`.
    Subscribe,
}

/// One template of an app.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    pub template_id: String,
    pub kind: TemplateKind,
    /// Shown by the listing endpoints; defaults to the template id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// WeChat template content with `{{name.DATA}}` placeholders: a send must fill every one.
    #[serde(default)]
    pub content: String,
}

/// One user (openid) of an app.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub openid: String,
    /// Follows the OA: template send and bizsend need it (else 43004).
    #[serde(default)]
    pub follows: bool,
    /// One-time subscribe grants left, per subscribe template id. Each successful subscribe
    /// send uses one; none left is 43101.
    #[serde(default)]
    pub subscriptions: BTreeMap<String, u32>,
    /// Subscribe templates this user accepts without limit.
    #[serde(default)]
    pub long_term: Vec<String>,
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read fake WeChat config {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid fake WeChat config: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("invalid fake WeChat config: {0}")]
    Invalid(String),
}

impl FakeConfig {
    /// The quick-start world: one Official Account and one Mini Program (ids in [`demo`]), with
    /// WeChat's real default limits and one demo user who accepts every demo message.
    pub fn demo() -> FakeConfig {
        use demo::*;
        let user = |long_term: &[&str]| UserConfig {
            openid: USER_OPENID.into(),
            follows: true,
            subscriptions: BTreeMap::new(),
            long_term: long_term.iter().map(|s| s.to_string()).collect(),
        };
        FakeConfig {
            apps: vec![
                AppConfig {
                    appid: OA_APPID.into(),
                    secret: OA_SECRET.into(),
                    kind: AppKind::OfficialAccount,
                    accept_any_openid: false,
                    limits: Limits {
                        template_send_per_day: 100_000,
                        token_per_day: 2000,
                        stable_token_per_minute: 10_000,
                        stable_token_per_day: 500_000,
                        ..Limits::default()
                    },
                    templates: vec![
                        TemplateConfig {
                            template_id: OA_TEMPLATE_ID.into(),
                            kind: TemplateKind::Template,
                            title: Some("订单发货通知".into()),
                            content: "订单号:{{character_string1.DATA}}\n商品:{{thing2.DATA}}\n发货时间:{{time3.DATA}}".into(),
                        },
                        TemplateConfig {
                            template_id: OA_SUBSCRIBE_TEMPLATE_ID.into(),
                            kind: TemplateKind::Subscribe,
                            title: Some("服务提醒".into()),
                            content: "{{thing1.DATA}}\n{{date2.DATA}}".into(),
                        },
                    ],
                    users: vec![user(&[OA_SUBSCRIBE_TEMPLATE_ID])],
                },
                AppConfig {
                    appid: MINI_APPID.into(),
                    secret: MINI_SECRET.into(),
                    kind: AppKind::MiniProgram,
                    accept_any_openid: false,
                    limits: Limits {
                        subscribe_send_per_day: 10_000_000,
                        token_per_day: 2000,
                        stable_token_per_minute: 10_000,
                        stable_token_per_day: 500_000,
                        ..Limits::default()
                    },
                    templates: vec![TemplateConfig {
                        template_id: MINI_SUBSCRIBE_TEMPLATE_ID.into(),
                        kind: TemplateKind::Subscribe,
                        title: Some("预约结果通知".into()),
                        content: "预约项目:{{thing1.DATA}}\n预约时间:{{time2.DATA}}\n状态:{{phrase3.DATA}}".into(),
                    }],
                    users: vec![user(&[MINI_SUBSCRIBE_TEMPLATE_ID])],
                },
            ],
            ..FakeConfig::default()
        }
    }

    /// Parses and validates a TOML configuration.
    pub fn from_toml_str(s: &str) -> Result<FakeConfig, ConfigError> {
        let config: FakeConfig = toml::from_str(s)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a TOML configuration file.
    pub fn from_toml_file(path: &Path) -> Result<FakeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// Checks what serde cannot: unique ids, and that users only name templates that exist
    /// with the subscribe kind (a typo would otherwise show up as a puzzling 43101).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.workers == 0 {
            return invalid("workers must be at least 1".into());
        }
        if self.max_records == 0 {
            return invalid("max_records must be at least 1".into());
        }
        let mut appids = HashSet::new();
        for app in &self.apps {
            if app.appid.is_empty() || !appids.insert(app.appid.as_str()) {
                return invalid(format!("appid {:?} is empty or appears twice", app.appid));
            }
            let mut templates = HashSet::new();
            for t in &app.templates {
                if t.template_id.is_empty() || !templates.insert(t.template_id.as_str()) {
                    return invalid(format!(
                        "app {}: template_id {:?} is empty or appears twice",
                        app.appid, t.template_id
                    ));
                }
            }
            let is_subscribe = |id: &str| {
                app.templates
                    .iter()
                    .any(|t| t.template_id == id && t.kind == TemplateKind::Subscribe)
            };
            let mut openids = HashSet::new();
            for u in &app.users {
                if u.openid.is_empty() || !openids.insert(u.openid.as_str()) {
                    return invalid(format!(
                        "app {}: openid {:?} is empty or appears twice",
                        app.appid, u.openid
                    ));
                }
                for id in u.subscriptions.keys().chain(u.long_term.iter()) {
                    if !is_subscribe(id) {
                        return invalid(format!(
                            "app {}: user {} names {id:?}, which is not a subscribe template of the app",
                            app.appid, u.openid
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Ids and secrets of [`FakeConfig::demo`], for the gateway's dev mode and the docs.
pub mod demo {
    /// The demo Official Account.
    pub const OA_APPID: &str = "wx0123456789abcdef";
    pub const OA_SECRET: &str = "demo-secret";
    /// OA template message: `character_string1`, `thing2`, `time3`.
    pub const OA_TEMPLATE_ID: &str = "demo-order-shipped";
    /// OA subscribe message (bizsend): `thing1`, `date2`.
    pub const OA_SUBSCRIBE_TEMPLATE_ID: &str = "demo-oa-subscribe";
    /// The demo Mini Program.
    pub const MINI_APPID: &str = "wxfedcba9876543210";
    pub const MINI_SECRET: &str = "demo-mini-secret";
    /// Mini Program subscribe message: `thing1`, `time2`, `phrase3`.
    pub const MINI_SUBSCRIBE_TEMPLATE_ID: &str = "demo-mini-appointment";
    /// A user of both apps who follows the OA and has long-term subscriptions to both
    /// subscribe templates.
    pub const USER_OPENID: &str = "o-demo-user-0001";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_is_valid_and_round_trips_through_toml() {
        let demo = FakeConfig::demo();
        demo.validate().unwrap();
        let text = toml::to_string(&demo).unwrap();
        let back = FakeConfig::from_toml_str(&text).unwrap();
        assert_eq!(back.apps.len(), 2);
        assert_eq!(back.apps[1].kind, AppKind::MiniProgram);
        assert_eq!(back.apps[0].limits, demo.apps[0].limits);
        assert_eq!(back.apps[0].limits.window_ms, 60_000);
    }

    #[test]
    fn window_defaults_to_a_minute_and_zero_means_a_minute() {
        assert_eq!(Limits::default().window_ms, 60_000);
        let c = FakeConfig::from_toml_str(
            "[[apps]]\nappid = \"a\"\nsecret = \"s\"\n[apps.limits]\ntemplate_send_per_minute = 3\n",
        )
        .unwrap();
        assert_eq!(c.apps[0].limits.window_ms, 60_000);
        let c = FakeConfig::from_toml_str(
            "[[apps]]\nappid = \"a\"\nsecret = \"s\"\n[apps.limits]\nwindow_ms = 0\n",
        )
        .unwrap();
        assert_eq!(c.apps[0].limits.window_ms, 0);
        assert_eq!(c.apps[0].limits.effective_window_ms(), 60_000);
        let c = FakeConfig::from_toml_str(
            "[[apps]]\nappid = \"a\"\nsecret = \"s\"\n[apps.limits]\nwindow_ms = 2000\n",
        )
        .unwrap();
        assert_eq!(c.apps[0].limits.effective_window_ms(), 2000);
    }

    #[test]
    fn example_from_the_docs_parses() {
        let c = FakeConfig::from_toml_str(
            r#"
expires_in_secs = 7200
workers = 1
[[apps]]
appid = "wx0123456789abcdef"
secret = "demo-secret"
kind = "official_account"
[apps.limits]
template_send_per_minute = 0
template_send_per_day = 100000
[[apps.templates]]
template_id = "tmpl-id"
kind = "subscribe"
content = "{{thing1.DATA}}"
[[apps.templates]]
template_id = "tmpl-id-2"
kind = "subscribe"
[[apps.users]]
openid = "o-demo-user-0001"
follows = true
subscriptions = { "tmpl-id" = 3 }
long_term = ["tmpl-id-2"]
"#,
        )
        .unwrap();
        assert_eq!(c.apps[0].users[0].subscriptions["tmpl-id"], 3);
        assert_eq!(c.classic_overlap_secs, 300);
    }

    #[test]
    fn rejects_unknown_fields_and_dangling_template_names() {
        let e = FakeConfig::from_toml_str("expires_in = 1").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = FakeConfig::from_toml_str(
            "[[apps]]\nappid = \"a\"\nsecret = \"s\"\n[[apps.users]]\nopenid = \"o1\"\nlong_term = [\"nope\"]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
