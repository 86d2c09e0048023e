//! What a send ends in: [`Sent`] or a [`SendError`]. Each error variant carries what a caller
//! needs to act on it — the class from the errcode table, WeChat's errcode, when a limit
//! resets, the field at fault — and nothing about HTTP: the HTTP crate maps each variant to a
//! status in one exhaustive match, a queue worker maps them to its own retry decisions.
//!
//! Both serialize: an idempotency key keeps the final outcome and replays it.

use serde::{Deserialize, Serialize};
use wxgate_protocol::api::Api;
use wxgate_protocol::errcode::{self, ErrorClass};
use wxgate_protocol::error_code::ErrorCode;

/// WeChat accepted the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub msgid: Option<u64>,
    /// Upstream attempts this request made (retries included).
    pub attempts: u32,
}

/// Which window was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitedBy {
    /// The app's window for the API.
    App,
    /// The recipient's window.
    Recipient,
    /// A window held full after the shared store lost its state (`limits.on_state_loss`).
    StateLoss,
}

/// Why a send did not end in [`Sent`]. `Display` is the human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum SendError {
    /// A configured window is full; nothing was sent.
    #[error("the {} `{api}` limit is full; a permit frees up in {retry_after_ms} ms; nothing was sent (send `Prefer: wait=N` to wait for it)", limited_by_text(*.limited_by))]
    RateLimited {
        api: Api,
        limited_by: LimitedBy,
        retry_after_ms: u64,
    },
    /// Every node pauses the API after WeChat answered a limit errcode (45009, 45011).
    #[error("sending {api} is paused until {} (in {} s) after WeChat answered {errcode}; nothing was sent", wxgate_protocol::time::utc_rfc3339(*.until_ms), .retry_after_ms.div_ceil(1000))]
    Paused {
        api: Api,
        errcode: i64,
        class: ErrorClass,
        until_ms: u64,
        retry_after_ms: u64,
    },
    /// The configured daily quota of the API is used up.
    #[error("the daily quota of {limit} `{api}` calls is used up until {} (00:00 Beijing time, in {} s); nothing was sent", wxgate_protocol::time::utc_rfc3339(*.until_ms), .retry_after_ms.div_ceil(1000))]
    QuotaExhausted {
        api: Api,
        limit: u64,
        until_ms: u64,
        retry_after_ms: u64,
    },
    /// WeChat answered a non-zero errcode.
    #[error("WeChat answered {errcode} ({}): {errmsg}{}", errcode_name(*.errcode), quota_note(*.class, *.retry_after_ms))]
    Wechat {
        errcode: i64,
        errmsg: String,
        class: ErrorClass,
        /// When the limit behind a limit class resets, or a backoff hint.
        retry_after_ms: Option<u64>,
    },
    /// WeChat could not be reached: nothing was sent.
    #[error("WeChat could not be reached; nothing was sent ({detail})")]
    Unreachable { detail: String },
    /// WeChat may or may not have sent the message.
    #[error("WeChat may or may not have sent the message ({detail}); {}", if *.dedup_protected { "retrying with the same client_msg_id within 10 minutes cannot duplicate it" } else { "sending it again may deliver it twice" })]
    OutcomeUnknown {
        detail: String,
        /// WeChat de-duplicates a repeat (a template send with its `client_msg_id`, within
        /// 10 minutes of the first attempt).
        dedup_protected: bool,
        /// WeChat's answer when it said something that leaves the outcome open (`-1`).
        #[serde(default)]
        errcode: Option<i64>,
    },
    /// No usable access_token now (the token endpoint failed transiently, the leader has not
    /// stored one, the storm guard or a pause holds fetches); nothing was sent.
    #[error("no access_token: {detail}; nothing was sent")]
    TokenUnavailable {
        detail: String,
        errcode: Option<i64>,
    },
    /// The token endpoint refused the app's credentials or settings: an operator must act.
    #[error("no access_token: the token endpoint answered {errcode} ({errmsg}); nothing was sent")]
    AppMisconfigured {
        errcode: i64,
        errmsg: String,
        class: ErrorClass,
    },
    /// The shared store could not be reached; nothing was sent.
    #[error("{detail}; nothing was sent")]
    StoreUnavailable { detail: String },
    /// Another request holds the idempotency key and is still running.
    #[error("a request with this idempotency key is in progress (request {request_id}); nothing was sent")]
    InProgress {
        request_id: String,
        retry_after_ms: u64,
    },
    /// A registered template's fields are not known yet (WeChat's lists could not be read).
    #[error(
        "the fields of template `{template_id}` are not known yet ({detail}); nothing was sent"
    )]
    TemplatesUnavailable { template_id: String, detail: String },
    /// The message breaks a rule of the template registry.
    #[error("{message}")]
    InvalidField { field: String, message: String },
    /// A bug or a misconfigured client.
    #[error("internal error: {detail}")]
    Internal { detail: String },
}

