//! The HTTP client that calls WeChat.
//!
//! One [`WechatClient`] per process wraps a reqwest client (rustls) with a connect timeout, a
//! request timeout, a bounded idle pool and a User-Agent. Every call returns a typed outcome:
//! - `Ok(Answered::Ok(..))` / `Ok(Answered::Err(..))`: WeChat answered; an errcode is data, to be
//!   classified by `wxgate_protocol::errcode`.
//! - `Err(UpstreamError::NotSent)`: the request provably never reached WeChat (connect failed),
//!   so it is safe to retry.
//! - `Err(UpstreamError::OutcomeUnknown)`: the request may have reached WeChat (timeout after
//!   sending, connection dropped mid-response, unreadable body). This is never mapped to `-1`:
//!   WxJava did that and sent duplicate messages (WxJava#2098).
//!
//! Secrets and tokens travel only in request bodies and query strings; they never appear in
//! this crate's errors (reqwest errors are stripped of their URL).

pub mod trace;

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use trace::TraceContext;
use tracing::Instrument;
use wxgate_protocol::wire::{
    self, paths, BizsendMessage, ErrorResponse, NewTemplateList, PrivateTemplateList, SendResponse,
    StableTokenRequest, SubscribeMessage, TemplateMessage, TokenResponse,
};

/// Settings of the upstream client.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Base URL of the WeChat API, without a trailing slash (default `https://api.weixin.qq.com`).
    pub base_url: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub pool_idle_timeout: Duration,
    pub user_agent: String,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.weixin.qq.com".into(),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            pool_max_idle_per_host: 64,
            pool_idle_timeout: Duration::from_secs(60),
            user_agent: concat!("wxgate/", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}

/// Why a call has no WeChat answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The request never reached WeChat: retrying cannot duplicate anything.
    #[error("WeChat unreachable, request not sent: {0}")]
    NotSent(String),
    /// The request may or may not have been processed by WeChat.
    #[error("WeChat outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The client could not be built (bad configuration).
    #[error("upstream client setup failed: {0}")]
    Setup(String),
}

/// WeChat's answer: the success body, or an `{errcode, errmsg}` envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answered<T> {
    Ok(T),
    Err(ErrorResponse),
}

/// The client. Cheap to clone (reqwest's client is an `Arc` inside).
#[derive(Debug, Clone)]
pub struct WechatClient {
    http: reqwest::Client,
    base_url: String,
    /// `base_url` parsed once: each call only sets the path (no host parsing per send).
    base: reqwest::Url,
}

