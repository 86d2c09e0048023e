//! WeChat's semantics: tokens, limits, users, templates, faults and the record, with no IO.
//!
//! One [`World`] lives behind one `std::sync::Mutex` (see [`crate::FakeState`]). Each call
//! takes the lock once, briefly, and never across an `.await`: the HTTP layer parses the
//! request before taking it and serialises the answer after releasing it. An injected latency
//! is a [`Outcome::Latency`] that the HTTP layer sleeps on before calling [`World::handle`]
//! again.
//!
//! Check order of the business APIs (sends and listings), as WeChat does it as far as known:
//! token (41001, 40001, 42001) → app kind (48001) → faults → method (43002) → body (47001) →
//! limits (45011, 45009) → de-duplication → touser (40003) → template (40037) → data (47003) →
//! follower (43004) → subscription (43101). Faults are matched after the token check, so
//! their `appid` filter and the record both know the app; a call with a bad token is answered
//! by the token check and consumes no fault. On the token endpoints faults are matched first,
//! against the appid the call names, so token fetching itself can be made to fail. A
//! `drop_after_processing` fault is taken at the same point but does not stop the call: it is
//! handled to the end as if there were no fault (and recorded so), then its answer is replaced
//! by a broken connection.
//!
//! What counts against a limit: a call counts toward its API's minute and day counters when it
//! got past the body check and both counters admitted it. Calls answered by an injected fault
//! (other than `drop_after_processing`, which counts like an unfaulted call) or refused with
//! 45011/45009 count toward nothing; calls that then fail validation (40003,
//! 40037, 47003, 43004, 43101) count, and so do de-duplicated replays (WeChat counts calls, and
//! a fake that is stricter than WeChat keeps the gateway honest). On the token endpoints a
//! call counts once its appid and secret are right; every admitted `force_refresh=true` call
//! counts toward `force_refresh_per_day`, whether or not it refreshed.
//!
//! "Minute" counters count per calendar window `floor(now_ms / window_ms)` of the fake's clock,
//! with the app's [`Limits::window_ms`] (60000 by default: WeChat's calendar minute).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, OnceLock};

use serde::Deserialize;
use wxgate_protocol::wire::{
    paths, NewTemplate, NewTemplateList, PrivateTemplate, PrivateTemplateList, GRANT_TYPE,
};
use wxgate_protocol::{data_rules, errcode, template_content, time};

use crate::config::{AppKind, FakeConfig, Limits, TemplateKind};
use crate::record::{CallRecord, Fault, FaultAction};

/// The first msgid handed out: above 2^53, so a client that parses it as an `f64` (or an
/// `i32`) breaks visibly in tests instead of in production.
pub(crate) const FIRST_MSGID: u64 = 2_918_131_553_548_107_776;

/// The WeChat endpoints the fake imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Token,
    StableToken,
    TemplateSend,
    SubscribeSend,
    Bizsend,
    PrivateTemplates,
    NewTemplates,
    Unknown,
}

impl Api {
    pub(crate) fn from_path(path: &str) -> Api {
        match path {
            paths::TOKEN => Api::Token,
            paths::STABLE_TOKEN => Api::StableToken,
            paths::TEMPLATE_SEND => Api::TemplateSend,
            paths::SUBSCRIBE_SEND => Api::SubscribeSend,
            paths::SUBSCRIBE_BIZSEND => Api::Bizsend,
            paths::GET_ALL_PRIVATE_TEMPLATE => Api::PrivateTemplates,
            paths::GET_NEW_TEMPLATES => Api::NewTemplates,
            _ => Api::Unknown,
        }
    }

    fn static_path(self) -> Option<&'static str> {
        Some(match self {
            Api::Token => paths::TOKEN,
            Api::StableToken => paths::STABLE_TOKEN,
            Api::TemplateSend => paths::TEMPLATE_SEND,
            Api::SubscribeSend => paths::SUBSCRIBE_SEND,
            Api::Bizsend => paths::SUBSCRIBE_BIZSEND,
            Api::PrivateTemplates => paths::GET_ALL_PRIVATE_TEMPLATE,
            Api::NewTemplates => paths::GET_NEW_TEMPLATES,
            Api::Unknown => return None,
        })
    }
}

/// Body of the three send APIs, parsed leniently: WeChat ignores unknown fields, and a
/// missing `touser` or `template_id` is a 40003 or 40037, not a 47001.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SendBody {
    #[serde(default)]
    touser: Option<String>,
    #[serde(default)]
    template_id: Option<String>,
    #[serde(default)]
    data: Option<BTreeMap<String, DataValue>>,
    #[serde(default)]
    client_msg_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct DataValue {
    #[serde(default)]
    value: Option<String>,
}

