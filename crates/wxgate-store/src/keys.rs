//! The Redis key schema — a contract with operators, documented in the README's "Redis keys".
//!
//! Every key of an app carries the appid as its hash tag (`<prefix>:{<appid>}:...`), so every
//! script touches a single Redis Cluster slot. Only the appid stands in braces.

use crate::Api;

/// Builds key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// Why a prefix cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "key prefix `{0}` must be 1-64 characters of a-z, A-Z, 0-9, '-', '_', ':', '.' (no braces)"
)]
pub struct BadPrefix(pub String);

impl Keys {
    pub fn new(prefix: &str) -> Result<Self, BadPrefix> {
        let ok = !prefix.is_empty()
            && prefix.len() <= 64
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.'));
        if ok {
            Ok(Self {
                prefix: prefix.to_string(),
            })
        } else {
            Err(BadPrefix(prefix.to_string()))
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn app(&self, appid: &str, rest: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + appid.len() + rest.len() + 24);
        k.push_str(&self.prefix);
        k.push_str(":{");
        k.push_str(appid);
        k.push_str("}:");
        k.push_str(rest);
        k
    }

    /// Hash: `access_token`, `expires_at_ms`, `fence`, `node`, `fetched_at_ms`, `source`.
    pub fn token(&self, appid: &str) -> String {
        self.app(appid, "token")
    }

    /// String: the node id of the refresh leader, with the lease as its TTL.
    pub fn leader(&self, appid: &str) -> String {
        self.app(appid, "leader")
    }

    /// String (counter): incremented on each new leadership.
    pub fn fence(&self, appid: &str) -> String {
        self.app(appid, "fence")
    }

    /// Hash: `seq` (the app's grant sequence), `lost_at_ms` (when a state loss was last
    /// detected), and per API the fields of [`api_fields`]: its pause and its daily quota. No
    /// TTL: its disappearance is how a loss is detected.
    pub fn epoch(&self, appid: &str) -> String {
        self.app(appid, "epoch")
    }

    /// List: the grant times (µs, Redis clock) of one sliding window, oldest first:
    /// `win:<name>:<window_ms>`.
    pub fn window(&self, appid: &str, name: &str, window_ms: u64) -> String {
        self.window_of(appid, &[name], window_ms)
    }

    /// The window list of one of a send's limits: `win:<api>:<window_ms>` or
    /// `win:user:<openid>:<window_ms>` (built without an intermediate name string).
    pub fn limit_window(&self, appid: &str, l: &crate::Limit) -> String {
        match &l.scope {
            crate::LimitScope::Api(api) => self.window_of(appid, &[api.as_str()], l.window_ms),
            crate::LimitScope::Recipient(openid) => {
                self.window_of(appid, &["user:", openid], l.window_ms)
            }
        }
    }

    fn window_of(&self, appid: &str, name: &[&str], window_ms: u64) -> String {
        let mut k = self.app(appid, "win:");
        for part in name {
            k.push_str(part);
        }
        k.push(':');
        k.push_str(itoa::Buffer::new().format(window_ms));
        k
    }

    /// String: a cached copy of something WeChat said (`templates`: the template lists).
    pub fn cache(&self, appid: &str, name: &str) -> String {
        self.app(appid, &format!("cache:{name}"))
    }

    /// Stream: the app's queued messages (field `id`), read by consumer group `wxgate`. Only
    /// acknowledged entries are deleted; it is never trimmed by length.
    pub fn queue(&self, appid: &str) -> String {
        self.app(appid, "q")
    }

    /// Hash: one queued message — `state` (`queued` | `sending` | `sent` | `failed`),
    /// `payload`, `entry`, `attempts`, `gen`, `msgid`, `error`, `node`, `created_ms`,
    /// `updated_ms`, `finished_ms`; expires after the idempotency TTL.
    pub fn queue_message(&self, appid: &str, id: &str) -> String {
        self.app(appid, &format!("qmsg:{id}"))
    }

    /// String: the message id enqueued under a caller's `Idempotency-Key`.
    pub fn queue_idempotency(&self, appid: &str, caller: &str, key: &str) -> String {
        self.app(appid, &format!("qidem:{caller}:{key}"))
    }

    /// Stream: the app's dead letters (field `id`), listed and re-driven by operators.
    pub fn dead_letters(&self, appid: &str) -> String {
        self.app(appid, "dlq")
    }

    /// Hash: `state` (`in_progress` | `done`), `request_id`, `result`, `api`, `client_msg_id`,
    /// `first_attempt_ms`, `lease_until_ms`, `created_ms`.
    pub fn idempotency(&self, appid: &str, key: &str) -> String {
        self.app(appid, &format!("idem:{key}"))
    }

    /// `SCAN MATCH` pattern of every idempotency record of the app.
    pub fn idempotency_pattern(&self, appid: &str) -> String {
        format!(
            "{}*",
            crate::inspect::glob_escape(&self.idempotency(appid, ""))
        )
    }

    /// `SCAN MATCH` pattern of every recipient's window of length `window_ms` (one key per
    /// recipient with a live window).
    pub fn recipient_window_pattern(&self, appid: &str, window_ms: u64) -> String {
        format!(
            "{}*:{window_ms}",
            crate::inspect::glob_escape(&self.app(appid, "win:user:"))
        )
    }
}

/// The fields of an app's epoch hash that hold one API's pause and daily quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiFields {
    /// When the pause ends (unix ms, Redis clock); a past end is no pause.
    pub pause_until: &'static str,
    /// The errcode WeChat answered that set the pause.
    pub pause_errcode: &'static str,
    /// The Beijing day (days since 1970-01-01 in UTC+8) `quota_used` counts for.
    pub quota_day: &'static str,
    /// Calls counted against the daily quota on that day.
    pub quota_used: &'static str,
}

