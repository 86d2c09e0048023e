//! Durable queued delivery across replicas: a real `redis-server`, the fake WeChat enforcing
//! the same window as the gateway, three `wxgate serve` processes. A burst of 20 × the
//! per-window limit is accepted in async mode at once; one replica is SIGKILLed mid-drain and
//! started again; every accepted message ends `sent` (or `failed` with a reason), the fake's
//! record shows each user notified exactly once, no window held more than N, and the drain
//! ran at ≥ 90% of the configured rate.

use std::time::{Duration, Instant};

use serde_json::Value;
use wxgate_fake_wechat::{demo, FakeConfig};
use wxgate_protocol::wire::paths;
use wxgate_tests::*;

use crate::cluster_tokens::cluster;

const TPL: &str = "/v1/apps/oa/messages/template";
const N: u64 = 20;
const W_MS: u64 = 1_000;
const GUARD_MS: u64 = 100;
const BURST: u64 = 20 * N;

fn fake() -> FakeConfig {
    let mut fake = FakeConfig::demo();
    fake.apps[0].accept_any_openid = true;
    fake.apps[0].limits.template_send_per_minute = N;
    fake.apps[0].limits.window_ms = W_MS;
    fake
}

fn config() -> String {
    format!(
        "secret = \"demo-secret\"\n\
         [apps.oa.limits]\ntemplate_send = [{{ limit = {N}, window_ms = {W_MS} }}]\n\
         [limits]\nguard_ms = {GUARD_MS}\n\
         [idempotency]\nlease_ms = 1000\n\
         [queue]\nconcurrency = 8\nclaim_idle_ms = 1000\nblock_ms = 200\nmax_backlog = 10000\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_queue_burst_drains_at_the_limit_through_a_crash() {
    let mut c = cluster(fake(), &config(), 240).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let urls: Vec<String> = c.nodes.iter().map(|n| n.url.clone()).collect();

    // The burst: 20 callers, round robin over the three replicas.
    let started = Instant::now();
    let mut tasks = Vec::new();
    let callers = 20u64;
    for k in 0..callers {
        let (http, urls) = (http.clone(), urls.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut i = k;
            while i < BURST {
                let r = http
                    .post(format!("{}{TPL}", urls[(i % 3) as usize]))
                    .bearer_auth(API_KEY)
                    .header("Prefer", "respond-async")
                    .json(&{
                        let mut b = template_body();
                        b["touser"] = format!("o-q-{i}").into();
                        b
                    })
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
                let body: Value = r.json().await.unwrap();
                ids.push((i, body["id"].as_str().unwrap().to_string()));
                i += callers;
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    let accept_secs = started.elapsed().as_secs_f64();
    assert_eq!(ids.len() as u64, BURST);

    // Mid-drain: SIGKILL one replica, then start it again.
    let sent_at_fake = |c: &crate::cluster_tokens::Cluster| {
        c.oa_calls(paths::TEMPLATE_SEND)
            .iter()
            .filter(|x| notified(x))
            .count() as u64
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while sent_at_fake(&c) < BURST / 4 {
        assert!(Instant::now() < deadline, "the drain did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.nodes[1].kill();
    let killed_at = sent_at_fake(&c);
    let deadline = Instant::now() + Duration::from_secs(20);
    while sent_at_fake(&c) < killed_at + 2 * N {
        assert!(
            Instant::now() < deadline,
            "the drain stopped with a replica down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.nodes[1].restart();
    c.nodes[1].wait_ready(Duration::from_secs(15)).await;

    // The end: the stream is empty (every entry acknowledged), every message final.
    let stream = format!("{}:{{{}}}:q", c.prefix, demo::OA_APPID);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let len: u64 = c.redis.cli(&["XLEN", &stream]).parse().unwrap();
        if len == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{len} entries still queued");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let urls: Vec<String> = c.nodes.iter().map(|n| n.url.clone()).collect();
    let (mut sent, mut failed) = (0u64, 0u64);
    let mut failed_users = Vec::new();
    for (i, id) in &ids {
        let r = http
            .get(format!(
                "{}/v1/apps/oa/messages/{id}",
                urls[(*i % 3) as usize]
            ))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap();
        let st: Value = r.json().await.unwrap();
        match st["status"].as_str() {
            Some("sent") => {
                assert!(st["msgid"].is_string(), "{st:?}");
                sent += 1;
            }
            Some("failed") => {
                assert!(
                    st["error"]["code"].is_string(),
                    "failed without a reason: {st:?}"
                );
                eprintln!("failed: {st}");
                failed_users.push(format!("o-q-{i}"));
                failed += 1;
            }
            other => panic!("message {id} ended {other:?}: {st:?}"),
        }
    }

    // The fake's record: each user notified exactly once; no window over N; the drain pace.
    let calls = c.oa_calls(paths::TEMPLATE_SEND);
    let by_user = notifications_by_user(&calls);
    let duplicates: u32 = by_user.values().map(|n| n.saturating_sub(1)).sum();
    for i in 0..BURST {
        let user = format!("o-q-{i}");
        let n = by_user.get(&user).copied().unwrap_or(0);
        if failed_users.contains(&user) {
            assert!(n <= 1, "{user} notified {n} times");
        } else {
            assert_eq!(n, 1, "{user} notified {n} times");
        }
    }
    let mut times: Vec<u64> = calls
        .iter()
        .filter(|x| notified(x))
        .map(|x| x.at_ms)
        .collect();
    times.sort_unstable();
    let all_times: Vec<u64> = calls.iter().map(|x| x.at_ms).collect();
    let (largest, _) = max_in_window(&all_times, W_MS);
    let span_ms = times.last().unwrap() - times.first().unwrap();
    let limit_per_sec = N as f64 * 1000.0 / W_MS as f64;
    // sent / (last - first): the measure the issue names.
    let rate = times.len() as f64 * 1000.0 / span_ms as f64;
    let fraction = rate / limit_per_sec;
    // Without the first window's head start (a full window goes out at once): sent over the
    // span plus one window, what a limiter admitting exactly N per window reaches.
    let steady = times.len() as f64 * 1000.0 / (span_ms + W_MS) as f64 / limit_per_sec;
    let refused = calls.iter().filter(|x| x.errcode != 0).count();
    eprintln!(
        "cluster queue: accepted {BURST} in {accept_secs:.2} s; sent {sent}, failed {failed}; \
         duplicates {duplicates}; the fake got {} sends ({} refused); largest window count \
         {largest} (limit {N} per {W_MS} ms, guard {GUARD_MS} ms); drain {rate:.2}/s over {:.1} s \
         = {:.1}% of the limit (sent / (last - first)); {:.1}% counting the first window's head \
         start (sent / (last - first + window))",
        calls.len(),
        refused,
        span_ms as f64 / 1000.0,
        fraction * 100.0,
        steady * 100.0
    );
    // The killed consumer's entries were claimed by the others (XAUTOCLAIM after the idle time).
    let claimed = c
        .nodes
        .iter()
        .any(|n| n.logs().contains("claimed idle queue entries"));
    assert!(claimed, "no node claimed the killed replica's entries");
    assert_eq!(sent + failed, BURST);
    assert_eq!(duplicates, 0);
    assert!(largest as u64 <= N, "{largest} sends in one window");
    assert!(
        fraction >= 0.9,
        "drain at {:.1}% of the limit",
        fraction * 100.0
    );
    assert!(
        accept_secs < 5.0,
        "the burst took {accept_secs:.2} s to accept"
    );
}
