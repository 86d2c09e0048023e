//! The HTTP client that calls WeChat.
//!
//! One [`WechatClient`] per process wraps a hyper client (HTTP/1.1, rustls with the Mozilla
//! roots, an `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` CONNECT tunnel when the environment names
//! one for WeChat's host, honouring `NO_PROXY`) with a connect timeout, a request timeout, a
//! bounded idle pool and a User-Agent. It is hyper directly, not reqwest, because reqwest's
//! redirect layer and response type each re-parse the URL of every request (~3% of the
//! gateway's CPU per send; BENCHMARKS.md). Every call returns a typed outcome:
//! - `Ok(Answered::Ok(..))` / `Ok(Answered::Err(..))`: WeChat answered; an errcode is data, to be
//!   classified by `wxgate_protocol::errcode`.
//! - `Err(UpstreamError::NotSent)`: the request provably never reached WeChat (connect failed),
//!   so it is safe to retry.
//! - `Err(UpstreamError::OutcomeUnknown)`: the request may have reached WeChat (timeout after
//!   sending, connection dropped mid-response, unreadable body). This is never mapped to `-1`:
//!   WxJava did that and sent duplicate messages (WxJava#2098).
//!
//! Secrets and tokens travel only in request bodies and query strings; they never appear in
//! this crate's errors (the request URL never enters an error message).

mod connector;
pub mod trace;

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, USER_AGENT};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

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

/// The client. Cheap to clone (hyper's client is an `Arc` inside).
#[derive(Clone)]
pub struct WechatClient {
    http:
        Client<connector::Bounded<hyper_rustls::HttpsConnector<connector::Connector>>, Full<Bytes>>,
    base_url: String,
    /// `base_url` parsed once: each call only sets the path (no host parsing per send).
    base: url::Url,
    request_timeout: Duration,
    user_agent: HeaderValue,
    /// The URI of each send path with the current token, built once per token instead of once
    /// per send (building and parsing it was ~0.8 µs per send, measured with `perf`): a few
    /// entries (one per path), each replaced when the token changes.
    token_uris: std::sync::Arc<std::sync::Mutex<Vec<TokenUri>>>,
}

/// A cached `path?access_token=token` URI.
struct TokenUri {
    path: &'static str,
    token: String,
    uri: Uri,
}

impl std::fmt::Debug for WechatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WechatClient")
            .field("base_url", &self.base_url)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// A request ready to go: method, URL (with its query) and an optional JSON body.
struct Outbound {
    method: Method,
    uri: Uri,
    json: Option<Vec<u8>>,
}

/// A URL as the request's URI.
fn to_uri(url: url::Url) -> Result<Uri, UpstreamError> {
    String::from(url)
        .parse()
        .map_err(|_| UpstreamError::Setup("the request URL is not a valid URI".into()))
}

impl WechatClient {
    /// The client, with the proxy the environment names for WeChat's host (see the module
    /// `connector`).
    pub fn new(config: &UpstreamConfig) -> Result<Self, UpstreamError> {
        Self::with_proxy_matcher(
            config,
            &hyper_util::client::proxy::matcher::Matcher::from_env(),
        )
    }

