//! OTLP export (binary built with `--features otlp`, test crate feature `otlp`): a spawned
//! `wxgate serve` with `[tracing] otlp_endpoint` sends its spans to an in-process OTLP/HTTP
//! receiver; a request with a known `traceparent` shows up as the request span (child of the
//! caller's span), its Redis script calls and its WeChat attempt, all in the caller's trace.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use wxgate_fake_wechat::{FakeConfig, FakeWechat};
use wxgate_protocol::wire::paths::TEMPLATE_SEND;
use wxgate_redis_testkit::{require_redis, RedisServer};
use wxgate_tests::*;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";

/// One received span, ids in hex.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<(String, String)>,
}

impl Received {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

type Spans = Arc<Mutex<Vec<Received>>>;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

/// `POST /v1/traces`: OTLP/HTTP protobuf, as a collector receives it.
async fn receive(body: web::Bytes, spans: web::Data<Spans>) -> HttpResponse {
    let Ok(req) = ExportTraceServiceRequest::decode(body.as_ref()) else {
        return HttpResponse::BadRequest().finish();
    };
    let mut out = spans.lock().unwrap();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(&kv.value))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(Received {
                    service: service.clone(),
                    name: s.name,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    attributes: s
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(&kv.value)))
                        .collect(),
                });
            }
        }
    }
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .body(ExportTraceServiceResponse::default().encode_to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_export_carries_the_callers_trace() {
    require_redis();
    let redis = RedisServer::start();
    let spans: Spans = Arc::default();
    let receiver_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let receiver_url = format!("http://{}", receiver_listener.local_addr().unwrap());
    let data = web::Data::new(spans.clone());
    let receiver = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/v1/traces", web::post().to(receive))
    })
    .workers(1)
    .listen(receiver_listener)
    .unwrap()
    .run();
    let receiver_handle = receiver.handle();
    tokio::spawn(receiver);

    let fake = FakeWechat::start(
        FakeConfig::demo(),
        TcpListener::bind("127.0.0.1:0").unwrap(),
    )
    .await
    .unwrap();
    let extra = format!(
        "{}\n[tracing]\notlp_endpoint = \"{receiver_url}\"\nservice_name = \"wxgate-otlp-test\"\n",
        redis_store_toml(&redis.url(), &unique_prefix(), "")
    );
    let cfg = gateway_toml(&fake.base_url(), 300, &extra)
        .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:{port}\"");
    let dir = temp_dir("otlp");
    let mut p =
        GatewayProcess::start_with_env(&dir, "otlp", &cfg, &[("OTEL_BSP_SCHEDULE_DELAY", "100")]);
    p.wait_ready(Duration::from_secs(20)).await;

    let resp = reqwest::Client::new()
        .post(format!("{}/v1/apps/oa/messages/template", p.url))
        .bearer_auth(API_KEY)
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .json(&template_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", p.logs());
    let echoed = resp.headers()["traceparent"].to_str().unwrap().to_string();
    let request_span = echoed.split('-').nth(2).unwrap().to_string();
    let forwarded = fake
        .state()
        .calls()
        .into_iter()
        .find(|c| c.path == TEMPLATE_SEND)
        .and_then(|c| c.traceparent)
        .expect("traceparent forwarded");
    let attempt_span = forwarded.split('-').nth(2).unwrap().to_string();

    // Wait for the batch: the request, at least one Redis script and the attempt.
    let deadline = Instant::now() + Duration::from_secs(15);
    let ours = loop {
        let ours: Vec<Received> = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == TRACE)
            .cloned()
            .collect();
        let names = |n: &str| ours.iter().any(|s| s.name == n);
        if names("request") && names("upstream_attempt") && names("redis_script") {
            break ours;
        }
        assert!(
            Instant::now() < deadline,
            "spans of the trace: {ours:#?}\nlog:\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let request = ours.iter().find(|s| s.name == "request").unwrap();
    assert_eq!(request.service, "wxgate-otlp-test");
    assert_eq!(request.span_id, request_span, "the span the response names");
    assert_eq!(
        request.parent_span_id, PARENT,
        "a child of the caller's span"
    );
    assert_eq!(request.attr("app"), Some("oa"), "{request:?}");
    assert_eq!(request.attr("status"), Some("200"), "{request:?}");
    let attempt = ours
        .iter()
        .find(|s| s.name == "upstream_attempt" && s.span_id == attempt_span)
        .unwrap_or_else(|| panic!("the forwarded attempt span: {ours:#?}"));
    assert_eq!(attempt.parent_span_id, request_span);
    assert_eq!(attempt.attr("wechat_path"), Some(TEMPLATE_SEND));
    for script in ours.iter().filter(|s| s.name == "redis_script") {
        assert_eq!(script.parent_span_id, request_span, "{script:?}");
        assert!(script.attr("script").is_some(), "{script:?}");
    }
    p.kill();
    receiver_handle.stop(false).await;
    fake.stop().await;
}
