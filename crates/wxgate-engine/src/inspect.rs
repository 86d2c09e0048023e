//! An app's shared state as operators see it: the JSON of `wxgate inspect --json` and of
//! `GET /v1/admin/apps/{app}/state` (one shape, [`AppState`], `schema_version` 1; fields are
//! only ever added to it). Nothing in it is a secret: the token is masked by the store.
//!
//! Times are unix ms on the store's clock (`*_at_ms`) with the relative figure beside them
//! (`*_in_ms`, `*_left_ms`, `age_ms`), so a reader needs no clock of its own.

use serde::{Deserialize, Serialize};
use wxgate_config::{App, Settings};
use wxgate_protocol::api::Api;
use wxgate_protocol::errcode;
use wxgate_protocol::time::next_beijing_midnight_ms;
use wxgate_store::inspect::{BoundedCount, Inspect, InspectQuery};
use wxgate_store::{DailyQuota, StoreError};

/// The version of [`AppState`]'s shape.
pub const SCHEMA_VERSION: u32 = 1;

/// Default bound of the key scans (idempotency records, recipients).
pub const DEFAULT_SCAN_LIMIT: u64 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppState {
    pub schema_version: u32,
    /// The configured app name.
    pub app: String,
    pub appid: String,
    /// `redis` or `memory`.
    pub backend: String,
    /// The store's clock when read.
    pub now_ms: u64,
    pub token: Option<TokenState>,
    /// The leadership fence counter (`null`: no leader has ever been elected).
    pub fence: Option<u64>,
    pub leader: Option<LeaderState>,
    pub windows: Vec<WindowState>,
    pub quotas: Vec<QuotaState>,
    pub blocks: Vec<BlockState>,
    pub idempotency_records: CountState,
    pub recipients_with_live_window: CountState,
    pub state_loss: StateLoss,
    /// Queued delivery (Redis store with `queue.enabled`): depth, pending, oldest entry age and
    /// dead letters; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<wxgate_store::QueueStats>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenState {
    /// Masked as the logs mask it: `***` + the last 4 characters + the length.
    pub masked: String,
    /// `stable`, `classic` or `external`.
    pub source: String,
    pub fetched_at_ms: u64,
    pub age_ms: u64,
    pub expires_at_ms: u64,
    pub expires_in_ms: u64,
    /// The fence of the leader that wrote it.
    pub fence: u64,
    /// The node that wrote it.
    pub node: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderState {
    pub node: String,
    pub lease_left_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowState {
    pub api: Api,
    pub limit: u64,
    pub window_ms: u64,
    /// Grants inside the window (plus the guard) now.
    pub used: u64,
    /// 0 when a permit is free now, else when the next one frees.
    pub next_free_in_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaState {
    pub api: Api,
    pub limit: u64,
    /// Used today (Beijing calendar day).
    pub used: u64,
    pub left: u64,
    /// The next 00:00 Beijing time.
    pub resets_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    pub api: Api,
    /// WeChat's errcode that set the pause (0: unknown).
    pub errcode: i64,
    /// The errcode's stable name from the errcode table (`unknown` when not in it).
    pub reason: String,
    pub until_ms: u64,
    pub left_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountState {
    pub count: u64,
    /// The bounded scan stopped early: the count is a floor ("at least").
    pub capped: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateLoss {
    /// The app's grant sequence (every permit granted advances it).
    pub grant_seq: u64,
    /// When a node last found that the store had lost the limiter's state (`null`: never
    /// since the epoch key was created).
    pub last_detected_at_ms: Option<u64>,
}

fn count(c: BoundedCount) -> CountState {
    CountState {
        count: c.count,
        capped: c.capped,
    }
}

/// Reads `app`'s state from the store, for every window, quota and pause its configuration
/// names (pauses: every message API and the token endpoints).
pub async fn read_app_state(
    store: &dyn Inspect,
    backend: &str,
    settings: &Settings,
    app: &App,
    scan_limit: u64,
) -> Result<AppState, StoreError> {
    let windows: Vec<(Api, u64, u64)> = app
        .limits
        .per_api
        .iter()
        .flat_map(|(api, ws)| ws.iter().map(|w| (*api, w.limit, w.window_ms)))
        .collect();
    let quotas: Vec<DailyQuota> = app
        .limits
        .quotas
        .iter()
        .map(|(api, limit)| DailyQuota {
            api: *api,
            limit: *limit,
        })
        .collect();
    let blocks = [Api::TemplateSend, Api::SubscribeSend, Api::TokenFetch];
    let q = InspectQuery {
        appid: &app.appid,
        windows: &windows,
        quotas: &quotas,
        blocks: &blocks,
        recipient_window_ms: app.limits.per_recipient.first().map(|w| w.window_ms),
        guard_ms: settings.sending.guard.as_millis() as u64,
        scan_limit,
    };
    let r = store.inspect_app(&q).await?;
    let now = r.now_ms;
    Ok(AppState {
        schema_version: SCHEMA_VERSION,
        app: app.name.clone(),
        appid: app.appid.clone(),
        backend: backend.to_string(),
        now_ms: now,
        token: r.token.map(|t| TokenState {
            masked: t.masked,
            source: t.source.as_str().to_string(),
            fetched_at_ms: t.fetched_at_ms,
            age_ms: now.saturating_sub(t.fetched_at_ms),
            expires_at_ms: t.expires_at_ms,
            expires_in_ms: t.expires_at_ms.saturating_sub(now),
            fence: t.fence,
            node: t.node,
        }),
        fence: r.fence,
        leader: r.leader.map(|(node, left)| LeaderState {
            node,
            lease_left_ms: left,
        }),
        windows: windows
            .iter()
            .zip(&r.windows)
            .map(|((api, limit, window_ms), u)| WindowState {
                api: *api,
                limit: *limit,
                window_ms: *window_ms,
                used: u.used,
                next_free_in_ms: u.frees_in_ms,
            })
            .collect(),
        quotas: quotas
            .iter()
            .zip(&r.quotas_used)
            .map(|(quota, used)| QuotaState {
                api: quota.api,
                limit: quota.limit,
                used: *used,
                left: quota.limit.saturating_sub(*used),
                resets_at_ms: next_beijing_midnight_ms(now),
            })
            .collect(),
        blocks: r
            .pauses
            .iter()
            .map(|p| BlockState {
                api: p.api,
                errcode: p.errcode,
                reason: errcode::lookup(p.errcode)
                    .map(|i| i.name)
                    .unwrap_or("unknown")
                    .to_string(),
                until_ms: p.until_ms,
                left_ms: p.until_ms.saturating_sub(now),
            })
            .collect(),
        idempotency_records: count(r.idempotency_records),
        recipients_with_live_window: count(r.recipients_with_window),
        state_loss: StateLoss {
            grant_seq: r.grant_seq,
            last_detected_at_ms: r.lost_at_ms,
        },
        queue: None,
    })
}

impl crate::Engine {
    /// The state of the configured app `name` (`None`: no such app).
    pub async fn app_state(&self, name: &str) -> Option<Result<AppState, StoreError>> {
        let app = self.settings.apps.get(name)?;
        let state = read_app_state(
            self.store.inspect.as_ref(),
            self.backend(),
            &self.settings,
            app,
            DEFAULT_SCAN_LIMIT,
        )
        .await;
        Some(match state {
            Ok(s) => self.with_queue_stats(app, s).await,
            Err(e) => Err(e),
        })
    }

    /// Adds the app's queue figures to `state` where the store has a queue.
    pub async fn with_queue_stats(
        &self,
        app: &App,
        mut state: AppState,
    ) -> Result<AppState, StoreError> {
        match self.queue_stats(app).await {
            Ok(q) => state.queue = Some(q),
            Err(crate::queue::EnqueueError::Store(e)) => return Err(e),
            Err(_) => {}
        }
        Ok(state)
    }

    /// Lifts the pause of `api` for the configured app `name` (`None`: no such app); true when
    /// one was in force.
    pub async fn lift_block(&self, name: &str, api: Api) -> Option<Result<bool, StoreError>> {
        let app = self.settings.apps.get(name)?;
        Some(self.store.inspect.lift_pause(&app.appid, api).await)
    }
}
