//! The shared state of a wxgate cluster, behind one contract.
//!
//! The gateway nodes are stateless: whatever must be shared (the access_token, rate-limit
//! windows, leader leases, idempotency records, cached template lists) goes through this
//! contract. Every operation is a single atomic read-modify-write, so that a Redis backend can
//! implement each one as one Lua script and the in-memory backend as one critical section.
//!
//! # Layout
//! - The contract, one trait per role: [`Health`] (clock, ping), [`TokenStore`] (the shared
//!   token), [`Limiter`] (windows, quotas, pauses), [`Leases`] (refresh leadership),
//!   [`Idempotency`] (claims and kept answers), [`Cache`]. [`Store`] is all of them, and
//!   [`SharedState`] hands each role to its user, so a policy can wrap one role alone (the
//!   fallback wraps only the limiter).
//! - [`memory::MemoryStore`]: the single-node backend (the embedded default).
//! - [`redis_store::RedisStore`]: the cluster backend — one Lua script per operation, on standalone,
//!   Sentinel or Cluster Redis; [`keys::Keys`] names every key it touches.
//! - [`fallback::FallbackLimiter`]: what happens to `acquire` when Redis is unreachable (fail
//!   closed by default, or a local share of each limit).
//! - [`inspect`]: reading an app's state for operators ([`inspect::Inspect`]), read-only but
//!   for lifting a pause by hand.
//! - [`clock`]: where "now" comes from. The Redis backend uses Redis `TIME` inside its scripts;
//!   the memory backend a [`clock::Clock`] that tests can move by hand.
//!
//! The contract test suite (`tests/contract.rs`) runs every operation against every backend and
//! topology.

pub mod clock;
pub mod fallback;
pub mod inspect;
pub mod keys;
pub mod memory;
pub mod redis_store;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
pub use wxgate_protocol::api::Api;

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

/// A token just fetched from WeChat, to be stored. The store stamps it with its own clock,
/// counted from when the fetch was *sent* (`fetched_at_ms = now - age_ms`, `expires_at_ms =
/// fetched_at_ms + expires_in_ms`): WeChat's clock started at its answer, which came after the
/// request left, so this never overstates the token's life. Every node agrees on its expiry.
#[derive(Clone, PartialEq, Eq)]
pub struct NewToken {
    pub access_token: String,
    pub expires_in_ms: u64,
    /// Time since the fetch request was sent.
    pub age_ms: u64,
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
            .field("age_ms", &self.age_ms)
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
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("shared state unavailable: {0}")]
    Unavailable(String),
    #[error("shared state answered unexpectedly: {0}")]
    Protocol(String),
}

/// What one sliding window limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitScope {
    /// Every call of the app to one API.
    Api(Api),
    /// Every message of the app to one recipient (openid), whatever the API.
    Recipient(String),
}

/// One sliding-window limit: at most `limit` permits in any interval of `window_ms` (plus the
/// request's guard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub scope: LimitScope,
    pub limit: u64,
    pub window_ms: u64,
}

impl Limit {
    /// What is limited, as it appears in the key: `template_send`, `user:<openid>`.
    pub fn name(&self) -> String {
        match &self.scope {
            LimitScope::Api(api) => api.as_str().to_string(),
            LimitScope::Recipient(openid) => format!("user:{openid}"),
        }
    }
}

/// A daily quota on WeChat's calendar: at most `limit` permits per Beijing day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyQuota {
    pub api: Api,
    pub limit: u64,
}

/// What a grant does when the store has lost the limiter's state (see [`Acquire`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossPolicy {
    /// Hold windows full for one window + guard after a detected loss (else admit at once).
    pub hold: bool,
    /// Only windows up to this long are held; longer ones and daily quotas restart empty.
    pub hold_max_window_ms: u64,
}

impl Default for LossPolicy {
    fn default() -> Self {
        Self {
            hold: true,
            hold_max_window_ms: 300_000,
        }
    }
}

