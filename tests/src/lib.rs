//! Helpers for wxgate's end-to-end tests.
//!
//! - [`spawn`] starts a fake WeChat and an in-process gateway, each on its own `127.0.0.1:0`
//!   port, and returns a [`TestGateway`] with a reqwest client. Every test gets its own pair, so
//!   tests run in parallel without sharing anything.
//! - [`binary`] finds the `wxgate` executable for cross-process tests (build it first:
//!   `cargo build -p wxgate`), and [`ChildGuard`] kills a spawned process on drop (or sends it
//!   SIGTERM for a graceful drain: [`ChildGuard::terminate`]).
//!
//! Proofs look at what *arrived at the fake WeChat* ([`TestGateway::calls`]), never at the
//! gateway's own view.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use wxgate_config::Settings;
use wxgate_fake_wechat::{demo, CallRecord, FakeConfig, FakeState, FakeWechat};
use wxgate_server::{Application, BuildOptions};
use wxgate_store::clock::ManualClock;

/// Key allowed to use every app.
pub const API_KEY: &str = "test-key-all-apps-0001";
/// Key allowed to use the `oa` app only.
pub const OA_ONLY_KEY: &str = "test-key-oa-only-0001";

/// Gateway configuration used by [`spawn`]: `oa` is the fake's demo Official Account, `mini` its
/// demo Mini Program. `{base_url}` and `{extra}` are filled in.
pub fn gateway_toml(base_url: &str, refresh_ahead_secs: u64, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 1
max_body_bytes = 8192

[upstream]
base_url = "{base_url}"
connect_timeout_ms = 1000
request_timeout_ms = 2000

[token]
refresh_ahead_secs = {refresh_ahead_secs}
check_interval_ms = 50
lease_ttl_ms = 1000

[apps.oa]
appid = "{oa}"
kind = "official_account"
secret = "{oa_secret}"

[apps.mini]
appid = "{mini}"
kind = "mini_program"
secret = "{mini_secret}"

[api_keys.all]
key = "{API_KEY}"
apps = ["*"]
scopes = ["send", "token"]

[api_keys.oa-only]
key = "{OA_ONLY_KEY}"
apps = ["oa"]
{extra}
"#,
        oa = demo::OA_APPID,
        oa_secret = demo::OA_SECRET,
        mini = demo::MINI_APPID,
        mini_secret = demo::MINI_SECRET,
    )
}

/// Options of [`spawn_with`].
pub struct Options {
    pub fake: FakeConfig,
    pub refresh_ahead_secs: u64,
    /// TOML appended to the gateway configuration.
    pub extra_toml: String,
    /// Replaces the gateway's upstream URL (e.g. a closed port).
    pub upstream_override: Option<String>,
    /// Replaces the `[apps.oa]` secret (e.g. a wrong one).
    pub oa_secret_override: Option<String>,
    /// `token_mode` of the `oa` app (default: stable).
    pub oa_token_mode: Option<&'static str>,
    /// Keys added to the `[apps.oa]` table (e.g. `strict_templates = true`).
    pub oa_extra: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            fake: FakeConfig::demo(),
            refresh_ahead_secs: 300,
            extra_toml: String::new(),
            upstream_override: None,
            oa_secret_override: None,
            oa_token_mode: None,
            oa_extra: String::new(),
        }
    }
}

