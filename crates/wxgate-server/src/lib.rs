//! wxgate's HTTP API on actix-web.
//!
//! # Layout
//! - [`startup`]: [`startup::Application`] binds the listener, wires the dependencies once and
//!   runs the server until stopped. Tests and the binary share this exact path.
//! - `routes`: the handlers (`/v1/apps/{app}/messages/*`, `/healthz`, `/readyz`).
//! - `request_id`: the middleware that gives every request an `X-Request-Id` and a log span.
//! - `auth`: bearer API keys and the apps each may use.
//! - `body`: reading and strictly decoding JSON bodies (size, content type, unknown fields).
//! - `validate`: the rules a message must pass before anything is sent.
//! - `token`: the per-node token cache in front of the shared store, with single-flight refresh.
//! - `send`: one send to WeChat, with the one-refresh-one-retry answer to a rejected token.
//! - [`error`]: the one JSON error shape, and how each failure maps to an HTTP status.
//! - [`metrics`]: the Prometheus metrics behind `GET /metrics`.
//!
//! **Architecture invariant:** this is the only crate that knows actix or HTTP status codes.

mod auth;
mod body;
pub mod error;
pub mod metrics;
mod registry;
mod request_id;
mod routes;
mod send;
pub mod startup;
mod token;
mod validate;

#[cfg(test)]
mod proptests;

pub use startup::{check_templates_online, Application, BuildOptions};
