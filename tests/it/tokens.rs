//! The access_token in use: fetched once, refreshed ahead of expiry, and recovered with one
//! refresh and one retry when WeChat rejects it. Time is moved by hand on both clocks (the
//! gateway's and the fake's), never slept.

use std::collections::HashSet;
use std::time::Duration;

use wxgate_fake_wechat::{demo, FakeConfig};
use wxgate_protocol::wire::paths;
use wxgate_tests::*;

fn short_lived(expires_in_secs: u64, rotate_before_secs: u64) -> FakeConfig {
    let mut fake = FakeConfig::demo();
    fake.expires_in_secs = expires_in_secs;
    fake.stable_rotate_before_secs = rotate_before_secs;
    fake
}

async fn send_ok(gw: &TestGateway) -> Resp {
    let r = gw
        .post("/v1/apps/oa/messages/template", &template_body())
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r
}

#[tokio::test]
async fn token_expiring_during_use_is_refreshed_and_the_send_retried() {
    // The gateway keeps its token to the end (refresh_ahead 0) and the fake's clock passes the
    // expiry: WeChat answers 42001, the gateway refreshes once and retries once.
    let gw = spawn_with(Options {
        fake: short_lived(60, 10),
        refresh_ahead_secs: 0,
        ..Default::default()
    })
    .await;
    send_ok(&gw).await;
    gw.fake_state().advance_clock(Duration::from_secs(61));
    let r = send_ok(&gw).await;
    assert_eq!(r.body["attempts"], 2);

    let sends = gw.calls_to(paths::TEMPLATE_SEND);
    assert_eq!(
        sends.iter().map(|c| c.errcode).collect::<Vec<_>>(),
        [0, 42001, 0]
    );
    let tokens = gw.oa_calls_to(paths::STABLE_TOKEN);
    assert_eq!(tokens.len(), 2, "one refresh");
    assert_ne!(tokens[0].access_token, tokens[1].access_token);
    assert_eq!(
        sends[2].access_token, tokens[1].access_token,
        "the retry used the new token"
    );
    gw.stop().await;
}

#[tokio::test]
async fn token_is_refreshed_ahead_of_expiry_over_several_lifetimes() {
    // 60 s tokens; WeChat rotates in the last 30 s; the gateway refreshes 30 s ahead. Both
    // clocks move by hand, 40 s at a time.
    let gw = spawn_with(Options {
        fake: short_lived(60, 30),
        refresh_ahead_secs: 30,
        ..Default::default()
    })
    .await;
    for _ in 0..3 {
        send_ok(&gw).await;
    }
    for lifetime in 0..5 {
        gw.fake_state().advance_clock(Duration::from_secs(40));
        gw.clock.advance_ms(40_000);
        // The token is now due: the node's background refresher (the leader) renews it
        // within a tick, before any caller needs it.
        let want = lifetime + 2;
        for _ in 0..200 {
            if gw.oa_calls_to(paths::STABLE_TOKEN).len() >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            gw.oa_calls_to(paths::STABLE_TOKEN).len(),
            want,
            "refreshed ahead"
        );
        for _ in 0..3 {
            let r = send_ok(&gw).await;
            assert_eq!(r.body["attempts"], 1, "no send waits for a rejected token");
        }
    }
    let sends = gw.calls_to(paths::TEMPLATE_SEND);
    assert_eq!(sends.len(), 18);
    assert!(
        sends.iter().all(|c| c.errcode == 0),
        "no 40001/42001 reached the caller or WeChat"
    );
    let fetches = gw.oa_calls_to(paths::STABLE_TOKEN);
    assert_eq!(fetches.len(), 6, "one fetch per token lifetime");
    let distinct: HashSet<_> = fetches.iter().map(|c| c.access_token.clone()).collect();
    assert_eq!(distinct.len(), 6, "each refresh got a new token");
    gw.stop().await;
}

#[tokio::test]
async fn token_invalidated_behind_the_gateways_back() {
    let gw = spawn().await;
    send_ok(&gw).await;
    gw.fake_state().invalidate_tokens(demo::OA_APPID);
    let r = send_ok(&gw).await;
    assert_eq!(r.body["attempts"], 2);
    send_ok(&gw).await;
    let sends = gw.calls_to(paths::TEMPLATE_SEND);
    assert_eq!(
        sends.iter().map(|c| c.errcode).collect::<Vec<_>>(),
        [0, 40001, 0, 0]
    );
    assert_eq!(
        gw.oa_calls_to(paths::STABLE_TOKEN).len(),
        2,
        "exactly one refresh"
    );
    gw.stop().await;
}