/// Everything one send must pass. `acquire` consumes from every limit and quota, or from none.
///
/// **State loss.** Every grant advances the app's grant sequence in the store and returns it;
/// the caller passes back the highest sequence it has seen (`known_seq`). A store whose
/// sequence is below it (the key is gone: a restart without persistence, a flush; or a
/// failover to a replica that missed the last grants) has lost grants: the loss is recorded,
/// reported once ([`AcquireReply::state_loss`]) and, with [`LossPolicy::hold`], every window
/// up to `hold_max_window_ms` counts as full until one window + guard after it.
#[derive(Debug, Clone)]
pub struct AcquireRequest<'a> {
    pub appid: &'a str,
    pub limits: &'a [Limit],
    pub quotas: &'a [DailyQuota],
    /// Pauses to honour (set by [`Limiter::block`]).
    pub blocks: &'a [Api],
    /// Extra time every window entry is kept, so the count also holds where WeChat receives
    /// the call (network jitter shifts arrivals).
    pub guard_ms: u64,
    /// The highest grant sequence of this app the caller has seen (0: none).
    pub known_seq: u64,
    pub loss: LossPolicy,
}

/// Why nothing will be granted before a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockCause {
    /// WeChat answered a limit errcode (45009, 45011, ...) and every node pauses the API.
    Paused { api: Api, errcode: i64 },
    /// The configured daily quota of the API is used up.
    Quota { api: Api, limit: u64 },
}

/// The decision of [`Limiter::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// Permits taken from every limit and quota, at `now_ms` of the store's clock; `seq` is the
    /// app's grant sequence after this grant (0 where the backend keeps none).
    Granted { now_ms: u64, seq: u64 },
    /// A window is full: nothing was taken; one permit frees up in `wait_ms` at the earliest.
    /// `window` indexes the request's `limits`; `held` when it only counts as full because the
    /// store lost its state.
    Wait {
        wait_ms: u64,
        window: usize,
        held: bool,
    },
    /// A daily quota is used up or a pause is set: nothing was taken, nothing will be granted
    /// before `until_ms` (unix ms, store clock).
    Blocked { until_ms: u64, cause: BlockCause },
}

/// The answer of [`Limiter::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireReply {
    pub decision: Acquire,
    /// This call found that the store had lost the app's limiter state.
    pub state_loss: bool,
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

/// A request to claim an idempotency key.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    pub key: &'a str,
    pub request_id: &'a str,
    pub api: Api,
    /// The `client_msg_id` the request sends with (template sends), kept for a successor.
    pub client_msg_id: Option<&'a str>,
    /// How long the claim lives unless renewed.
    pub lease_ms: u64,
    /// How long the record (and later the answer) is kept.
    pub ttl_ms: u64,
}

/// What a claim whose request died (or gave up without an answer) left for its successor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousClaim {
    pub request_id: String,
    pub api: Option<Api>,
    pub client_msg_id: Option<String>,
    /// When its first upstream attempt started (store clock); `None`: it never attempted.
    pub first_attempt_ms: Option<u64>,
    /// The store's clock at the takeover.
    pub now_ms: u64,
}

/// The answer of [`Idempotency::claim_idempotency`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdemClaim {
    /// The caller owns the new key now and must complete or release it.
    Claimed,
    /// The key's claim had lapsed (its request died, or released it): the caller owns it now
    /// and must decide from `previous` whether sending again is safe.
    TakenOver { previous: PreviousClaim },
    /// Another request owns it, and its lease runs another `lease_left_ms`.
    InProgress {
        request_id: String,
        lease_left_ms: u64,
    },
    /// Already done: the stored result.
    Done { request_id: String, result: String },
}

/// Told of every store operation (the engine's metrics), so this crate needs no metrics crate.
pub trait StoreObserver: Send + Sync {
    /// `script` names the operation (the Lua file's name, or the command's role).
    fn observe(&self, script: &'static str, seconds: f64, ok: bool);
}

/// The store's clock and liveness.
#[async_trait]
pub trait Health: Send + Sync {
    /// Short name of the backend for logs and `/readyz` ("memory", "redis").
    fn backend(&self) -> &'static str;

