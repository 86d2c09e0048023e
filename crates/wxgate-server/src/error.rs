//! The one error shape every failure is answered with:
//!
//! ```json
//! {"code":"invalid_field","message":"...","field":"data.thing1.value",
//!  "wechat_errcode":null,"retryable":false,"request_id":"..."}
//! ```
//!
//! `code` is stable and machine-readable; `message` is for humans; `field` names the input at
//! fault when there is one; `wechat_errcode` is set when WeChat answered; `retryable` says
//! whether sending the same request again later can succeed. The engine's typed outcomes are
//! mapped to statuses here, in one exhaustive match ([`ApiError::from_send`]), and nowhere
//! else.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde::Serialize;
use wxgate_engine::SendError;
use wxgate_protocol::errcode::ErrorClass;
pub use wxgate_protocol::error_code::ErrorCode;

/// A failure, ready to be answered.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
    pub wechat_errcode: Option<i64>,
    pub retryable: bool,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

/// The one error shape: every failure (4xx and 5xx) is answered with it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    /// Stable and machine-readable.
    code: ErrorCode,
    /// For humans; may change between versions.
    message: &'a str,
    /// The input at fault, when there is one: a body field (`data.thing1.value`), a header
    /// (`Idempotency-Key`, `Authorization`) or `app`.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    /// WeChat's errcode, when WeChat answered.
    wechat_errcode: Option<i64>,
    /// Whether sending the same request again later can succeed (see `Retry-After`).
    retryable: bool,
    /// The request's id (`X-Request-Id`).
    request_id: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            wechat_errcode: None,
            retryable: false,
            retry_after: None,
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// A 400 for a body that is not the API's JSON shape.
    pub fn invalid_request(field: Option<String>, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, message);
        e.field = field;
        e
    }

    /// A 422 for a well-formed body whose field breaks a rule.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidField,
            message,
        )
        .field(field)
    }

    /// The HTTP answer to an engine error: the status is chosen here, once per variant; the
    /// code, message, field, errcode, retryability and Retry-After come from the error itself.
    pub fn from_send(e: &SendError) -> Self {
        let status = match e {
            SendError::RateLimited { .. }
            | SendError::Paused { .. }
            | SendError::QuotaExhausted { .. } => StatusCode::TOO_MANY_REQUESTS,
            SendError::Wechat { class, .. } => match class {
                ErrorClass::TokenRefresh => StatusCode::BAD_GATEWAY,
                ErrorClass::Backoff => StatusCode::SERVICE_UNAVAILABLE,
                ErrorClass::RateLimited | ErrorClass::QuotaExhausted => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                ErrorClass::Caller => StatusCode::UNPROCESSABLE_ENTITY,
                ErrorClass::Config | ErrorClass::Unclassified => StatusCode::BAD_GATEWAY,
            },
            SendError::Unreachable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            SendError::OutcomeUnknown { .. } => StatusCode::GATEWAY_TIMEOUT,
            SendError::TokenUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            SendError::AppMisconfigured { .. } => StatusCode::BAD_GATEWAY,
            SendError::StoreUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            SendError::InProgress { .. } => StatusCode::CONFLICT,
            SendError::TemplatesUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            SendError::InvalidField { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            SendError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            code: e.code(),
            message: e.to_string(),
            field: e.field().map(str::to_string),
            wechat_errcode: e.wechat_errcode(),
            retryable: e.retryable(),
            retry_after: e.retry_after_ms().map(|ms| ms.div_ceil(1000).max(1)),
        }
    }

    /// The JSON body (for storing under an idempotency key).
    pub fn body_json(&self, request_id: &str) -> serde_json::Value {
        serde_json::to_value(ErrorBody {
            code: self.code,
            message: &self.message,
            field: self.field.as_deref(),
            wechat_errcode: self.wechat_errcode,
            retryable: self.retryable,
            request_id,
        })
        .unwrap_or_default()
    }

    /// Answers with the JSON body and headers. `request_id` is echoed in the body.
    pub fn to_response(&self, request_id: &str) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status);
        if matches!(
            self.status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE
        ) {
            // The rest of the body will not be read: end the connection after this answer.
            resp.force_close();
        }
        if let Some(secs) = self.retry_after {
            resp.insert_header((header::RETRY_AFTER, HeaderValue::from(secs)));
        }
        resp.json(self.body_json(request_id))
    }
}

impl From<SendError> for ApiError {
    fn from(e: SendError) -> Self {
        Self::from_send(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wxgate_protocol::errcode;

    #[track_caller]
    fn check(errcode: i64, status: u16, code: &str, retryable: bool) {
        let class = errcode::classify(errcode, errcode::Endpoint::Business);
        let e = ApiError::from_send(&SendError::wechat(errcode, "msg", class, 1_000));
        assert_eq!(
            (e.status.as_u16(), e.code.as_str(), e.retryable),
            (status, code, retryable),
            "{errcode}"
        );
        assert_eq!(e.wechat_errcode, Some(errcode));
    }

    #[test]
    fn one_line_per_class() {
        check(40001, 502, "upstream_token_rejected", true);
        check(-1, 503, "upstream_unavailable", true);
        check(45011, 429, "rate_limited", true);
        check(45009, 429, "quota_exhausted", true);
        check(43101, 422, "rejected_by_wechat", false);
        check(47003, 422, "rejected_by_wechat", false);
        check(40037, 502, "app_misconfigured", false);
        check(12345, 502, "upstream_error", false);
    }

    #[test]
    fn retry_after_points_at_the_window_reset() {
        let minute = ApiError::from_send(&SendError::wechat(
            45011,
            "",
            ErrorClass::RateLimited,
            59_500,
        ));
        assert_eq!(minute.retry_after, Some(1));
        let day = ApiError::from_send(&SendError::wechat(45009, "", ErrorClass::QuotaExhausted, 0));
        // 1970-01-01T00:00Z is 08:00 in Beijing: 16 h to the reset.
        assert_eq!(day.retry_after, Some(16 * 3600 + 1));
    }
}
