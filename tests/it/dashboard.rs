//! The Grafana dashboard shipped in the chart (helm/wxgate/dashboards/wxgate.json): it parses,
//! and every metric its queries name is in a `/metrics` scrape after traffic that produces
//! each kind of series (sends, a WeChat errcode and the pause it sets, sampled gauges, a state
//! loss and Redis errors).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use wxgate_fake_wechat::{demo, FakeConfig, Fault, FaultAction};
use wxgate_protocol::wire::paths;
use wxgate_redis_testkit::{require_redis, RedisServer};
use wxgate_tests::*;

const TPL: &str = "/v1/apps/oa/messages/template";

/// Every `wxgate_*` metric named in a panel's query.
fn dashboard_metrics() -> BTreeSet<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../helm/wxgate/dashboards/wxgate.json"
    );
    let d: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .expect("the dashboard is JSON");
    assert_eq!(d["uid"], "wxgate");
    let mut names = BTreeSet::new();
    let mut exprs = 0;
    for panel in d["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("a target with an expr");
            exprs += 1;
            let mut rest = expr;
            while let Some(i) = rest.find("wxgate_") {
                let tail = &rest[i..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                names.insert(tail[..end].to_string());
                rest = &tail[end..];
            }
        }
    }
    assert!(exprs >= 10, "{exprs} queries");
    names
}

async fn scrape(gw: &TestGateway) -> String {
    gw.http
        .get(format!("{}/metrics", gw.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn has_sample(scrape: &str, name: &str) -> bool {
    scrape.lines().any(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_name_only_metrics_that_exist() {
    let names = dashboard_metrics();
    require_redis();
    let mut redis = RedisServer::start();
    let mut fake = FakeConfig::demo();
    fake.apps[0].accept_any_openid = true;
    let gw = spawn_with(Options {
        fake,
        extra_toml: redis_store_toml(&redis.url(), &unique_prefix(), "")
            + "[apps.oa.limits]\ntemplate_send = [{ limit = 100, window_ms = 60000 }]\n",
        ..Default::default()
    })
    .await;
    gw.wait_ready(Duration::from_secs(10)).await;
    for i in 0..3 {
        let mut b = template_body();
        b["touser"] = format!("o-dash-{i}").into();
        assert_eq!(gw.post(TPL, &b).await.status, 200);
    }
    // A WeChat errcode, the pause it sets, and a send the pause refuses.
    gw.fake.state().add_fault(Fault {
        path: Some(paths::TEMPLATE_SEND.into()),
        appid: Some(demo::OA_APPID.into()),
        count: 1,
        action: FaultAction::Errcode {
            errcode: 45009,
            errmsg: None,
        },
    });
    assert_eq!(gw.post(TPL, &template_body()).await.status, 429);
    assert_eq!(gw.post(TPL, &template_body()).await.status, 429);
    // The sampled gauges (every 2 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !has_sample(&scrape(&gw).await, "wxgate_window_utilisation_ratio") {
        assert!(tokio::time::Instant::now() < deadline, "no sampled gauges");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A state loss: Redis forgets everything; the next send finds it.
    redis.cli(&["FLUSHALL"]);
    gw.post(TPL, &template_body()).await;
    // Redis errors: Redis goes away.
    redis.stop();
    assert_eq!(gw.post(TPL, &template_body()).await.status, 503);

    let s = scrape(&gw).await;
    let missing: Vec<&String> = names.iter().filter(|n| !has_sample(&s, n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard names metrics the scrape lacks: {missing:?}\n{s}"
    );
    gw.stop().await;
}
