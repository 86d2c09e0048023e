//! Many "replicas" (independent stores, each with its own connection) hammer one limit at
//! several times its rate for several windows. The admit times (Redis clock) must show at most
//! N in every interval of length W, and the admits must use at least 90% of the capacity.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wxgate_redis_testkit::{require_redis, RedisCluster, RedisServer};
use wxgate_store::memory::MemoryStore;
use wxgate_store::redis_store::Topology;
use wxgate_store::{Acquire, AcquireRequest, Limit, Store};

use crate::redis_store;

const N: u64 = 40;
const W_MS: u64 = 1_000;
/// Keeps each entry 1 ms past W: admit times are reported in whole ms, so two admits W+1 ms
/// apart in µs are at least W apart in ms.
const GUARD_MS: u64 = 1;
const RUN: Duration = Duration::from_millis(3_600);

/// `replicas` stores × `tasks` tasks each acquire as fast as they can; returns admit times.
async fn hammer(replicas: Vec<Arc<dyn Store>>, tasks: usize) -> (Vec<u64>, u64) {
    let admits = Arc::new(Mutex::new(Vec::new()));
    let attempts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for store in replicas {
        for _ in 0..tasks {
            let store = store.clone();
            let admits = admits.clone();
            let attempts = attempts.clone();
            handles.push(tokio::spawn(async move {
                let limits = [Limit {
                    scope: wxgate_store::LimitScope::Api(wxgate_store::Api::TemplateSend),
                    limit: N,
                    window_ms: W_MS,
                }];
                while started.elapsed() < RUN {
                    let req = AcquireRequest {
                        appid: "wx00000000000000aa",
                        limits: &limits,
                        quotas: &[],
                        blocks: &[],
                        guard_ms: GUARD_MS,
                        known_seq: 0,
                        loss: Default::default(),
                    };
                    attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    match store.acquire(&req).await.expect("acquire").decision {
                        Acquire::Granted { now_ms, .. } => admits.lock().unwrap().push(now_ms),
                        // Hammer: retry soon rather than sleeping the whole wait.
                        Acquire::Wait { wait_ms, .. } => {
                            tokio::time::sleep(Duration::from_millis(wait_ms.min(5))).await
                        }
                        other => panic!("{other:?}"),
                    }
                }
            }));
        }
    }
    for h in handles {
        h.await.unwrap();
    }
    let mut v = admits.lock().unwrap().clone();
    v.sort_unstable();
    (v, attempts.load(std::sync::atomic::Ordering::Relaxed))
}

#[track_caller]
fn check(backend: &str, admits: &[u64], attempts: u64) {
    // At most N in any interval of length W: the (i+N)-th admit is at least W after the i-th.
    for i in 0..admits.len().saturating_sub(N as usize) {
        let gap = admits[i + N as usize] - admits[i];
        assert!(
            gap >= W_MS,
            "{backend}: admits {i} and {} are {gap} ms apart (> {N} in {W_MS} ms)",
            i + N as usize
        );
    }
    let span = admits.last().unwrap() - admits.first().unwrap();
    // The capacity of [first, last]: N per W + guard, plus the first burst.
    let capacity = N * (span / (W_MS + GUARD_MS)) + N;
    let used = admits.len() as u64;
    assert!(
        used * 10 >= capacity * 9,
        "{backend}: {used} admits of a capacity of {capacity}"
    );
    let offered = attempts as f64 / (RUN.as_secs_f64() * 1000.0 / W_MS as f64);
    assert!(
        offered >= 3.0 * N as f64,
        "{backend}: offered only {offered:.0} per window"
    );
    eprintln!("{backend}: {used} admits / capacity {capacity} over {span} ms; {attempts} attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_never_exceed_n_per_w_standalone() {
    require_redis();
    let server = RedisServer::start();
    let p = crate::prefix();
    let replicas = (0..4)
        .map(|_| redis_store(Topology::Standalone { url: server.url() }, &p))
        .collect();
    let (admits, attempts) = hammer(replicas, 6).await;
    check("standalone", &admits, attempts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_never_exceed_n_per_w_cluster() {
    require_redis();
    let cluster = RedisCluster::start();
    let p = crate::prefix();
    let replicas = (0..4)
        .map(|_| {
            redis_store(
                Topology::Cluster {
                    nodes: cluster.seed_urls(),
                },
                &p,
            )
        })
        .collect();
    let (admits, attempts) = hammer(replicas, 6).await;
    check("cluster", &admits, attempts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_never_exceeds_n_per_w() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let (admits, attempts) = hammer(vec![store], 8).await;
    check("memory", &admits, attempts);
}
