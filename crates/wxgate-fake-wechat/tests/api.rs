//! The fake over real HTTP on 127.0.0.1:0, with reqwest, as the gateway and the integration
//! tests will use it. Time moves only through the fake's clock control, never by sleeping.

use std::collections::{BTreeMap, HashSet};
use std::net::TcpListener;
use std::time::Duration;

use serde_json::{json, Value};
use wxgate_fake_wechat::{
    demo, AppConfig, AppKind, CallRecord, FakeConfig, FakeState, FakeWechat, Fault, FaultAction,
    Limits, TemplateConfig, TemplateKind, UserConfig,
};

const TEMPLATE_SEND: &str = "/cgi-bin/message/template/send";
const SUBSCRIBE_SEND: &str = "/cgi-bin/message/subscribe/send";
const BIZSEND: &str = "/cgi-bin/message/subscribe/bizsend";

const OA: &str = "wxoa000000000001";
const OA_SECRET: &str = "oa-secret";
const MINI: &str = "wxmini00000000001";
const MINI_SECRET: &str = "mini-secret";

fn template(id: &str, kind: TemplateKind, content: &str) -> TemplateConfig {
    TemplateConfig {
        template_id: id.into(),
        kind,
        title: None,
        content: content.into(),
    }
}

fn user(openid: &str, follows: bool, grants: &[(&str, u32)], long_term: &[&str]) -> UserConfig {
    UserConfig {
        openid: openid.into(),
        follows,
        subscriptions: grants
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect::<BTreeMap<_, _>>(),
        long_term: long_term.iter().map(|s| s.to_string()).collect(),
    }
}

/// One OA and one Mini Program, unlimited, with users in every interesting state.
fn config() -> FakeConfig {
    FakeConfig {
        force_refresh_per_day: 3,
        apps: vec![
            AppConfig {
                appid: OA.into(),
                secret: OA_SECRET.into(),
                kind: AppKind::OfficialAccount,
                accept_any_openid: false,
                limits: Limits::default(),
                templates: vec![
                    template(
                        "t-order",
                        TemplateKind::Template,
                        "订单号:{{character_string1.DATA}}\n商品:{{thing2.DATA}}",
                    ),
                    template("t-oa-sub", TemplateKind::Subscribe, "{{thing1.DATA}}"),
                ],
                users: vec![
                    user("o-follower", true, &[("t-oa-sub", 1)], &[]),
                    user("o-stranger", false, &[], &["t-oa-sub"]),
                ],
            },
            AppConfig {
                appid: MINI.into(),
                secret: MINI_SECRET.into(),
                kind: AppKind::MiniProgram,
                accept_any_openid: false,
                limits: Limits::default(),
                templates: vec![template(
                    "t-mini",
                    TemplateKind::Subscribe,
                    "{{thing1.DATA}}\n{{phrase2.DATA}}",
                )],
                users: vec![
                    user("o-mini", false, &[("t-mini", 2)], &[]),
                    user("o-mini-lt", false, &[], &["t-mini"]),
                ],
            },
        ],
        ..FakeConfig::default()
    }
}

struct Fx {
    fake: FakeWechat,
    http: reqwest::Client,
    base: String,
}

impl Fx {
    async fn start(config: FakeConfig) -> Fx {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let fake = FakeWechat::start(config, listener).await.unwrap();
        let base = fake.base_url();
        Fx {
            fake,
            http: reqwest::Client::new(),
            base,
        }
    }

    fn state(&self) -> FakeState {
        self.fake.state()
    }

