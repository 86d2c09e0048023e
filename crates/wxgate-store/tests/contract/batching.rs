//! Acquires made together are decided by shared script calls (`src/redis_store/batch.rs`), and
//! decided exactly as if they had been made one by one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wxgate_redis_testkit::{require_redis, RedisServer};
use wxgate_store::memory::MemoryStore;
use wxgate_store::redis_store::Topology;
use wxgate_store::{
    Acquire, AcquireRequest, Api, BlockCause, DailyQuota, Limit, LimitScope, LossPolicy, Store,
    StoreObserver,
};

use crate::{prefix, redis_store};

const APP: &str = "wx00000000000000bb";

/// Counts the store's calls per operation.
#[derive(Default)]
struct Calls(Mutex<HashMap<&'static str, u64>>);

impl StoreObserver for Calls {
    fn observe(&self, script: &'static str, _seconds: f64, _ok: bool) {
        *self.0.lock().unwrap().entry(script).or_default() += 1;
    }
}

impl Calls {
    fn of(&self, script: &str) -> u64 {
        self.0.lock().unwrap().get(script).copied().unwrap_or(0)
    }
}

/// One send: its API and recipient.
struct Send {
    api: Api,
    openid: String,
}

/// The sends: 24, to recipients r0..r5 (4 each), template and subscribe sends interleaved.
fn sends() -> Vec<Send> {
    (0..24)
        .map(|i| Send {
            api: if i % 3 == 2 {
                Api::SubscribeSend
            } else {
                Api::TemplateSend
            },
            openid: format!("r{}", i % 6),
        })
        .collect()
}

/// A send's limits: its API's window (5 per minute), the recipient's (2 per minute).
fn limits(s: &Send) -> Vec<Limit> {
    vec![
        Limit {
            scope: LimitScope::Api(s.api),
            limit: 5,
            window_ms: 60_000,
        },
        Limit {
            scope: LimitScope::Recipient(s.openid.clone()),
            limit: 2,
            window_ms: 60_000,
        },
    ]
}

/// Template sends have a daily quota of 4 (subscribe sends none); subscribe sends honour a
/// pause of their API.
async fn acquire(store: &dyn Store, s: &Send, known_seq: u64) -> Acquire {
    let l = limits(s);
    let quotas: &[DailyQuota] = match s.api {
        Api::TemplateSend => &[DailyQuota {
            api: Api::TemplateSend,
            limit: 4,
        }],
        _ => &[],
    };
    let blocks: &[Api] = match s.api {
        Api::SubscribeSend => &[Api::SubscribeSend],
        _ => &[],
    };
    store
        .acquire(&AcquireRequest {
            appid: APP,
            limits: &l,
            quotas,
            blocks,
            guard_ms: 0,
            known_seq,
            loss: LossPolicy::default(),
        })
        .await
        .expect("acquire")
        .decision
}

/// A request with only these windows: no quota, no pause.
fn windows_only(limits: &[Limit], known_seq: u64) -> AcquireRequest<'_> {
    AcquireRequest {
        appid: APP,
        limits,
        quotas: &[],
        blocks: &[],
        guard_ms: 0,
        known_seq,
        loss: LossPolicy::default(),
    }
}

/// A decision without its times (which differ between two runs).
fn timeless(a: &Acquire) -> String {
    match a {
        Acquire::Granted { seq, .. } => format!("granted seq {seq}"),
        Acquire::Wait { window, held, .. } => format!("wait window {window} held {held}"),
        Acquire::Blocked { cause, .. } => format!("blocked {cause:?}"),
    }
}