    /// Reports every later operation to `observer` (the first observer set stays). Backends
    /// with nothing worth timing ignore it.
    fn set_observer(&self, _observer: Arc<dyn StoreObserver>) {}

    /// The store's clock in unix ms; all nodes that share a store share this clock.
    async fn now_ms(&self) -> Result<u64, StoreError>;

    /// Whether the store answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The app's shared access_token.
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// The app's token, unless none is stored or it has expired.
    async fn read_token(&self, appid: &str) -> Result<Option<StoredToken>, StoreError>;

    /// Stores `token` unless its fence is older than the stored token's or than the current
    /// leadership fence (a stale leader's write). Equal fences overwrite: the same leader
    /// refreshing again.
    async fn write_token(&self, appid: &str, token: &NewToken) -> Result<TokenWrite, StoreError>;

    /// Deletes the stored token only if it equals `bad_token` (compare-and-delete), so a stale
    /// failure report never evicts a newer token. Returns whether it deleted.
    async fn invalidate_token(&self, appid: &str, bad_token: &str) -> Result<bool, StoreError>;

    /// Reads a token that another system keeps under `key` (any key name: it is the other
    /// system's, not ours). `None` when the key is missing or holds no token.
    async fn read_external_token(&self, key: &str) -> Result<Option<ExternalToken>, StoreError>;
}

/// Sliding windows, daily quotas and pauses.
#[async_trait]
pub trait Limiter: Send + Sync {
    /// Takes one permit from every limit and quota of `req`, or none (see [`Acquire`]).
    async fn acquire(&self, req: &AcquireRequest<'_>) -> Result<AcquireReply, StoreError>;

    /// Stops every node from calling `api` for `appid` until `until_ms` (unix ms): WeChat
    /// answered `errcode` (45009/45011). A later pause extends an earlier one, never shortens it.
    async fn block(
        &self,
        appid: &str,
        api: Api,
        until_ms: u64,
        errcode: i64,
    ) -> Result<(), StoreError>;
}

/// The token-refresh leadership of each app.
#[async_trait]
pub trait Leases: Send + Sync {
    /// Takes the app's refresh leadership for `ttl_ms` if nobody holds it (incrementing the
    /// fence, and never to a value at or below `known_fence`, the highest the caller has seen:
    /// a store that lost its counter must not reuse a fence), or extends it if `node` already
    /// holds it. Returns the fence while `node` leads, `None` when another node does.
    async fn acquire_lease(
        &self,
        appid: &str,
        node: &str,
        ttl_ms: u64,
        known_fence: u64,
    ) -> Result<Option<u64>, StoreError>;

    /// Extends the lease only if `node` still holds it.
    async fn renew_lease(&self, appid: &str, node: &str, ttl_ms: u64) -> Result<bool, StoreError>;

    /// Gives the lease up only if `node` holds it.
    async fn release_lease(&self, appid: &str, node: &str) -> Result<bool, StoreError>;

    /// The node holding the app's lease, if any.
    async fn lease_holder(&self, appid: &str) -> Result<Option<String>, StoreError>;
}

/// Idempotency keys: a claim is a lease held by one request, renewed while it runs; the
/// answer is kept once final.
#[async_trait]
pub trait Idempotency: Send + Sync {
    /// Claims `req.key`: new, taken over from a lapsed claim, in progress elsewhere, or done.
    async fn claim_idempotency(
        &self,
        appid: &str,
        req: &ClaimRequest<'_>,
    ) -> Result<IdemClaim, StoreError>;

    /// Records that the claim's first upstream attempt starts now (kept if one is recorded
    /// already). False if the claim is no longer `request_id`'s.
    async fn mark_attempt(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
    ) -> Result<bool, StoreError>;

