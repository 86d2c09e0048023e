//! The three send APIs, end to end: the gateway answers, and the fake WeChat shows exactly what
//! arrived.

use wxgate_fake_wechat::demo;
use wxgate_protocol::wire::paths;
use wxgate_tests::*;

#[tokio::test]
async fn template_send_returns_wechat_msgid() {
    let gw = spawn().await;
    let mut body = template_body();
    body["url"] = "https://example.com/orders/42".into();
    body["client_msg_id"] = "order-42-shipped".into();
    let r = gw.post("/v1/apps/oa/messages/template", &body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "sent");
    let msgid: u64 = r.body["msgid"]
        .as_str()
        .expect("msgid is a string")
        .parse()
        .unwrap();
    assert!(msgid > 1 << 53, "64-bit msgid {msgid}");
    let rid = r.header("x-request-id").expect("request id header");
    assert_eq!(r.body["request_id"], rid);

    let sends = gw.calls_to(paths::TEMPLATE_SEND);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].errcode, 0);
    assert_eq!(sends[0].msgid, Some(msgid));
    assert_eq!(sends[0].appid.as_deref(), Some(demo::OA_APPID));
    assert_eq!(sends[0].touser.as_deref(), Some(demo::USER_OPENID));
    assert_eq!(sends[0].client_msg_id.as_deref(), Some("order-42-shipped"));
    assert_eq!(
        gw.oa_calls_to(paths::STABLE_TOKEN).len(),
        1,
        "stable_token is the default mode"
    );
    gw.stop().await;
}