/// On one runtime, sends made in the same scheduler pass share script calls: one per shape
/// (here two: template sends with their quota, subscribe sends with their pause), not one per
/// send. Their decisions are those of the same sends made one by one, in the same order
/// (windows of the app and of each recipient, the quota); the grant sequence is handed out
/// call by call.
#[tokio::test]
async fn sends_made_together_share_calls_and_decide_as_one_by_one() {
    require_redis();
    let server = RedisServer::start();
    let topology = || Topology::Standalone { url: server.url() };

    let one_by_one_store = redis_store(topology(), &prefix());
    let mut one_by_one = Vec::new();
    for s in &sends() {
        one_by_one.push(timeless(&acquire(&*one_by_one_store, s, 0).await));
    }

    let store = redis_store(topology(), &prefix());
    let calls = Arc::new(Calls::default());
    store.set_observer(calls.clone());
    let all = sends();
    let together: Vec<String> =
        futures_util::future::join_all(all.iter().map(|s| acquire(&*store, s, 0)))
            .await
            .iter()
            .map(timeless)
            .collect();
    assert_eq!(calls.of("acquire"), 2, "one script call per shape");
    // The same decisions. Grant sequences follow the calls: within a shape they rise in the
    // order the sends were made, and all of them together are 1..=8 as one by one.
    let unsequenced = |v: &[String]| -> Vec<String> {
        v.iter()
            .map(|d| d.split(" seq ").next().unwrap().to_string())
            .collect()
    };
    assert_eq!(unsequenced(&together), unsequenced(&one_by_one));
    let seqs = |api: Api| -> Vec<u64> {
        all.iter()
            .zip(&together)
            .filter(|(s, _)| s.api == api)
            .filter_map(|(_, d)| d.split(" seq ").nth(1).map(|n| n.parse().unwrap()))
            .collect()
    };
    for api in [Api::TemplateSend, Api::SubscribeSend] {
        let s = seqs(api);
        assert!(s.windows(2).all(|w| w[0] < w[1]), "{api:?}: {s:?}");
    }
    let mut every: Vec<u64> = [seqs(Api::TemplateSend), seqs(Api::SubscribeSend)].concat();
    every.sort_unstable();
    assert_eq!(every, (1..=8).collect::<Vec<u64>>());

    // What the decisions add up to: 4 template grants (the quota), 5 subscribe grants (their
    // window), never more than 2 to one recipient.
    let granted = |api: Api| {
        all.iter()
            .zip(&together)
            .filter(|(s, d)| s.api == api && d.starts_with("granted"))
            .count()
    };
    assert_eq!(granted(Api::TemplateSend), 4, "{together:#?}");
    assert_eq!(granted(Api::SubscribeSend), 4, "{together:#?}");
    assert!(together.iter().any(|d| d.contains(&format!(
        "{:?}",
        BlockCause::Quota {
            api: Api::TemplateSend,
            limit: 4
        }
    ))));
    for r in 0..6 {
        let to_r = all
            .iter()
            .zip(&together)
            .filter(|(s, d)| s.openid == format!("r{r}") && d.starts_with("granted"))
            .count();
        assert!(to_r <= 2, "r{r}: {to_r}");
    }

    // A pause set now blocks a whole batch of subscribe sends, in one call.
    let until = store.now_ms().await.unwrap() + 60_000;
    store
        .block(APP, Api::SubscribeSend, until, 45009)
        .await
        .unwrap();
    let subscribe: Vec<Send> = (0..5)
        .map(|i| Send {
            api: Api::SubscribeSend,
            openid: format!("p{i}"),
        })
        .collect();
    let before = calls.of("acquire");
    for d in futures_util::future::join_all(subscribe.iter().map(|s| acquire(&*store, s, 0))).await
    {
        assert!(
            matches!(
                d,
                Acquire::Blocked {
                    cause: BlockCause::Paused {
                        api: Api::SubscribeSend,
                        errcode: 45009
                    },
                    ..
                }
            ),
            "{d:?}"
        );
    }
    assert_eq!(calls.of("acquire") - before, 1);
}

/// A batch with a send whose caller saw more grants than the store holds (a state loss): the
/// loss is reported once (to the batch's first send: it is one loss, counted once) and every
/// send of the batch is held.
#[tokio::test]
async fn a_state_loss_found_by_a_batch_holds_all_its_sends() {
    require_redis();
    let server = RedisServer::start();
    let store = redis_store(Topology::Standalone { url: server.url() }, &prefix());
    let l = [Limit {
        scope: LimitScope::Api(Api::TemplateSend),
        limit: 5,
        window_ms: 60_000,
    }];
    let (a, b) = (windows_only(&l, 0), windows_only(&l, 1_000));
    let replies = futures_util::future::join_all([store.acquire(&a), store.acquire(&b)]).await;
    let replies: Vec<_> = replies.into_iter().map(|r| r.expect("acquire")).collect();
    assert_eq!(
        replies.iter().filter(|r| r.state_loss).count(),
        1,
        "{replies:?}"
    );
    for r in replies {
        assert!(
            matches!(r.decision, Acquire::Wait { held: true, .. }),
            "{r:?}"
        );
    }
}

/// Redis unreachable: every send of a batch gets the error, promptly; none hangs.
#[tokio::test]
async fn a_failed_batch_answers_every_send() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let store = redis_store(
        Topology::Standalone {
            url: format!("redis://127.0.0.1:{port}"),
        },
        &prefix(),
    );
    let all = sends();
    let started = std::time::Instant::now();
    let errors = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::future::join_all(all.iter().map(|s| {
            let l = limits(s);
            let store = store.clone();
            async move { store.acquire(&windows_only(&l, 0)).await }
        })),
    )
    .await
    .expect("every send answered");
    assert!(errors.iter().all(|r| r.is_err()), "{errors:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Many tasks on a multi-threaded runtime, several stores (replicas): batches form and split
/// as they may, and an app window still grants exactly its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_never_grant_past_a_window() {
    require_redis();
    let server = RedisServer::start();
    let p = prefix();
    let replicas: Vec<Arc<dyn Store>> = (0..3)
        .map(|_| redis_store(Topology::Standalone { url: server.url() }, &p))
        .collect();
    let granted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..60 {
        let store = replicas[i % 3].clone();
        let granted = granted.clone();
        tasks.push(tokio::spawn(async move {
            let l = [Limit {
                scope: LimitScope::Api(Api::TemplateSend),
                limit: 17,
                window_ms: 60_000,
            }];
            let d = store
                .acquire(&windows_only(&l, 0))
                .await
                .expect("acquire")
                .decision;
            if matches!(d, Acquire::Granted { .. }) {
                granted.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(granted.load(Ordering::Relaxed), 17);
}

/// The memory store decides the same sends the same way (it has no batches: every acquire is
/// decided under one lock), so the two backends stay interchangeable.
#[tokio::test]
async fn the_memory_store_decides_the_same_sends_alike() {
    require_redis();
    let server = RedisServer::start();
    let redis = redis_store(Topology::Standalone { url: server.url() }, &prefix());
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let all = sends();
    let decide = |store: Arc<dyn Store>| {
        let all = &all;
        async move {
            futures_util::future::join_all(all.iter().map(|s| {
                let store = store.clone();
                async move { acquire(&*store, s, 0).await }
            }))
            .await
            .iter()
            .map(|d| match d {
                // The memory store keeps no grant sequence.
                Acquire::Granted { .. } => "granted".to_string(),
                d => timeless(d),
            })
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(decide(redis).await, decide(memory).await);
}