    fn with_proxy_matcher(
        config: &UpstreamConfig,
        proxies: &hyper_util::client::proxy::matcher::Matcher,
    ) -> Result<Self, UpstreamError> {
        let base_url = config.base_url.trim_end_matches('/').to_string();
        let base = url::Url::parse(&base_url)
            .map_err(|e| UpstreamError::Setup(format!("upstream.base_url: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(UpstreamError::Setup(
                "upstream.base_url: must be an http:// or https:// URL with a host".into(),
            ));
        }
        let user_agent = HeaderValue::from_str(&config.user_agent)
            .map_err(|_| UpstreamError::Setup("upstream.user_agent: not a header value".into()))?;
        let base_uri: Uri = base_url
            .parse()
            .map_err(|e| UpstreamError::Setup(format!("upstream.base_url: {e}")))?;
        let connector =
            connector::Connector::with_matcher(config.connect_timeout, &base_uri, proxies)?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| UpstreamError::Setup(format!("TLS: {e}")))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let http = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .build(connector::Bounded {
                inner: https,
                timeout: config.connect_timeout,
            });
        Ok(Self {
            http,
            base_url,
            base,
            request_timeout: config.request_timeout,
            user_agent,
            token_uris: Default::default(),
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
        let mut url = self.url(paths::TOKEN);
        url.query_pairs_mut()
            .append_pair("grant_type", wire::GRANT_TYPE)
            .append_pair("appid", appid)
            .append_pair("secret", secret);
        self.call(Outbound {
            method: Method::GET,
            uri: to_uri(url)?,
            json: None,
        })
        .await
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
        self.call(Outbound {
            method: Method::POST,
            uri: to_uri(self.url(paths::STABLE_TOKEN))?,
            json: Some(to_json(&body)?),
        })
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
        self.call(Outbound {
            method: Method::GET,
            uri: to_uri(self.url_with_token(paths::GET_ALL_PRIVATE_TEMPLATE, access_token))?,
            json: None,
        })
        .await
    }

    /// `GET /wxaapi/newtmpl/gettemplate`.
    pub async fn new_templates(
        &self,
        access_token: &str,
    ) -> Result<Answered<NewTemplateList>, UpstreamError> {
        self.call(Outbound {
            method: Method::GET,
            uri: to_uri(self.url_with_token(paths::GET_NEW_TEMPLATES, access_token))?,
            json: None,
        })
        .await
    }

    fn url(&self, path: &str) -> url::Url {
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
    fn url_with_token(&self, path: &str, access_token: &str) -> url::Url {
        let mut url = self.url(path);
        // WeChat's tokens are [A-Za-z0-9_-]; anything else is percent-encoded, so a token
        // is always exactly one query value.
        const VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'_')
            .remove(b'.')
            .remove(b'~');
        let mut query = String::with_capacity(13 + access_token.len());
        query.push_str("access_token=");
        query.extend(percent_encoding::utf8_percent_encode(access_token, VALUE));
        url.set_query(Some(&query));
        url
    }

    /// [`Self::url_with_token`] as a URI, from the cache while the token is the same.
    fn uri_with_token(&self, path: &'static str, access_token: &str) -> Result<Uri, UpstreamError> {
        let mut cache = self.token_uris.lock().unwrap_or_else(|p| p.into_inner());
        let entry = cache.iter_mut().find(|e| e.path == path);
        if let Some(e) = &entry {
            if e.token == access_token {
                return Ok(e.uri.clone());
            }
        }
        let uri = to_uri(self.url_with_token(path, access_token))?;
        let fresh = TokenUri {
            path,
            token: access_token.to_string(),
            uri: uri.clone(),
        };
        match entry {
            Some(e) => *e = fresh,
            None => cache.push(fresh),
        }
        Ok(uri)
    }

    async fn post_with_token<B: Serialize>(
        &self,
        path: &'static str,
        access_token: &str,
        body: &B,
    ) -> Result<SendResponse, UpstreamError> {
        let req = Outbound {
            method: Method::POST,
            uri: self.uri_with_token(path, access_token)?,
            json: Some(to_json(body)?),
        };
        let bytes = self.fetch(req).await?;
        serde_json::from_slice::<SendResponse>(&bytes)
            .map_err(|e| UpstreamError::OutcomeUnknown(format!("unreadable WeChat answer: {e}")))
    }

    /// Sends and decodes a reply that is either `T` or an errcode envelope. A body with a
    /// non-zero `errcode` is an error answer; anything else must parse as `T`.
    async fn call<T: DeserializeOwned>(&self, req: Outbound) -> Result<Answered<T>, UpstreamError> {
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
    async fn fetch(&self, req: Outbound) -> Result<Bytes, UpstreamError> {
        let attempt = trace::current()
            .map(|c| c.child())
            .unwrap_or_else(TraceContext::new_root);
        let span = tracing::info_span!(
            "upstream_attempt",
            wechat_path = req.uri.path(),
            trace_id = %attempt.trace_id_hex(),
            span_id = %attempt.span_id_hex(),
        );
        let mut builder = Request::builder()
            .method(req.method)
            .uri(req.uri)
            .header(USER_AGENT, self.user_agent.clone())
            .header("traceparent", attempt.header());
        let body = match req.json {
            Some(json) => {
                builder =
                    builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Full::new(Bytes::from(json))
            }
            None => Full::new(Bytes::new()),
        };
        let request = builder
            .body(body)
            .map_err(|e| UpstreamError::Setup(e.to_string()))?;
        // The whole exchange (connect, send, answer and its body) within the request timeout.
        match tokio::time::timeout(self.request_timeout, self.exchange(request))
            .instrument(span)
            .await
        {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::OutcomeUnknown(format!(
                "no answer within the request timeout ({} ms)",
                self.request_timeout.as_millis()
            ))),
        }
    }

    async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<Bytes, UpstreamError> {
        let resp = self
            .http
            .request(request)
            .await
            .map_err(classify_transport)?;
        let status = resp.status();
        tracing::debug!(http_status = status.as_u16(), "WeChat answered");
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| UpstreamError::OutcomeUnknown(format!("reading the answer failed: {e}")))?
            .to_bytes();
        if !status.is_success() {
            return Err(UpstreamError::OutcomeUnknown(format!(
                "WeChat answered HTTP {status}"
            )));
        }
        Ok(bytes)
    }
}

fn to_json<B: Serialize>(body: &B) -> Result<Vec<u8>, UpstreamError> {
    serde_json::to_vec(body).map_err(|e| UpstreamError::Setup(format!("request body: {e}")))
}

/// A connect failure means nothing was sent; everything else after sending began is unknown.
fn classify_transport(e: hyper_util::client::legacy::Error) -> UpstreamError {
    // The legacy client's errors name the cause, never the request URL.
    let detail = error_chain(&e);
    if e.is_connect() {
        UpstreamError::NotSent(detail)
    } else {
        UpstreamError::OutcomeUnknown(detail)
    }
}

