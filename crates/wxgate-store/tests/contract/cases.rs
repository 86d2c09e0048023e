//! The contract cases, each a function of a store; the backends below run them all.

use std::sync::Arc;
use std::time::Duration;

use wxgate_redis_testkit::{require_redis, RedisCluster, RedisSentinel, RedisServer};
use wxgate_store::memory::MemoryStore;
use wxgate_store::redis_store::Topology;
use wxgate_store::{
    Acquire, AcquireReply, AcquireRequest, Api, BlockCause, ClaimRequest, DailyQuota, IdemClaim,
    Limit, LimitScope, LossPolicy, NewToken, Store, TokenSource, TokenWrite,
};

use crate::{prefix, redis_store};

fn new_token(value: &str, fence: u64, node: &str) -> NewToken {
    NewToken {
        access_token: value.into(),
        expires_in_ms: 7_200_000,
        age_ms: 0,
        fence,
        node: node.into(),
        source: TokenSource::Stable,
    }
}

/// `user:<openid>` limits a recipient; anything else names an API.
fn limit(name: &str, limit: u64, window_ms: u64) -> Limit {
    let scope = match name.strip_prefix("user:") {
        Some(openid) => LimitScope::Recipient(openid.into()),
        None => LimitScope::Api(Api::parse(name).expect("an API name")),
    };
    Limit {
        scope,
        limit,
        window_ms,
    }
}

async fn acquire(
    s: &dyn Store,
    appid: &str,
    limits: &[Limit],
    quotas: &[DailyQuota],
    blocks: &[Api],
) -> Acquire {
    acquire_seen(s, appid, limits, quotas, blocks, 0, true)
        .await
        .decision
}

/// `acquire` by a caller that has seen grant sequence `known_seq`.
async fn acquire_seen(
    s: &dyn Store,
    appid: &str,
    limits: &[Limit],
    quotas: &[DailyQuota],
    blocks: &[Api],
    known_seq: u64,
    hold: bool,
) -> AcquireReply {
    s.acquire(&AcquireRequest {
        appid,
        limits,
        quotas,
        blocks,
        guard_ms: 0,
        known_seq,
        loss: LossPolicy {
            hold,
            hold_max_window_ms: 300_000,
        },
    })
    .await
    .expect("acquire")
}

fn claim<'a>(key: &'a str, request_id: &'a str, lease_ms: u64) -> ClaimRequest<'a> {
    ClaimRequest {
        key,
        request_id,
        api: Api::TemplateSend,
        client_msg_id: Some("cmi-1"),
        lease_ms,
        ttl_ms: 60_000,
    }
}

async fn token_roundtrip(s: &dyn Store, app: &str) {
    assert!(s.read_token(app).await.unwrap().is_none());
    let before = s.now_ms().await.unwrap();
    let TokenWrite::Written(w) = s
        .write_token(app, &new_token("tok-1", 0, "n1"))
        .await
        .unwrap()
    else {
        panic!("first write refused")
    };
    assert!(w.fetched_at_ms >= before && w.expires_at_ms == w.fetched_at_ms + 7_200_000);
    let r = s.read_token(app).await.unwrap().expect("stored");
    assert_eq!(r, w);
    assert_eq!(
        (r.access_token.as_str(), r.node.as_str(), r.source),
        ("tok-1", "n1", TokenSource::Stable)
    );
}

async fn stale_fence_is_refused(s: &dyn Store, app: &str) {
    let f1 = s
        .acquire_lease(app, "node-a", 10_000, 0)
        .await
        .unwrap()
        .expect("a leads");
    assert!(matches!(
        s.write_token(app, &new_token("from-a", f1, "node-a"))
            .await
            .unwrap(),
        TokenWrite::Written(_)
    ));
    assert!(s.release_lease(app, "node-a").await.unwrap());
    let f2 = s
        .acquire_lease(app, "node-b", 10_000, 0)
        .await
        .unwrap()
        .expect("b leads");
    assert!(f2 > f1, "a new leadership increments the fence");
    // a, no longer leader, tries to write: refused even before b wrote anything.
    assert_eq!(
        s.write_token(app, &new_token("stale-a", f1, "node-a"))
            .await
            .unwrap(),
        TokenWrite::StaleFence { stored_fence: f2 }
    );
    assert_eq!(
        s.read_token(app).await.unwrap().unwrap().access_token,
        "from-a"
    );
    assert!(matches!(
        s.write_token(app, &new_token("from-b", f2, "node-b"))
            .await
            .unwrap(),
        TokenWrite::Written(_)
    ));
    assert_eq!(
        s.write_token(app, &new_token("stale-a-again", f1, "node-a"))
            .await
            .unwrap(),
        TokenWrite::StaleFence { stored_fence: f2 }
    );
    assert_eq!(
        s.read_token(app).await.unwrap().unwrap().access_token,
        "from-b"
    );
}

