//! Bearer API keys. Each calling service has its own key and a list of apps it may use; an app
//! outside that list is answered exactly like an app that does not exist (404), so a key never
//! learns which other apps are configured.

use actix_web::http::header::AUTHORIZATION;
use actix_web::http::StatusCode;
use actix_web::HttpRequest;
use secrecy::ExposeSecret;
use wxgate_config::{ApiKey, Scope};
use wxgate_protocol::error_code::ErrorCode;

use crate::error::ApiError;

/// The caller behind a request.
#[derive(Debug, Clone)]
pub struct Caller<'a> {
    pub key: &'a ApiKey,
}

/// Checks `Authorization: Bearer <key>` against every configured key. Every key is compared in
/// full, in constant time per byte, so timing does not reveal how much of a key matched.
pub fn authenticate<'a>(req: &HttpRequest, keys: &'a [ApiKey]) -> Result<Caller<'a>, ApiError> {
    let unauthenticated = |msg: &str| {
        ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthenticated, msg)
            .field("Authorization")
    };
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .ok_or_else(|| unauthenticated("missing `Authorization: Bearer <api key>` header"))?;
    let value = header
        .to_str()
        .map_err(|_| unauthenticated("malformed Authorization header"))?;
    let presented = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| unauthenticated("the Authorization header must be `Bearer <api key>`"))?;
    let mut found = None;
    for key in keys {
        if constant_time_eq(key.key.expose_secret().as_bytes(), presented.as_bytes()) {
            found = Some(key);
        }
    }
    found
        .map(|key| Caller { key })
        .ok_or_else(|| unauthenticated("unknown API key"))
}

impl Caller<'_> {
    /// 403 unless the key has `scope`.
    pub fn require_scope(&self, scope: Scope) -> Result<(), ApiError> {
        if self.key.scopes.contains(&scope) {
            return Ok(());
        }
        let what = match scope {
            Scope::Send => "send messages",
            Scope::Token => "use the token API",
            Scope::Admin => "use the admin API",
        };
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!(
                "API key `{}` may not {what} (scopes: {:?})",
                self.key.name, self.key.scopes
            ),
        )
        .field("Authorization"))
    }

    /// 404 unless this caller may use `app` (and it exists: the caller checks that too).
    pub fn require_app(&self, app: &str) -> Result<(), ApiError> {
        if self.key.apps.allows(app) {
            Ok(())
        } else {
            Err(app_not_found(app))
        }
    }
}

pub fn app_not_found(app: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::AppNotFound,
        format!("no app `{app}` for this API key"),
    )
    .field("app")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
