//! Every request gets an id: the caller's `X-Request-Id` when it is sane (1-128 characters of
//! `A-Za-z0-9-_.:`), a fresh UUID v4 otherwise. The id is in the request's extensions for the
//! handlers, on every log line of the request (a span), and in the `X-Request-Id` response
//! header; error bodies repeat it.
//!
//! The same middleware joins the caller's W3C trace: a valid `traceparent` makes this request
//! a child span of it (an invalid or missing one starts a new trace — never an error). The
//! request span carries `trace_id` and `span_id`, so every log line of the request has them;
//! the context is current for the request's future (`wxgate_upstream::trace::scope`), so each
//! WeChat call forwards the trace; the response carries the request's `traceparent`.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, HttpRequest};
use tracing::Instrument;
use wxgate_upstream::trace::{self, TraceContext};

pub const HEADER: &str = "x-request-id";
pub const TRACEPARENT: &str = "traceparent";

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
    let parent = req
        .headers()
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse);
    let ctx = parent
        .map(|p| p.child())
        .unwrap_or_else(TraceContext::new_root);
    // `app` and `api` are filled in by the send handlers once the app is resolved.
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        trace_id = %ctx.trace_id_hex(),
        span_id = %ctx.span_id_hex(),
        method = %req.method(),
        path = %req.path(),
        app = tracing::field::Empty,
        api = tracing::field::Empty,
        parent_span_id = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    if let Some(p) = parent {
        span.record("parent_span_id", p.span_id_hex());
    }
    let started = Instant::now();
    let mut resp = trace::scope(ctx, next.call(req).instrument(span.clone())).await?;
    let status = resp.status().as_u16();
    span.record("status", status);
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
    if let Ok(v) = HeaderValue::from_str(&ctx.header()) {
        resp.headers_mut()
            .insert(HeaderName::from_static(TRACEPARENT), v);
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