    async fn get(&self, path_and_query: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path_and_query}", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path_and_query}");
        r.json().await.unwrap()
    }

    async fn post(&self, path_and_query: &str, body: &Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path_and_query}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path_and_query}");
        r.json().await.unwrap()
    }

    async fn classic(&self, appid: &str, secret: &str) -> Value {
        self.get(&format!(
            "/cgi-bin/token?grant_type=client_credential&appid={appid}&secret={secret}"
        ))
        .await
    }

    async fn classic_token(&self, appid: &str, secret: &str) -> String {
        let v = self.classic(appid, secret).await;
        v["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("{v}"))
            .to_string()
    }

    async fn stable(&self, appid: &str, secret: &str, force: bool) -> Value {
        let body = json!({"grant_type": "client_credential", "appid": appid, "secret": secret, "force_refresh": force});
        self.post("/cgi-bin/stable_token", &body).await
    }

    async fn stable_token(&self, appid: &str, secret: &str) -> String {
        let v = self.stable(appid, secret, false).await;
        v["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("{v}"))
            .to_string()
    }

    async fn send(&self, path: &str, token: &str, body: &Value) -> Value {
        self.post(&format!("{path}?access_token={token}"), body)
            .await
    }

    async fn stop(self) {
        drop(self.http);
        self.fake.stop().await;
    }
}

fn order(touser: &str) -> Value {
    json!({
        "touser": touser,
        "template_id": "t-order",
        "url": "https://example.com",
        "data": {"character_string1": {"value": "SN-0001"}, "thing2": {"value": "咖啡豆"}},
    })
}

fn mini(touser: &str) -> Value {
    json!({"touser": touser, "template_id": "t-mini", "data": {"thing1": {"value": "体检"}, "phrase2": {"value": "已预约"}}})
}

fn errcode(v: &Value) -> i64 {
    v["errcode"]
        .as_i64()
        .unwrap_or_else(|| panic!("no errcode in {v}"))
}

/// Moves the fake's clock to 1 s after the start of a calendar minute, so a test has ~59 s of
/// real time before the next minute begins.
fn align_to_minute(state: &FakeState) {
    let now = state.now_ms();
    let next = (now / 60_000 + 1) * 60_000;
    state.advance_clock(Duration::from_millis(next - now + 1000));
}

/// Moves the fake's clock to 00:00:01 of the next Beijing day.
fn align_to_beijing_day(state: &FakeState) {
    let now = state.now_ms();
    let next = wxgate_protocol::time::next_beijing_midnight_ms(now);
    state.advance_clock(Duration::from_millis(next - now + 1000));
}

#[tokio::test]
async fn classic_token_keeps_only_the_previous_one_alive_during_the_overlap() {
    let fx = Fx::start(config()).await;
    let first = fx.classic(OA, OA_SECRET).await;
    assert_eq!(first["expires_in"], 7200);
    let t1 = first["access_token"].as_str().unwrap().to_string();
    assert!(t1.len() >= 100, "{t1}");
    let t2 = fx.classic_token(OA, OA_SECRET).await;
    assert_ne!(t1, t2);
    // t1 is the previous one: still valid during the overlap.
    assert_eq!(
        errcode(&fx.send(TEMPLATE_SEND, &t1, &order("o-follower")).await),
        0
    );
    let t3 = fx.classic_token(OA, OA_SECRET).await;
    // t1 is now the one before the previous: dead at once. t2 lives through the overlap.
    let v = fx.send(TEMPLATE_SEND, &t1, &order("o-follower")).await;
    assert_eq!(errcode(&v), 40001);
    assert_eq!(
        v["errmsg"],
        "invalid credential, access_token is invalid or not latest"
    );
    assert_eq!(
        errcode(&fx.send(TEMPLATE_SEND, &t2, &order("o-follower")).await),
        0
    );
    fx.state().advance_clock(Duration::from_secs(301));
    assert_eq!(
        errcode(&fx.send(TEMPLATE_SEND, &t2, &order("o-follower")).await),
        40001
    );
    assert_eq!(
        errcode(&fx.send(TEMPLATE_SEND, &t3, &order("o-follower")).await),
        0
    );
    // The stable family is untouched by classic fetches.
    let s = fx.stable_token(OA, OA_SECRET).await;
    fx.classic_token(OA, OA_SECRET).await;
    fx.classic_token(OA, OA_SECRET).await;
    assert_eq!(
        errcode(&fx.send(TEMPLATE_SEND, &s, &order("o-follower")).await),
        0
    );
    fx.stop().await;
}

#[tokio::test]
async fn token_endpoint_parameter_errors() {
    let fx = Fx::start(config()).await;
    let cases = [
        (
            "/cgi-bin/token?grant_type=password&appid=wxoa000000000001&secret=oa-secret",
            40002,
        ),
        (
            "/cgi-bin/token?grant_type=client_credential&secret=oa-secret",
            41002,
        ),
        (
            "/cgi-bin/token?grant_type=client_credential&appid=wxoa000000000001",
            41004,
        ),
        (
            "/cgi-bin/token?grant_type=client_credential&appid=wxnope&secret=x",
            40013,
        ),
        (
            "/cgi-bin/token?grant_type=client_credential&appid=wxoa000000000001&secret=wrong",
            40001,
        ),
    ];
    for (url, code) in cases {
        assert_eq!(errcode(&fx.get(url).await), code, "{url}");
    }
    let fxr = &fx;
    let stable = |body: Value| async move { fxr.post("/cgi-bin/stable_token", &body).await };
    let v =
        stable(json!({"grant_type": "client_credential", "appid": OA, "secret": "wrong"})).await;
    assert_eq!(
        (errcode(&v), v["errmsg"].as_str().unwrap()),
        (40125, "invalid appsecret")
    );
    assert_eq!(
        errcode(&stable(json!({"grant_type": "client_credential", "secret": "x"})).await),
        41002
    );
    assert_eq!(
        errcode(&stable(json!({"grant_type": "client_credential", "appid": OA})).await),
        41004
    );
    assert_eq!(
        errcode(&stable(json!({"grant_type": "x", "appid": OA, "secret": OA_SECRET})).await),
        40002
    );
    assert_eq!(
        errcode(
            &stable(json!({"grant_type": "client_credential", "appid": "wxnope", "secret": "x"}))
                .await
        ),
        40013
    );
    let r = fx
        .http
        .post(format!("{}/cgi-bin/stable_token", fx.base))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(errcode(&r.json().await.unwrap()), 47001);
    assert_eq!(errcode(&fx.get("/cgi-bin/stable_token").await), 43002);
    // Every one of them is in the record, with the appid the call named.
    let calls = fx.state().calls();
    assert_eq!(calls.len(), 12);
    assert_eq!(calls[0].appid.as_deref(), Some(OA));
    assert_eq!(calls[0].errcode, 40002);
    assert!(calls.iter().all(|c| c.access_token.is_none()));
    fx.stop().await;
}

#[tokio::test]
async fn stable_token_is_reused_with_shrinking_life_then_rotates_near_expiry() {
    let fx = Fx::start(config()).await;
    let state = fx.state();
    let a = fx.stable(OA, OA_SECRET, false).await;
    assert_eq!(a["expires_in"], 7200);
    let t = a["access_token"].as_str().unwrap().to_string();
    assert!(t.len() >= 100);
    state.advance_clock(Duration::from_secs(1000));
    let b = fx.stable(OA, OA_SECRET, false).await;
    assert_eq!(b["access_token"].as_str().unwrap(), t);
    let left = b["expires_in"].as_u64().unwrap();
    assert!((6199..=6200).contains(&left), "{left}");
    // Within 300 s of expiry a call issues a new token; the old one lives to its own expiry.
    state.advance_clock(Duration::from_secs(6000));
    let c = fx.stable(OA, OA_SECRET, false).await;
    let t2 = c["access_token"].as_str().unwrap().to_string();
    assert_ne!(t2, t);
    assert_eq!(c["expires_in"], 7200);
    assert_eq!(
        errcode(&fx.send(TEMPLATE_SEND, &t, &order("o-follower")).await),
        0
    );
    state.advance_clock(Duration::from_secs(201));
    let v = fx.send(TEMPLATE_SEND, &t, &order("o-follower")).await;
    assert_eq!(
        (errcode(&v), v["errmsg"].as_str().unwrap()),
        (42001, "access_token expired")
    );
    assert_eq!(
        errcode(&fx.send(TEMPLATE_SEND, &t2, &order("o-follower")).await),
        0
    );
    // Fetching stable tokens never invalidates a classic one.
    let classic = fx.classic_token(OA, OA_SECRET).await;
    fx.stable(OA, OA_SECRET, true).await;
    assert_eq!(
        errcode(&fx.send(TEMPLATE_SEND, &classic, &order("o-follower")).await),
        0
    );
    fx.stop().await;
}

#[tokio::test]
async fn stable_force_refresh_interval_and_daily_limit() {
    let fx = Fx::start(config()).await;
    let state = fx.state();
    align_to_beijing_day(&state);
    let t0 = fx.stable_token(OA, OA_SECRET).await;
    let f1 = fx.stable(OA, OA_SECRET, true).await;
    let t1 = f1["access_token"].as_str().unwrap().to_string();
    assert_ne!(t1, t0);
    assert_eq!(
        errcode(&fx.send(TEMPLATE_SEND, &t0, &order("o-follower")).await),
        40001,
        "force invalidates at once"
    );
    // Within 30 s of the last forced refresh: the current token comes back unchanged.
    state.advance_clock(Duration::from_secs(10));
    let f2 = fx.stable(OA, OA_SECRET, true).await;
    assert_eq!(f2["access_token"].as_str().unwrap(), t1);
    assert!(f2["expires_in"].as_u64().unwrap() < 7200);
    state.advance_clock(Duration::from_secs(30));
    let f3 = fx.stable(OA, OA_SECRET, true).await;
    assert_ne!(f3["access_token"].as_str().unwrap(), t1);
    // force_refresh_per_day = 3 (every admitted forced call counts): the 4th is refused.
    state.advance_clock(Duration::from_secs(30));
    assert_eq!(errcode(&fx.stable(OA, OA_SECRET, true).await), 45009);
    // Normal mode still works, and the next Beijing day allows forcing again.
    assert_eq!(
        fx.stable(OA, OA_SECRET, false).await["access_token"],
        f3["access_token"]
    );
    align_to_beijing_day(&state);
    assert!(fx.stable(OA, OA_SECRET, true).await["access_token"].is_string());
    fx.stop().await;
}

#[tokio::test]
async fn business_token_errors() {
    let fx = Fx::start(config()).await;
    let state = fx.state();
    let r = fx
        .http
        .post(format!("{}{TEMPLATE_SEND}", fx.base))
        .json(&order("o-follower"))
        .send()
        .await
        .unwrap();
    assert_eq!(errcode(&r.json().await.unwrap()), 41001);
    assert_eq!(
        errcode(
            &fx.send(TEMPLATE_SEND, "not-a-token", &order("o-follower"))
                .await
        ),
        40001
    );
    let classic = fx.classic_token(OA, OA_SECRET).await;
    let stable = fx.stable_token(OA, OA_SECRET).await;
    let mini_token = fx.stable_token(MINI, MINI_SECRET).await;
    // invalidate_tokens kills both families of that app only.
    state.invalidate_tokens(OA);
    assert_eq!(
        errcode(&fx.send(TEMPLATE_SEND, &classic, &order("o-follower")).await),
        40001
    );
    assert_eq!(
        errcode(&fx.send(TEMPLATE_SEND, &stable, &order("o-follower")).await),
        40001
    );
    assert_eq!(
        errcode(
            &fx.send(SUBSCRIBE_SEND, &mini_token, &mini("o-mini-lt"))
                .await
        ),
        0
    );
    // A fresh stable fetch after invalidation issues a new token.
    let stable2 = fx.stable_token(OA, OA_SECRET).await;
    assert_ne!(stable2, stable);
    assert_eq!(
        errcode(&fx.send(TEMPLATE_SEND, &stable2, &order("o-follower")).await),
        0
    );
    // Past expiry: 42001.
    state.advance_clock(Duration::from_secs(7201));
    assert_eq!(
        errcode(&fx.send(TEMPLATE_SEND, &stable2, &order("o-follower")).await),
        42001
    );
    let calls = state.calls();
    let last = calls.last().unwrap();
    assert_eq!(
        (last.appid.as_deref(), last.access_token.as_deref()),
        (Some(OA), Some(stable2.as_str()))
    );
    fx.stop().await;
}

#[tokio::test]
async fn template_send_success_msgid_and_dedup() {
    let fx = Fx::start(config()).await;
    let token = fx.stable_token(OA, OA_SECRET).await;
    let a = fx.send(TEMPLATE_SEND, &token, &order("o-follower")).await;
    assert_eq!(a["errmsg"], "ok");
    let msgid_a = a["msgid"].as_u64().unwrap();
    assert!(msgid_a > 1 << 53, "{msgid_a}");
    let b = fx.send(TEMPLATE_SEND, &token, &order("o-follower")).await;
    let msgid_b = b["msgid"].as_u64().unwrap();
    assert!(msgid_b > msgid_a);
    // client_msg_id: the same openid + id within the window gets the original msgid back.
    let mut body = order("o-follower");
    body["client_msg_id"] = json!("req-42");
    body["unknown_field_wechat_ignores"] = json!(true);
    let first = fx.send(TEMPLATE_SEND, &token, &body).await["msgid"]
        .as_u64()
        .unwrap();
    let again = fx.send(TEMPLATE_SEND, &token, &body).await;
    assert_eq!(
        (errcode(&again), again["msgid"].as_u64().unwrap()),
        (0, first)
    );
    let calls = fx.state().calls();
    let last = calls.last().unwrap();
    assert!(last.deduplicated);
    assert_eq!(last.msgid, Some(first));
    assert_eq!(last.client_msg_id.as_deref(), Some("req-42"));
    // ... but past the 600 s window it is a new message.
    fx.state().advance_clock(Duration::from_secs(601));
    let later = fx.send(TEMPLATE_SEND, &token, &body).await["msgid"]
        .as_u64()
        .unwrap();
    assert!(later > first);
    assert!(!fx.state().calls().last().unwrap().deduplicated);
    fx.stop().await;
}

#[tokio::test]
async fn validation_errors() {
    let fx = Fx::start(config()).await;
    let oa = fx.stable_token(OA, OA_SECRET).await;
    let mp = fx.stable_token(MINI, MINI_SECRET).await;
    let check = |path: &'static str, token: String, body: Value, code: i64, msg: &'static str| {
        let fx = &fx;
        async move {
            let v = fx.send(path, &token, &body).await;
            assert_eq!(errcode(&v), code, "{body}: {v}");
            if !msg.is_empty() {
                assert_eq!(v["errmsg"], msg, "{body}");
            }
        }
    };
    check(
        TEMPLATE_SEND,
        oa.clone(),
        order("o-nobody"),
        40003,
        "invalid openid",
    )
    .await;
    check(TEMPLATE_SEND, oa.clone(), order(""), 40003, "").await;
    let mut wrong_tmpl = order("o-follower");
    wrong_tmpl["template_id"] = json!("t-oa-sub");
    check(
        TEMPLATE_SEND,
        oa.clone(),
        wrong_tmpl,
        40037,
        "invalid template_id",
    )
    .await;
    let mut long_thing = order("o-follower");
    long_thing["data"]["thing2"]["value"] = json!("一二三四五六七八九十一二三四五六七八九十一");
    check(
        TEMPLATE_SEND,
        oa.clone(),
        long_thing,
        47003,
        "argument invalid! data.thing2.value invalid",
    )
    .await;
    let mut missing = order("o-follower");
    missing["data"]
        .as_object_mut()
        .unwrap()
        .remove("character_string1");
    check(
        TEMPLATE_SEND,
        oa.clone(),
        missing,
        47003,
        "argument invalid! data.character_string1.value invalid",
    )
    .await;
    let mut extra = order("o-follower");
    extra["data"]["thing9"] = json!({"value": "x"});
    check(
        TEMPLATE_SEND,
        oa.clone(),
        extra,
        47003,
        "argument invalid! data.thing9.value invalid",
    )
    .await;
    check(
        TEMPLATE_SEND,
        oa.clone(),
        json!({"touser": 5}),
        47001,
        "data format error",
    )
    .await;
    check(
        TEMPLATE_SEND,
        oa.clone(),
        order("o-stranger"),
        43004,
        "require subscribe",
    )
    .await;
    // App kind: template send and bizsend are OA APIs, subscribe send a Mini Program one.
    check(
        TEMPLATE_SEND,
        mp.clone(),
        order("o-mini"),
        48001,
        "api unauthorized",
    )
    .await;
    check(SUBSCRIBE_SEND, oa.clone(), mini("o-mini"), 48001, "").await;
    check(BIZSEND, mp.clone(), mini("o-mini"), 48001, "").await;
    // Subscribe send: one-time grants are consumed, long-term ones are not.
    check(SUBSCRIBE_SEND, mp.clone(), mini("o-mini"), 0, "ok").await;
    check(SUBSCRIBE_SEND, mp.clone(), mini("o-mini"), 0, "ok").await;
    check(
        SUBSCRIBE_SEND,
        mp.clone(),
        mini("o-mini"),
        43101,
        "user refuse to accept the msg",
    )
    .await;
    for _ in 0..3 {
        check(SUBSCRIBE_SEND, mp.clone(), mini("o-mini-lt"), 0, "ok").await;
    }
    let mut bad_phrase = mini("o-mini-lt");
    bad_phrase["data"]["phrase2"]["value"] = json!("abc");
    check(
        SUBSCRIBE_SEND,
        mp.clone(),
        bad_phrase,
        47003,
        "argument invalid! data.phrase2.value invalid",
    )
    .await;
    // Bizsend needs a follower (43004) and a subscription (43101); no msgid.
    let biz = |touser: &str| json!({"touser": touser, "template_id": "t-oa-sub", "data": {"thing1": {"value": "提醒"}}});
    let v = fx.send(BIZSEND, &oa, &biz("o-follower")).await;
    assert_eq!(v, json!({"errcode": 0, "errmsg": "ok"}));
    check(BIZSEND, oa.clone(), biz("o-follower"), 43101, "").await;
    check(BIZSEND, oa.clone(), biz("o-stranger"), 43004, "").await;
    let mut wrong = biz("o-follower");
    wrong["template_id"] = json!("t-order");
    check(BIZSEND, oa.clone(), wrong, 40037, "").await;
    fx.stop().await;
}

#[tokio::test]
async fn minute_limit_recovers_next_minute_and_daily_limit_next_day() {
    let mut c = config();
    c.apps[0].limits = Limits {
        template_send_per_minute: 3,
        template_send_per_day: 5,
        ..Limits::default()
    };
    c.apps[1].limits.subscribe_send_per_minute = 1;
    let fx = Fx::start(c).await;
    let state = fx.state();
    align_to_beijing_day(&state);
    let token = fx.stable_token(OA, OA_SECRET).await;
    // A call failing validation still counts (it passed the token and body checks).
    assert_eq!(
        errcode(&fx.send(TEMPLATE_SEND, &token, &order("o-nobody")).await),
        40003
    );
    for _ in 0..2 {
        assert_eq!(
            errcode(&fx.send(TEMPLATE_SEND, &token, &order("o-follower")).await),
            0
        );
    }
    let v = fx.send(TEMPLATE_SEND, &token, &order("o-follower")).await;
    assert_eq!(errcode(&v), 45011);
    assert_eq!(
        v["errmsg"],
        "api minute-quota reach limit mustslower retry next minute"
    );
    // Refused calls count toward nothing; the next minute admits again, up to the day's 5.
    align_to_minute(&state);
    for _ in 0..2 {
        assert_eq!(
            errcode(&fx.send(TEMPLATE_SEND, &token, &order("o-follower")).await),
            0
        );
    }
    let v = fx.send(TEMPLATE_SEND, &token, &order("o-follower")).await;
    assert_eq!(
        (errcode(&v), v["errmsg"].as_str().unwrap()),
        (45009, "reach max api daily quota limit")
    );
    align_to_minute(&state);
    assert_eq!(
        errcode(&fx.send(TEMPLATE_SEND, &token, &order("o-follower")).await),
        45009
    );
    align_to_beijing_day(&state);
    let token = fx.stable_token(OA, OA_SECRET).await;
    assert_eq!(
        errcode(&fx.send(TEMPLATE_SEND, &token, &order("o-follower")).await),
        0
    );
    // Limits are per app and API: the Mini Program has its own.
    let mp = fx.stable_token(MINI, MINI_SECRET).await;
    assert_eq!(
        errcode(&fx.send(SUBSCRIBE_SEND, &mp, &mini("o-mini-lt")).await),
        0
    );
    assert_eq!(
        errcode(&fx.send(SUBSCRIBE_SEND, &mp, &mini("o-mini-lt")).await),
        45011
    );
    // What arrived: 9 template sends, 5 of them successful.
    let sends: Vec<CallRecord> = state
        .calls()
        .into_iter()
        .filter(|c| c.path == TEMPLATE_SEND)
        .collect();
    assert_eq!(sends.len(), 9);
    assert_eq!(sends.iter().filter(|c| c.errcode == 0).count(), 5);
    fx.stop().await;
}

#[tokio::test]
async fn token_daily_limits() {
    let mut c = config();
    c.apps[0].limits = Limits {
        token_per_day: 2,
        stable_token_per_minute: 2,
        stable_token_per_day: 3,
        ..Limits::default()
    };
    let fx = Fx::start(c).await;
    let state = fx.state();
    align_to_beijing_day(&state);
    fx.classic_token(OA, OA_SECRET).await;
    fx.classic_token(OA, OA_SECRET).await;
    assert_eq!(errcode(&fx.classic(OA, OA_SECRET).await), 45009);
    fx.stable_token(OA, OA_SECRET).await;
    fx.stable_token(OA, OA_SECRET).await;
    assert_eq!(errcode(&fx.stable(OA, OA_SECRET, false).await), 45011);
    align_to_minute(&state);
    fx.stable_token(OA, OA_SECRET).await;
    assert_eq!(errcode(&fx.stable(OA, OA_SECRET, false).await), 45009);
    align_to_beijing_day(&state);
    fx.classic_token(OA, OA_SECRET).await;
    fx.stable_token(OA, OA_SECRET).await;
    fx.stop().await;
}

#[tokio::test]
async fn faults_errcode_latency_and_drop() {
    let fx = Fx::start(config()).await;
    let state = fx.state();
    let token = fx.stable_token(OA, OA_SECRET).await;
    state.add_fault(Fault {
        path: Some(TEMPLATE_SEND.into()),
        appid: None,
        count: 2,
        action: FaultAction::Errcode {
            errcode: -1,
            errmsg: None,
        },
    });
    // A fault for another app never fires here.
    state.add_fault(Fault {
        path: None,
        appid: Some(MINI.into()),
        count: 5,
        action: FaultAction::Errcode {
            errcode: 45009,
            errmsg: Some("custom".into()),
        },
    });
    for _ in 0..2 {
        let v = fx.send(TEMPLATE_SEND, &token, &order("o-follower")).await;
        assert_eq!(v, json!({"errcode": -1, "errmsg": "system error"}));
    }
    assert_eq!(
        errcode(&fx.send(TEMPLATE_SEND, &token, &order("o-follower")).await),
        0
    );
    let mp = fx.stable(MINI, MINI_SECRET, false).await;
    assert_eq!(
        mp,
        json!({"errcode": 45009, "errmsg": "custom"}),
        "token endpoints see faults too"
    );
    state.clear_faults();

    // Latency: answered normally after the delay.
    state.add_fault(Fault {
        path: Some(TEMPLATE_SEND.into()),
        appid: Some(OA.into()),
        count: 1,
        action: FaultAction::Latency { ms: 300 },
    });
    let started = std::time::Instant::now();
    assert_eq!(
        errcode(&fx.send(TEMPLATE_SEND, &token, &order("o-follower")).await),
        0
    );
    assert!(started.elapsed() >= Duration::from_millis(300));

    // Drop: the client gets an error, not a JSON answer, and nothing is sent.
    state.add_fault(Fault {
        path: Some(TEMPLATE_SEND.into()),
        appid: None,
        count: 1,
        action: FaultAction::Drop,
    });
    let url = format!("{}{TEMPLATE_SEND}?access_token={token}", fx.base);
    let result = fx.http.post(&url).json(&order("o-follower")).send().await;
    // actix closes the connection before writing anything: no status, no body.
    let error = result.expect_err("a dropped call must not answer");
    assert!(!error.is_status() && !error.is_decode(), "{error:?}");
    assert_eq!(
        errcode(&fx.send(TEMPLATE_SEND, &token, &order("o-follower")).await),
        0
    );

    let calls: Vec<CallRecord> = state
        .calls()
        .into_iter()
        .filter(|c| c.path == TEMPLATE_SEND)
        .collect();
    let faults: Vec<Option<&str>> = calls.iter().map(|c| c.fault.as_deref()).collect();
    assert_eq!(
        faults,
        [
            Some("errcode"),
            Some("errcode"),
            None,
            Some("latency"),
            Some("drop"),
            None
        ]
    );
    assert_eq!(calls[0].errcode, -1);
    assert_eq!(
        calls[0].touser.as_deref(),
        Some("o-follower"),
        "faulted calls still show whom they were for"
    );
    assert_eq!(calls[0].msgid, None);
    assert!(calls[3].msgid.is_some());
    assert!(calls[4].dropped && calls[4].msgid.is_none());
    fx.stop().await;
}

#[tokio::test]
async fn record_contents() {
    let fx = Fx::start(config()).await;
    let state = fx.state();
    let issued = fx.classic_token(OA, OA_SECRET).await;
    let mut body = order("o-follower");
    body["client_msg_id"] = json!("cm-1");
    let msgid = fx.send(TEMPLATE_SEND, &issued, &body).await["msgid"]
        .as_u64()
        .unwrap();
    let r = fx
        .http
        .get(format!("{}/cgi-bin/nope", fx.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["errcode"], 40066);
    let calls = state.calls();
    assert_eq!(calls.len(), 3);
    let (tok, send, nope) = (&calls[0], &calls[1], &calls[2]);
    assert_eq!(tok.path, "/cgi-bin/token");
    assert_eq!(
        tok.access_token.as_deref(),
        Some(issued.as_str()),
        "token calls record the issued token"
    );
    assert_eq!(
        send,
        &CallRecord {
            seq: tok.seq + 1,
            at_ms: send.at_ms,
            path: TEMPLATE_SEND.into(),
            appid: Some(OA.into()),
            access_token: Some(issued.clone()),
            errcode: 0,
            errmsg: "ok".into(),
            msgid: Some(msgid),
            touser: Some("o-follower".into()),
            template_id: Some("t-order".into()),
            client_msg_id: Some("cm-1".into()),
            deduplicated: false,
            dropped: false,
            fault: None,
            traceparent: None,
        }
    );
    assert!(send.at_ms >= tok.at_ms && send.at_ms.abs_diff(state.now_ms()) < 60_000);
    assert_eq!((nope.path.as_str(), nope.errcode), ("/cgi-bin/nope", 40066));
    state.clear_calls();
    assert!(state.calls().is_empty());
    fx.classic_token(OA, OA_SECRET).await;
    assert_eq!(
        state.calls()[0].seq,
        nope.seq + 1,
        "seq keeps counting after a clear"
    );
    fx.stop().await;
}

#[tokio::test]
async fn template_listings() {
    let fx = Fx::start(FakeConfig::demo()).await;
    let oa = fx.stable_token(demo::OA_APPID, demo::OA_SECRET).await;
    let mp = fx.stable_token(demo::MINI_APPID, demo::MINI_SECRET).await;
    let v = fx
        .get(&format!(
            "/cgi-bin/template/get_all_private_template?access_token={oa}"
        ))
        .await;
    let list: wxgate_protocol::wire::PrivateTemplateList = serde_json::from_value(v).unwrap();
    assert_eq!(list.template_list.len(), 1);
    assert_eq!(list.template_list[0].template_id, demo::OA_TEMPLATE_ID);
    assert!(list.template_list[0].content.contains("{{thing2.DATA}}"));
    let v = fx
        .get(&format!("/wxaapi/newtmpl/gettemplate?access_token={mp}"))
        .await;
    let list: wxgate_protocol::wire::NewTemplateList = serde_json::from_value(v).unwrap();
    assert_eq!((list.errcode, list.data.len()), (0, 1));
    assert_eq!(list.data[0].pri_tmpl_id, demo::MINI_SUBSCRIBE_TEMPLATE_ID);
    let v = fx
        .get(&format!("/wxaapi/newtmpl/gettemplate?access_token={oa}"))
        .await;
    assert_eq!(v["data"][0]["priTmplId"], demo::OA_SUBSCRIBE_TEMPLATE_ID);
    let v = fx
        .get(&format!(
            "/cgi-bin/template/get_all_private_template?access_token={mp}"
        ))
        .await;
    assert_eq!(errcode(&v), 48001);
    assert_eq!(
        errcode(&fx.get("/wxaapi/newtmpl/gettemplate?access_token=bad").await),
        40001
    );
    fx.stop().await;
}

#[tokio::test]
async fn demo_world_sends_every_demo_message() {
    let fx = Fx::start(FakeConfig::demo()).await;
    let oa = fx.stable_token(demo::OA_APPID, demo::OA_SECRET).await;
    let mp = fx.stable_token(demo::MINI_APPID, demo::MINI_SECRET).await;
    let v = fx
        .send(
            TEMPLATE_SEND,
            &oa,
            &json!({"touser": demo::USER_OPENID, "template_id": demo::OA_TEMPLATE_ID, "data": {
                "character_string1": {"value": "SN20240101"}, "thing2": {"value": "咖啡豆"}, "time3": {"value": "2024年1月1日 15:01"}}}),
        )
        .await;
    assert_eq!(errcode(&v), 0, "{v}");
    let v = fx
        .send(
            BIZSEND,
            &oa,
            &json!({"touser": demo::USER_OPENID, "template_id": demo::OA_SUBSCRIBE_TEMPLATE_ID, "data": {
                "thing1": {"value": "续费提醒"}, "date2": {"value": "2024年1月1日"}}}),
        )
        .await;
    assert_eq!(errcode(&v), 0, "{v}");
    let v = fx
        .send(
            SUBSCRIBE_SEND,
            &mp,
            &json!({"touser": demo::USER_OPENID, "template_id": demo::MINI_SUBSCRIBE_TEMPLATE_ID, "page": "index", "data": {
                "thing1": {"value": "体检"}, "time2": {"value": "15:01"}, "phrase3": {"value": "已预约"}}}),
        )
        .await;
    assert_eq!(errcode(&v), 0, "{v}");
    fx.stop().await;
}

#[tokio::test]
async fn accept_any_openid_for_benchmarks() {
    let mut c = FakeConfig::demo();
    c.apps[0].accept_any_openid = true;
    let fx = Fx::start(c).await;
    let oa = fx.stable_token(demo::OA_APPID, demo::OA_SECRET).await;
    let body = |touser: &str| {
        json!({"touser": touser, "template_id": demo::OA_SUBSCRIBE_TEMPLATE_ID, "data": {
            "thing1": {"value": "提醒"}, "date2": {"value": "2024年1月1日"}}})
    };
    for _ in 0..3 {
        assert_eq!(
            errcode(&fx.send(BIZSEND, &oa, &body("o-generated-123")).await),
            0
        );
    }
    assert_eq!(
        errcode(&fx.send(BIZSEND, &oa, &body("x-not-an-openid")).await),
        40003
    );
    fx.stop().await;
}

#[tokio::test]
async fn control_api_over_http() {
    let fx = Fx::start(config()).await;
    let url = |p: &str| format!("{}{p}", fx.base);
    let health: Value = fx
        .http
        .get(url("/_fake/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"status": "ok"}));
    let token = fx.stable_token(OA, OA_SECRET).await;
    let mp = fx.stable_token(MINI, MINI_SECRET).await;

    // Faults through HTTP, in the documented JSON shape.
    let fault = json!({"path": TEMPLATE_SEND, "count": 1, "action": {"errcode": {"errcode": -1, "errmsg": null}}});
    let r = fx
        .http
        .post(url("/_fake/faults"))
        .json(&fault)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(
        errcode(&fx.send(TEMPLATE_SEND, &token, &order("o-follower")).await),
        -1
    );
    let drop_all = json!({"count": 10, "action": "drop"});
    fx.http
        .post(url("/_fake/faults"))
        .json(&drop_all)
        .send()
        .await
        .unwrap();
    fx.http.delete(url("/_fake/faults")).send().await.unwrap();
    assert_eq!(
        errcode(&fx.send(TEMPLATE_SEND, &token, &order("o-follower")).await),
        0
    );

    // Calls with filters.
    fx.send(SUBSCRIBE_SEND, &mp, &mini("o-mini-lt")).await;
    let all: Vec<CallRecord> = fx
        .http
        .get(url("/_fake/calls"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all, fx.state().calls());
    assert_eq!(all.len(), 5);
    let sends: Vec<CallRecord> = fx
        .http
        .get(url(&format!("/_fake/calls?path={TEMPLATE_SEND}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sends.len(), 2);
    let mini_calls: Vec<CallRecord> = fx
        .http
        .get(url(&format!("/_fake/calls?appid={MINI}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mini_calls.len(), 2);
    let since: Vec<CallRecord> = fx
        .http
        .get(url(&format!("/_fake/calls?since_seq={}", all[2].seq)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(since, all[3..]);

    // Clock.
    let before = fx.state().now_ms();
    let v: Value = fx
        .http
        .post(url("/_fake/clock"))
        .json(&json!({"advance_ms": 7_201_000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["now_ms"].as_u64().unwrap() >= before + 7_201_000);
    assert_eq!(
        errcode(&fx.send(TEMPLATE_SEND, &token, &order("o-follower")).await),
        42001
    );

    // Invalidate tokens.
    let token = fx.stable_token(OA, OA_SECRET).await;
    let v: Value = fx
        .http
        .post(url(&format!("/_fake/apps/{OA}/invalidate_tokens")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["invalidated"], 1);
    assert_eq!(
        errcode(&fx.send(TEMPLATE_SEND, &token, &order("o-follower")).await),
        40001
    );

    // Clear, and control calls are never recorded.
    fx.http.delete(url("/_fake/calls")).send().await.unwrap();
    let none: Vec<CallRecord> = fx
        .http
        .get(url("/_fake/calls"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(none.is_empty());
    fx.stop().await;
}

#[tokio::test]
async fn max_records_drops_the_oldest() {
    let mut c = config();
    c.max_records = 3;
    let fx = Fx::start(c).await;
    for _ in 0..5 {
        fx.classic(OA, "wrong").await;
    }
    let seqs: Vec<u64> = fx.state().calls().iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [3, 4, 5]);
    fx.stop().await;
}

#[tokio::test]
async fn config_from_file() {
    let dir = std::env::temp_dir().join(format!("wxgate-fake-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fake.toml");
    std::fs::write(&path, toml_demo()).unwrap();
    let c = FakeConfig::from_toml_file(&path).unwrap();
    assert_eq!(c.apps[0].appid, demo::OA_APPID);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(FakeConfig::from_toml_file(&path).is_err());
}

fn toml_demo() -> String {
    format!(
        "[[apps]]\nappid = \"{}\"\nsecret = \"{}\"\n[[apps.templates]]\ntemplate_id = \"t\"\nkind = \"template\"\n",
        demo::OA_APPID,
        demo::OA_SECRET
    )
}

/// Moves the fake's clock to the start of the next calendar window of `window_ms` (aligned to
/// the unix epoch, as the fake counts).
fn align_to_window(state: &FakeState, window_ms: u64) {
    let now = state.now_ms();
    let next = (now / window_ms + 1) * window_ms;
    state.advance_clock(Duration::from_millis(next - now));
}

#[tokio::test]
async fn per_minute_limit_counts_per_configured_window() {
    const WINDOW: u64 = 2000;
    let mut c = config();
    c.apps[0].limits = Limits {
        template_send_per_minute: 3,
        window_ms: WINDOW,
        ..Limits::default()
    };
    let fx = Fx::start(c).await;
    let state = fx.state();
    let token = fx.stable_token(OA, OA_SECRET).await;
    // The clock also runs on its own: if real time crossed a window boundary during the four
    // calls (a very slow machine), the next window starts afresh and the round is repeated.
    let mut rounds = 0;
    let codes = loop {
        rounds += 1;
        align_to_window(&state, WINDOW);
        let since = state.calls().last().map_or(0, |c| c.seq);
        let mut codes = Vec::new();
        for _ in 0..4 {
            codes.push(errcode(
                &fx.send(TEMPLATE_SEND, &token, &order("o-follower")).await,
            ));
        }
        let windows: HashSet<u64> = state
            .calls()
            .iter()
            .filter(|c| c.seq > since)
            .map(|c| c.at_ms / WINDOW)
            .collect();
        if windows.len() == 1 || rounds == 5 {
            break codes;
        }
    };
    assert_eq!(codes, [0, 0, 0, 45011]);
    // The next 2 s window admits again: no calendar minute to wait for.
    align_to_window(&state, WINDOW);
    let v = fx.send(TEMPLATE_SEND, &token, &order("o-follower")).await;
    assert_eq!(errcode(&v), 0, "{v}");
    assert!(v["msgid"].as_u64().is_some());
    fx.stop().await;
}

#[tokio::test]
async fn toml_without_window_ms_counts_per_calendar_minute() {
    let text = format!(
        r#"
[[apps]]
appid = "{OA}"
secret = "{OA_SECRET}"
[apps.limits]
template_send_per_minute = 2
[[apps.templates]]
template_id = "t-order"
kind = "template"
content = "订单号:{{{{character_string1.DATA}}}}\n商品:{{{{thing2.DATA}}}}"
[[apps.users]]
openid = "o-follower"
follows = true
"#
    );
    let c = FakeConfig::from_toml_str(&text).unwrap();
    assert_eq!(c.apps[0].limits.window_ms, 60_000);
    assert_eq!(
        c.apps[0].limits,
        Limits {
            template_send_per_minute: 2,
            ..Limits::default()
        }
    );
    let fx = Fx::start(c).await;
    let state = fx.state();
    let token = fx.stable_token(OA, OA_SECRET).await;
    align_to_minute(&state);
    for expected in [0, 0, 45011] {
        assert_eq!(
            errcode(&fx.send(TEMPLATE_SEND, &token, &order("o-follower")).await),
            expected
        );
    }
    // 2 s (or 30 s) later is still the same calendar minute.
    for advance_ms in [2_000, 28_000] {
        state.advance_clock(Duration::from_millis(advance_ms));
        assert_eq!(
            errcode(&fx.send(TEMPLATE_SEND, &token, &order("o-follower")).await),
            45011
        );
    }
    align_to_minute(&state);
    assert_eq!(
        errcode(&fx.send(TEMPLATE_SEND, &token, &order("o-follower")).await),
        0
    );
    fx.stop().await;
}

#[tokio::test]
async fn drop_after_processing_sends_once_and_dedups_the_retry() {
    let mut c = config();
    c.apps[1].limits.subscribe_send_per_minute = 1;
    let fx = Fx::start(c).await;
    let state = fx.state();
    let token = fx.stable_token(OA, OA_SECRET).await;
    state.add_fault(Fault {
        path: Some(TEMPLATE_SEND.into()),
        appid: Some(OA.into()),
        count: 1,
        action: FaultAction::DropAfterProcessing,
    });
    let mut body = order("o-follower");
    body["client_msg_id"] = json!("req-dropped");
    let url = format!("{}{TEMPLATE_SEND}?access_token={token}", fx.base);
    let result = fx.http.post(&url).json(&body).send().await;
    let error = result.expect_err("the answer must be dropped");
    assert!(!error.is_status() && !error.is_decode(), "{error:?}");

    // WeChat processed it: the record shows the real send, with its msgid.
    let processed = state.calls().last().unwrap().clone();
    assert_eq!(processed.path, TEMPLATE_SEND);
    assert!(processed.dropped);
    assert_eq!(processed.fault.as_deref(), Some("drop_after_processing"));
    assert_eq!((processed.errcode, processed.errmsg.as_str()), (0, "ok"));
    assert!(!processed.deduplicated);
    assert_eq!(processed.client_msg_id.as_deref(), Some("req-dropped"));
    let msgid = processed.msgid.expect("a processed send has a msgid");

    // The gateway's retry with the same client_msg_id learns the original msgid.
    let again = fx.send(TEMPLATE_SEND, &token, &body).await;
    assert_eq!((errcode(&again), again["msgid"].as_u64()), (0, Some(msgid)));
    let retry = state.calls().last().unwrap().clone();
    assert!(retry.deduplicated && !retry.dropped && retry.fault.is_none());
    assert_eq!(retry.msgid, Some(msgid));
    // The user got exactly one message.
    let sent: Vec<CallRecord> = state
        .calls()
        .into_iter()
        .filter(|c| c.path == TEMPLATE_SEND && c.errcode == 0 && !c.deduplicated)
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].msgid, Some(msgid));

    // It counts against the limits like any processed call, and works over the control API.
    let mp = fx.stable_token(MINI, MINI_SECRET).await;
    align_to_minute(&state);
    let r = fx
        .http
        .post(format!("{}/_fake/faults", fx.base))
        .json(&json!({"path": SUBSCRIBE_SEND, "action": "drop_after_processing"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let url = format!("{}{SUBSCRIBE_SEND}?access_token={mp}", fx.base);
    let result = fx.http.post(&url).json(&mini("o-mini-lt")).send().await;
    assert!(result.is_err(), "{result:?}");
    let last = state.calls().last().unwrap().clone();
    assert_eq!(
        (last.errcode, last.dropped, last.fault.as_deref()),
        (0, true, Some("drop_after_processing"))
    );
    assert_eq!(
        errcode(&fx.send(SUBSCRIBE_SEND, &mp, &mini("o-mini-lt")).await),
        45011
    );
    fx.stop().await;
}
