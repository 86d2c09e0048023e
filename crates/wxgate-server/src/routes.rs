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
use wxgate_protocol::wire::{self, BizsendMessage, SubscribeMessage, TemplateMessage};

use crate::auth;
use crate::body;
use crate::error::{ApiError, ErrorBody};
use crate::request_id::RequestId;
use crate::startup::AppState;
use crate::validate;

/// The answer to a send that WeChat accepted.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SentBody<'a> {
    /// Always `sent`.
    #[schema(example = "sent")]
    status: &'static str,
    /// A decimal string: WeChat's msgids exceed 2^53, which JSON numbers lose in JavaScript.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "2918131553548107776")]
    msgid: Option<String>,
    /// Calls made to WeChat (2 when the first token was rejected and the send retried once).
    attempts: u32,
    /// The request's id (the original request's id on an idempotent replay).
    request_id: &'a str,
}

pub(crate) fn respond(req: &HttpRequest, result: Result<HttpResponse, ApiError>) -> HttpResponse {
    result.unwrap_or_else(|e| e.to_response(&RequestId::of(req)))
}

/// The app, and the name of the caller's API key.
pub(crate) fn resolve_caller<'a>(
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

/// The body of `/messages/subscribe` (documentation only): a Mini Program app takes
/// [`SubscribeMessage`], an Official Account app [`BizsendMessage`]. `anyOf`, not `oneOf`: a
/// body with only the common fields fits both.
pub(crate) struct SubscribeBody;

impl utoipa::PartialSchema for SubscribeBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::AnyOfBuilder;
        use utoipa::openapi::Ref;
        AnyOfBuilder::new()
            .item(Ref::from_schema_name("SubscribeMessage"))
            .item(Ref::from_schema_name("BizsendMessage"))
            .into()
    }
}

impl utoipa::ToSchema for SubscribeBody {}

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
        // The request's log span names the app and API from here on.
        tracing::Span::current()
            .record("app", i.app.name.as_str())
            .record("api", endpoint_api(endpoint).as_str());
        if crate::queue_routes::prefers_async(&req) {
            return crate::queue_routes::enqueue(
                &req,
                &state,
                i.app,
                i.caller,
                i.idempotency_key,
                i.message,
                &rid,
            )
            .await;
        }
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

/// The API an endpoint is counted and logged under.
fn endpoint_api(endpoint: Endpoint) -> wxgate_protocol::api::Api {
    match endpoint {
        Endpoint::Template => wxgate_protocol::api::Api::TemplateSend,
        Endpoint::Subscribe => wxgate_protocol::api::Api::SubscribeSend,
    }
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
    let api = endpoint_api(endpoint);
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

/// Sends an Official Account template message (`/cgi-bin/message/template/send`).
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/messages/template",
    tag = "messages",
    operation_id = "send_template",
    params(
        ("app" = String, Path, description = "The app's name in the configuration (`[apps.<name>]`)."),
        crate::openapi::SendHeaders,
        crate::openapi::CommonHeaders,
    ),
    request_body(content = wire::TemplateMessage, content_type = "application/json", description = "WeChat's own template-message body; unknown fields are refused. `template_id` may be a registered alias."),
    responses(
        (status = 202, description = "Queued (`Prefer: respond-async`): `{\"status\": \"queued\", \"id\", \"location\", \"request_id\"}`; `Location` is the status URL. `503 queue_full` with `Retry-After` past `queue.max_backlog`.", content_type = "application/json", body = Object),
        (status = 200, description = "Sent: WeChat accepted the message.", body = SentBody, headers(
            ("Idempotent-Replayed" = Option<String>, description = "`true` on the kept answer of an earlier request with the same `Idempotency-Key`"),
            ("X-Request-Id" = String, description = "The request's id"),
            ("traceparent" = String, description = "The request's W3C trace context"),
        )),
        (status = "4XX", description = "Refused: nothing was sent, counted or stored. `code` says why, `field` names the input at fault.", body = ErrorBody),
        (status = "5XX", description = "WeChat, the store or the token failed; `retryable` and `Retry-After` say whether and when to try again.", body = ErrorBody),
    ),
    security(("api_key" = [])),
)]
pub async fn send_template(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    send(req, path, payload, state, Endpoint::Template).await
}

