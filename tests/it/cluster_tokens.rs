//! One token owner for the whole cluster, across processes: a real `redis-server`, the fake
//! WeChat with tokens that live seconds, and three `wxgate serve` processes under continuous
//! sends. Every figure is counted at the fake WeChat.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wxgate_fake_wechat::{demo, FakeConfig, FakeWechat};
use wxgate_protocol::wire::paths;
use wxgate_redis_testkit::{require_redis, RedisServer};
use wxgate_tests::*;

const TPL: &str = "/v1/apps/oa/messages/template";

/// Gateway config for one node; `{port}` and `{node_id}` are filled in per node.
pub(crate) fn node_config(
    redis_url: &str,
    prefix: &str,
    fake_url: &str,
    app_extra: &str,
    refresh_ahead: u64,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"
workers = 1
node_id = "{{node_id}}"
[upstream]
base_url = "{fake_url}"
connect_timeout_ms = 1000
request_timeout_ms = 2000
[store]
kind = "redis"
prefix = "{prefix}"
[store.redis]
url = "{redis_url}"
[token]
refresh_ahead_secs = {refresh_ahead}
check_interval_ms = 200
lease_ttl_ms = 1500
wait_for_token_ms = 4000
[apps.oa]
appid = "{appid}"
kind = "official_account"
{app_extra}
[api_keys.all]
key = "{API_KEY}"
apps = ["*"]
scopes = ["send", "token"]
"#,
        appid = demo::OA_APPID,
    )
}

pub(crate) struct Cluster {
    pub(crate) redis: RedisServer,
    pub(crate) fake: FakeWechat,
    pub(crate) nodes: Vec<GatewayProcess>,
    pub(crate) prefix: String,
    _dir: std::path::PathBuf,
}

pub(crate) async fn cluster(fake_cfg: FakeConfig, app_extra: &str, refresh_ahead: u64) -> Cluster {
    require_redis();
    let redis = RedisServer::start();
    let fake = FakeWechat::start(
        fake_cfg,
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    )
    .await
    .unwrap();
    let prefix = unique_prefix();
    let dir = temp_dir("cluster");
    let cfg = node_config(
        &redis.url(),
        &prefix,
        &fake.base_url(),
        app_extra,
        refresh_ahead,
    );
    let nodes: Vec<_> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|n| GatewayProcess::start(&dir, n, &cfg))
        .collect();
    for n in &nodes {
        n.wait_ready(Duration::from_secs(15)).await;
    }
    Cluster {
        redis,
        fake,
        nodes,
        prefix,
        _dir: dir,
    }
}

impl Cluster {
    fn key(&self, what: &str) -> String {
        format!("{}:{{{}}}:{what}", self.prefix, demo::OA_APPID)
    }

    pub(crate) fn oa_calls(&self, path: &str) -> Vec<wxgate_fake_wechat::CallRecord> {
        self.fake
            .state()
            .calls()
            .into_iter()
            .filter(|c| c.path == path && c.appid.as_deref() == Some(demo::OA_APPID))
            .collect()
    }
}

/// Counters of a run of continuous sends.
#[derive(Default)]
struct Run {
    ok: AtomicU64,
    retried: AtomicU64,
    errors: AtomicU64,
}

