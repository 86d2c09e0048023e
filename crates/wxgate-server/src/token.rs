//! The access_token as one node uses it: a per-node cache in front of the shared store.
//!
//! - `get` answers from the node's cache while the token is fresh (no store round trip). When
//!   it is due (WeChat's `expires_in` minus `refresh_ahead`, but never before half its life) one
//!   task per app refreshes: it re-reads the store (another task or node may have refreshed),
//!   and only if the store has nothing fresh does it call WeChat. Other tasks wait on the same
//!   per-app lock and then read the new token: a refresh is single-flight per node.
//! - If a refresh fails while the old token has not yet expired, the old token keeps being used
//!   (WeChat keeps it valid through its overlap) and the failure is logged.
//! - `report_bad` invalidates exactly the token that WeChat rejected (compare-and-delete in the
//!   store, compare-and-clear in the cache), so a late report never evicts a newer token.
//!
//! The cache is bounded by the number of configured apps and invalidated on every report.
//! Cluster-wide leadership (one fetcher for all nodes, fenced writes) arrives with the Redis
//! store; until then the fence written is 0.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use secrecy::ExposeSecret;
use wxgate_config::{App, TokenMode};
use wxgate_protocol::errcode::{self, Endpoint, ErrorClass};
use wxgate_store::clock::Clock;
use wxgate_store::{NewToken, Store, StoreError, StoredToken, TokenSource, TokenWrite};
use wxgate_upstream::{Answered, UpstreamError, WechatClient};

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
}

struct Cached {
    token: Token,
    refresh_at_ms: u64,
}

struct AppTokens {
    cache: RwLock<Option<Cached>>,
    refresh: tokio::sync::Mutex<()>,
}

pub struct TokenManager {
    store: Arc<dyn Store>,
    client: WechatClient,
    clock: Arc<dyn Clock>,
    node_id: String,
    refresh_ahead_ms: u64,
    apps: HashMap<String, AppTokens>,
}

fn refresh_at(t: &StoredToken, ahead_ms: u64) -> u64 {
    let life = t.expires_at_ms.saturating_sub(t.fetched_at_ms);
    t.fetched_at_ms + life.saturating_sub(ahead_ms).max(life / 2)
}

impl TokenManager {
    pub fn new<'a>(
        store: Arc<dyn Store>,
        client: WechatClient,
        clock: Arc<dyn Clock>,
        node_id: String,
        refresh_ahead_ms: u64,
        appids: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let apps = appids
            .into_iter()
            .map(|id| {
                (
                    id.to_string(),
                    AppTokens {
                        cache: RwLock::new(None),
                        refresh: tokio::sync::Mutex::new(()),
                    },
                )
            })
            .collect();
        Self {
            store,
            client,
            clock,
            node_id,
            refresh_ahead_ms,
            apps,
        }
    }

    fn slot(&self, appid: &str) -> &AppTokens {
        self.apps
            .get(appid)
            .expect("token slots exist for every configured app")
    }

    fn cached(&self, appid: &str, fresh_only: bool) -> Option<Token> {
        let now = self.clock.now_ms();
        let guard = self
            .slot(appid)
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner());
        guard.as_ref().and_then(|c| {
            let usable = if fresh_only {
                now < c.refresh_at_ms
            } else {
                now < c.token.expires_at_ms
            };
            usable.then(|| c.token.clone())
        })
    }

    fn remember(&self, appid: &str, t: &StoredToken) -> Token {
        let token = Token {
            value: Arc::from(t.access_token.as_str()),
            expires_at_ms: t.expires_at_ms,
        };
        let cached = Cached {
            token: token.clone(),
            refresh_at_ms: refresh_at(t, self.refresh_ahead_ms),
        };
        *self
            .slot(appid)
            .cache
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(cached);
        token
    }

    /// A usable token for `app`, refreshing it first if it is due.
    pub async fn get(&self, app: &App) -> Result<Token, TokenError> {
        if let Some(t) = self.cached(&app.appid, true) {
            return Ok(t);
        }
        let _flight = self.slot(&app.appid).refresh.lock().await;
        if let Some(t) = self.cached(&app.appid, true) {
            return Ok(t);
        }
        let now = self.clock.now_ms();
        if let Some(stored) = self.store.read_token(&app.appid).await? {
            if now < refresh_at(&stored, self.refresh_ahead_ms) {
                return Ok(self.remember(&app.appid, &stored));
            }
        }
        match self.fetch(app).await {
            Ok(t) => Ok(t),
            Err(e) => match self.cached(&app.appid, false) {
                Some(old) => {
                    tracing::warn!(app = %app.name, error = %e, "token refresh failed; the current token is still valid and stays in use");
                    Ok(old)
                }
                None => Err(e),
            },
        }
    }

    async fn fetch(&self, app: &App) -> Result<Token, TokenError> {
        let secret = app.secret.expose_secret();
        let (answer, source) = match app.token_mode {
            TokenMode::Stable => (
                self.client.stable_token(&app.appid, secret, false).await?,
                TokenSource::Stable,
            ),
            TokenMode::Classic => (
                self.client.classic_token(&app.appid, secret).await?,
                TokenSource::Classic,
            ),
        };
        match answer {
            Answered::Ok(t) => {
                let new = NewToken {
                    access_token: t.access_token,
                    expires_in_ms: t.expires_in * 1000,
                    fence: 0,
                    node: self.node_id.clone(),
                    source,
                };
                let stored = match self.store.write_token(&app.appid, &new).await? {
                    TokenWrite::Written(stored) => stored,
                    TokenWrite::StaleFence { stored_fence } => {
                        // A newer leader stored a token meanwhile: use that one.
                        tracing::warn!(app = %app.name, stored_fence, "token write refused: a newer fence holds the token");
                        match self.store.read_token(&app.appid).await? {
                            Some(stored) => stored,
                            None => {
                                return Err(TokenError::Store(StoreError::Protocol(
                                    "token write refused and no token stored".into(),
                                )))
                            }
                        }
                    }
                };
                tracing::info!(
                    app = %app.name,
                    mode = source.as_str(),
                    expires_in = t.expires_in,
                    token = %wxgate_store::mask(&stored.access_token),
                    "access_token fetched"
                );
                Ok(self.remember(&app.appid, &stored))
            }
            Answered::Err(e) => {
                let class = errcode::classify(e.errcode, Endpoint::Token);
                tracing::error!(app = %app.name, errcode = e.errcode, class = class.as_str(), errmsg = %e.errmsg, "token endpoint refused");
                Err(TokenError::Wechat {
                    errcode: e.errcode,
                    errmsg: e.errmsg,
                    class,
                })
            }
        }
    }

    /// WeChat rejected `bad`: forget it here and in the store, unless a newer one replaced it.
    pub async fn report_bad(&self, app: &App, bad: &str) -> Result<(), TokenError> {
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
        let deleted = self.store.invalidate_token(&app.appid, bad).await?;
        tracing::warn!(app = %app.name, token = %wxgate_store::mask(bad), deleted, "access_token rejected by WeChat; invalidated");
        Ok(())
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
        // 7200 s token, 300 s ahead: refresh at 6900 s.
        assert_eq!(refresh_at(&t(0, 7_200_000), 300_000), 6_900_000);
        // A token with only 345 s left: never before half of it.
        assert_eq!(refresh_at(&t(0, 345_000), 300_000), 172_500);
        // No refresh ahead: use it to the end.
        assert_eq!(refresh_at(&t(1_000, 5_000), 0), 5_000);
    }
}
