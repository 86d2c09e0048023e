//! Handlers. Each one runs the same checks in the same order — authenticate (401), resolve the
//! app within the key's scope (404), check the API fits the app's kind (400), read the body
//! (415/413), decode it strictly (400), validate it (422), check it against the template
//! registry (422) — before any idempotency claim, permit or upstream call, so bad input never
//! reaches WeChat and changes nothing.

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use wxgate_config::sending::TemplateKind;
use wxgate_config::{App, AppKind, Scope};
use wxgate_protocol::wire::{BizsendMessage, SubscribeMessage, TemplateMessage};
use wxgate_store::IdemClaim;

use crate::auth;
use crate::body;
use crate::error::ApiError;
use crate::request_id::RequestId;
use crate::send::{self, Outgoing, SendOptions};
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
    resolve_caller(req, state, app, scope).map(|(app, _)| app)
}

/// The app, and the name of the caller's API key.
fn resolve_caller<'a>(
    req: &HttpRequest,
    state: &'a AppState,
    app: &str,
    scope: Scope,
) -> Result<(&'a App, &'a str), ApiError> {
    let caller = auth::authenticate(req, &state.settings.api_keys)?;
    caller.require_scope(scope)?;
    let found = state
        .settings
        .apps
        .get(app)
        .ok_or_else(|| auth::app_not_found(app))?;
    caller.require_app(app)?;
    Ok((found, caller.key.name.as_str()))
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

/// FNV-1a: a stable hash, so every replica derives the same `client_msg_id` from one key.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

pub async fn send_template(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let started = Instant::now();
    let result = async {
        let (app, caller) = resolve_caller(&req, &state, &path, Scope::Send)?;
        if app.kind != AppKind::OfficialAccount {
            return Err(wrong_kind(
                app,
                "template messages",
                AppKind::OfficialAccount,
            ));
        }
        let header_key = idempotency_key(&req)?;
        let bytes =
            body::read_json_body(&req, payload, state.settings.server.max_body_bytes).await?;
        let mut msg: TemplateMessage = body::decode(&bytes)?;
        validate::template(&msg)?;
        learn_fields(&state, app, &msg.template_id).await?;
        msg.template_id =
            state
                .registry
                .check(app, &msg.template_id, TemplateKind::Template, &msg.data)?;
        // The caller's key (header, else its client_msg_id) makes the request idempotent.
        let idem = header_key.or_else(|| msg.client_msg_id.clone());
        // WeChat de-duplicates on client_msg_id: always set one, so a retry after an unknown
        // outcome cannot notify the user twice. Derived from the idempotency key when there is
        // one (every replica derives the same), else fresh.
        if msg.client_msg_id.is_none() {
            msg.client_msg_id = Some(match &idem {
                Some(k) => format!("wxg-{:016x}", fnv1a(&format!("{caller}\u{0}{k}"))),
                None => format!("wxg-{}", uuid::Uuid::new_v4().simple()),
            });
        }
        deliver(
            &req,
            &state,
            app,
            caller,
            idem,
            Outgoing::Template(msg),
            started,
        )
        .await
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
    let started = Instant::now();
    let result = async {
        let (app, caller) = resolve_caller(&req, &state, &path, Scope::Send)?;
        let idem = idempotency_key(&req)?;
        let bytes =
            body::read_json_body(&req, payload, state.settings.server.max_body_bytes).await?;
        let msg = match app.kind {
            AppKind::MiniProgram => {
                let mut m: SubscribeMessage = body::decode(&bytes)?;
                validate::subscribe(&m)?;
                learn_fields(&state, app, &m.template_id).await?;
                m.template_id =
                    state
                        .registry
                        .check(app, &m.template_id, TemplateKind::Subscribe, &m.data)?;
                Outgoing::Subscribe(m)
            }
            AppKind::OfficialAccount => {
                let mut m: BizsendMessage = body::decode(&bytes)?;
                validate::bizsend(&m)?;
                learn_fields(&state, app, &m.template_id).await?;
                m.template_id =
                    state
                        .registry
                        .check(app, &m.template_id, TemplateKind::Subscribe, &m.data)?;
                Outgoing::Bizsend(m)
            }
        };
        deliver(&req, &state, app, caller, idem, msg, started).await
    }
    .await;
    respond(&req, result)
}

/// A registered template without configured fields takes them from WeChat's template list;
/// until that list has been read (normally at start-up), the first send reads it, so `data` is
/// always checked against the fields before anything is sent.
async fn learn_fields(state: &AppState, app: &App, template_id: &str) -> Result<(), ApiError> {
    if !state.registry.needs_fields(app, template_id) {
        return Ok(());
    }
    state
        .registry
        .verify(app, &state.tokens, &state.client, &*state.store)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "templates_unavailable",
                format!("the fields of template `{template_id}` are not known yet ({e}); nothing was sent"),
            )
            .retryable(true)
            .retry_after(1)
        })
}

