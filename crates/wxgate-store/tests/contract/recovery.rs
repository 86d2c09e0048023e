//! The store survives what operators do to Redis: `SCRIPT FLUSH`, a restart, a Sentinel
//! failover in the middle of sends.

use std::time::{Duration, Instant};

use wxgate_redis_testkit::{require_redis, RedisCluster, RedisSentinel, RedisServer};
use wxgate_store::redis_store::Topology;
use wxgate_store::{Acquire, AcquireRequest, Limit, NewToken, Store, StoreError, TokenSource};

use crate::{prefix, redis_store};

const APP: &str = "wx0000000000000bbb";

async fn try_acquire(s: &dyn Store) -> Result<Acquire, StoreError> {
    let limits = [Limit {
        scope: wxgate_store::LimitScope::Api(wxgate_store::Api::TemplateSend),
        limit: 1_000_000,
        window_ms: 60_000,
    }];
    s.acquire(&AcquireRequest {
        appid: APP,
        limits: &limits,
        quotas: &[],
        blocks: &[wxgate_store::Api::TemplateSend],
        guard_ms: 100,
        known_seq: 0,
        loss: Default::default(),
    })
    .await
    .map(|r| r.decision)
}

/// Retries `try_acquire` until it succeeds; returns how long that took.
async fn until_ok(s: &dyn Store, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        match try_acquire(s).await {
            Ok(Acquire::Granted { .. }) => return started.elapsed(),
            Ok(other) => panic!("{other:?}"),
            Err(e) => {
                assert!(
                    started.elapsed() < within,
                    "still failing after {within:?}: {e}"
                );
                assert!(
                    matches!(e, StoreError::Unavailable(_)),
                    "only `unavailable` while recovering: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn noscript_after_script_flush_and_restart_standalone() {
    require_redis();
    let mut server = RedisServer::start();
    let s = redis_store(Topology::Standalone { url: server.url() }, &prefix());
    assert!(matches!(
        try_acquire(&*s).await.unwrap(),
        Acquire::Granted { .. }
    ));
    server.cli(&["SCRIPT", "FLUSH"]);
    assert!(
        matches!(try_acquire(&*s).await.unwrap(), Acquire::Granted { .. }),
        "reloaded after NOSCRIPT"
    );
    server.restart();
    let took = until_ok(&*s, Duration::from_secs(10)).await;
    eprintln!("standalone restart: first success after {took:?}");
    // And tokens too, after the restart wiped them.
    assert!(s.read_token(APP).await.unwrap().is_none());
}

#[tokio::test]
async fn noscript_after_script_flush_cluster() {
    require_redis();
    let cluster = RedisCluster::start();
    let s = redis_store(
        Topology::Cluster {
            nodes: cluster.seed_urls(),
        },
        &prefix(),
    );
    assert!(matches!(
        try_acquire(&*s).await.unwrap(),
        Acquire::Granted { .. }
    ));
    cluster.flush_scripts();
    assert!(
        matches!(try_acquire(&*s).await.unwrap(), Acquire::Granted { .. }),
        "reloaded after NOSCRIPT"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_during_sends() {
    require_redis();
    let sentinel = RedisSentinel::start();
    let old_master = sentinel.master_port();
    let p = prefix();
    let s = redis_store(
        Topology::Sentinel {
            sentinels: sentinel.sentinel_urls(),
            master_name: RedisSentinel::MASTER_NAME.into(),
        },
        &p,
    );
    s.write_token(
        APP,
        &NewToken {
            age_ms: 0,
            access_token: "before-failover".into(),
            expires_in_ms: 600_000,
            fence: 0,
            node: "n1".into(),
            source: TokenSource::Stable,
        },
    )
    .await
    .unwrap();

    // Sends keep going in the background while the failover happens.
    let sender = {
        let s = s.clone();
        tokio::spawn(async move {
            let (mut ok, mut unavailable) = (0u32, 0u32);
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(8) {
                match try_acquire(&*s).await {
                    Ok(Acquire::Granted { .. }) => ok += 1,
                    Ok(other) => panic!("{other:?}"),
                    Err(StoreError::Unavailable(_)) => unavailable += 1,
                    Err(e) => panic!("unexpected error during failover: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok, unavailable)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failover_started = Instant::now();
    tokio::task::block_in_place(|| sentinel.failover());
    assert_ne!(sentinel.master_port(), old_master, "a replica was promoted");
    let recovered = until_ok(&*s, Duration::from_secs(15)).await;
    eprintln!(
        "sentinel failover took {:?}; sends recovered {recovered:?} after it",
        failover_started.elapsed()
    );

    // The data written before is there, and writes now land on the new master (the demoted
    // one accepts writes until the sentinels reconfigure it; the store must not write there).
    assert_eq!(
        s.read_token(APP).await.unwrap().unwrap().access_token,
        "before-failover"
    );
    let token_key = format!("{p}:{{{APP}}}:token");
    let moved = Instant::now();
    loop {
        s.write_token(
            APP,
            &NewToken {
                age_ms: 0,
                access_token: "after-failover".into(),
                expires_in_ms: 600_000,
                fence: 0,
                node: "n1".into(),
                source: TokenSource::Stable,
            },
        )
        .await
        .unwrap();
        if sentinel.cli_master(&["HGET", &token_key, "access_token"]) == "after-failover" {
            break;
        }
        assert!(
            moved.elapsed() < Duration::from_secs(5),
            "the store still writes to the demoted master"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "writes reached the new master {:?} after the failover completed",
        moved.elapsed()
    );
    let (ok, unavailable) = sender.await.unwrap();
    eprintln!("during the run: {ok} sends admitted, {unavailable} answered unavailable (503)");
    assert!(ok > 50, "sends continued: {ok}");
}

/// Each tokio runtime gets its own connection (an actix worker's commands never hop to the
/// thread of the runtime that happened to connect first), and a runtime that ends takes only its
/// own connection with it: the others keep working, and a new runtime connects afresh.
#[tokio::test]
async fn each_runtime_has_its_own_connection_and_outlives_the_others() {
    require_redis();
    let server = RedisServer::start();
    let s = redis_store(Topology::Standalone { url: server.url() }, &prefix());
    let on_new_runtime = || {
        let s = s.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move { try_acquire(&*s).await })
        })
        .join()
        .unwrap()
    };
    // A worker-like runtime makes the store's first connection, works, and ends: the
    // connection's driver task ends with it.
    assert!(matches!(on_new_runtime(), Ok(Acquire::Granted { .. })));
    // This runtime's first call already succeeds: it never used the ended runtime's connection.
    assert!(matches!(
        try_acquire(&*s).await,
        Ok(Acquire::Granted { .. })
    ));
    assert!(matches!(on_new_runtime(), Ok(Acquire::Granted { .. })));
    assert!(matches!(
        try_acquire(&*s).await,
        Ok(Acquire::Granted { .. })
    ));
}
