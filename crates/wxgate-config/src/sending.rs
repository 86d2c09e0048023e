//! The sending policy: limits and quotas per app, waiting for permits, retries, idempotency,
//! and the template registry (aliases, per-environment ids, fields).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::ConfigError;

use wxgate_protocol::api::Api;

/// One sliding window: at most `limit` calls in any `window_ms` (plus the guard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub limit: u64,
    pub window_ms: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAppLimits {
    template_send: Vec<Window>,
    subscribe_send: Vec<Window>,
    /// Per recipient openid, across every API of the app.
    per_recipient: Vec<Window>,
}

/// An app's limits, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppLimits {
    /// API → windows.
    pub per_api: BTreeMap<Api, Vec<Window>>,
    pub per_recipient: Vec<Window>,
    /// API → calls per Beijing day.
    pub quotas: BTreeMap<Api, u64>,
}

fn windows(field: &str, w: &[Window]) -> Result<(), ConfigError> {
    for x in w {
        if x.limit == 0 {
            return Err(ConfigError::at(field, "limit must be at least 1"));
        }
        if !(100..=86_400_000).contains(&x.window_ms) {
            return Err(ConfigError::at(
                field,
                "window_ms must be between 100 and 86400000",
            ));
        }
    }
    Ok(())
}

pub(crate) fn app_limits(
    app: &str,
    raw: RawAppLimits,
    quotas: BTreeMap<String, u64>,
) -> Result<AppLimits, ConfigError> {
    windows(
        &format!("apps.{app}.limits.template_send"),
        &raw.template_send,
    )?;
    windows(
        &format!("apps.{app}.limits.subscribe_send"),
        &raw.subscribe_send,
    )?;
    windows(
        &format!("apps.{app}.limits.per_recipient"),
        &raw.per_recipient,
    )?;
    let mut typed = BTreeMap::new();
    for (name, n) in &quotas {
        let api = Api::parse(name)
            .filter(|a| Api::SENDS.contains(a))
            .ok_or_else(|| {
                ConfigError::at(
                    format!("apps.{app}.quotas.{name}"),
                    "quotas apply to template_send and subscribe_send",
                )
            })?;
        if *n == 0 {
            return Err(ConfigError::at(
                format!("apps.{app}.quotas.{name}"),
                "must be at least 1",
            ));
        }
        typed.insert(api, *n);
    }
    let mut per_api = BTreeMap::new();
    if !raw.template_send.is_empty() {
        per_api.insert(Api::TemplateSend, raw.template_send);
    }
    if !raw.subscribe_send.is_empty() {
        per_api.insert(Api::SubscribeSend, raw.subscribe_send);
    }
    Ok(AppLimits {
        per_api,
        per_recipient: raw.per_recipient,
        quotas: typed,
    })
}

/// Which API a registered template is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateKind {
    /// Official Account template message.
    Template,
    /// Subscribe message (Mini Program or Official Account).
    Subscribe,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTemplate {
    kind: TemplateKind,
    /// One id for every environment...
    id: Option<String>,
    /// ...or one per environment (`dev`, `prod`, ...), chosen by `server.environment`.
    #[serde(default)]
    ids: BTreeMap<String, String>,
    /// The `data` keys the template takes; when absent, read from WeChat's template list.
    fields: Option<Vec<String>>,
}

/// A registered template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateDef {
    pub alias: String,
    /// The WeChat template id in this environment.
    pub id: String,
    pub kind: TemplateKind,
    pub fields: Option<Vec<String>>,
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || !s.ends_with(last) || s.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

