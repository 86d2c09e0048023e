//! Sending under WeChat's limits across replicas: a real `redis-server`, the fake WeChat with
//! the same limits as the gateway (short windows), and three `wxgate serve` processes. Every
//! proof is the fake's record of what arrived.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wxgate_fake_wechat::{demo, CallRecord, FakeConfig, Fault, FaultAction};
use wxgate_protocol::wire::paths;
use wxgate_tests::*;

use crate::cluster_tokens::{cluster, Cluster};

const TPL: &str = "/v1/apps/oa/messages/template";
const N: u64 = 10;
const W_MS: u64 = 1_000;
const GUARD_MS: u64 = 100;

fn fake_with_window(per_window: u64) -> FakeConfig {
    let mut fake = FakeConfig::demo();
    fake.apps[0].accept_any_openid = true;
    fake.apps[0].limits.template_send_per_minute = per_window;
    fake.apps[0].limits.window_ms = W_MS;
    fake
}

fn app_config(limits: &str) -> String {
    format!("secret = \"demo-secret\"\n[limits]\nguard_ms = {GUARD_MS}\n{limits}")
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    limited: AtomicU64,
    other: AtomicU64,
}

/// Offers `per_sec` sends per second in total, spread over every node, for `run`; `body(i)`
/// builds the i-th message.
async fn offer(
    c: &Cluster,
    per_sec: u64,
    run: Duration,
    body: impl Fn(u64) -> Value + Send + Sync + 'static,
) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let body = Arc::new(body);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let nodes: Vec<String> = c.nodes.iter().map(|n| n.url.clone()).collect();
    let senders = 3u64;
    let pace = Duration::from_millis(1000 * senders / per_sec);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..senders {
        let (http, nodes, tally, body) = (http.clone(), nodes.clone(), tally.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = s;
            let mut next = Instant::now();
            while started.elapsed() < run {
                let url = format!("{}{TPL}", nodes[(i % nodes.len() as u64) as usize]);
                let r = http
                    .post(url)
                    .bearer_auth(API_KEY)
                    .json(&body(i))
                    .send()
                    .await
                    .unwrap();
                match r.status().as_u16() {
                    200 => tally.ok.fetch_add(1, Ordering::Relaxed),
                    429 => tally.limited.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("unexpected {other}: {}", r.text().await.unwrap_or_default());
                        tally.other.fetch_add(1, Ordering::Relaxed)
                    }
                };
                i += senders;
                next += pace;
                tokio::time::sleep_until(next.into()).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    tally
}

/// At most `n` arrivals in any `w_ms`, and the share of the capacity used.
#[track_caller]
fn check_window(what: &str, arrivals: &[CallRecord], n: u64, w_ms: u64) -> f64 {
    let mut t: Vec<u64> = arrivals.iter().map(|c| c.at_ms).collect();
    t.sort_unstable();
    for i in 0..t.len().saturating_sub(n as usize) {
        let gap = t[i + n as usize] - t[i];
        assert!(
            gap >= w_ms,
            "{what}: {} arrivals within {gap} ms at the fake (limit {n} per {w_ms} ms)",
            n + 1
        );
    }
    let span = t.last().unwrap() - t.first().unwrap();
    let capacity = n * (span / (w_ms + GUARD_MS)) + n;
    t.len() as f64 / capacity as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_app_limit_holds_at_five_times_the_rate() {
    let c = cluster(
        fake_with_window(N),
        &app_config(&format!(
            "[apps.oa.limits]\ntemplate_send = [{{ limit = {N}, window_ms = {W_MS} }}]"
        )),
        240,
    )
    .await;
    // 5 × N / W = 50 sends per second, over all three replicas, for about 3.5 windows (window
    // + guard).
    let tally = offer(&c, 5 * N * 1000 / W_MS, Duration::from_millis(4_000), |i| {
        let mut b = template_body();
        b["touser"] = format!("o-load-{i}").into();
        b
    })
    .await;
    let sends = c.oa_calls(paths::TEMPLATE_SEND);
    let refused: Vec<_> = sends.iter().filter(|s| s.errcode != 0).collect();
    let used = check_window("app", &sends, N, W_MS);
    eprintln!(
        "app limit {N}/{W_MS} ms at 5x: {} sent, {} answered 429, {} other; the fake got {} sends, {} refused (45011); {:.0}% of capacity",
        tally.ok.load(Ordering::Relaxed),
        tally.limited.load(Ordering::Relaxed),
        tally.other.load(Ordering::Relaxed),
        sends.len(),
        refused.len(),
        used * 100.0
    );
    assert!(
        refused.is_empty(),
        "the fake never answered 45011: {refused:?}"
    );
    assert_eq!(tally.other.load(Ordering::Relaxed), 0);
    assert!(
        tally.limited.load(Ordering::Relaxed) > tally.ok.load(Ordering::Relaxed),
        "it really was overloaded"
    );
    assert!(used >= 0.9, "{:.0}% of capacity used", used * 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_per_recipient_limit_holds_across_replicas() {
    let c = cluster(
        fake_with_window(0),
        &app_config("[apps.oa.limits]\nper_recipient = [{ limit = 3, window_ms = 1000 }]"),
        240,
    )
    .await;
    // 8 sends per second to each of two recipients whose limit is 3 per second.
    let tally = offer(&c, 16, Duration::from_millis(4_000), |i| {
        let mut b = template_body();
        b["touser"] = if i % 2 == 0 {
            "o-hot-user"
        } else {
            "o-other-user"
        }
        .into();
        b
    })
    .await;
    let sends = c.oa_calls(paths::TEMPLATE_SEND);
    let mut by_user: HashMap<String, Vec<CallRecord>> = HashMap::new();
    for s in sends {
        by_user
            .entry(s.touser.clone().unwrap())
            .or_default()
            .push(s);
    }
    for (user, arrivals) in &by_user {
        let used = check_window(user, arrivals, 3, 1_000);
        eprintln!(
            "per recipient 3/1000 ms, {user}: {} arrivals, {:.0}% of capacity",
            arrivals.len(),
            used * 100.0
        );
        assert!(used >= 0.9, "{user}: {:.0}%", used * 100.0);
    }
    assert_eq!(by_user.len(), 2);
    assert!(tally.limited.load(Ordering::Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_daily_quota_and_wechat_45009_stop_every_replica() {
    let c = cluster(
        fake_with_window(0),
        &app_config("[apps.oa.quotas]\ntemplate_send = 15"),
        240,
    )
    .await;
    let http = reqwest::Client::new();
    let mut codes = Vec::new();
    for i in 0..30 {
        let mut b = template_body();
        b["touser"] = format!("o-quota-{i}").into();
        let r = http
            .post(format!("{}{TPL}", c.nodes[i % 3].url))
            .bearer_auth(API_KEY)
            .json(&b)
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        codes.push(body["code"].as_str().unwrap_or("sent").to_string());
    }
    assert_eq!(
        c.oa_calls(paths::TEMPLATE_SEND).len(),
        15,
        "exactly the quota reached WeChat"
    );
    assert_eq!(codes.iter().filter(|c| *c == "sent").count(), 15);
    assert!(
        codes[15..].iter().all(|c| c == "quota_exhausted"),
        "{codes:?}"
    );

    // WeChat's own daily quota (45009) on subscribe sends: one node hears it, all stop.
    c.fake.state().add_fault(Fault {
        path: Some(paths::SUBSCRIBE_BIZSEND.into()),
        appid: None,
        count: 1,
        action: FaultAction::Errcode {
            errcode: 45009,
            errmsg: None,
        },
    });
    let sub = |node: &str| {
        http.post(format!("{node}/v1/apps/oa/messages/subscribe"))
            .bearer_auth(API_KEY)
            .json(&oa_subscribe_body())
            .send()
    };
    let first: Value = sub(&c.nodes[0].url).await.unwrap().json().await.unwrap();
    assert_eq!(
        (first["code"].as_str(), first["wechat_errcode"].as_i64()),
        (Some("quota_exhausted"), Some(45009))
    );
    for node in &c.nodes {
        let r = sub(&node.url).await.unwrap();
        assert_eq!(r.status(), 429);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "quota_exhausted", "{body}");
    }
    assert_eq!(
        c.oa_calls(paths::SUBSCRIBE_BIZSEND).len(),
        1,
        "no replica called WeChat again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_faults_never_notify_a_user_twice() {
    let registry = format!(
        "[apps.oa.templates.shipped]\nkind = \"template\"\nid = \"{}\"",
        demo::OA_TEMPLATE_ID
    );
    let c = cluster(fake_with_window(0), &app_config(&registry), 240).await;
    let state = c.fake.state();
    // WeChat busy, and sends WeChat accepted whose answer never came back.
    state.add_fault(Fault {
        path: Some(paths::TEMPLATE_SEND.into()),
        appid: None,
        count: 6,
        action: FaultAction::Errcode {
            errcode: -1,
            errmsg: None,
        },
    });
    state.add_fault(Fault {
        path: Some(paths::TEMPLATE_SEND.into()),
        appid: None,
        count: 6,
        action: FaultAction::DropAfterProcessing,
    });
    let http = reqwest::Client::new();
    let mut answers = Vec::new();
    for i in 0..24u32 {
        let mut b = template_body();
        b["touser"] = format!("o-fault-{i}").into();
        let key = format!("notify-{i}");
        // The caller's own retry on a retryable answer goes to another replica, same key.
        let mut final_code = String::new();
        // (The caller's own retry on a retryable answer goes to another replica, same key.)
        for attempt in 0..5usize {
            let node = &c.nodes[(i as usize + attempt) % 3].url;
            let r = http
                .post(format!("{node}{TPL}"))
                .bearer_auth(API_KEY)
                .header("Idempotency-Key", &key)
                .json(&b)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            final_code = body["code"].as_str().unwrap_or("sent").to_string();
            assert!(
                status == 200 || body["retryable"].is_boolean(),
                "a definite, typed answer: {body}"
            );
            if status == 200 || body["retryable"] == false {
                break;
            }
        }
        answers.push(final_code);
    }
    let sends = c.oa_calls(paths::TEMPLATE_SEND);
    let mut delivered: HashMap<String, u32> = HashMap::new();
    for s in sends.iter().filter(|s| s.errcode == 0 && !s.deduplicated) {
        *delivered.entry(s.touser.clone().unwrap()).or_default() += 1;
    }
    let dups: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "faults: {} upstream calls ({} answered -1, {} dropped after processing, {} de-duplicated by client_msg_id); {} users notified, duplicates {dups:?}; final answers {answers:?}",
        sends.len(),
        sends.iter().filter(|s| s.errcode == -1).count(),
        sends.iter().filter(|s| s.fault.as_deref() == Some("drop_after_processing")).count(),
        sends.iter().filter(|s| s.deduplicated).count(),
        delivered.len()
    );
    assert!(dups.is_empty(), "a user received the same message twice");
    assert!(
        answers.iter().all(|a| a == "sent"),
        "every message was delivered: {answers:?}"
    );
    assert_eq!(delivered.len(), 24, "every user got exactly one message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_idempotent_repeat_on_another_replica_and_bad_data_before_any_permit() {
    let registry = format!(
        "[apps.oa.templates.shipped]\nkind = \"template\"\nid = \"{}\"\nfields = [\"character_string1\", \"thing2\", \"time3\"]\n[apps.oa.limits]\ntemplate_send = [{{ limit = 2, window_ms = 60000 }}]",
        demo::OA_TEMPLATE_ID
    );
    let c = cluster(fake_with_window(0), &app_config(&registry), 240).await;
    let http = reqwest::Client::new();
    let post = |node: &str, body: &Value, key: Option<&str>| {
        let mut r = http
            .post(format!("{node}{TPL}"))
            .bearer_auth(API_KEY)
            .json(body);
        if let Some(k) = key {
            r = r.header("Idempotency-Key", k);
        }
        r.send()
    };
    // Malformed data for the registered template, on every replica: 422, no permit, no call.
    for node in &c.nodes {
        let bad = json!({"touser": "o-x", "template_id": "shipped", "data": {"thing2": {"value": "only one"}}});
        let r = post(&node.url, &bad, None).await.unwrap();
        assert_eq!(r.status(), 422);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["field"], "data.character_string1", "{body}");
    }
    assert!(c.oa_calls(paths::TEMPLATE_SEND).is_empty());
    // Idempotent request on replica A, repeated on replica B.
    let mut b = template_body();
    b["template_id"] = "shipped".into();
    let first: Value = post(&c.nodes[0].url, &b, Some("order-7"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = post(&c.nodes[1].url, &b, Some("order-7")).await.unwrap();
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["msgid"], first["msgid"], "the original msgid");
    assert_eq!(
        c.oa_calls(paths::TEMPLATE_SEND).len(),
        1,
        "no new upstream call"
    );
    // The limit is 2: the refused requests took no permit, so one more send fits.
    let mut other = b.clone();
    other["touser"] = "o-second".into();
    assert_eq!(
        post(&c.nodes[2].url, &other, None).await.unwrap().status(),
        200
    );
    assert_eq!(
        post(&c.nodes[2].url, &other, None).await.unwrap().status(),
        429
    );
}
