//! One send to WeChat, under the cluster's limits.
//!
//! Every upstream attempt first takes a permit from the store (`acquire`: the app's windows for
//! the API, the recipient's windows, the daily quota and any block WeChat's 45009/45011 set). A
//! full window answers 429 `rate_limited` with `Retry-After`, or — when the caller sent
//! `Prefer: wait=N` — waits for the permit up to N seconds (capped by `limits.max_wait_secs`).
//! A used-up quota or a block fails fast with `quota_exhausted` / `rate_limited`.
//!
//! Then the answer is classified with the one errcode table:
//! - a rejected token (`TokenRefresh`) is invalidated exactly and the send retried once;
//! - `-1` (`Backoff`) and transport failures are retried with exponential backoff and jitter,
//!   within `retry.max_attempts` and `retry.deadline_ms` — but only when a retry cannot notify
//!   the user twice: a connect failure (nothing was sent) always; a `-1` or an unknown outcome
//!   only for template sends, which always carry a `client_msg_id` WeChat de-duplicates on;
//! - `45011`/`45009` set a shared block so every node stops sending that API until the reset;
//! - caller and config faults are answered at once, never retried.

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use wxgate_config::App;
use wxgate_protocol::errcode::{self, Endpoint, ErrorClass};
use wxgate_protocol::wire::{BizsendMessage, SendResponse, SubscribeMessage, TemplateMessage};
use wxgate_store::{Acquire, AcquireRequest, DailyQuota, Limit, Store};
use wxgate_upstream::UpstreamError;

use crate::error::ApiError;
use crate::metrics::{Metrics, PermitLabels, SendLabels, WechatErrorLabels};
use crate::startup::AppState;
use crate::token::TokenError;

/// A validated message, ready for its API.
pub enum Outgoing {
    Template(TemplateMessage),
    Subscribe(SubscribeMessage),
    Bizsend(BizsendMessage),
}

impl Outgoing {
    /// The API name limits, quotas and blocks are kept under.
    pub fn api(&self) -> &'static str {
        match self {
            Self::Template(_) => "template_send",
            // An app has one or the other, so they share limits.
            Self::Subscribe(_) | Self::Bizsend(_) => "subscribe_send",
        }
    }

    pub fn touser(&self) -> &str {
        match self {
            Self::Template(m) => &m.touser,
            Self::Subscribe(m) => &m.touser,
            Self::Bizsend(m) => &m.touser,
        }
    }

    /// WeChat de-duplicates it: a repeat cannot notify the user twice.
    pub fn dedup_protected(&self) -> bool {
        matches!(self, Self::Template(m) if m.client_msg_id.is_some())
    }
}

/// How one send may wait and retry.
pub struct SendOptions {
    /// `Prefer: wait=N`, already capped: how long to wait for a permit.
    pub wait_for_permit: Option<Duration>,
    /// When the request arrived (the retry deadline counts from here).
    pub started: Instant,
}

/// WeChat accepted the message.
pub struct Sent {
    pub msgid: Option<u64>,
    pub attempts: u32,
}

pub async fn deliver(
    state: &AppState,
    app: &App,
    msg: &Outgoing,
    opts: &SendOptions,
) -> Result<Sent, ApiError> {
    let result = attempts(state, app, msg, opts).await;
    let latency_ms = opts.started.elapsed().as_millis() as u64;
    let m = &state.metrics;
    let outcome = match &result {
        Ok(_) => "sent".to_string(),
        Err(e) => e.code.to_string(),
    };
    m.sends
        .get_or_create(&SendLabels {
            app: app.name.clone(),
            api: msg.api().into(),
            outcome,
        })
        .inc();
    m.send_seconds
        .get_or_create(&Metrics::api(&app.name, msg.api()))
        .observe(opts.started.elapsed().as_secs_f64());
    match &result {
        Ok(sent) => tracing::info!(
            app = %app.name,
            api = msg.api(),
            msgid = sent.msgid,
            attempts = sent.attempts,
            latency_ms,
            "sent"
        ),
        Err(e) => tracing::warn!(
            app = %app.name,
            api = msg.api(),
            code = e.code,
            wechat_errcode = e.wechat_errcode,
            latency_ms,
            error = %e.message,
            "send failed"
        ),
    }
    result
}

/// Exponential backoff with jitter: a random wait in [base, min(max, base · 2^n)].
fn backoff(state: &AppState, retry: u32) -> Duration {
    let s = &state.settings.sending;
    let cap = s
        .base_backoff
        .saturating_mul(1 << retry.min(16))
        .min(s.max_backoff);
    let base = s.base_backoff.as_millis() as u64;
    let span = (cap.as_millis() as u64).saturating_sub(base);
    Duration::from_millis(base + if span > 0 { fastrand::u64(0..=span) } else { 0 })
}

