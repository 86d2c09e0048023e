//! Reading request bodies: a size limit enforced while reading (413), `application/json` only
//! (415), and strict decoding into the API's types (400) with the path of the field at fault
//! (`data.thing1.value`, `miniprogram.appid`, `touser`).

use actix_web::http::header::CONTENT_TYPE;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Checks the content type, then reads at most `limit` bytes.
pub async fn read_json_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    let ct = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "the body must be JSON sent with `Content-Type: application/json` (got `{}`)",
                if ct.is_empty() { "nothing" } else { ct }
            ),
        )
        .field("Content-Type"));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body exceeds {limit} bytes"),
        )
    };
    if let Some(len) = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(too_large());
        }
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::invalid_request(None, format!("the body could not be read: {e}"))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Decodes `bytes` as `T`, naming the field at fault on error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if matches!(
        first,
        Some(b'[') | Some(b'"') | Some(b't') | Some(b'f') | Some(b'n')
    ) || first.is_some_and(|b| b.is_ascii_digit() || *b == b'-')
    {
        return Err(ApiError::invalid_request(
            Some("body".into()),
            "the body must be a JSON object",
        ));
    }
    // Fast path: plain serde. Only a body that fails is decoded again with the path tracker,
    // to name the field at fault.
    if let Ok(v) = serde_json::from_slice::<T>(bytes) {
        return Ok(v);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner();
        let msg = inner.to_string();
        let field = match inner.classify() {
            serde_json::error::Category::Data => Some(field_of(&path, &msg)),
            _ => None,
        };
        let message = match inner.classify() {
            serde_json::error::Category::Eof if bytes.iter().all(u8::is_ascii_whitespace) => {
                "the body is empty; a JSON object is required".to_string()
            }
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                format!("the body is not valid JSON: {msg}")
            }
            _ => msg,
        };
        ApiError::invalid_request(field, message)
    })?;
    // Trailing data after the object is malformed too.
    de.end()
        .map_err(|e| ApiError::invalid_request(None, format!("the body is not valid JSON: {e}")))?;
    Ok(value)
}

/// serde reports missing and duplicate fields at the path of the object that holds them; name
/// the field itself (`data.thing1.value`, not `data.thing1`).
fn field_of(path: &str, msg: &str) -> String {
    let join = |name: &str| {
        if path == "." {
            name.to_string()
        } else {
            format!("{path}.{name}")
        }
    };
    // serde_path_to_error already ends the path with an unknown field's name.
    if msg.starts_with("unknown field `") {
        return path.to_string();
    }
    for prefix in ["missing field `", "duplicate field `"] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            if let Some(name) = rest.split('`').next() {
                return join(name);
            }
        }
    }
    if path == "." {
        "body".to_string()
    } else {
        path.to_string()
    }
}

#[cfg(test)]
mod tests {
    use wxgate_protocol::wire::TemplateMessage;

    use super::*;

    #[track_caller]
    fn check(body: &str, field: Option<&str>, msg_part: &str) {
        let e = decode::<TemplateMessage>(body.as_bytes()).unwrap_err();
        assert_eq!(e.field.as_deref(), field, "{}", e.message);
        assert!(
            e.message.contains(msg_part),
            "`{}` lacks `{msg_part}`",
            e.message
        );
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn fields_are_named() {
        check(
            r#"{"template_id":"t","data":{}}"#,
            Some("touser"),
            "missing field",
        );
        check(
            r#"{"touser":"o","template_id":"t","data":{},"toUser":"x"}"#,
            Some("toUser"),
            "unknown",
        );
        check(
            r#"{"touser":5,"template_id":"t","data":{}}"#,
            Some("touser"),
            "invalid type",
        );
        check(
            r#"{"touser":"o","template_id":"t","data":{"thing1":{"valu":"x"}}}"#,
            Some("data.thing1.valu"),
            "unknown field",
        );
        check(
            r#"{"touser":"o","template_id":"t","data":{"thing1":{}}}"#,
            Some("data.thing1.value"),
            "missing field",
        );
        check(r#"{"touser":"o","#, None, "not valid JSON");
        check("", None, "empty");
        check(
            r#"{"touser":"o","template_id":"t","data":{}} x"#,
            None,
            "not valid JSON",
        );
        check("[]", Some("body"), "JSON object");
        check("42", Some("body"), "JSON object");
    }
}
