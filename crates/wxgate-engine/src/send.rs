//! The attempts of one send, under the cluster's limits.
//!
//! Every upstream attempt first takes a permit ([`Engine::permit`]). Then the answer is
//! classified with the one errcode table:
//! - a rejected token (`TokenRefresh`) is invalidated exactly and the send retried once;
//! - `-1` (`Backoff`) and transport failures are retried with exponential backoff and jitter,
//!   within `retry.max_attempts` and `retry.deadline_ms` — but only when a retry cannot notify
//!   the user twice: a connect failure (nothing was sent) always; a `-1` or an unknown outcome
//!   only for template sends, which always carry a `client_msg_id` WeChat de-duplicates on;
//! - `45011`/`45009` pause the API on every node until the reset;
//! - caller and config faults are answered at once, never retried.

use std::time::{Duration, Instant};

use wxgate_config::App;
use wxgate_protocol::errcode::{self, Endpoint, ErrorClass};
use wxgate_protocol::wire::SendResponse;
use wxgate_upstream::UpstreamError;

use crate::idempotency::Claim;
use crate::message::Outgoing;
use crate::metrics::WechatErrorLabels;
use crate::outcome::{SendError, Sent};
use crate::Engine;

/// What the attempts of a request may have done, for the idempotency record.
#[derive(Debug, Default)]
pub(crate) struct AttemptLog {
    /// An attempt may have reached WeChat and been delivered (an unknown outcome, or `-1`).
    pub possibly_delivered: bool,
}

impl Engine {
    /// Exponential backoff with jitter: a random wait in [base, min(max, base · 2^n)].
    fn backoff(&self, retry: u32) -> Duration {
        let s = &self.settings.sending;
        let cap = s
            .base_backoff
            .saturating_mul(1 << retry.min(16))
            .min(s.max_backoff);
        let base = s.base_backoff.as_millis() as u64;
        let span = (cap.as_millis() as u64).saturating_sub(base);
        Duration::from_millis(base + if span > 0 { fastrand::u64(0..=span) } else { 0 })
    }

    pub(crate) async fn attempts(
        &self,
        app: &App,
        msg: &Outgoing,
        wait_for_permit: Option<Duration>,
        started: Instant,
        claim: Option<&Claim>,
        log: &mut AttemptLog,
    ) -> Result<Sent, SendError> {
        let s = &self.settings.sending;
        let api = msg.api();
        let deadline = started + s.deadline;
        let mut attempts = 0u32;
        let mut token_retried = false;
        let mut backoff_retries = 0u32;
        let permit_deadline = wait_for_permit.map(|w| Instant::now() + w);
        let series = self.series(app, api);
        loop {
            self.permit(app, api, msg.touser(), permit_deadline).await?;
            let token = self.tokens.get(app).await?;
            if attempts == 0 {
                if let Some(claim) = claim {
                    // Recorded before the first call: a successor must know it may have been sent.
                    claim.mark_attempt(self).await?;
                }
            }
            attempts += 1;
            series.upstream_attempts(&self.metrics).inc();
            let started = Instant::now();
            let outcome = self.call(&token.value, msg).await;
            series
                .upstream_seconds(&self.metrics)
                .observe(started.elapsed().as_secs_f64());
            // May another attempt follow, and is it safe?
            let may_retry = |safe: bool, retries: u32| {
                safe && retries + 1 < s.max_attempts && Instant::now() < deadline
            };
            match outcome {
                Ok(answer) if answer.errcode == 0 => {
                    return Ok(Sent {
                        msgid: answer.msgid,
                        attempts,
                    });
                }
                Ok(answer) => {
                    let class = errcode::classify(answer.errcode, Endpoint::Business);
                    self.metrics
                        .wechat_errors
                        .get_or_create(&WechatErrorLabels {
                            app: app.name.clone(),
                            api: api.as_str().into(),
                            errcode: answer.errcode.to_string(),
                            class: class.as_str().into(),
                        })
                        .inc();
                    if class == ErrorClass::TokenRefresh && !token_retried {
                        token_retried = true;
                        self.tokens
                            .report_bad(app, &token.value, Some(token.fetched_at_ms))
                            .await?;
                        continue;
                    }
                    if class == ErrorClass::Backoff {
                        // WeChat's "system busy" may have processed the message.
                        log.possibly_delivered = true;
                        if may_retry(msg.dedup_protected(), backoff_retries) {
                            let wait = self.backoff(backoff_retries);
                            backoff_retries += 1;
                            tracing::info!(app = %app.name, errcode = answer.errcode, wait_ms = wait.as_millis() as u64, "WeChat busy; retrying with the same client_msg_id");
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                    }
                    if class == ErrorClass::Backoff && !msg.dedup_protected() {
                        // WeChat may have processed it, and nothing de-duplicates a repeat:
                        // that is an unknown outcome, final (kept under the key, not retryable).
                        return Err(SendError::OutcomeUnknown {
                            detail: format!(
                                "WeChat answered {} ({}) and may have processed the message",
                                answer.errcode, answer.errmsg
                            ),
                            dedup_protected: false,
                            errcode: Some(answer.errcode),
                        });
                    }
                    let now = self.clock.now_ms();
                    crate::permit::pause_api(&self.store, app, api, answer.errcode, class).await;
                    return Err(SendError::wechat(
                        answer.errcode,
                        &answer.errmsg,
                        class,
                        now,
                    ));
                }
                Err(e) => {
                    let safe = match &e {
                        UpstreamError::NotSent(_) => true,
                        UpstreamError::OutcomeUnknown(_) => {
                            log.possibly_delivered = true;
                            msg.dedup_protected()
                        }
                        UpstreamError::Setup(_) => false,
                    };
                    if may_retry(safe, backoff_retries) {
                        let wait = self.backoff(backoff_retries);
                        backoff_retries += 1;
                        tracing::info!(app = %app.name, error = %e, wait_ms = wait.as_millis() as u64, "transport failure; retrying");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    return Err(match e {
                        UpstreamError::NotSent(detail) => SendError::Unreachable { detail },
                        UpstreamError::OutcomeUnknown(detail) => SendError::OutcomeUnknown {
                            detail,
                            dedup_protected: msg.dedup_protected(),
                            errcode: None,
                        },
                        UpstreamError::Setup(detail) => SendError::Internal {
                            detail: format!("the upstream client is misconfigured: {detail}"),
                        },
                    });
                }
            }
        }
    }

    async fn call(&self, token: &str, msg: &Outgoing) -> Result<SendResponse, UpstreamError> {
        match msg {
            Outgoing::Template(m) => self.client.send_template(token, m).await,
            Outgoing::Subscribe(m) => self.client.send_subscribe(token, m).await,
            Outgoing::Bizsend(m) => self.client.send_bizsend(token, m).await,
        }
    }
}
