//! The WeChat APIs wxgate counts calls to, and WeChat's published quotas of the token endpoints.
//!
//! Limits, daily quotas and pauses are kept per app and per [`Api`]; its [`Api::as_str`] name
//! is what appears in configuration (`[apps.X.limits] template_send = ...`), in Redis key names
//! (`win:template_send:60000`, the epoch fields `quota:template_send:used`,
//! `pause:template_send:until_ms`) and in metrics
//! labels, so it never changes.

use std::fmt;

/// An API whose calls are limited, counted or paused.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// Official Account template message (`/cgi-bin/message/template/send`).
    TemplateSend,
    /// Subscribe message: Mini Program `subscribe/send` or Official Account `subscribe/bizsend`.
    /// An app is one kind or the other, so both share one name.
    SubscribeSend,
    /// The token endpoints (`/cgi-bin/token`, `/cgi-bin/stable_token`).
    TokenFetch,
}

impl Api {
    /// The message APIs a caller can configure limits and quotas for.
    pub const SENDS: [Api; 2] = [Api::TemplateSend, Api::SubscribeSend];

    /// The stable name used in configuration, keys and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TemplateSend => "template_send",
            Self::SubscribeSend => "subscribe_send",
            Self::TokenFetch => "token_fetch",
        }
    }

    /// The API with that stable name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "template_send" => Some(Self::TemplateSend),
            "subscribe_send" => Some(Self::SubscribeSend),
            "token_fetch" => Some(Self::TokenFetch),
            _ => None,
        }
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WeChat's daily call quota of `/cgi-bin/token` per app (the classic endpoint).
pub const CLASSIC_TOKEN_DAILY_QUOTA: u64 = 2_000;
/// WeChat's daily call quota of `/cgi-bin/stable_token` (normal mode) per app.
pub const STABLE_TOKEN_DAILY_QUOTA: u64 = 500_000;
/// How long WeChat de-duplicates a template message by its `client_msg_id`, from the first
/// send: a repeat within it is not delivered again.
pub const CLIENT_MSG_ID_DEDUP_MS: u64 = 10 * 60 * 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for api in [Api::TemplateSend, Api::SubscribeSend, Api::TokenFetch] {
            assert_eq!(Api::parse(api.as_str()), Some(api));
        }
        assert_eq!(Api::parse("nope"), None);
    }
}
