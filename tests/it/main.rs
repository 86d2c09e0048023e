//! wxgate's end-to-end tests: one binary, one module per capability.

mod cluster_drain;
mod cluster_faults;
mod cluster_inspect;
mod cluster_limits;
mod cluster_queue;
mod cluster_tokens;
mod dashboard;
mod drain;
mod hardening;
mod limits;
mod malformed;
mod openapi;
#[cfg(feature = "otlp")]
mod otlp;
mod queue;
mod quickstart;
mod redis_store;
mod sends;
mod tokens;
mod tracing;
mod wechat_errors;
