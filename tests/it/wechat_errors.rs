//! Every class of the errcode table, as a caller sees it: status, `code`, `retryable`,
//! `wechat_errcode`, `Retry-After` — and what reached the fake WeChat.

use wxgate_fake_wechat::{demo, FakeConfig, Fault, FaultAction};
use wxgate_protocol::wire::paths;
use wxgate_tests::*;

fn fault(path: &str, errcode: i64, count: u32) -> Fault {
    Fault {
        path: Some(path.to_string()),
        appid: None,
        count,
        action: FaultAction::Errcode {
            errcode,
            errmsg: None,
        },
    }
}

#[track_caller]
fn check(r: &Resp, status: u16, code: &str, retryable: bool, errcode: Option<i64>) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(r.code(), code, "{:?}", r.body);
    assert_eq!(r.body["retryable"], retryable, "{:?}", r.body);
    assert_eq!(r.body["wechat_errcode"].as_i64(), errcode, "{:?}", r.body);
    assert_eq!(r.body["request_id"].as_str(), r.header("x-request-id"));
}

/// An injected errcode on the template send, answered by class.
async fn injected(errcode: i64) -> (TestGateway, Resp) {
    let gw = spawn().await;
    gw.fake_state()
        .add_fault(fault(paths::TEMPLATE_SEND, errcode, 1));
    let r = gw
        .post("/v1/apps/oa/messages/template", &template_body())
        .await;
    (gw, r)
}

#[tokio::test]
async fn token_rejected_once_is_refreshed_and_retried() {
    for errcode in [40001, 42001, 40014] {
        let (gw, r) = injected(errcode).await;
        assert_eq!(r.status, 200, "{errcode}: {:?}", r.body);
        assert_eq!(r.body["attempts"], 2);
        let sends = gw.calls_to(paths::TEMPLATE_SEND);
        assert_eq!(
            sends.iter().map(|c| c.errcode).collect::<Vec<_>>(),
            [errcode, 0]
        );
        assert_eq!(
            gw.oa_calls_to(paths::STABLE_TOKEN).len(),
            2,
            "one refresh after {errcode}"
        );
        gw.stop().await;
    }
}

#[tokio::test]
async fn token_rejected_twice_is_answered_after_one_retry() {
    let gw = spawn().await;
    gw.fake_state()
        .add_fault(fault(paths::TEMPLATE_SEND, 40001, 5));
    let r = gw
        .post("/v1/apps/oa/messages/template", &template_body())
        .await;
    check(&r, 502, "upstream_token_rejected", true, Some(40001));
    assert_eq!(
        gw.calls_to(paths::TEMPLATE_SEND).len(),
        2,
        "exactly one retry"
    );
    gw.stop().await;
}

#[tokio::test]
async fn backoff_class_is_retried_with_the_same_client_msg_id() {
    // One -1: retried after a backoff, same client_msg_id, and it succeeds.
    let (gw, r) = injected(-1).await;
    assert_eq!(
        (r.status, r.body["attempts"].as_u64()),
        (200, Some(2)),
        "{:?}",
        r.body
    );
    let sends = gw.calls_to(paths::TEMPLATE_SEND);
    assert_eq!(sends.iter().map(|c| c.errcode).collect::<Vec<_>>(), [-1, 0]);
    assert!(
        sends[0].client_msg_id.is_some(),
        "the gateway always sets client_msg_id"
    );
    assert_eq!(sends[0].client_msg_id, sends[1].client_msg_id);
    // Busy for longer than the retry budget (3 attempts): a definite, retryable 503.
    gw.fake_state()
        .add_fault(fault(paths::TEMPLATE_SEND, -1, 10));
    let r = gw
        .post("/v1/apps/oa/messages/template", &template_body())
        .await;
    check(&r, 503, "upstream_unavailable", true, Some(-1));
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        gw.calls_to(paths::TEMPLATE_SEND).len(),
        2 + 3,
        "bounded attempts"
    );
    gw.stop().await;
}

#[tokio::test]
async fn backoff_class_is_not_retried_for_subscribe_sends() {
    // subscribe/send has no de-duplication: a -1 may have landed, so it is not resent, and the
    // caller is told the outcome is unknown (not "retry": a repeat could notify twice).
    let gw = spawn().await;
    gw.fake_state()
        .add_fault(fault(paths::SUBSCRIBE_SEND, -1, 1));
    let r = gw
        .post("/v1/apps/mini/messages/subscribe", &mini_subscribe_body())
        .await;
    check(&r, 504, "upstream_outcome_unknown", false, Some(-1));
    assert_eq!(gw.calls_to(paths::SUBSCRIBE_SEND).len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn minute_limit_class() {
    let (gw, r) = injected(45011).await;
    check(&r, 429, "rate_limited", true, Some(45011));
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=61).contains(&secs), "retry next minute: {secs}");
    gw.stop().await;
}

#[tokio::test]
async fn real_minute_limit_of_the_fake() {
    let mut fake = FakeConfig::demo();
    fake.apps[0].limits.template_send_per_minute = 2;
    let gw = spawn_with(Options {
        fake,
        ..Default::default()
    })
    .await;
    // Stay clear of a minute boundary on the fake's clock so three sends share one minute.
    let now = gw.fake_state().now_ms();
    if now % 60_000 > 50_000 {
        gw.fake_state()
            .advance_clock(std::time::Duration::from_millis(60_000 - now % 60_000));
    }
    for _ in 0..2 {
        assert_eq!(
            gw.post("/v1/apps/oa/messages/template", &template_body())
                .await
                .status,
            200
        );
    }
    let r = gw
        .post("/v1/apps/oa/messages/template", &template_body())
        .await;
    check(&r, 429, "rate_limited", true, Some(45011));
    gw.stop().await;
}

