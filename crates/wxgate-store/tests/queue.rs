//! The queue's Redis operations against a real `redis-server`: the enqueue script (back-pressure,
//! idempotent enqueue), the consumer-group protocol (read, claim after idle, finish = store +
//! ack + delete) and that deletion never drops an entry that is not acknowledged.

use std::time::Duration;

use wxgate_redis_testkit::RedisServer;
use wxgate_store::redis_store::{RedisConfig, RedisStore, Topology};
use wxgate_store::{EnqueueRequest, Enqueued, Finish, Queue};

fn store(redis: &RedisServer) -> RedisStore {
    RedisStore::new(RedisConfig {
        topology: Topology::Standalone { url: redis.url() },
        prefix: format!("q-{}", uuid::Uuid::new_v4().simple()),
        username: None,
        password: None,
        sentinel_password: None,
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
        tls_ca_pem: None,
    })
    .unwrap()
}

fn req<'a>(id: &'a str, key: Option<&'a str>, max: u64) -> EnqueueRequest<'a> {
    EnqueueRequest {
        id,
        payload: "{}",
        idempotency: key.map(|k| ("svc", k)),
        max_backlog: max,
        ttl_ms: 60_000,
    }
}

const APP: &str = "wx0000000000000001";

#[tokio::test]
async fn enqueue_backlog_and_idempotency() {
    let redis = RedisServer::start();
    let s = store(&redis);
    s.ensure_group(APP).await.unwrap();
    assert_eq!(
        s.enqueue(APP, &req("m1", Some("k1"), 2)).await.unwrap(),
        Enqueued::Accepted { id: "m1".into() }
    );
    // The same key from any replica: the same id, nothing written.
    assert_eq!(
        s.enqueue(APP, &req("m1-again", Some("k1"), 2))
            .await
            .unwrap(),
        Enqueued::Existing { id: "m1".into() }
    );
    assert_eq!(s.stats(APP).await.unwrap().depth, 1);
    assert!(s.message(APP, "m1-again").await.unwrap().is_none());
    s.enqueue(APP, &req("m2", None, 2)).await.unwrap();
    // Full: refused, nothing written (not even the idempotency mapping).
    match s.enqueue(APP, &req("m3", Some("k3"), 2)).await.unwrap() {
        Enqueued::Full { depth, .. } => assert_eq!(depth, 2),
        other => panic!("expected Full, got {other:?}"),
    }
    assert!(s.message(APP, "m3").await.unwrap().is_none());
    let st = s.stats(APP).await.unwrap();
    assert_eq!(st.depth, 2);
    assert!(st.oldest_age_ms.is_some());
    let m = s.message(APP, "m1").await.unwrap().unwrap();
    assert_eq!(m.state, "queued");
    assert_eq!(m.payload, "{}");
}