/// Body of `stable_token`, parsed leniently (missing fields are WeChat's 41002/41004/40002).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StableBody {
    #[serde(default)]
    grant_type: Option<String>,
    #[serde(default)]
    appid: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    force_refresh: Option<bool>,
}

/// A request as the HTTP layer parsed it, before the lock is taken.
pub(crate) struct Request<'a> {
    pub(crate) api: Api,
    pub(crate) path: &'a str,
    pub(crate) is_post: bool,
    pub(crate) params: Params<'a>,
    /// The `traceparent` header, recorded as received.
    pub(crate) traceparent: Option<&'a str>,
}

pub(crate) enum Params<'a> {
    Token {
        grant_type: Option<Cow<'a, str>>,
        appid: Option<Cow<'a, str>>,
        secret: Option<Cow<'a, str>>,
    },
    Stable(Result<StableBody, ()>),
    Send {
        access_token: Option<Cow<'a, str>>,
        body: Result<SendBody, ()>,
    },
    List {
        access_token: Option<Cow<'a, str>>,
    },
    None,
}

/// What the HTTP layer must do with a call.
pub(crate) enum Outcome {
    Answer(Answer),
    /// Sleep this long, then call [`World::handle`] again with the latency marked as applied.
    Latency(u64),
    /// Break the connection.
    Drop,
}

/// A WeChat answer, serialised by the HTTP layer.
pub(crate) enum Answer {
    Error {
        errcode: i64,
        errmsg: Cow<'static, str>,
    },
    NotFound,
    Token {
        access_token: Arc<str>,
        expires_in: u64,
    },
    Sent {
        msgid: Option<u64>,
    },
    PrivateTemplates(PrivateTemplateList),
    NewTemplates(NewTemplateList),
}

/// WeChat's own errmsg for the codes the fake answers (and the default for injected ones).
pub(crate) fn default_errmsg(code: i64) -> Cow<'static, str> {
    Cow::Borrowed(match code {
        0 => "ok",
        -1 => "system error",
        40001 => "invalid credential, access_token is invalid or not latest",
        40002 => "invalid grant_type",
        40003 => "invalid openid",
        40013 => "invalid appid",
        40014 => "invalid access_token",
        40037 => "invalid template_id",
        40066 => "invalid url",
        40125 => "invalid appsecret",
        41001 => "access_token missing",
        41002 => "appid missing",
        41004 => "appsecret missing",
        42001 => "access_token expired",
        43002 => "require POST method",
        43004 => "require subscribe",
        43101 => "user refuse to accept the msg",
        45009 => "reach max api daily quota limit",
        45011 => "api minute-quota reach limit mustslower retry next minute",
        47001 => "data format error",
        48001 => "api unauthorized",
        other => match errcode::lookup(other) {
            Some(row) => row.name,
            None => "fault",
        },
    })
}