/// Sends continuously through every live node (one sender per node, round robin over live
/// nodes) until `stop` is set.
fn senders(
    urls: Vec<String>,
    alive: Arc<Vec<AtomicBool>>,
    stop: Arc<AtomicBool>,
    run: Arc<Run>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    (0..urls.len())
        .map(|i| {
            let (http, urls, alive, stop, run) = (
                http.clone(),
                urls.clone(),
                alive.clone(),
                stop.clone(),
                run.clone(),
            );
            tokio::spawn(async move {
                let mut n = i;
                while !stop.load(Ordering::Relaxed) {
                    n = (n + 1) % urls.len();
                    if !alive[n].load(Ordering::Relaxed) {
                        continue;
                    }
                    let r = http
                        .post(format!("{}{TPL}", urls[n]))
                        .bearer_auth(API_KEY)
                        .json(&template_body())
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => {
                            let body: serde_json::Value = r.json().await.unwrap();
                            run.ok.fetch_add(1, Ordering::Relaxed);
                            if body["attempts"] != 1 {
                                run.retried.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(r) => {
                            eprintln!(
                                "caller error from {}: {} {}",
                                urls[n],
                                r.status(),
                                r.text().await.unwrap_or_default()
                            );
                            run.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("caller error from {}: {e}", urls[n]);
                            run.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_one_fetch_per_lifetime_and_leader_failover() {
    // 4 s tokens, WeChat rotates in the last 3 s, the leader refreshes 2 s ahead: a refresh
    // every ~2 s for the whole cluster.
    const PERIOD_SECS: f64 = 2.0;
    let mut fake = FakeConfig::demo();
    fake.expires_in_secs = 4;
    fake.stable_rotate_before_secs = 3;
    let mut c = cluster(fake, r#"secret = "demo-secret""#, 2).await;
    let urls: Vec<String> = c.nodes.iter().map(|n| n.url.clone()).collect();
    let alive = Arc::new((0..3).map(|_| AtomicBool::new(true)).collect::<Vec<_>>());
    let (stop, run) = (Arc::new(AtomicBool::new(false)), Arc::new(Run::default()));
    let started = Instant::now();
    let fetches_at_start = c.oa_calls(paths::STABLE_TOKEN).len();
    let tasks = senders(urls.clone(), alive.clone(), stop.clone(), run.clone());

    // The leader refreshes under load; then it is killed.
    wait_until("a refresh under load", Duration::from_secs(8), || {
        c.oa_calls(paths::STABLE_TOKEN).len() > fetches_at_start
    })
    .await;
    let leader = c.redis.cli(&["GET", &c.key("leader")]);
    let idx = c
        .nodes
        .iter()
        .position(|n| n.node_id == leader)
        .expect("a node leads");
    alive[idx].store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await; // let its in-flight sends finish
    c.nodes[idx].kill();
    let killed_at_ms = c.fake.state().now_ms();
    // Another node takes over and refreshes twice; the senders go on a little longer, so every
    // node moves to the last token under load.
    wait_until(
        "two refreshes by the new leader",
        Duration::from_secs(10),
        || {
            c.oa_calls(paths::STABLE_TOKEN)
                .iter()
                .filter(|f| f.at_ms >= killed_at_ms)
                .count()
                >= 2
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();

    let new_leader = c.redis.cli(&["GET", &c.key("leader")]);
    let writer = c.redis.cli(&["HGET", &c.key("token"), "node"]);
    let fetches = c.oa_calls(paths::STABLE_TOKEN);
    let sends = c.oa_calls(paths::TEMPLATE_SEND);
    let rejected: Vec<_> = sends.iter().filter(|s| s.errcode != 0).collect();
    let after_kill = fetches.iter().filter(|f| f.at_ms >= killed_at_ms).count();
    let lifetimes = elapsed.as_secs_f64() / PERIOD_SECS;
    eprintln!(
        "run {elapsed:?}: {} sends ok, {} retried, {} caller errors; {} token fetches ({} before the run, {} after the leader {leader} was killed; ~{lifetimes:.1} refresh periods); new leader {new_leader}, token written by {writer}; {} sends rejected by the fake",
        run.ok.load(Ordering::Relaxed),
        run.retried.load(Ordering::Relaxed),
        run.errors.load(Ordering::Relaxed),
        fetches.len(),
        fetches_at_start,
        after_kill,
        rejected.len()
    );
    assert_eq!(run.errors.load(Ordering::Relaxed), 0, "no caller error");
    assert!(
        rejected.is_empty(),
        "no send was answered 40001/42001: {rejected:?}"
    );
    assert_eq!(
        run.retried.load(Ordering::Relaxed),
        0,
        "no send needed a retry"
    );
    assert!(
        run.ok.load(Ordering::Relaxed) as f64 > 10.0 * elapsed.as_secs_f64(),
        "sends ran all along"
    );
    // One fetch per token lifetime for the whole cluster, not one per replica.
    let max = lifetimes.ceil() as usize + 2;
    assert!(
        fetches.len() <= max,
        "{} fetches for ~{lifetimes:.1} periods (max {max})",
        fetches.len()
    );
    assert!(
        fetches.len() as f64 >= lifetimes - 1.0,
        "the leader refreshed ahead: {} fetches",
        fetches.len()
    );
    let distinct: HashSet<_> = fetches
        .iter()
        .filter_map(|f| f.access_token.clone())
        .collect();
    assert_eq!(
        distinct.len(),
        fetches.len(),
        "every fetch brought a new token (no premature refresh)"
    );
    // Another node took over and kept refreshing before expiry.
    assert_ne!(new_leader, leader);
    assert_ne!(writer, leader, "the token was refreshed by the new leader");
    assert!(
        after_kill >= 2,
        "the new leader refreshed: {after_kill} fetches after the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_token_invalidated_behind_the_back_is_refreshed_once() {
    let c = cluster(FakeConfig::demo(), r#"secret = "demo-secret""#, 240).await;
    let urls: Vec<String> = c.nodes.iter().map(|n| n.url.clone()).collect();
    let alive = Arc::new((0..3).map(|_| AtomicBool::new(true)).collect::<Vec<_>>());
    let (stop, run) = (Arc::new(AtomicBool::new(false)), Arc::new(Run::default()));
    let tasks = senders(urls, alive, stop.clone(), run.clone());
    wait_until("sends under way", Duration::from_secs(5), || {
        run.ok.load(Ordering::Relaxed) >= 20
    })
    .await;
    let before = c.oa_calls(paths::STABLE_TOKEN).len();
    // As if another system had fetched a classic token: every token we hold stops working.
    c.fake.state().invalidate_tokens(demo::OA_APPID);
    // The refresh, then enough sends after it that every node has used the new token (a node
    // that refreshed on its own would have done so by then).
    wait_until("the refresh", Duration::from_secs(5), || {
        c.oa_calls(paths::STABLE_TOKEN).len() > before
    })
    .await;
    let ok_at_refresh = run.ok.load(Ordering::Relaxed);
    wait_until("sends with the new token", Duration::from_secs(5), || {
        run.ok.load(Ordering::Relaxed) >= ok_at_refresh + 60
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let refreshes = c.oa_calls(paths::STABLE_TOKEN).len() - before;
    let rejected = c
        .oa_calls(paths::TEMPLATE_SEND)
        .iter()
        .filter(|s| s.errcode == 40001)
        .count();
    eprintln!(
        "invalidated behind the back: {rejected} sends answered 40001, {} retried, {} ok, {} caller errors, {refreshes} refresh(es)",
        run.retried.load(Ordering::Relaxed),
        run.ok.load(Ordering::Relaxed),
        run.errors.load(Ordering::Relaxed)
    );
    assert_eq!(refreshes, 1, "exactly one refresh for the whole cluster");
    assert!(rejected >= 1);
    assert_eq!(
        run.retried.load(Ordering::Relaxed),
        rejected as u64,
        "every affected send retried once"
    );
    assert_eq!(run.errors.load(Ordering::Relaxed), 0, "and succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_classic_mode_never_invalidates_a_token_in_use() {
    // Classic tokens of 4 s, refreshed 2 s ahead (every ~2 s): each fetch invalidates the
    // previous token 2 s later. Followers must have moved to the new token by then.
    const OVERLAP_MS: u64 = 2_000;
    let mut fake = FakeConfig::demo();
    fake.expires_in_secs = 4;
    fake.classic_overlap_secs = OVERLAP_MS / 1000;
    let c = cluster(
        fake,
        "token_mode = \"classic\"\nsecret = \"demo-secret\"",
        2,
    )
    .await;
    let urls: Vec<String> = c.nodes.iter().map(|n| n.url.clone()).collect();
    let alive = Arc::new((0..3).map(|_| AtomicBool::new(true)).collect::<Vec<_>>());
    let (stop, run) = (Arc::new(AtomicBool::new(false)), Arc::new(Run::default()));
    let started = Instant::now();
    let at_start = c.oa_calls(paths::TOKEN).len();
    let tasks = senders(urls, alive, stop.clone(), run.clone());
    // Two refreshes under load, and sends past the end of the second one's overlap, when the
    // token before it dies.
    wait_until("two refreshes", Duration::from_secs(10), || {
        c.oa_calls(paths::TOKEN).len() >= at_start + 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(OVERLAP_MS + 500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let fetches = c.oa_calls(paths::TOKEN);
    let sends = c.oa_calls(paths::TEMPLATE_SEND);
    let rejected = sends.iter().filter(|s| s.errcode != 0).count();
    eprintln!(
        "classic, {:?}: {} token fetches ({at_start} before the run), {} sends, {rejected} rejected, {} retried, {} caller errors",
        started.elapsed(),
        fetches.len(),
        sends.len(),
        run.retried.load(Ordering::Relaxed),
        run.errors.load(Ordering::Relaxed)
    );
    assert!(c.oa_calls(paths::STABLE_TOKEN).is_empty());
    assert_eq!(
        rejected, 0,
        "no replica ever used a token another replica's fetch had invalidated"
    );
    assert_eq!(run.errors.load(Ordering::Relaxed), 0);
    assert!(
        (at_start + 2..=at_start + 3).contains(&fetches.len()),
        "{} classic fetches ({at_start} before the run) in {:?}: one per refresh period",
        fetches.len(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_external_mode_never_calls_the_token_endpoints() {
    require_redis();
    let redis = RedisServer::start();
    let fake = FakeWechat::start(
        FakeConfig::demo(),
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    )
    .await
    .unwrap();
    // The "other system": it fetches the token itself and keeps it in its own key.
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("{}{}", fake.base_url(), paths::STABLE_TOKEN))
        .json(&serde_json::json!({"grant_type": "client_credential", "appid": demo::OA_APPID, "secret": demo::OA_SECRET}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = answer["access_token"].as_str().unwrap().to_string();
    let dir = temp_dir("external");
    let cfg = node_config(
        &redis.url(),
        &unique_prefix(),
        &fake.base_url(),
        "token_mode = \"external\"\nexternal_token_key = \"billing:wechat:token\"",
        240,
    );
    let node = GatewayProcess::start(&dir, "node-x", &cfg);

    // Missing key: not ready, and sends get a clear 503.
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http
            .get(format!("{}/healthz", node.url))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = http
        .get(format!("{}/readyz", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let r = http
        .post(format!("{}{TPL}", node.url))
        .bearer_auth(API_KEY)
        .json(&template_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "token_unavailable");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("billing:wechat:token"),
        "{body}"
    );

    redis.cli(&["SET", "billing:wechat:token", &token, "PX", "600000"]);
    node.wait_ready(Duration::from_secs(10)).await;
    for _ in 0..5 {
        let r = http
            .post(format!("{}{TPL}", node.url))
            .bearer_auth(API_KEY)
            .json(&template_body())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // The token API hands out the external token too.
    let t: serde_json::Value = http
        .get(format!("{}/v1/apps/oa/access_token", node.url))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(t["access_token"], token.as_str());
    let token_calls = fake
        .state()
        .calls()
        .into_iter()
        .filter(|c| c.path == paths::STABLE_TOKEN || c.path == paths::TOKEN)
        .count();
    assert_eq!(
        token_calls, 1,
        "only the other system's own fetch: wxgate never called a token endpoint"
    );
    assert!(
        !node.logs().contains(&token),
        "the token never reaches the logs"
    );
}
