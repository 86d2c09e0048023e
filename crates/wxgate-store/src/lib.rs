//! The shared state of a wxgate cluster, behind one contract.
//!
//! The gateway nodes are stateless: whatever must be shared (the access_token today; rate-limit
//! windows, leader leases and idempotency records with the Redis backend) goes through
//! [`Store`]. Every operation is a single atomic read-modify-write, so that a Redis backend can
//! implement each one as one Lua script and the in-memory backend as one critical section.
//!
//! # Layout
//! - [`Store`] and its value types: the contract.
//! - [`memory::MemoryStore`]: the single-node backend (the embedded default).
//! - [`redis_store::RedisStore`]: the cluster backend — one Lua script per operation, on standalone,
//!   Sentinel or Cluster Redis; [`keys::Keys`] names every key it touches.
//! - [`fallback::FallbackStore`]: what happens to `acquire` when Redis is unreachable (fail
//!   closed by default, or a local share of each limit).
//! - [`clock`]: where "now" comes from. The Redis backend uses Redis `TIME` inside its scripts;
//!   the memory backend a [`clock::Clock`] that tests can move by hand.
//!
//! The contract test suite (`tests/contract.rs`) runs every operation against every backend and
//! topology.

pub mod clock;
pub mod fallback;
pub mod keys;
pub mod memory;
pub mod redis_store;

use std::fmt;

use async_trait::async_trait;

/// Where a stored token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `/cgi-bin/stable_token` in normal mode.
    Stable,
    /// `/cgi-bin/token`.
    Classic,
    /// Written by another system; wxgate only reads it.
    External,
}

impl TokenSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stable => "stable",
            Self::Classic => "classic",
            Self::External => "external",
        }
    }
}

/// An app's access_token as shared by the cluster. `Debug` masks the token.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub access_token: String,
    /// When WeChat stops accepting it (unix ms, store clock).
    pub expires_at_ms: u64,
    /// Fencing number of the writer: a write with an older fence than the stored one is refused.
    pub fence: u64,
    /// Node id of the writer.
    pub node: String,
    pub fetched_at_ms: u64,
    pub source: TokenSource,
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredToken")
            .field("access_token", &mask(&self.access_token))
            .field("expires_at_ms", &self.expires_at_ms)
            .field("fence", &self.fence)
            .field("node", &self.node)
            .field("fetched_at_ms", &self.fetched_at_ms)
            .field("source", &self.source)
            .finish()
    }
}

/// Masks a secret for display: its length and last 4 characters at most, never the rest.
pub fn mask(secret: &str) -> String {
    let n = secret.chars().count();
    if n < 16 {
        return format!("***({n} chars)");
    }
    let tail: String = secret.chars().skip(n - 4).collect();
    format!("***{tail}({n} chars)")
}

/// A token just fetched from WeChat, to be stored. The store stamps it with its own clock
/// (`fetched_at_ms`, `expires_at_ms = now + expires_in_ms`), so every node agrees on its expiry.
#[derive(Clone, PartialEq, Eq)]
pub struct NewToken {
    pub access_token: String,
    pub expires_in_ms: u64,
    /// The writer's leadership fence (0 for a single node without leadership).
    pub fence: u64,
    pub node: String,
    pub source: TokenSource,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("access_token", &mask(&self.access_token))
            .field("expires_in_ms", &self.expires_in_ms)
            .field("fence", &self.fence)
            .field("node", &self.node)
            .field("source", &self.source)
            .finish()
    }
}

/// Outcome of a fenced token write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenWrite {
    /// Stored, as the store now holds it.
    Written(StoredToken),
    /// Refused: the stored token or the current leadership carries a newer fence.
    StaleFence { stored_fence: u64 },
}

/// Why a store operation failed. Callers fail closed on it (503), never open.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("shared state unavailable: {0}")]
    Unavailable(String),
    #[error("shared state answered unexpectedly: {0}")]
    Protocol(String),
}

/// One sliding-window limit: at most `limit` permits in any interval of `window_ms` (plus the
/// request's guard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// What is limited, as it appears in the key: `template_send`, `user:<openid>`, ...
    pub name: String,
    pub limit: u64,
    pub window_ms: u64,
}

/// A daily quota on WeChat's calendar: at most `limit` permits per Beijing day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyQuota {
    /// What is counted: `template_send`, ...
    pub name: String,
    pub limit: u64,
}

/// Everything one send must pass. `acquire` consumes from every limit and quota, or from none.
#[derive(Debug, Clone)]
pub struct AcquireRequest<'a> {
    pub appid: &'a str,
    pub limits: &'a [Limit],
    pub quotas: &'a [DailyQuota],
    /// Shared blocks to honour (set by [`Store::block`]), by API name.
    pub blocks: &'a [&'a str],
    /// Extra time every window entry is kept, so the count also holds where WeChat receives
    /// the call (network jitter shifts arrivals).
    pub guard_ms: u64,
    /// Unique per attempt (a UUID): makes each permit a distinct window entry.
    pub permit_id: &'a str,
}

