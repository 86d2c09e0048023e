//! The in-memory backend: one process, one mutex. It is the embedded default for a single node
//! (`wxgate dev`, or `store.kind = "memory"`); it shares nothing with other replicas, so a
//! multi-replica deployment must use Redis. It implements the same contract as the Redis
//! scripts (the contract suite runs against both) with the node's clock.
//!
//! Growth is bounded: a window holds at most its limit of entries, and every 1024 operations a
//! sweep drops whatever has expired (empty windows, past days' quotas, leases, blocks,
//! idempotency records).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::clock::{Clock, SystemClock};
use wxgate_protocol::time::{beijing_day, next_beijing_midnight_ms};

use crate::{
    Acquire, AcquireReply, AcquireRequest, Api, BlockCause, Cache, ClaimRequest, ExternalToken,
    Health, IdemClaim, Idempotency, Leases, Limiter, NewToken, PreviousClaim, StoreError,
    StoredToken, TokenStore, TokenWrite,
};

type AppKey = (String, String);
type ApiKey = (String, Api);

#[derive(Default)]
struct State {
    tokens: HashMap<String, StoredToken>,
    fences: HashMap<String, u64>,
    /// appid → (node, expires_at_ms)
    leases: HashMap<String, (String, u64)>,
    /// (appid, name, window_ms) → grant times (ms), oldest first
    windows: HashMap<(String, String, u64), VecDeque<u64>>,
    /// (appid, api) → (Beijing day, used)
    quotas: HashMap<ApiKey, (u64, u64)>,
    /// (appid, api) → (until_ms, errcode)
    blocks: HashMap<ApiKey, (u64, i64)>,
    /// appid → (grant sequence, lost_at_ms)
    epochs: HashMap<String, (u64, u64)>,
    /// (appid, key) → (record, expires_at_ms)
    idem: HashMap<AppKey, (Idem, u64)>,
    /// (appid, name) → (value, expires_at_ms)
    cache: HashMap<AppKey, (String, u64)>,
    ops: u64,
}

#[derive(Clone)]
struct Idem {
    done: bool,
    request_id: String,
    result: String,
    api: Api,
    client_msg_id: Option<String>,
    first_attempt_ms: Option<u64>,
    lease_until_ms: u64,
}

/// Single-node store. Critical sections never await, so a `std::sync::Mutex` is right here.
pub struct MemoryStore {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

fn k(a: &str, b: &str) -> AppKey {
    (a.to_string(), b.to_string())
}

fn ka(a: &str, api: Api) -> ApiKey {
    (a.to_string(), api)
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            state: Mutex::new(State::default()),
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section validates before it writes, so a panic cannot leave `State`
        // half-updated: a poisoned lock is still consistent.
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.ops += 1;
        if st.ops.is_multiple_of(1024) {
            sweep(&mut st, self.clock.now_ms());
        }
        st
    }
}

fn sweep(st: &mut State, now: u64) {
    st.windows.retain(|(_, _, window_ms), q| {
        q.back()
            .is_some_and(|last| last + window_ms + MAX_GUARD_MS > now)
    });
    let today = beijing_day(now);
    st.quotas.retain(|_, (day, _)| *day >= today);
    st.leases.retain(|_, (_, exp)| *exp > now);
    st.blocks.retain(|_, (until, _)| *until > now);
    st.idem.retain(|_, (_, exp)| *exp > now);
    st.cache.retain(|_, (_, exp)| *exp > now);
    st.tokens.retain(|_, t| t.expires_at_ms > now);
}

/// Guards longer than this are not kept by the sweep (a window entry is pruned on access anyway).
const MAX_GUARD_MS: u64 = 60_000;

#[async_trait]
impl Health for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn now_ms(&self) -> Result<u64, StoreError> {
        Ok(self.clock.now_ms())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait]
