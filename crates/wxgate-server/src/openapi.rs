//! The OpenAPI 3.1 document served at `GET /openapi.json`, generated from the code: the
//! handlers' `#[utoipa::path]` attributes (in `routes`), the wire types of `wxgate-protocol`
//! (WeChat's own message shapes), the answer types, and the error shape with every
//! [`ErrorCode`]. [`crate::route_table::ROUTES`] and this document must list the same routes
//! (tested below).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use wxgate_protocol::error_code::ErrorCode;
use wxgate_protocol::wire;

use crate::error::ErrorBody;
use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "wxgate",
        description = "A gateway that sends WeChat template and subscribe messages for many \
            apps, sharing each app's access_token and WeChat's rate limits across replicas. \
            Every failure is answered with the one error shape `ErrorBody`; its `code` lists \
            every value.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        routes::send_template,
        routes::send_subscribe,
        routes::access_token,
        routes::invalidate_token,
        routes::admin_app_state,
        routes::admin_lift_block,
        crate::queue_routes::message_status,
        crate::queue_routes::dlq_list,
        crate::queue_routes::dlq_redrive,
        routes::healthz,
        routes::readyz,
        routes::metrics,
        routes::openapi,
    ),
    components(schemas(
        ErrorBody,
        ErrorCode,
        wire::TemplateMessage,
        wire::SubscribeMessage,
        wire::BizsendMessage,
        wire::DataValue,
        wire::MessageDataSchema,
        wire::MiniProgramLink,
        wire::MiniprogramState,
        wire::Lang,
    )),
    modifiers(&BearerKey),
    tags(
        (name = "messages", description = "Sending template and subscribe messages"),
        (name = "tokens", description = "The cluster's shared access_token"),
        (name = "admin", description = "Operators: an app's shared state, lifting a pause (scope `admin`)"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    ),
)]
pub struct ApiDoc;

/// `Authorization: Bearer <API key>` (see `auth`).
struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key of `[api_keys.<name>]`; its scopes (`send`, `token`, `admin`) and apps \
                         decide what it may call.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document, as served.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The document as JSON (built once per process, at startup).
pub fn json() -> String {
    document()
        .to_json()
        .expect("the OpenAPI document serializes")
}

/// The headers every route reads: documented once here, listed in each route's `params`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Only described, never built: the handlers read the headers themselves.
pub(crate) struct CommonHeaders {
    /// The caller's request id (1-128 characters of `A-Za-z0-9-_.:`); a UUID is made up
    /// otherwise. Echoed in the `X-Request-Id` response header and in every answer body.
    #[param(rename = "X-Request-Id")]
    x_request_id: Option<String>,
    /// W3C trace context (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`). The
    /// request joins that trace (its log lines carry the trace id; WeChat calls are
    /// forwarded with it); an invalid value starts a new trace. The response carries this
    /// request's `traceparent`.
    traceparent: Option<String>,
}

/// The headers of a send (besides [`CommonHeaders`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Only described, never built: the handlers read the headers themselves.
pub(crate) struct SendHeaders {
    /// 1-128 printable ASCII characters. The first request with a key claims it
    /// cluster-wide; a repeat gets the kept answer (`Idempotent-Replayed: true`) without
    /// calling WeChat, or `409 in_progress` while the first still runs.
    #[param(rename = "Idempotency-Key")]
    idempotency_key: Option<String>,
    /// `wait=N` (RFC 7240): when a window is full, wait up to N seconds (capped by
    /// `limits.max_wait_secs`) for a permit instead of answering 429. `respond-async`:
    /// queue the message durably (Redis store) and answer 202 with its id and a `Location`
    /// for its status.
    #[param(rename = "Prefer")]
    prefer: Option<String>,
    /// With `respond-async`: an http(s) URL on a host in `queue.callback_hosts` that
    /// receives the final status by POST.
    #[param(rename = "Callback-Url")]
    callback_url: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use crate::route_table::ROUTES;

    #[test]
    fn every_route_is_documented_and_every_documented_route_is_served() {
        let doc: serde_json::Value = serde_json::from_str(&super::json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| {
                        matches!(
                            k.as_str(),
                            "get" | "post" | "put" | "delete" | "patch" | "head" | "options"
                        )
                    })
                    .map(move |m| (m.to_uppercase(), path.clone()))
            })
            .collect();
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty() && unserved.is_empty(),
            "served but not documented: {undocumented:?}; documented but not served: {unserved:?}"
        );
    }

    #[test]
    fn message_data_is_a_named_map_of_data_values() {
        let doc: serde_json::Value = serde_json::from_str(&super::json()).unwrap();
        let schemas = &doc["components"]["schemas"];
        assert!(schemas.get("BTreeMap").is_none(), "{schemas:#}");
        assert_eq!(
            schemas["TemplateMessage"]["properties"]["data"]["$ref"],
            "#/components/schemas/MessageData"
        );
        assert_eq!(
            schemas["MessageData"]["additionalProperties"]["$ref"],
            "#/components/schemas/DataValue"
        );
    }

    #[test]
    fn the_error_shape_lists_every_code() {
        let doc: serde_json::Value = serde_json::from_str(&super::json()).unwrap();
        let listed: BTreeSet<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let all: BTreeSet<&str> = wxgate_protocol::error_code::ErrorCode::ALL
            .iter()
            .map(|c| c.as_str())
            .collect();
        assert_eq!(listed, all);
        assert_eq!(
            doc["components"]["schemas"]["ErrorBody"]["properties"]["code"]["$ref"],
            "#/components/schemas/ErrorCode"
        );
    }
}
