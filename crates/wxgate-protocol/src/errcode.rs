//! The one errcode classification table.
//!
//! Every errcode WeChat may answer to the calls wxgate makes is listed once in [`TABLE`] with
//! its class. The gateway derives from the class alone what it does (refresh the token, back
//! off, wait for the window, give up), which HTTP status and machine `code` the caller sees,
//! whether the answer says `retryable`, and how the event is logged and counted. Codes that
//! are not in the table are [`ErrorClass::Unclassified`]: answered as a non-retryable upstream
//! error and logged at warn level so the table can grow.

/// What the gateway does about an errcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The access_token was rejected: invalidate exactly that token, refresh once, retry once.
    TokenRefresh,
    /// WeChat is busy or failed transiently: retry with backoff.
    Backoff,
    /// A per-minute limit was hit: wait for the next window, do not retry now.
    RateLimited,
    /// A daily quota is exhausted: nothing for this API until the day resets (00:00 UTC+8).
    QuotaExhausted,
    /// The caller's request or recipient is at fault: never retry the same request.
    Caller,
    /// The app's configuration or permissions are at fault: alert an operator, never retry.
    Config,
    /// Not in the table: treated as a non-retryable upstream error.
    Unclassified,
}

impl ErrorClass {
    /// Whether the same request may succeed if the caller sends it again later.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Self::TokenRefresh | Self::Backoff | Self::RateLimited | Self::QuotaExhausted
        )
    }

    /// When the window behind a limit class resets: the next calendar minute for `RateLimited`,
    /// 00:00 Beijing time for `QuotaExhausted`; `None` for other classes.
    pub fn window_reset_ms(self, now_ms: u64) -> Option<u64> {
        match self {
            Self::RateLimited => Some(crate::time::next_minute_ms(now_ms)),
            Self::QuotaExhausted => Some(crate::time::next_beijing_midnight_ms(now_ms)),
            _ => None,
        }
    }

    /// Stable lowercase name, used in logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenRefresh => "token_refresh",
            Self::Backoff => "backoff",
            Self::RateLimited => "rate_limited",
            Self::QuotaExhausted => "quota_exhausted",
            Self::Caller => "caller",
            Self::Config => "config",
            Self::Unclassified => "unclassified",
        }
    }
}

/// Which kind of endpoint answered: some codes mean different things on the token endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `/cgi-bin/token` or `/cgi-bin/stable_token`.
    Token,
    /// Every other endpoint (sends, template listings), called with an access_token.
    Business,
}

/// One row of the classification table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrcodeInfo {
    pub errcode: i64,
    /// Class on business endpoints.
    pub class: ErrorClass,
    /// Class on the token endpoints, where it differs (40001 there means a wrong AppSecret).
    pub token_endpoint_class: Option<ErrorClass>,
    /// Stable snake_case name of the condition, for logs and error messages.
    pub name: &'static str,
    /// What it means, in a sentence an operator can act on.
    pub meaning: &'static str,
}

const fn row(
    errcode: i64,
    class: ErrorClass,
    name: &'static str,
    meaning: &'static str,
) -> ErrcodeInfo {
    ErrcodeInfo {
        errcode,
        class,
        token_endpoint_class: None,
        name,
        meaning,
    }
}

use ErrorClass::*;

/// Every errcode wxgate knows, from `wechat-api.md` §5.
pub const TABLE: &[ErrcodeInfo] = &[
    row(
        -1,
        Backoff,
        "system_busy",
        "WeChat is busy; retry later (with the same client_msg_id)",
    ),
    ErrcodeInfo {
        errcode: 40001,
        class: TokenRefresh,
        token_endpoint_class: Some(Config),
        name: "invalid_credential",
        meaning: "access_token invalid or not latest (on the token endpoint: wrong AppSecret)",
    },
    row(40002, Caller, "invalid_grant_type", "invalid grant_type"),
    row(
        40003,
        Caller,
        "invalid_openid",
        "openid empty or not of this app",
    ),
    row(
        40013,
        Config,
        "invalid_appid",
        "appid wrong or not matching the token",
    ),
    row(
        40014,
        TokenRefresh,
        "invalid_access_token",
        "malformed access_token or wrong account",
    ),
    row(
        40037,
        Config,
        "invalid_template_id",
        "template_id deleted, of another account, or of the wrong kind",
    ),
    row(40125, Config, "invalid_appsecret", "AppSecret wrong"),
    row(
        40164,
        Config,
        "ip_not_whitelisted",
        "egress IP not in the app's IP whitelist",
    ),
    row(
        40243,
        Config,
        "appsecret_frozen",
        "AppSecret frozen by the account admin",
    ),
    ErrcodeInfo {
        errcode: 41001,
        class: TokenRefresh,
        token_endpoint_class: Some(Caller),
        name: "access_token_missing",
        meaning: "no access_token was sent",
    },
    row(
        41002,
        Caller,
        "appid_missing",
        "appid missing from the token request",
    ),
    row(
        41004,
        Caller,
        "appsecret_missing",
        "secret missing from the token request",
    ),
    row(
        41030,
        Caller,
        "invalid_page",
        "page is not in the published mini program",
    ),
    row(
        42001,
        TokenRefresh,
        "access_token_expired",
        "access_token expired",
    ),
    row(43002, Caller, "require_post", "the endpoint requires POST"),
    row(
        43004,
        Caller,
        "require_subscribe",
        "the user does not follow the Official Account",
    ),
    row(
        43101,
        Caller,
        "user_refused",
        "the user refused the message or has no subscription left",
    ),
    row(
        45009,
        QuotaExhausted,
        "daily_quota_reached",
        "the API's daily quota is exhausted until 00:00 Beijing time",
    ),
    row(
        45011,
        RateLimited,
        "minute_quota_reached",
        "the API's per-minute limit was reached; retry next minute",
    ),
    row(
        45015,
        Caller,
        "response_window_closed",
        "customer-service window closed or subscription canceled",
    ),
    row(
        45047,
        RateLimited,
        "response_count_limit",
        "customer-service reply count limit for this user",
    ),
    row(45109, Config, "api_retired", "the API was retired"),
    row(
        47001,
        Caller,
        "data_format_error",
        "the request body is not valid JSON for this API",
    ),
    row(
        47003,
        Caller,
        "argument_invalid",
        "a data field breaks its type or length rule",
    ),
    row(
        48001,
        Config,
        "api_unauthorized",
        "the account may not call this API (unverified, wrong kind, no privilege)",
    ),
    row(
        48004,
        Config,
        "api_forbidden",
        "the API is banned for this account",
    ),
    row(
        48006,
        Config,
        "clear_quota_limit",
        "clear_quota used up for this month",
    ),
    row(50002, Config, "user_limited", "the account is restricted"),
    row(76021, Caller, "cgi_path_not_found", "cgi_path not found"),
    row(
        76022,
        Caller,
        "cgi_path_no_permission",
        "cgi_path not allowed for this token",
    ),
    row(
        89503,
        Config,
        "ip_needs_confirmation",
        "the egress IP awaits the admin's confirmation; do not hammer",
    ),
];

