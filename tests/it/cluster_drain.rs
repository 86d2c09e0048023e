//! Graceful drain across processes: a rolling restart of three `wxgate serve` replicas (a real
//! `redis-server`, the fake WeChat answering every send after 150 ms) under continuous sends
//! through a "load balancer" that polls `/readyz` like Kubernetes endpoints do. Each replica in
//! turn gets SIGTERM, must leave the rotation before it stops listening, finish what it
//! accepted, hand off its token-refresh leadership and exit 0; then it is restarted and rejoins.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wxgate_fake_wechat::{demo, FakeConfig, FakeWechat, Fault, FaultAction};
use wxgate_protocol::wire::paths;
use wxgate_redis_testkit::{require_redis, RedisServer};
use wxgate_tests::*;

const TPL: &str = "/v1/apps/oa/messages/template";
/// `server.drain_delay_secs`.
const DRAIN: Duration = Duration::from_secs(1);
/// How long the fake WeChat takes to answer a send: requests are really in flight.
const SEND_LATENCY_MS: u64 = 150;
/// How often the load balancer polls `/readyz`.
const LB_POLL: Duration = Duration::from_millis(75);
const CALLERS: usize = 6;

/// One node's configuration; `{port}` and `{node_id}` are filled in per node. Leases of 5 s
/// renewed every 100 ms: a hand-off within a second can only come from a release (an expiry
/// would take 5 s).
fn node_config(redis_url: &str, prefix: &str, fake_url: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"
workers = 2
node_id = "{{node_id}}"
drain_delay_secs = {drain}
shutdown_timeout_secs = 2
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
check_interval_ms = 100
lease_ttl_ms = 5000
[apps.oa]
appid = "{appid}"
kind = "official_account"
secret = "{secret}"
[api_keys.all]
key = "{API_KEY}"
apps = ["*"]
scopes = ["send", "token"]
"#,
        drain = DRAIN.as_secs(),
        appid = demo::OA_APPID,
        secret = demo::OA_SECRET,
    )
}

/// What the callers saw.
#[derive(Default)]
struct Callers {
    ok: AtomicU64,
    /// Answered, but not 200.
    errors: AtomicU64,
    /// No answer: refused, reset or cut off.
    dropped: AtomicU64,
}

/// The load balancer's view: which nodes are in rotation, and when each last left it.
struct Rotation {
    urls: Vec<String>,
    in_rotation: Vec<AtomicBool>,
    removed_at: Mutex<Vec<Option<Instant>>>,
}

impl Rotation {
    /// The next node in rotation (round robin), if any.
    fn pick(&self, counter: &AtomicUsize) -> Option<&str> {
        for _ in 0..self.urls.len() {
            let i = counter.fetch_add(1, Ordering::Relaxed) % self.urls.len();
            if self.in_rotation[i].load(Ordering::SeqCst) {
                return Some(&self.urls[i]);
            }
        }
        None
    }
}

/// Polls every node's `/readyz` every [`LB_POLL`]: a 200 puts it in rotation, anything else
/// (503, refused) takes it out.
fn load_balancer(rot: Arc<Rotation>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            for (i, url) in rot.urls.iter().enumerate() {
                let ready = matches!(
                    http.get(format!("{url}/readyz")).send().await,
                    Ok(r) if r.status() == 200
                );
                if rot.in_rotation[i].swap(ready, Ordering::SeqCst) && !ready {
                    rot.removed_at.lock().unwrap()[i] = Some(Instant::now());
                }
            }
            tokio::time::sleep(LB_POLL).await;
        }
    })
}