#[tokio::test]
async fn finish_acks_only_its_entry_and_idle_entries_are_claimed() {
    let redis = RedisServer::start();
    let s = store(&redis);
    s.ensure_group(APP).await.unwrap();
    for id in ["a", "b", "c"] {
        s.enqueue(APP, &req(id, None, 100)).await.unwrap();
    }
    let got = s.read(APP, "node-1", 3, 100).await.unwrap();
    assert_eq!(
        got.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    // Nothing new for another consumer: the block times out empty.
    assert!(s.read(APP, "node-2", 3, 50).await.unwrap().is_empty());
    // node-1 finishes `a` only, then "dies".
    let acked = s
        .finish(
            APP,
            &Finish {
                entry: &got[0].entry,
                id: "a",
                state: "sent",
                msgid: Some("42"),
                error: None,
                dead_letter: false,
                ttl_ms: 60_000,
                node: "node-1",
                attempts: None,
            },
        )
        .await
        .unwrap();
    assert!(acked);
    let st = s.stats(APP).await.unwrap();
    // The acknowledged entry is deleted; the unacknowledged ones stay.
    assert_eq!((st.depth, st.pending), (2, 2));
    let a = s.message(APP, "a").await.unwrap().unwrap();
    assert_eq!((a.state.as_str(), a.msgid.as_deref()), ("sent", Some("42")));
    // Touched entries are not idle; the others are claimed by node-2 once idle.
    assert!(s.touch(APP, "node-1", &got[1].entry).await.unwrap());
    assert!(!s.touch(APP, "node-2", &got[1].entry).await.unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let claimed = loop {
        let c = s.claim_idle(APP, "node-2", 200, 10).await.unwrap();
        if !c.is_empty() {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "nothing claimed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(claimed.iter().any(|e| e.id == "c" || e.id == "b"));
    // A second finish of the same entry acknowledges nothing and dead-letters nothing.
    let f = Finish {
        entry: &got[2].entry,
        id: "c",
        state: "failed",
        msgid: None,
        error: Some("{\"code\":\"x\"}"),
        dead_letter: true,
        ttl_ms: 60_000,
        node: "node-2",
        attempts: None,
    };
    assert!(s.finish(APP, &f).await.unwrap());
    assert!(!s.finish(APP, &f).await.unwrap());
    let dl = s.dead_letters(APP, 10).await.unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].id, "c");
    // Redrive: back on the stream as a new generation, out of the dead letters.
    assert!(s.redrive(APP, &dl[0], 60_000).await.unwrap());
    assert!(s.dead_letters(APP, 10).await.unwrap().is_empty());
    let c = s.message(APP, "c").await.unwrap().unwrap();
    assert_eq!((c.state.as_str(), c.gen), ("queued", 1));
    let st = s.stats(APP).await.unwrap();
    assert_eq!(st.depth, 2); // b (pending) and the re-driven c
}

#[tokio::test]
async fn a_lost_group_is_recreated_by_the_reader() {
    let redis = RedisServer::start();
    let s = store(&redis);
    s.ensure_group(APP).await.unwrap();
    redis.cli(&["FLUSHALL"]);
    assert!(s.read(APP, "n", 1, 20).await.unwrap().is_empty());
    s.enqueue(APP, &req("x", None, 10)).await.unwrap();
    assert_eq!(s.read(APP, "n", 1, 20).await.unwrap()[0].id, "x");
}

/// The same protocol on a 3-master Redis Cluster: every key of the app in one slot (the
/// `{appid}` hash tag), the blocking read on its own connection through the cluster client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_on_a_redis_cluster() {
    wxgate_redis_testkit::require_redis();
    let cluster = wxgate_redis_testkit::RedisCluster::start();
    let s = RedisStore::new(RedisConfig {
        topology: Topology::Cluster {
            nodes: cluster.seed_urls(),
        },
        prefix: format!("q-{}", uuid::Uuid::new_v4().simple()),
        username: None,
        password: None,
        sentinel_password: None,
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
        tls_ca_pem: None,
    })
    .unwrap();
    s.ensure_group(APP).await.unwrap();
    // An empty blocking read times out cleanly (the connection's timeout covers the block).
    assert!(s.read(APP, "n1", 1, 300).await.unwrap().is_empty());
    s.enqueue(APP, &req("m1", Some("k"), 10)).await.unwrap();
    let got = s.read(APP, "n1", 5, 300).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(s
        .finish(
            APP,
            &Finish {
                entry: &got[0].entry,
                id: "m1",
                state: "failed",
                msgid: None,
                error: Some("{}"),
                dead_letter: true,
                ttl_ms: 60_000,
                node: "n1",
                attempts: None,
            },
        )
        .await
        .unwrap());
    let st = s.stats(APP).await.unwrap();
    assert_eq!((st.depth, st.pending, st.dead_letters), (0, 0, 1));
    let dl = s.dead_letters(APP, 10).await.unwrap();
    assert!(s.redrive(APP, &dl[0], 60_000).await.unwrap());
    assert_eq!(s.read(APP, "n2", 5, 300).await.unwrap()[0].id, "m1");
}