async fn attempts(
    state: &AppState,
    app: &App,
    msg: &Outgoing,
    opts: &SendOptions,
) -> Result<Sent, ApiError> {
    let s = &state.settings.sending;
    let deadline = opts.started + s.deadline;
    let mut attempts = 0u32;
    let mut token_retried = false;
    let mut backoff_retries = 0u32;
    let permit_deadline = opts.wait_for_permit.map(|w| Instant::now() + w);
    loop {
        attempts += 1;
        permit(state, app, msg, permit_deadline).await?;
        let token = state.tokens.get(app).await.map_err(token_error)?;
        state
            .metrics
            .upstream_attempts
            .get_or_create(&Metrics::api(&app.name, msg.api()))
            .inc();
        let outcome = call(state, &token.value, msg).await;
        // May another attempt follow, and is it safe?
        let may_retry = |safe: bool, retries: u32| {
            safe && retries + 1 < s.max_attempts && Instant::now() < deadline
        };
        match outcome {
            Ok(answer) if answer.errcode == 0 => {
                return Ok(Sent {
                    msgid: answer.msgid,
                    attempts,
                });
            }
            Ok(answer) => {
                let class = errcode::classify(answer.errcode, Endpoint::Business);
                state
                    .metrics
                    .wechat_errors
                    .get_or_create(&WechatErrorLabels {
                        app: app.name.clone(),
                        api: msg.api().into(),
                        errcode: answer.errcode.to_string(),
                        class: class.as_str().into(),
                    })
                    .inc();
                if class == ErrorClass::TokenRefresh && !token_retried {
                    token_retried = true;
                    state
                        .tokens
                        .report_bad(app, &token.value)
                        .await
                        .map_err(token_error)?;
                    continue;
                }
                if class == ErrorClass::Backoff && may_retry(msg.dedup_protected(), backoff_retries)
                {
                    let wait = backoff(state, backoff_retries);
                    backoff_retries += 1;
                    tracing::info!(app = %app.name, errcode = answer.errcode, wait_ms = wait.as_millis() as u64, "WeChat busy; retrying with the same client_msg_id");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                let now = state.clock.now_ms();
                pause_api(&*state.store, app, msg.api(), answer.errcode, class).await;
                return Err(ApiError::from_wechat(
                    answer.errcode,
                    &answer.errmsg,
                    class,
                    now,
                ));
            }
            Err(e) => {
                let safe = match &e {
                    UpstreamError::NotSent(_) => true,
                    UpstreamError::OutcomeUnknown(_) => msg.dedup_protected(),
                    UpstreamError::Setup(_) => false,
                };
                if may_retry(safe, backoff_retries) {
                    let wait = backoff(state, backoff_retries);
                    backoff_retries += 1;
                    tracing::info!(app = %app.name, error = %e, wait_ms = wait.as_millis() as u64, "transport failure; retrying");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                return Err(transport_error(e, msg));
            }
        }
    }
}

async fn call(
    state: &AppState,
    token: &str,
    msg: &Outgoing,
) -> Result<SendResponse, UpstreamError> {
    match msg {
        Outgoing::Template(m) => state.client.send_template(token, m).await,
        Outgoing::Subscribe(m) => state.client.send_subscribe(token, m).await,
        Outgoing::Bizsend(m) => state.client.send_bizsend(token, m).await,
    }
}

/// One permit for one upstream attempt: every window of the API and of the recipient, the
/// daily quota, and the API's block, in one atomic `acquire`. Waits for a full window when
/// `wait_until` allows; a quota or a block fails fast. A store that cannot be reached fails the
/// send closed (503), unless the configured policy grants a local share.
async fn permit(
    state: &AppState,
    app: &App,
    msg: &Outgoing,
    wait_until: Option<Instant>,
) -> Result<(), ApiError> {
    let api = msg.api();
    let mut limits: Vec<Limit> = app
        .limits
        .per_api
        .get(api)
        .into_iter()
        .flatten()
        .map(|w| Limit {
            name: api.to_string(),
            limit: w.limit,
            window_ms: w.window_ms,
        })
        .collect();
    let user = format!("user:{}", msg.touser());
    limits.extend(app.limits.per_recipient.iter().map(|w| Limit {
        name: user.clone(),
        limit: w.limit,
        window_ms: w.window_ms,
    }));
    let quotas: Vec<DailyQuota> = app
        .limits
        .quotas
        .get(api)
        .map(|q| DailyQuota {
            name: api.to_string(),
            limit: *q,
        })
        .into_iter()
        .collect();
    let blocks = [api];
    loop {
        // Unique per attempt across the cluster (node id + a per-node counter), and short: it is
        // the member stored in every sliding-log window.
        let permit_id = format!("{}:{}", state.node_id, state.next_permit());
        let req = AcquireRequest {
            appid: &app.appid,
            limits: &limits,
            quotas: &quotas,
            blocks: &blocks,
            guard_ms: state.settings.sending.guard.as_millis() as u64,
            permit_id: &permit_id,
        };
        let decision = state.store.acquire(&req).await;
        let label = match &decision {
            Ok(Acquire::Granted { .. }) => "granted",
            Ok(Acquire::Wait { .. }) => "wait",
            Ok(Acquire::Blocked { .. }) => "blocked",
            Err(_) => "unavailable",
        };
        state
            .metrics
            .permits
            .get_or_create(&PermitLabels {
                app: app.name.clone(),
                api: api.into(),
                decision: label.into(),
            })
            .inc();
        match decision {
            Ok(Acquire::Granted { .. }) => return Ok(()),
            Ok(Acquire::Wait { wait_ms, limit }) => {
                let wait = Duration::from_millis(wait_ms);
                if let Some(until) = wait_until {
                    if Instant::now() + wait <= until {
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                }
                let what = if limit.starts_with("user:") {
                    "recipient's"
                } else {
                    "app's"
                };
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "the {what} `{api}` limit is full; a permit frees up in {wait_ms} ms; nothing was sent (send `Prefer: wait=N` to wait for it)"
                    ),
                )
                .retryable(true)
                .retry_after(wait_ms.div_ceil(1000)));
            }
            Ok(Acquire::Blocked { until_ms, reason }) => {
                let now = state
                    .store
                    .now_ms()
                    .await
                    .unwrap_or_else(|_| state.clock.now_ms());
                let secs = until_ms.saturating_sub(now).div_ceil(1000);
                let daily = reason.contains("45009") || reason.contains("quota");
                let at = wxgate_protocol::time::utc_rfc3339(until_ms);
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    if daily { "quota_exhausted" } else { "rate_limited" },
                    format!(
                        "sending {api} for app `{}` is paused until {at} (in {secs} s; {reason}); nothing was sent",
                        app.name
                    ),
                )
                .retryable(true)
                .retry_after(secs));
            }
            Err(e) => return Err(ApiError::store_unavailable(e)),
        }
    }
}