/// Sends a subscribe message: `/cgi-bin/message/subscribe/send` for a Mini Program app,
/// `/cgi-bin/message/subscribe/bizsend` for an Official Account app.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/messages/subscribe",
    tag = "messages",
    operation_id = "send_subscribe",
    params(
        ("app" = String, Path, description = "The app's name in the configuration (`[apps.<name>]`)."),
        crate::openapi::SendHeaders,
        crate::openapi::CommonHeaders,
    ),
    request_body(content = SubscribeBody, content_type = "application/json", description = "WeChat's own body: `SubscribeMessage` for a Mini Program app, `BizsendMessage` for an Official Account app; fields of the other shape are refused."),
    responses(
        (status = 202, description = "Queued (`Prefer: respond-async`): `{\"status\": \"queued\", \"id\", \"location\", \"request_id\"}`; `Location` is the status URL. `503 queue_full` with `Retry-After` past `queue.max_backlog`.", content_type = "application/json", body = Object),
        (status = 200, description = "Sent: WeChat accepted the message.", body = SentBody, headers(
            ("Idempotent-Replayed" = Option<String>, description = "`true` on the kept answer of an earlier request with the same `Idempotency-Key`"),
            ("X-Request-Id" = String, description = "The request's id"),
            ("traceparent" = String, description = "The request's W3C trace context"),
        )),
        (status = "4XX", description = "Refused: nothing was sent, counted or stored. `code` says why, `field` names the input at fault.", body = ErrorBody),
        (status = "5XX", description = "WeChat, the store or the token failed; `retryable` and `Retry-After` say whether and when to try again.", body = ErrorBody),
    ),
    security(("api_key" = [])),
)]
pub async fn send_subscribe(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    send(req, path, payload, state, Endpoint::Subscribe).await
}

/// `GET /metrics`: Prometheus metrics (OpenMetrics text).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    params(
        crate::openapi::CommonHeaders,
    ),
    responses(
        (status = 200, description = "Prometheus metrics", content_type = "application/openmetrics-text", body = String),
    ),
)]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.engine.metrics().encode())
}

/// The answer of `/healthz`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    status: &'static str,
}

/// The answer of `/readyz` when ready.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Ready {
    /// Always `ready`.
    #[schema(example = "ready")]
    status: &'static str,
    /// `memory` or `redis`.
    store: &'static str,
    /// This node's id.
    node: String,
}

/// `GET /healthz`: the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    params(
        crate::openapi::CommonHeaders,
    ),
    responses((status = 200, description = "The process is up", body = Health)),
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    params(
        crate::openapi::CommonHeaders,
    ),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object)),
)]
pub async fn openapi(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.openapi_json.clone())
}

/// Ready when the engine is (store, required tokens, template registry) and the node is not
/// draining (then at once 503, without asking the engine).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    params(
        crate::openapi::CommonHeaders,
    ),
    responses(
        (status = 200, description = "Ready: the store answers, required tokens and templates are usable, not draining", body = Ready),
        (status = 503, description = "`not_ready`: draining, or what is missing", body = ErrorBody),
    ),
)]
pub async fn readyz(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let readiness = if state.drain.is_draining() {
        Err("draining: this node is shutting down; send to another replica".to_string())
    } else {
        state.engine.readiness().await
    };
    match readiness {
        Ok(()) => HttpResponse::Ok().json(Ready {
            status: "ready",
            store: state.engine.backend(),
            node: state.engine.node_id().to_string(),
        }),
        Err(why) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NotReady, why)
            .retryable(true)
            .to_response(&RequestId::of(&req)),
    }
}

/// The cluster's access_token of an app.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TokenBody<'a> {
    access_token: &'a str,
    /// Seconds left, like WeChat's own answer.
    expires_in: u64,
    expires_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Only on `invalidate`: false when the reported token was no longer the current one.
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
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/access_token",
    tag = "tokens",
    operation_id = "access_token",
    params(
        ("app" = String, Path, description = "The app's name in the configuration (`[apps.<name>]`)."),
        crate::openapi::CommonHeaders,
    ),
    responses(
        (status = 200, description = "The token every replica uses (`Cache-Control: no-store`)", body = TokenBody),
        (status = "4XX", description = "Refused: `code` says why, `field` names the input at fault.", body = ErrorBody),
        (status = "5XX", description = "No token could be obtained; `retryable` and `Retry-After` say whether and when to try again.", body = ErrorBody),
    ),
    security(("api_key" = [])),
)]
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

/// The token WeChat rejected (`40001`, `42001`, `40014`).
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InvalidateBody {
    #[schema(min_length = 1, max_length = 2048)]
    access_token: String,
}

