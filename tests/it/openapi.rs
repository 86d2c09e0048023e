//! The OpenAPI document (`GET /openapi.json`): it lists exactly the routes the server answers,
//! and every `curl` example of the README fits it (route, method and request body).

use std::collections::BTreeSet;

use serde_json::{json, Value};
use wxgate_tests::*;

/// (METHOD, path template) of every operation in the document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| matches!(k.as_str(), "get" | "post" | "put" | "delete" | "patch"))
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect()
}

async fn served_document(gw: &TestGateway) -> Value {
    let r = gw
        .request(reqwest::Method::GET, "/openapi.json", None, None, "")
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

#[tokio::test]
async fn openapi_document_lists_every_served_route() {
    let gw = spawn().await;
    let doc = served_document(&gw).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let served: BTreeSet<(String, String)> = wxgate_server::route_table::ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    assert_eq!(documented(&doc), served);
    // And the server really answers each of them (not with its 404/405).
    for (method, path) in &served {
        let concrete = path.replace("{app}", "oa");
        let r = gw
            .request(
                method.parse().unwrap(),
                &concrete,
                None,
                Some("{}".into()),
                "application/json",
            )
            .await;
        assert!(
            !matches!(r.code(), "not_found" | "method_not_allowed"),
            "{method} {concrete}: {} {:?}",
            r.status,
            r.body
        );
    }
    // Every error code has its place in the one error shape.
    let codes = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        codes,
        wxgate_protocol::error_code::ErrorCode::ALL.len(),
        "{doc:#}"
    );
    gw.stop().await;
}

/// One `curl` example: method, URL path and JSON body (if any).
#[derive(Debug)]
struct Example {
    method: String,
    path: String,
    body: Option<Value>,
}

/// The `curl` commands of the README's shell blocks, with their `\`-continued lines and
/// multi-line `-d '...'` bodies.
fn readme_examples() -> Vec<Example> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let mut examples = Vec::new();
    let mut in_sh = false;
    let mut block = String::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            if in_sh {
                examples.extend(curls_in(&block));
                block.clear();
            }
            in_sh = !in_sh && (line == "```sh" || line == "```bash" || line == "```shell");
            continue;
        }
        if in_sh {
            block.push_str(line);
            block.push('\n');
        }
    }
    examples
}

fn curls_in(block: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut rest = block;
    while let Some(i) = rest.find("curl ") {
        rest = &rest[i + 5..];
        // The command ends at the first newline not continued by `\` and not inside quotes.
        let mut end = rest.len();
        let mut quoted = false;
        let bytes = rest.as_bytes();
        for (j, &b) in bytes.iter().enumerate() {
            match b {
                b'\'' => quoted = !quoted,
                b'\n' if !quoted && (j == 0 || bytes[j - 1] != b'\\') => {
                    end = j;
                    break;
                }
                _ => {}
            }
        }
        let cmd = &rest[..end];
        rest = &rest[end..];
        let url = cmd
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .expect("a curl example has a URL");
        let path = url
            .splitn(4, '/')
            .nth(3)
            .map(|p| format!("/{}", p.split('?').next().unwrap()))
            .unwrap_or_else(|| "/".into());
        let body = cmd.find("-d '").map(|k| {
            let b = &cmd[k + 4..];
            let b = &b[..b.find('\'').expect("a closed -d body")];
            serde_json::from_str::<Value>(b)
                .unwrap_or_else(|e| panic!("README body is not JSON ({e}): {b}"))
        });
        let method = match cmd.find("-X ") {
            Some(k) => cmd[k + 3..].split_whitespace().next().unwrap().to_string(),
            None if body.is_some() => "POST".into(),
            None => "GET".into(),
        };
        out.push(Example { method, path, body });
    }
    out
}

/// The document's path template matching a concrete path (`{x}` matches one segment).
fn template_of<'a>(doc: &'a Value, path: &str) -> Option<&'a str> {
    let segs: Vec<&str> = path.split('/').collect();
    doc["paths"]
        .as_object()?
        .keys()
        .map(String::as_str)
        .find(|t| {
            let ts: Vec<&str> = t.split('/').collect();
            ts.len() == segs.len()
                && ts
                    .iter()
                    .zip(&segs)
                    .all(|(t, s)| (t.starts_with('{') && t.ends_with('}')) || t == s)
        })
}

#[tokio::test]
async fn readme_examples_fit_the_openapi_document() {
    let gw = spawn().await;
    let doc = served_document(&gw).await;
    gw.stop().await;
    let examples = readme_examples();
    let with_body = examples.iter().filter(|e| e.body.is_some()).count();
    assert!(
        examples.len() >= 6 && with_body >= 4,
        "the README's curl examples were not found: {examples:?}"
    );
    for ex in &examples {
        let template = template_of(&doc, &ex.path)
            .unwrap_or_else(|| panic!("README example on an undocumented path: {ex:?}"));
        let op = &doc["paths"][template][ex.method.to_lowercase()];
        assert!(
            op.is_object(),
            "README example with an undocumented method: {ex:?}"
        );
        let Some(body) = &ex.body else { continue };
        let schema = &op["requestBody"]["content"]["application/json"]["schema"];
        assert!(schema.is_object(), "no request body documented for {ex:?}");
        // The operation's schema, with the document's components beside it so that
        // `#/components/schemas/...` resolves.
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "allOf": [schema],
            "components": doc["components"],
        });
        let validator = jsonschema::validator_for(&root).expect("a valid JSON Schema");
        let errors: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "README example {} {} does not fit the document: {errors:?}\nbody: {body}",
            ex.method,
            ex.path
        );
        // And a misspelt field does not fit either: the schemas are as strict as the server.
        let mut wrong = body.clone();
        wrong["toUser"] = json!("x");
        assert!(
            !validator.is_valid(&wrong),
            "{} accepts an unknown field",
            ex.path
        );
    }
}
