//! Handlers. Each one runs the same checks in the same order — authenticate (401), resolve the
//! app within the key's scope (404), check the API fits the app's kind (400), read the body
//! (415/413), decode it strictly (400), validate it (422) — before anything is sent, so bad
//! input never reaches WeChat and changes nothing.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use wxgate_config::{App, AppKind};

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

fn resolve_app<'a>(req: &HttpRequest, state: &'a AppState, app: &str) -> Result<&'a App, ApiError> {
    let caller = auth::authenticate(req, &state.settings.api_keys)?;
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
        let app = resolve_app(&req, &state, &path)?;
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
        let app = resolve_app(&req, &state, &path)?;
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
pub async fn readyz(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    match state.store.ping().await {
        Ok(()) => HttpResponse::Ok()
            .json(serde_json::json!({ "status": "ready", "store": state.store.backend() })),
        Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", e.to_string())
            .retryable(true)
            .to_response(&RequestId::of(&req)),
    }
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
