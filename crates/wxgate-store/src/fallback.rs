//! What the limiter does when the shared store is unreachable. It wraps only the [`Limiter`]
//! role: tokens, leases and idempotency have no safe local substitute and fail as they are.
//!
//! - [`OnUnavailable::FailClosed`] (default): the error goes up and the send is answered 503
//!   with `Retry-After`. Nothing is sent that the cluster could not count.
//! - [`OnUnavailable::LocalShare`]: each node admits from its own in-memory windows with each
//!   limit divided by the expected number of replicas (rounded down). With N replicas the
//!   cluster then stays within the limit as long as no more than N nodes run; it never fails
//!   open (no node sends without counting).

use std::sync::Arc;

use async_trait::async_trait;

use crate::memory::MemoryStore;
use crate::{Acquire, AcquireReply, AcquireRequest, Api, DailyQuota, Limit, Limiter, StoreError};

/// The policy when the store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnavailable {
    FailClosed,
    LocalShare { expected_replicas: u64 },
}

/// A limiter with a policy for when its store is unreachable.
pub struct FallbackLimiter {
    primary: Arc<dyn Limiter>,
    local: MemoryStore,
    policy: OnUnavailable,
}

impl FallbackLimiter {
    pub fn new(primary: Arc<dyn Limiter>, policy: OnUnavailable) -> Self {
        Self {
            primary,
            local: MemoryStore::new(),
            policy,
        }
    }

    /// Whether this node can still admit sends while the store is unreachable.
    pub fn admits_without_store(&self) -> bool {
        matches!(self.policy, OnUnavailable::LocalShare { .. })
    }
}

#[async_trait]
impl Limiter for FallbackLimiter {
    async fn acquire(&self, req: &AcquireRequest<'_>) -> Result<AcquireReply, StoreError> {
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
                    let mut reply = self
                        .local
                        .acquire(&AcquireRequest {
                            limits: &limits,
                            quotas: &quotas,
                            known_seq: 0,
                            ..req.clone()
                        })
                        .await?;
                    // The local sequence is not the shared one: never report it.
                    if let Acquire::Granted { seq, .. } = &mut reply.decision {
                        *seq = 0;
                    }
                    reply.state_loss = false;
                    Ok(reply)
                }
            },
            other => other,
        }
    }

    async fn block(
        &self,
        appid: &str,
        api: Api,
        until_ms: u64,
        errcode: i64,
    ) -> Result<(), StoreError> {
        // With a local share, pauses are also kept locally so the node honours them when Redis
        // is gone; failing closed needs no local copy.
        if self.admits_without_store() {
            self.local.block(appid, api, until_ms, errcode).await?;
        }
        self.primary.block(appid, api, until_ms, errcode).await
    }
}
