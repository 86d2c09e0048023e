//! One token owner for the whole cluster, and a per-node cache in front of it.
//!
//! - **Leadership.** Every node runs [`TokenManager::run_refresher`]: every `check_interval` it
//!   takes or renews the app's lease in the store (`SET NX PX` + a fencing counter). Only the
//!   lease holder — the leader — calls WeChat's token endpoints, and it does so ahead of expiry
//!   (`refresh_ahead` before WeChat's expiry, never before half the token's life), so callers
//!   never wait for a refresh in steady state. Its writes carry its fence: a leader that lost its
//!   lease mid-refresh has its write refused by the store. When the leader dies its lease
//!   expires (`lease_ttl`) and another node's refresher takes over.
//! - **Followers** read the token from the store and cache it until it is due; a due token is
//!   re-read every second (the leader is refreshing it), so a new token reaches every node fast.
//!   While the store cannot be read, a cached token is used (and counts for `/readyz`) until
//!   its expiry margin, due or not. A stopping node releases its leases (`release_leases`).
//! - **Bad tokens.** `report_bad` invalidates exactly the rejected token (compare-and-delete in
//!   the store and the cache). A node that then needs a token and finds none becomes leader if
//!   nobody is (and fetches), or waits for the leader to store one (`wait_for_token`): one fetch
//!   cluster-wide however many nodes saw the error. Within a node, one task per app does this
//!   (a per-app lock); the others wait for it.
//! - **Token-endpoint quotas.** Each fetch first takes a permit from the store's `acquire`: at
//!   most `fetch_per_minute` per app cluster-wide, and WeChat's daily quota of the endpoint
//!   (2,000 for `/cgi-bin/token`, 500,000 for `stable_token`), so no storm can exhaust them.
//! - **External tokens** are read from the configured Redis key, re-read every few seconds, and
//!   never fetched.
//!
//! - **Expiry margin.** A token's life counts from when its fetch was *sent*, and a token is not
//!   used within `expiry_margin` of its expiry (it must still be valid when the send arrives).
//! - **A rejected token never comes back.** Each app remembers the last few tokens WeChat
//!   rejected; a read of the store or a fetch that still returns one (a read that raced the
//!   invalidation, a lagging replica) is refused and invalidated again, never cached.
//!
//! The cache is bounded by the number of configured apps and invalidated on every report.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use wxgate_config::{App, TokenMode};
use wxgate_protocol::api::{Api, CLASSIC_TOKEN_DAILY_QUOTA, STABLE_TOKEN_DAILY_QUOTA};
use wxgate_protocol::errcode::{self, Endpoint, ErrorClass};
use wxgate_store::clock::Clock;
use wxgate_store::{
    Acquire, AcquireRequest, DailyQuota, Limit, LimitScope, NewToken, SharedState, StoreError,
    StoredToken, TokenSource, TokenWrite,
};
use wxgate_upstream::{Answered, UpstreamError, WechatClient};

use crate::outcome::SendError;

/// How often a node re-reads a token that is due (the leader is refreshing it) or external.
const RECHECK_DUE_MS: u64 = 1_000;
const RECHECK_EXTERNAL_MS: u64 = 5_000;
/// How many rejected tokens each app remembers, and for how long. The races this closes last
/// milliseconds; a bounded memory means a token WeChat rejected by mistake (its stable_token
/// endpoint hands the same token back until it rotates) blocks sends for a minute at most.
const REJECTED_KEPT: usize = 8;
const REJECTED_FOR: Duration = Duration::from_secs(60);

/// A token ready to use.
#[derive(Clone)]
pub struct Token {
    pub value: Arc<str>,
    pub expires_at_ms: u64,
    /// When this instance was fetched (store clock; 0 when unknown, e.g. external tokens). The
    /// same value fetched again later is a new instance: WeChat vouched for it again.
    pub fetched_at_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("the token endpoint answered {errcode} ({errmsg})")]
    Wechat {
        errcode: i64,
        errmsg: String,
        class: ErrorClass,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No usable token, and none can be had now (waited for the leader, quota used up, or
    /// the external owner has not stored one).
    #[error("{0}")]
    Unavailable(String),
}

/// Settings of the token manager.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub node_id: String,
    pub refresh_ahead_ms: u64,
    pub lease_ttl_ms: u64,
    pub check_interval: Duration,
    pub wait_for_token: Duration,
    pub fetch_per_minute: u64,
    /// A token is not used this close to its expiry.
    pub expiry_margin_ms: u64,
}

