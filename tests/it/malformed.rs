//! A table of malformed requests. Each one gets a precise 4xx naming the field at fault, and
//! the fake WeChat's record proves that none of them reached WeChat (not even a token fetch).

use reqwest::Method;
use serde_json::{json, Value};
use wxgate_tests::*;

struct Case {
    name: &'static str,
    method: Method,
    path: &'static str,
    key: Option<&'static str>,
    content_type: &'static str,
    body: Option<String>,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
}

const TPL: &str = "/v1/apps/oa/messages/template";
const MINI_SUB: &str = "/v1/apps/mini/messages/subscribe";
const OA_SUB: &str = "/v1/apps/oa/messages/subscribe";
const JSON: &str = "application/json";

fn case(
    name: &'static str,
    path: &'static str,
    body: Value,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
) -> Case {
    Case {
        name,
        method: Method::POST,
        path,
        key: Some(API_KEY),
        content_type: JSON,
        body: Some(body.to_string()),
        status,
        code,
        field,
    }
}

fn raw(name: &'static str, body: &str, status: u16, field: Option<&'static str>) -> Case {
    Case {
        body: Some(body.to_string()),
        ..case(name, TPL, Value::Null, status, "invalid_request", field)
    }
}

/// `template_body()` with `edit` applied.
fn tpl(edit: impl FnOnce(&mut Value)) -> Value {
    let mut b = template_body();
    edit(&mut b);
    b
}

fn mini(edit: impl FnOnce(&mut Value)) -> Value {
    let mut b = mini_subscribe_body();
    edit(&mut b);
    b
}

