//! Reading an app's shared state for operators (`wxgate inspect`, the admin API), and the one
//! write an operator may make by hand: lifting a pause.
//!
//! Read-only: an inspection never takes a permit, never renews a lease and never trims a
//! window (the Redis script counts the entries inside the window instead of removing the old
//! ones). The token never leaves the store's answer unmasked: the backend masks it with
//! [`crate::mask`], as the logs do, before anything else sees it.

use async_trait::async_trait;

use crate::{Api, DailyQuota, StoreError, TokenSource};

/// What to read for one app: its configured windows, quotas and pausable APIs.
#[derive(Debug, Clone)]
pub struct InspectQuery<'a> {
    pub appid: &'a str,
    /// The per-API windows: (api, limit, window_ms).
    pub windows: &'a [(Api, u64, u64)],
    pub quotas: &'a [DailyQuota],
    /// The APIs whose pauses to read.
    pub blocks: &'a [Api],
    /// The first per-recipient window's length, to count recipients with a live window.
    pub recipient_window_ms: Option<u64>,
    /// The limiter's guard (a window keeps each grant `window_ms + guard_ms`).
    pub guard_ms: u64,
    /// At most this many keys are examined when counting idempotency records and recipients
    /// (0: not counted; the counts say 0, capped).
    pub scan_limit: u64,
}

/// A token as an operator may see it: masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// [`crate::mask`] of the token: its length and last 4 characters at most.
    pub masked: String,
    pub source: TokenSource,
    pub fetched_at_ms: u64,
    pub expires_at_ms: u64,
    pub fence: u64,
    pub node: String,
}

/// One window's use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowUse {
    /// Grants inside the window (window + guard) now.
    pub used: u64,
    /// 0 when a permit is free now; else when the next one frees.
    pub frees_in_ms: u64,
}

/// A pause in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PauseInfo {
    pub api: Api,
    /// WeChat's errcode that set it (0: unknown).
    pub errcode: i64,
    pub until_ms: u64,
}

/// A bounded count: `capped` when the scan stopped at the limit (the count is a floor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BoundedCount {
    pub count: u64,
    pub capped: bool,
}

/// Everything read for one app, in the order of the query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppStateRead {
    /// The store's clock at the read.
    pub now_ms: u64,
    pub token: Option<TokenInfo>,
    /// The leadership fence counter.
    pub fence: Option<u64>,
    /// The lease holder and the lease time left.
    pub leader: Option<(String, u64)>,
    /// One per query window.
    pub windows: Vec<WindowUse>,
    /// Used today (Beijing day), one per query quota.
    pub quotas_used: Vec<u64>,
    /// Pauses in force (query order, only those set).
    pub pauses: Vec<PauseInfo>,
    pub idempotency_records: BoundedCount,
    pub recipients_with_window: BoundedCount,
    /// The app's grant sequence (state-loss detection).
    pub grant_seq: u64,
    /// When a state loss was last detected.
    pub lost_at_ms: Option<u64>,
}

/// Operator access to the shared state.
#[async_trait]
pub trait Inspect: Send + Sync {
    /// Reads one app's state, changing nothing.
    async fn inspect_app(&self, q: &InspectQuery<'_>) -> Result<AppStateRead, StoreError>;

    /// Deletes the pause of `api`; false when none was set.
    async fn lift_pause(&self, appid: &str, api: Api) -> Result<bool, StoreError>;
}

/// Escapes Redis glob characters, for a `SCAN MATCH` pattern made of literal text.
pub fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