async fn invalidate_if_equal(s: &dyn Store, app: &str) {
    s.write_token(app, &new_token("newer", 0, "n1"))
        .await
        .unwrap();
    assert!(
        !s.invalidate_token(app, "older").await.unwrap(),
        "a stale report"
    );
    assert_eq!(
        s.read_token(app).await.unwrap().unwrap().access_token,
        "newer"
    );
    assert!(s.invalidate_token(app, "newer").await.unwrap());
    assert!(s.read_token(app).await.unwrap().is_none());
    assert!(
        !s.invalidate_token(app, "newer").await.unwrap(),
        "already gone"
    );
}

async fn lease(s: &dyn Store, app: &str) {
    let f = s
        .acquire_lease(app, "a", 10_000, 0)
        .await
        .unwrap()
        .expect("a leads");
    assert_eq!(
        s.acquire_lease(app, "a", 10_000, 0).await.unwrap(),
        Some(f),
        "re-acquire keeps the fence"
    );
    assert_eq!(s.acquire_lease(app, "b", 10_000, 0).await.unwrap(), None);
    assert!(
        !s.renew_lease(app, "b", 10_000).await.unwrap(),
        "a non-holder cannot renew"
    );
    assert!(
        !s.release_lease(app, "b",).await.unwrap(),
        "a non-holder cannot release"
    );
    assert_eq!(s.lease_holder(app).await.unwrap().as_deref(), Some("a"));
    assert!(s.renew_lease(app, "a", 10_000).await.unwrap());
    assert!(s.release_lease(app, "a").await.unwrap());
    assert_eq!(s.lease_holder(app).await.unwrap(), None);
    assert_eq!(
        s.acquire_lease(app, "b", 10_000, 0).await.unwrap(),
        Some(f + 1)
    );
}

/// A store that lost its fence counter never hands out a fence the caller has seen.
async fn lease_fence_never_goes_back(s: &dyn Store, app: &str) {
    let f = s.acquire_lease(app, "a", 10_000, 41).await.unwrap();
    assert_eq!(f, Some(42), "above the highest fence seen");
    s.release_lease(app, "a").await.unwrap();
    assert_eq!(
        s.acquire_lease(app, "b", 10_000, 0).await.unwrap(),
        Some(43)
    );
}

async fn lease_expires(s: &dyn Store, app: &str) {
    let f = s.acquire_lease(app, "a", 150, 0).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !s.renew_lease(app, "a", 10_000).await.unwrap(),
        "an expired lease cannot be renewed"
    );
    assert_eq!(
        s.acquire_lease(app, "b", 10_000, 0).await.unwrap(),
        Some(f + 1)
    );
}

async fn window_limit(s: &dyn Store, app: &str) {
    let l = [limit("template_send", 3, 2_000)];
    for _ in 0..3 {
        assert!(matches!(
            acquire(s, app, &l, &[], &[]).await,
            Acquire::Granted { .. }
        ));
    }
    match acquire(s, app, &l, &[], &[]).await {
        Acquire::Wait {
            wait_ms,
            window,
            held,
        } => {
            assert!((1..=2_000).contains(&wait_ms), "{wait_ms}");
            assert_eq!((window, held), (0, false));
        }
        other => panic!("4th of 3: {other:?}"),
    }
}