fn limited_by_text(l: LimitedBy) -> &'static str {
    match l {
        LimitedBy::App => "app's",
        LimitedBy::Recipient => "recipient's",
        LimitedBy::StateLoss => "(held after a loss of the shared state) app's",
    }
}

fn errcode_name(errcode: i64) -> &'static str {
    errcode::lookup(errcode)
        .map(|r| r.name)
        .unwrap_or("unknown")
}

fn quota_note(class: ErrorClass, retry_after_ms: Option<u64>) -> String {
    match (class, retry_after_ms) {
        (ErrorClass::QuotaExhausted, Some(ms)) => format!(
            "; the quota resets at 00:00 Beijing time (in {} s)",
            ms.div_ceil(1000)
        ),
        _ => String::new(),
    }
}

impl SendError {
    /// The stable machine code callers match on (also the `outcome` label of
    /// `wxgate_sends_total`).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::Paused { class, .. } => match class {
                ErrorClass::QuotaExhausted => ErrorCode::QuotaExhausted,
                _ => ErrorCode::RateLimited,
            },
            Self::QuotaExhausted { .. } => ErrorCode::QuotaExhausted,
            Self::Wechat { class, .. } => match class {
                ErrorClass::TokenRefresh => ErrorCode::UpstreamTokenRejected,
                ErrorClass::Backoff => ErrorCode::UpstreamUnavailable,
                ErrorClass::RateLimited => ErrorCode::RateLimited,
                ErrorClass::QuotaExhausted => ErrorCode::QuotaExhausted,
                ErrorClass::Caller => ErrorCode::RejectedByWechat,
                ErrorClass::Config => ErrorCode::AppMisconfigured,
                ErrorClass::Unclassified => ErrorCode::UpstreamError,
            },
            Self::Unreachable { .. } => ErrorCode::UpstreamUnreachable,
            Self::OutcomeUnknown { .. } => ErrorCode::UpstreamOutcomeUnknown,
            Self::TokenUnavailable { .. } => ErrorCode::TokenUnavailable,
            Self::AppMisconfigured { .. } => ErrorCode::AppMisconfigured,
            Self::StoreUnavailable { .. } => ErrorCode::StoreUnavailable,
            Self::InProgress { .. } => ErrorCode::InProgress,
            Self::TemplatesUnavailable { .. } => ErrorCode::TemplatesUnavailable,
            Self::InvalidField { .. } => ErrorCode::InvalidField,
            Self::Internal { .. } => ErrorCode::InternalError,
        }
    }

    /// Whether sending the same request again later can succeed.
    pub fn retryable(&self) -> bool {
        match self {
            Self::RateLimited { .. }
            | Self::Paused { .. }
            | Self::QuotaExhausted { .. }
            | Self::Unreachable { .. }
            | Self::TokenUnavailable { .. }
            | Self::StoreUnavailable { .. }
            | Self::InProgress { .. }
            | Self::TemplatesUnavailable { .. } => true,
            Self::Wechat { class, .. } => class.retryable(),
            Self::OutcomeUnknown {
                dedup_protected, ..
            } => *dedup_protected,
            Self::AppMisconfigured { .. } | Self::InvalidField { .. } | Self::Internal { .. } => {
                false
            }
        }
    }

    /// WeChat's errcode, when WeChat answered.
    pub fn wechat_errcode(&self) -> Option<i64> {
        match self {
            Self::Wechat { errcode, .. }
            | Self::Paused { errcode, .. }
            | Self::AppMisconfigured { errcode, .. } => Some(*errcode),
            Self::TokenUnavailable { errcode, .. } | Self::OutcomeUnknown { errcode, .. } => {
                *errcode
            }
            _ => None,
        }
    }

    /// The errcode class, when WeChat answered.
    pub fn class(&self) -> Option<ErrorClass> {
        match self {
            Self::Wechat { class, .. }
            | Self::Paused { class, .. }
            | Self::AppMisconfigured { class, .. } => Some(*class),
            _ => None,
        }
    }

    /// How long to wait before trying again, where that is known.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_ms, .. }
            | Self::Paused { retry_after_ms, .. }
            | Self::QuotaExhausted { retry_after_ms, .. }
            | Self::InProgress { retry_after_ms, .. } => Some(*retry_after_ms),
            Self::Wechat { retry_after_ms, .. } => *retry_after_ms,
            Self::Unreachable { .. }
            | Self::TokenUnavailable { .. }
            | Self::StoreUnavailable { .. }
            | Self::TemplatesUnavailable { .. } => Some(1_000),
            Self::OutcomeUnknown { .. }
            | Self::AppMisconfigured { .. }
            | Self::InvalidField { .. }
            | Self::Internal { .. } => None,
        }
    }

    /// The input field at fault, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::InvalidField { field, .. } => Some(field),
            Self::InProgress { .. } => Some("Idempotency-Key"),
            _ => None,
        }
    }

    /// WeChat answered `errcode` to a send: the class decides everything else.
    pub fn wechat(errcode: i64, errmsg: &str, class: ErrorClass, now_ms: u64) -> Self {
        let retry_after_ms = match class.window_reset_ms(now_ms) {
            Some(reset) => Some(reset.saturating_sub(now_ms) + 1),
            None if class == ErrorClass::Backoff => Some(1_000),
            None => None,
        };
        Self::Wechat {
            errcode,
            errmsg: errmsg.to_string(),
            class,
            retry_after_ms,
        }
    }

    pub fn store(e: impl std::fmt::Display) -> Self {
        Self::StoreUnavailable {
            detail: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(errcode: i64, code: &str, retryable: bool) {
        let class = errcode::classify(errcode, errcode::Endpoint::Business);
        let e = SendError::wechat(errcode, "msg", class, 1_000);
        assert_eq!(
            (e.code().as_str(), e.retryable()),
            (code, retryable),
            "{errcode}"
        );
        assert_eq!(e.wechat_errcode(), Some(errcode));
    }

    #[test]
    fn one_line_per_class() {
        check(40001, "upstream_token_rejected", true);
        check(-1, "upstream_unavailable", true);
        check(45011, "rate_limited", true);
        check(45009, "quota_exhausted", true);
        check(43101, "rejected_by_wechat", false);
        check(47003, "rejected_by_wechat", false);
        check(40037, "app_misconfigured", false);
        check(12345, "upstream_error", false);
    }

    #[test]
    fn retry_after_points_at_the_window_reset() {
        let minute = SendError::wechat(45011, "", ErrorClass::RateLimited, 59_500);
        assert_eq!(minute.retry_after_ms(), Some(501));
        let day = SendError::wechat(45009, "", ErrorClass::QuotaExhausted, 0);
        // 1970-01-01T00:00Z is 08:00 in Beijing: 16 h to the reset.
        assert_eq!(day.retry_after_ms(), Some(16 * 3_600_000 + 1));
        assert!(day.to_string().contains("resets at 00:00 Beijing time"));
    }

    #[test]
    fn outcomes_round_trip_through_json() {
        let e = SendError::OutcomeUnknown {
            detail: "timeout".into(),
            dedup_protected: false,
            errcode: None,
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<SendError>(&json).unwrap(), e);
    }
}
