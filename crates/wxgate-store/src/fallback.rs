//! What `acquire` does when the shared store is unreachable.
//!
//! - [`OnUnavailable::FailClosed`] (default): the error goes up and the send is answered 503
//!   with `Retry-After`. Nothing is sent that the cluster could not count.
//! - [`OnUnavailable::LocalShare`]: each node admits from its own in-memory windows with each
//!   limit divided by the expected number of replicas (rounded down). With N replicas the
//!   cluster then stays within the limit as long as no more than N nodes run; it never fails
//!   open (no node sends without counting).
//!
//! Every other operation passes straight through: tokens, leases and idempotency have no safe
//! local substitute.

use std::sync::Arc;

use async_trait::async_trait;

use crate::memory::MemoryStore;
use crate::{
    Acquire, AcquireRequest, DailyQuota, ExternalToken, IdemClaim, Limit, NewToken, Store,
    StoreError, StoredToken, TokenWrite,
};

/// The policy when the store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnavailable {
    FailClosed,
    LocalShare { expected_replicas: u64 },
}

/// A store with a policy for `acquire` when it is unreachable.
pub struct FallbackStore {
    primary: Arc<dyn Store>,
    local: MemoryStore,
    policy: OnUnavailable,
}

impl FallbackStore {
    pub fn new(primary: Arc<dyn Store>, policy: OnUnavailable) -> Self {
        Self {
            primary,
            local: MemoryStore::new(),
            policy,
        }
    }
}

#[async_trait]
impl Store for FallbackStore {
    fn backend(&self) -> &'static str {
        self.primary.backend()
    }
    async fn now_ms(&self) -> Result<u64, StoreError> {
        self.primary.now_ms().await
    }
    async fn read_token(&self, appid: &str) -> Result<Option<StoredToken>, StoreError> {
        self.primary.read_token(appid).await
    }
    async fn write_token(&self, appid: &str, token: &NewToken) -> Result<TokenWrite, StoreError> {
        self.primary.write_token(appid, token).await
    }
    async fn invalidate_token(&self, appid: &str, bad_token: &str) -> Result<bool, StoreError> {
        self.primary.invalidate_token(appid, bad_token).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.primary.ping().await
    }
    async fn read_external_token(&self, key: &str) -> Result<Option<ExternalToken>, StoreError> {
        self.primary.read_external_token(key).await
    }
    async fn get_cached(&self, appid: &str, name: &str) -> Result<Option<String>, StoreError> {
        self.primary.get_cached(appid, name).await
    }
    async fn put_cached(
        &self,
        appid: &str,
        name: &str,
        value: &str,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        self.primary.put_cached(appid, name, value, ttl_ms).await
    }

    async fn acquire(&self, req: &AcquireRequest<'_>) -> Result<Acquire, StoreError> {
        match self.primary.acquire(req).await {
            Err(StoreError::Unavailable(e)) => match self.policy {
                OnUnavailable::FailClosed => Err(StoreError::Unavailable(e)),
                OnUnavailable::LocalShare { expected_replicas } => {
                    let n = expected_replicas.max(1);
                    tracing::warn!(error = %e, expected_replicas = n, "shared store unavailable: admitting from this node's share of each limit");
                    let limits: Vec<Limit> = req
                        .limits
                        .iter()
                        .map(|l| Limit {
                            limit: l.limit / n,
                            ..l.clone()
                        })
                        .collect();
                    let quotas: Vec<DailyQuota> = req
                        .quotas
                        .iter()
                        .map(|q| DailyQuota {
                            limit: q.limit / n,
                            ..q.clone()
                        })
                        .collect();
                    self.local
                        .acquire(&AcquireRequest {
                            limits: &limits,
                            quotas: &quotas,
                            ..req.clone()
                        })
                        .await
                }
            },
            other => other,
        }
    }

    async fn block(
        &self,
        appid: &str,
        api: &str,
        until_ms: u64,
        reason: &str,
    ) -> Result<(), StoreError> {
        // With a local share, blocks are also kept locally so the node honours them when Redis
        // is gone; failing closed needs no local copy.
        if matches!(self.policy, OnUnavailable::LocalShare { .. }) {
            self.local.block(appid, api, until_ms, reason).await?;
        }
        self.primary.block(appid, api, until_ms, reason).await
    }
    async fn acquire_lease(
        &self,
        appid: &str,
        node: &str,
        ttl_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        self.primary.acquire_lease(appid, node, ttl_ms).await
    }
    async fn renew_lease(&self, appid: &str, node: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        self.primary.renew_lease(appid, node, ttl_ms).await
    }
    async fn release_lease(&self, appid: &str, node: &str) -> Result<bool, StoreError> {
        self.primary.release_lease(appid, node).await
    }
    async fn lease_holder(&self, appid: &str) -> Result<Option<String>, StoreError> {
        self.primary.lease_holder(appid).await
    }
    async fn claim_idempotency(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
        ttl_ms: u64,
    ) -> Result<IdemClaim, StoreError> {
        self.primary
            .claim_idempotency(appid, key, request_id, ttl_ms)
            .await
    }
    async fn complete_idempotency(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
        result: &str,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        self.primary
            .complete_idempotency(appid, key, request_id, result, ttl_ms)
            .await
    }
    async fn release_idempotency(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
    ) -> Result<bool, StoreError> {
        self.primary
            .release_idempotency(appid, key, request_id)
            .await
    }
}
