//! Handlers: thin wrappers over [`intake`] (one shared parse-validate-resolve step) and the
//! engine. Every send runs the same checks in the same order — authenticate (401), resolve the
//! app within the key's scope (404), check the API fits the app's kind (400), read the body
//! (415/413), decode it strictly (400), validate it (422), resolve it against the template
//! registry (422) — before any idempotency claim, permit or upstream call, so bad input never
//! reaches WeChat and changes nothing.

use std::time::{Duration, Instant};
use wxgate_protocol::error_code::ErrorCode;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use wxgate_config::{App, AppKind, Scope};
use wxgate_engine::{Delivery, Outgoing, SendRequest, Token};
use wxgate_protocol::wire::{BizsendMessage, SubscribeMessage, TemplateMessage};

use crate::auth;
use crate::body;
use crate::error::ApiError;
use crate::request_id::RequestId;
use crate::startup::AppState;
use crate::validate;

#[derive(Serialize)]
struct SentBody<'a> {
    status: &'static str,
    /// A decimal string: WeChat's msgids exceed 2^53, which JSON numbers lose in JavaScript.
    #[serde(skip_serializing_if = "Option::is_none")]
    msgid: Option<String>,
    attempts: u32,
    request_id: &'a str,
}

fn respond(req: &HttpRequest, result: Result<HttpResponse, ApiError>) -> HttpResponse {
    result.unwrap_or_else(|e| e.to_response(&RequestId::of(req)))
}

/// The app, and the name of the caller's API key.
fn resolve_caller<'a>(
    req: &HttpRequest,
    state: &'a AppState,
    app: &str,
    scope: Scope,
) -> Result<(&'a App, &'a str), ApiError> {
    let settings = state.engine.settings();
    let caller = auth::authenticate(req, &settings.api_keys)?;
    caller.require_scope(scope)?;
    let found = settings
        .apps
        .get(app)
        .ok_or_else(|| auth::app_not_found(app))?;
    caller.require_app(app)?;
    Ok((found, caller.key.name.as_str()))
}

fn wrong_kind(app: &App, what: &str, needs: AppKind) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::UnsupportedForApp,
        format!(
            "app `{}` is a {}; {what} need a {}",
            app.name,
            app.kind.as_str(),
            needs.as_str()
        ),
    )
    .field("app")
}

/// `Idempotency-Key`: 1 to 128 printable ASCII characters.
fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(v) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(k.to_string()))
        }
        _ => Err(ApiError::invalid_request(
            Some("Idempotency-Key".into()),
            "`Idempotency-Key` must be 1 to 128 printable ASCII characters without spaces",
        )),
    }
}

/// `Prefer: wait=N` (RFC 7240): wait up to N seconds for a permit, capped by configuration.
fn prefer_wait(req: &HttpRequest, cap: Duration) -> Option<Duration> {
    let prefer = req.headers().get("prefer")?.to_str().ok()?;
    prefer
        .split([',', ';'])
        .filter_map(|p| p.trim().strip_prefix("wait="))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .map(|n| Duration::from_secs(n).min(cap))
        .next()
}

/// Which send endpoint was called.
#[derive(Clone, Copy)]
enum Endpoint {
    Template,
    Subscribe,
}

/// A send request that passed every check: ready for the engine.
struct Intake<'a> {
    app: &'a App,
    caller: &'a str,
    idempotency_key: Option<String>,
    message: Outgoing,
}

/// The one parse-validate-resolve step every send goes through (see the module docs).
async fn intake<'a>(
    req: &HttpRequest,
    state: &'a AppState,
    app: &str,
    payload: web::Payload,
    endpoint: Endpoint,
) -> Result<Intake<'a>, ApiError> {
    let (app, caller) = resolve_caller(req, state, app, Scope::Send)?;
    if matches!(endpoint, Endpoint::Template) && app.kind != AppKind::OfficialAccount {
        return Err(wrong_kind(
            app,
            "template messages",
            AppKind::OfficialAccount,
        ));
    }
    let idempotency_key = idempotency_key(req)?;
    let server = &state.engine.settings().server;
    let bytes =
        body::read_json_body(req, payload, server.max_body_bytes, server.request_timeout).await?;
    let mut message = match (endpoint, app.kind) {
        (Endpoint::Template, _) => {
            let m: TemplateMessage = body::decode(&bytes)?;
            validate::template(&m)?;
            Outgoing::Template(m)
        }
        (Endpoint::Subscribe, AppKind::MiniProgram) => {
            let m: SubscribeMessage = body::decode(&bytes)?;
            validate::subscribe(&m)?;
            Outgoing::Subscribe(m)
        }
        (Endpoint::Subscribe, AppKind::OfficialAccount) => {
            let m: BizsendMessage = body::decode(&bytes)?;
            validate::bizsend(&m)?;
            Outgoing::Bizsend(m)
        }
    };
    state.engine.resolve(app, &mut message).await?;
    Ok(Intake {
        app,
        caller,
        idempotency_key,
        message,
    })
}

async fn send(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
    endpoint: Endpoint,
) -> HttpResponse {
    let started = Instant::now();
    let result = async {
        let i = match intake(&req, &state, &path, payload, endpoint).await {
            Ok(i) => i,
            Err(e) => {
                refused(&state, &path, endpoint, &e);
                return Err(e);
            }
        };
        let rid = RequestId::of(&req);
        let delivery = state
            .engine
            .send(SendRequest {
                app: i.app,
                caller: i.caller,
                idempotency_key: i.idempotency_key.as_deref(),
                message: i.message,
                wait_for_permit: prefer_wait(&req, state.engine.settings().sending.max_wait),
                request_id: &rid,
                started,
            })
            .await;
        answer(&rid, delivery)
    }
    .await;
    respond(&req, result)
}

