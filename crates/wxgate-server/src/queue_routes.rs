//! Queued delivery over HTTP: `Prefer: respond-async` on a send (202 + `Location`), the
//! message status, and the admin dead-letter endpoints. The engine's `queue` module does the
//! work; this maps it to HTTP.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use wxgate_config::{App, Scope};
use wxgate_engine::queue::EnqueueError;
use wxgate_engine::Outgoing;
use wxgate_protocol::error_code::ErrorCode;

use crate::error::{ApiError, ErrorBody};
use crate::routes::{resolve_caller, respond};
use crate::startup::AppState;

/// `Prefer: respond-async` (RFC 7240), alone or among other preferences.
pub(crate) fn prefers_async(req: &HttpRequest) -> bool {
    req.headers()
        .get_all("prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
}

fn queue_error(e: EnqueueError) -> ApiError {
    match e {
        EnqueueError::Unavailable => ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            ErrorCode::QueueUnavailable,
            e.to_string(),
        ),
        EnqueueError::Full { retry_after_ms, .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::QueueFull,
            e.to_string(),
        )
        .retryable(true)
        .retry_after(retry_after_ms.div_ceil(1000)),
        EnqueueError::Store(e) => ApiError::from_send(&wxgate_engine::SendError::store(e)),
    }
}

/// `Callback-Url`: an `http(s)` URL whose host (with its port, if given) is in
/// `queue.callback_hosts`.
fn callback_url(req: &HttpRequest, allowed: &[String]) -> Result<Option<String>, ApiError> {
    let Some(v) = req.headers().get("callback-url") else {
        return Ok(None);
    };
    let bad = |why: &str| ApiError::invalid_request(Some("Callback-Url".into()), why.to_string());
    let url = v
        .to_str()
        .map_err(|_| bad("`Callback-Url` must be printable ASCII"))?;
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| bad("`Callback-Url` must be an http or https URL"))?;
    if url.len() > 2048 || url.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(bad(
            "`Callback-Url` must be at most 2048 printable characters",
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') || authority.is_empty() {
        return Err(bad("`Callback-Url` must name a host, without credentials"));
    }
    let authority = authority.to_ascii_lowercase();
    let host = authority.split(':').next().unwrap_or("");
    if !allowed.iter().any(|a| *a == authority || *a == host) {
        return Err(bad(
            "the `Callback-Url` host is not in queue.callback_hosts",
        ));
    }
    Ok(Some(url.to_string()))
}

/// Enqueues a send that passed every check: 202 with the message id and its `Location`.
pub(crate) async fn enqueue(
    req: &HttpRequest,
    state: &AppState,
    app: &App,
    caller: &str,
    idempotency_key: Option<String>,
    message: Outgoing,
    rid: &str,
) -> Result<HttpResponse, ApiError> {
    let engine = &state.engine;
    if !engine.queue_enabled() {
        return Err(queue_error(EnqueueError::Unavailable));
    }
    let callback = callback_url(req, &engine.settings().queue.callback_hosts)?;
    let accepted = engine
        .enqueue(app, caller, idempotency_key.as_deref(), message, callback)
        .await
        .map_err(queue_error)?;
    let location = format!("/v1/apps/{}/messages/{}", app.name, accepted.id);
    let mut resp = HttpResponse::Accepted();
    resp.insert_header(("Location", location.clone()));
    if accepted.existing {
        resp.insert_header(("Idempotent-Replayed", "true"));
    }
    Ok(resp.json(serde_json::json!({
        "status": "queued",
        "id": accepted.id,
        "location": location,
        "request_id": rid,
    })))
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `GET /v1/apps/{app}/messages/{id}`: `queued` / `sending` / `sent` (with `msgid`) /
/// `failed` (with the classified error), while kept (the idempotency TTL). Scope `send`, and
/// only the key that enqueued it (another key gets 404, as for an unknown id).
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/messages/{id}",
    tag = "messages",
    operation_id = "message_status",
    params(
        ("app" = String, Path, description = "The app's name in the configuration (`[apps.<name>]`)."),
        ("id" = String, Path, description = "The message id of a `202 Accepted` answer to a send with `Prefer: respond-async`."),
        crate::openapi::CommonHeaders,
    ),
    responses(
        (status = 200, description = "The queued message's status: `queued`, `sending`, `sent` (with `msgid`) or `failed` (with the classified `error`), `attempts` and times.", content_type = "application/json", body = Object),
        (status = "4XX", description = "`unauthenticated`, `forbidden`, `app_not_found`, `message_not_found` (unknown, expired, or enqueued with another key).", body = ErrorBody),
        (status = "5XX", description = "`queue_unavailable` (501: memory store), `store_unavailable`.", body = ErrorBody),
    ),
    security(("api_key" = [])),
)]
pub async fn message_status(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (app, id) = path.into_inner();
    let result = async {
        let (app, caller) = resolve_caller(&req, &state, &app, Scope::Send)?;
        let not_found = || {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::MessageNotFound,
                format!("no queued message `{id}` is kept for app `{}`", app.name),
            )
        };
        if !valid_id(&id) {
            return Err(not_found());
        }
        match state.engine.message_status(app, &id, caller).await {
            Ok(Some(st)) => Ok(HttpResponse::Ok().json(st)),
            Ok(None) => Err(not_found()),
            Err(e) => Err(queue_error(e)),
        }
    }
    .await;
    respond(&req, result)
}