/// `POST /v1/apps/{app}/access_token/invalidate` with `{"access_token": "<the rejected one>"}`:
/// the same single-flight recovery a send gets. Answers with the token to use now.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/access_token/invalidate",
    tag = "tokens",
    operation_id = "invalidate_token",
    params(
        ("app" = String, Path, description = "The app's name in the configuration (`[apps.<name>]`)."),
        crate::openapi::CommonHeaders,
    ),
    request_body(content = InvalidateBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The token to use now (`Cache-Control: no-store`)", body = TokenBody),
        (status = "4XX", description = "Refused: `code` says why, `field` names the input at fault.", body = ErrorBody),
        (status = "5XX", description = "No token could be obtained; `retryable` and `Retry-After` say whether and when to try again.", body = ErrorBody),
    ),
    security(("api_key" = [])),
)]
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

/// A store error on the admin API: 503, the caller may retry.
fn admin_store_error(e: &wxgate_store::StoreError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StoreUnavailable,
        format!("cannot read the shared state: {e}"),
    )
}

/// `GET /v1/admin/apps/{app}/state`: the app's shared state, the JSON of `wxgate inspect
/// --json`. Needs the `admin` scope.
#[utoipa::path(
    get,
    path = "/v1/admin/apps/{app}/state",
    tag = "admin",
    operation_id = "admin_app_state",
    params(
        ("app" = String, Path, description = "The app's name in the configuration (`[apps.<name>]`)."),
        crate::openapi::CommonHeaders,
    ),
    responses(
        (status = 200, description = "The app's shared state: the JSON of `wxgate inspect --json` (`schema_version` 1: token masked, leader, fence, windows, quotas, blocks, idempotency and recipient counts, state loss; see the README's \"Inspecting a cluster\").", content_type = "application/json", body = Object),
        (status = "4XX", description = "`unauthenticated`, `forbidden` (the key lacks the `admin` scope or the app), `app_not_found`.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`: the shared state cannot be read.", body = ErrorBody),
    ),
    security(("api_key" = [])),
)]
pub async fn admin_app_state(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let result = async {
        let (app, _) = resolve_caller(&req, &state, &path, Scope::Admin)?;
        match state.engine.app_state(&app.name).await {
            Some(Ok(s)) => Ok(HttpResponse::Ok().json(s)),
            Some(Err(e)) => Err(admin_store_error(&e)),
            None => Err(auth::app_not_found(&path)),
        }
    }
    .await;
    respond(&req, result)
}

/// `DELETE /v1/admin/apps/{app}/blocks/{api}`: lifts a pause by hand (after a WeChat incident).
/// 204 when one was lifted, 404 when none was in force, 400 for an unknown API name. Logged at
/// warn with the caller's key name.
#[utoipa::path(
    delete,
    path = "/v1/admin/apps/{app}/blocks/{api}",
    tag = "admin",
    operation_id = "admin_lift_block",
    params(
        ("app" = String, Path, description = "The app's name in the configuration (`[apps.<name>]`)."),
        ("api" = String, Path, description = "The paused API: `template_send`, `subscribe_send` or `token_fetch`."),
        crate::openapi::CommonHeaders,
    ),
    responses(
        (status = 204, description = "The pause was lifted: sends of that API flow again on every node."),
        (status = 400, description = "`unknown_api` (`field`: `api`).", body = ErrorBody),
        (status = 404, description = "`no_block`: no pause of that API is in force (or `app_not_found`).", body = ErrorBody),
        (status = "4XX", description = "`unauthenticated`, `forbidden` (the key lacks the `admin` scope or the app).", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody),
    ),
    security(("api_key" = [])),
)]
pub async fn admin_lift_block(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (app_name, api_name) = path.into_inner();
    let result = async {
        let (app, caller) = resolve_caller(&req, &state, &app_name, Scope::Admin)?;
        let api = wxgate_protocol::api::Api::parse(&api_name).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::UnknownApi,
                format!(
                    "unknown API `{api_name}` (one of template_send, subscribe_send, token_fetch)"
                ),
            )
            .field("api")
        })?;
        match state.engine.lift_block(&app.name, api).await {
            Some(Ok(true)) => {
                tracing::warn!(
                    app = %app.name,
                    api = api.as_str(),
                    api_key = caller,
                    "pause lifted by hand through the admin API"
                );
                Ok(HttpResponse::NoContent().finish())
            }
            Some(Ok(false)) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NoBlock,
                format!(
                    "no pause of `{}` is in force for app `{}`",
                    api.as_str(),
                    app.name
                ),
            )
            .field("api")),
            Some(Err(e)) => Err(admin_store_error(&e)),
            None => Err(auth::app_not_found(&app_name)),
        }
    }
    .await;
    respond(&req, result)
}