/// Counts a send refused before the engine (bad input, authentication, the registry) in
/// `wxgate_sends_total` with its error code, like every other answer. The app label is the
/// configured app's name, or `-` for a name that is not configured (bounded cardinality).
fn refused(state: &AppState, app: &str, endpoint: Endpoint, e: &ApiError) {
    let settings = state.engine.settings();
    let app = if settings.apps.contains_key(app) {
        app
    } else {
        "-"
    };
    let api = match endpoint {
        Endpoint::Template => wxgate_protocol::api::Api::TemplateSend,
        Endpoint::Subscribe => wxgate_protocol::api::Api::SubscribeSend,
    };
    state
        .engine
        .metrics()
        .sends
        .get_or_create(&wxgate_engine::metrics::SendLabels {
            app: app.to_string(),
            api: api.as_str().to_string(),
            outcome: e.code.as_str().to_string(),
        })
        .inc();
}

/// The HTTP answer to a delivery; a replayed one carries `Idempotent-Replayed` and the
/// original request's id.
fn answer(rid: &str, d: Delivery) -> Result<HttpResponse, ApiError> {
    let shown_rid = d.replayed_from.as_deref().unwrap_or(rid);
    let mut resp = match d.result {
        Ok(sent) => HttpResponse::Ok().json(SentBody {
            status: "sent",
            msgid: sent.msgid.map(|m| m.to_string()),
            attempts: sent.attempts,
            request_id: shown_rid,
        }),
        Err(e) if d.replayed_from.is_none() => return Err(e.into()),
        Err(e) => ApiError::from_send(&e).to_response(shown_rid),
    };
    if d.replayed_from.is_some() {
        resp.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static("idempotent-replayed"),
            actix_web::http::header::HeaderValue::from_static("true"),
        );
    }
    Ok(resp)
}

pub async fn send_template(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    send(req, path, payload, state, Endpoint::Template).await
}

pub async fn send_subscribe(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    send(req, path, payload, state, Endpoint::Subscribe).await
}

/// `GET /metrics`: Prometheus metrics (OpenMetrics text).
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.engine.metrics().encode())
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// Ready when the engine is (store, required tokens, template registry) and the node is not
/// draining (then at once 503, without asking the engine).
pub async fn readyz(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let readiness = if state.drain.is_draining() {
        Err("draining: this node is shutting down; send to another replica".to_string())
    } else {
        state.engine.readiness().await
    };
    match readiness {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({
            "status": "ready",
            "store": state.engine.backend(),
            "node": state.engine.node_id(),
        })),
        Err(why) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NotReady, why)
            .retryable(true)
            .to_response(&RequestId::of(&req)),
    }
}

#[derive(Serialize)]
struct TokenBody<'a> {
    access_token: &'a str,
    /// Seconds left, like WeChat's own answer.
    expires_in: u64,
    expires_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    invalidated: Option<bool>,
    request_id: &'a str,
}

fn token_response(
    req: &HttpRequest,
    state: &AppState,
    token: &Token,
    invalidated: Option<bool>,
) -> HttpResponse {
    let now = state.engine.clock().now_ms();
    let rid = RequestId::of(req);
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(TokenBody {
            access_token: &token.value,
            expires_in: token.expires_at_ms.saturating_sub(now).min(u64::MAX / 2) / 1000,
            expires_at_ms: token.expires_at_ms,
            invalidated,
            request_id: &rid,
        })
}

/// `GET /v1/apps/{app}/access_token`: the cluster's token, for internal services that call
/// other WeChat APIs. Needs the `token` scope.
pub async fn access_token(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let result = async {
        let (app, _) = resolve_caller(&req, &state, &path, Scope::Token)?;
        let token = state.engine.token(app).await?;
        Ok(token_response(&req, &state, &token, None))
    }
    .await;
    respond(&req, result)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidateBody {
    access_token: String,
}

/// `POST /v1/apps/{app}/access_token/invalidate` with `{"access_token": "<the rejected one>"}`:
/// the same single-flight recovery a send gets. Answers with the token to use now.
pub async fn invalidate_token(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let result = async {
        let (app, _) = resolve_caller(&req, &state, &path, Scope::Token)?;
        let server = &state.engine.settings().server;
        let bytes =
            body::read_json_body(&req, payload, server.max_body_bytes, server.request_timeout)
                .await?;
        let b: InvalidateBody = body::decode(&bytes)?;
        if b.access_token.is_empty() || b.access_token.len() > 2048 {
            return Err(ApiError::invalid_field(
                "access_token",
                "`access_token` must be the rejected token (1 to 2048 characters)",
            ));
        }
        let invalidated = state.engine.invalidate_token(app, &b.access_token).await?;
        let token = state.engine.token(app).await?;
        Ok(token_response(&req, &state, &token, Some(invalidated)))
    }
    .await;
    respond(&req, result)
}

pub async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        format!("no route for {}", req.path()),
    )
    .to_response(&RequestId::of(&req))
}

pub async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        format!("{} is not allowed on {}", req.method(), req.path()),
    )
    .to_response(&RequestId::of(&req))
}