    /// Extends the claim's lease by `lease_ms` from now. False if it is no longer
    /// `request_id`'s.
    async fn renew_claim(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
        lease_ms: u64,
    ) -> Result<bool, StoreError>;

    /// Stores the result of the claim held by `request_id`, kept for `ttl_ms`. False if the
    /// claim is no longer `request_id`'s (it lapsed and someone else took it over).
    async fn complete_idempotency(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
        result: &str,
        ttl_ms: u64,
    ) -> Result<bool, StoreError>;

    /// Ends `request_id`'s claim without an answer so the request may be sent again: its lease
    /// lapses at once. `keep_attempt` keeps the record of an upstream attempt (one that may
    /// have reached WeChat); otherwise it is cleared, as nothing was delivered.
    async fn release_idempotency(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
        keep_attempt: bool,
    ) -> Result<bool, StoreError>;
}

/// Short-lived copies of what WeChat said (the template lists).
#[async_trait]
pub trait Cache: Send + Sync {
    /// A cached value of the app's, if present and not expired.
    async fn get_cached(&self, appid: &str, name: &str) -> Result<Option<String>, StoreError>;

    /// Caches `value` for the app under `name` for `ttl_ms`.
    async fn put_cached(
        &self,
        appid: &str,
        name: &str,
        value: &str,
        ttl_ms: u64,
    ) -> Result<(), StoreError>;
}

/// A message to enqueue (see [`Queue::enqueue`]).
#[derive(Debug, Clone)]
pub struct EnqueueRequest<'a> {
    /// The message id (a UUID).
    pub id: &'a str,
    /// What the worker needs to send it (JSON, opaque to the store).
    pub payload: &'a str,
    /// The caller's API key name and `Idempotency-Key`, when one was given.
    pub idempotency: Option<(&'a str, &'a str)>,
    pub max_backlog: u64,
    /// How long the status (and the idempotency mapping) is kept.
    pub ttl_ms: u64,
}

/// The answer of [`Queue::enqueue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Appended to the stream.
    Accepted { id: String },
    /// Enqueued before under the same idempotency key: its id, nothing written.
    Existing { id: String },
    /// The backlog is full: nothing written.
    Full { depth: u64, oldest_age_ms: u64 },
}

/// One stream entry handed to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    /// The stream entry id.
    pub entry: String,
    /// The message id.
    pub id: String,
}

/// One message's status hash, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueuedMessage {
    pub state: String,
    pub payload: String,
    pub attempts: u32,
    pub gen: u32,
    pub msgid: Option<String>,
    /// The classified error (JSON), once failed (or the last retryable one while queued).
    pub error: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub finished_ms: Option<u64>,
}

/// A message's final outcome (see [`Queue::finish`]).
#[derive(Debug, Clone)]
pub struct Finish<'a> {
    pub entry: &'a str,
    pub id: &'a str,
    /// `sent` or `failed`.
    pub state: &'a str,
    pub msgid: Option<&'a str>,
    pub error: Option<&'a str>,
    /// Also append it to the dead-letter stream.
    pub dead_letter: bool,
    pub ttl_ms: u64,
    pub node: &'a str,
    /// The deliveries counted so far, to record with the outcome (`None`: leave the count).
    pub attempts: Option<u32>,
}

/// What `wxgate inspect` and the metrics show of one app's queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueStats {
    /// Entries in the stream: queued plus being delivered.
    pub depth: u64,
    /// Entries delivered to a consumer and not acknowledged yet.
    pub pending: u64,
    /// Age of the oldest entry (store clock), if any.
    pub oldest_age_ms: Option<u64>,
    pub dead_letters: u64,
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// Its entry in the dead-letter stream.
    pub entry: String,
    pub id: String,
}

