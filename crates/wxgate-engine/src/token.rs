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
//! The cache is bounded by the number of configured apps and invalidated on every report.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use secrecy::ExposeSecret;
use wxgate_config::{App, TokenMode};
use wxgate_protocol::errcode::{self, Endpoint, ErrorClass};
use wxgate_store::clock::Clock;
use wxgate_store::{
    Acquire, AcquireRequest, DailyQuota, Limit, NewToken, Store, StoreError, StoredToken,
    TokenSource, TokenWrite,
};
use wxgate_upstream::{Answered, UpstreamError, WechatClient};

/// How often a node re-reads a token that is due (the leader is refreshing it) or external.
const RECHECK_DUE_MS: u64 = 1_000;
const RECHECK_EXTERNAL_MS: u64 = 5_000;
/// The store's name for the token endpoints in windows, quotas and blocks.
const TOKEN_API: &str = "token_fetch";

/// A token ready to use.
#[derive(Clone)]
pub struct Token {
    pub value: Arc<str>,
    pub expires_at_ms: u64,
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
}

pub struct TokenManager {
    metrics: Arc<crate::metrics::Metrics>,
    store: Arc<dyn Store>,
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
        store: Arc<dyn Store>,
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
            (now < c.recheck_at_ms && now < c.token.expires_at_ms).then(|| c.token.clone())
        })
    }

    fn remember(&self, appid: &str, value: &str, expires_at_ms: u64, recheck_at_ms: u64) -> Token {
        let token = Token {
            value: Arc::from(value),
            expires_at_ms,
        };
        let cached = Cached {
            token: token.clone(),
            recheck_at_ms,
        };
        *self
            .slot(appid)
            .cache
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(cached);
        token
    }

    fn remember_stored(&self, appid: &str, t: &StoredToken) -> Token {
        let now = self.clock.now_ms();
        let due = refresh_at(t, self.cfg.refresh_ahead_ms);
        let recheck = if now < due { due } else { now + RECHECK_DUE_MS };
        self.remember(appid, &t.access_token, t.expires_at_ms, recheck)
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
            let stored = self.store.read_token(&app.appid).await?;
            let now = self.clock.now_ms();
            if let Some(st) = stored.filter(|st| now < st.expires_at_ms) {
                // Valid: use it, even if due — the leader's refresher is renewing it, and a
                // caller never waits for a refresh while a valid token exists.
                return Ok(self.remember_stored(&app.appid, &st));
            }
            // Missing (never fetched, or invalidated after WeChat rejected it) or expired:
            // the leader fetches; if nobody leads, this node takes the lease and does.
            if let Some(fence) = self.lead(app).await? {
                return self.fetch(app, fence).await;
            }
            if tokio::time::Instant::now() >= deadline {
                let leader = self.store.lease_holder(&app.appid).await.ok().flatten();
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
        self.store
            .acquire_lease(&app.appid, &self.cfg.node_id, self.cfg.lease_ttl_ms)
            .await
    }

    async fn read_external(&self, app: &App) -> Result<Token, TokenError> {
        let key = app.external_token_key.as_deref().unwrap_or_default();
        let found = self.store.read_external_token(key).await?;
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
                Ok(self.remember(&app.appid, &t.access_token, expires, recheck))
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
                    fence,
                    node: self.cfg.node_id.clone(),
                    source,
                };
                let stored = match self.store.write_token(&app.appid, &new).await? {
                    TokenWrite::Written(stored) => stored,
                    TokenWrite::StaleFence { stored_fence } => {
                        // This node lost the lease mid-refresh; the newer leader's token wins.
                        tracing::warn!(app = %app.name, fence, stored_fence, "token write refused: a newer leader holds the token");
                        return match self.store.read_token(&app.appid).await? {
                            Some(st) => Ok(self.remember_stored(&app.appid, &st)),
                            None => Err(TokenError::Unavailable(
                                "lost the refresh lease and no newer token is stored yet".into(),
                            )),
                        };
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
                Ok(self.remember_stored(&app.appid, &stored))
            }
            Answered::Err(e) => {
                let class = errcode::classify(e.errcode, Endpoint::Token);
                tracing::error!(app = %app.name, errcode = e.errcode, class = class.as_str(), errmsg = %e.errmsg, "token endpoint refused");
                crate::send::pause_api(&*self.store, app, TOKEN_API, e.errcode, class).await;
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
            TokenMode::Classic => 2_000,
            _ => 500_000,
        };
        let limits = [Limit {
            name: TOKEN_API.into(),
            limit: self.cfg.fetch_per_minute,
            window_ms: 60_000,
        }];
        let quotas = [DailyQuota {
            name: TOKEN_API.into(),
            limit: daily,
        }];
        let id = format!("{}:{}", self.cfg.node_id, uuid::Uuid::new_v4().simple());
        let req = AcquireRequest {
            appid: &app.appid,
            limits: &limits,
            quotas: &quotas,
            blocks: &[TOKEN_API],
            guard_ms: 0,
            permit_id: &id,
        };
        match self.store.acquire(&req).await? {
            Acquire::Granted { .. } => Ok(()),
            Acquire::Wait { wait_ms, .. } => Err(TokenError::Unavailable(format!(
                "token endpoint storm guard: {} fetches per minute used for app `{}`; next in {wait_ms} ms",
                self.cfg.fetch_per_minute, app.name
            ))),
            Acquire::Blocked { reason, .. } => Err(TokenError::Unavailable(format!(
                "token endpoint paused for app `{}`: {reason}",
                app.name
            ))),
        }
    }

    /// WeChat rejected `bad`: forget it here and in the store, unless a newer one replaced it.
    pub async fn report_bad(&self, app: &App, bad: &str) -> Result<bool, TokenError> {
        {
            let mut guard = self
                .slot(&app.appid)
                .cache
                .write()
                .unwrap_or_else(|p| p.into_inner());
            if guard.as_ref().is_some_and(|c| &*c.token.value == bad) {
                *guard = None;
            }
        }
        if app.token_mode == TokenMode::External {
            tracing::warn!(app = %app.name, token = %wxgate_store::mask(bad), "external access_token rejected by WeChat; its owner must refresh it");
            return Ok(false);
        }
        let deleted = self.store.invalidate_token(&app.appid, bad).await?;
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
                self.store.read_external_token(app.external_token_key.as_deref().unwrap_or("")).await,
                Ok(Some(t)) if t.expires_at_ms.is_none_or(|e| e > t.read_at_ms)
            );
        }
        let now = self.clock.now_ms();
        matches!(self.store.read_token(&app.appid).await, Ok(Some(t)) if t.expires_at_ms > now)
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
        let stored = match self.store.read_token(&app.appid).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(app = %app.name, error = %e, "refresher: store unavailable");
                return;
            }
        };
        let now = self.clock.now_ms();
        match stored {
            Some(st) if now < refresh_at(&st, self.cfg.refresh_ahead_ms) => {
                self.remember_stored(&app.appid, &st);
            }
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
        for slot in self.apps.values() {
            if let Ok(true) = self
                .store
                .release_lease(&slot.app.appid, &self.cfg.node_id)
                .await
            {
                tracing::info!(app = %slot.app.name, "released the token refresh lease");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
