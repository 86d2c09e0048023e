//! Starts REAL Redis topologies on loopback for tests: a standalone server ([`RedisServer`]),
//! a 3-master Cluster ([`RedisCluster`]) and a master + replica watched by 3 Sentinels
//! ([`RedisSentinel`]).
//!
//! Every start picks free ports (retrying on another port when one was taken meanwhile), uses
//! its own directory under `$TMPDIR/wxgate-redis-testkit/`, waits until the topology is really
//! usable, and kills every process it started on drop (also when the test panics). The API is
//! blocking std code without an async runtime, so it can be used from `#[tokio::test]` too.
//!
//! Needs `redis-server` and `redis-cli` on PATH (Redis 7); see [`require_redis`].

mod cluster;
mod process;
mod sentinel;
mod standalone;

pub use cluster::RedisCluster;
pub use process::require_redis;
pub use sentinel::RedisSentinel;
pub use standalone::RedisServer;

#[cfg(test)]
mod tests;
