//! Queued delivery (`Prefer: respond-async`): the enqueue, the workers that drain every app's
//! stream on every node, the status and the dead letters. Redis only (the memory store has no
//! [`wxgate_store::Queue`]; the server answers `respond-async` with 501 there).
//!
//! A worker is one task per app per node, consumer `node_id` of group `wxgate`. Its loop: wait
//! for a free delivery slot (`queue.concurrency`), claim entries idle longer than
//! `queue.claim_idle_ms` (a dead consumer's) every half of that, else read new ones with a
//! blocking `XREADGROUP` on the app's own connection. Each entry is delivered by its own task:
//! [`Engine::send`] with the message id as the idempotency key (the engine's claim lease and
//! `client_msg_id` rules: at most one notification), waiting for a permit up to
//! `queue.max_permit_wait_secs` (the acquire script says when the next permit frees: no polling),
//! the entry kept non-idle meanwhile. Then the outcome is stored and the entry acknowledged
//! and deleted in one script. A retryable failure leaves the entry pending: it is claimed again
//! once idle (by any node), until `queue.max_attempts`; then, or on a permanent failure, the
//! message is `failed` and dead-lettered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wxgate_config::App;
use wxgate_protocol::wire::{BizsendMessage, SubscribeMessage, TemplateMessage};
use wxgate_store::{
    DeadLetter, EnqueueRequest, Enqueued, Finish, Queue, QueueEntry, QueueStats, QueuedMessage,
    StoreError,
};

use crate::metrics::{AppLabels, QueueLabels};
use crate::outcome::SendError;
use crate::{Engine, Outgoing, SendRequest};

/// What a worker needs to send a queued message: the status hash's `payload`.
#[derive(Debug, Serialize, Deserialize)]
pub struct QueuedPayload {
    /// The API key name that enqueued it (idempotency is scoped by it).
    pub caller: String,
    pub message: QueuedOutgoing,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

/// [`Outgoing`], serialized (already validated and resolved against the registry).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
pub enum QueuedOutgoing {
    Template(TemplateMessage),
    Subscribe(SubscribeMessage),
    Bizsend(BizsendMessage),
}

impl From<Outgoing> for QueuedOutgoing {
    fn from(m: Outgoing) -> Self {
        match m {
            Outgoing::Template(m) => Self::Template(m),
            Outgoing::Subscribe(m) => Self::Subscribe(m),
            Outgoing::Bizsend(m) => Self::Bizsend(m),
        }
    }
}

impl From<QueuedOutgoing> for Outgoing {
    fn from(m: QueuedOutgoing) -> Self {
        match m {
            QueuedOutgoing::Template(m) => Self::Template(m),
            QueuedOutgoing::Subscribe(m) => Self::Subscribe(m),
            QueuedOutgoing::Bizsend(m) => Self::Bizsend(m),
        }
    }
}

/// A failure as the status shows it (and a callback receives it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueuedError {
    pub code: String,
    pub message: String,
    pub retryable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wechat_errcode: Option<i64>,
}

impl QueuedError {
    fn of(e: &SendError) -> Self {
        Self {
            code: e.code().to_string(),
            message: e.to_string(),
            retryable: e.retryable(),
            wechat_errcode: e.wechat_errcode(),
        }
    }

    fn internal(message: impl Into<String>) -> Self {
        Self {
            code: "internal_error".into(),
            message: message.into(),
            retryable: false,
            wechat_errcode: None,
        }
    }
}

