//! The WeChat protocol as wxgate speaks it, with no IO.
//!
//! # Layout
//! - [`api`]: the APIs wxgate limits and counts ([`api::Api`]), WeChat's token-endpoint quotas
//!   and its `client_msg_id` de-duplication window.
//! - [`wire`]: request and response bodies of every WeChat endpoint wxgate calls
//!   (`/cgi-bin/token`, `/cgi-bin/stable_token`, template send, subscribe send, bizsend,
//!   template listings). `msgid` is a `u64`: WeChat's ids exceed `i32` and `2^53`.
//! - [`errcode`]: the one table that classifies every errcode wxgate can meet. Behaviour, HTTP
//!   status, logs and metrics all derive from [`errcode::ErrorClass`].
//! - [`error_code`]: every `code` of the gateway's own error shape ([`error_code::ErrorCode`]).
//! - [`data_rules`]: the value rules of subscribe-message (and category-template) `data` fields,
//!   keyed by the type prefix of the field name (`thing1` is a `thing`).
//! - [`template_content`]: parses `{{name.DATA}}` placeholders out of a template's `content`.
//! - [`time`]: WeChat's calendar (minutes, and days that end at 00:00 Beijing time).
//!
//! Both the gateway and the fake WeChat use this crate, so the two cannot drift apart.

pub mod api;
pub mod data_rules;
pub mod errcode;
pub mod error_code;
pub mod template_content;
pub mod time;
pub mod wire;
