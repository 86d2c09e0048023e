//! The public record of calls and the fault descriptions (both also travel as JSON over the
//! control API, so tests in other processes see the same shapes).

use serde::{Deserialize, Serialize};

/// One call the fake received on a WeChat path (anything outside `/_fake/`), whatever the
/// answer. Integration tests prove limits by counting these.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CallRecord {
    /// Arrival order, from 1; never reused, even after [`crate::FakeState::clear_calls`].
    pub seq: u64,
    /// The fake's clock when the call was handled (after any injected latency).
    pub at_ms: u64,
    pub path: String,
    /// From the query or body on the token endpoints, from the token on the other APIs
    /// (`None` when the token was missing or unknown).
    pub appid: Option<String>,
    /// The token the call presented; on the token endpoints, the token the call was given.
    pub access_token: Option<String>,
    pub errcode: i64,
    pub errmsg: String,
    /// Template send successes (including de-duplicated replays, which carry the original).
    pub msgid: Option<u64>,
    pub touser: Option<String>,
    pub template_id: Option<String>,
    pub client_msg_id: Option<String>,
    /// A template send answered with the msgid of an earlier send with the same openid and
    /// `client_msg_id`: the user got no second message.
    pub deduplicated: bool,
    /// The connection was dropped by a fault: the caller got no answer. After `"drop"` nothing
    /// was processed (errcode -1); after `"drop_after_processing"` the call was processed and
    /// `errcode`/`msgid` are what the answer would have said.
    pub dropped: bool,
    /// `"errcode"`, `"latency"`, `"drop"` or `"drop_after_processing"` when a fault applied to
    /// this call.
    pub fault: Option<String>,
    /// The W3C `traceparent` header the call carried, as received (tests check that the
    /// gateway forwards its request's trace).
    #[serde(default)]
    pub traceparent: Option<String>,
}

/// A fault to inject into the next `count` matching calls.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    /// Exact WeChat path (e.g. `/cgi-bin/message/template/send`); `None` matches any path.
    #[serde(default)]
    pub path: Option<String>,
    /// `None` matches any app (and calls whose app is not known).
    #[serde(default)]
    pub appid: Option<String>,
    /// Applies to this many matching calls, then is removed.
    #[serde(default = "one")]
    pub count: u32,
    pub action: FaultAction,
}

fn one() -> u32 {
    1
}

/// What a fault does to a call.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultAction {
    /// Answer this errcode and do nothing else (nothing sent, nothing counted against limits).
    /// `errmsg` defaults to WeChat's message for the code.
    Errcode {
        errcode: i64,
        #[serde(default)]
        errmsg: Option<String>,
    },
    /// Wait this long, then handle the call normally.
    Latency { ms: u64 },
    /// Close the connection without a complete response; nothing is processed.
    Drop,
    /// Handle the call completely and normally (limits counted, message sent, msgid assigned,
    /// `client_msg_id` kept for de-duplication, record written with the real errcode and
    /// msgid), then close the connection without answering, as [`FaultAction::Drop`] does:
    /// WeChat accepted the call but the caller never learned it.
    DropAfterProcessing,
}

impl FaultAction {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            FaultAction::Errcode { .. } => "errcode",
            FaultAction::Latency { .. } => "latency",
            FaultAction::Drop => "drop",
            FaultAction::DropAfterProcessing => "drop_after_processing",
        }
    }
}
