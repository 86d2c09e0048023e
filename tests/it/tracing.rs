//! Tracing across services, on the real binary: a request's W3C `traceparent` is joined (its
//! trace id is on every JSON log line of the request, with flat fields), echoed in the response
//! and forwarded to WeChat (the fake records what it received).

use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::Value;
use wxgate_fake_wechat::{FakeConfig, FakeWechat};
use wxgate_protocol::wire::paths::TEMPLATE_SEND;
use wxgate_tests::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// `00-<trace>-<span>-<flags>` split into (trace, span).
fn ids(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!((parts[0], parts[1].len(), parts[2].len()), ("00", 32, 16));
    (parts[1].to_string(), parts[2].to_string())
}

/// The JSON log lines of the process whose `request_id` is `rid`.
fn lines_of(p: &GatewayProcess, rid: &str) -> Vec<Value> {
    p.logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["request_id"] == rid)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_reaches_the_logs_the_response_and_wechat() {
    let fake = FakeWechat::start(
        FakeConfig::demo(),
        TcpListener::bind("127.0.0.1:0").unwrap(),
    )
    .await
    .unwrap();
    let cfg = gateway_toml(&fake.base_url(), 300, "")
        .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:{port}\"");
    let dir = temp_dir("tracing");
    let mut p = GatewayProcess::start_with_env(
        &dir,
        "traced",
        &cfg,
        &[(
            "WXGATE_LOG",
            "info,wxgate_server=debug,wxgate_upstream=debug",
        )],
    );
    p.wait_ready(Duration::from_secs(20)).await;
    let http = reqwest::Client::new();

    // A request in the caller's trace.
    let rid = "traced-request-1";
    let resp = http
        .post(format!("{}/v1/apps/oa/messages/template", p.url))
        .bearer_auth(API_KEY)
        .header("x-request-id", rid)
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .json(&template_body())
        .send()
        .await
        .unwrap();
    let echoed = resp.headers()["traceparent"].to_str().unwrap().to_string();
    let r = Resp::read(resp).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let (trace, request_span) = ids(&echoed);
    assert_eq!(trace, TRACE, "the response joins the caller's trace");
    assert_ne!(
        request_span, PARENT,
        "the request is a new span of that trace"
    );

    // WeChat got the same trace, with the attempt's own span as the parent.
    let sends: Vec<_> = fake
        .state()
        .calls()
        .into_iter()
        .filter(|c| c.path == TEMPLATE_SEND)
        .collect();
    assert_eq!(sends.len(), 1);
    let forwarded = sends[0]
        .traceparent
        .as_deref()
        .expect("traceparent forwarded");
    let (fwd_trace, attempt_span) = ids(forwarded);
    assert_eq!(fwd_trace, TRACE);
    assert!(attempt_span != PARENT && attempt_span != request_span);

    // Every log line of the request carries the trace id, with flat fields.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = lines_of(&p, rid);
    while !lines.iter().any(|l| l["message"] == "request done") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        lines = lines_of(&p, rid);
    }
    assert!(lines.len() >= 2, "{}", p.logs());
    for l in &lines {
        assert_eq!(l["trace_id"], TRACE, "{l}");
    }
    let attempt = lines
        .iter()
        .find(|l| l["span"] == "upstream_attempt")
        .unwrap_or_else(|| panic!("no line of the upstream attempt: {lines:?}"));
    assert_eq!(attempt["span_id"], attempt_span.as_str(), "{attempt}");
    let sent = lines
        .iter()
        .find(|l| l["message"] == "sent")
        .unwrap_or_else(|| panic!("no `sent` line: {lines:?}"));
    assert_eq!(sent["app"], "oa", "{sent}");
    assert_eq!(sent["api"], "template_send", "{sent}");
    assert_eq!(
        sent["msgid"].as_u64().map(|m| m.to_string()),
        r.body["msgid"].as_str().map(str::to_string),
        "{sent}"
    );
    assert!(sent.get("fields").is_none() && sent.get("spans").is_none());

    // A malformed traceparent starts a new trace; it is never an error.
    let resp = http
        .post(format!("{}/v1/apps/oa/messages/template", p.url))
        .bearer_auth(API_KEY)
        .header("x-request-id", "traced-request-2")
        .header("traceparent", format!("00-{TRACE}-0000000000000000-01"))
        .json(&template_body())
        .send()
        .await
        .unwrap();
    let echoed = resp.headers()["traceparent"].to_str().unwrap().to_string();
    assert_eq!(resp.status(), 200);
    let (trace, _) = ids(&echoed);
    assert_ne!(trace, TRACE);

    // A refused send: its line names the code; WeChat's errcode is a flat field when it answers.
    fake.state().add_fault(wxgate_fake_wechat::Fault {
        path: Some(TEMPLATE_SEND.into()),
        appid: None,
        count: 1,
        action: wxgate_fake_wechat::FaultAction::Errcode {
            errcode: 43101,
            errmsg: None,
        },
    });
    let rid = "traced-request-3";
    let resp = http
        .post(format!("{}/v1/apps/oa/messages/template", p.url))
        .bearer_auth(API_KEY)
        .header("x-request-id", rid)
        .json(&template_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let deadline = Instant::now() + Duration::from_secs(10);
    let failed = loop {
        if let Some(l) = lines_of(&p, rid)
            .into_iter()
            .find(|l| l["message"] == "send failed")
        {
            break l;
        }
        assert!(Instant::now() < deadline, "{}", p.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(failed["errcode"], 43101, "{failed}");
    assert_eq!(failed["app"], "oa", "{failed}");
    assert!(failed["trace_id"].as_str().is_some_and(|t| t.len() == 32));
    p.kill();
    fake.stop().await;
}
