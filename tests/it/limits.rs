//! Sending under configured limits, in one gateway: windows, per-recipient limits, daily
//! quotas, `Prefer: wait`, idempotency keys and the template registry. Counted at the fake.

use std::time::{Duration, Instant};

use serde_json::json;
use wxgate_fake_wechat::{demo, Fault, FaultAction};
use wxgate_protocol::wire::paths;
use wxgate_tests::*;

const TPL: &str = "/v1/apps/oa/messages/template";

fn to(user: &str) -> serde_json::Value {
    let mut b = template_body();
    b["touser"] = user.into();
    b
}

async fn post_with(gw: &TestGateway, body: &serde_json::Value, headers: &[(&str, &str)]) -> Resp {
    let mut req = gw
        .http
        .post(format!("{}{TPL}", gw.url))
        .bearer_auth(API_KEY)
        .json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json().await.unwrap();
    Resp {
        status,
        headers,
        body,
    }
}

fn limited(extra_app: &str) -> Options {
    let mut fake = wxgate_fake_wechat::FakeConfig::demo();
    fake.apps[0].accept_any_openid = true;
    Options {
        fake,
        extra_toml: format!("[limits]\nguard_ms = 50\n{extra_app}"),
        ..Default::default()
    }
}

#[tokio::test]
async fn app_window_answers_429_then_waits_when_asked() {
    let gw = spawn_with(limited(
        "[apps.oa.limits]\ntemplate_send = [{ limit = 3, window_ms = 1500 }]",
    ))
    .await;
    for i in 0..3 {
        assert_eq!(gw.post(TPL, &to(&format!("o-user-{i}"))).await.status, 200);
    }
    let r = gw.post(TPL, &to("o-user-9")).await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"), "{:?}", r.body);
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&secs), "{secs}");
    assert_eq!(
        gw.calls_to(paths::TEMPLATE_SEND).len(),
        3,
        "the refused send never reached WeChat"
    );
    // The same request, willing to wait: it gets the permit when the window frees up.
    let t = Instant::now();
    let r = post_with(&gw, &to("o-user-9"), &[("Prefer", "wait=5")]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(t.elapsed() >= Duration::from_millis(200), "it waited");
    // Never more than 3 in any 1.5 s at the fake.
    let times: Vec<u64> = gw
        .calls_to(paths::TEMPLATE_SEND)
        .iter()
        .map(|c| c.at_ms)
        .collect();
    for w in times.windows(4) {
        assert!(w[3] - w[0] >= 1_500, "{times:?}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn per_recipient_limit() {
    let gw = spawn_with(limited(
        "[apps.oa.limits]\nper_recipient = [{ limit = 2, window_ms = 60000 }]",
    ))
    .await;
    assert_eq!(gw.post(TPL, &to("o-alice")).await.status, 200);
    assert_eq!(gw.post(TPL, &to("o-alice")).await.status, 200);
    let r = gw.post(TPL, &to("o-alice")).await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"));
    assert!(
        r.body["message"].as_str().unwrap().contains("recipient"),
        "{:?}",
        r.body
    );
    assert_eq!(
        gw.post(TPL, &to("o-bob")).await.status,
        200,
        "another recipient is not limited"
    );
    gw.stop().await;
}

#[tokio::test]
async fn daily_quota_stops_at_exactly_the_quota() {
    let gw = spawn_with(limited("[apps.oa.quotas]\ntemplate_send = 4")).await;
    for i in 0..4 {
        assert_eq!(gw.post(TPL, &to(&format!("o-q-{i}"))).await.status, 200);
    }
    for _ in 0..3 {
        let r = gw.post(TPL, &to("o-q-9")).await;
        assert_eq!(
            (r.status, r.code()),
            (429, "quota_exhausted"),
            "{:?}",
            r.body
        );
        assert!(
            r.body["message"].as_str().unwrap().contains("T16:00:00Z"),
            "reset at 00:00 Beijing: {:?}",
            r.body
        );
        let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!(secs <= 86_400);
    }
    assert_eq!(gw.calls_to(paths::TEMPLATE_SEND).len(), 4);
    // Waiting does not help against a quota: it fails fast.
    let t = Instant::now();
    let r = post_with(&gw, &to("o-q-9"), &[("Prefer", "wait=5")]).await;
    assert_eq!(r.code(), "quota_exhausted");
    assert!(t.elapsed() < Duration::from_secs(1));
    gw.stop().await;
}

#[tokio::test]
async fn every_retry_takes_a_permit() {
    // Limit 2 per minute; the first send needs a retry (-1): both attempts count.
    let gw = spawn_with(limited(
        "[apps.oa.limits]\ntemplate_send = [{ limit = 2, window_ms = 60000 }]",
    ))
    .await;
    gw.fake_state().add_fault(Fault {
        path: Some(paths::TEMPLATE_SEND.into()),
        appid: None,
        count: 1,
        action: FaultAction::Errcode {
            errcode: -1,
            errmsg: None,
        },
    });
    let r = gw.post(TPL, &to("o-a")).await;
    assert_eq!((r.status, r.body["attempts"].as_u64()), (200, Some(2)));
    let r = gw.post(TPL, &to("o-b")).await;
    assert_eq!(r.code(), "rate_limited", "the retry used the second permit");
    assert_eq!(gw.calls_to(paths::TEMPLATE_SEND).len(), 2);
    gw.stop().await;
}

#[tokio::test]
async fn idempotency_key_replays_the_first_answer() {
    let gw = spawn().await;
    let key = [("Idempotency-Key", "order-42-shipped")];
    let first = post_with(&gw, &template_body(), &key).await;
    assert_eq!(first.status, 200);
    let again = post_with(&gw, &template_body(), &key).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["msgid"], first.body["msgid"]);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        gw.calls_to(paths::TEMPLATE_SEND).len(),
        1,
        "no second upstream call"
    );
    // The derived client_msg_id is stable: the same on every replica for the same key.
    let cmid = gw.calls_to(paths::TEMPLATE_SEND)[0]
        .client_msg_id
        .clone()
        .unwrap();
    assert!(cmid.starts_with("wxg-"), "{cmid}");
    // A body client_msg_id works as the key too.
    let mut b = template_body();
    b["client_msg_id"] = "cm-1".into();
    let a = gw.post(TPL, &b).await;
    let c = gw.post(TPL, &b).await;
    assert_eq!(
        (a.body["msgid"].clone(), c.header("idempotent-replayed")),
        (c.body["msgid"].clone(), Some("true"))
    );
    assert_eq!(gw.calls_to(paths::TEMPLATE_SEND).len(), 2);
    // A definite refusal is replayed as well.
    let mut nobody = template_body();
    nobody["touser"] = "o-nobody".into();
    let r1 = post_with(&gw, &nobody, &[("Idempotency-Key", "k-nobody")]).await;
    let r2 = post_with(&gw, &nobody, &[("Idempotency-Key", "k-nobody")]).await;
    assert_eq!((r1.status, r2.status), (422, 422));
    assert_eq!(r2.body["wechat_errcode"], 40003);
    assert_eq!(gw.calls_to(paths::TEMPLATE_SEND).len(), 3);
    // A malformed key is a 400 naming the header.
    let r = post_with(&gw, &template_body(), &[("Idempotency-Key", "has space")]).await;
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (400, Some("Idempotency-Key"))
    );
    gw.stop().await;
}