#[tokio::test]
async fn mini_program_subscribe_send() {
    let gw = spawn().await;
    let r = gw
        .post("/v1/apps/mini/messages/subscribe", &mini_subscribe_body())
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "sent");
    assert!(r.body.get("msgid").is_none(), "subscribe/send has no msgid");
    let sends = gw.calls_to(paths::SUBSCRIBE_SEND);
    assert_eq!(sends.len(), 1);
    assert_eq!(
        (sends[0].errcode, sends[0].appid.as_deref()),
        (0, Some(demo::MINI_APPID))
    );
    assert!(gw.calls_to(paths::SUBSCRIBE_BIZSEND).is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn official_account_subscribe_goes_to_bizsend() {
    let gw = spawn().await;
    let r = gw
        .post("/v1/apps/oa/messages/subscribe", &oa_subscribe_body())
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let sends = gw.calls_to(paths::SUBSCRIBE_BIZSEND);
    assert_eq!(sends.len(), 1);
    assert_eq!(
        (sends[0].errcode, sends[0].appid.as_deref()),
        (0, Some(demo::OA_APPID))
    );
    assert!(gw.calls_to(paths::SUBSCRIBE_SEND).is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn caller_request_id_is_kept() {
    let gw = spawn().await;
    let resp = gw
        .http
        .post(format!("{}/v1/apps/oa/messages/template", gw.url))
        .bearer_auth(API_KEY)
        .header("x-request-id", "caller-trace-123")
        .json(&template_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "caller-trace-123");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["request_id"], "caller-trace-123");
    gw.stop().await;
}

#[tokio::test]
async fn concurrent_first_sends_fetch_one_token() {
    let gw = spawn().await;
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let http = gw.http.clone();
        let url = format!("{}/v1/apps/oa/messages/template", gw.url);
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .bearer_auth(API_KEY)
                .json(&template_body())
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(gw.calls_to(paths::TEMPLATE_SEND).len(), 40);
    assert_eq!(
        gw.oa_calls_to(paths::STABLE_TOKEN).len(),
        1,
        "the refresh is single-flight"
    );
    gw.stop().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let gw = spawn().await;
    let r = gw
        .request(reqwest::Method::GET, "/healthz", None, None, "")
        .await;
    assert_eq!((r.status, r.body["status"].as_str()), (200, Some("ok")));
    // Ready once the store answers and every required app has a token: the refresher fetches
    // them at start-up, one per app.
    let mut r = gw
        .request(reqwest::Method::GET, "/readyz", None, None, "")
        .await;
    for _ in 0..100 {
        if r.status == 200 {
            break;
        }
        assert_eq!(r.code(), "not_ready");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        r = gw
            .request(reqwest::Method::GET, "/readyz", None, None, "")
            .await;
    }
    assert_eq!(
        (r.status, r.body["store"].as_str()),
        (200, Some("memory")),
        "{:?}",
        r.body
    );
    assert_eq!(
        gw.calls_to(wxgate_protocol::wire::paths::STABLE_TOKEN)
            .len(),
        2,
        "one per app"
    );
    assert!(gw
        .calls()
        .iter()
        .all(|c| !c.path.starts_with("/cgi-bin/message")));
    gw.stop().await;
}

#[tokio::test]
async fn not_ready_without_a_token() {
    // Wrong secret: no token can be had, so the node never turns ready.
    let gw = spawn_with(Options {
        oa_secret_override: Some("wrong".into()),
        ..Default::default()
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = gw
        .request(reqwest::Method::GET, "/readyz", None, None, "")
        .await;
    assert_eq!((r.status, r.code()), (503, "not_ready"), "{:?}", r.body);
    assert!(
        r.body["message"].as_str().unwrap().contains("oa"),
        "{:?}",
        r.body
    );
    // The refresher backs off: a handful of attempts, not one per 50 ms tick.
    let attempts = gw
        .oa_calls_to(wxgate_protocol::wire::paths::STABLE_TOKEN)
        .len();
    assert!(
        (1..=4).contains(&attempts),
        "{attempts} token calls in 300 ms"
    );
    gw.stop().await;
}

/// `wxgate_http_requests_total` labels each answer with the pattern of the route it matched
/// (never the raw path), `unmatched` when no route matched; a method a route does not serve is
/// counted under that route.
#[tokio::test]
async fn http_requests_are_counted_by_route_pattern() {
    let gw = spawn().await;
    for _ in 0..2 {
        let r = gw
            .post("/v1/apps/oa/messages/template", &template_body())
            .await;
        assert_eq!(r.status, 200);
    }
    let get = |path: &str| gw.http.get(format!("{}{path}", gw.url)).send();
    assert_eq!(get("/no/such/path").await.unwrap().status(), 404);
    assert_eq!(
        get("/v1/apps/oa/messages/template").await.unwrap().status(),
        405
    );
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    let text = get("/metrics").await.unwrap().text().await.unwrap();
    for line in [
        r#"wxgate_http_requests_total{route="/v1/apps/{app}/messages/template",method="POST",status="200"} 2"#,
        r#"wxgate_http_requests_total{route="/v1/apps/{app}/messages/template",method="GET",status="405"} 1"#,
        r#"wxgate_http_requests_total{route="unmatched",method="GET",status="404"} 1"#,
        r#"wxgate_http_requests_total{route="/healthz",method="GET",status="200"} 1"#,
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    assert!(
        !text.contains("/v1/apps/oa/"),
        "a raw path in a label:\n{text}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn metrics_count_outcomes_and_wechat_errcodes_by_class() {
    let gw = spawn().await;
    assert_eq!(
        gw.post("/v1/apps/oa/messages/template", &template_body())
            .await
            .status,
        200
    );
    let mut bad = template_body();
    bad["template_id"] = "no-such-template".into();
    assert_eq!(
        gw.post("/v1/apps/oa/messages/template", &bad).await.status,
        502
    );
    let r = gw
        .http
        .get(format!("{}/metrics", gw.url))
        .send()
        .await
        .unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = r.text().await.unwrap();
    for line in [
        r#"wxgate_sends_total{app="oa",api="template_send",outcome="sent"} 1"#,
        r#"wxgate_sends_total{app="oa",api="template_send",outcome="app_misconfigured"} 1"#,
        r#"wxgate_wechat_errors_total{app="oa",api="template_send",errcode="40037",class="config"} 1"#,
        r#"wxgate_upstream_attempts_total{app="oa",api="template_send"} 2"#,
        r#"wxgate_permits_total{app="oa",api="template_send",decision="granted"} 2"#,
        r#"wxgate_send_duration_seconds_count{app="oa",api="template_send"} 2"#,
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    assert!(
        text.contains(r#"wxgate_token_fetches_total{app="oa",outcome="ok"}"#),
        "{text}"
    );
    // No secret, token or recipient in the metrics.
    let token = gw.oa_calls_to(wxgate_protocol::wire::paths::STABLE_TOKEN)[0]
        .access_token
        .clone()
        .unwrap();
    for secret in [
        token.as_str(),
        wxgate_fake_wechat::demo::OA_SECRET,
        wxgate_fake_wechat::demo::USER_OPENID,
    ] {
        assert!(!text.contains(secret), "{secret} leaked into the metrics");
    }
    gw.stop().await;
}