impl WechatClient {
    pub fn new(config: &UpstreamConfig) -> Result<Self, UpstreamError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .pool_idle_timeout(config.pool_idle_timeout)
            .user_agent(config.user_agent.clone())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| UpstreamError::Setup(e.without_url().to_string()))?;
        let base_url = config.base_url.trim_end_matches('/').to_string();
        let base = reqwest::Url::parse(&base_url)
            .map_err(|e| UpstreamError::Setup(format!("upstream.base_url: {e}")))?;
        Ok(Self {
            http,
            base_url,
            base,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET /cgi-bin/token`: a classic token (each call invalidates the previous one).
    pub async fn classic_token(
        &self,
        appid: &str,
        secret: &str,
    ) -> Result<Answered<TokenResponse>, UpstreamError> {
        let req = self.http.get(self.url(paths::TOKEN)).query(&[
            ("grant_type", wire::GRANT_TYPE),
            ("appid", appid),
            ("secret", secret),
        ]);
        self.call(req).await
    }

    /// `POST /cgi-bin/stable_token` in normal mode unless `force_refresh`.
    pub async fn stable_token(
        &self,
        appid: &str,
        secret: &str,
        force_refresh: bool,
    ) -> Result<Answered<TokenResponse>, UpstreamError> {
        let body = StableTokenRequest {
            grant_type: wire::GRANT_TYPE.into(),
            appid: appid.into(),
            secret: secret.into(),
            force_refresh,
        };
        self.call(self.http.post(self.url(paths::STABLE_TOKEN)).json(&body))
            .await
    }

    /// `POST /cgi-bin/message/template/send`.
    pub async fn send_template(
        &self,
        access_token: &str,
        msg: &TemplateMessage,
    ) -> Result<SendResponse, UpstreamError> {
        self.post_with_token(paths::TEMPLATE_SEND, access_token, msg)
            .await
    }

    /// `POST /cgi-bin/message/subscribe/send` (Mini Program).
    pub async fn send_subscribe(
        &self,
        access_token: &str,
        msg: &SubscribeMessage,
    ) -> Result<SendResponse, UpstreamError> {
        self.post_with_token(paths::SUBSCRIBE_SEND, access_token, msg)
            .await
    }

    /// `POST /cgi-bin/message/subscribe/bizsend` (Official Account).
    pub async fn send_bizsend(
        &self,
        access_token: &str,
        msg: &BizsendMessage,
    ) -> Result<SendResponse, UpstreamError> {
        self.post_with_token(paths::SUBSCRIBE_BIZSEND, access_token, msg)
            .await
    }

    /// `GET /cgi-bin/template/get_all_private_template`.
    pub async fn private_templates(
        &self,
        access_token: &str,
    ) -> Result<Answered<PrivateTemplateList>, UpstreamError> {
        let req = self
            .http
            .get(self.url_with_token(paths::GET_ALL_PRIVATE_TEMPLATE, access_token));
        self.call(req).await
    }

    /// `GET /wxaapi/newtmpl/gettemplate`.
    pub async fn new_templates(
        &self,
        access_token: &str,
    ) -> Result<Answered<NewTemplateList>, UpstreamError> {
        let req = self
            .http
            .get(self.url_with_token(paths::GET_NEW_TEMPLATES, access_token));
        self.call(req).await
    }

    fn url(&self, path: &str) -> reqwest::Url {
        let mut url = self.base.clone();
        // A base URL with a path prefix (a proxy's) keeps it.
        let prefix = self.base.path().trim_end_matches('/');
        if prefix.is_empty() {
            url.set_path(path);
        } else {
            url.set_path(&format!("{prefix}{path}"));
        }
        url
    }

    /// The URL of `path` with the token as its query (set directly: no form encoder, no
    /// re-parse of the whole URL).
    fn url_with_token(&self, path: &str, access_token: &str) -> reqwest::Url {
        let mut url = self.url(path);
        let mut query = String::with_capacity(13 + access_token.len());
        query.push_str("access_token=");
        // WeChat's tokens are [A-Za-z0-9_-]; anything else is percent-encoded, so a token
        // is always exactly one query value.
        for b in access_token.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                query.push(b as char);
            } else {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                query.push('%');
                query.push(HEX[usize::from(b >> 4)] as char);
                query.push(HEX[usize::from(b & 0x0f)] as char);
            }
        }
        url.set_query(Some(&query));
        url
    }

    async fn post_with_token<B: Serialize>(
        &self,
        path: &str,
        access_token: &str,
        body: &B,
    ) -> Result<SendResponse, UpstreamError> {
        let req = self
            .http
            .post(self.url_with_token(path, access_token))
            .json(body);
        let bytes = self.fetch(req).await?;
        serde_json::from_slice::<SendResponse>(&bytes)
            .map_err(|e| UpstreamError::OutcomeUnknown(format!("unreadable WeChat answer: {e}")))
    }

    /// Sends and decodes a reply that is either `T` or an errcode envelope. A body with a
    /// non-zero `errcode` is an error answer; anything else must parse as `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<Answered<T>, UpstreamError> {
        let bytes = self.fetch(req).await?;
        if let Ok(env) = serde_json::from_slice::<ErrorResponse>(&bytes) {
            if env.errcode != 0 {
                return Ok(Answered::Err(env));
            }
        }
        serde_json::from_slice::<T>(&bytes)
            .map(Answered::Ok)
            .map_err(|e| UpstreamError::OutcomeUnknown(format!("unreadable WeChat answer: {e}")))
    }

    /// One attempt: a child span of the request's trace (a new trace outside a request),
    /// forwarded as `traceparent`, and a log span carrying its ids.
    async fn fetch(&self, req: reqwest::RequestBuilder) -> Result<Vec<u8>, UpstreamError> {
        let attempt = trace::current()
            .map(|c| c.child())
            .unwrap_or_else(TraceContext::new_root);
        let req = req
            .header("traceparent", attempt.header())
            .build()
            .map_err(classify_transport)?;
        let span = tracing::info_span!(
            "upstream_attempt",
            wechat_path = req.url().path(),
            trace_id = %attempt.trace_id_hex(),
            span_id = %attempt.span_id_hex(),
        );
        self.fetch_built(req).instrument(span).await
    }

    async fn fetch_built(&self, req: reqwest::Request) -> Result<Vec<u8>, UpstreamError> {
        let resp = self.http.execute(req).await.map_err(classify_transport)?;
        let status = resp.status();
        tracing::debug!(http_status = status.as_u16(), "WeChat answered");
        let bytes = resp.bytes().await.map_err(|e| {
            UpstreamError::OutcomeUnknown(format!("reading the answer failed: {}", e.without_url()))
        })?;
        if !status.is_success() {
            return Err(UpstreamError::OutcomeUnknown(format!(
                "WeChat answered HTTP {status}"
            )));
        }
        Ok(bytes.to_vec())
    }
}

/// A connect failure means nothing was sent; everything else after sending began is unknown.
fn classify_transport(e: reqwest::Error) -> UpstreamError {
    let e = e.without_url();
    if e.is_connect() {
        UpstreamError::NotSent(e.to_string())
    } else if e.is_builder() {
        UpstreamError::Setup(e.to_string())
    } else {
        UpstreamError::OutcomeUnknown(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> WechatClient {
        WechatClient::new(&UpstreamConfig {
            base_url: base.into(),
            ..UpstreamConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn urls_keep_the_base_and_its_path_prefix() {
        assert_eq!(
            client("https://api.weixin.qq.com")
                .url(paths::TEMPLATE_SEND)
                .as_str(),
            "https://api.weixin.qq.com/cgi-bin/message/template/send"
        );
        assert_eq!(
            client("http://127.0.0.1:8081/").url(paths::TOKEN).as_str(),
            "http://127.0.0.1:8081/cgi-bin/token"
        );
        assert_eq!(
            client("http://proxy.internal/wechat/")
                .url(paths::TOKEN)
                .as_str(),
            "http://proxy.internal/wechat/cgi-bin/token"
        );
        assert_eq!(
            client("http://proxy.internal/wechat/")
                .url_with_token(paths::TEMPLATE_SEND, "TOKEN_a-b.c")
                .as_str(),
            "http://proxy.internal/wechat/cgi-bin/message/template/send?access_token=TOKEN_a-b.c"
        );
        // Whatever a token holds, it stays inside the query's one value.
        let odd = client("http://127.0.0.1:8081").url_with_token(paths::TEMPLATE_SEND, "a b#c&d");
        assert_eq!(odd.fragment(), None);
        assert_eq!(odd.query(), Some("access_token=a%20b%23c%26d"));
        let pairs: Vec<_> = odd.query_pairs().collect();
        assert_eq!(pairs.len(), 1);
        assert_eq!(pairs[0].1, "a b#c&d");
    }

    #[test]
    fn a_base_url_that_is_not_a_url_is_a_setup_error() {
        let e = WechatClient::new(&UpstreamConfig {
            base_url: "not a url".into(),
            ..UpstreamConfig::default()
        })
        .unwrap_err();
        assert!(matches!(e, UpstreamError::Setup(_)), "{e}");
    }
}