/// Sends, honouring the idempotency key: the first request with a key claims it in the store
/// (any replica sees the claim); a duplicate while it runs gets 409; a duplicate after it
/// finished gets the stored answer, without calling WeChat again.
async fn deliver(
    req: &HttpRequest,
    state: &AppState,
    app: &App,
    caller: &str,
    idem: Option<String>,
    msg: Outgoing,
    started: Instant,
) -> Result<HttpResponse, ApiError> {
    let rid = RequestId::of(req);
    let store = &state.store;
    let ttl = state.settings.sending.idempotency_ttl.as_millis() as u64;
    let claim = idem.as_ref().map(|k| format!("{caller}:{}:{k}", msg.api()));
    if let Some(key) = &claim {
        match store
            .claim_idempotency(&app.appid, key, &rid, ttl)
            .await
            .map_err(ApiError::store_unavailable)?
        {
            IdemClaim::Claimed => {}
            IdemClaim::InProgress { request_id } => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "in_progress",
                    format!("a request with this idempotency key is in progress (request {request_id}); nothing was sent"),
                )
                .field("Idempotency-Key")
                .retryable(true)
                .retry_after(1));
            }
            IdemClaim::Done { result, .. } => {
                let stored: StoredAnswer = serde_json::from_str(&result).map_err(|e| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal_error",
                        format!("unreadable stored result: {e}"),
                    )
                })?;
                let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
                return Ok(HttpResponse::build(status)
                    .insert_header(("Idempotent-Replayed", "true"))
                    .json(stored.body));
            }
        }
    }
    let opts = SendOptions {
        wait_for_permit: prefer_wait(req, state.settings.sending.max_wait),
        started,
    };
    let result = send::deliver(state, app, &msg, &opts).await;
    let (status, body) = match &result {
        Ok(sent) => (
            200,
            serde_json::to_value(SentBody {
                status: "sent",
                msgid: sent.msgid.map(|m| m.to_string()),
                attempts: sent.attempts,
                request_id: &rid,
            })
            .unwrap_or_default(),
        ),
        Err(e) => (e.status.as_u16(), e.body_json(&rid)),
    };
    if let Some(key) = &claim {
        // Keep the answer when it is final: success, a definite refusal, or an outcome nobody
        // knows for a message WeChat cannot de-duplicate (sending it again could notify twice).
        // Release the key when a retry can help and cannot duplicate.
        let keep = match &result {
            Ok(_) => true,
            Err(e) if e.code == "upstream_outcome_unknown" || e.wechat_errcode == Some(-1) => {
                !msg.dedup_protected()
            }
            Err(e) => !e.retryable,
        };
        let outcome = if keep {
            let stored = serde_json::to_string(&StoredAnswer {
                status,
                body: body.clone(),
            })
            .unwrap_or_default();
            store
                .complete_idempotency(&app.appid, key, &rid, &stored, ttl)
                .await
        } else {
            store.release_idempotency(&app.appid, key, &rid).await
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "cannot record the idempotency result");
        }
    }
    match result {
        Ok(_) => Ok(HttpResponse::Ok().json(body)),
        Err(e) => Err(e),
    }
}

/// An answer kept under an idempotency key.
#[derive(Serialize, serde::Deserialize)]
struct StoredAnswer {
    status: u16,
    body: serde_json::Value,
}

/// `GET /metrics`: Prometheus metrics (OpenMetrics text).
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.encode())
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
    let problems: Vec<String> = state
        .settings
        .apps
        .values()
        .flat_map(|a| state.registry.problems(a))
        .collect();
    if !problems.is_empty() {
        return not_ready(format!("template registry: {}", problems.join("; ")));
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
