//! `wxgate dev`: the gateway on its embedded default — in-memory state and an in-process fake
//! WeChat holding the demo apps — and the `curl` commands that exercise it.

use std::net::{SocketAddr, TcpListener};

use wxgate_config::Settings;
use wxgate_fake_wechat::{demo, FakeConfig, FakeWechat};
use wxgate_server::{Application, BuildOptions};

/// The dev API key. Dev mode only: it is printed, so it is not a secret.
pub const DEV_API_KEY: &str = "wxgate-dev-key-not-a-secret";

pub fn dev_settings(listen: SocketAddr, fake_url: &str) -> Result<Settings, String> {
    let toml = format!(
        r#"
[server]
listen = "{listen}"
workers = 1
# One node, no load balancer to leave: Ctrl-C stops at once (in-flight requests still finish).
drain_delay_secs = 0

[upstream]
base_url = "{fake_url}"

[apps.demo]
appid = "{oa}"
kind = "official_account"
secret = "{oa_secret}"

[apps.demo-mini]
appid = "{mp}"
kind = "mini_program"
secret = "{mp_secret}"

[api_keys.dev]
key = "{DEV_API_KEY}"
apps = ["*"]
scopes = ["send", "token", "admin"]
"#,
        oa = demo::OA_APPID,
        oa_secret = demo::OA_SECRET,
        mp = demo::MINI_APPID,
        mp_secret = demo::MINI_SECRET,
    );
    Settings::from_toml_str(&toml).map_err(|e| format!("dev configuration: {e}"))
}

pub async fn run(listen: SocketAddr, fake_listen: SocketAddr) -> Result<(), String> {
    let fake_listener = TcpListener::bind(fake_listen)
        .map_err(|e| format!("cannot listen on {fake_listen} for the fake WeChat: {e}"))?;
    let fake = FakeWechat::start(FakeConfig::demo(), fake_listener)
        .await
        .map_err(|e| format!("fake WeChat: {e}"))?;
    let settings = dev_settings(listen, &fake.base_url())?;
    let app = Application::build(
        settings,
        BuildOptions {
            handle_signals: true,
            ..Default::default()
        },
    )
    .map_err(|e| match e {
        wxgate_server::startup::BuildError::Bind { addr, source }
            if source.kind() == std::io::ErrorKind::AddrInUse =>
        {
            format!(
                "cannot listen on {addr}: another process uses it; choose another address with `wxgate dev --listen 127.0.0.1:8081` (or WXGATE_SERVER__LISTEN)"
            )
        }
        e => e.to_string(),
    })?;
    let base = format!("http://{}", app.local_addr());
    say!("{}", banner(&base, &fake.base_url()));
    let result = app.run_until_stopped().await.map_err(|e| e.to_string());
    fake.stop().await;
    result
}

fn banner(base: &str, fake: &str) -> String {
    format!(
        r#"
wxgate dev is running: gateway {base}, in-memory state, embedded fake WeChat {fake}

Send a template message (answer: {{"status":"sent","msgid":"...",...}}):

curl -sS {base}/v1/apps/demo/messages/template \
  -H 'Authorization: Bearer {DEV_API_KEY}' \
  -H 'Content-Type: application/json' \
  -d '{{"touser":"{user}","template_id":"{tpl}","data":{{"character_string1":{{"value":"SO-20261127-001"}},"thing2":{{"value":"Blue mug"}},"time3":{{"value":"2026-11-27 10:30"}}}}}}'

Send a Mini Program subscribe message:

curl -sS {base}/v1/apps/demo-mini/messages/subscribe \
  -H 'Authorization: Bearer {DEV_API_KEY}' \
  -H 'Content-Type: application/json' \
  -d '{{"touser":"{user}","template_id":"{mp_tpl}","data":{{"thing1":{{"value":"Dental check-up"}},"time2":{{"value":"2026-11-28 09:00"}},"phrase3":{{"value":"已预约"}}}}}}'

The cluster's access_token (the central token API; the dev key has the `token` scope):

curl -sS {base}/v1/apps/demo/access_token -H 'Authorization: Bearer {DEV_API_KEY}'

What reached the fake WeChat: curl -sS {fake}/_fake/calls
Stop with Ctrl-C.
"#,
        user = demo::USER_OPENID,
        tpl = demo::OA_TEMPLATE_ID,
        mp_tpl = demo::MINI_SUBSCRIBE_TEMPLATE_ID,
    )
}
