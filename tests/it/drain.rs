//! The graceful drain of an in-process gateway, started through its `DrainHandle` (what SIGTERM
//! does to `wxgate serve`; the cross-process rolling restart is `cluster_drain`).

use std::time::{Duration, Instant};

use wxgate_tests::*;

const TPL: &str = "/v1/apps/oa/messages/template";

#[tokio::test]
async fn drain_fails_readiness_at_once_serves_on_then_stops() {
    let gw = spawn_with_edit(Options::default(), |toml| {
        toml.replacen("[server]\n", "[server]\ndrain_delay_secs = 1\n", 1)
    })
    .await;
    assert_eq!(gw.post(TPL, &template_body()).await.status, 200);
    gw.wait_ready(Duration::from_secs(10)).await;
    let ready = gw
        .request(reqwest::Method::GET, "/readyz", None, None, "")
        .await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.header("connection"), None);

    let started = Instant::now();
    gw.drain.drain();
    assert!(gw.drain.is_draining());
    let ready = gw
        .request(reqwest::Method::GET, "/readyz", None, None, "")
        .await;
    assert_eq!((ready.status, ready.code()), (503, "not_ready"));
    assert!(
        ready.body["message"].as_str().unwrap().contains("draining"),
        "{:?}",
        ready.body
    );
    assert_eq!(ready.body["retryable"], true);
    // Still serving during the drain delay, and telling keep-alive clients to reconnect
    // (elsewhere).
    let r = gw.post(TPL, &template_body()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(started.elapsed() < Duration::from_secs(1));

    let url = gw.url.clone();
    assert!(
        gw.wait_stopped(Duration::from_secs(5)).await,
        "stopped on its own after the drain delay"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before the drain delay"
    );
    let refused = reqwest::Client::new()
        .get(format!("{url}/healthz"))
        .send()
        .await
        .expect_err("no longer listening");
    assert!(refused.is_connect(), "{refused:?}");
}