#[derive(Deserialize)]
pub struct DlqQuery {
    limit: Option<usize>,
}

/// `GET /v1/admin/apps/{app}/dlq[?limit=N]`: the oldest dead letters with their status.
/// Scope `admin`.
#[utoipa::path(
    get,
    path = "/v1/admin/apps/{app}/dlq",
    tag = "admin",
    operation_id = "admin_dlq_list",
    params(
        ("app" = String, Path, description = "The app's name in the configuration (`[apps.<name>]`)."),
        ("limit" = Option<usize>, Query, description = "At most this many dead letters, oldest first (default 100)."),
        crate::openapi::CommonHeaders,
    ),
    responses(
        (status = 200, description = "`{\"app\", \"dead_letters\": [{\"id\", \"entry\", \"message\"}]}`: each dead letter with its last status.", content_type = "application/json", body = Object),
        (status = "4XX", description = "`unauthenticated`, `forbidden` (the key lacks the `admin` scope or the app), `app_not_found`.", body = ErrorBody),
        (status = "5XX", description = "`queue_unavailable` (501: memory store), `store_unavailable`.", body = ErrorBody),
    ),
    security(("api_key" = [])),
)]
pub async fn dlq_list(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<DlqQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let result = async {
        let (app, _) = resolve_caller(&req, &state, &path, Scope::Admin)?;
        let limit = query.limit.unwrap_or(100).clamp(1, 10_000);
        let letters = state
            .engine
            .dead_letters(app, limit)
            .await
            .map_err(queue_error)?;
        let items: Vec<_> = letters
            .into_iter()
            .map(|(l, st)| serde_json::json!({ "id": l.id, "entry": l.entry, "message": st }))
            .collect();
        Ok(HttpResponse::Ok().json(serde_json::json!({ "app": app.name, "dead_letters": items })))
    }
    .await;
    respond(&req, result)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedriveBody {
    #[serde(default)]
    ids: Option<Vec<String>>,
    #[serde(default)]
    all: bool,
}

/// `POST /v1/admin/apps/{app}/dlq/redrive` with `{"ids": [...]}` or `{"all": true}`: puts dead
/// letters back on the stream. Scope `admin`.
#[utoipa::path(
    post,
    path = "/v1/admin/apps/{app}/dlq/redrive",
    tag = "admin",
    operation_id = "admin_dlq_redrive",
    params(
        ("app" = String, Path, description = "The app's name in the configuration (`[apps.<name>]`)."),
        crate::openapi::CommonHeaders,
    ),
    request_body(content = Object, content_type = "application/json", description = "`{\"ids\": [\"<message id>\", ...]}` or `{\"all\": true}`."),
    responses(
        (status = 200, description = "`{\"app\", \"redriven\": [ids]}`: the dead letters put back on the queue (a new generation, attempts reset).", content_type = "application/json", body = Object),
        (status = "4XX", description = "`invalid_request` / `invalid_field` (`ids`), `unauthenticated`, `forbidden`, `app_not_found`.", body = ErrorBody),
        (status = "5XX", description = "`queue_unavailable` (501: memory store), `store_unavailable`.", body = ErrorBody),
    ),
    security(("api_key" = [])),
)]
pub async fn dlq_redrive(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let result = async {
        let (app, _) = resolve_caller(&req, &state, &path, Scope::Admin)?;
        let server = &state.engine.settings().server;
        let bytes = crate::body::read_json_body(
            &req,
            payload,
            server.max_body_bytes,
            server.request_timeout,
        )
        .await?;
        let b: RedriveBody = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::invalid_request(None, format!("the body is not a redrive request: {e}"))
        })?;
        let ids = match (&b.ids, b.all) {
            (Some(ids), false) if !ids.is_empty() => Some(ids.as_slice()),
            (None, true) => None,
            _ => {
                return Err(ApiError::invalid_field(
                    "ids",
                    "give either a non-empty `ids` list or `\"all\": true`",
                ))
            }
        };
        let done = state.engine.redrive(app, ids).await.map_err(queue_error)?;
        Ok(HttpResponse::Ok().json(serde_json::json!({ "app": app.name, "redriven": done })))
    }
    .await;
    respond(&req, result)
}