/// An error and its sources, one line ("a: b: c").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
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
    fn cached_send_uris_follow_the_token() {
        let c = client("http://proxy.internal/wechat");
        let uri = |path, token| c.uri_with_token(path, token).unwrap().to_string();
        let a = "http://proxy.internal/wechat/cgi-bin/message/template/send?access_token=A";
        assert_eq!(uri(paths::TEMPLATE_SEND, "A"), a);
        assert_eq!(uri(paths::TEMPLATE_SEND, "A"), a);
        assert_eq!(
            uri(paths::SUBSCRIBE_SEND, "A"),
            "http://proxy.internal/wechat/cgi-bin/message/subscribe/send?access_token=A"
        );
        // A new token replaces the cached URI; an old one is never served again for it.
        assert_eq!(
            uri(paths::TEMPLATE_SEND, "B"),
            "http://proxy.internal/wechat/cgi-bin/message/template/send?access_token=B"
        );
        assert_eq!(uri(paths::TEMPLATE_SEND, "A"), a);
        assert_eq!(c.token_uris.lock().unwrap().len(), 2);
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

    /// A minimal WeChat: answers every request with a sent message and remembers the request
    /// heads it read.
    async fn tiny_wechat() -> (String, tokio::task::JoinHandle<Vec<String>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let mut got = Vec::new();
            let n = s.read(&mut buf).await.unwrap();
            got.push(String::from_utf8_lossy(&buf[..n]).to_string());
            let body = r#"{"errcode":0,"errmsg":"ok","msgid":42}"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(answer.as_bytes()).await.unwrap();
            got
        });
        (format!("127.0.0.1:{}", addr.port()), task)
    }

    /// Sends go through the CONNECT tunnel of the proxy the settings name, with its
    /// credentials; the proxy only relays bytes.
    #[tokio::test]
    async fn sends_go_through_a_connect_proxy() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (wechat, wechat_task) = tiny_wechat().await;
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_port = proxy.local_addr().unwrap().port();
        let proxy_task = tokio::spawn(async move {
            let (mut client, _) = proxy.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = client.read(&mut buf).await.unwrap();
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let target = head.split_whitespace().nth(1).unwrap().to_string();
            let mut upstream = tokio::net::TcpStream::connect(&target).await.unwrap();
            client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .unwrap();
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            head
        });
        let proxies = hyper_util::client::proxy::matcher::Matcher::builder()
            .http(format!("http://ops:s3cret@127.0.0.1:{proxy_port}"))
            .build();
        let c = WechatClient::with_proxy_matcher(
            &UpstreamConfig {
                base_url: format!("http://{wechat}"),
                ..UpstreamConfig::default()
            },
            &proxies,
        )
        .unwrap();
        let msg: TemplateMessage = serde_json::from_value(serde_json::json!({
            "touser": "o1", "template_id": "t1", "data": {}
        }))
        .unwrap();
        let sent = c.send_template("TOKEN", &msg).await.unwrap();
        assert_eq!(sent.errcode, 0);
        assert_eq!(sent.msgid, Some(42));
        drop(c);
        let head = proxy_task.await.unwrap();
        assert!(
            head.starts_with(&format!("CONNECT {wechat} HTTP/1.1")),
            "{head}"
        );
        // "ops:s3cret" in base64.
        assert!(head.contains("b3BzOnMzY3JldA=="), "{head}");
        let seen = wechat_task.await.unwrap();
        assert!(
            seen[0].starts_with("POST /cgi-bin/message/template/send?access_token=TOKEN HTTP/1.1")
        );
    }

    /// An https:// base URL goes through TLS: a server that is not WeChat (here: one that
    /// closes the connection instead of a handshake) fails before anything is sent.
    #[tokio::test]
    async fn a_failed_tls_handshake_is_not_sent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                drop(s);
            }
        });
        let c = client(&format!("https://127.0.0.1:{port}"));
        let msg: TemplateMessage = serde_json::from_value(serde_json::json!({
            "touser": "o1", "template_id": "t1", "data": {}
        }))
        .unwrap();
        match c.send_template("TOKEN", &msg).await {
            Err(UpstreamError::NotSent(detail)) => assert!(!detail.contains("TOKEN"), "{detail}"),
            other => panic!("expected NotSent, got {other:?}"),
        }
    }

    /// A TLS handshake that never completes is bounded by the connect timeout and counts as
    /// not sent (safe to retry), not as an unknown outcome after the request timeout.
    #[tokio::test]
    async fn a_stalled_tls_handshake_is_a_connect_failure() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                open.push(s); // accepted, never answered
            }
        });
        let c = WechatClient::new(&UpstreamConfig {
            base_url: format!("https://127.0.0.1:{port}"),
            connect_timeout: Duration::from_millis(200),
            request_timeout: Duration::from_secs(10),
            ..UpstreamConfig::default()
        })
        .unwrap();
        let msg: TemplateMessage = serde_json::from_value(serde_json::json!({
            "touser": "o1", "template_id": "t1", "data": {}
        }))
        .unwrap();
        let started = std::time::Instant::now();
        let r = c.send_template("TOKEN", &msg).await;
        assert!(matches!(r, Err(UpstreamError::NotSent(_))), "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        held.abort();
    }
}
