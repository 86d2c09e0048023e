//! `acquire` throughput against a Redis server: decisions per second from one process.
//!
//! ```sh
//! cargo run --release -p wxgate-store --example acquire_bench -- redis://127.0.0.1:6379 50 5
//! ```
//! Arguments: Redis URL, concurrency (requests in flight on one multiplexed connection),
//! seconds, and `full` (default) or `single`. Each decision is a realistic send: a block check, a daily quota, an app-wide
//! window and a per-recipient window (1,000 recipients, 20 per minute each), i.e. 4 keys.
//! `bench/store.sh` runs it next to `redis-benchmark` and reads Redis's own CPU per decision.
//! One single-threaded runtime, like a gateway worker: the acquires it makes in one scheduler
//! pass share script calls (src/redis_store/batch.rs).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wxgate_store::redis_store::{RedisConfig, RedisStore, Topology};
use wxgate_store::{Acquire, AcquireRequest, DailyQuota, Health, Limit, Limiter};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let concurrency: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(50);
    let seconds: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(5);
    // "full": block + quota + app window + per-recipient window; "single": one app window.
    let single = args.get(4).map(String::as_str) == Some("single");
    let store = Arc::new(
        RedisStore::new(RedisConfig {
            topology: Topology::Standalone { url },
            prefix: format!("wxgate-bench-{}", std::process::id()),
            username: None,
            password: None,
            sentinel_password: None,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(2),
            tls_ca_pem: None,
        })
        .expect("store"),
    );
    store.ping().await.expect("Redis answers");
    let granted = Arc::new(AtomicU64::new(0));
    let waited = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let run = Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (store, granted, waited) = (store.clone(), granted.clone(), waited.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = t as u64;
            while started.elapsed() < run {
                i += concurrency as u64;
                let user = format!("o-bench-{}", i % 1000);
                let mut limits = vec![Limit {
                    scope: wxgate_store::LimitScope::Api(wxgate_store::Api::TemplateSend),
                    limit: 1_000_000,
                    window_ms: 1_000,
                }];
                let mut quotas = Vec::new();
                let mut blocks: &[wxgate_store::Api] = &[];
                if !single {
                    limits.push(Limit {
                        scope: wxgate_store::LimitScope::Recipient(user),
                        limit: 20,
                        window_ms: 60_000,
                    });
                    quotas.push(DailyQuota {
                        api: wxgate_store::Api::TemplateSend,
                        limit: 1_000_000_000,
                    });
                    blocks = &[wxgate_store::Api::TemplateSend];
                }
                let req = AcquireRequest {
                    appid: "wx0123456789abcdef",
                    limits: &limits,
                    quotas: &quotas,
                    blocks,
                    guard_ms: 100,
                    known_seq: 0,
                    loss: Default::default(),
                };
                match store.acquire(&req).await.expect("acquire").decision {
                    Acquire::Granted { .. } => granted.fetch_add(1, Ordering::Relaxed),
                    _ => waited.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let (g, w) = (
        granted.load(Ordering::Relaxed),
        waited.load(Ordering::Relaxed),
    );
    println!(
        "acquire: {:.0} decisions/s ({g} granted, {w} refused) over {secs:.1} s, concurrency {concurrency}, {} keys",
        (g + w) as f64 / secs,
        if single { 1 } else { 4 }
    );
}
