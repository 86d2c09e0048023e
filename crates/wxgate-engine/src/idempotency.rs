//! The idempotency protocol. A request with a key (the `Idempotency-Key` header, else a
//! template's own `client_msg_id`) claims it in the store, scoped by the caller's API key name
//! and the API. The claim is a **lease**: it lives `idempotency.lease_ms` and is renewed every
//! third of that while the request runs, so a request whose process dies frees the key within
//! one lease, not a day. It records what a successor needs: the `client_msg_id`, the API and
//! when the first upstream attempt started.
//!
//! | the key is                      | the request                                              |
//! |---------------------------------|----------------------------------------------------------|
//! | new                             | sends                                                    |
//! | claimed, lease live             | `InProgress` (409) with the lease's remaining time       |
//! | claimed, lease lapsed, no attempt on record | takes it over and sends                      |
//! | lapsed, template send within WeChat's 10-minute de-duplication window of the first attempt | takes it over and sends again with the **same** `client_msg_id` (WeChat delivers it at most once) |
//! | lapsed, subscribe send or past the window | takes it over and answers `OutcomeUnknown`, kept: never a second notification |
//! | done                            | the kept outcome, replayed                               |
//!
//! A request keeps its final outcome (sent, a definite refusal, an unknown outcome WeChat cannot
//! de-duplicate) for `idempotency.ttl_secs`; it releases the key when a retry could help and
//! cannot duplicate (the lease lapses at once, the attempt record stays if one may have reached
//! WeChat).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wxgate_config::App;
use wxgate_protocol::api::CLIENT_MSG_ID_DEDUP_MS;
use wxgate_store::{ClaimRequest, IdemClaim, PreviousClaim};

use crate::message::Outgoing;
use crate::metrics::AppLabels;
use crate::outcome::{SendError, Sent};
use crate::send::AttemptLog;
use crate::{Delivery, Engine};

/// A claim this request holds.
pub(crate) struct Claim {
    pub appid: String,
    pub key: String,
    pub request_id: String,
}

impl Claim {
    /// Records the first upstream attempt; a claim lost meanwhile stops the send.
    pub(crate) async fn mark_attempt(&self, engine: &Engine) -> Result<(), SendError> {
        let ours = engine
            .store
            .idempotency
            .mark_attempt(&self.appid, &self.key, &self.request_id)
            .await
            .map_err(SendError::store)?;
        if ours {
            Ok(())
        } else {
            Err(SendError::InProgress {
                request_id: "another request (this one's claim lapsed)".into(),
                retry_after_ms: 1_000,
            })
        }
    }
}

/// An outcome kept under a key.
#[derive(Serialize, Deserialize)]
struct Kept {
    request_id: String,
    outcome: Result<Sent, SendError>,
}

/// FNV-1a: a stable hash, so every replica derives the same `client_msg_id` from one key.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// The `client_msg_id` every replica derives from one caller's key.
pub(crate) fn derived_client_msg_id(caller: &str, key: &str) -> String {
    format!("wxg-{:016x}", fnv1a(&format!("{caller}\u{0}{key}")))
}