#[tokio::test]
async fn classic_mode_uses_cgi_bin_token_once() {
    let gw = spawn_with(Options {
        oa_token_mode: Some("classic"),
        ..Default::default()
    })
    .await;
    for _ in 0..5 {
        send_ok(&gw).await;
    }
    assert_eq!(gw.oa_calls_to(paths::TOKEN).len(), 1);
    assert!(gw.oa_calls_to(paths::STABLE_TOKEN).is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn tokens_never_reach_the_caller() {
    let gw = spawn().await;
    send_ok(&gw).await;
    let token = gw.oa_calls_to(paths::STABLE_TOKEN)[0]
        .access_token
        .clone()
        .unwrap();
    gw.fake_state().add_fault(wxgate_fake_wechat::Fault {
        path: Some(paths::TEMPLATE_SEND.into()),
        appid: None,
        count: 2,
        action: wxgate_fake_wechat::FaultAction::Errcode {
            errcode: 40001,
            errmsg: None,
        },
    });
    let r = gw
        .post("/v1/apps/oa/messages/template", &template_body())
        .await;
    assert_eq!(r.status, 502);
    let text = r.body.to_string();
    assert!(!text.contains(&token), "{text}");
    assert!(!text.contains(demo::OA_SECRET), "{text}");
    gw.stop().await;
}

#[tokio::test]
async fn central_token_api_hands_out_the_clusters_token() {
    let gw = spawn().await;
    let r = gw
        .request(
            reqwest::Method::GET,
            "/v1/apps/oa/access_token",
            Some(API_KEY),
            None,
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let fetched = gw.oa_calls_to(paths::STABLE_TOKEN);
    assert_eq!(fetched.len(), 1);
    assert_eq!(
        r.body["access_token"].as_str(),
        fetched[0].access_token.as_deref()
    );
    let expires_in = r.body["expires_in"].as_u64().unwrap();
    assert!((7_100..=7_200).contains(&expires_in), "{expires_in}");
    // A key without the `token` scope may send but not read tokens.
    let r = gw
        .request(
            reqwest::Method::GET,
            "/v1/apps/oa/access_token",
            Some(OA_ONLY_KEY),
            None,
            "",
        )
        .await;
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{:?}", r.body);
    assert!(!r
        .body
        .to_string()
        .contains(fetched[0].access_token.as_deref().unwrap()));
    gw.stop().await;
}

#[tokio::test]
async fn token_api_invalidate_triggers_one_refresh() {
    let gw = spawn().await;
    let get = |gw: &TestGateway| {
        let http = gw.http.clone();
        let url = format!("{}/v1/apps/oa/access_token", gw.url);
        async move {
            let v: serde_json::Value = http
                .get(url)
                .bearer_auth(API_KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["access_token"].as_str().unwrap().to_string()
        }
    };
    let old = get(&gw).await;
    // Another service found the token bad (WeChat said 40001) and reports it, twice at once.
    gw.fake_state().invalidate_tokens(demo::OA_APPID);
    let report = serde_json::json!({ "access_token": old }).to_string();
    let (a, b) = tokio::join!(
        gw.request(
            reqwest::Method::POST,
            "/v1/apps/oa/access_token/invalidate",
            Some(API_KEY),
            Some(report.clone()),
            "application/json"
        ),
        gw.request(
            reqwest::Method::POST,
            "/v1/apps/oa/access_token/invalidate",
            Some(API_KEY),
            Some(report.clone()),
            "application/json"
        ),
    );
    assert_eq!(
        (a.status, b.status),
        (200, 200),
        "{:?} {:?}",
        a.body,
        b.body
    );
    let invalidated = [&a, &b]
        .iter()
        .filter(|r| r.body["invalidated"] == true)
        .count();
    assert_eq!(
        invalidated, 1,
        "compare-and-delete: only one report matched"
    );
    let new = a.body["access_token"].as_str().unwrap();
    assert_ne!(new, old);
    assert_eq!(b.body["access_token"].as_str().unwrap(), new);
    assert_eq!(gw.oa_calls_to(paths::STABLE_TOKEN).len(), 2, "one refresh");
    // A late report of the old token changes nothing.
    let r = gw
        .request(
            reqwest::Method::POST,
            "/v1/apps/oa/access_token/invalidate",
            Some(API_KEY),
            Some(report),
            "application/json",
        )
        .await;
    assert_eq!(
        (r.status, r.body["invalidated"].as_bool()),
        (200, Some(false))
    );
    assert_eq!(get(&gw).await, new);
    assert_eq!(gw.oa_calls_to(paths::STABLE_TOKEN).len(), 2);
    // And the new token works for sends.
    let r = send_ok(&gw).await;
    assert_eq!(r.body["attempts"], 1);
    let bad = gw
        .request(
            reqwest::Method::POST,
            "/v1/apps/oa/access_token/invalidate",
            Some(API_KEY),
            Some("{\"token\":\"x\"}".into()),
            "application/json",
        )
        .await;
    assert_eq!(
        (bad.status, bad.body["field"].as_str()),
        (400, Some("token"))
    );
    gw.stop().await;
}