/// WeChat said an API is over its minute or daily limit: tell every node, through the store, to
/// stop calling it for this app until the window resets (next minute, or 00:00 Beijing time).
/// Used for the send APIs and for the token endpoints.
pub(crate) async fn pause_api(
    store: &dyn Store,
    app: &App,
    api: &str,
    errcode: i64,
    class: ErrorClass,
) {
    if !matches!(class, ErrorClass::RateLimited | ErrorClass::QuotaExhausted) {
        return;
    }
    let now = match store.now_ms().await {
        Ok(now) => now,
        Err(e) => {
            tracing::warn!(error = %e, "cannot set the shared block: store unavailable");
            return;
        }
    };
    let Some(until) = class.window_reset_ms(now) else {
        return;
    };
    let reason = format!("WeChat answered {errcode}");
    match store.block(&app.appid, api, until, &reason).await {
        Ok(()) => tracing::warn!(
            app = %app.name,
            api,
            errcode,
            until_ms = until,
            "every node stops calling this API until the window resets"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot set the shared block"),
    }
}

fn transport_error(e: UpstreamError, msg: &Outgoing) -> ApiError {
    match e {
        UpstreamError::NotSent(detail) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_unreachable",
            format!("WeChat could not be reached; nothing was sent ({detail})"),
        )
        .retryable(true)
        .retry_after(1),
        UpstreamError::OutcomeUnknown(detail) => {
            let dedup = msg.dedup_protected();
            let advice = if dedup {
                "retrying with the same client_msg_id within 10 minutes cannot duplicate it"
            } else {
                "retrying may deliver it twice"
            };
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_outcome_unknown",
                format!("WeChat may or may not have sent the message ({detail}); {advice}"),
            )
            .retryable(dedup)
        }
        UpstreamError::Setup(detail) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            format!("the upstream client is misconfigured: {detail}"),
        ),
    }
}

pub fn token_error(e: TokenError) -> ApiError {
    match e {
        TokenError::Upstream(u) => match u {
            UpstreamError::NotSent(d)
            | UpstreamError::OutcomeUnknown(d)
            | UpstreamError::Setup(d) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "token_unavailable",
                format!("no access_token: the token endpoint failed ({d}); nothing was sent"),
            )
            .retryable(true)
            .retry_after(1),
        },
        TokenError::Wechat {
            errcode,
            errmsg,
            class,
        } => {
            let retryable = matches!(
                class,
                ErrorClass::Backoff | ErrorClass::RateLimited | ErrorClass::QuotaExhausted
            );
            let mut e = ApiError::new(
                if retryable { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::BAD_GATEWAY },
                if retryable { "token_unavailable" } else { "app_misconfigured" },
                format!(
                    "no access_token: the token endpoint answered {errcode} ({errmsg}); nothing was sent"
                ),
            )
            .retryable(retryable);
            e.wechat_errcode = Some(errcode);
            e
        }
        TokenError::Store(s) => ApiError::store_unavailable(s),
        TokenError::Unavailable(msg) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "token_unavailable",
            format!("{msg}; nothing was sent"),
        )
        .retryable(true)
        .retry_after(1),
    }
}