/// The answer of [`Store::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// Permits taken from every limit and quota, at `now_ms` of the store's clock.
    Granted { now_ms: u64 },
    /// A window is full: nothing was taken; one permit frees up in `wait_ms` at the earliest.
    Wait { wait_ms: u64, limit: String },
    /// A daily quota is used up or a block is set: nothing was taken, nothing will be granted
    /// before `until_ms` (unix ms, store clock).
    Blocked { until_ms: u64, reason: String },
}

/// A token read from a key another system owns.
#[derive(Clone, PartialEq, Eq)]
pub struct ExternalToken {
    pub access_token: String,
    /// From the hash's `expires_at_ms`, else the key's TTL; `None` when neither says.
    pub expires_at_ms: Option<u64>,
    /// The store's clock when it was read.
    pub read_at_ms: u64,
}

impl fmt::Debug for ExternalToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalToken")
            .field("access_token", &mask(&self.access_token))
            .field("expires_at_ms", &self.expires_at_ms)
            .field("read_at_ms", &self.read_at_ms)
            .finish()
    }
}

/// The answer of [`Store::claim_idempotency`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdemClaim {
    /// The caller owns the key now and must complete or release it.
    Claimed,
    /// Another request owns it and has not finished.
    InProgress { request_id: String },
    /// Already done: the stored result.
    Done { request_id: String, result: String },
}

/// The shared-state contract. Implementations must make every method atomic.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Short name of the backend for logs and `/readyz` ("memory", "redis").
    fn backend(&self) -> &'static str;

    /// The store's clock in unix ms; all nodes that share a store share this clock.
    async fn now_ms(&self) -> Result<u64, StoreError>;

    /// The app's token, unless none is stored or it has expired.
    async fn read_token(&self, appid: &str) -> Result<Option<StoredToken>, StoreError>;

    /// Stores `token` unless its fence is older than the stored token's or than the current
    /// leadership fence (a stale leader's write). Equal fences overwrite: the same leader
    /// refreshing again.
    async fn write_token(&self, appid: &str, token: &NewToken) -> Result<TokenWrite, StoreError>;

    /// Deletes the stored token only if it equals `bad_token` (compare-and-delete), so a stale
    /// failure report never evicts a newer token. Returns whether it deleted.
    async fn invalidate_token(&self, appid: &str, bad_token: &str) -> Result<bool, StoreError>;

    /// Whether the store answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// A cached value of the app's (e.g. WeChat's template list), if present and not expired.
    async fn get_cached(&self, appid: &str, name: &str) -> Result<Option<String>, StoreError>;

    /// Caches `value` for the app under `name` for `ttl_ms`.
    async fn put_cached(
        &self,
        appid: &str,
        name: &str,
        value: &str,
        ttl_ms: u64,
    ) -> Result<(), StoreError>;

    /// Reads a token that another system keeps under `key` (any key name: it is the other
    /// system's, not ours). `None` when the key is missing or holds no token.
    async fn read_external_token(&self, key: &str) -> Result<Option<ExternalToken>, StoreError>;

    /// Takes one permit from every limit and quota of `req`, or none (see [`Acquire`]).
    async fn acquire(&self, req: &AcquireRequest<'_>) -> Result<Acquire, StoreError>;

    /// Stops every node from sending `api` for `appid` until `until_ms` (unix ms): WeChat said
    /// 45009/45011. A later block extends an earlier one, never shortens it.
    async fn block(
        &self,
        appid: &str,
        api: &str,
        until_ms: u64,
        reason: &str,
    ) -> Result<(), StoreError>;

    /// Takes the app's refresh leadership for `ttl_ms` if nobody holds it (incrementing the
    /// fence), or extends it if `node` already holds it. Returns the fence while `node` leads,
    /// `None` when another node does.
    async fn acquire_lease(
        &self,
        appid: &str,
        node: &str,
        ttl_ms: u64,
    ) -> Result<Option<u64>, StoreError>;

    /// Extends the lease only if `node` still holds it.
    async fn renew_lease(&self, appid: &str, node: &str, ttl_ms: u64) -> Result<bool, StoreError>;

    /// Gives the lease up only if `node` holds it.
    async fn release_lease(&self, appid: &str, node: &str) -> Result<bool, StoreError>;

    /// The node holding the app's lease, if any.
    async fn lease_holder(&self, appid: &str) -> Result<Option<String>, StoreError>;

    /// Claims idempotency key `key` for `request_id` for `ttl_ms`; the first claimer wins.
    async fn claim_idempotency(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
        ttl_ms: u64,
    ) -> Result<IdemClaim, StoreError>;

    /// Stores the result of the claim held by `request_id`, kept for `ttl_ms`. False if the
    /// claim is no longer `request_id`'s (it expired and someone else claimed it).
    async fn complete_idempotency(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
        result: &str,
        ttl_ms: u64,
    ) -> Result<bool, StoreError>;

    /// Drops the claim held by `request_id` (the request failed definitively and may be retried).
    async fn release_idempotency(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
    ) -> Result<bool, StoreError>;
}
