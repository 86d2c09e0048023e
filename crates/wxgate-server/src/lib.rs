//! wxgate's HTTP API on actix-web.
//!
//! # Layout
//! - [`startup`]: [`startup::Application`] binds the listener, wires the dependencies once and
//!   runs the server until stopped. Tests and the binary share this exact path.
//! - [`drain`]: the graceful drain on SIGTERM (`/readyz` fails, serve on for the drain delay,
//!   hand off the token leases, stop accepting, let in-flight requests finish).
//! - [`route_table`]: the one list of routes ([`route_table::ROUTES`]) the app is built from.
//! - `routes`: the handlers (`/v1/apps/{app}/messages/*`, `/healthz`, `/readyz`, ...), each
//!   with its `#[utoipa::path]` description.
//! - [`openapi`]: the OpenAPI 3.1 document (`GET /openapi.json`), generated from the code.
//! - `request_id`: the middleware that gives every request an `X-Request-Id` and a log span.
//! - `auth`: bearer API keys and the apps each may use.
//! - `body`: reading and strictly decoding JSON bodies (size, content type, unknown fields).
//! - `validate`: the rules a message must pass before anything is sent.
//! - [`error`]: the one JSON error shape, and the one place an engine outcome gets an HTTP
//!   status.
//!
//! Sending itself (tokens, permits, retries, idempotency, the template registry, metrics) is
//! the engine's (`wxgate-engine`); the handlers parse, validate and resolve a request once and
//! hand it over.
//!
//! **Architecture invariant:** this is the only crate that knows actix or HTTP status codes.

mod auth;
mod body;
pub mod drain;
pub mod error;
mod http_metrics;
pub mod openapi;
pub(crate) mod queue_routes;
mod request_id;
pub mod route_table;
mod routes;
pub mod startup;
mod validate;

#[cfg(test)]
mod proptests;

pub use drain::DrainHandle;
pub use startup::{Application, BuildOptions};
pub use wxgate_engine::check_templates_online;
