//! Gateways on a shared Redis (a real `redis-server` on a loopback port): they share the token
//! and the blocks WeChat's limits cause, and they fail closed when Redis is gone.

use std::time::Duration;

use wxgate_fake_wechat::{demo, Fault, FaultAction};
use wxgate_protocol::wire::paths;
use wxgate_redis_testkit::{require_redis, RedisServer};
use wxgate_tests::*;

const TPL: &str = "/v1/apps/oa/messages/template";

#[tokio::test]
async fn replicas_share_one_token_through_redis() {
    require_redis();
    let redis = RedisServer::start();
    let prefix = unique_prefix();
    let store = redis_store_toml(&redis.url(), &prefix, "");
    let gw = spawn_with(Options {
        extra_toml: store.clone(),
        ..Default::default()
    })
    .await;
    let b = gw.add_node(&store);
    let c = gw.add_node(&store);
    assert_eq!(gw.post(TPL, &template_body()).await.status, 200);
    for node in [&b, &c] {
        for _ in 0..3 {
            assert_eq!(gw.post_to(node, TPL, &template_body()).await.status, 200);
        }
    }
    assert_eq!(gw.calls_to(paths::TEMPLATE_SEND).len(), 7);
    assert_eq!(
        gw.oa_calls_to(paths::STABLE_TOKEN).len(),
        1,
        "one token for three nodes"
    );
    // An operator can read it: the hash under the documented key, with its fields.
    let key = format!("{prefix}:{{{}}}:token", demo::OA_APPID);
    assert_eq!(redis.cli(&["HGET", &key, "source"]), "stable");
    let ttl: i64 = redis.cli(&["PTTL", &key]).parse().unwrap();
    assert!(ttl > 7_000_000, "expires with the token: {ttl}");
    b.stop().await;
    c.stop().await;
    gw.stop().await;
}

#[tokio::test]
async fn wechat_minute_limit_on_one_node_pauses_every_node() {
    require_redis();
    let redis = RedisServer::start();
    let store = redis_store_toml(&redis.url(), &unique_prefix(), "");
    let gw = spawn_with(Options {
        extra_toml: store.clone(),
        ..Default::default()
    })
    .await;
    let other = gw.add_node(&store);
    gw.fake_state().add_fault(Fault {
        path: Some(paths::TEMPLATE_SEND.into()),
        appid: None,
        count: 1,
        action: FaultAction::Errcode {
            errcode: 45011,
            errmsg: None,
        },
    });
    let r = gw.post(TPL, &template_body()).await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"));
    // The other node does not even try: the shared block answers until the next minute.
    let r = gw.post_to(&other, TPL, &template_body()).await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"), "{:?}", r.body);
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    assert!(
        r.body["message"].as_str().unwrap().contains("45011"),
        "{:?}",
        r.body
    );
    assert_eq!(
        gw.calls_to(paths::TEMPLATE_SEND).len(),
        1,
        "only the first send reached WeChat"
    );
    // Other APIs of the app are not blocked.
    let r = gw
        .post_to(
            &other,
            "/v1/apps/oa/messages/subscribe",
            &oa_subscribe_body(),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    other.stop().await;
    gw.stop().await;
}

#[tokio::test]
async fn redis_down_fails_closed_with_503_and_nothing_is_sent() {
    require_redis();
    let mut redis = RedisServer::start();
    let store = redis_store_toml(&redis.url(), &unique_prefix(), "");
    let gw = spawn_with(Options {
        extra_toml: store,
        ..Default::default()
    })
    .await;
    assert_eq!(gw.post(TPL, &template_body()).await.status, 200);
    redis.stop();
    let before = gw.calls_to(paths::TEMPLATE_SEND).len();
    for _ in 0..3 {
        let r = gw.post(TPL, &template_body()).await;
        assert_eq!(
            (r.status, r.code()),
            (503, "store_unavailable"),
            "{:?}",
            r.body
        );
        assert_eq!(r.body["retryable"], true);
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    assert_eq!(
        gw.calls_to(paths::TEMPLATE_SEND).len(),
        before,
        "nothing sent without Redis"
    );
    let ready = gw
        .request(reqwest::Method::GET, "/readyz", None, None, "")
        .await;
    assert_eq!(ready.status, 503);
    // Redis back (empty): sends resume.
    redis.restart();
    let mut ok = false;
    for _ in 0..50 {
        if gw.post(TPL, &template_body()).await.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "sends resume once Redis is back");
    gw.stop().await;
}

#[tokio::test]
async fn local_share_policy_keeps_sending_without_redis() {
    require_redis();
    let mut redis = RedisServer::start();
    let store = redis_store_toml(
        &redis.url(),
        &unique_prefix(),
        "on_unavailable = \"local_share\"\nexpected_replicas = 3",
    );
    let gw = spawn_with(Options {
        extra_toml: store,
        ..Default::default()
    })
    .await;
    assert_eq!(gw.post(TPL, &template_body()).await.status, 200);
    redis.stop();
    // The token is cached on the node and the permit comes from the node's local share.
    let r = gw.post(TPL, &template_body()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(gw.calls_to(paths::TEMPLATE_SEND).len(), 2);
    gw.stop().await;
}

/// `on_unavailable = "local_share"`: an unreachable Redis does not make the node unready (nor
/// every replica at once), even once its cached token is due for a re-read: the token counts,
/// and is used, until its expiry margin.
#[tokio::test]
async fn local_share_keeps_the_node_ready_without_redis_with_a_due_token() {
    require_redis();
    let mut redis = RedisServer::start();
    let store = redis_store_toml(
        &redis.url(),
        &unique_prefix(),
        "on_unavailable = \"local_share\"\nexpected_replicas = 3",
    );
    let gw = spawn_with(Options {
        extra_toml: store,
        ..Default::default()
    })
    .await;
    assert_eq!(gw.post(TPL, &template_body()).await.status, 200);
    gw.wait_ready(Duration::from_secs(10)).await;
    redis.stop();
    let ready = gw
        .request(reqwest::Method::GET, "/readyz", None, None, "")
        .await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    // 7200 s tokens refreshed 300 s ahead: due after 6900 s, usable until 7200 s - margin.
    gw.clock.advance_ms(7_000_000);
    let ready = gw
        .request(reqwest::Method::GET, "/readyz", None, None, "")
        .await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    let r = gw.post(TPL, &template_body()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Past the token's expiry margin it no longer counts.
    gw.clock.advance_ms(195_000);
    let ready = gw
        .request(reqwest::Method::GET, "/readyz", None, None, "")
        .await;
    assert_eq!(ready.status, 503, "{:?}", ready.body);
    gw.stop().await;
}
