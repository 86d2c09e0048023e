//! The TCP side of the client: a direct connection with a connect timeout, or — when the
//! environment names a proxy for WeChat's host — an HTTP `CONNECT` tunnel through it.
//!
//! The proxy is decided once, for the configured base URL, from the same variables curl and
//! reqwest read: `HTTPS_PROXY` (for an `https://` base URL) or `HTTP_PROXY` (`http://`), else
//! `ALL_PROXY`, in upper or lower case, unless `NO_PROXY` lists the host. Credentials in the
//! proxy URL are sent as `Proxy-Authorization: Basic`. TLS to WeChat runs inside the tunnel,
//! so the proxy never sees the token or the message.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::UpstreamError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
pub(crate) enum Connector {
    Direct(HttpConnector),
    Tunnel(Tunnel<HttpConnector>),
}

impl Connector {
    pub(crate) fn with_matcher(
        connect_timeout: Duration,
        base: &Uri,
        matcher: &Matcher,
    ) -> Result<Self, UpstreamError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        Ok(match matcher.intercept(base) {
            None => Self::Direct(http),
            Some(proxy) => {
                if proxy.uri().scheme_str() != Some("http") {
                    return Err(UpstreamError::Setup(
                        "the proxy for WeChat's host must be an http:// proxy (HTTPS_PROXY / HTTP_PROXY / ALL_PROXY)"
                            .into(),
                    ));
                }
                let mut tunnel = Tunnel::new(proxy.uri().clone(), http);
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Self::Tunnel(tunnel)
            }
        })
    }

    /// Whether connections go through a proxy.
    #[cfg(test)]
    fn proxied(&self) -> bool {
        matches!(self, Self::Tunnel(_))
    }
}

impl Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Self::Direct(c) => c.poll_ready(cx).map_err(Into::into),
            Self::Tunnel(c) => c.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match self {
            Self::Direct(c) => {
                let fut = c.call(dst);
                Box::pin(async move { fut.await.map_err(Into::into) })
            }
            Self::Tunnel(c) => {
                let fut = c.call(dst);
                Box::pin(async move { fut.await.map_err(Into::into) })
            }
        }
    }
}

/// Bounds a connector (TCP, the proxy tunnel and the TLS handshake together) by the connect
/// timeout: whatever stalls before the request could be written counts as a connect failure —
/// nothing was sent, so a retry is safe — instead of running into the request timeout, whose
/// expiry means "outcome unknown".
#[derive(Clone)]
pub(crate) struct Bounded<C> {
    pub(crate) inner: C,
    pub(crate) timeout: Duration,
}

impl<C> Service<Uri> for Bounded<C>
where
    C: Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let fut = self.inner.call(dst);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(format!(
                    "connecting (TCP, proxy, TLS) took over {} ms",
                    timeout.as_millis()
                )
                .into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(https: &str, no: &str) -> Matcher {
        Matcher::builder().https(https).no(no).build()
    }

    #[test]
    fn the_proxy_is_used_unless_no_proxy_lists_the_host() {
        let base: Uri = "https://api.weixin.qq.com".parse().unwrap();
        let t = Duration::from_secs(1);
        let m = matcher("http://user:pw@proxy.internal:3128", "");
        assert!(Connector::with_matcher(t, &base, &m).unwrap().proxied());
        let m = matcher("http://proxy.internal:3128", "weixin.qq.com");
        assert!(!Connector::with_matcher(t, &base, &m).unwrap().proxied());
        assert!(!Connector::with_matcher(t, &base, &matcher("", ""))
            .unwrap()
            .proxied());
        // An https base URL is not sent to an HTTP_PROXY-only setting.
        let m = Matcher::builder()
            .http("http://proxy.internal:3128")
            .build();
        assert!(!Connector::with_matcher(t, &base, &m).unwrap().proxied());
    }
}