struct Cached {
    token: Token,
    /// When to look at the store again.
    recheck_at_ms: u64,
}

struct AppTokens {
    app: App,
    cache: RwLock<Option<Cached>>,
    /// The refresher's backoff after failed fetches: (next attempt, current delay).
    backoff: std::sync::Mutex<Option<(tokio::time::Instant, Duration)>>,
    /// Single-flight per node: one task per app reads, fetches or waits at a time.
    flight: tokio::sync::Mutex<()>,
    /// The last tokens WeChat rejected (newest last): never cached or used again.
    /// (token, the newest fetch of it that was rejected, when): instances fetched up to then
    /// are refused.
    rejected: Mutex<VecDeque<(Arc<str>, u64, Instant)>>,
    /// The highest leadership fence this node has seen (from leases and stored tokens): a
    /// store that lost its counter is never allowed to hand out one at or below it.
    fence_seen: std::sync::atomic::AtomicU64,
}

impl AppTokens {
    /// Whether the instance of `token` fetched at `fetched_at_ms` was rejected.
    fn is_rejected(&self, token: &str, fetched_at_ms: u64) -> bool {
        self.rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(r, upto, at)| {
                &**r == token && fetched_at_ms <= *upto && at.elapsed() < REJECTED_FOR
            })
    }

    /// Remembers that WeChat rejected `token` as fetched up to `fetched_at_ms`.
    fn reject(&self, token: &str, fetched_at_ms: u64) {
        let mut r = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        let upto = r
            .iter()
            .filter(|(t, _, at)| &**t == token && at.elapsed() < REJECTED_FOR)
            .map(|(_, u, _)| *u)
            .fold(fetched_at_ms, u64::max);
        r.retain(|(t, _, at)| &**t != token && at.elapsed() < REJECTED_FOR);
        if r.len() == REJECTED_KEPT {
            r.pop_front();
        }
        r.push_back((Arc::from(token), upto, Instant::now()));
    }
}

pub struct TokenManager {
    metrics: Arc<crate::metrics::Metrics>,
    store: SharedState,
    client: WechatClient,
    clock: Arc<dyn Clock>,
    cfg: TokenConfig,
    apps: HashMap<String, AppTokens>,
}

/// When a stored token is due for refresh.
fn refresh_at(t: &StoredToken, ahead_ms: u64) -> u64 {
    let life = t.expires_at_ms.saturating_sub(t.fetched_at_ms);
    t.fetched_at_ms + life.saturating_sub(ahead_ms).max(life / 2)
}

