//! Permits: one per upstream attempt, from every window of the API and of the recipient, the
//! daily quota and the API's pause, in one atomic `acquire`. A full window waits (within the
//! caller's `Prefer: wait`) or fails with the reset time; a quota or a pause fails fast.
//! The engine passes the highest grant sequence it has seen, so the store can tell that it lost
//! its state (see [`wxgate_store::AcquireRequest`]); a loss is logged at warn and counted.

use std::time::{Duration, Instant};

use wxgate_config::{App, OnStateLoss};
use wxgate_protocol::api::Api;
use wxgate_protocol::errcode::{self, Endpoint, ErrorClass};
use wxgate_store::{
    Acquire, AcquireRequest, BlockCause, DailyQuota, Limit, LimitScope, LossPolicy, SharedState,
};

use crate::metrics::PermitLabels;
use crate::outcome::{LimitedBy, SendError};
use crate::Engine;

impl Engine {
    /// The limits of one send of `api` to `touser`.
    fn limits(app: &App, api: Api, touser: &str) -> (Vec<Limit>, Vec<DailyQuota>) {
        let mut limits: Vec<Limit> = app
            .limits
            .per_api
            .get(&api)
            .into_iter()
            .flatten()
            .map(|w| Limit {
                scope: LimitScope::Api(api),
                limit: w.limit,
                window_ms: w.window_ms,
            })
            .collect();
        limits.extend(app.limits.per_recipient.iter().map(|w| Limit {
            scope: LimitScope::Recipient(touser.to_string()),
            limit: w.limit,
            window_ms: w.window_ms,
        }));
        let quotas = app
            .limits
            .quotas
            .get(&api)
            .map(|q| DailyQuota { api, limit: *q })
            .into_iter()
            .collect();
        (limits, quotas)
    }

    /// Takes one permit for one upstream attempt of `api` to `touser`, waiting for a full
    /// window until `wait_until` at most.
    pub(crate) async fn permit(
        &self,
        app: &App,
        api: Api,
        touser: &str,
        wait_until: Option<Instant>,
    ) -> Result<(), SendError> {
        let (limits, quotas) = Self::limits(app, api, touser);
        let s = &self.settings.sending;
        let loss = LossPolicy {
            hold: s.on_state_loss == OnStateLoss::Hold,
            hold_max_window_ms: s.hold_max_window.as_millis() as u64,
        };
        let seen = self.seen_seq(&app.appid);
        let series = self.series(app, api);
        let asked = Instant::now();
        loop {
            let req = AcquireRequest {
                appid: &app.appid,
                limits: &limits,
                quotas: &quotas,
                blocks: &[api],
                guard_ms: s.guard.as_millis() as u64,
                known_seq: seen.load(std::sync::atomic::Ordering::Relaxed),
                loss,
            };
            let reply = self.store.limiter.acquire(&req).await;
            let label = match &reply {
                Ok(r) => match r.decision {
                    Acquire::Granted { .. } => "granted",
                    Acquire::Wait { held: true, .. } => "held",
                    Acquire::Wait { .. } => "wait",
                    Acquire::Blocked { .. } => "blocked",
                },
                Err(_) => "unavailable",
            };
            if matches!(&reply, Ok(r) if matches!(r.decision, Acquire::Granted { .. })) {
                series.permits_granted(&self.metrics).inc();
            } else {
                self.metrics
                    .permits
                    .get_or_create(&PermitLabels {
                        app: app.name.clone(),
                        api: api.as_str().into(),
                        decision: label.into(),
                    })
                    .inc();
            }
            let reply = reply.map_err(SendError::store)?;
            if reply.state_loss {
                self.metrics
                    .state_losses
                    .get_or_create(&crate::metrics::AppLabels {
                        app: app.name.clone(),
                    })
                    .inc();
                tracing::warn!(
                    app = %app.name,
                    policy = ?s.on_state_loss,
                    "the shared store lost the limiter's state (restart without persistence, failover or flush): windows restart empty{}",
                    if loss.hold { "; held full for one window" } else { "" }
                );
            }
            match reply.decision {
                Acquire::Granted { seq, .. } => {
                    seen.fetch_max(seq, std::sync::atomic::Ordering::Relaxed);
                    series
                        .permit_wait_seconds(&self.metrics)
                        .observe(asked.elapsed().as_secs_f64());
                    return Ok(());
                }
                Acquire::Wait {
                    wait_ms,
                    window,
                    held,
                } => {
                    let wait = Duration::from_millis(wait_ms);
                    if let Some(until) = wait_until {
                        if Instant::now() + wait <= until {
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                    }
                    let limited_by = match limits.get(window).map(|l| &l.scope) {
                        _ if held => LimitedBy::StateLoss,
                        Some(LimitScope::Recipient(_)) => LimitedBy::Recipient,
                        _ => LimitedBy::App,
                    };
                    return Err(SendError::RateLimited {
                        api,
                        limited_by,
                        retry_after_ms: wait_ms,
                    });
                }
                Acquire::Blocked { until_ms, cause } => {
                    let now = self
                        .store
                        .health
                        .now_ms()
                        .await
                        .unwrap_or_else(|_| self.clock.now_ms());
                    let retry_after_ms = until_ms.saturating_sub(now).max(1);
                    return Err(match cause {
                        BlockCause::Paused { api, errcode } => SendError::Paused {
                            api,
                            errcode,
                            class: errcode::classify(errcode, Endpoint::Business),
                            until_ms,
                            retry_after_ms,
                        },
                        BlockCause::Quota { api, limit } => SendError::QuotaExhausted {
                            api,
                            limit,
                            until_ms,
                            retry_after_ms,
                        },
                    });
                }
            }
        }
    }
}

/// WeChat said an API is over its minute or daily limit: tell every node, through the store, to
/// stop calling it for this app until the window resets (next minute, or 00:00 Beijing time).
/// Used for the send APIs and for the token endpoints.
pub(crate) async fn pause_api(
    store: &SharedState,
    app: &App,
    api: Api,
    errcode: i64,
    class: ErrorClass,
) {
    if !matches!(class, ErrorClass::RateLimited | ErrorClass::QuotaExhausted) {
        return;
    }
    let now = match store.health.now_ms().await {
        Ok(now) => now,
        Err(e) => {
            tracing::warn!(error = %e, "cannot set the shared pause: store unavailable");
            return;
        }
    };
    let Some(until) = class.window_reset_ms(now) else {
        return;
    };
    match store.limiter.block(&app.appid, api, until, errcode).await {
        Ok(()) => tracing::warn!(
            app = %app.name,
            api = api.as_str(),
            errcode,
            until_ms = until,
            "every node stops calling this API until the window resets"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot set the shared pause"),
    }
}