async fn window_frees_after_the_window(s: &dyn Store, app: &str) {
    let l = [limit("subscribe_send", 2, 300)];
    assert!(matches!(
        acquire(s, app, &l, &[], &[]).await,
        Acquire::Granted { .. }
    ));
    assert!(matches!(
        acquire(s, app, &l, &[], &[]).await,
        Acquire::Granted { .. }
    ));
    let Acquire::Wait { wait_ms, .. } = acquire(s, app, &l, &[], &[]).await else {
        panic!("full")
    };
    tokio::time::sleep(Duration::from_millis(wait_ms + 20)).await;
    assert!(
        matches!(acquire(s, app, &l, &[], &[]).await, Acquire::Granted { .. }),
        "a permit freed up after {wait_ms} ms"
    );
}

async fn all_or_nothing(s: &dyn Store, app: &str) {
    let wide = limit("template_send", 5, 10_000);
    let narrow = limit("user:o1", 2, 10_000);
    let both = [wide.clone(), narrow.clone()];
    assert!(matches!(
        acquire(s, app, &both, &[], &[]).await,
        Acquire::Granted { .. }
    ));
    assert!(matches!(
        acquire(s, app, &both, &[], &[]).await,
        Acquire::Granted { .. }
    ));
    match acquire(s, app, &both, &[], &[]).await {
        Acquire::Wait { window, .. } => assert_eq!(window, 1, "the recipient's window"),
        other => panic!("{other:?}"),
    }
    // The refused attempt took nothing from the wide limit: 3 of its 5 are left.
    let only_wide = [wide];
    for i in 0..3 {
        assert!(
            matches!(
                acquire(s, app, &only_wide, &[], &[]).await,
                Acquire::Granted { .. }
            ),
            "{i}"
        );
    }
    assert!(matches!(
        acquire(s, app, &only_wide, &[], &[]).await,
        Acquire::Wait { .. }
    ));
}

async fn daily_quota(s: &dyn Store, app: &str) {
    let q = [DailyQuota {
        api: Api::TemplateSend,
        limit: 2,
    }];
    let l = [limit("template_send", 100, 60_000)];
    assert!(matches!(
        acquire(s, app, &l, &q, &[]).await,
        Acquire::Granted { .. }
    ));
    assert!(matches!(
        acquire(s, app, &l, &q, &[]).await,
        Acquire::Granted { .. }
    ));
    let now = s.now_ms().await.unwrap();
    match acquire(s, app, &l, &q, &[]).await {
        Acquire::Blocked { until_ms, cause } => {
            assert_eq!(
                until_ms,
                wxgate_protocol_next_midnight(now),
                "resets at 00:00 Beijing time"
            );
            assert_eq!(
                cause,
                BlockCause::Quota {
                    api: Api::TemplateSend,
                    limit: 2
                }
            );
        }
        other => panic!("{other:?}"),
    }
    // The refused attempt took nothing from the window: 98 left.
    let only_l = [limit("template_send", 100, 60_000)];
    for _ in 0..98 {
        assert!(matches!(
            acquire(s, app, &only_l, &[], &[]).await,
            Acquire::Granted { .. }
        ));
    }
    assert!(matches!(
        acquire(s, app, &only_l, &[], &[]).await,
        Acquire::Wait { .. }
    ));
}

fn wxgate_protocol_next_midnight(now_ms: u64) -> u64 {
    // 00:00 in Beijing (UTC+8) is 16:00 UTC.
    ((now_ms + 8 * 3_600_000) / 86_400_000 + 1) * 86_400_000 - 8 * 3_600_000
}

async fn blocks(s: &dyn Store, app: &str) {
    let now = s.now_ms().await.unwrap();
    s.block(app, Api::TemplateSend, now + 60_000, 45011)
        .await
        .unwrap();
    // An earlier end does not shorten it.
    s.block(app, Api::TemplateSend, now + 1_000, 45009)
        .await
        .unwrap();
    match acquire(s, app, &[], &[], &[Api::TemplateSend]).await {
        Acquire::Blocked { until_ms, cause } => {
            assert!(
                until_ms >= now + 59_000 && until_ms <= now + 61_000,
                "{until_ms} vs {now}"
            );
            assert_eq!(
                cause,
                BlockCause::Paused {
                    api: Api::TemplateSend,
                    errcode: 45011
                }
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        acquire(s, app, &[], &[], &[Api::SubscribeSend]).await,
        Acquire::Granted { .. }
    ));
    s.block(app, Api::SubscribeSend, now + 200, 45011)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        matches!(
            acquire(s, app, &[], &[], &[Api::SubscribeSend]).await,
            Acquire::Granted { .. }
        ),
        "a block ends"
    );
}

