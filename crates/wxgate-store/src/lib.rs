//! The shared state of a wxgate cluster, behind one contract.
//!
//! The gateway nodes are stateless: whatever must be shared (the access_token today; rate-limit
//! windows, leader leases and idempotency records with the Redis backend) goes through
//! [`Store`]. Every operation is a single atomic read-modify-write, so that a Redis backend can
//! implement each one as one Lua script and the in-memory backend as one critical section.
//!
//! # Layout
//! - [`Store`], [`StoredToken`], [`TokenWrite`]: the contract.
//! - [`memory::MemoryStore`]: the single-node backend (the embedded default).
//! - [`clock`]: where "now" comes from. The Redis backend uses Redis `TIME`; the memory
//!   backend a [`clock::Clock`] that tests can move by hand.

pub mod clock;
pub mod memory;

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

/// Outcome of a fenced token write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenWrite {
    Written,
    /// Refused: the stored token was written under a newer fence.
    StaleFence {
        stored_fence: u64,
    },
}

/// Why a store operation failed. Callers fail closed on it (503), never open.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("shared state unavailable: {0}")]
    Unavailable(String),
    #[error("shared state answered unexpectedly: {0}")]
    Protocol(String),
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

    /// Stores `token` unless the stored one carries a newer fence (equal fences overwrite: the
    /// same leader refreshing again).
    async fn write_token(&self, appid: &str, token: &StoredToken)
        -> Result<TokenWrite, StoreError>;

    /// Deletes the stored token only if it equals `bad_token` (compare-and-delete), so a stale
    /// failure report never evicts a newer token. Returns whether it deleted.
    async fn invalidate_token(&self, appid: &str, bad_token: &str) -> Result<bool, StoreError>;

    /// Whether the store answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;
}
