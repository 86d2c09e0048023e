//! Handlers. Each one runs the same checks in the same order — authenticate (401), resolve the
//! app within the key's scope (404), check the API fits the app's kind (400), read the body
//! (415/413), decode it strictly (400), validate it (422) — before anything is sent, so bad
//! input never reaches WeChat and changes nothing.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use wxgate_config::{App, AppKind, Scope};

use crate::auth;
use crate::body;
use crate::error::ApiError;
use crate::request_id::RequestId;
use crate::send::{self, Outgoing};
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

fn resolve_app<'a>(
    req: &HttpRequest,
    state: &'a AppState,
    app: &str,
    scope: Scope,
) -> Result<&'a App, ApiError> {
    let caller = auth::authenticate(req, &state.settings.api_keys)?;
    caller.require_scope(scope)?;
    let found = state
        .settings
        .apps
        .get(app)
        .ok_or_else(|| auth::app_not_found(app))?;
    caller.require_app(app)?;
    Ok(found)
}

fn wrong_kind(app: &App, what: &str, needs: AppKind) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "unsupported_for_app",
        format!(
            "app `{}` is a {}; {what} need a {}",
            app.name,
            app.kind.as_str(),
            needs.as_str()
        ),
    )
    .field("app")
}

pub async fn send_template(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let result = async {
        let app = resolve_app(&req, &state, &path, Scope::Send)?;
        if app.kind != AppKind::OfficialAccount {
            return Err(wrong_kind(
                app,
                "template messages",
                AppKind::OfficialAccount,
            ));
        }
        let bytes =
            body::read_json_body(&req, payload, state.settings.server.max_body_bytes).await?;
        let msg = body::decode(&bytes)?;
        validate::template(&msg)?;
        deliver(&req, &state, app, Outgoing::Template(msg)).await
    }
    .await;
    respond(&req, result)
}

pub async fn send_subscribe(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let result = async {
        let app = resolve_app(&req, &state, &path, Scope::Send)?;
        let bytes =
            body::read_json_body(&req, payload, state.settings.server.max_body_bytes).await?;
        let msg = match app.kind {
            AppKind::MiniProgram => {
                let m = body::decode(&bytes)?;
                validate::subscribe(&m)?;
                Outgoing::Subscribe(m)
            }
            AppKind::OfficialAccount => {
                let m = body::decode(&bytes)?;
                validate::bizsend(&m)?;
                Outgoing::Bizsend(m)
            }
        };
        deliver(&req, &state, app, msg).await
    }
    .await;
    respond(&req, result)
}

async fn deliver(
    req: &HttpRequest,
    state: &AppState,
    app: &App,
    msg: Outgoing,
) -> Result<HttpResponse, ApiError> {
    let sent = send::deliver(state, app, &msg).await?;
    let rid = RequestId::of(req);
    Ok(HttpResponse::Ok().json(SentBody {
        status: "sent",
        msgid: sent.msgid.map(|m| m.to_string()),
        attempts: sent.attempts,
        request_id: &rid,
    }))
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// Ready when the shared store answers. (Per-app token readiness arrives with the cluster token
/// work.)
/// Ready when the shared store answers and every app marked `required` (the default) has a
/// usable access_token.
pub async fn readyz(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let not_ready = |msg: String| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", msg)
            .retryable(true)
            .to_response(&RequestId::of(&req))
    };
    if let Err(e) = state.store.ping().await {
        return not_ready(e.to_string());
    }
    let mut missing = Vec::new();
    for app in state.settings.apps.values().filter(|a| a.required) {
        if !state.tokens.has_token(app).await {
            missing.push(app.name.clone());
        }
    }
    if !missing.is_empty() {
        return not_ready(format!(
            "no usable access_token yet for: {}",
            missing.join(", ")
        ));
    }
    HttpResponse::Ok().json(serde_json::json!({
        "status": "ready",
        "store": state.store.backend(),
        "node": state.tokens.node_id(),
    }))
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
    token: &crate::token::Token,
    invalidated: Option<bool>,
) -> HttpResponse {
    let now = state.clock.now_ms();
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
        let app = resolve_app(&req, &state, &path, Scope::Token)?;
        let token = state.tokens.get(app).await.map_err(send::token_error)?;
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
        let app = resolve_app(&req, &state, &path, Scope::Token)?;
        let bytes =
            body::read_json_body(&req, payload, state.settings.server.max_body_bytes).await?;
        let b: InvalidateBody = body::decode(&bytes)?;
        if b.access_token.is_empty() || b.access_token.len() > 2048 {
            return Err(ApiError::invalid_field(
                "access_token",
                "`access_token` must be the rejected token (1 to 2048 characters)",
            ));
        }
        let invalidated = state
            .tokens
            .report_bad(app, &b.access_token)
            .await
            .map_err(send::token_error)?;
        let token = state.tokens.get(app).await.map_err(send::token_error)?;
        Ok(token_response(&req, &state, &token, Some(invalidated)))
    }
    .await;
    respond(&req, result)
}

pub async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {}", req.path()),
    )
    .to_response(&RequestId::of(&req))
}

pub async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.path()),
    )
    .to_response(&RequestId::of(&req))
}
