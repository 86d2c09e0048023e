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
        return Err(ApiError::from_wechat(
            answer.errcode,
            &answer.errmsg,
            class,
            now,
        ));
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
    }
}
