//! `wxgate inspect` and the admin API against a live three-replica cluster after known
//! traffic: the real binary reads the real Redis, and every figure is checked against the fake
//! WeChat's record of calls.

use std::collections::HashSet;
use std::process::Command;

use serde_json::Value;
use wxgate_fake_wechat::{demo, FakeConfig, Fault, FaultAction};
use wxgate_protocol::wire::paths;
use wxgate_tests::*;

use crate::cluster_tokens::{cluster, node_config};

const TPL: &str = "/v1/apps/oa/messages/template";
const ADMIN_KEY: &str = "test-key-admin-0001";

fn app_extra() -> String {
    format!(
        r#"secret = "{secret}"
[apps.oa.limits]
template_send = [{{ limit = 50, window_ms = 60000 }}]
per_recipient = [{{ limit = 5, window_ms = 60000 }}]
[apps.oa.quotas]
template_send = 1000
[api_keys.ops]
key = "{ADMIN_KEY}"
apps = ["*"]
scopes = ["admin"]
"#,
        secret = demo::OA_SECRET
    )
}

fn inspect(config: &std::path::Path, json: bool) -> String {
    let mut cmd = Command::new(binary());
    cmd.args(["inspect", "--config"]).arg(config).arg("oa");
    if json {
        cmd.arg("--json");
    }
    let out = cmd
        .env_remove("WXGATE_CONFIG")
        .output()
        .expect("run wxgate inspect");
    assert!(
        out.status.success(),
        "wxgate inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_inspect_shows_the_known_state_and_no_secret() {
    let mut fake = FakeConfig::demo();
    fake.apps[0].accept_any_openid = true;
    let c = cluster(fake, &app_extra(), 240).await;
    let http = reqwest::Client::new();
    let node = |i: usize| format!("http://127.0.0.1:{}", c.nodes[i].port());

    // Known traffic: 5 sends spread over the nodes, two with an idempotency key, then one
    // answered 45009 by WeChat, which pauses template_send on every node.
    for i in 0..5usize {
        let mut b = template_body();
        b["touser"] = format!("o-inspect-{i}").into();
        let mut req = http
            .post(format!("{}{TPL}", node(i % 3)))
            .bearer_auth(API_KEY)
            .json(&b);
        if i < 2 {
            req = req.header("Idempotency-Key", format!("inspect-{i}"));
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    c.fake.state().add_fault(Fault {
        path: Some(paths::TEMPLATE_SEND.into()),
        appid: Some(demo::OA_APPID.into()),
        count: 1,
        action: FaultAction::Errcode {
            errcode: 45009,
            errmsg: None,
        },
    });
    let mut b = template_body();
    b["touser"] = "o-inspect-paused".into();
    let r = http
        .post(format!("{}{TPL}", node(1)))
        .bearer_auth(API_KEY)
        .json(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);

    let sends = c.oa_calls(paths::TEMPLATE_SEND);
    let recipients: HashSet<String> = sends.iter().filter_map(|s| s.touser.clone()).collect();
    let token: Value = http
        .get(format!("{}/v1/apps/oa/access_token", node(0)))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let full_token = token["access_token"].as_str().unwrap().to_string();
    assert!(full_token.len() >= 16);

    let dir = temp_dir("inspect");
    let config = dir.join("inspect.toml");
    let cfg = node_config(
        &c.redis.url(),
        &c.prefix,
        &c.fake.base_url(),
        &app_extra(),
        240,
    )
    .replace("{port}", "0")
    .replace("{node_id}", "inspector");
    std::fs::write(&config, cfg).unwrap();

    let json_out = inspect(&config, true);
    let table = inspect(&config, false);
    eprintln!("wxgate inspect oa:\n{table}\nwxgate inspect --json oa:\n{json_out}");
    let s: Value = serde_json::from_str(json_out.trim()).expect("one JSON line");
    assert_eq!(s["schema_version"], 1);
    assert_eq!(s["app"], "oa");
    assert_eq!(s["backend"], "redis");
    let leader = s["leader"]["node"].as_str().expect("a leader");
    assert!(["node-a", "node-b", "node-c"].contains(&leader), "{leader}");
    let fence = s["fence"].as_u64().expect("a fence");
    assert!(fence >= 1);
    assert_eq!(s["token"]["fence"].as_u64(), Some(fence));
    assert!(s["token"]["expires_in_ms"].as_u64().unwrap() > 0);
    let w = &s["windows"][0];
    assert_eq!(w["api"], "template_send");
    assert_eq!(w["limit"], 50);
    assert_eq!(w["used"].as_u64(), Some(sends.len() as u64), "{sends:?}");
    assert_eq!(w["next_free_in_ms"], 0);
    let q = &s["quotas"][0];
    assert_eq!(q["used"].as_u64(), Some(sends.len() as u64));
    assert_eq!(q["left"].as_u64(), Some(1000 - sends.len() as u64));
    let blocks = s["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert_eq!(blocks[0]["api"], "template_send");
    assert_eq!(blocks[0]["errcode"], 45009);
    assert!(blocks[0]["left_ms"].as_u64().unwrap() > 0);
    assert_eq!(s["idempotency_records"]["count"], 2);
    assert_eq!(s["idempotency_records"]["capped"], false);
    assert_eq!(
        s["recipients_with_live_window"]["count"].as_u64(),
        Some(recipients.len() as u64)
    );
    assert_eq!(s["state_loss"]["last_detected_at_ms"], Value::Null);

    // No full token and no secret in either form.
    for (form, text) in [("json", &json_out), ("table", &table)] {
        assert!(!text.contains(&full_token), "{form} shows the full token");
        assert!(
            !text.contains(demo::OA_SECRET),
            "{form} shows the app secret"
        );
        assert!(!text.contains(API_KEY), "{form} shows an API key");
    }
    assert!(table.contains(leader) && table.contains("45009"), "{table}");

    // The admin API answers the same shape, and lifts the pause by hand.
    let state = |key: &'static str| {
        http.get(format!("{}/v1/admin/apps/oa/state", node(2)))
            .bearer_auth(key)
            .send()
    };
    assert_eq!(state(API_KEY).await.unwrap().status(), 403);
    let a: Value = state(ADMIN_KEY).await.unwrap().json().await.unwrap();
    for field in [
        "schema_version",
        "app",
        "fence",
        "idempotency_records",
        "quotas",
    ] {
        assert_eq!(a[field], s[field], "{field}");
    }
    assert_eq!(a["leader"]["node"], s["leader"]["node"]);
    assert_eq!(a["windows"][0]["used"], s["windows"][0]["used"]);
    assert_eq!(a["blocks"][0]["errcode"], 45009);
    assert!(!a.to_string().contains(&full_token));
    let lift = |api: &'static str| {
        http.delete(format!("{}/v1/admin/apps/oa/blocks/{api}", node(0)))
            .bearer_auth(ADMIN_KEY)
            .send()
    };
    assert_eq!(lift("nope").await.unwrap().status(), 400);
    assert_eq!(lift("template_send").await.unwrap().status(), 204);
    assert_eq!(lift("template_send").await.unwrap().status(), 404);
    let a: Value = state(ADMIN_KEY).await.unwrap().json().await.unwrap();
    assert_eq!(a["blocks"], Value::Array(vec![]));
    // Sends flow again.
    let r = http
        .post(format!("{}{TPL}", node(1)))
        .bearer_auth(API_KEY)
        .json(&template_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(c.nodes[0].logs().contains("pause lifted by hand"));
}