fn cases() -> Vec<Case> {
    let bad = 400;
    let unproc = 422;
    vec![
        // Who is calling, and for which app.
        Case {
            key: None,
            ..case(
                "no Authorization",
                TPL,
                template_body(),
                401,
                "unauthenticated",
                Some("Authorization"),
            )
        },
        Case {
            key: Some("not-a-configured-key-000"),
            ..case(
                "unknown key",
                TPL,
                template_body(),
                401,
                "unauthenticated",
                Some("Authorization"),
            )
        },
        case(
            "key not allowed for the app",
            MINI_SUB,
            mini_subscribe_body(),
            404,
            "app_not_found",
            Some("app"),
        ),
        case(
            "unknown app",
            "/v1/apps/nope/messages/template",
            template_body(),
            404,
            "app_not_found",
            Some("app"),
        ),
        case(
            "template to a mini program",
            "/v1/apps/mini/messages/template",
            template_body(),
            bad,
            "unsupported_for_app",
            Some("app"),
        ),
        // The body as bytes.
        Case {
            content_type: "",
            ..case(
                "no content type",
                TPL,
                template_body(),
                415,
                "unsupported_media_type",
                Some("Content-Type"),
            )
        },
        Case {
            content_type: "text/plain",
            ..case(
                "text/plain",
                TPL,
                template_body(),
                415,
                "unsupported_media_type",
                Some("Content-Type"),
            )
        },
        Case {
            body: Some(format!("{{\"touser\":\"{}\"}}", "x".repeat(9000))),
            ..case(
                "oversize body",
                TPL,
                Value::Null,
                413,
                "body_too_large",
                None,
            )
        },
        raw("empty body", "", bad, None),
        raw("not JSON", "{\"touser\": \"o1\",", bad, None),
        raw(
            "trailing garbage",
            &format!("{} x", template_body()),
            bad,
            None,
        ),
        raw("an array", "[]", bad, Some("body")),
        raw(
            "duplicate field",
            "{\"touser\":\"a\",\"touser\":\"b\",\"template_id\":\"t\",\"data\":{}}",
            bad,
            Some("touser"),
        ),
        // The body's shape.
        case(
            "missing touser",
            TPL,
            tpl(|b| {
                b.as_object_mut().unwrap().remove("touser");
            }),
            bad,
            "invalid_request",
            Some("touser"),
        ),
        case(
            "missing template_id",
            TPL,
            tpl(|b| {
                b.as_object_mut().unwrap().remove("template_id");
            }),
            bad,
            "invalid_request",
            Some("template_id"),
        ),
        case(
            "missing data",
            TPL,
            tpl(|b| {
                b.as_object_mut().unwrap().remove("data");
            }),
            bad,
            "invalid_request",
            Some("data"),
        ),
        case(
            "camelCase field",
            TPL,
            tpl(|b| b["toUser"] = "o1".into()),
            bad,
            "invalid_request",
            Some("toUser"),
        ),
        case(
            "touser is a number",
            TPL,
            tpl(|b| b["touser"] = json!(42)),
            bad,
            "invalid_request",
            Some("touser"),
        ),
        case(
            "data is an array",
            TPL,
            tpl(|b| b["data"] = json!([{"value": "x"}])),
            bad,
            "invalid_request",
            Some("data"),
        ),
        case(
            "data value without value",
            TPL,
            tpl(|b| b["data"]["thing2"] = json!({})),
            bad,
            "invalid_request",
            Some("data.thing2.value"),
        ),
        case(
            "data value misspelt",
            TPL,
            tpl(|b| b["data"]["thing2"] = json!({"valu": "x"})),
            bad,
            "invalid_request",
            Some("data.thing2.valu"),
        ),
        case(
            "color is a number",
            TPL,
            tpl(|b| b["data"]["thing2"]["color"] = json!(255)),
            bad,
            "invalid_request",
            Some("data.thing2.color"),
        ),
        case(
            "miniprogram extra field",
            TPL,
            tpl(|b| b["miniprogram"] = json!({"appid": "wxfedcba9876543210", "path": "x"})),
            bad,
            "invalid_request",
            Some("miniprogram.path"),
        ),
        case(
            "bad miniprogram_state",
            MINI_SUB,
            mini(|b| b["miniprogram_state"] = "prod".into()),
            bad,
            "invalid_request",
            Some("miniprogram_state"),
        ),
        case(
            "bad lang",
            MINI_SUB,
            mini(|b| b["lang"] = "fr".into()),
            bad,
            "invalid_request",
            Some("lang"),
        ),
        case(
            "bizsend has no miniprogram_state",
            OA_SUB,
            mini(|b| b["miniprogram_state"] = "formal".into()),
            bad,
            "invalid_request",
            Some("miniprogram_state"),
        ),
        // The values' rules.
        case(
            "empty touser",
            TPL,
            tpl(|b| b["touser"] = "".into()),
            unproc,
            "invalid_field",
            Some("touser"),
        ),
        case(
            "touser with a space",
            TPL,
            tpl(|b| b["touser"] = "o 1".into()),
            unproc,
            "invalid_field",
            Some("touser"),
        ),
        case(
            "empty template_id",
            TPL,
            tpl(|b| b["template_id"] = "".into()),
            unproc,
            "invalid_field",
            Some("template_id"),
        ),
        case(
            "empty data",
            TPL,
            tpl(|b| b["data"] = json!({})),
            unproc,
            "invalid_field",
            Some("data"),
        ),
        case(
            "thing of 21 characters",
            TPL,
            tpl(|b| b["data"]["thing2"]["value"] = "a".repeat(21).into()),
            unproc,
            "invalid_field",
            Some("data.thing2.value"),
        ),
        case(
            "time that is not a time",
            TPL,
            tpl(|b| b["data"]["time3"]["value"] = "tomorrow".into()),
            unproc,
            "invalid_field",
            Some("data.time3.value"),
        ),
        case(
            "character_string with Chinese",
            TPL,
            tpl(|b| b["data"]["character_string1"]["value"] = "订单1".into()),
            unproc,
            "invalid_field",
            Some("data.character_string1.value"),
        ),
        case(
            "bad data key",
            TPL,
            tpl(|b| b["data"]["bad-key"] = json!({"value": "x"})),
            unproc,
            "invalid_field",
            Some("data.bad-key"),
        ),
        case(
            "url not http",
            TPL,
            tpl(|b| b["url"] = "ftp://example.com".into()),
            unproc,
            "invalid_field",
            Some("url"),
        ),
        case(
            "miniprogram appid",
            TPL,
            tpl(|b| b["miniprogram"] = json!({"appid": "abc"})),
            unproc,
            "invalid_field",
            Some("miniprogram.appid"),
        ),
        case(
            "empty client_msg_id",
            TPL,
            tpl(|b| b["client_msg_id"] = "".into()),
            unproc,
            "invalid_field",
            Some("client_msg_id"),
        ),
        case(
            "phrase not Chinese",
            MINI_SUB,
            mini(|b| b["data"]["phrase3"]["value"] = "booked".into()),
            unproc,
            "invalid_field",
            Some("data.phrase3.value"),
        ),
        case(
            "thing with a line break",
            MINI_SUB,
            mini(|b| b["data"]["thing1"]["value"] = "two\nlines".into()),
            unproc,
            "invalid_field",
            Some("data.thing1.value"),
        ),
        // Routes.
        Case {
            method: Method::GET,
            body: None,
            ..case(
                "GET on a send route",
                TPL,
                Value::Null,
                405,
                "method_not_allowed",
                None,
            )
        },
        case(
            "unknown route",
            "/v1/nope",
            template_body(),
            404,
            "not_found",
            None,
        ),
    ]
}

#[tokio::test]
async fn malformed_requests_get_a_precise_4xx_and_nothing_reaches_wechat() {
    let gw = spawn().await;
    let cases = cases();
    assert!(cases.len() >= 25);
    let mut failures = Vec::new();
    for c in &cases {
        // The key-scope case uses the key that may not see `mini`.
        let key = if c.name == "key not allowed for the app" {
            Some(OA_ONLY_KEY)
        } else {
            c.key
        };
        let r = gw
            .request(
                c.method.clone(),
                c.path,
                key,
                c.body.clone(),
                c.content_type,
            )
            .await;
        let field = r.body["field"].as_str();
        let ok = r.status == c.status
            && r.code() == c.code
            && field == c.field
            && r.body["retryable"] == false
            && r.body["request_id"]
                .as_str()
                .is_some_and(|id| Some(id) == r.header("x-request-id"));
        if !ok {
            failures.push(format!(
                "{}: expected {} {} {:?}, got {} {}",
                c.name, c.status, c.code, c.field, r.status, r.body
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // The node's token refresher fetches tokens at start-up; no message was sent.
    let sent: Vec<_> = gw
        .calls()
        .into_iter()
        .filter(|c| c.path.starts_with("/cgi-bin/message"))
        .collect();
    assert_eq!(sent, vec![], "no malformed request reached the fake WeChat");
    gw.stop().await;
}