/// Why a message was not enqueued.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The store has no queue (memory store) or `queue.enabled = false`.
    #[error("queued delivery needs store.kind = \"redis\" and queue.enabled = true")]
    Unavailable,
    /// The app's backlog is at `queue.max_backlog`.
    #[error("the app's queue holds {depth} messages (queue.max_backlog); nothing was queued")]
    Full { depth: u64, retry_after_ms: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The answer of [`Engine::enqueue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub id: String,
    /// Enqueued before under the same `Idempotency-Key`.
    pub existing: bool,
}

/// A message's status as `GET /v1/apps/{app}/messages/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MessageStatus {
    pub id: String,
    /// `queued` | `sending` | `sent` | `failed`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<QueuedError>,
    pub attempts: u32,
    pub created_ms: u64,
    pub updated_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
}

impl MessageStatus {
    fn of(id: &str, m: &QueuedMessage) -> Self {
        Self {
            id: id.to_string(),
            status: m.state.clone(),
            msgid: m.msgid.clone(),
            error: m
                .error
                .as_deref()
                .and_then(|e| serde_json::from_str(e).ok()),
            attempts: m.attempts,
            created_ms: m.created_ms,
            updated_ms: m.updated_ms,
            finished_ms: m.finished_ms,
        }
    }
}

impl Engine {
    fn queue(&self) -> Result<&Arc<dyn Queue>, EnqueueError> {
        match &self.store.queue {
            Some(q) if self.settings.queue.enabled => Ok(q),
            _ => Err(EnqueueError::Unavailable),
        }
    }

    /// Whether `Prefer: respond-async` is served here.
    pub fn queue_enabled(&self) -> bool {
        self.queue().is_ok()
    }

    /// Enqueues a validated, resolved message for `app` (see [`Queue::enqueue`]).
    pub async fn enqueue(
        &self,
        app: &App,
        caller: &str,
        idempotency_key: Option<&str>,
        message: Outgoing,
        callback_url: Option<String>,
    ) -> Result<Accepted, EnqueueError> {
        let q = self.queue()?;
        let api = message.api();
        let payload = serde_json::to_string(&QueuedPayload {
            caller: caller.to_string(),
            message: message.into(),
            callback_url,
        })
        .map_err(|e| StoreError::Protocol(e.to_string()))?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let cfg = &self.settings.queue;
        let r = q
            .enqueue(
                &app.appid,
                &EnqueueRequest {
                    id: &id,
                    payload: &payload,
                    idempotency: idempotency_key.map(|k| (caller, k)),
                    max_backlog: cfg.max_backlog,
                    ttl_ms: self.settings.sending.idempotency_ttl.as_millis() as u64,
                },
            )
            .await?;
        match r {
            Enqueued::Accepted { id } => Ok(Accepted {
                id,
                existing: false,
            }),
            Enqueued::Existing { id } => Ok(Accepted { id, existing: true }),
            Enqueued::Full { depth, .. } => {
                // One permit's time per entry over the backlog, from the API's tightest window.
                let per_permit = app
                    .limits
                    .per_api
                    .get(&api)
                    .into_iter()
                    .flatten()
                    .map(|w| w.window_ms / w.limit.max(1))
                    .max()
                    .unwrap_or(1_000);
                let over = depth.saturating_sub(cfg.max_backlog) + 1;
                Err(EnqueueError::Full {
                    depth,
                    retry_after_ms: (per_permit * over).clamp(1_000, 300_000),
                })
            }
        }
    }

    /// The status of queued message `id` of `app`, while kept (the idempotency TTL), as the API
    /// key named `caller` may see it: only the key that enqueued it (else `None`, as unknown).
    pub async fn message_status(
        &self,
        app: &App,
        id: &str,
        caller: &str,
    ) -> Result<Option<MessageStatus>, EnqueueError> {
        let q = self.queue()?;
        let Some(m) = q.message(&app.appid, id).await? else {
            return Ok(None);
        };
        #[derive(Deserialize)]
        struct Owner {
            caller: String,
        }
        let owner = serde_json::from_str::<Owner>(&m.payload)
            .ok()
            .map(|o| o.caller);
        if owner.as_deref() != Some(caller) {
            return Ok(None);
        }
        Ok(Some(MessageStatus::of(id, &m)))
    }

    /// Depth, pending, oldest entry age and dead letters of `app`'s queue (for `inspect`).
    pub async fn queue_stats(&self, app: &App) -> Result<QueueStats, EnqueueError> {
        Ok(self.queue()?.stats(&app.appid).await?)
    }

    /// The oldest `count` dead letters of `app`, with their status.
    pub async fn dead_letters(
        &self,
        app: &App,
        count: usize,
    ) -> Result<Vec<(DeadLetter, Option<MessageStatus>)>, EnqueueError> {
        let q = self.queue()?;
        let mut out = Vec::new();
        for l in q.dead_letters(&app.appid, count).await? {
            let st = q
                .message(&app.appid, &l.id)
                .await?
                .map(|m| MessageStatus::of(&l.id, &m));
            out.push((l, st));
        }
        Ok(out)
    }

    /// Re-drives dead letters of `app`: those with the given message ids, or all (`None`).
    /// Returns the ids put back on the stream.
    pub async fn redrive(
        &self,
        app: &App,
        ids: Option<&[String]>,
    ) -> Result<Vec<String>, EnqueueError> {
        let q = self.queue()?;
        let ttl = self.settings.sending.idempotency_ttl.as_millis() as u64;
        let mut done = Vec::new();
        for l in q.dead_letters(&app.appid, 100_000).await? {
            if ids.is_some_and(|ids| !ids.contains(&l.id)) {
                continue;
            }
            if q.redrive(&app.appid, &l, ttl).await? {
                done.push(l.id);
            }
        }
        Ok(done)
    }

    /// Starts the queue workers (one per app), until `shutdown`.
    pub fn spawn_queue_workers(
        self: &Arc<Self>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let Ok(q) = self.queue() else {
            return Vec::new();
        };
        let mut tasks = Vec::new();
        for app in self.settings.apps.values() {
            let me = self.clone();
            let (app, q2, sd) = (app.clone(), q.clone(), shutdown.clone());
            tasks.push(tokio::spawn(
                async move { me.run_worker(app, q2, sd).await },
            ));
        }
        tasks
    }

    /// The queue gauges of `app` (sampled with the other shared-state gauges, see
    /// `Engine::sample_state`).
    pub(crate) async fn sample_queue(&self, app: &App) {
        let Ok(q) = self.queue() else {
            return;
        };
        if let Ok(st) = q.stats(&app.appid).await {
            let l = AppLabels {
                app: app.name.clone(),
            };
            self.metrics
                .queue_depth
                .get_or_create(&l)
                .set(st.depth as i64);
            self.metrics
                .queue_dead_letters
                .get_or_create(&l)
                .set(st.dead_letters as i64);
            self.metrics
                .queue_oldest_age_seconds
                .get_or_create(&l)
                .set(st.oldest_age_ms.unwrap_or(0) as f64 / 1000.0);
        }
    }

    /// One app's worker on this node; at shutdown, waits (up to `server.shutdown_timeout`) for
    /// the deliveries in flight, so a stopping node finishes what it holds rather than leaving
    /// it to be claimed after `queue.claim_idle_ms`.
    async fn run_worker(
        self: Arc<Self>,
        app: App,
        q: Arc<dyn Queue>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let n = self.settings.queue.concurrency;
        let slots = Arc::new(tokio::sync::Semaphore::new(n));
        self.clone()
            .worker_loop(app.clone(), q, slots.clone(), shutdown)
            .await;
        let wait = self.settings.server.shutdown_timeout;
        let all = u32::try_from(n).unwrap_or(u32::MAX);
        if tokio::time::timeout(wait, slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(app = %app.name, "queue deliveries still running at shutdown; their entries will be claimed by another node");
        }
    }

    async fn worker_loop(
        self: Arc<Self>,
        app: App,
        q: Arc<dyn Queue>,
        slots: Arc<tokio::sync::Semaphore>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let cfg = self.settings.queue.clone();
        let consumer = self.node_id.clone();
        let claim_idle_ms = cfg.claim_idle.as_millis() as u64;
        let block_ms = cfg.block.as_millis() as u64;
        while let Err(e) = q.ensure_group(&app.appid).await {
            tracing::warn!(app = %app.name, error = %e, "cannot create the queue's consumer group yet");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
        let mut last_claim: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let first = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = shutdown.changed() => return,
            };
            let free = slots.available_permits() + 1;
            let mut batch: Vec<QueueEntry> = Vec::new();
            if last_claim.is_none_or(|t| t.elapsed() >= cfg.claim_idle / 2) {
                last_claim = Some(Instant::now());
                match q
                    .claim_idle(&app.appid, &consumer, claim_idle_ms, free)
                    .await
                {
                    Ok(v) => {
                        if !v.is_empty() {
                            tracing::info!(app = %app.name, claimed = v.len(), "claimed idle queue entries (a consumer stopped or a retry is due)");
                        }
                        batch = v;
                    }
                    Err(e) => {
                        tracing::warn!(app = %app.name, error = %e, "cannot claim idle queue entries")
                    }
                }
            }
            if batch.is_empty() {
                let read = tokio::select! {
                    r = q.read(&app.appid, &consumer, free, block_ms) => r,
                    _ = shutdown.changed() => return,
                };
                match read {
                    Ok(v) => batch = v,
                    Err(e) => {
                        tracing::warn!(app = %app.name, error = %e, "cannot read the queue");
                        drop(first);
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = shutdown.changed() => return,
                        }
                        continue;
                    }
                }
            }
            let mut first = Some(first);
            for entry in batch {
                let slot = match first.take() {
                    Some(p) => p,
                    None => match slots.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                };
                let (me, app, q) = (self.clone(), app.clone(), q.clone());
                tokio::spawn(async move {
                    me.deliver(&app, &*q, &entry).await;
                    drop(slot);
                });
            }
        }
    }

    /// Delivers one entry: see the module docs.
    async fn deliver(self: &Arc<Self>, app: &App, q: &dyn Queue, entry: &QueueEntry) {
        let cfg = &self.settings.queue;
        let appid = &app.appid;
        let id = entry.id.as_str();
        let msg = match q.message(appid, id).await {
            Ok(Some(m)) => m,
            Ok(None) => {
                let err = QueuedError::internal("the message's status expired before delivery");
                self.finish(app, q, entry, None, None, Some(err), None)
                    .await;
                return;
            }
            Err(e) => {
                tracing::warn!(app = %app.name, error = %e, "cannot read a queued message; it stays pending");
                return;
            }
        };
        if msg.state == "sent" || msg.state == "failed" {
            // Finished before, its acknowledgement lost: acknowledge it now.
            let err = msg
                .error
                .as_deref()
                .and_then(|e| serde_json::from_str(e).ok());
            self.finish(app, q, entry, None, msg.msgid.clone(), err, None)
                .await;
            return;
        }
        let payload: QueuedPayload = match serde_json::from_str(&msg.payload) {
            Ok(p) => p,
            Err(e) => {
                let err = QueuedError::internal(format!("unreadable queued payload: {e}"));
                self.finish(app, q, entry, None, None, Some(err), None)
                    .await;
                return;
            }
        };
        if let Err(e) = q
            .update(
                appid,
                id,
                &[("state", "sending".into()), ("node", self.node_id.clone())],
            )
            .await
        {
            tracing::warn!(app = %app.name, error = %e, "cannot mark a queued message sending");
        }
        // A re-driven message is a new generation: a new idempotency key (and client_msg_id).
        let key = if msg.gen == 0 {
            id.to_string()
        } else {
            format!("{id}.r{}", msg.gen)
        };
        let request_id = format!("q-{id}");
        let send = self.send(SendRequest {
            app,
            caller: &payload.caller,
            idempotency_key: Some(&key),
            message: payload.message.into(),
            wait_for_permit: Some(cfg.max_permit_wait),
            request_id: &request_id,
            started: Instant::now(),
        });
        tokio::pin!(send);
        let mut touch = tokio::time::interval((cfg.claim_idle / 3).max(Duration::from_millis(10)));
        touch.tick().await;
        let delivery = loop {
            tokio::select! {
                d = &mut send => break d,
                _ = touch.tick() => {
                    if let Err(e) = q.touch(appid, &self.node_id, &entry.entry).await {
                        tracing::warn!(app = %app.name, error = %e, "cannot keep a queue entry claimed");
                    }
                }
            }
        };
        match delivery.result {
            Ok(sent) => {
                self.finish(
                    app,
                    q,
                    entry,
                    Some(msg.attempts + 1),
                    sent.msgid.map(|m| m.to_string()),
                    None,
                    payload.callback_url,
                )
                .await
            }
            Err(e) => {
                // Another delivery of it holds the engine's claim: not an attempt of ours.
                let counted = !matches!(e, SendError::InProgress { .. });
                let attempts = msg.attempts + u32::from(counted);
                let err = QueuedError::of(&e);
                if e.retryable() && attempts < cfg.max_attempts && delivery.replayed_from.is_none()
                {
                    tracing::info!(app = %app.name, id, attempts, code = e.code().as_str(), "queued message will be retried once its entry is idle");
                    let fields = [
                        ("state", "queued".to_string()),
                        ("attempts", attempts.to_string()),
                        ("error", serde_json::to_string(&err).unwrap_or_default()),
                    ];
                    if let Err(e) = q.update(appid, id, &fields).await {
                        tracing::warn!(app = %app.name, error = %e, "cannot record a retry");
                    }
                } else {
                    self.finish(
                        app,
                        q,
                        entry,
                        Some(attempts),
                        None,
                        Some(err),
                        payload.callback_url,
                    )
                    .await
                }
            }
        }
    }

    /// Stores the final outcome (with the delivery count, when this delivery counted) and
    /// acknowledges the entry, in one script; a failure is dead-lettered. Then the callback, in
    /// its own task.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        self: &Arc<Self>,
        app: &App,
        q: &dyn Queue,
        entry: &QueueEntry,
        attempts: Option<u32>,
        msgid: Option<String>,
        error: Option<QueuedError>,
        callback_url: Option<String>,
    ) {
        let state = if error.is_some() { "failed" } else { "sent" };
        let error_json = error
            .as_ref()
            .map(|e| serde_json::to_string(e).unwrap_or_default());
        let r = q
            .finish(
                &app.appid,
                &Finish {
                    entry: &entry.entry,
                    id: &entry.id,
                    state,
                    msgid: msgid.as_deref(),
                    error: error_json.as_deref(),
                    dead_letter: error.is_some(),
                    ttl_ms: self.settings.sending.idempotency_ttl.as_millis() as u64,
                    node: &self.node_id,
                    attempts,
                },
            )
            .await;
        match r {
            Ok(true) => {
                self.metrics
                    .queue_drained
                    .get_or_create(&QueueLabels {
                        app: app.name.clone(),
                        state: state.into(),
                    })
                    .inc();
                if let Some(url) = callback_url {
                    let body = serde_json::json!({
                        "id": entry.id,
                        "app": app.name,
                        "status": state,
                        "msgid": msgid,
                        "error": error,
                    });
                    tokio::spawn(callback(url, body));
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(app = %app.name, error = %e, "cannot store a queued message's outcome; its entry stays pending")
            }
        }
    }
}

/// POSTs the final status to the message's `callback_url`: 5 s per try, 3 tries.
async fn callback(url: String, body: serde_json::Value) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the callback client");
            return;
        }
    };
    for attempt in 0..3u32 {
        match client.post(&url).json(&body).send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => tracing::info!(status = r.status().as_u16(), attempt, "callback refused"),
            Err(e) => tracing::info!(error = %e, attempt, "callback failed"),
        }
        tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
    }
    tracing::warn!("callback given up after 3 tries");
}
