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
    Acquire, AcquireRequest, ExternalToken, IdemClaim, NewToken, Store, StoreError, StoredToken,
    TokenWrite,
};

type AppKey = (String, String);

#[derive(Default)]
struct State {
    tokens: HashMap<String, StoredToken>,
    fences: HashMap<String, u64>,
    /// appid → (node, expires_at_ms)
    leases: HashMap<String, (String, u64)>,
    /// (appid, name, window_ms) → grant times (ms), oldest first
    windows: HashMap<(String, String, u64), VecDeque<u64>>,
    /// (appid, name) → (Beijing day, used)
    quotas: HashMap<AppKey, (u64, u64)>,
    /// (appid, api) → (until_ms, reason)
    blocks: HashMap<AppKey, (u64, String)>,
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
impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn now_ms(&self) -> Result<u64, StoreError> {
        Ok(self.clock.now_ms())
    }

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
        let stored = StoredToken {
            access_token: token.access_token.clone(),
            expires_at_ms: now + token.expires_in_ms,
            fence: token.fence,
            node: token.node.clone(),
            fetched_at_ms: now,
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

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

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

    async fn read_external_token(&self, key: &str) -> Result<Option<ExternalToken>, StoreError> {
        Err(StoreError::Protocol(format!(
            "external tokens are read from Redis; the memory store has no key `{key}`"
        )))
    }

    async fn acquire(&self, req: &AcquireRequest<'_>) -> Result<Acquire, StoreError> {
        let now = self.clock.now_ms();
        let mut st = self.lock();
        let app = req.appid;

        // Blocks and quotas first: they outrank a full window.
        let mut blocked: Option<(u64, String)> = None;
        for api in req.blocks {
            if let Some((until, reason)) = st.blocks.get(&k(app, api)) {
                if *until > now && blocked.as_ref().is_none_or(|(u, _)| until > u) {
                    blocked = Some((*until, format!("block:{api}: {reason}")));
                }
            }
        }
        let today = beijing_day(now);
        for q in req.quotas {
            let used = match st.quotas.get(&k(app, &q.name)) {
                Some((day, used)) if *day == today => *used,
                _ => 0,
            };
            if used >= q.limit {
                let until = next_beijing_midnight_ms(now);
                if blocked.as_ref().is_none_or(|(u, _)| until > *u) {
                    blocked = Some((until, format!("quota:{}", q.name)));
                }
            }
        }
        if let Some((until_ms, reason)) = blocked {
            return Ok(Acquire::Blocked { until_ms, reason });
        }

        let mut wait: Option<(u64, String)> = None;
        for l in req.limits {
            let span = l.window_ms + req.guard_ms;
            let q = st
                .windows
                .entry((app.to_string(), l.name.clone(), l.window_ms))
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
                if wait.as_ref().is_none_or(|(cur, _)| w > *cur) {
                    wait = Some((w, l.name.clone()));
                }
            }
        }
        if let Some((wait_ms, limit)) = wait {
            return Ok(Acquire::Wait { wait_ms, limit });
        }

        for l in req.limits {
            st.windows
                .entry((app.to_string(), l.name.clone(), l.window_ms))
                .or_default()
                .push_back(now);
        }
        for q in req.quotas {
            let e = st.quotas.entry(k(app, &q.name)).or_insert((today, 0));
            if e.0 != today {
                *e = (today, 0);
            }
            e.1 += 1;
        }
        Ok(Acquire::Granted { now_ms: now })
    }

    async fn block(
        &self,
        appid: &str,
        api: &str,
        until_ms: u64,
        reason: &str,
    ) -> Result<(), StoreError> {
        let mut st = self.lock();
        let e = st.blocks.entry(k(appid, api)).or_insert((0, String::new()));
        if until_ms > e.0 {
            *e = (until_ms, reason.to_string());
        }
        Ok(())
    }

    async fn acquire_lease(
        &self,
        appid: &str,
        node: &str,
        ttl_ms: u64,
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
                *f += 1;
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

    async fn claim_idempotency(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
        ttl_ms: u64,
    ) -> Result<IdemClaim, StoreError> {
        let now = self.clock.now_ms();
        let mut st = self.lock();
        if let Some((rec, exp)) = st.idem.get(&k(appid, key)) {
            if *exp > now {
                return Ok(if rec.done {
                    IdemClaim::Done {
                        request_id: rec.request_id.clone(),
                        result: rec.result.clone(),
                    }
                } else {
                    IdemClaim::InProgress {
                        request_id: rec.request_id.clone(),
                    }
                });
            }
        }
        let rec = Idem {
            done: false,
            request_id: request_id.to_string(),
            result: String::new(),
        };
        st.idem.insert(k(appid, key), (rec, now + ttl_ms));
        Ok(IdemClaim::Claimed)
    }

    async fn complete_idempotency(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
        result: &str,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let mut st = self.lock();
        match st.idem.get_mut(&k(appid, key)) {
            Some((rec, exp)) if *exp > now && rec.request_id == request_id => {
                rec.done = true;
                rec.result = result.to_string();
                *exp = now + ttl_ms;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_idempotency(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
    ) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let mut st = self.lock();
        let mine = st
            .idem
            .get(&k(appid, key))
            .is_some_and(|(rec, exp)| *exp > now && rec.request_id == request_id && !rec.done);
        if mine {
            st.idem.remove(&k(appid, key));
        }
        Ok(mine)
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