/// The epoch-hash fields of `api` (static: no allocation per send).
pub fn api_fields(api: Api) -> &'static ApiFields {
    macro_rules! fields {
        ($api:literal) => {
            ApiFields {
                pause_until: concat!("pause:", $api, ":until_ms"),
                pause_errcode: concat!("pause:", $api, ":errcode"),
                quota_day: concat!("quota:", $api, ":dn"),
                quota_used: concat!("quota:", $api, ":used"),
            }
        };
    }
    static TEMPLATE: ApiFields = fields!("template_send");
    static SUBSCRIBE: ApiFields = fields!("subscribe_send");
    static TOKEN: ApiFields = fields!("token_fetch");
    match api {
        Api::TemplateSend => &TEMPLATE,
        Api::SubscribeSend => &SUBSCRIBE,
        Api::TokenFetch => &TOKEN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema() {
        let k = Keys::new("wxgate").unwrap();
        assert_eq!(
            k.token("wx1234567890abcdef"),
            "wxgate:{wx1234567890abcdef}:token"
        );
        assert_eq!(
            k.window("wx1", "template_send", 60_000),
            "wxgate:{wx1}:win:template_send:60000"
        );
        for api in [Api::TemplateSend, Api::SubscribeSend, Api::TokenFetch] {
            let f = api_fields(api);
            let name = api.as_str();
            assert_eq!(f.pause_until, format!("pause:{name}:until_ms"));
            assert_eq!(f.pause_errcode, format!("pause:{name}:errcode"));
            assert_eq!(f.quota_day, format!("quota:{name}:dn"));
            assert_eq!(f.quota_used, format!("quota:{name}:used"));
        }
        assert_eq!(k.idempotency("wx1", "order-1"), "wxgate:{wx1}:idem:order-1");
        assert_eq!(k.epoch("wx1"), "wxgate:{wx1}:epoch");
        assert_eq!(k.queue("wx1"), "wxgate:{wx1}:q");
        assert_eq!(k.queue_message("wx1", "m1"), "wxgate:{wx1}:qmsg:m1");
        assert_eq!(
            k.queue_idempotency("wx1", "svc", "k"),
            "wxgate:{wx1}:qidem:svc:k"
        );
        assert_eq!(k.dead_letters("wx1"), "wxgate:{wx1}:dlq");
        assert_eq!(k.idempotency_pattern("wx1"), "wxgate:{wx1}:idem:*");
        assert_eq!(
            k.recipient_window_pattern("wx1", 1000),
            "wxgate:{wx1}:win:user:*:1000"
        );
        assert!(Keys::new("a{b}").is_err());
        assert!(Keys::new("").is_err());
    }
}
