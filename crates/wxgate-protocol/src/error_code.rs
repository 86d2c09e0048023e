//! The `code` of the gateway's one error shape (`{"code": ..., "message": ..., ...}`): every
//! value the gateway can answer with, in one enum. The HTTP layer, the engine's outcomes, the
//! metrics' `outcome` label and the OpenAPI document all take their codes from here, so the
//! documented list cannot drift from what is answered.

macro_rules! error_codes {
    ($($(#[doc = $doc:literal])* $variant:ident => $s:literal,)*) => {
        /// A stable, machine-readable error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[doc = $doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as it appears in the JSON body.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $s,)*
                }
            }

            /// The meaning of the code (its doc comment), for the API description.
            pub const fn description(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => concat!($($doc,)*),)*
                }
            }
        }
    };
}

error_codes! {
    /// The API key is missing or unknown (`field`: `Authorization`).
    Unauthenticated => "unauthenticated",
    /// The API key lacks the scope or the app this route needs.
    Forbidden => "forbidden",
    /// No such app for this API key (`field`: `app`).
    AppNotFound => "app_not_found",
    /// The route does not exist.
    NotFound => "not_found",
    /// The route exists, not with this method.
    MethodNotAllowed => "method_not_allowed",
    /// The API does not fit the app's kind (a template message to a Mini Program).
    UnsupportedForApp => "unsupported_for_app",
    /// The body is not `application/json`.
    UnsupportedMediaType => "unsupported_media_type",
    /// The body exceeds `server.max_body_bytes`.
    BodyTooLarge => "body_too_large",
    /// The body did not arrive within `server.request_timeout`.
    RequestTimeout => "request_timeout",
    /// The body is not the API's JSON shape, or a header is malformed (`field` names it).
    InvalidRequest => "invalid_request",
    /// A well-formed body whose field breaks a rule (`field` names it).
    InvalidField => "invalid_field",
    /// The sending limit is reached; `Retry-After` says when to try again.
    RateLimited => "rate_limited",
    /// WeChat's daily quota is used up; `Retry-After` points at the reset.
    QuotaExhausted => "quota_exhausted",
    /// WeChat rejected the access token twice in a row.
    UpstreamTokenRejected => "upstream_token_rejected",
    /// WeChat answered busy (`-1`) or failed; retry later.
    UpstreamUnavailable => "upstream_unavailable",
    /// WeChat refused the message for a reason of the caller's (`wechat_errcode` says which).
    RejectedByWechat => "rejected_by_wechat",
    /// The app's configuration is wrong (appid, secret, IP whitelist, template).
    AppMisconfigured => "app_misconfigured",
    /// WeChat answered an errcode the gateway does not classify.
    UpstreamError => "upstream_error",
    /// WeChat could not be reached; the message was not sent.
    UpstreamUnreachable => "upstream_unreachable",
    /// The request reached WeChat but no answer came back: it may have been sent.
    UpstreamOutcomeUnknown => "upstream_outcome_unknown",
    /// No access token could be obtained.
    TokenUnavailable => "token_unavailable",
    /// The shared store (Redis) is unavailable and the policy is fail-closed.
    StoreUnavailable => "store_unavailable",
    /// A request with the same `Idempotency-Key` is still in flight.
    InProgress => "in_progress",
    /// The template registry could not be loaded from WeChat.
    TemplatesUnavailable => "templates_unavailable",
    /// This node is draining or its store is unreachable (`/readyz`).
    NotReady => "not_ready",
    /// Admin API: no such API name (`field`: `api`; one of `template_send`, `subscribe_send`,
    /// `token_fetch`).
    UnknownApi => "unknown_api",
    /// Admin API: no pause of that API is in force for the app (`field`: `api`).
    NoBlock => "no_block",
    /// `Prefer: respond-async` on the memory store or with `queue.enabled = false`: nothing
    /// was queued.
    QueueUnavailable => "queue_unavailable",
    /// The app's queue holds `queue.max_backlog` entries: nothing was queued; `Retry-After`.
    QueueFull => "queue_full",
    /// No queued message with that id is kept for the app (or another key enqueued it).
    MessageNotFound => "message_not_found",
    /// A bug: the gateway failed in a way it did not expect.
    InternalError => "internal_error",
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The schema of `code`: a string, one of [`ErrorCode::ALL`], each described.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for ErrorCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let described = ErrorCode::ALL
            .iter()
            .map(|c| format!("- `{}`: {}", c.as_str(), c.description().trim()))
            .collect::<Vec<_>>()
            .join("\n");
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(ErrorCode::ALL.iter().map(|c| c.as_str())))
            .description(Some(format!(
                "A stable, machine-readable error code:\n{described}"
            )))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for ErrorCode {}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn codes_are_unique_snake_case_and_described() {
        let mut seen = std::collections::BTreeSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "{c} twice");
            assert!(c
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!(!c.description().is_empty(), "{c} has no description");
        }
    }
}
