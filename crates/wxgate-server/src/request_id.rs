//! Every request gets an id: the caller's `X-Request-Id` when it is sane (1-128 characters of
//! `A-Za-z0-9-_.:`), a fresh UUID v4 otherwise. The id is in the request's extensions for the
//! handlers, on every log line of the request (a span), and in the `X-Request-Id` response
//! header; error bodies repeat it.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, HttpRequest};
use tracing::Instrument;

pub const HEADER: &str = "x-request-id";

/// The id of the current request.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    /// The id the middleware attached (a fresh one if the middleware did not run).
    pub fn of(req: &HttpRequest) -> String {
        req.extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
    }
}

fn acceptable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.path(),
    );
    let started = Instant::now();
    let mut resp = next.call(req).instrument(span.clone()).await?;
    let status = resp.status().as_u16();
    // A send logs its own info line (app, msgid or errcode); the access line is info only for
    // refused requests, so a successful send costs one log line, not two.
    let latency_ms = started.elapsed().as_millis() as u64;
    span.in_scope(|| {
        if status >= 400 {
            tracing::info!(status, latency_ms, "request done");
        } else {
            tracing::debug!(status, latency_ms, "request done");
        }
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut()
            .insert(HeaderName::from_static(HEADER), v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    #[test]
    fn acceptable_ids() {
        assert!(super::acceptable("abc-123_x.y:z"));
        assert!(!super::acceptable(""));
        assert!(!super::acceptable("has space"));
        assert!(!super::acceptable(&"a".repeat(129)));
        assert!(!super::acceptable("newline\n"));
    }
}
