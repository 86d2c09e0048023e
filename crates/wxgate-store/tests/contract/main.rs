//! The store contract, run against every backend: the in-memory store, a standalone
//! `redis-server`, a real 3-master Redis Cluster and a Sentinel-managed master, all started on
//! loopback ports by `wxgate-redis-testkit`. Each case uses its own appid and key prefix.
//!
//! One test per backend runs every case in turn (starting a Cluster or Sentinel per case would
//! dominate CI time); a failing case names itself. Heavier scenarios (concurrency, NOSCRIPT
//! recovery, failover) are their own tests.

mod batching;
mod cases;
mod concurrency;
mod recovery;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use wxgate_store::redis_store::{RedisConfig, RedisStore, Topology};
use wxgate_store::Store;

/// A fresh prefix per store instance, so parallel tests never share keys.
pub fn prefix() -> String {
    format!("wxgate-test-{}", uuid::Uuid::new_v4().simple())
}

pub fn redis_store(topology: Topology, prefix: &str) -> Arc<dyn Store> {
    Arc::new(
        RedisStore::new(RedisConfig {
            topology,
            prefix: prefix.to_string(),
            username: None,
            password: None,
            sentinel_password: None,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(2),
            tls_ca_pem: None,
        })
        .expect("redis store"),
    )
}