async fn idempotency(s: &dyn Store, app: &str) {
    assert_eq!(
        s.claim_idempotency(app, &claim("order-1", "req-1", 10_000))
            .await
            .unwrap(),
        IdemClaim::Claimed
    );
    match s
        .claim_idempotency(app, &claim("order-1", "req-2", 10_000))
        .await
        .unwrap()
    {
        IdemClaim::InProgress {
            request_id,
            lease_left_ms,
        } => {
            assert_eq!(request_id, "req-1");
            assert!((1..=10_000).contains(&lease_left_ms), "{lease_left_ms}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!s
        .complete_idempotency(app, "order-1", "req-2", "x", 10_000)
        .await
        .unwrap());
    assert!(s
        .complete_idempotency(app, "order-1", "req-1", r#"{"msgid":"1"}"#, 10_000)
        .await
        .unwrap());
    assert_eq!(
        s.claim_idempotency(app, &claim("order-1", "req-3", 10_000))
            .await
            .unwrap(),
        IdemClaim::Done {
            request_id: "req-1".into(),
            result: r#"{"msgid":"1"}"#.into()
        }
    );
    assert!(
        !s.release_idempotency(app, "order-1", "req-1", false)
            .await
            .unwrap(),
        "a finished claim stays"
    );
    // A released claim (nothing delivered) is taken over with no attempt on record.
    assert_eq!(
        s.claim_idempotency(app, &claim("order-2", "req-4", 10_000))
            .await
            .unwrap(),
        IdemClaim::Claimed
    );
    assert!(s.mark_attempt(app, "order-2", "req-4").await.unwrap());
    assert!(!s
        .release_idempotency(app, "order-2", "req-5", false)
        .await
        .unwrap());
    assert!(s
        .release_idempotency(app, "order-2", "req-4", false)
        .await
        .unwrap());
    match s
        .claim_idempotency(app, &claim("order-2", "req-6", 10_000))
        .await
        .unwrap()
    {
        IdemClaim::TakenOver { previous } => {
            assert_eq!(previous.request_id, "req-4");
            assert_eq!(previous.first_attempt_ms, None, "released: nothing sent");
            assert_eq!(previous.client_msg_id.as_deref(), Some("cmi-1"));
            assert_eq!(previous.api, Some(Api::TemplateSend));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !s.mark_attempt(app, "order-2", "req-4").await.unwrap(),
        "the old owner lost it"
    );
}

/// A claim is a lease: renewed it lives on, unrenewed it lapses and the next request takes it
/// over with what the first one recorded (its client_msg_id and its first attempt).
async fn idempotency_lease(s: &dyn Store, app: &str) {
    assert_eq!(
        s.claim_idempotency(app, &claim("order-3", "req-7", 300))
            .await
            .unwrap(),
        IdemClaim::Claimed
    );
    let before = s.now_ms().await.unwrap();
    assert!(s.mark_attempt(app, "order-3", "req-7").await.unwrap());
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(s.renew_claim(app, "order-3", "req-7", 300).await.unwrap());
    }
    assert!(
        matches!(
            s.claim_idempotency(app, &claim("order-3", "req-8", 300))
                .await
                .unwrap(),
            IdemClaim::InProgress { .. }
        ),
        "renewed: still in progress after longer than one lease"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    match s
        .claim_idempotency(app, &claim("order-3", "req-8", 10_000))
        .await
        .unwrap()
    {
        IdemClaim::TakenOver { previous } => {
            assert_eq!(previous.request_id, "req-7");
            let first = previous.first_attempt_ms.expect("the attempt is on record");
            assert!(first >= before && first <= previous.now_ms, "{previous:?}");
            assert_eq!(previous.client_msg_id.as_deref(), Some("cmi-1"));
        }
        other => panic!("{other:?}"),
    }
    assert!(!s.renew_claim(app, "order-3", "req-7", 300).await.unwrap());
    // The successor's answer is kept; a release with an attempt keeps the attempt.
    assert!(s.mark_attempt(app, "order-3", "req-8").await.unwrap());
    assert!(s
        .release_idempotency(app, "order-3", "req-8", true)
        .await
        .unwrap());
    match s
        .claim_idempotency(app, &claim("order-3", "req-9", 10_000))
        .await
        .unwrap()
    {
        IdemClaim::TakenOver { previous } => {
            assert!(previous.first_attempt_ms.is_some(), "{previous:?}")
        }
        other => panic!("{other:?}"),
    }
    assert!(s
        .complete_idempotency(app, "order-3", "req-9", "kept", 10_000)
        .await
        .unwrap());
}

/// A store that lost grants (a caller has seen a later grant sequence than it holds) reports
/// the loss once and, with `hold`, counts held windows as full for one window after it.
async fn state_loss_holds(s: &dyn Store, app: &str) {
    let l = [limit("template_send", 5, 600)];
    let first = acquire_seen(s, app, &l, &[], &[], 0, true).await;
    let Acquire::Granted { seq, .. } = first.decision else {
        panic!("{first:?}")
    };
    assert!(!first.state_loss);
    // A caller that saw 1000 grants finds a store at `seq`: a loss.
    let lost = acquire_seen(s, app, &l, &[], &[], seq + 1_000, true).await;
    assert!(lost.state_loss, "{lost:?}");
    match lost.decision {
        Acquire::Wait {
            wait_ms,
            window,
            held,
        } => {
            assert!(held && window == 0, "{lost:?}");
            assert!((500..=600).contains(&wait_ms), "{wait_ms}");
        }
        other => panic!("held full: {other:?}"),
    }
    // Reported once; still held.
    let again = acquire_seen(s, app, &l, &[], &[], seq + 1_000, true).await;
    assert!(!again.state_loss);
    assert!(matches!(again.decision, Acquire::Wait { held: true, .. }));
    tokio::time::sleep(Duration::from_millis(650)).await;
    let after = acquire_seen(s, app, &l, &[], &[], seq + 1_000, true).await;
    match after.decision {
        Acquire::Granted { seq: new, .. } => assert!(new > seq + 1_000, "{new}"),
        other => panic!("released after one window: {other:?}"),
    }
}

async fn state_loss_admits(s: &dyn Store, app: &str) {
    let l = [limit("template_send", 5, 60_000)];
    let reply = acquire_seen(s, app, &l, &[], &[], 7, false).await;
    assert!(reply.state_loss);
    assert!(
        matches!(reply.decision, Acquire::Granted { seq: 8, .. }),
        "{reply:?}"
    );
}

/// What an operator reads: every figure written above it, the token masked, nothing changed.
async fn inspect(s: &dyn Store, app: &str) {
    use wxgate_store::inspect::InspectQuery;
    let token = "inspect-token-0123456789-abcdefghijkl";
    s.write_token(app, &new_token(token, 0, "n1"))
        .await
        .expect("write");
    let fence = s
        .acquire_lease(app, "n1", 10_000, 0)
        .await
        .unwrap()
        .unwrap();
    let quotas = [DailyQuota {
        api: Api::TemplateSend,
        limit: 100,
    }];
    for user in ["u1", "u2", "u1"] {
        let l = [
            limit("template_send", 10, 60_000),
            limit(&format!("user:{user}"), 5, 30_000),
        ];
        assert!(matches!(
            acquire(s, app, &l, &quotas, &[Api::TemplateSend]).await,
            Acquire::Granted { .. }
        ));
    }
    let now = s.now_ms().await.unwrap();
    s.block(app, Api::SubscribeSend, now + 60_000, 45011)
        .await
        .unwrap();
    for key in ["k1", "k2"] {
        s.claim_idempotency(app, &claim(key, "r", 10_000))
            .await
            .unwrap();
    }
    let windows = [
        (Api::TemplateSend, 10, 60_000),
        (Api::TemplateSend, 3, 60_000),
    ];
    let q = InspectQuery {
        appid: app,
        windows: &windows,
        quotas: &quotas,
        blocks: &[Api::TemplateSend, Api::SubscribeSend],
        recipient_window_ms: Some(30_000),
        guard_ms: 0,
        scan_limit: 10_000,
    };
    let r = s.inspect_app(&q).await.expect("inspect");
    let t = r.token.expect("a token");
    assert_eq!(t.masked, wxgate_store::mask(token));
    assert!(!format!("{t:?}").contains(token));
    assert_eq!(t.node, "n1");
    assert!(t.expires_at_ms > r.now_ms);
    assert_eq!(r.fence, Some(fence));
    let (leader, left) = r.leader.expect("a leader");
    assert_eq!(leader, "n1");
    assert!(left > 0 && left <= 10_000, "{left}");
    assert_eq!(r.windows[0].used, 3);
    assert_eq!(r.windows[0].frees_in_ms, 0);
    // Another (unused) window of the same length and name reads the same log.
    assert_eq!(r.windows[1].used, 3);
    assert!(r.windows[1].frees_in_ms > 0);
    assert_eq!(r.quotas_used, vec![3]);
    assert_eq!(r.pauses.len(), 1);
    assert_eq!(r.pauses[0].api, Api::SubscribeSend);
    assert_eq!(r.pauses[0].errcode, 45011);
    assert_eq!(r.idempotency_records.count, 2);
    assert!(!r.idempotency_records.capped);
    assert_eq!(r.recipients_with_window.count, 2);
    assert_eq!(r.grant_seq, 3);
    assert_eq!(r.lost_at_ms, None);
    // Read-only: a second read says the same.
    let again = s.inspect_app(&q).await.unwrap();
    // (Time passes between the reads: only the counts must be equal.)
    let used =
        |w: &[wxgate_store::inspect::WindowUse]| w.iter().map(|w| w.used).collect::<Vec<_>>();
    assert_eq!(used(&again.windows), used(&r.windows));
    assert!(again.windows[1].frees_in_ms <= r.windows[1].frees_in_ms);
    assert_eq!(again.grant_seq, 3);
    // Lifting a pause by hand.
    assert!(s.lift_pause(app, Api::SubscribeSend).await.unwrap());
    assert!(!s.lift_pause(app, Api::SubscribeSend).await.unwrap());
    assert!(s.inspect_app(&q).await.unwrap().pauses.is_empty());
}

type Case = for<'a> fn(
    &'a dyn Store,
    &'a str,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), (|s, a| Box::pin($name(s, a))) as Case)),*]
    };
}

/// Runs every case on stores from `make`, each case with its own appid (and its own store,
/// hence its own prefix).
async fn run_all(backend: &str, make: impl Fn() -> Arc<dyn Store>) {
    let all = cases![
        token_roundtrip,
        stale_fence_is_refused,
        invalidate_if_equal,
        lease,
        lease_fence_never_goes_back,
        lease_expires,
        window_limit,
        window_frees_after_the_window,
        all_or_nothing,
        daily_quota,
        blocks,
        idempotency,
        idempotency_lease,
        state_loss_holds,
        state_loss_admits,
        inspect,
    ];
    let total = all.len();
    // The cases are independent: run them concurrently to keep the sleeps from adding up.
    let mut tasks = Vec::new();
    for (i, (name, case)) in all.into_iter().enumerate() {
        let store = make();
        let appid = format!("wx{:016x}", i as u64 + 0xabc0_0000);
        let backend = backend.to_string();
        tasks.push(tokio::spawn(async move {
            case(&*store, &appid).await;
            eprintln!("{backend}: {name} ok");
        }));
    }
    let mut failed = Vec::new();
    for t in tasks {
        if let Err(e) = t.await {
            failed.push(e.to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{backend}: {} of {total} cases failed: {failed:#?}",
        failed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_memory() {
    run_all("memory", || Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_redis_standalone() {
    require_redis();
    let server = RedisServer::start();
    let url = server.url();
    run_all("standalone", || {
        redis_store(Topology::Standalone { url: url.clone() }, &prefix())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_redis_cluster() {
    require_redis();
    let cluster = RedisCluster::start();
    let nodes = cluster.seed_urls();
    run_all("cluster", || {
        redis_store(
            Topology::Cluster {
                nodes: nodes.clone(),
            },
            &prefix(),
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_redis_sentinel() {
    require_redis();
    let sentinel = RedisSentinel::start();
    let sentinels = sentinel.sentinel_urls();
    run_all("sentinel", || {
        redis_store(
            Topology::Sentinel {
                sentinels: sentinels.clone(),
                master_name: RedisSentinel::MASTER_NAME.into(),
            },
            &prefix(),
        )
    })
    .await;
}

#[tokio::test]
async fn keys_are_readable_namespaced_and_expire() {
    require_redis();
    let server = RedisServer::start();
    let p = prefix();
    let s = redis_store(Topology::Standalone { url: server.url() }, &p);
    let app = "wx0123456789abcdef";
    s.write_token(app, &new_token("t", 0, "n1")).await.unwrap();
    s.acquire_lease(app, "n1", 10_000, 0).await.unwrap();
    acquire(
        &*s,
        app,
        &[
            limit("template_send", 5, 60_000),
            limit("user:o1", 5, 60_000),
        ],
        &[DailyQuota {
            api: wxgate_store::Api::TemplateSend,
            limit: 9,
        }],
        &[],
    )
    .await;
    s.block(
        app,
        Api::TemplateSend,
        s.now_ms().await.unwrap() + 60_000,
        45011,
    )
    .await
    .unwrap();
    s.claim_idempotency(app, &claim("order-9", "r1", 60_000))
        .await
        .unwrap();
    let keys = server.cli(&["--scan", "--pattern", &format!("{p}:*")]);
    let mut keys: Vec<&str> = keys.lines().collect();
    keys.sort();
    let expect = |rest: &str| format!("{p}:{{{app}}}:{rest}");
    let mut expected = vec![
        expect("epoch"),
        expect("fence"),
        expect("idem:order-9"),
        expect("leader"),
        expect("token"),
        expect("win:template_send:60000"),
        expect("win:user:o1:60000"),
    ];
    expected.sort();
    assert_eq!(keys, expected);
    for k in &keys {
        let ttl: i64 = server.cli(&["PTTL", k]).parse().unwrap();
        if k.ends_with(":fence") || k.ends_with(":epoch") {
            assert_eq!(ttl, -1, "{k} must never reset, so it never expires");
        } else {
            assert!(ttl > 0, "{k} has no TTL");
        }
    }
    // A window is a list of grant times (µs, Redis clock).
    assert_eq!(server.cli(&["TYPE", &expect("win:user:o1:60000")]), "list");
    let now = s.now_ms().await.unwrap();
    let granted: u64 = server
        .cli(&["LINDEX", &expect("win:template_send:60000"), "0"])
        .parse()
        .unwrap();
    assert!(granted / 1000 <= now && granted / 1000 + 60_000 > now);
    // The epoch hash holds the grant sequence, the pause and the daily quota.
    let epoch = expect("epoch");
    let field = |f: &str| server.cli(&["HGET", &epoch, f]);
    assert_eq!(field("seq"), "1");
    assert_eq!(field("quota:template_send:used"), "1");
    assert_eq!(
        field("quota:template_send:dn"),
        wxgate_protocol::time::beijing_day(now).to_string()
    );
    assert_eq!(field("pause:template_send:errcode"), "45011");
    let until: u64 = field("pause:template_send:until_ms").parse().unwrap();
    assert!(until > now && until <= now + 60_000);
    assert_eq!(server.cli(&["HGET", &expect("token"), "node"]), "n1");
}

/// A window list never holds more entries than its limit: a refused grant takes its push
/// back, and a grant into a full list whose oldest entries left the window drops them.
#[tokio::test]
async fn window_lists_never_hold_more_than_their_limit() {
    require_redis();
    let server = RedisServer::start();
    let p = prefix();
    let s = redis_store(Topology::Standalone { url: server.url() }, &p);
    let app = "wx0123456789abcdef";
    let key = format!("{p}:{{{app}}}:win:template_send:300");
    let len = || -> u64 { server.cli(&["LLEN", &key]).parse().unwrap() };
    let w = [limit("template_send", 3, 300)];
    for _ in 0..3 {
        assert!(matches!(
            acquire(&*s, app, &w, &[], &[]).await,
            Acquire::Granted { .. }
        ));
    }
    assert!(matches!(
        acquire(&*s, app, &w, &[], &[]).await,
        Acquire::Wait { .. }
    ));
    assert_eq!(len(), 3, "the refused push was taken back");
    // Once the window (300 ms; no guard here) has passed, a grant drops what left it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match acquire(&*s, app, &w, &[], &[]).await {
            Acquire::Granted { .. } => break,
            Acquire::Wait { wait_ms, .. } => {
                assert!(std::time::Instant::now() < deadline, "never freed");
                tokio::time::sleep(std::time::Duration::from_millis(wait_ms.min(50))).await;
            }
            other => panic!("{other:?}"),
        }
        assert!(len() <= 3);
    }
    assert!(len() <= 3, "{} entries", len());
}

/// A quota counts per Beijing day: the count of an earlier day (its `dn` field) does not
/// count today, and the first grant of the day restarts it at 1.
#[tokio::test]
async fn quota_counts_of_an_earlier_day_do_not_count() {
    require_redis();
    let server = RedisServer::start();
    let p = prefix();
    let s = redis_store(Topology::Standalone { url: server.url() }, &p);
    let app = "wx0123456789abcdef";
    let epoch = format!("{p}:{{{app}}}:epoch");
    let now = s.now_ms().await.unwrap();
    let today = wxgate_protocol::time::beijing_day(now);
    let q = [DailyQuota {
        api: Api::TemplateSend,
        limit: 9,
    }];
    let set = |dn: u64, used: u64| {
        server.cli(&[
            "HSET",
            &epoch,
            "quota:template_send:dn",
            &dn.to_string(),
            "quota:template_send:used",
            &used.to_string(),
        ]);
    };
    set(today, 8);
    assert!(matches!(
        acquire(&*s, app, &[], &q, &[]).await,
        Acquire::Granted { .. }
    ));
    assert_eq!(
        server.cli(&["HGET", &epoch, "quota:template_send:used"]),
        "9"
    );
    assert!(matches!(
        acquire(&*s, app, &[], &q, &[]).await,
        Acquire::Blocked {
            cause: BlockCause::Quota { .. },
            ..
        }
    ));
    set(today - 1, 9);
    assert!(matches!(
        acquire(&*s, app, &[], &q, &[]).await,
        Acquire::Granted { .. }
    ));
    assert_eq!(
        server.cli(&["HGET", &epoch, "quota:template_send:used"]),
        "1"
    );
    assert_eq!(
        server.cli(&["HGET", &epoch, "quota:template_send:dn"]),
        today.to_string()
    );
}

#[tokio::test]
async fn external_tokens_are_read_from_any_key() {
    require_redis();
    let server = RedisServer::start();
    let s = redis_store(Topology::Standalone { url: server.url() }, &prefix());
    assert!(s
        .read_external_token("other:missing")
        .await
        .unwrap()
        .is_none());
    server.cli(&["SET", "other:plain", "TOKEN-A", "PX", "60000"]);
    let t = s.read_external_token("other:plain").await.unwrap().unwrap();
    assert_eq!(t.access_token, "TOKEN-A");
    let left = t.expires_at_ms.unwrap() - t.read_at_ms;
    assert!((59_000..=60_000).contains(&left), "{left}");
    server.cli(&[
        "HSET",
        "other:hash",
        "access_token",
        "TOKEN-B",
        "expires_at_ms",
        "4102444800000",
    ]);
    let t = s.read_external_token("other:hash").await.unwrap().unwrap();
    assert_eq!(
        (t.access_token.as_str(), t.expires_at_ms),
        ("TOKEN-B", Some(4_102_444_800_000))
    );
    server.cli(&["SET", "other:forever", "TOKEN-C"]);
    assert_eq!(
        s.read_external_token("other:forever")
            .await
            .unwrap()
            .unwrap()
            .expires_at_ms,
        None
    );
    assert!(
        wxgate_store::TokenStore::read_external_token(&MemoryStore::new(), "k")
            .await
            .is_err(),
        "memory has no external keys"
    );
}
