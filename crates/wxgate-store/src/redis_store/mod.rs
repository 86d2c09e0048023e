//! The Redis backend: every operation is one Lua script (`src/lua/*.lua`, one atomic operation
//! per file) run with EVALSHA, falling back to loading the script on NOSCRIPT — so it survives
//! `SCRIPT FLUSH`, a Redis restart and a failover. Every key a script touches is passed in
//! `KEYS` and carries the appid hash tag, so each script runs on one Cluster slot. Time inside
//! scripts is Redis `TIME`.
//!
//! - `connection`: reaching Redis (topologies, TLS, the Sentinel watcher, timeouts and the one
//!   safe retry).
//! - `ops`: the store's roles ([`crate::TokenStore`], [`crate::Limiter`], ...) as script calls.

mod batch;
mod connection;
mod ops;
mod queue;

use std::fmt;
use std::sync::Arc;

use redis::{Script, Value};

use connection::RedisConn;
pub use connection::{redact_url, RedisConfig, Topology};
pub use queue::GROUP;

use crate::keys::Keys;
use crate::StoreError;

/// The scripts, loaded from their files at compile time. `Script` keeps the SHA1.
pub(crate) struct Scripts {
    acquire: Script,
    block: Script,
    block_lift: Script,
    token_write: Script,
    token_invalidate: Script,
    lease_acquire: Script,
    lease_renew: Script,
    lease_release: Script,
    idem_claim: Script,
    idem_attempt: Script,
    idem_renew: Script,
    idem_complete: Script,
    idem_release: Script,
    external_token_read: Script,
    q_enqueue: Script,
    q_finish: Script,
    q_touch: Script,
    q_update: Script,
    q_redrive: Script,
    inspect: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            acquire: Script::new(include_str!("../lua/acquire.lua")),
            block: Script::new(include_str!("../lua/block.lua")),
            block_lift: Script::new(include_str!("../lua/block_lift.lua")),
            token_write: Script::new(include_str!("../lua/token_write.lua")),
            token_invalidate: Script::new(include_str!("../lua/token_invalidate.lua")),
            lease_acquire: Script::new(include_str!("../lua/lease_acquire.lua")),
            lease_renew: Script::new(include_str!("../lua/lease_renew.lua")),
            lease_release: Script::new(include_str!("../lua/lease_release.lua")),
            idem_claim: Script::new(include_str!("../lua/idem_claim.lua")),
            idem_attempt: Script::new(include_str!("../lua/idem_attempt.lua")),
            idem_renew: Script::new(include_str!("../lua/idem_renew.lua")),
            idem_complete: Script::new(include_str!("../lua/idem_complete.lua")),
            idem_release: Script::new(include_str!("../lua/idem_release.lua")),
            external_token_read: Script::new(include_str!("../lua/external_token_read.lua")),
            q_enqueue: Script::new(include_str!("../lua/q_enqueue.lua")),
            q_finish: Script::new(include_str!("../lua/q_finish.lua")),
            q_touch: Script::new(include_str!("../lua/q_touch.lua")),
            q_update: Script::new(include_str!("../lua/q_update.lua")),
            q_redrive: Script::new(include_str!("../lua/q_redrive.lua")),
            inspect: Script::new(include_str!("../lua/inspect.lua")),
        }
    }
}

/// The Redis store.
pub struct RedisStore {
    keys: Keys,
    scripts: Arc<Scripts>,
    conn: Arc<RedisConn>,
    /// Acquires waiting for this runtime's next flush (see `batch`).
    batcher: Arc<batch::Batcher>,
    /// For queue workers' blocking reads: one connection per app, apart from `conn`.
    cfg: RedisConfig,
    readers: std::sync::Mutex<std::collections::HashMap<String, Arc<RedisConn>>>,
    observer: std::sync::OnceLock<Arc<dyn crate::StoreObserver>>,
}

impl RedisStore {
    /// Builds the store; connects on first use (a gateway may start before Redis does).
    pub fn new(cfg: RedisConfig) -> Result<Self, StoreError> {
        // rustls needs one process-wide crypto provider for `rediss://`; choose ring (the one
        // reqwest uses too) rather than depend on which crate features happen to be unified.
        // An error only means a provider is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let keys = Keys::new(&cfg.prefix).map_err(|e| StoreError::Protocol(e.to_string()))?;
        Ok(Self {
            keys,
            scripts: Arc::new(Scripts::new()),
            conn: Arc::new(RedisConn::new(cfg.clone())),
            batcher: Default::default(),
            cfg,
            readers: Default::default(),
            observer: std::sync::OnceLock::new(),
        })
    }

    /// Runs one script call: named for its trace span and timed for the observer under one
    /// name.
    async fn script<T: redis::FromRedisValue>(
        &self,
        name: &'static str,
        call: &connection::ScriptCall<'_>,
    ) -> Result<T, StoreError> {
        self.timed(name, self.conn.run(name, call)).await
    }

    /// Runs one store operation, reporting its latency and failure to the observer.
    async fn timed<T>(
        &self,
        script: &'static str,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        observed(self.observer.get(), script, op).await
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }
}

/// Runs one store operation, reporting its latency and failure to `observer`.
async fn observed<T>(
    observer: Option<&Arc<dyn crate::StoreObserver>>,
    script: &'static str,
    op: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = std::time::Instant::now();
    let r = op.await;
    if let Some(o) = observer {
        o.observe(script, started.elapsed().as_secs_f64(), r.is_ok());
    }
    r
}

pub(crate) fn protocol(what: &str, v: impl fmt::Debug) -> StoreError {
    StoreError::Protocol(format!("unexpected answer to {what}: {v:?}"))
}

pub(crate) fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}
