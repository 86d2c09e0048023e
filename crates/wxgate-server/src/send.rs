//! One send to WeChat.
//!
//! Flow: take a token (cached per node) → call the send API → classify the answer with the one
//! errcode table. A rejected token (`40001`/`42001`/`40014`, class `TokenRefresh`) is invalidated
//! exactly (compare-and-delete) and the send is retried once with a fresh token; any other
//! errcode is answered straight away by its class. A transport failure is either "not sent"
//! (503, safe to retry) or "outcome unknown" (504: retryable only when WeChat can de-duplicate it
//! through `client_msg_id`). Retries with backoff for `-1`, rate limits and idempotency keys come
//! with the shared-state work.

use std::time::Instant;

use actix_web::http::StatusCode;
use wxgate_config::App;
use wxgate_protocol::errcode::{self, Endpoint, ErrorClass};
use wxgate_protocol::wire::{BizsendMessage, SendResponse, SubscribeMessage, TemplateMessage};
use wxgate_store::{Acquire, AcquireRequest};
use wxgate_upstream::UpstreamError;

use crate::error::ApiError;
use crate::startup::AppState;
use crate::token::TokenError;

/// A validated message, ready for its API.
pub enum Outgoing {
    Template(TemplateMessage),
    Subscribe(SubscribeMessage),
    Bizsend(BizsendMessage),
}

impl Outgoing {
    pub fn api(&self) -> &'static str {
        match self {
            Self::Template(_) => "template_send",
            Self::Subscribe(_) => "subscribe_send",
            Self::Bizsend(_) => "subscribe_bizsend",
        }
    }

    fn dedup_protected(&self) -> bool {
        matches!(self, Self::Template(m) if m.client_msg_id.is_some())
    }
}

/// WeChat accepted the message.
pub struct Sent {
    pub msgid: Option<u64>,
    pub attempts: u32,
}

pub async fn deliver(state: &AppState, app: &App, msg: &Outgoing) -> Result<Sent, ApiError> {
    let started = Instant::now();
    let result = attempt_with_token_retry(state, app, msg).await;
    let latency_ms = started.elapsed().as_millis() as u64;
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

async fn attempt_with_token_retry(
    state: &AppState,
    app: &App,
    msg: &Outgoing,
) -> Result<Sent, ApiError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        permit(state, app, msg, attempts).await?;
        let token = state.tokens.get(app).await.map_err(token_error)?;
        let answer = call(state, &token.value, msg)
            .await
            .map_err(|e| transport_error(e, msg))?;
        if answer.errcode == 0 {
            return Ok(Sent {
                msgid: answer.msgid,
                attempts,
            });
        }
        let class = errcode::classify(answer.errcode, Endpoint::Business);
        if class == ErrorClass::TokenRefresh && attempts == 1 {
            state
                .tokens
                .report_bad(app, &token.value)
                .await
                .map_err(token_error)?;
            continue;
        }
        let now = state.clock.now_ms();
        if matches!(class, ErrorClass::RateLimited | ErrorClass::QuotaExhausted) {
            shared_block(state, app, msg, answer.errcode, class).await;
        }
        return Err(ApiError::from_wechat(
            answer.errcode,
            &answer.errmsg,
            class,
            now,
        ));
    }
}

/// Every upstream attempt first takes a permit from the shared store: one Lua script that
/// checks the app's blocks for this API (set after WeChat answered 45009/45011) — and, once
/// limits are configured, every window and quota. A store that cannot be reached fails the
/// send closed (503), unless the configured policy grants a local share.
async fn permit(state: &AppState, app: &App, msg: &Outgoing, attempt: u32) -> Result<(), ApiError> {
    let permit_id = format!("{}#{attempt}", uuid::Uuid::new_v4());
    let blocks = [msg.api()];
    let req = AcquireRequest {
        appid: &app.appid,
        limits: &[],
        quotas: &[],
        blocks: &blocks,
        guard_ms: 0,
        permit_id: &permit_id,
    };
    match state.store.acquire(&req).await {
        Ok(Acquire::Granted { .. }) => Ok(()),
        Ok(Acquire::Wait { wait_ms, limit }) => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "the `{limit}` limit is full; a permit frees up in {wait_ms} ms; nothing was sent"
            ),
        )
        .retryable(true)
        .retry_after(wait_ms.div_ceil(1000))),
        Ok(Acquire::Blocked { until_ms, reason }) => {
            let now = state
                .store
                .now_ms()
                .await
                .unwrap_or_else(|_| state.clock.now_ms());
            let secs = until_ms.saturating_sub(now).div_ceil(1000);
            let daily = reason.contains("45009") || reason.contains("quota");
            Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                if daily {
                    "quota_exhausted"
                } else {
                    "rate_limited"
                },
                format!(
                    "sending {} for app `{}` is paused for {secs} s ({reason}); nothing was sent",
                    msg.api(),
                    app.name
                ),
            )
            .retryable(true)
            .retry_after(secs))
        }
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("{e}; nothing was sent"),
        )
        .retryable(true)
        .retry_after(1)),
    }
}

/// WeChat said this API is over its minute or daily limit: tell every node, through the store,
/// to stop sending it for this app until the window resets (next minute, or 00:00 Beijing time).
async fn shared_block(
    state: &AppState,
    app: &App,
    msg: &Outgoing,
    errcode: i64,
    class: ErrorClass,
) {
    let now = match state.store.now_ms().await {
        Ok(now) => now,
        Err(e) => {
            tracing::warn!(error = %e, "cannot set the shared block: store unavailable");
            return;
        }
    };
    let until = match class {
        ErrorClass::QuotaExhausted => wxgate_protocol::time::next_beijing_midnight_ms(now),
        _ => wxgate_protocol::time::next_minute_ms(now),
    };
    let reason = format!("WeChat answered {errcode}");
    match state
        .store
        .block(&app.appid, msg.api(), until, &reason)
        .await
    {
        Ok(()) => tracing::warn!(
            app = %app.name,
            api = msg.api(),
            errcode,
            until_ms = until,
            "every node stops sending this API until the window resets"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot set the shared block"),
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
        TokenError::Store(s) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("{s}; nothing was sent"),
        )
        .retryable(true)
        .retry_after(1),
        TokenError::Unavailable(msg) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "token_unavailable",
            format!("{msg}; nothing was sent"),
        )
        .retryable(true)
        .retry_after(1),
    }
}
