//! The in-memory backend: one process, one mutex. It is the embedded default for a single node
//! (`wxgate dev`, or `store.kind = "memory"`); it shares nothing with other replicas, so a
//! multi-replica deployment must use Redis.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::clock::{Clock, SystemClock};
use crate::{Store, StoreError, StoredToken, TokenWrite};

#[derive(Default)]
struct State {
    tokens: HashMap<String, StoredToken>,
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
        // A panic while holding the lock cannot leave `State` half-written (every critical
        // section is a single insert or remove), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

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

    async fn write_token(
        &self,
        appid: &str,
        token: &StoredToken,
    ) -> Result<TokenWrite, StoreError> {
        let mut st = self.lock();
        if let Some(cur) = st.tokens.get(appid) {
            if cur.fence > token.fence {
                return Ok(TokenWrite::StaleFence {
                    stored_fence: cur.fence,
                });
            }
        }
        st.tokens.insert(appid.to_string(), token.clone());
        Ok(TokenWrite::Written)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::TokenSource;

    fn token(s: &str, fence: u64, expires_at_ms: u64) -> StoredToken {
        StoredToken {
            access_token: s.into(),
            expires_at_ms,
            fence,
            node: "n1".into(),
            fetched_at_ms: 0,
            source: TokenSource::Stable,
        }
    }

    #[tokio::test]
    async fn stale_fence_is_refused() {
        let s = MemoryStore::new();
        let far = u64::MAX / 2;
        assert_eq!(
            s.write_token("wx1", &token("a", 2, far)).await.unwrap(),
            TokenWrite::Written
        );
        assert_eq!(
            s.write_token("wx1", &token("b", 1, far)).await.unwrap(),
            TokenWrite::StaleFence { stored_fence: 2 }
        );
        assert_eq!(
            s.read_token("wx1").await.unwrap().unwrap().access_token,
            "a"
        );
        assert_eq!(
            s.write_token("wx1", &token("c", 2, far)).await.unwrap(),
            TokenWrite::Written
        );
        assert_eq!(
            s.read_token("wx1").await.unwrap().unwrap().access_token,
            "c"
        );
    }

    #[tokio::test]
    async fn invalidate_only_if_equal() {
        let s = MemoryStore::new();
        let far = u64::MAX / 2;
        s.write_token("wx1", &token("new", 1, far)).await.unwrap();
        assert!(!s.invalidate_token("wx1", "old").await.unwrap());
        assert!(s.read_token("wx1").await.unwrap().is_some());
        assert!(s.invalidate_token("wx1", "new").await.unwrap());
        assert!(s.read_token("wx1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn expired_tokens_are_not_read() {
        let clock = Arc::new(ManualClock::new());
        let s = MemoryStore::with_clock(clock.clone());
        let now = clock.now_ms();
        s.write_token("wx1", &token("a", 1, now + 1_000))
            .await
            .unwrap();
        assert!(s.read_token("wx1").await.unwrap().is_some());
        clock.advance_ms(1_000);
        assert!(s.read_token("wx1").await.unwrap().is_none());
    }

    #[test]
    fn debug_masks_the_token() {
        let t = token("ACCESS_TOKEN_SECRET_VALUE_1234", 1, 0);
        let d = format!("{t:?}");
        assert!(!d.contains("ACCESS_TOKEN_SECRET"), "{d}");
        assert!(d.contains("***1234(30 chars)"), "{d}");
    }
}
