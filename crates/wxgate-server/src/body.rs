//! Reading request bodies: a size limit enforced while reading (413), `application/json` only
//! (415), and strict decoding into the API's types (400) with the path of the field at fault
//! (`data.thing1.value`, `miniprogram.appid`, `touser`).

use actix_web::http::header::CONTENT_TYPE;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use wxgate_protocol::error_code::ErrorCode;

use crate::error::ApiError;

/// Checks the content type, then reads at most `limit` bytes within `timeout` (a client that
/// trickles its body, or announces a huge chunk and sends little, gets 408 and the connection
/// is closed).
pub async fn read_json_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<web::BytesMut, ApiError> {
    match tokio::time::timeout(timeout, read_limited(req, payload, limit)).await {
        Ok(result) => result,
        Err(_) => {
            // actix would keep waiting for the rest of the body (a huge announced chunk holds the
            // connection for as long as the client likes): end the reading side, so the
            // connection closes once the 408 is written.
            if let Some(ConnSocket(sock)) = req.conn_data::<ConnSocket>() {
                let _ = sock.shutdown(std::net::Shutdown::Read);
            }
            Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::RequestTimeout,
            format!(
                "the body did not arrive within {} ms (server.request_timeout_ms); nothing was sent",
                timeout.as_millis()
            ),
        ))
        }
    }
}

/// The connection's socket (a duplicate of its descriptor), to end a connection whose request
/// timed out.
#[derive(Clone)]
pub struct ConnSocket(std::sync::Arc<socket2::Socket>);

/// `HttpServer::on_connect`: keeps each TCP connection's socket in its connection data.
pub fn remember_socket(conn: &dyn std::any::Any, data: &mut actix_web::dev::Extensions) {
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        if let Ok(sock) = socket2::SockRef::from(tcp).try_clone() {
            data.insert(ConnSocket(std::sync::Arc::new(sock)));
        }
    }
}

async fn read_limited(
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
            ErrorCode::UnsupportedMediaType,
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
            ErrorCode::BodyTooLarge,
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
    // No body of this API holds an array, but serde accepts an array for a struct (by field
    // order): `{"thing1": ["x"]}` would read as `{"thing1": {"value": "x"}}`. Refuse arrays,
    // naming the field that holds one.
    if has_array(bytes) {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
            if let Some(path) = first_array(&v, "") {
                return Err(ApiError::invalid_request(
                    Some(path.clone()),
                    format!("invalid type: `{path}` is an array; this API takes no arrays"),
                ));
            }
        }
    }
    // Fast path: plain serde. Only a body that fails is decoded again with the path tracker,
    // to name the field at fault.
    if let Ok(v) = serde_json::from_slice::<T>(bytes) {
        return Ok(v);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        // An unknown field with an empty name would leave the path blank at its end: say `""`
        // (or `body` at the top level) instead.
        let segments: Vec<_> = e.path().iter().collect();
        let empty_key = matches!(
            segments.last(),
            Some(serde_path_to_error::Segment::Map { key }) if key.is_empty()
        );
        let path = match (empty_key, segments.len()) {
            (true, 1) => "body".to_string(),
            (true, _) => format!("{}\"\"", e.path()),
            _ => e.path().to_string(),
        };
        let inner = e.inner();
        let msg = inner.to_string();
        let field = match inner.classify() {
            serde_json::error::Category::Data => Some(field_of(&path, &msg)),
            // Valid JSON in the wrong shape (an array where an object belongs) is reported by
            // serde_json as a syntax error inside the field: name the field.
            _ if path != "."
                && !path.is_empty()
                && !path.contains('?')
                && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() =>
            {
                Some(path.clone())
            }
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

/// Whether a `[` appears outside JSON strings.
fn has_array(bytes: &[u8]) -> bool {
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == b'[' {
            return true;
        }
    }
    false
}

/// The path of the first array inside `v` (`data.thing1`), or `body` for a top-level one.
fn first_array(v: &serde_json::Value, at: &str) -> Option<String> {
    match v {
        serde_json::Value::Array(_) => Some(if at.is_empty() {
            "body".into()
        } else {
            at.into()
        }),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| {
            let path = match (at.is_empty(), k.is_empty()) {
                (true, true) => "body".to_string(),
                (true, false) => k.clone(),
                (false, true) => format!("{at}.\"\""),
                (false, false) => format!("{at}.{k}"),
            };
            first_array(v, &path)
        }),
        _ => None,
    }
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
    // serde_path_to_error already ends the path with an unknown field's name — unless that
    // name is empty, which is shown quoted so the field is never blank.
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
        check(
            r#"{"touser":"o","template_id":"t","data":{"thing2":{"value":"a"},"thing2":{"value":"b"}}}"#,
            Some("data.thing2"),
            "duplicate field",
        );
        check("[]", Some("body"), "JSON object");
        check("42", Some("body"), "JSON object");
    }
}