#[tokio::test]
async fn daily_quota_class() {
    let (gw, r) = injected(45009).await;
    check(&r, 429, "quota_exhausted", true, Some(45009));
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=86_401).contains(&secs));
    assert!(r.body["message"]
        .as_str()
        .unwrap()
        .contains("00:00 Beijing time"));
    gw.stop().await;
}

#[tokio::test]
async fn caller_class_from_real_fake_checks() {
    let gw = spawn().await;
    // Unknown openid: 40003.
    let mut body = template_body();
    body["touser"] = "o-nobody".into();
    let r = gw.post("/v1/apps/oa/messages/template", &body).await;
    check(&r, 422, "rejected_by_wechat", false, Some(40003));
    // A data key the template does not have: WeChat's 47003.
    let mut body = template_body();
    body["data"]["thing9"] = serde_json::json!({"value": "extra"});
    let r = gw.post("/v1/apps/oa/messages/template", &body).await;
    check(&r, 422, "rejected_by_wechat", false, Some(47003));
    gw.stop().await;

    // A Mini Program user with one one-time grant: the second send is 43101, never retried.
    let mut cfg = FakeConfig::demo();
    cfg.apps[1].users[0].long_term.clear();
    cfg.apps[1].users[0]
        .subscriptions
        .insert(demo::MINI_SUBSCRIBE_TEMPLATE_ID.into(), 1);
    let gw = spawn_with(Options {
        fake: cfg,
        ..Default::default()
    })
    .await;
    let ok = gw
        .post("/v1/apps/mini/messages/subscribe", &mini_subscribe_body())
        .await;
    assert_eq!(ok.status, 200, "the one grant is used");
    let r = gw
        .post("/v1/apps/mini/messages/subscribe", &mini_subscribe_body())
        .await;
    check(&r, 422, "rejected_by_wechat", false, Some(43101));
    assert_eq!(
        gw.calls_to(paths::SUBSCRIBE_SEND).len(),
        2,
        "43101 is not retried"
    );
    gw.stop().await;
}

#[tokio::test]
async fn config_class() {
    let gw = spawn().await;
    let mut body = template_body();
    body["template_id"] = "no-such-template".into();
    let r = gw.post("/v1/apps/oa/messages/template", &body).await;
    check(&r, 502, "app_misconfigured", false, Some(40037));
    gw.fake_state()
        .add_fault(fault(paths::TEMPLATE_SEND, 48001, 1));
    let r = gw
        .post("/v1/apps/oa/messages/template", &template_body())
        .await;
    check(&r, 502, "app_misconfigured", false, Some(48001));
    gw.stop().await;
}

#[tokio::test]
async fn wrong_secret_is_a_config_fault_and_nothing_is_sent() {
    let gw = spawn_with(Options {
        oa_secret_override: Some("wrong".into()),
        ..Default::default()
    })
    .await;
    let r = gw
        .post("/v1/apps/oa/messages/template", &template_body())
        .await;
    check(&r, 502, "app_misconfigured", false, Some(40125));
    assert!(gw.calls_to(paths::TEMPLATE_SEND).is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn unclassified_errcode() {
    let (gw, r) = injected(99_999).await;
    check(&r, 502, "upstream_error", false, Some(99_999));
    gw.stop().await;
}

#[tokio::test]
async fn dropped_connection_is_outcome_unknown_never_minus_one() {
    let gw = spawn().await;
    let drop = |path: &str, count| Fault {
        path: Some(path.into()),
        appid: None,
        count,
        action: FaultAction::Drop,
    };
    // A template send carries a client_msg_id: a dropped connection is retried safely.
    gw.fake_state().add_fault(drop(paths::TEMPLATE_SEND, 1));
    let r = gw
        .post("/v1/apps/oa/messages/template", &template_body())
        .await;
    assert_eq!(
        (r.status, r.body["attempts"].as_u64()),
        (200, Some(2)),
        "{:?}",
        r.body
    );
    // Dropped every time: after the bounded attempts, an unknown outcome (never -1), which
    // the caller may retry because WeChat de-duplicates it.
    gw.fake_state().add_fault(drop(paths::TEMPLATE_SEND, 10));
    let r = gw
        .post("/v1/apps/oa/messages/template", &template_body())
        .await;
    check(&r, 504, "upstream_outcome_unknown", true, None);
    assert_eq!(gw.calls_to(paths::TEMPLATE_SEND).len(), 2 + 3);
    gw.fake_state().clear_faults();

    // A subscribe send has no de-duplication: never retried blindly, not retryable.
    gw.fake_state().add_fault(drop(paths::SUBSCRIBE_SEND, 1));
    let r = gw
        .post("/v1/apps/mini/messages/subscribe", &mini_subscribe_body())
        .await;
    check(&r, 504, "upstream_outcome_unknown", false, None);
    assert_eq!(
        gw.calls_to(paths::SUBSCRIBE_SEND).len(),
        1,
        "never retried blindly"
    );
    gw.stop().await;
}

#[tokio::test]
async fn unreachable_wechat_is_503_and_retryable() {
    let port = free_port();
    let gw = spawn_with(Options {
        upstream_override: Some(format!("http://127.0.0.1:{port}")),
        ..Default::default()
    })
    .await;
    let r = gw
        .post("/v1/apps/oa/messages/template", &template_body())
        .await;
    check(&r, 503, "token_unavailable", true, None);
    gw.stop().await;
}