/// Durable queued delivery: one stream per app, one consumer group (`wxgate`) read by every
/// node's workers, one status hash per message, one dead-letter stream per app. Redis only.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Enqueues atomically: the same id back for a known idempotency key; `Full` past the
    /// backlog; else the stream entry and the status hash (`queued`).
    async fn enqueue(&self, appid: &str, req: &EnqueueRequest<'_>) -> Result<Enqueued, StoreError>;

    /// Creates the consumer group (and the stream) unless it exists.
    async fn ensure_group(&self, appid: &str) -> Result<(), StoreError>;

    /// New entries for `consumer`, waiting up to `block_ms` for one, on a connection of the
    /// app's own (a blocking read never stalls the shared one). Recreates a lost group.
    async fn read(
        &self,
        appid: &str,
        consumer: &str,
        count: usize,
        block_ms: u64,
    ) -> Result<Vec<QueueEntry>, StoreError>;

    /// Entries idle for `min_idle_ms` in any consumer (a dead one's), now `consumer`'s.
    async fn claim_idle(
        &self,
        appid: &str,
        consumer: &str,
        min_idle_ms: u64,
        count: usize,
    ) -> Result<Vec<QueueEntry>, StoreError>;

    /// Resets the idle time of an entry `consumer` still owns; false if it lost it.
    async fn touch(&self, appid: &str, consumer: &str, entry: &str) -> Result<bool, StoreError>;

    /// The status of message `id`, if kept.
    async fn message(&self, appid: &str, id: &str) -> Result<Option<QueuedMessage>, StoreError>;

    /// Updates fields of a message's status (`state`, `attempts`, `error`...) while it is
    /// delivered; a status that expired is not recreated.
    async fn update(
        &self,
        appid: &str,
        id: &str,
        fields: &[(&str, String)],
    ) -> Result<(), StoreError>;

    /// Stores the final outcome, then acknowledges and deletes the entry (one atomic step);
    /// dead-letters it when asked. True when this call acknowledged it.
    async fn finish(&self, appid: &str, f: &Finish<'_>) -> Result<bool, StoreError>;

    async fn stats(&self, appid: &str) -> Result<QueueStats, StoreError>;

    /// The oldest `count` dead letters.
    async fn dead_letters(&self, appid: &str, count: usize) -> Result<Vec<DeadLetter>, StoreError>;

    /// Puts a dead letter back on the stream (a new generation, attempts reset). False when it
    /// is gone or its status expired.
    async fn redrive(
        &self,
        appid: &str,
        letter: &DeadLetter,
        ttl_ms: u64,
    ) -> Result<bool, StoreError>;
}

/// A backend that plays every role. Implementations must make every method atomic.
pub trait Store:
    Health + TokenStore + Limiter + Leases + Idempotency + Cache + inspect::Inspect + 'static
{
}

impl<
        T: Health + TokenStore + Limiter + Leases + Idempotency + Cache + inspect::Inspect + 'static,
    > Store for T
{
}

/// Each role of the shared state, for the code that uses it.
#[derive(Clone)]
pub struct SharedState {
    pub health: Arc<dyn Health>,
    pub tokens: Arc<dyn TokenStore>,
    pub limiter: Arc<dyn Limiter>,
    pub leases: Arc<dyn Leases>,
    pub idempotency: Arc<dyn Idempotency>,
    pub cache: Arc<dyn Cache>,
    /// Queued delivery, where the backend has it (Redis).
    pub queue: Option<Arc<dyn Queue>>,
    pub inspect: Arc<dyn inspect::Inspect>,
}

impl SharedState {
    /// Every role from one backend.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            health: store.clone(),
            tokens: store.clone(),
            limiter: store.clone(),
            leases: store.clone(),
            idempotency: store.clone(),
            cache: store.clone(),
            inspect: store,
            queue: None,
        }
    }

    /// The same, with queued delivery.
    pub fn with_queue(mut self, queue: Arc<dyn Queue>) -> Self {
        self.queue = Some(queue);
        self
    }

    /// The same, with another limiter (e.g. a [`fallback::FallbackLimiter`] around it).
    pub fn with_limiter(mut self, limiter: Arc<dyn Limiter>) -> Self {
        self.limiter = limiter;
        self
    }
}