/// Callers sending continuously through the load balancer until `stop`.
fn callers(
    rot: Arc<Rotation>,
    stop: Arc<AtomicBool>,
    seen: Arc<Callers>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let counter = Arc::new(AtomicUsize::new(0));
    (0..CALLERS)
        .map(|_| {
            let (http, rot, stop, seen, counter) = (
                http.clone(),
                rot.clone(),
                stop.clone(),
                seen.clone(),
                counter.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Some(url) = rot.pick(&counter) else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    let r = http
                        .post(format!("{url}{TPL}"))
                        .bearer_auth(API_KEY)
                        .json(&template_body())
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => {
                            seen.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            eprintln!(
                                "caller error from {url}: {} {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            );
                            seen.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("dropped request to {url}: {e:?}");
                            seen.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect()
}

/// The Redis leader key's values over time (polled every 5 ms), from the start of the run.
type LeaderLog = Arc<Mutex<Vec<(Instant, Option<String>)>>>;

fn leader_watch(
    redis_url: String,
    key: String,
    stop: Arc<AtomicBool>,
) -> (LeaderLog, tokio::task::JoinHandle<()>) {
    let log: LeaderLog = Arc::default();
    let out = log.clone();
    let task = tokio::spawn(async move {
        let client = redis::Client::open(redis_url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut last: Option<Option<String>> = None;
        while !stop.load(Ordering::Relaxed) {
            let v: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            if last.as_ref() != Some(&v) {
                out.lock().unwrap().push((Instant::now(), v.clone()));
                last = Some(v);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (log, task)
}

/// What a fresh-connection probe of one node's `/readyz` every 10 ms saw while it stopped.
#[derive(Debug, Default)]
struct Closing {
    /// First 503 whose message says `draining`.
    first_draining: Option<Instant>,
    /// Last answer of any kind (the listener closed after it).
    last_answer: Option<Instant>,
    /// First refused connection.
    first_refused: Option<Instant>,
    /// A 503 that did not say `draining`, or a 200 after draining began.
    unexpected: Vec<String>,
}

fn watch_closing(url: String) -> tokio::task::JoinHandle<Closing> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    tokio::spawn(async move {
        let mut c = Closing::default();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match http.get(format!("{url}/readyz")).send().await {
                Ok(r) => {
                    let now = Instant::now();
                    c.last_answer = Some(now);
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap_or_default();
                    match (status, c.first_draining) {
                        (200, None) => {}
                        (503, _) if body.contains("draining") => {
                            c.first_draining.get_or_insert(now);
                        }
                        _ => c.unexpected.push(format!("{status} {body}")),
                    }
                }
                Err(e) if e.is_connect() => {
                    c.first_refused = Some(Instant::now());
                    break;
                }
                // The listener closed while this probe connected: not an answer.
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        c
    })
}

/// Requests sent straight to a draining node (bypassing the load balancer) late in its drain
/// delay: still in flight when it stops accepting. Each must be answered 200.
fn stragglers(url: String, signalled: Instant) -> tokio::task::JoinHandle<Vec<Straggler>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        let mut at = signalled + DRAIN - Duration::from_millis(400);
        while at < signalled + DRAIN - Duration::from_millis(40) {
            tokio::time::sleep_until(at.into()).await;
            let (http, url) = (http.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                let r = http
                    .post(format!("{url}{TPL}"))
                    .bearer_auth(API_KEY)
                    .json(&template_body())
                    .send()
                    .await;
                Straggler {
                    started,
                    ended: Instant::now(),
                    outcome: match r {
                        Ok(r) => Ok(r.status().as_u16()),
                        Err(e) => Err(format!("{e:?}")),
                    },
                }
            }));
            at += Duration::from_millis(40);
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    })
}

struct Straggler {
    started: Instant,
    ended: Instant,
    outcome: Result<u16, String>,
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_rolling_restart_drops_nothing() {
    require_redis();
    let run_started = Instant::now();
    let redis = RedisServer::start();
    let fake = FakeWechat::start(
        FakeConfig::demo(),
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    )
    .await
    .unwrap();
    fake.state().add_fault(Fault {
        path: Some(paths::TEMPLATE_SEND.into()),
        appid: None,
        count: u32::MAX,
        action: FaultAction::Latency {
            ms: SEND_LATENCY_MS,
        },
    });
    let prefix = unique_prefix();
    let dir = temp_dir("drain");
    let cfg = node_config(&redis.url(), &prefix, &fake.base_url());
    let mut nodes: Vec<_> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|n| GatewayProcess::start(&dir, n, &cfg))
        .collect();
    for n in &nodes {
        n.wait_ready(Duration::from_secs(15)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let rot = Arc::new(Rotation {
        urls: nodes.iter().map(|n| n.url.clone()).collect(),
        in_rotation: (0..nodes.len()).map(|_| AtomicBool::new(false)).collect(),
        removed_at: Mutex::new(vec![None; nodes.len()]),
    });
    let lb = load_balancer(rot.clone(), stop.clone());
    let leader_key = format!("{prefix}:{{{}}}:leader", demo::OA_APPID);
    let (leaders, leader_task) = leader_watch(redis.url(), leader_key, stop.clone());
    let seen = Arc::new(Callers::default());
    let senders = callers(rot.clone(), stop.clone(), seen.clone());
    wait_until("sends through every node", Duration::from_secs(10), || {
        seen.ok.load(Ordering::Relaxed) >= 30
    })
    .await;

    let mut handoffs = Vec::new();
    let mut straggled = 0;
    for (i, node) in nodes.iter_mut().enumerate() {
        let node_id = node.node_id.clone();
        let led = leaders.lock().unwrap().last().and_then(|(_, v)| v.clone());
        let closing = watch_closing(node.url.clone());
        tokio::time::sleep(Duration::from_millis(30)).await;
        let signalled = Instant::now();
        node.terminate();
        let late = stragglers(node.url.clone(), signalled);
        let status = node
            .wait_exit(Duration::from_secs(8))
            .await
            .unwrap_or_else(|| panic!("{node_id} still runs 8 s after SIGTERM"));
        let exited = Instant::now();
        let c = closing.await.unwrap();
        let late = late.await.unwrap();
        let removed = rot.removed_at.lock().unwrap()[i];

        assert!(
            status.success(),
            "{node_id} exited with {status}; its log:\n{}",
            node.logs()
        );
        assert!(c.unexpected.is_empty(), "{node_id}: {:?}", c.unexpected);
        let draining = c.first_draining.expect("/readyz said draining");
        let refused = c.first_refused.expect("the port stopped accepting");
        let removed = removed.expect("the load balancer took the node out");
        assert!(
            draining > signalled && refused > draining && removed > signalled && removed < refused,
            "{node_id}: not ready before it stopped listening"
        );
        for s in &late {
            assert_eq!(
                s.outcome,
                Ok(200),
                "{node_id}: a request it accepted while draining was not answered"
            );
        }
        let last_answer = c.last_answer.unwrap();
        let across = late
            .iter()
            .filter(|s| s.started < last_answer && s.ended > refused)
            .count();
        straggled += across;
        println!(
            "{node_id}: SIGTERM -> /readyz 503 draining after {} ms, out of rotation after {} ms, \
             not ready {} ms before it stopped listening; exit {status} {} ms after SIGTERM; \
             {} requests sent to it late in the drain answered 200, {across} of them in flight \
             as it stopped listening",
            ms(draining - signalled),
            ms(removed - signalled),
            ms(refused - draining),
            ms(exited - signalled),
            late.len(),
        );

        if led.as_deref() == Some(node_id.as_str()) {
            // Released as it stopped (an expiry would take the lease's 5 s), taken by another
            // node at its next refresher tick.
            wait_until("a new leader", Duration::from_secs(3), || {
                leaders
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|(at, v)| *at > signalled && v.as_ref().is_some_and(|v| *v != node_id))
            })
            .await;
            let log = leaders.lock().unwrap().clone();
            let (released, _) = log
                .iter()
                .find(|(at, v)| *at > signalled && v.as_deref() != Some(node_id.as_str()))
                .cloned()
                .unwrap();
            let (taken, new_leader) = log
                .iter()
                .find(|(at, v)| *at >= released && v.is_some())
                .cloned()
                .unwrap();
            let new_leader = new_leader.unwrap();
            assert!(
                released <= exited,
                "{node_id} released its lease before it exited"
            );
            let handoff = taken - released;
            println!(
                "{node_id} led: released its lease {} ms after SIGTERM ({} ms after its port \
                 closed), {new_leader} took it {} ms later",
                ms(released - signalled),
                released.saturating_duration_since(refused).as_millis(),
                ms(handoff),
            );
            assert!(
                handoff < Duration::from_secs(1),
                "leadership moved in {handoff:?}"
            );
            handoffs.push(handoff);
        }

        node.restart();
        node.wait_ready(Duration::from_secs(15)).await;
        wait_until(
            "the restarted node back in rotation",
            Duration::from_secs(5),
            || rot.in_rotation[i].load(Ordering::SeqCst),
        )
        .await;
        let ok = seen.ok.load(Ordering::Relaxed);
        wait_until("sends after the restart", Duration::from_secs(5), || {
            seen.ok.load(Ordering::Relaxed) >= ok + 20
        })
        .await;
    }

    stop.store(true, Ordering::Relaxed);
    for t in senders {
        t.await.unwrap();
    }
    lb.await.unwrap();
    leader_task.await.unwrap();
    let (ok, errors, dropped) = (
        seen.ok.load(Ordering::Relaxed),
        seen.errors.load(Ordering::Relaxed),
        seen.dropped.load(Ordering::Relaxed),
    );
    let delivered = fake
        .state()
        .calls()
        .iter()
        .filter(|c| c.path == paths::TEMPLATE_SEND && notified(c))
        .count();
    println!(
        "rolling restart of {} nodes in {:?}: {} requests, {ok} answered 200, {dropped} dropped, \
         {errors} caller errors; {delivered} sends reached the fake; {straggled} late requests \
         in flight as a node stopped listening; leadership hand-offs {:?}",
        nodes.len(),
        run_started.elapsed(),
        ok + errors + dropped,
        handoffs,
    );
    assert_eq!(dropped, 0, "no request dropped");
    assert_eq!(errors, 0, "no caller error");
    assert!(!handoffs.is_empty(), "the leader was stopped at least once");
    assert!(
        straggled > 0,
        "some requests were in flight as a node stopped listening (shutdown finished them)"
    );
}