pub(crate) fn templates(
    app: &str,
    raw: BTreeMap<String, RawTemplate>,
    environment: &str,
    patterns: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, TemplateDef>, ConfigError> {
    let mut out = BTreeMap::new();
    for (alias, t) in raw {
        let at = format!("apps.{app}.templates.{alias}");
        let id = if let Some(id) = t.id {
            if !t.ids.is_empty() {
                return Err(ConfigError::at(&at, "set `id` or `ids`, not both"));
            }
            id
        } else {
            match t.ids.get(environment) {
                Some(id) => id.clone(),
                None => {
                    return Err(ConfigError::at(
                        format!("{at}.ids"),
                        format!("no id for environment `{environment}` (server.environment)"),
                    ))
                }
            }
        };
        let field = if t.ids.is_empty() {
            format!("{at}.id")
        } else {
            format!("{at}.ids.{environment}")
        };
        if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::at(
                &field,
                "not a template id (1-128 printable characters)",
            ));
        }
        if let Some(p) = patterns.get(environment) {
            if !glob_match(p, &id) {
                return Err(ConfigError::at(
                    &field,
                    format!(
                        "`{id}` does not match the {environment} template id pattern `{p}` (an id of another environment?)"
                    ),
                ));
            }
        }
        if let Some(fields) = &t.fields {
            if fields.is_empty() {
                return Err(ConfigError::at(
                    format!("{at}.fields"),
                    "list at least one field",
                ));
            }
            for f in fields {
                if !wxgate_protocol::data_rules::valid_key(f) {
                    return Err(ConfigError::at(
                        format!("{at}.fields"),
                        format!("`{f}` is not a data field name"),
                    ));
                }
            }
        }
        out.insert(
            alias.clone(),
            TemplateDef {
                alias,
                id,
                kind: t.kind,
                fields: t.fields,
            },
        );
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawSending {
    /// Extra time each window entry is kept (network jitter between our clock and WeChat's).
    guard_ms: u64,
    /// Cap on `Prefer: wait=N`.
    max_wait_secs: u64,
    /// What a grant does after Redis lost the limiter's state.
    on_state_loss: OnStateLoss,
    /// Windows up to this long are held after a state loss; longer ones restart empty.
    hold_max_window_ms: u64,
}

impl Default for RawSending {
    fn default() -> Self {
        Self {
            guard_ms: 100,
            max_wait_secs: 10,
            on_state_loss: OnStateLoss::Hold,
            hold_max_window_ms: 300_000,
        }
    }
}

/// What the limiter does when it finds that the shared store lost its state (a Redis restart
/// without persistence, a failover to a replica that missed the last grants, a flush).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStateLoss {
    /// Treat every window up to `hold_max_window_ms` as full until one window + guard has
    /// passed since the loss was detected: no interval can then hold more than N.
    Hold,
    /// Start again from empty windows (up to N more than the limit within one window).
    Admit,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRetry {
    max_attempts: u32,
    deadline_ms: u64,
    base_backoff_ms: u64,
    max_backoff_ms: u64,
}

impl Default for RawRetry {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            deadline_ms: 10_000,
            base_backoff_ms: 100,
            max_backoff_ms: 2_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawIdempotency {
    ttl_secs: u64,
    /// How long a claim lives without renewal (default: retry deadline + request timeout + 1 s).
    lease_ms: Option<u64>,
}

impl Default for RawIdempotency {
    fn default() -> Self {
        Self {
            ttl_secs: 86_400,
            lease_ms: None,
        }
    }
}

/// Limits, waiting, retries and idempotency, validated.
#[derive(Debug, Clone)]
pub struct SendingSettings {
    pub guard: Duration,
    pub max_wait: Duration,
    /// Upstream attempts per send, the first included, for `-1` and transport errors.
    pub max_attempts: u32,
    /// No new attempt starts after this much time since the request arrived.
    pub deadline: Duration,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// How long an idempotency key's result is kept.
    pub idempotency_ttl: Duration,
    /// How long an idempotency claim lives unless its request renews it; a claim whose
    /// request died is taken over after it.
    pub idempotency_lease: Duration,
    pub on_state_loss: OnStateLoss,
    /// Windows up to this long are held after a state loss.
    pub hold_max_window: Duration,
}

pub(crate) fn sending(
    s: RawSending,
    r: RawRetry,
    i: RawIdempotency,
    request_timeout: Duration,
) -> Result<SendingSettings, ConfigError> {
    if s.guard_ms > 10_000 {
        return Err(ConfigError::at("limits.guard_ms", "must be at most 10000"));
    }
    if s.max_wait_secs > 300 {
        return Err(ConfigError::at(
            "limits.max_wait_secs",
            "must be at most 300",
        ));
    }
    if !(1..=10).contains(&r.max_attempts) {
        return Err(ConfigError::at(
            "retry.max_attempts",
            "must be between 1 and 10",
        ));
    }
    if r.base_backoff_ms == 0 || r.base_backoff_ms > r.max_backoff_ms {
        return Err(ConfigError::at(
            "retry.base_backoff_ms",
            "must be between 1 and retry.max_backoff_ms",
        ));
    }
    if !(60..=7 * 86_400).contains(&i.ttl_secs) {
        return Err(ConfigError::at(
            "idempotency.ttl_secs",
            "must be between 60 and 604800",
        ));
    }
    // A claim must outlive one attempt's silence: the retry deadline plus the request timeout
    // of the last attempt, with a margin for the renewal's own round trip.
    let lease_ms = i
        .lease_ms
        .unwrap_or(r.deadline_ms + request_timeout.as_millis() as u64 + 1_000);
    if !(500..=600_000).contains(&lease_ms) {
        return Err(ConfigError::at(
            "idempotency.lease_ms",
            "must be between 500 and 600000",
        ));
    }
    if !(1_000..=3_600_000).contains(&s.hold_max_window_ms) {
        return Err(ConfigError::at(
            "limits.hold_max_window_ms",
            "must be between 1000 and 3600000",
        ));
    }
    Ok(SendingSettings {
        idempotency_lease: Duration::from_millis(lease_ms),
        on_state_loss: s.on_state_loss,
        hold_max_window: Duration::from_millis(s.hold_max_window_ms),
        guard: Duration::from_millis(s.guard_ms),
        max_wait: Duration::from_secs(s.max_wait_secs),
        max_attempts: r.max_attempts,
        deadline: Duration::from_millis(r.deadline_ms),
        base_backoff: Duration::from_millis(r.base_backoff_ms),
        max_backoff: Duration::from_millis(r.max_backoff_ms),
        idempotency_ttl: Duration::from_secs(i.ttl_secs),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn globs() {
        use super::glob_match as m;
        assert!(m("tmpl-prod-*", "tmpl-prod-123"));
        assert!(!m("tmpl-prod-*", "tmpl-dev-123"));
        assert!(m("*", "anything"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxc"));
        assert!(m("exact", "exact"));
        assert!(!m("exact", "exact2"));
    }
}