impl TokenManager {
    pub fn new<'a>(
        store: SharedState,
        client: WechatClient,
        clock: Arc<dyn Clock>,
        cfg: TokenConfig,
        apps: impl IntoIterator<Item = &'a App>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let apps = apps
            .into_iter()
            .map(|a| {
                let slot = AppTokens {
                    app: a.clone(),
                    cache: RwLock::new(None),
                    backoff: std::sync::Mutex::new(None),
                    flight: tokio::sync::Mutex::new(()),
                    rejected: Mutex::new(VecDeque::new()),
                    fence_seen: std::sync::atomic::AtomicU64::new(0),
                };
                (a.appid.clone(), slot)
            })
            .collect();
        Self {
            metrics,
            store,
            client,
            clock,
            cfg,
            apps,
        }
    }

    pub fn node_id(&self) -> &str {
        &self.cfg.node_id
    }

    fn slot(&self, appid: &str) -> &AppTokens {
        self.apps
            .get(appid)
            .expect("token slots exist for every configured app")
    }

    fn cached(&self, appid: &str) -> Option<Token> {
        let now = self.clock.now_ms();
        let guard = self
            .slot(appid)
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner());
        guard.as_ref().and_then(|c| {
            (now < c.recheck_at_ms
                && self.usable(now, c.token.fetched_at_ms, c.token.expires_at_ms))
            .then(|| c.token.clone())
        })
    }

    /// The cached token even when it is due for a re-read, if still usable: what this node uses
    /// while the store cannot be read (`on_unavailable = "local_share"`), rather than failing
    /// with a valid token in hand.
    fn cached_while_store_unreachable(&self, appid: &str) -> Option<Token> {
        let now = self.clock.now_ms();
        let guard = self
            .slot(appid)
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner());
        guard.as_ref().and_then(|c| {
            self.usable(now, c.token.fetched_at_ms, c.token.expires_at_ms)
                .then(|| c.token.clone())
        })
    }

    /// Whether a token fetched at `fetched_at_ms` and expiring at `expires_at_ms` may still be
    /// sent at `now`: not within the expiry margin, which is at most a tenth of its life.
    fn usable(&self, now: u64, fetched_at_ms: u64, expires_at_ms: u64) -> bool {
        let life = expires_at_ms.saturating_sub(fetched_at_ms);
        let margin = self.cfg.expiry_margin_ms.min(life / 10);
        now.saturating_add(margin) < expires_at_ms
    }

    /// Caches a token unless WeChat rejected it; `None` for a rejected one. The check and the
    /// write happen under the cache lock, and `report_bad` records a rejection before it clears
    /// the cache under the same lock: whichever comes second sees the other.
    fn remember(
        &self,
        appid: &str,
        value: &str,
        expires_at_ms: u64,
        fetched_at_ms: u64,
        recheck_at_ms: u64,
    ) -> Option<Token> {
        let slot = self.slot(appid);
        let mut cache = slot.cache.write().unwrap_or_else(|p| p.into_inner());
        if slot.is_rejected(value, fetched_at_ms) {
            return None;
        }
        let token = Token {
            value: Arc::from(value),
            expires_at_ms,
            fetched_at_ms,
        };
        *cache = Some(Cached {
            token: token.clone(),
            recheck_at_ms,
        });
        Some(token)
    }

    fn remember_stored(&self, appid: &str, t: &StoredToken) -> Option<Token> {
        let now = self.clock.now_ms();
        let due = refresh_at(t, self.cfg.refresh_ahead_ms);
        let recheck = if now < due { due } else { now + RECHECK_DUE_MS };
        self.remember(
            appid,
            &t.access_token,
            t.expires_at_ms,
            t.fetched_at_ms,
            recheck,
        )
    }

    /// A stored token this node may use: valid beyond the margin and never rejected. A rejected
    /// one still in the store (its invalidation raced a read or a write) is deleted again.
    async fn usable_stored(&self, app: &App, st: Option<StoredToken>) -> Option<Token> {
        let st = st?;
        self.slot(&app.appid)
            .fence_seen
            .fetch_max(st.fence, std::sync::atomic::Ordering::Relaxed);
        if !self.usable(self.clock.now_ms(), st.fetched_at_ms, st.expires_at_ms) {
            return None;
        }
        match self.remember_stored(&app.appid, &st) {
            Some(t) => Some(t),
            None => {
                tracing::warn!(app = %app.name, token = %wxgate_store::mask(&st.access_token), "the store returned a token WeChat rejected; invalidating it again");
                let _ = self
                    .store
                    .tokens
                    .invalidate_token(&app.appid, &st.access_token)
                    .await;
                None
            }
        }
    }

    /// A usable token for `app`. In steady state this is the node's cache (no store call).
    pub async fn get(&self, app: &App) -> Result<Token, TokenError> {
        if let Some(t) = self.cached(&app.appid) {
            return Ok(t);
        }
        let _flight = self.slot(&app.appid).flight.lock().await;
        if let Some(t) = self.cached(&app.appid) {
            return Ok(t);
        }
        if app.token_mode == TokenMode::External {
            return self.read_external(app).await;
        }
        let deadline = tokio::time::Instant::now() + self.cfg.wait_for_token;
        loop {
            let stored = match self.store.tokens.read_token(&app.appid).await {
                Ok(s) => s,
                Err(e) => {
                    return self
                        .cached_while_store_unreachable(&app.appid)
                        .ok_or(TokenError::Store(e))
                }
            };
            if let Some(t) = self.usable_stored(app, stored).await {
                // Valid: use it, even if due — the leader's refresher is renewing it, and a
                // caller never waits for a refresh while a valid token exists.
                return Ok(t);
            }
            // Missing (never fetched, or invalidated after WeChat rejected it) or expired:
            // the leader fetches; if nobody leads, this node takes the lease and does.
            if let Some(fence) = self.lead(app).await? {
                return self.fetch(app, fence).await;
            }
            if tokio::time::Instant::now() >= deadline {
                let leader = self
                    .store
                    .leases
                    .lease_holder(&app.appid)
                    .await
                    .ok()
                    .flatten();
                return Err(TokenError::Unavailable(format!(
                    "no access_token for app `{}` after waiting {} ms for the refresh leader ({})",
                    app.name,
                    self.cfg.wait_for_token.as_millis(),
                    leader.as_deref().unwrap_or("none")
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes or renews the app's lease; the fence while this node leads.
    async fn lead(&self, app: &App) -> Result<Option<u64>, StoreError> {
        let seen = &self.slot(&app.appid).fence_seen;
        let fence = self
            .store
            .leases
            .acquire_lease(
                &app.appid,
                &self.cfg.node_id,
                self.cfg.lease_ttl_ms,
                seen.load(std::sync::atomic::Ordering::Relaxed),
            )
            .await?;
        if let Some(f) = fence {
            seen.fetch_max(f, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(fence)
    }

    async fn read_external(&self, app: &App) -> Result<Token, TokenError> {
        let key = app.external_token_key.as_deref().unwrap_or_default();
        let found = self.store.tokens.read_external_token(key).await?;
        let now = self.clock.now_ms();
        match found {
            None => Err(TokenError::Unavailable(format!(
                "no access_token for app `{}`: the external key `{key}` is missing or empty (token_mode = \"external\": its owner must store it)",
                app.name
            ))),
            Some(t) if t.expires_at_ms.is_some_and(|e| e <= t.read_at_ms) => {
                Err(TokenError::Unavailable(format!(
                    "no access_token for app `{}`: the token at external key `{key}` expired (its owner has not refreshed it)",
                    app.name
                )))
            }
            Some(t) => {
                // Unknown expiry: trust it until WeChat rejects it; re-read every few seconds.
                let expires = t.expires_at_ms.map(|e| now + e.saturating_sub(t.read_at_ms));
                let expires = expires.unwrap_or(u64::MAX);
                let recheck = (now + RECHECK_EXTERNAL_MS).min(expires);
                self.remember(&app.appid, &t.access_token, expires, 0, recheck)
                    .ok_or_else(|| {
                        TokenError::Unavailable(format!(
                            "the token at external key `{key}` was rejected by WeChat; its owner must refresh it"
                        ))
                    })
            }
        }
    }

    /// Calls the app's token endpoint (this node leads, with `fence`) and stores the result.
    async fn fetch(&self, app: &App, fence: u64) -> Result<Token, TokenError> {
        let result = self.fetch_inner(app, fence).await;
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(TokenError::Wechat { errcode, .. }) => format!("errcode_{errcode}"),
            Err(TokenError::Upstream(_)) => "transport".into(),
            Err(TokenError::Store(_)) => "store".into(),
            Err(TokenError::Unavailable(_)) => "unavailable".into(),
        };
        self.metrics
            .token_fetches
            .get_or_create(&crate::metrics::TokenLabels {
                app: app.name.clone(),
                outcome,
            })
            .inc();
        result
    }

    async fn fetch_inner(&self, app: &App, fence: u64) -> Result<Token, TokenError> {
        self.fetch_permit(app).await?;
        let secret = app
            .secret
            .as_ref()
            .ok_or_else(|| TokenError::Unavailable(format!("app `{}` has no secret", app.name)))?
            .expose_secret();
        // The token's life counts from here: WeChat's clock starts when it answers, later.
        let sent_at = Instant::now();
        let (answer, source) = match app.token_mode {
            TokenMode::Classic => (
                self.client.classic_token(&app.appid, secret).await?,
                TokenSource::Classic,
            ),
            _ => (
                self.client.stable_token(&app.appid, secret, false).await?,
                TokenSource::Stable,
            ),
        };
        match answer {
            Answered::Ok(t) => {
                let new = NewToken {
                    access_token: t.access_token,
                    expires_in_ms: t.expires_in * 1000,
                    age_ms: sent_at.elapsed().as_millis() as u64,
                    fence,
                    node: self.cfg.node_id.clone(),
                    source,
                };
                let stored = match self.store.tokens.write_token(&app.appid, &new).await? {
                    TokenWrite::Written(stored) => stored,
                    TokenWrite::StaleFence { stored_fence } => {
                        self.slot(&app.appid)
                            .fence_seen
                            .fetch_max(stored_fence, std::sync::atomic::Ordering::Relaxed);
                        // This node lost the lease mid-refresh; the newer leader's token wins.
                        tracing::warn!(app = %app.name, fence, stored_fence, "token write refused: a newer leader holds the token");
                        let st = self.store.tokens.read_token(&app.appid).await?;
                        return self.usable_stored(app, st).await.ok_or_else(|| {
                            TokenError::Unavailable(
                                "lost the refresh lease and no newer token is stored yet".into(),
                            )
                        });
                    }
                };
                tracing::info!(
                    app = %app.name,
                    mode = source.as_str(),
                    fence,
                    expires_in = t.expires_in,
                    token = %wxgate_store::mask(&stored.access_token),
                    "access_token fetched"
                );
                self.usable_stored(app, Some(stored)).await.ok_or_else(|| {
                    TokenError::Unavailable(
                        "the fetched token is already too close to its expiry".into(),
                    )
                })
            }
            Answered::Err(e) => {
                let class = errcode::classify(e.errcode, Endpoint::Token);
                tracing::error!(app = %app.name, errcode = e.errcode, class = class.as_str(), errmsg = %e.errmsg, "token endpoint refused");
                crate::permit::pause_api(&self.store, app, Api::TokenFetch, e.errcode, class).await;
                Err(TokenError::Wechat {
                    errcode: e.errcode,
                    errmsg: e.errmsg,
                    class,
                })
            }
        }
    }

    /// A permit for one token-endpoint call: the storm guard and WeChat's daily quota of the
    /// endpoint, cluster-wide.
    async fn fetch_permit(&self, app: &App) -> Result<(), TokenError> {
        let daily = match app.token_mode {
            TokenMode::Classic => CLASSIC_TOKEN_DAILY_QUOTA,
            _ => STABLE_TOKEN_DAILY_QUOTA,
        };
        let limits = [Limit {
            scope: LimitScope::Api(Api::TokenFetch),
            limit: self.cfg.fetch_per_minute,
            window_ms: 60_000,
        }];
        let quotas = [DailyQuota {
            api: Api::TokenFetch,
            limit: daily,
        }];
        let req = AcquireRequest {
            appid: &app.appid,
            limits: &limits,
            quotas: &quotas,
            blocks: &[Api::TokenFetch],
            guard_ms: 0,
            // The storm guard is a safety net, not WeChat's limit: no loss detection.
            known_seq: 0,
            loss: wxgate_store::LossPolicy {
                hold: false,
                hold_max_window_ms: 0,
            },
        };
        match self.store.limiter.acquire(&req).await?.decision {
            Acquire::Granted { .. } => Ok(()),
            Acquire::Wait { wait_ms, .. } => Err(TokenError::Unavailable(format!(
                "token endpoint storm guard: {} fetches per minute used for app `{}`; next in {wait_ms} ms",
                self.cfg.fetch_per_minute, app.name
            ))),
            Acquire::Blocked { until_ms, cause } => Err(TokenError::Unavailable(format!(
                "token endpoint of app `{}` paused until {} ({cause:?})",
                app.name,
                wxgate_protocol::time::utc_rfc3339(until_ms)
            ))),
        }
    }

    /// WeChat rejected `bad`: forget it here and in the store, unless a newer one replaced it.
    ///
    /// `fetched_at_ms` is the rejected instance's fetch time (from its [`Token`]); without it
    /// (a token reported through the API) it is the instance this node caches or the store
    /// holds, if either has that value.
    pub async fn report_bad(
        &self,
        app: &App,
        bad: &str,
        fetched_at_ms: Option<u64>,
    ) -> Result<bool, TokenError> {
        let fetched_at_ms = match fetched_at_ms {
            Some(f) => Some(f),
            None => self
                .slot(&app.appid)
                .cache
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .filter(|c| &*c.token.value == bad)
                .map(|c| c.token.fetched_at_ms),
        };
        let fetched_at_ms = match fetched_at_ms {
            Some(f) => f,
            None if app.token_mode == TokenMode::External => 0,
            None => match self.store.tokens.read_token(&app.appid).await {
                Ok(Some(t)) if t.access_token == bad => t.fetched_at_ms,
                _ => 0,
            },
        };
        {
            let slot = self.slot(&app.appid);
            let mut guard = slot.cache.write().unwrap_or_else(|p| p.into_inner());
            slot.reject(bad, fetched_at_ms);
            if guard.as_ref().is_some_and(|c| &*c.token.value == bad) {
                *guard = None;
            }
        }
        if app.token_mode == TokenMode::External {
            tracing::warn!(app = %app.name, token = %wxgate_store::mask(bad), "external access_token rejected by WeChat; its owner must refresh it");
            return Ok(false);
        }
        let deleted = self.store.tokens.invalidate_token(&app.appid, bad).await?;
        tracing::warn!(app = %app.name, token = %wxgate_store::mask(bad), deleted, "access_token rejected; invalidated");
        Ok(deleted)
    }

    /// Whether a usable token exists for `app` (for `/readyz`).
    pub async fn has_token(&self, app: &App) -> bool {
        if self.cached(&app.appid).is_some() {
            return true;
        }
        if app.token_mode == TokenMode::External {
            return matches!(
                self.store.tokens.read_external_token(app.external_token_key.as_deref().unwrap_or("")).await,
                Ok(Some(t)) if t.expires_at_ms.is_none_or(|e| e > t.read_at_ms)
            );
        }
        let now = self.clock.now_ms();
        let slot = self.slot(&app.appid);
        match self.store.tokens.read_token(&app.appid).await {
            Ok(Some(t)) => {
                self.usable(now, t.fetched_at_ms, t.expires_at_ms)
                    && !slot.is_rejected(&t.access_token, t.fetched_at_ms)
            }
            Ok(None) => false,
            // The store is unreachable (readiness only gets here when the limiter admits
            // without it): the cached token still counts until its expiry margin.
            Err(_) => self.cached_while_store_unreachable(&app.appid).is_some(),
        }
    }

    /// One refresher step for `app`: renew or take the lease; as leader, refresh the token if
    /// it is missing or due.
    pub async fn tick(&self, app: &App) {
        if app.token_mode == TokenMode::External {
            return;
        }
        let fence = match self.lead(app).await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(app = %app.name, error = %e, "refresher: store unavailable");
                return;
            }
        };
        let _flight = self.slot(&app.appid).flight.lock().await;
        let stored = match self.store.tokens.read_token(&app.appid).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(app = %app.name, error = %e, "refresher: store unavailable");
                return;
            }
        };
        let now = self.clock.now_ms();
        match stored {
            Some(st)
                if now < refresh_at(&st, self.cfg.refresh_ahead_ms)
                    && self.usable_stored(app, Some(st.clone())).await.is_some() => {}
            _ => {
                let slot = self.slot(&app.appid);
                let waiting = slot
                    .backoff
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some_and(|(next, _)| tokio::time::Instant::now() < next);
                if waiting {
                    return;
                }
                match self.fetch(app, fence).await {
                    Ok(_) => *slot.backoff.lock().unwrap_or_else(|p| p.into_inner()) = None,
                    Err(e) => {
                        // Back off (doubling, up to a minute) so a wrong secret or an outage
                        // does not turn into a stream of token calls.
                        let mut b = slot.backoff.lock().unwrap_or_else(|p| p.into_inner());
                        let delay = b
                            .map(|(_, d)| (d * 2).min(Duration::from_secs(60)))
                            .unwrap_or(self.cfg.check_interval);
                        *b = Some((tokio::time::Instant::now() + delay, delay));
                        tracing::warn!(app = %app.name, error = %e, retry_in_ms = delay.as_millis() as u64, "refresher: token refresh failed");
                    }
                }
            }
        }
    }

    /// Runs every app's refresher until `shutdown` turns true, then releases the leases this
    /// node holds so another node takes over at once.
    pub async fn run_refresher(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(self.cfg.check_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
            for slot in self.apps.values() {
                self.tick(&slot.app).await;
            }
        }
        self.release_leases().await;
    }

    /// Releases every lease this node holds (a no-op for the others).
    pub async fn release_leases(&self) {
        for slot in self.apps.values() {
            if let Ok(true) = self
                .store
                .leases
                .release_lease(&slot.app.appid, &self.cfg.node_id)
                .await
            {
                tracing::info!(app = %slot.app.name, "released the token refresh lease");
            }
        }
    }
}

impl From<TokenError> for SendError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Upstream(u) => SendError::TokenUnavailable {
                detail: format!("the token endpoint failed ({u})"),
                errcode: None,
            },
            TokenError::Wechat {
                errcode,
                errmsg,
                class,
            } => {
                if matches!(
                    class,
                    ErrorClass::Backoff | ErrorClass::RateLimited | ErrorClass::QuotaExhausted
                ) {
                    SendError::TokenUnavailable {
                        detail: format!("the token endpoint answered {errcode} ({errmsg})"),
                        errcode: Some(errcode),
                    }
                } else {
                    SendError::AppMisconfigured {
                        errcode,
                        errmsg,
                        class,
                    }
                }
            }
            TokenError::Store(s) => SendError::store(s),
            TokenError::Unavailable(detail) => SendError::TokenUnavailable {
                detail,
                errcode: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token manager over a memory store, and the app it serves.
    fn manager() -> (TokenManager, SharedState, App) {
        let settings = wxgate_config::Settings::from_toml_str(
            r#"
[apps.oa]
appid = "wx0000000000000001"
kind = "official_account"
secret = "s3cret-s3cret-s3cret"
[api_keys.k]
key = "0123456789abcdef0123"
apps = ["*"]
"#,
        )
        .expect("config");
        let app = settings.apps["oa"].clone();
        let store = SharedState::new(Arc::new(wxgate_store::memory::MemoryStore::new()));
        let client = WechatClient::new(&wxgate_upstream::UpstreamConfig {
            base_url: "http://127.0.0.1:9".into(),
            ..Default::default()
        })
        .expect("client");
        let tm = TokenManager::new(
            store.clone(),
            client,
            Arc::new(wxgate_store::clock::SystemClock),
            TokenConfig {
                node_id: "n1".into(),
                refresh_ahead_ms: 0,
                lease_ttl_ms: 10_000,
                check_interval: Duration::from_secs(1),
                wait_for_token: Duration::from_millis(10),
                fetch_per_minute: 10,
                expiry_margin_ms: 1_000,
            },
            [&app],
            Arc::new(crate::metrics::Metrics::new()),
        );
        (tm, store, app)
    }

    async fn store_token(store: &SharedState, app: &App, value: &str) -> StoredToken {
        let new = NewToken {
            access_token: value.into(),
            expires_in_ms: 7_200_000,
            age_ms: 0,
            fence: 0,
            node: "n1".into(),
            source: TokenSource::Stable,
        };
        match store.tokens.write_token(&app.appid, &new).await.unwrap() {
            TokenWrite::Written(t) => t,
            other => panic!("{other:?}"),
        }
    }

    /// The race behind a flaky test: a task reads the token from the store, WeChat rejects that
    /// token on another task, which invalidates it, and only then does the first task cache
    /// what it read. Forced here in that order: the stale copy is refused, not cached, and the
    /// store's copy of it (a lagging read) is invalidated again.
    #[tokio::test]
    async fn a_rejected_token_read_before_its_invalidation_is_never_cached() {
        let (tm, store, app) = manager();
        let stored = store_token(&store, &app, "TOKEN-A-0000000000000000").await;
        let got = tm.get(&app).await.expect("a token");
        assert_eq!(&*got.value, "TOKEN-A-0000000000000000");
        // Task 1 read the store (before the invalidation)...
        let read_early = store.tokens.read_token(&app.appid).await.unwrap();
        // ...task 2 got 40014 with that token and reported it...
        assert!(tm
            .report_bad(&app, &got.value, Some(got.fetched_at_ms))
            .await
            .unwrap());
        // ...and task 1 caches what it read: refused.
        assert!(tm.remember_stored(&app.appid, &stored).is_none());
        assert!(tm.cached(&app.appid).is_none(), "nothing cached");
        // A write that lands after the invalidation with the same instance (a lagging replica,
        // a slow writer) is refused on read and deleted again.
        let restored = store_token(&store, &app, "TOKEN-A-0000000000000000").await;
        let stale = StoredToken {
            fetched_at_ms: stored.fetched_at_ms,
            ..restored
        };
        assert!(tm.usable_stored(&app, Some(stale)).await.is_none());
        assert!(
            store.tokens.read_token(&app.appid).await.unwrap().is_none(),
            "invalidated again"
        );
        assert!(read_early.is_some());
    }

    /// The same value fetched again after the rejection is a new instance WeChat vouched for.
    #[tokio::test]
    async fn a_token_fetched_again_after_its_rejection_is_used() {
        let (tm, store, app) = manager();
        store_token(&store, &app, "TOKEN-B-0000000000000000").await;
        let got = tm.get(&app).await.unwrap();
        tm.report_bad(&app, &got.value, Some(got.fetched_at_ms))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        store_token(&store, &app, "TOKEN-B-0000000000000000").await;
        let again = tm.get(&app).await.expect("the re-fetched instance");
        assert!(again.fetched_at_ms > got.fetched_at_ms);
    }

    #[tokio::test]
    async fn a_token_is_not_used_within_the_margin_of_its_expiry() {
        let (tm, _, app) = manager();
        let now = 10_000_000_000;
        // 7200 s token, 1 s margin.
        assert!(tm.usable(now, now, now + 7_200_000));
        assert!(tm.usable(now, now - 7_198_000, now + 1_001));
        assert!(!tm.usable(now, now - 7_199_000, now + 1_000));
        // A 6 s token: the margin is at most a tenth of its life (600 ms).
        assert!(tm.usable(now, now - 5_400, now + 601));
        assert!(!tm.usable(now, now - 5_400, now + 600));
        let _ = app;
    }

    #[test]
    fn refresh_point() {
        let t = |fetched, expires| StoredToken {
            access_token: String::new(),
            expires_at_ms: expires,
            fence: 0,
            node: String::new(),
            fetched_at_ms: fetched,
            source: TokenSource::Stable,
        };
        // 7200 s token, 240 s ahead: refresh at 6960 s.
        assert_eq!(refresh_at(&t(0, 7_200_000), 240_000), 6_960_000);
        // A token with only 345 s left: never before half of it.
        assert_eq!(refresh_at(&t(0, 345_000), 300_000), 172_500);
        // No refresh ahead: use it to the end.
        assert_eq!(refresh_at(&t(1_000, 5_000), 0), 5_000);
    }
}