impl TokenStore for MemoryStore {
    async fn read_token(&self, appid: &str) -> Result<Option<StoredToken>, StoreError> {
        let now = self.clock.now_ms();
        let mut st = self.lock();
        match st.tokens.get(appid) {
            Some(t) if t.expires_at_ms > now => Ok(Some(t.clone())),
            Some(_) => {
                st.tokens.remove(appid);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn write_token(&self, appid: &str, token: &NewToken) -> Result<TokenWrite, StoreError> {
        let now = self.clock.now_ms();
        let mut st = self.lock();
        let stored = st.tokens.get(appid).map(|t| t.fence).unwrap_or(0);
        let leader = st.fences.get(appid).copied().unwrap_or(0);
        let newest = stored.max(leader);
        if token.fence < newest {
            return Ok(TokenWrite::StaleFence {
                stored_fence: newest,
            });
        }
        let fetched_at_ms = now.saturating_sub(token.age_ms);
        let stored = StoredToken {
            access_token: token.access_token.clone(),
            expires_at_ms: fetched_at_ms + token.expires_in_ms,
            fence: token.fence,
            node: token.node.clone(),
            fetched_at_ms,
            source: token.source,
        };
        st.tokens.insert(appid.to_string(), stored.clone());
        Ok(TokenWrite::Written(stored))
    }

    async fn invalidate_token(&self, appid: &str, bad_token: &str) -> Result<bool, StoreError> {
        let mut st = self.lock();
        if st
            .tokens
            .get(appid)
            .is_some_and(|t| t.access_token == bad_token)
        {
            st.tokens.remove(appid);
            return Ok(true);
        }
        Ok(false)
    }

    async fn read_external_token(&self, key: &str) -> Result<Option<ExternalToken>, StoreError> {
        Err(StoreError::Protocol(format!(
            "external tokens are read from Redis; the memory store has no key `{key}`"
        )))
    }
}

#[async_trait]
impl Limiter for MemoryStore {
    async fn acquire(&self, req: &AcquireRequest<'_>) -> Result<AcquireReply, StoreError> {
        let now = self.clock.now_ms();
        let mut st = self.lock();
        let app = req.appid;

        // The epoch: a caller that has seen a later grant than we hold found a loss.
        let (mut seq, mut lost_at) = st.epochs.get(app).copied().unwrap_or((0, 0));
        let state_loss = req.known_seq > seq;
        if state_loss {
            seq = req.known_seq;
            lost_at = now;
            st.epochs.insert(app.to_string(), (seq, lost_at));
        }
        let reply = |decision| {
            Ok(AcquireReply {
                decision,
                state_loss,
            })
        };

        // Pauses and quotas first: they outrank a full window.
        let mut blocked: Option<(u64, BlockCause)> = None;
        for api in req.blocks {
            if let Some((until, errcode)) = st.blocks.get(&ka(app, *api)) {
                if *until > now && blocked.as_ref().is_none_or(|(u, _)| until > u) {
                    let cause = BlockCause::Paused {
                        api: *api,
                        errcode: *errcode,
                    };
                    blocked = Some((*until, cause));
                }
            }
        }
        let today = beijing_day(now);
        for q in req.quotas {
            let used = match st.quotas.get(&ka(app, q.api)) {
                Some((day, used)) if *day == today => *used,
                _ => 0,
            };
            if used >= q.limit {
                let until = next_beijing_midnight_ms(now);
                if blocked.as_ref().is_none_or(|(u, _)| until > *u) {
                    let cause = BlockCause::Quota {
                        api: q.api,
                        limit: q.limit,
                    };
                    blocked = Some((until, cause));
                }
            }
        }
        if let Some((until_ms, cause)) = blocked {
            return reply(Acquire::Blocked { until_ms, cause });
        }

        // Windows; one held after a state loss counts as full until the lost grants left it.
        let mut wait: Option<(u64, usize, bool)> = None;
        for (i, l) in req.limits.iter().enumerate() {
            let span = l.window_ms + req.guard_ms;
            if req.loss.hold && lost_at > 0 && l.window_ms <= req.loss.hold_max_window_ms {
                let w = (lost_at + span).saturating_sub(now);
                if w > 0 && wait.is_none_or(|(cur, _, _)| w > cur) {
                    wait = Some((w, i, true));
                }
            }
            let q = st
                .windows
                .entry((app.to_string(), l.name(), l.window_ms))
                .or_default();
            while q.front().is_some_and(|t| t + span <= now) {
                q.pop_front();
            }
            let count = q.len() as u64;
            if count >= l.limit {
                // The entry that must leave before one more fits.
                let w = match q.get((count - l.limit) as usize) {
                    Some(t) => (t + span).saturating_sub(now).max(1),
                    None => span.max(1),
                };
                if wait.is_none_or(|(cur, _, _)| w > cur) {
                    wait = Some((w, i, false));
                }
            }
        }
        if let Some((wait_ms, window, held)) = wait {
            return reply(Acquire::Wait {
                wait_ms,
                window,
                held,
            });
        }

        for l in req.limits {
            st.windows
                .entry((app.to_string(), l.name(), l.window_ms))
                .or_default()
                .push_back(now);
        }
        for q in req.quotas {
            let e = st.quotas.entry(ka(app, q.api)).or_insert((today, 0));
            if e.0 != today {
                *e = (today, 0);
            }
            e.1 += 1;
        }
        seq += 1;
        st.epochs.insert(app.to_string(), (seq, lost_at));
        reply(Acquire::Granted { now_ms: now, seq })
    }

    async fn block(
        &self,
        appid: &str,
        api: Api,
        until_ms: u64,
        errcode: i64,
    ) -> Result<(), StoreError> {
        let mut st = self.lock();
        let e = st.blocks.entry(ka(appid, api)).or_insert((0, 0));
        if until_ms > e.0 {
            *e = (until_ms, errcode);
        }
        Ok(())
    }
}

#[async_trait]
impl Leases for MemoryStore {
    async fn acquire_lease(
        &self,
        appid: &str,
        node: &str,
        ttl_ms: u64,
        known_fence: u64,
    ) -> Result<Option<u64>, StoreError> {
        let now = self.clock.now_ms();
        let mut st = self.lock();
        match st.leases.get(appid) {
            Some((holder, exp)) if *exp > now => {
                if holder == node {
                    st.leases
                        .insert(appid.to_string(), (node.to_string(), now + ttl_ms));
                    Ok(Some(st.fences.get(appid).copied().unwrap_or(0)))
                } else {
                    Ok(None)
                }
            }
            _ => {
                st.leases
                    .insert(appid.to_string(), (node.to_string(), now + ttl_ms));
                let f = st.fences.entry(appid.to_string()).or_insert(0);
                *f = (*f + 1).max(known_fence + 1);
                Ok(Some(*f))
            }
        }
    }

    async fn renew_lease(&self, appid: &str, node: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let mut st = self.lock();
        match st.leases.get_mut(appid) {
            Some((holder, exp)) if *exp > now && holder == node => {
                *exp = now + ttl_ms;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_lease(&self, appid: &str, node: &str) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let mut st = self.lock();
        if st
            .leases
            .get(appid)
            .is_some_and(|(h, exp)| *exp > now && h == node)
        {
            st.leases.remove(appid);
            return Ok(true);
        }
        Ok(false)
    }

    async fn lease_holder(&self, appid: &str) -> Result<Option<String>, StoreError> {
        let now = self.clock.now_ms();
        let st = self.lock();
        Ok(st
            .leases
            .get(appid)
            .filter(|(_, exp)| *exp > now)
            .map(|(h, _)| h.clone()))
    }
}

#[async_trait]
impl crate::inspect::Inspect for MemoryStore {
    async fn inspect_app(
        &self,
        q: &crate::inspect::InspectQuery<'_>,
    ) -> Result<crate::inspect::AppStateRead, StoreError> {
        use crate::inspect::{AppStateRead, BoundedCount, PauseInfo, TokenInfo, WindowUse};
        let now = self.clock.now_ms();
        let st = self.lock();
        let app = q.appid;
        let token = st
            .tokens
            .get(app)
            .filter(|t| t.expires_at_ms > now)
            .map(|t| TokenInfo {
                masked: crate::mask(&t.access_token),
                source: t.source,
                fetched_at_ms: t.fetched_at_ms,
                expires_at_ms: t.expires_at_ms,
                fence: t.fence,
                node: t.node.clone(),
            });
        let leader = st
            .leases
            .get(app)
            .filter(|(_, exp)| *exp > now)
            .map(|(node, exp)| (node.clone(), exp - now));
        let windows = q
            .windows
            .iter()
            .map(|(api, limit, window_ms)| {
                let span = window_ms + q.guard_ms;
                let live: Vec<u64> = st
                    .windows
                    .get(&(app.to_string(), api.as_str().to_string(), *window_ms))
                    .map(|d| d.iter().copied().filter(|t| t + span > now).collect())
                    .unwrap_or_default();
                let used = live.len() as u64;
                let frees_in_ms = if used < *limit {
                    0
                } else {
                    match live.get((used - limit) as usize) {
                        Some(t) => (t + span).saturating_sub(now).max(1),
                        None => span.max(1),
                    }
                };
                WindowUse { used, frees_in_ms }
            })
            .collect();
        let today = beijing_day(now);
        let quotas_used = q
            .quotas
            .iter()
            .map(|quota| match st.quotas.get(&ka(app, quota.api)) {
                Some((day, used)) if *day == today => *used,
                _ => 0,
            })
            .collect();
        let pauses = q
            .blocks
            .iter()
            .filter_map(|api| {
                st.blocks
                    .get(&ka(app, *api))
                    .filter(|(until, _)| *until > now)
                    .map(|(until_ms, errcode)| PauseInfo {
                        api: *api,
                        errcode: *errcode,
                        until_ms: *until_ms,
                    })
            })
            .collect();
        let idem = st
            .idem
            .iter()
            .filter(|((a, _), (_, exp))| a == app && *exp > now)
            .count() as u64;
        let recipients = match q.recipient_window_ms {
            None => 0,
            Some(w) => {
                let span = w + q.guard_ms;
                st.windows
                    .iter()
                    .filter(|((a, name, window_ms), d)| {
                        a == app
                            && *window_ms == w
                            && name.starts_with("user:")
                            && d.back().is_some_and(|t| t + span > now)
                    })
                    .count() as u64
            }
        };
        let (grant_seq, lost_at) = st.epochs.get(app).copied().unwrap_or((0, 0));
        Ok(AppStateRead {
            now_ms: now,
            token,
            fence: st.fences.get(app).copied(),
            leader,
            windows,
            quotas_used,
            pauses,
            idempotency_records: BoundedCount {
                count: idem,
                capped: false,
            },
            recipients_with_window: BoundedCount {
                count: recipients,
                capped: false,
            },
            grant_seq,
            lost_at_ms: Some(lost_at).filter(|t| *t > 0),
        })
    }

    async fn lift_pause(&self, appid: &str, api: Api) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let mut st = self.lock();
        Ok(st
            .blocks
            .remove(&ka(appid, api))
            .is_some_and(|(until, _)| until > now))
    }
}

impl MemoryStore {
    /// Runs `f` on `request_id`'s live in-progress claim of `key`; false if there is none.
    fn with_own_claim(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
        f: impl FnOnce(&mut Idem, &mut u64, u64),
    ) -> bool {
        let now = self.clock.now_ms();
        let mut st = self.lock();
        match st.idem.get_mut(&k(appid, key)) {
            Some((rec, exp)) if *exp > now && !rec.done && rec.request_id == request_id => {
                f(rec, exp, now);
                true
            }
            _ => false,
        }
    }
}

#[async_trait]
impl Idempotency for MemoryStore {
    async fn claim_idempotency(
        &self,
        appid: &str,
        req: &ClaimRequest<'_>,
    ) -> Result<IdemClaim, StoreError> {
        let now = self.clock.now_ms();
        let mut st = self.lock();
        if let Some((rec, exp)) = st.idem.get_mut(&k(appid, req.key)) {
            if *exp > now {
                if rec.done {
                    return Ok(IdemClaim::Done {
                        request_id: rec.request_id.clone(),
                        result: rec.result.clone(),
                    });
                }
                if rec.lease_until_ms > now {
                    return Ok(IdemClaim::InProgress {
                        request_id: rec.request_id.clone(),
                        lease_left_ms: rec.lease_until_ms - now,
                    });
                }
                let previous = PreviousClaim {
                    request_id: std::mem::replace(&mut rec.request_id, req.request_id.to_string()),
                    api: Some(rec.api),
                    client_msg_id: rec.client_msg_id.clone(),
                    first_attempt_ms: rec.first_attempt_ms,
                    now_ms: now,
                };
                rec.lease_until_ms = now + req.lease_ms;
                return Ok(IdemClaim::TakenOver { previous });
            }
        }
        let rec = Idem {
            done: false,
            request_id: req.request_id.to_string(),
            result: String::new(),
            api: req.api,
            client_msg_id: req.client_msg_id.map(str::to_string),
            first_attempt_ms: None,
            lease_until_ms: now + req.lease_ms,
        };
        st.idem.insert(k(appid, req.key), (rec, now + req.ttl_ms));
        Ok(IdemClaim::Claimed)
    }

    async fn mark_attempt(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
    ) -> Result<bool, StoreError> {
        Ok(self.with_own_claim(appid, key, request_id, |rec, _, now| {
            rec.first_attempt_ms.get_or_insert(now);
        }))
    }

    async fn renew_claim(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
        lease_ms: u64,
    ) -> Result<bool, StoreError> {
        Ok(self.with_own_claim(appid, key, request_id, |rec, _, now| {
            rec.lease_until_ms = now + lease_ms;
        }))
    }

    async fn complete_idempotency(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
        result: &str,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        Ok(
            self.with_own_claim(appid, key, request_id, |rec, exp, now| {
                rec.done = true;
                rec.result = result.to_string();
                *exp = now + ttl_ms;
            }),
        )
    }

    async fn release_idempotency(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
        keep_attempt: bool,
    ) -> Result<bool, StoreError> {
        Ok(self.with_own_claim(appid, key, request_id, |rec, _, _| {
            rec.lease_until_ms = 0;
            if !keep_attempt {
                rec.first_attempt_ms = None;
            }
        }))
    }
}

#[async_trait]
impl Cache for MemoryStore {
    async fn get_cached(&self, appid: &str, name: &str) -> Result<Option<String>, StoreError> {
        let now = self.clock.now_ms();
        let st = self.lock();
        Ok(st
            .cache
            .get(&k(appid, name))
            .filter(|(_, exp)| *exp > now)
            .map(|(v, _)| v.clone()))
    }

    async fn put_cached(
        &self,
        appid: &str,
        name: &str,
        value: &str,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        self.lock()
            .cache
            .insert(k(appid, name), (value.to_string(), now + ttl_ms));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TokenSource;

    #[test]
    fn debug_masks_the_token() {
        let t = StoredToken {
            access_token: "ACCESS_TOKEN_SECRET_VALUE_1234".into(),
            expires_at_ms: 0,
            fence: 1,
            node: "n1".into(),
            fetched_at_ms: 0,
            source: TokenSource::Stable,
        };
        let d = format!("{t:?}");
        assert!(!d.contains("ACCESS_TOKEN_SECRET"), "{d}");
        assert!(d.contains("***1234(30 chars)"), "{d}");
    }
}