#[tokio::test]
async fn concurrent_duplicate_gets_409() {
    let gw = spawn().await;
    gw.fake_state().add_fault(Fault {
        path: Some(paths::SUBSCRIBE_SEND.into()),
        appid: None,
        count: 1,
        action: FaultAction::Latency { ms: 600 },
    });
    let send = |gw: &TestGateway| {
        let req = gw
            .http
            .post(format!("{}/v1/apps/mini/messages/subscribe", gw.url))
            .bearer_auth(API_KEY)
            .header("Idempotency-Key", "appointment-7-reminder")
            .json(&mini_subscribe_body());
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let first = tokio::spawn(send(&gw));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        send(&gw).await,
        409,
        "a duplicate while the first is in flight"
    );
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(send(&gw).await, 200, "replayed");
    assert_eq!(
        gw.calls_to(paths::SUBSCRIBE_SEND).len(),
        1,
        "the user got one message"
    );
    gw.stop().await;
}

#[tokio::test]
async fn registered_templates_by_alias_with_their_fields() {
    let registry = format!(
        "[apps.oa.templates.shipped]\nkind = \"template\"\nid = \"{}\"\n[apps.oa.limits]\ntemplate_send = [{{ limit = 1, window_ms = 60000 }}]",
        demo::OA_TEMPLATE_ID
    );
    let gw = spawn_with(Options {
        extra_toml: registry,
        oa_extra: "strict_templates = true".into(),
        ..Default::default()
    })
    .await;
    // Malformed data for a registered template: 422 before any permit or upstream call. The
    // fields came from WeChat's template list at start-up; wait for that check.
    let mut missing = template_body();
    missing["template_id"] = "shipped".into();
    missing["data"].as_object_mut().unwrap().remove("time3");
    let r = gw.post(TPL, &missing).await;
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (422, Some("data.time3")),
        "{:?}",
        r.body
    );
    let mut extra = template_body();
    extra["template_id"] = "shipped".into();
    extra["data"]["thing7"] = json!({"value": "x"});
    let r = gw.post(TPL, &extra).await;
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (422, Some("data.thing7"))
    );
    let mut unknown = template_body();
    unknown["template_id"] = "tmpl-not-registered".into();
    let r = gw.post(TPL, &unknown).await;
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (422, Some("template_id"))
    );
    assert!(
        gw.calls_to(paths::TEMPLATE_SEND).is_empty(),
        "nothing reached WeChat"
    );
    // By alias, with the right fields: sent with the real id — and it was the one permit.
    let mut ok = template_body();
    ok["template_id"] = "shipped".into();
    assert_eq!(
        gw.post(TPL, &ok).await.status,
        200,
        "no permit was used by the refused ones"
    );
    assert_eq!(
        gw.calls_to(paths::TEMPLATE_SEND)[0].template_id.as_deref(),
        Some(demo::OA_TEMPLATE_ID)
    );
    // The lists were fetched once and cached.
    assert_eq!(gw.calls_to(paths::GET_ALL_PRIVATE_TEMPLATE).len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_registered_id_wechat_does_not_list_makes_the_node_unready() {
    let gw = spawn_with(Options {
        extra_toml:
            "[apps.oa.templates.gone]\nkind = \"template\"\nid = \"tmpl-deleted-in-wechat\"".into(),
        ..Default::default()
    })
    .await;
    let mut r = gw
        .request(reqwest::Method::GET, "/readyz", None, None, "")
        .await;
    for _ in 0..100 {
        if r.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("template registry"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        r = gw
            .request(reqwest::Method::GET, "/readyz", None, None, "")
            .await;
    }
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("tmpl-deleted-in-wechat"),
        "{:?}",
        r.body
    );
    gw.stop().await;
}