fn fail(code: i64) -> Outcome {
    Outcome::Answer(Answer::Error {
        errcode: code,
        errmsg: default_errmsg(code),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Classic,
    Stable,
}

struct Token {
    app: usize,
    family: Family,
    expires_at_ms: u64,
    /// From this instant the token answers 40001 (superseded or invalidated); `u64::MAX` while
    /// it is the latest.
    invalid_after_ms: u64,
}

impl Token {
    fn usable(&self, now: u64) -> bool {
        now < self.expires_at_ms && now < self.invalid_after_ms
    }

    /// The error a business API answers for this token now, if any.
    fn error(&self, now: u64) -> Option<i64> {
        if now < self.expires_at_ms.min(self.invalid_after_ms) {
            None
        } else if self.invalid_after_ms < self.expires_at_ms {
            Some(40001)
        } else {
            Some(42001)
        }
    }

    fn invalidate(&mut self, at: u64) {
        self.invalid_after_ms = self.invalid_after_ms.min(at);
    }
}

/// Calls admitted in the current calendar window (a minute unless the app's
/// [`Limits::window_ms`] says otherwise) and Beijing day.
#[derive(Default)]
struct Counter {
    window: u64,
    in_window: u64,
    day: u64,
    in_day: u64,
}

impl Counter {
    /// Counts the call if both limits admit it (0 = unlimited), else answers 45011 or 45009.
    /// `per_window` applies per calendar window `floor(now / window_ms)` (`window_ms` > 0).
    fn admit(
        &mut self,
        per_window: u64,
        per_day: u64,
        window_ms: u64,
        now: u64,
    ) -> Result<(), i64> {
        let (window, day) = (now / window_ms.max(1), time::beijing_day(now));
        if self.window != window {
            self.window = window;
            self.in_window = 0;
        }
        if self.day != day {
            self.day = day;
            self.in_day = 0;
        }
        if per_window > 0 && self.in_window >= per_window {
            return Err(45011);
        }
        if per_day > 0 && self.in_day >= per_day {
            return Err(45009);
        }
        self.in_window += 1;
        self.in_day += 1;
        Ok(())
    }
}

struct Template {
    id: String,
    kind: TemplateKind,
    title: String,
    content: String,
    /// Parsed on first use, so a world with unused templates starts even if parsing panics.
    placeholders: OnceLock<Vec<String>>,
}

impl Template {
    fn placeholders(&self) -> &[String] {
        self.placeholders.get_or_init(|| {
            template_content::placeholders(&self.content)
                .into_iter()
                .map(|p| match p.strip_suffix(".DATA") {
                    Some(name) => name.to_string(),
                    None => p,
                })
                .collect()
        })
    }

    /// The first data key at fault, if any: every placeholder present with a non-empty value
    /// that passes its type's rule, and no other keys.
    fn check_data(&self, data: Option<&BTreeMap<String, DataValue>>) -> Result<(), String> {
        let empty = BTreeMap::new();
        let data = data.unwrap_or(&empty);
        let placeholders = self.placeholders();
        for key in placeholders {
            let value = data.get(key).and_then(|v| v.value.as_deref()).unwrap_or("");
            if value.is_empty() {
                return Err(key.clone());
            }
            if let Some(ty) = data_rules::field_type(key) {
                if data_rules::check_value(ty, value).is_err() {
                    return Err(key.clone());
                }
            }
        }
        match data.keys().find(|k| !placeholders.contains(k)) {
            Some(extra) => Err(extra.clone()),
            None => Ok(()),
        }
    }
}

struct User {
    follows: bool,
    grants: HashMap<String, u32>,
    long_term: HashSet<String>,
}

struct App {
    appid: Arc<str>,
    secret: String,
    kind: AppKind,
    accept_any_openid: bool,
    limits: Limits,
    /// [`Limits::effective_window_ms`], never 0.
    window_ms: u64,
    templates: Vec<Template>,
    template_index: HashMap<String, usize>,
    users: HashMap<String, User>,
    classic_current: Option<Arc<str>>,
    classic_previous: Option<Arc<str>>,
    stable_current: Option<Arc<str>>,
    last_force_ms: Option<u64>,
    force_day: u64,
    force_count: u32,
    token_counter: Counter,
    stable_counter: Counter,
    template_counter: Counter,
    subscribe_counter: Counter,
    /// `openid \n client_msg_id` → (msgid, sent at).
    dedup: HashMap<String, (u64, u64)>,
    /// Keys of `dedup` in insertion (= time) order, to expire them cheaply.
    dedup_order: VecDeque<(u64, String)>,
}

/// Internal form of a [`CallRecord`]: shares the appid and token strings instead of copying.
struct Rec {
    seq: u64,
    at_ms: u64,
    path: Cow<'static, str>,
    appid: Option<Arc<str>>,
    access_token: Option<Arc<str>>,
    errcode: i64,
    errmsg: Cow<'static, str>,
    msgid: Option<u64>,
    touser: Option<String>,
    template_id: Option<String>,
    client_msg_id: Option<String>,
    deduplicated: bool,
    dropped: bool,
    fault: Option<&'static str>,
    /// A `drop_after_processing` fault applies: process normally, then break the connection.
    drop_after_processing: bool,
    traceparent: Option<String>,
}

impl Rec {
    fn to_public(&self) -> CallRecord {
        CallRecord {
            seq: self.seq,
            at_ms: self.at_ms,
            path: self.path.to_string(),
            appid: self.appid.as_deref().map(str::to_string),
            access_token: self.access_token.as_deref().map(str::to_string),
            errcode: self.errcode,
            errmsg: self.errmsg.to_string(),
            msgid: self.msgid,
            touser: self.touser.clone(),
            template_id: self.template_id.clone(),
            client_msg_id: self.client_msg_id.clone(),
            deduplicated: self.deduplicated,
            dropped: self.dropped,
            fault: self.fault.map(str::to_string),
            traceparent: self.traceparent.clone(),
        }
    }
}

/// Which records [`World::calls`] returns.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct CallFilter {
    pub(crate) path: Option<String>,
    pub(crate) appid: Option<String>,
    pub(crate) since_seq: Option<u64>,
}

pub(crate) struct World {
    expires_in_ms: u64,
    classic_overlap_ms: u64,
    stable_rotate_before_ms: u64,
    force_refresh_per_day: u32,
    force_refresh_min_interval_ms: u64,
    dedup_window_ms: u64,
    max_records: usize,
    apps: Vec<App>,
    app_index: HashMap<Arc<str>, usize>,
    tokens: HashMap<Arc<str>, Token>,
    faults: Vec<Fault>,
    records: VecDeque<Rec>,
    next_seq: u64,
    next_msgid: u64,
    clock_offset_ms: u64,
}

fn system_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn new_token_string(family: Family) -> Arc<str> {
    use std::fmt::Write;
    let mut s = String::with_capacity(140);
    s.push_str(match family {
        Family::Classic => "fakeC_",
        Family::Stable => "fakeS_",
    });
    for _ in 0..4 {
        let _ = write!(s, "{:032x}", fastrand::u128(..));
    }
    Arc::from(s)
}

impl World {
    pub(crate) fn new(config: &FakeConfig) -> World {
        let apps: Vec<App> = config
            .apps
            .iter()
            .map(|a| App {
                appid: Arc::from(a.appid.as_str()),
                secret: a.secret.clone(),
                kind: a.kind,
                accept_any_openid: a.accept_any_openid,
                limits: a.limits.clone(),
                window_ms: a.limits.effective_window_ms(),
                templates: a
                    .templates
                    .iter()
                    .map(|t| Template {
                        id: t.template_id.clone(),
                        kind: t.kind,
                        title: t.title.clone().unwrap_or_else(|| t.template_id.clone()),
                        content: t.content.clone(),
                        placeholders: OnceLock::new(),
                    })
                    .collect(),
                template_index: a
                    .templates
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (t.template_id.clone(), i))
                    .collect(),
                users: a
                    .users
                    .iter()
                    .map(|u| {
                        let user = User {
                            follows: u.follows,
                            grants: u
                                .subscriptions
                                .iter()
                                .map(|(k, v)| (k.clone(), *v))
                                .collect(),
                            long_term: u.long_term.iter().cloned().collect(),
                        };
                        (u.openid.clone(), user)
                    })
                    .collect(),
                classic_current: None,
                classic_previous: None,
                stable_current: None,
                last_force_ms: None,
                force_day: 0,
                force_count: 0,
                token_counter: Counter::default(),
                stable_counter: Counter::default(),
                template_counter: Counter::default(),
                subscribe_counter: Counter::default(),
                dedup: HashMap::new(),
                dedup_order: VecDeque::new(),
            })
            .collect();
        let app_index = apps
            .iter()
            .enumerate()
            .map(|(i, a)| (a.appid.clone(), i))
            .collect();
        World {
            expires_in_ms: config.expires_in_secs * 1000,
            classic_overlap_ms: config.classic_overlap_secs * 1000,
            stable_rotate_before_ms: config.stable_rotate_before_secs * 1000,
            force_refresh_per_day: config.force_refresh_per_day,
            force_refresh_min_interval_ms: config.force_refresh_min_interval_secs * 1000,
            dedup_window_ms: config.dedup_window_secs * 1000,
            max_records: config.max_records.max(1),
            apps,
            app_index,
            tokens: HashMap::new(),
            faults: Vec::new(),
            records: VecDeque::new(),
            next_seq: 1,
            next_msgid: FIRST_MSGID,
            clock_offset_ms: 0,
        }
    }

    // ---- control -------------------------------------------------------------------------

    pub(crate) fn now_ms(&self) -> u64 {
        system_ms() + self.clock_offset_ms
    }

    pub(crate) fn advance_clock(&mut self, by_ms: u64) {
        self.clock_offset_ms = self.clock_offset_ms.saturating_add(by_ms);
    }

    pub(crate) fn calls(&self, filter: &CallFilter) -> Vec<CallRecord> {
        let since = filter.since_seq.unwrap_or(0);
        // Records are in seq order: skip the old ones without looking at them.
        let start = self.records.partition_point(|r| r.seq <= since);
        self.records
            .range(start..)
            .filter(|r| filter.path.as_deref().is_none_or(|p| r.path == p))
            .filter(|r| {
                filter
                    .appid
                    .as_deref()
                    .is_none_or(|a| r.appid.as_deref() == Some(a))
            })
            .map(Rec::to_public)
            .collect()
    }

    pub(crate) fn clear_calls(&mut self) {
        self.records.clear();
    }

    pub(crate) fn add_fault(&mut self, fault: Fault) {
        if fault.count > 0 {
            self.faults.push(fault);
        }
    }

    pub(crate) fn clear_faults(&mut self) {
        self.faults.clear();
    }

    /// Invalidates every token of the app; answers how many were still usable.
    pub(crate) fn invalidate_tokens(&mut self, appid: &str) -> usize {
        let Some(&app) = self.app_index.get(appid) else {
            return 0;
        };
        let now = self.now_ms();
        let mut n = 0;
        for t in self.tokens.values_mut().filter(|t| t.app == app) {
            n += usize::from(t.usable(now));
            t.invalidate(now);
        }
        n
    }

    // ---- calls ---------------------------------------------------------------------------

    /// Handles one call and records it (unless the answer is to sleep first).
    /// `latency_applied` is true on the second pass after an injected latency: faults are not
    /// matched again and the record says `fault: "latency"`.
    pub(crate) fn handle(&mut self, req: &mut Request<'_>, latency_applied: bool) -> Outcome {
        let now = self.now_ms();
        let path = match req.api.static_path() {
            Some(p) => Cow::Borrowed(p),
            None => Cow::Owned(req.path.to_string()),
        };
        let mut rec = Rec {
            seq: 0,
            at_ms: now,
            path,
            appid: None,
            access_token: None,
            errcode: 0,
            errmsg: Cow::Borrowed("ok"),
            msgid: None,
            touser: None,
            template_id: None,
            client_msg_id: None,
            deduplicated: false,
            dropped: false,
            fault: latency_applied.then_some("latency"),
            drop_after_processing: false,
            traceparent: req.traceparent.map(str::to_string),
        };
        let check_faults = !latency_applied;
        let mut outcome = match (req.api, &req.params) {
            (
                Api::Token,
                Params::Token {
                    grant_type,
                    appid,
                    secret,
                },
            ) => self.classic_token(
                now,
                check_faults,
                grant_type.as_deref(),
                appid.as_deref(),
                secret.as_deref(),
                &mut rec,
            ),
            (Api::StableToken, Params::Stable(body)) => {
                self.stable_token(now, check_faults, req.is_post, body, &mut rec)
            }
            (
                Api::TemplateSend | Api::SubscribeSend | Api::Bizsend,
                Params::Send { access_token, body },
            ) => {
                let token = access_token.as_deref();
                self.send(
                    req.api,
                    now,
                    check_faults,
                    req.is_post,
                    token,
                    body,
                    &mut rec,
                )
            }
            (Api::PrivateTemplates | Api::NewTemplates, Params::List { access_token }) => self
                .list(
                    req.api,
                    now,
                    check_faults,
                    access_token.as_deref(),
                    &mut rec,
                ),
            _ => Outcome::Answer(Answer::NotFound),
        };
        match &outcome {
            Outcome::Latency(_) => return outcome,
            Outcome::Drop => {
                rec.errcode = -1;
                rec.errmsg = Cow::Borrowed("connection dropped by an injected fault");
                rec.dropped = true;
                rec.fault = Some("drop");
            }
            Outcome::Answer(Answer::Error { errcode, errmsg }) => {
                rec.errcode = *errcode;
                rec.errmsg = errmsg.clone();
            }
            Outcome::Answer(Answer::NotFound) => {
                rec.errcode = 40066;
                rec.errmsg = default_errmsg(40066);
            }
            Outcome::Answer(_) => {}
        }
        // Processed and recorded as answered (errcode, msgid, de-duplication entry), but the
        // caller never hears it.
        if rec.drop_after_processing && matches!(outcome, Outcome::Answer(_)) {
            rec.dropped = true;
            outcome = Outcome::Drop;
        }
        // The message fields are recorded whatever the answer (a faulted or refused send
        // still shows whom it was for), moved rather than copied: the call is over.
        if let Params::Send { body: Ok(body), .. } = &mut req.params {
            rec.touser = body.touser.take();
            rec.template_id = body.template_id.take();
            rec.client_msg_id = body.client_msg_id.take();
        }
        self.push_record(rec);
        outcome
    }

    fn push_record(&mut self, mut rec: Rec) {
        rec.seq = self.next_seq;
        self.next_seq += 1;
        if self.records.len() >= self.max_records {
            self.records.pop_front();
        }
        self.records.push_back(rec);
    }

    /// Takes one use of the first matching fault and turns it into an outcome; `None` also
    /// for `drop_after_processing`, which only marks `rec` and lets the call go on.
    fn fault(&mut self, path: &str, appid: Option<&str>, rec: &mut Rec) -> Option<Outcome> {
        let i = self.faults.iter().position(|f| {
            f.count > 0
                && f.path.as_deref().is_none_or(|p| p == path)
                && f.appid.as_deref().is_none_or(|a| Some(a) == appid)
        })?;
        let f = &mut self.faults[i];
        f.count -= 1;
        let action = if f.count == 0 {
            self.faults.remove(i).action
        } else {
            f.action.clone()
        };
        rec.fault = Some(action.label());
        Some(match action {
            FaultAction::Errcode { errcode, errmsg } => Outcome::Answer(Answer::Error {
                errcode,
                errmsg: errmsg
                    .map(Cow::Owned)
                    .unwrap_or_else(|| default_errmsg(errcode)),
            }),
            FaultAction::Latency { ms } => Outcome::Latency(ms),
            FaultAction::Drop => Outcome::Drop,
            FaultAction::DropAfterProcessing => {
                rec.drop_after_processing = true;
                return None;
            }
        })
    }

    fn app_arc(&self, appid: Option<&str>) -> Option<Arc<str>> {
        let appid = appid.filter(|a| !a.is_empty())?;
        Some(match self.app_index.get_key_value(appid) {
            Some((k, _)) => k.clone(),
            None => Arc::from(appid),
        })
    }

    fn classic_token(
        &mut self,
        now: u64,
        check_faults: bool,
        grant_type: Option<&str>,
        appid: Option<&str>,
        secret: Option<&str>,
        rec: &mut Rec,
    ) -> Outcome {
        rec.appid = self.app_arc(appid);
        if check_faults {
            if let Some(o) = self.fault(paths::TOKEN, appid, rec) {
                return o;
            }
        }
        let app = match self.credentials(grant_type, appid, secret, 40001) {
            Ok(app) => app,
            Err(code) => return fail(code),
        };
        let a = &mut self.apps[app];
        if let Err(code) = a
            .token_counter
            .admit(0, a.limits.token_per_day, a.window_ms, now)
        {
            return fail(code);
        }
        // The one before the previous dies now; the previous lives through the overlap.
        if let Some(prev) = a.classic_previous.take() {
            if let Some(t) = self.tokens.get_mut(&prev) {
                t.invalidate(now);
            }
        }
        if let Some(cur) = a.classic_current.take() {
            if let Some(t) = self.tokens.get_mut(&cur) {
                t.invalidate(now + self.classic_overlap_ms);
            }
            a.classic_previous = Some(cur);
        }
        let token = self.issue(app, Family::Classic, now);
        self.apps[app].classic_current = Some(token.clone());
        rec.access_token = Some(token.clone());
        Outcome::Answer(Answer::Token {
            access_token: token,
            expires_in: self.expires_in_ms / 1000,
        })
    }

    /// The checks both token endpoints share; answers the app's index.
    fn credentials(
        &self,
        grant_type: Option<&str>,
        appid: Option<&str>,
        secret: Option<&str>,
        wrong_secret: i64,
    ) -> Result<usize, i64> {
        if grant_type != Some(GRANT_TYPE) {
            return Err(40002);
        }
        let appid = appid.filter(|s| !s.is_empty()).ok_or(41002)?;
        let secret = secret.filter(|s| !s.is_empty()).ok_or(41004)?;
        let &app = self.app_index.get(appid).ok_or(40013)?;
        if self.apps[app].secret != secret {
            return Err(wrong_secret);
        }
        Ok(app)
    }

    fn issue(&mut self, app: usize, family: Family, now: u64) -> Arc<str> {
        let token = new_token_string(family);
        self.tokens.insert(
            token.clone(),
            Token {
                app,
                family,
                expires_at_ms: now + self.expires_in_ms,
                invalid_after_ms: u64::MAX,
            },
        );
        token
    }

    fn stable_token(
        &mut self,
        now: u64,
        check_faults: bool,
        is_post: bool,
        body: &Result<StableBody, ()>,
        rec: &mut Rec,
    ) -> Outcome {
        let body = body.as_ref().ok();
        let appid = body.and_then(|b| b.appid.as_deref());
        rec.appid = self.app_arc(appid);
        if check_faults {
            if let Some(o) = self.fault(paths::STABLE_TOKEN, appid, rec) {
                return o;
            }
        }
        if !is_post {
            return fail(43002);
        }
        let Some(body) = body else {
            return fail(47001);
        };
        let app = match self.credentials(
            body.grant_type.as_deref(),
            appid,
            body.secret.as_deref(),
            40125,
        ) {
            Ok(app) => app,
            Err(code) => return fail(code),
        };
        let a = &mut self.apps[app];
        let limits = (
            a.limits.stable_token_per_minute,
            a.limits.stable_token_per_day,
        );
        if let Err(code) = a.stable_counter.admit(limits.0, limits.1, a.window_ms, now) {
            return fail(code);
        }
        let current = a
            .stable_current
            .as_ref()
            .and_then(|c| self.tokens.get_key_value(c))
            .filter(|(_, t)| t.usable(now))
            .map(|(k, t)| (k.clone(), t.expires_at_ms));
        let reuse = if body.force_refresh == Some(true) {
            let day = time::beijing_day(now);
            if a.force_day != day {
                a.force_day = day;
                a.force_count = 0;
            }
            if a.force_count >= self.force_refresh_per_day {
                return fail(45009);
            }
            a.force_count += 1;
            let too_soon = a
                .last_force_ms
                .is_some_and(|t| now.saturating_sub(t) < self.force_refresh_min_interval_ms);
            if too_soon && current.is_some() {
                current
            } else {
                a.last_force_ms = Some(now);
                // A forced refresh kills every earlier stable token of the app at once.
                for t in self.tokens.values_mut() {
                    if t.app == app && t.family == Family::Stable {
                        t.invalidate(now);
                    }
                }
                None
            }
        } else {
            current.filter(|(_, expires_at)| {
                expires_at.saturating_sub(now) > self.stable_rotate_before_ms
            })
        };
        let (token, expires_in) = match reuse {
            Some((token, expires_at)) => (token, (expires_at - now) / 1000),
            None => {
                let token = self.issue(app, Family::Stable, now);
                self.apps[app].stable_current = Some(token.clone());
                (token, self.expires_in_ms / 1000)
            }
        };
        rec.access_token = Some(token.clone());
        Outcome::Answer(Answer::Token {
            access_token: token,
            expires_in,
        })
    }

    /// The business APIs' token check; answers the app's index.
    fn check_token(&self, token: Option<&str>, now: u64, rec: &mut Rec) -> Result<usize, Outcome> {
        let token = token.filter(|t| !t.is_empty()).ok_or_else(|| fail(41001))?;
        let Some((key, t)) = self.tokens.get_key_value(token) else {
            rec.access_token = Some(Arc::from(token));
            return Err(fail(40001));
        };
        rec.access_token = Some(key.clone());
        rec.appid = Some(self.apps[t.app].appid.clone());
        match t.error(now) {
            Some(code) => Err(fail(code)),
            None => Ok(t.app),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        api: Api,
        now: u64,
        check_faults: bool,
        is_post: bool,
        token: Option<&str>,
        body: &Result<SendBody, ()>,
        rec: &mut Rec,
    ) -> Outcome {
        let app = match self.check_token(token, now, rec) {
            Ok(app) => app,
            Err(o) => return o,
        };
        let needs = if api == Api::SubscribeSend {
            AppKind::MiniProgram
        } else {
            AppKind::OfficialAccount
        };
        if self.apps[app].kind != needs {
            return fail(48001);
        }
        if check_faults {
            let path = api.static_path().unwrap_or_default();
            let appid = self.apps[app].appid.clone();
            if let Some(o) = self.fault(path, Some(&appid), rec) {
                return o;
            }
        }
        if !is_post {
            return fail(43002);
        }
        let Ok(body) = body.as_ref() else {
            return fail(47001);
        };
        let dedup_window_ms = self.dedup_window_ms;
        let a = &mut self.apps[app];
        let counted = match api {
            Api::TemplateSend => a.template_counter.admit(
                a.limits.template_send_per_minute,
                a.limits.template_send_per_day,
                a.window_ms,
                now,
            ),
            _ => a.subscribe_counter.admit(
                a.limits.subscribe_send_per_minute,
                a.limits.subscribe_send_per_day,
                a.window_ms,
                now,
            ),
        };
        if let Err(code) = counted {
            return fail(code);
        }
        let touser = body.touser.as_deref().unwrap_or("");
        // WeChat: one message per openid + client_msg_id within the window; a replay is
        // answered with the original msgid and sends nothing.
        let cmid = body.client_msg_id.as_deref().filter(|c| !c.is_empty());
        let dedup_key = match (cmid, api) {
            (Some(cmid), Api::TemplateSend) if !touser.is_empty() => {
                while let Some((at, _)) = a.dedup_order.front() {
                    if at + dedup_window_ms > now {
                        break;
                    }
                    let (at, key) = a.dedup_order.pop_front().unwrap_or_default();
                    if a.dedup.get(&key).is_some_and(|&(_, t)| t == at) {
                        a.dedup.remove(&key);
                    }
                }
                let key = format!("{touser}\n{cmid}");
                if let Some(&(msgid, _)) = a.dedup.get(&key) {
                    rec.msgid = Some(msgid);
                    rec.deduplicated = true;
                    return Outcome::Answer(Answer::Sent { msgid: Some(msgid) });
                }
                Some(key)
            }
            _ => None,
        };
        let accept_any = a.accept_any_openid && touser.starts_with('o');
        let mut user = a.users.get_mut(touser);
        if user.is_none() && !accept_any {
            return fail(40003);
        }
        let template_id = body.template_id.as_deref().unwrap_or("");
        let wanted = if api == Api::TemplateSend {
            TemplateKind::Template
        } else {
            TemplateKind::Subscribe
        };
        let template = match a.template_index.get(template_id) {
            Some(&i) if a.templates[i].kind == wanted => &a.templates[i],
            _ => return fail(40037),
        };
        if let Err(key) = template.check_data(body.data.as_ref()) {
            return Outcome::Answer(Answer::Error {
                errcode: 47003,
                errmsg: Cow::Owned(format!("argument invalid! data.{key}.value invalid")),
            });
        }
        if api != Api::SubscribeSend && !user.as_ref().map_or(accept_any, |u| u.follows) {
            return fail(43004);
        }
        if api != Api::TemplateSend {
            if let Some(u) = user.as_mut() {
                if !u.long_term.contains(template_id) {
                    match u.grants.get_mut(template_id) {
                        Some(n) if *n > 0 => *n -= 1,
                        _ => return fail(43101),
                    }
                }
            }
        }
        if api != Api::TemplateSend {
            return Outcome::Answer(Answer::Sent { msgid: None });
        }
        let msgid = self.next_msgid;
        self.next_msgid += 1;
        rec.msgid = Some(msgid);
        if let Some(key) = dedup_key {
            let a = &mut self.apps[app];
            a.dedup.insert(key.clone(), (msgid, now));
            a.dedup_order.push_back((now, key));
        }
        Outcome::Answer(Answer::Sent { msgid: Some(msgid) })
    }

    fn list(
        &mut self,
        api: Api,
        now: u64,
        check_faults: bool,
        token: Option<&str>,
        rec: &mut Rec,
    ) -> Outcome {
        let app = match self.check_token(token, now, rec) {
            Ok(app) => app,
            Err(o) => return o,
        };
        if api == Api::PrivateTemplates && self.apps[app].kind != AppKind::OfficialAccount {
            return fail(48001);
        }
        if check_faults {
            let path = api.static_path().unwrap_or_default();
            let appid = self.apps[app].appid.clone();
            if let Some(o) = self.fault(path, Some(&appid), rec) {
                return o;
            }
        }
        let templates = &self.apps[app].templates;
        Outcome::Answer(if api == Api::PrivateTemplates {
            Answer::PrivateTemplates(PrivateTemplateList {
                template_list: templates
                    .iter()
                    .filter(|t| t.kind == TemplateKind::Template)
                    .map(|t| PrivateTemplate {
                        template_id: t.id.clone(),
                        title: t.title.clone(),
                        primary_industry: String::new(),
                        deputy_industry: String::new(),
                        content: t.content.clone(),
                        example: String::new(),
                    })
                    .collect(),
            })
        } else {
            Answer::NewTemplates(NewTemplateList {
                errcode: 0,
                errmsg: "ok".into(),
                data: templates
                    .iter()
                    .filter(|t| t.kind == TemplateKind::Subscribe)
                    .map(|t| NewTemplate {
                        pri_tmpl_id: t.id.clone(),
                        title: t.title.clone(),
                        content: t.content.clone(),
                        example: String::new(),
                        kind: 2,
                        keyword_enum_value_list: Vec::new(),
                    })
                    .collect(),
            })
        })
    }
}