/// Another gateway node in front of the same fake WeChat (see [`TestGateway::add_node`]).
pub struct Node {
    pub url: String,
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Node {
    pub async fn stop(self) {
        self.handle.stop(false).await;
        let _ = self.task.await;
    }
}

/// A running fake WeChat and an in-process gateway in front of it.
pub struct TestGateway {
    pub url: String,
    pub fake: FakeWechat,
    pub http: reqwest::Client,
    /// The gateway's clock (token freshness); the fake's clock is moved through `fake`.
    pub clock: Arc<ManualClock>,
    /// Starts the gateway's graceful drain, as SIGTERM does for a process.
    pub drain: wxgate_server::DrainHandle,
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A response, decoded.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Resp {
    /// Reads a response; a body that is not JSON becomes a JSON string.
    pub async fn read(resp: reqwest::Response) -> Resp {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Resp {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `code` of an error body.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

pub async fn spawn() -> TestGateway {
    spawn_with(Options::default()).await
}

pub async fn spawn_with(opts: Options) -> TestGateway {
    spawn_with_edit(opts, |toml| toml).await
}

/// Like [`spawn_with`], with `edit` applied to the finished gateway TOML (to change a key of a
/// table the standard configuration already has, e.g. `request_timeout_ms` in `[upstream]`).
pub async fn spawn_with_edit(opts: Options, edit: impl FnOnce(String) -> String) -> TestGateway {
    let fake_listener = TcpListener::bind("127.0.0.1:0").expect("bind fake");
    let fake = FakeWechat::start(opts.fake, fake_listener)
        .await
        .expect("start fake WeChat");
    let base = opts.upstream_override.unwrap_or_else(|| fake.base_url());
    let mut toml = gateway_toml(&base, opts.refresh_ahead_secs, &opts.extra_toml);
    if let Some(secret) = opts.oa_secret_override {
        toml = toml.replace(
            &format!("secret = \"{}\"", demo::OA_SECRET),
            &format!("secret = \"{secret}\""),
        );
    }
    if !opts.oa_extra.is_empty() {
        toml = toml.replacen(
            "kind = \"official_account\"",
            &format!("kind = \"official_account\"\n{}", opts.oa_extra),
            1,
        );
    }
    if let Some(mode) = opts.oa_token_mode {
        toml = toml.replacen(
            "kind = \"official_account\"",
            &format!("kind = \"official_account\"\ntoken_mode = \"{mode}\""),
            1,
        );
    }
    let toml = edit(toml);
    let settings = Settings::from_toml_str(&toml).expect("test gateway settings");
    let clock = Arc::new(ManualClock::new());
    let app = Application::build(
        settings,
        BuildOptions {
            clock: Some(clock.clone()),
            ..Default::default()
        },
    )
    .expect("build gateway");
    let url = format!("http://{}", app.local_addr());
    let handle = app.handle();
    let drain = app.drain_handle();
    let task = tokio::spawn(app.run_until_stopped());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    TestGateway {
        url,
        fake,
        http,
        clock,
        drain,
        handle,
        task,
    }
}

impl TestGateway {
    /// Starts another gateway node on its own port, in front of the same fake WeChat, with
    /// `extra_toml` appended to the standard configuration (e.g. the same `[store]`).
    pub fn add_node(&self, extra_toml: &str) -> Node {
        let toml = gateway_toml(&self.fake.base_url(), 300, extra_toml);
        let settings = Settings::from_toml_str(&toml).expect("node settings");
        let app = Application::build(settings, BuildOptions::default()).expect("build node");
        let url = format!("http://{}", app.local_addr());
        let handle = app.handle();
        let task = tokio::spawn(app.run_until_stopped());
        Node { url, handle, task }
    }

    /// POSTs JSON to another node with the all-apps key.
    pub async fn post_to(&self, node: &Node, path: &str, body: &Value) -> Resp {
        let resp = self
            .http
            .post(format!("{}{}", node.url, path))
            .bearer_auth(API_KEY)
            .json(body)
            .send()
            .await
            .expect("node answers");
        Resp::read(resp).await
    }

    pub fn fake_state(&self) -> FakeState {
        self.fake.state()
    }

    /// Every call the fake WeChat received.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.fake.state().calls()
    }

    /// Calls the fake received on `path` for the `oa` app (the demo Official Account).
    pub fn oa_calls_to(&self, path: &str) -> Vec<CallRecord> {
        self.calls_to(path)
            .into_iter()
            .filter(|c| c.appid.as_deref() == Some(demo::OA_APPID))
            .collect()
    }

    /// Calls the fake received on `path`.
    pub fn calls_to(&self, path: &str) -> Vec<CallRecord> {
        self.calls()
            .into_iter()
            .filter(|c| c.path == path)
            .collect()
    }

    /// POSTs JSON to the gateway with the all-apps key.
    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.request(
            reqwest::Method::POST,
            path,
            Some(API_KEY),
            Some(body.to_string()),
            "application/json",
        )
        .await
    }

    /// A fully controlled request: `key` None sends no Authorization header; `body` is raw.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<String>,
        content_type: &str,
    ) -> Resp {
        let mut req = self.http.request(method, format!("{}{}", self.url, path));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if !content_type.is_empty() {
            req = req.header("content-type", content_type);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        Resp::read(req.send().await.expect("gateway answers")).await
    }

    /// Polls `/readyz` until it answers 200 (every app has a usable token), or panics after
    /// `within`: tests that take Redis or the fake away first wait for the background token
    /// fetches, which may still be running when the first send has already succeeded.
    pub async fn wait_ready(&self, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let r = self
                .request(reqwest::Method::GET, "/readyz", None, None, "")
                .await;
            if r.status == 200 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not ready after {within:?}: {:?}",
                r.body
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
        let _ = self.task.await;
        self.fake.stop().await;
    }

    /// Waits until the gateway stopped on its own (after [`TestGateway::drain`]), then stops
    /// the fake; false when it still runs after `within`.
    pub async fn wait_stopped(mut self, within: Duration) -> bool {
        let done = tokio::time::timeout(within, &mut self.task).await.is_ok();
        if !done {
            self.handle.stop(false).await;
            let _ = self.task.await;
        }
        self.fake.stop().await;
        done
    }
}

/// `[store]` TOML for a standalone Redis at `url` with a fresh key prefix.
pub fn redis_store_toml(url: &str, prefix: &str, extra: &str) -> String {
    format!(
        "[store]\nkind = \"redis\"\nprefix = \"{prefix}\"\n{extra}\n[store.redis]\nurl = \"{url}\"\nconnect_timeout_ms = 300\ncommand_timeout_ms = 300\n"
    )
}

/// A fresh key prefix.
pub fn unique_prefix() -> String {
    format!(
        "wxgate-it-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// A valid template message for the demo Official Account.
pub fn template_body() -> Value {
    serde_json::json!({
        "touser": demo::USER_OPENID,
        "template_id": demo::OA_TEMPLATE_ID,
        "data": {
            "character_string1": {"value": "SO-20261127-001"},
            "thing2": {"value": "Blue mug"},
            "time3": {"value": "2026-11-27 10:30"}
        }
    })
}

/// A valid subscribe message for the demo Mini Program.
pub fn mini_subscribe_body() -> Value {
    serde_json::json!({
        "touser": demo::USER_OPENID,
        "template_id": demo::MINI_SUBSCRIBE_TEMPLATE_ID,
        "page": "pages/booking/detail?id=42",
        "data": {
            "thing1": {"value": "Dental check-up"},
            "time2": {"value": "2026-11-28 09:00"},
            "phrase3": {"value": "已预约"}
        }
    })
}

/// A valid subscribe (bizsend) message for the demo Official Account.
pub fn oa_subscribe_body() -> Value {
    serde_json::json!({
        "touser": demo::USER_OPENID,
        "template_id": demo::OA_SUBSCRIBE_TEMPLATE_ID,
        "page": "https://example.com/orders/42",
        "data": {
            "thing1": {"value": "Your order shipped"},
            "date2": {"value": "2026-11-27"}
        }
    })
}

/// The `wxgate` executable built by `cargo build -p wxgate` (same profile as the tests).
pub fn binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("debug").join("wxgate");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p wxgate` before these tests (the README's test command does)",
        path.display()
    );
    path
}

/// Kills the child process when dropped, so a failing test leaves nothing running.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Sends SIGTERM (through `kill -TERM`): a `wxgate serve` starts its graceful drain.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.0.id());
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port (bound then released; the OS does not hand it out again at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `wxgate serve` process with its own config file, port and log file.
pub struct GatewayProcess {
    pub node_id: String,
    pub url: String,
    pub log: PathBuf,
    child: Option<ChildGuard>,
    /// The configuration as given (with `{port}`), and the file written from it.
    config: String,
    config_file: PathBuf,
    /// Environment variables of the process (e.g. `WXGATE_LOG`).
    env: Vec<(String, String)>,
}

impl GatewayProcess {
    /// Starts `wxgate serve` with `config` (TOML; `{port}` and `{node_id}` are filled in).
    pub fn start(dir: &std::path::Path, node_id: &str, config: &str) -> GatewayProcess {
        Self::start_with_env(dir, node_id, config, &[])
    }

    /// Like [`GatewayProcess::start`], with environment variables for the process.
    pub fn start_with_env(
        dir: &std::path::Path,
        node_id: &str,
        config: &str,
        env: &[(&str, &str)],
    ) -> GatewayProcess {
        let mut p = GatewayProcess {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            node_id: node_id.to_string(),
            url: String::new(),
            log: dir.join(format!("{node_id}.log")),
            child: None,
            config: config.to_string(),
            config_file: dir.join(format!("{node_id}.toml")),
        };
        std::fs::File::create(&p.log).unwrap();
        p.spawn_on(free_port());
        p
    }

    /// Writes the configuration for `port` and spawns the process; its output is appended to
    /// the log.
    fn spawn_on(&mut self, port: u16) {
        std::fs::write(
            &self.config_file,
            self.config
                .replace("{port}", &port.to_string())
                .replace("{node_id}", &self.node_id),
        )
        .unwrap();
        let out = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.log)
            .unwrap();
        let child = std::process::Command::new(binary())
            .args(["serve", "--config"])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg(&self.config_file)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("spawn wxgate serve");
        self.url = format!("http://127.0.0.1:{port}");
        self.child = Some(ChildGuard(child));
    }

    /// The port of [`GatewayProcess::url`].
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("url ends with the port")
    }

    /// Starts the process again (killing it first if it runs) on the same port with the same
    /// configuration, as a supervisor restarts a crashed replica: callers find it at the same
    /// address. Does not wait for it to be ready.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn_on(self.port());
    }

    /// Like [`GatewayProcess::restart`], on a fresh port ([`GatewayProcess::url`] changes): for
    /// when the old port was taken meanwhile.
    pub fn restart_on_new_port(&mut self) {
        self.kill();
        self.spawn_on(free_port());
    }

    /// True while the process runs (false once killed, or when it exited on its own, e.g.
    /// because it could not bind its port).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.0.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits until `/healthz` answers (the HTTP server is up; `/readyz` may still be 503).
    /// False when the process exited or `within` passed.
    pub async fn wait_listening(&mut self, within: Duration) -> bool {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if !self.is_running() {
                return false;
            }
            if let Ok(r) = http.get(format!("{}/healthz", self.url)).send().await {
                if r.status().is_success() {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Kills the process at once (SIGKILL): no graceful stop, no lease release.
    pub fn kill(&mut self) {
        self.child.take();
    }

    /// Sends SIGTERM: the process drains and exits on its own (see [`GatewayProcess::wait_exit`]).
    pub fn terminate(&self) {
        self.child.as_ref().expect("the process runs").terminate();
    }

    /// Waits until the process exited; its status, or None when it still runs after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.0.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, within: Duration) {
        let http = reqwest::Client::new();
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Ok(r) = http.get(format!("{}/readyz", self.url)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} not ready; its log:\n{}",
                self.node_id,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A temp dir for one test's files.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wxgate-it-{name}-{}", unique_prefix()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The largest number of `times` (ms) within any interval of `window_ms` (half-open:
/// `[t, t + window_ms)`), and where it starts.
pub fn max_in_window(times: &[u64], window_ms: u64) -> (usize, u64) {
    let mut t = times.to_vec();
    t.sort_unstable();
    let (mut best, mut at, mut lo) = (0, t.first().copied().unwrap_or(0), 0);
    for hi in 0..t.len() {
        while t[hi] - t[lo] >= window_ms {
            lo += 1;
        }
        if hi + 1 - lo > best {
            best = hi + 1 - lo;
            at = t[lo];
        }
    }
    (best, at)
}

/// Whether a call the fake recorded notified its user: a send WeChat accepted (errcode 0) that
/// was not a de-duplicated replay of an earlier one (`client_msg_id`). A call processed and
/// then dropped (`drop_after_processing`) did notify; one answered by an injected errcode or
/// dropped unprocessed did not.
pub fn notified(c: &CallRecord) -> bool {
    c.errcode == 0 && !c.deduplicated
}

/// Notifications per recipient (`touser`) among `calls`.
pub fn notifications_by_user(calls: &[CallRecord]) -> std::collections::HashMap<String, u32> {
    let mut by_user = std::collections::HashMap::new();
    for c in calls.iter().filter(|c| notified(c)) {
        if let Some(u) = &c.touser {
            *by_user.entry(u.clone()).or_insert(0) += 1;
        }
    }
    by_user
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `within`.
pub async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