/// The table row of an errcode, if it is known.
pub fn lookup(errcode: i64) -> Option<&'static ErrcodeInfo> {
    TABLE.iter().find(|r| r.errcode == errcode)
}

/// The class of a non-zero errcode answered by `endpoint`.
pub fn classify(errcode: i64, endpoint: Endpoint) -> ErrorClass {
    match lookup(errcode) {
        None => Unclassified,
        Some(row) => match (endpoint, row.token_endpoint_class) {
            (Endpoint::Token, Some(class)) => class,
            _ => row.class,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(errcode: i64, business: ErrorClass, token: ErrorClass) {
        assert_eq!(
            classify(errcode, Endpoint::Business),
            business,
            "{errcode} on a business API"
        );
        assert_eq!(
            classify(errcode, Endpoint::Token),
            token,
            "{errcode} on a token endpoint"
        );
    }

    // One line per row of wechat-api.md §5, so a change to the table is a visible change here.
    #[test]
    fn every_row() {
        check(-1, Backoff, Backoff);
        check(40001, TokenRefresh, Config);
        check(40002, Caller, Caller);
        check(40003, Caller, Caller);
        check(40013, Config, Config);
        check(40014, TokenRefresh, TokenRefresh);
        check(40037, Config, Config);
        check(40125, Config, Config);
        check(40164, Config, Config);
        check(40243, Config, Config);
        check(41001, TokenRefresh, Caller);
        check(41002, Caller, Caller);
        check(41004, Caller, Caller);
        check(41030, Caller, Caller);
        check(42001, TokenRefresh, TokenRefresh);
        check(43002, Caller, Caller);
        check(43004, Caller, Caller);
        check(43101, Caller, Caller);
        check(45009, QuotaExhausted, QuotaExhausted);
        check(45011, RateLimited, RateLimited);
        check(45015, Caller, Caller);
        check(45047, RateLimited, RateLimited);
        check(45109, Config, Config);
        check(47001, Caller, Caller);
        check(47003, Caller, Caller);
        check(48001, Config, Config);
        check(48004, Config, Config);
        check(48006, Config, Config);
        check(50002, Config, Config);
        check(76021, Caller, Caller);
        check(76022, Caller, Caller);
        check(89503, Config, Config);
        assert_eq!(
            TABLE.len(),
            32,
            "a row was added or removed: add its check above"
        );
    }

    #[test]
    fn unknown_codes_are_unclassified() {
        check(99999, Unclassified, Unclassified);
        assert!(!Unclassified.retryable());
    }

    #[test]
    fn codes_are_unique() {
        for (i, a) in TABLE.iter().enumerate() {
            assert!(
                TABLE[i + 1..].iter().all(|b| b.errcode != a.errcode),
                "{} twice",
                a.errcode
            );
        }
    }

    #[test]
    fn window_resets() {
        assert_eq!(RateLimited.window_reset_ms(59_500), Some(60_000));
        assert_eq!(QuotaExhausted.window_reset_ms(0), Some(16 * 3_600_000));
        assert_eq!(Backoff.window_reset_ms(0), None);
    }

    #[test]
    fn retryable_classes() {
        assert!(TokenRefresh.retryable() && Backoff.retryable());
        assert!(RateLimited.retryable() && QuotaExhausted.retryable());
        assert!(!Caller.retryable() && !Config.retryable());
    }
}
