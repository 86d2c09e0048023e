//! A fake WeChat API with WeChat's real semantics, fault injection, a controllable clock and a
//! record of every call it received.
//!
//! It is three things at once: the embedded upstream of `wxgate dev` (the quick start needs no
//! WeChat account), the upstream of the integration tests (which prove the gateway's limits by
//! counting what *arrived here*, the only honest place to count), and the upstream of the
//! benchmarks (so it must be fast: one state behind one briefly held mutex, no logging per
//! call).
//!
//! What it imitates (see `wechat-api.md` §1–§5): classic and stable access tokens with their
//! overlap, rotation, `force_refresh` rules and independence; token expiry (42001) and
//! invalidation (40001); per-calendar-minute and per-Beijing-day limits (45011, 45009), the
//! "minute" being configurable per app for tests ([`Limits::window_ms`]: calls count per
//! calendar window `floor(now_ms / window_ms)` of the fake's clock, 60000 by default); openid,
//! template and `data` validation (40003, 40037, 47003); followers (43004) and one-time or
//! long-term subscriptions (43101); `client_msg_id` de-duplication; 64-bit `msgid`s above
//! 2^53. The exact check order and what counts against a limit are documented in `world`.
//!
//! # Layout
//! - [`config`]: [`FakeConfig`], the world the fake starts with (TOML or code), and the ids of
//!   the quick-start world in [`demo`].
//! - `world`: the semantics, with no IO: tokens, counters, users, templates, faults and the
//!   call record, all in one struct behind one `std::sync::Mutex`.
//! - [`record`]: [`CallRecord`] and [`Fault`], the shapes tests read and write (in process or
//!   as JSON through the control API).
//! - `server`: the actix-web server ([`FakeWechat`]), the handle on its state
//!   ([`FakeState`]) and the `/_fake/` control API: `GET|DELETE /_fake/calls` (query `path`,
//!   `appid`, `since_seq`), `POST|DELETE /_fake/faults`
//!   (answer an errcode, add latency, `drop` the connection unprocessed, or
//!   `drop_after_processing`: handle the call fully, then drop the connection), `GET|POST /_fake/clock`
//!   (`{"advance_ms":N}`), `POST /_fake/apps/{appid}/invalidate_tokens`, `GET /_fake/health`.
//!
//! Every answer on a WeChat path is HTTP 200 with WeChat's JSON, except an unknown path (404,
//! `{"errcode":40066,"errmsg":"invalid url"}`, still recorded so a misrouted call shows up).

pub mod config;
pub mod record;
mod server;
mod world;

pub use config::{
    demo, AppConfig, AppKind, ConfigError, FakeConfig, Limits, TemplateConfig, TemplateKind,
    UserConfig,
};
pub use record::{CallRecord, Fault, FaultAction};
pub use server::{FakeState, FakeWechat};