impl Engine {
    /// Sends `msg` under the claim of `key`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn send_claimed(
        &self,
        app: &App,
        caller: &str,
        key: &str,
        mut msg: Outgoing,
        wait_for_permit: Option<Duration>,
        request_id: &str,
        started: Instant,
    ) -> Delivery {
        let s = &self.settings.sending;
        let api = msg.api();
        let scoped = format!("{caller}:{}:{key}", api.as_str());
        let lease_ms = s.idempotency_lease.as_millis() as u64;
        let ttl_ms = s.idempotency_ttl.as_millis() as u64;
        let claim_req = ClaimRequest {
            key: &scoped,
            request_id,
            api,
            client_msg_id: msg.client_msg_id(),
            lease_ms,
            ttl_ms,
        };
        let idem = &self.store.idempotency;
        let mut log = AttemptLog::default();
        match idem.claim_idempotency(&app.appid, &claim_req).await {
            Err(e) => return Delivery::now(Err(SendError::store(e))),
            Ok(IdemClaim::Claimed) => {}
            Ok(IdemClaim::InProgress {
                request_id,
                lease_left_ms,
            }) => {
                return Delivery::now(Err(SendError::InProgress {
                    request_id,
                    retry_after_ms: lease_left_ms.max(1),
                }))
            }
            Ok(IdemClaim::Done { request_id, result }) => {
                return match serde_json::from_str::<Kept>(&result) {
                    Ok(kept) => Delivery {
                        result: kept.outcome,
                        replayed_from: Some(kept.request_id),
                    },
                    Err(e) => Delivery::now(Err(SendError::Internal {
                        detail: format!("unreadable outcome kept for request {request_id}: {e}"),
                    })),
                };
            }
            Ok(IdemClaim::TakenOver { previous }) => {
                self.metrics
                    .idempotency_takeovers
                    .get_or_create(&AppLabels {
                        app: app.name.clone(),
                    })
                    .inc();
                match self.successor(&previous, &mut msg) {
                    Ok(possibly_delivered) => {
                        tracing::warn!(app = %app.name, api = api.as_str(), previous = %previous.request_id, resend = possibly_delivered, "idempotency claim taken over from a request that did not finish");
                        log.possibly_delivered = possibly_delivered;
                    }
                    Err(unknown) => {
                        tracing::warn!(app = %app.name, api = api.as_str(), previous = %previous.request_id, "idempotency claim taken over; a previous attempt may have been delivered and cannot be repeated safely: kept as outcome unknown");
                        let result = Err(unknown);
                        self.keep(app, &scoped, request_id, &result, ttl_ms).await;
                        return Delivery::now(result);
                    }
                }
            }
        }
        let claim = Claim {
            appid: app.appid.clone(),
            key: scoped.clone(),
            request_id: request_id.to_string(),
        };
        let result = {
            let send = self.attempts(app, &msg, wait_for_permit, started, Some(&claim), &mut log);
            tokio::pin!(send);
            let mut renew = tokio::time::interval(Duration::from_millis((lease_ms / 3).max(1)));
            renew.tick().await;
            loop {
                tokio::select! {
                    r = &mut send => break r,
                    _ = renew.tick() => {
                        match idem.renew_claim(&app.appid, &scoped, request_id, lease_ms).await {
                            Ok(true) => {}
                            Ok(false) => tracing::warn!(app = %app.name, "idempotency claim lost while sending (this request stalled longer than its lease)"),
                            Err(e) => tracing::warn!(app = %app.name, error = %e, "cannot renew the idempotency claim"),
                        }
                    }
                }
            }
        };
        if Self::final_outcome(&result, &msg) {
            self.keep(app, &scoped, request_id, &result, ttl_ms).await;
        } else if let Err(e) = idem
            .release_idempotency(&app.appid, &scoped, request_id, log.possibly_delivered)
            .await
        {
            tracing::warn!(error = %e, "cannot release the idempotency claim");
        }
        Delivery::now(result)
    }

    /// What a request that took over `previous` may do: `Ok(possibly_delivered)` to send (for a
    /// template within WeChat's de-duplication window, with the previous `client_msg_id`), or
    /// the outcome to keep.
    fn successor(&self, previous: &PreviousClaim, msg: &mut Outgoing) -> Result<bool, SendError> {
        let Some(first) = previous.first_attempt_ms else {
            return Ok(false);
        };
        let s = &self.settings.sending;
        // The whole resend must arrive inside the window: leave it one request's time.
        let margin = (s.deadline + self.settings.upstream.request_timeout).as_millis() as u64;
        let in_window = previous.now_ms + margin < first + CLIENT_MSG_ID_DEDUP_MS;
        match (msg, &previous.client_msg_id) {
            (Outgoing::Template(m), Some(cmid)) if in_window => {
                m.client_msg_id = Some(cmid.clone());
                Ok(true)
            }
            (m, _) => Err(SendError::OutcomeUnknown {
                detail: format!(
                    "request {} attempted this {} at {} and stopped before it knew the answer",
                    previous.request_id,
                    previous.api.unwrap_or(m.api()).as_str(),
                    wxgate_protocol::time::utc_rfc3339(first)
                ),
                dedup_protected: false,
                errcode: None,
            }),
        }
    }

    /// Whether an outcome is final (kept under the key) or the key is released for a retry.
    fn final_outcome(result: &Result<Sent, SendError>, msg: &Outgoing) -> bool {
        match result {
            Ok(_) => true,
            // May have been delivered: final unless WeChat de-duplicates a repeat.
            Err(SendError::OutcomeUnknown { .. }) => !msg.dedup_protected(),
            Err(e @ SendError::Wechat { .. })
                if e.class() == Some(wxgate_protocol::errcode::ErrorClass::Backoff) =>
            {
                !msg.dedup_protected()
            }
            Err(e) => !e.retryable(),
        }
    }

    async fn keep(
        &self,
        app: &App,
        key: &str,
        request_id: &str,
        result: &Result<Sent, SendError>,
        ttl_ms: u64,
    ) {
        let kept = Kept {
            request_id: request_id.to_string(),
            outcome: result.clone(),
        };
        let json = serde_json::to_string(&kept).unwrap_or_default();
        match self
            .store
            .idempotency
            .complete_idempotency(&app.appid, key, request_id, &json, ttl_ms)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(app = %app.name, "the idempotency claim was taken over before the outcome could be kept")
            }
            Err(e) => tracing::warn!(error = %e, "cannot keep the idempotency outcome"),
        }
    }
}
