//! The newcomer's path and the binary's commands, as separate processes: `wxgate dev` and the
//! `curl` it prints; `wxgate fake-wechat` + `wxgate serve --config`; `wxgate check-config`.
//! These need the binary: `cargo build -p wxgate` first (the README's test command does it).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use wxgate_tests::*;

/// Starts `wxgate ARGS` and collects its stdout lines until `until` matches one (or 30 s pass).
fn start(args: &[&str], envs: &[(&str, &str)], until: &str) -> (ChildGuard, Vec<String>) {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = ChildGuard(cmd.spawn().expect("spawn wxgate"));
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    // Drains the child's stdout for as long as it lives, also after `start` returned: a reader
    // that stopped would close the pipe, and the child's next log line would then fail to
    // write (a fake WeChat process died that way mid-test).
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => {
                let done = line.contains(until);
                lines.push(line);
                if done {
                    return (child, lines);
                }
            }
            Err(_) => panic!(
                "wxgate {args:?} did not print `{until}`; it printed:\n{}",
                lines.join("\n")
            ),
        }
    }
}

/// The first `curl ...` command in `lines`, with its `\`-continued lines.
fn first_curl(lines: &[String]) -> String {
    let start = lines
        .iter()
        .position(|l| l.starts_with("curl "))
        .expect("a curl command is printed");
    let mut cmd = String::new();
    for l in &lines[start..] {
        cmd.push_str(l);
        cmd.push('\n');
        if !l.ends_with('\\') {
            break;
        }
    }
    cmd
}

async fn wait_ready(url: &str) {
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never became ready");
}

#[tokio::test]
async fn dev_mode_prints_a_curl_that_returns_a_msgid() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (_dev, lines) = start(&["dev", "--listen", &listen], &[], "Stop with Ctrl-C");
    let curl = first_curl(&lines);
    assert!(
        curl.contains(&format!("http://{listen}/v1/apps/demo/messages/template")),
        "{curl}"
    );
    wait_ready(&format!("http://{listen}")).await;

    let out = Command::new("sh")
        .arg("-c")
        .arg(&curl)
        .output()
        .expect("run the printed curl");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body: Value = serde_json::from_slice(&out.stdout).expect("JSON answer");
    assert_eq!(body["status"], "sent", "{body}");
    let msgid: u64 = body["msgid"].as_str().unwrap().parse().unwrap();
    assert!(msgid > 0);

    // The fake WeChat embedded in dev mode recorded the send with the same msgid.
    let fake_url = lines
        .iter()
        .find_map(|l| l.split("embedded fake WeChat ").nth(1))
        .expect("the banner names the fake's URL")
        .trim()
        .to_string();
    let calls: Vec<Value> = reqwest::get(format!("{fake_url}/_fake/calls"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sends: Vec<&Value> = calls
        .iter()
        .filter(|c| c["path"] == "/cgi-bin/message/template/send")
        .collect();
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0]["msgid"].as_u64(), Some(msgid));
}

/// `wxgate dev` and `wxgate fake-wechat` started with stdout a pipe whose reader is already
/// gone: their banner's write fails with EPIPE (Rust ignores SIGPIPE), and they must go on
/// serving. `println!` panicked there, so a restarted log reader would kill a gateway.
#[tokio::test]
async fn a_closed_stdout_does_not_stop_dev_or_the_fake() {
    for what in ["dev", "fake-wechat"] {
        let listen = format!("127.0.0.1:{}", free_port());
        let (reader, writer) = std::io::pipe().expect("a pipe");
        drop(reader);
        let mut cmd = Command::new(binary());
        cmd.args([what, "--listen", &listen])
            .stdout(writer)
            .stderr(Stdio::null())
            .stdin(Stdio::null());
        let mut child = ChildGuard(cmd.spawn().expect("spawn wxgate"));
        let probe = match what {
            "dev" => format!("http://{listen}/readyz"),
            _ => format!("http://{listen}/_fake/calls"),
        };
        let http = reqwest::Client::new();
        let mut served = 0;
        for _ in 0..100 {
            if let Some(status) = child.0.try_wait().unwrap() {
                panic!("wxgate {what} exited ({status}) with its stdout closed");
            }
            if let Ok(r) = http.get(&probe).send().await {
                assert!(r.status().is_success(), "{probe}: {}", r.status());
                served += 1;
                // Served, then still alive after a second answer: the banner (printed once
                // serving started, for the fake) has been written and did not kill it.
                if served == 2 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(served, 2, "wxgate {what} never served {probe}");
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "wxgate {what} exited with its stdout closed"
        );
    }
}

#[tokio::test]
async fn serve_with_a_config_file_against_a_fake_wechat_process() {
    let fake_port = free_port();
    let fake_listen = format!("127.0.0.1:{fake_port}");
    let (_fake, _) = start(
        &["fake-wechat", "--listen", &fake_listen],
        &[],
        "listening on",
    );

    let dir = std::env::temp_dir().join(format!(
        "wxgate-it-serve-{}-{fake_port}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("oa-secret");
    std::fs::write(
        &secret_file,
        format!("{}\n", wxgate_fake_wechat::demo::OA_SECRET),
    )
    .unwrap();
    let gw_port = free_port();
    let config = dir.join("wxgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:{gw_port}"
workers = 1
[upstream]
base_url = "http://{fake_listen}"
[apps.shop]
appid = "{appid}"
kind = "official_account"
secret_file = "{secret}"
[api_keys.orders]
key_env = "IT_ORDERS_KEY"
apps = ["shop"]
"#,
            appid = wxgate_fake_wechat::demo::OA_APPID,
            secret = secret_file.display(),
        ),
    )
    .unwrap();
    let key = "orders-key-from-env-123";
    let mut cmd = Command::new(binary());
    cmd.args(["serve", "--config"])
        .arg(&config)
        .env("IT_ORDERS_KEY", key);
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut serve = ChildGuard(cmd.spawn().unwrap());
    let url = format!("http://127.0.0.1:{gw_port}");
    wait_ready(&url).await;

    let r = reqwest::Client::new()
        .post(format!("{url}/v1/apps/shop/messages/template"))
        .bearer_auth(key)
        .json(&template_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "sent");

    // SIGTERM stops it gracefully (the log writer flushes); it exits 0.
    let pid = serve.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = serve.0.wait().unwrap();
    assert!(status.success(), "graceful exit on SIGTERM: {status:?}");
    // The JSON logs carry the request id and never the secret or the token.
    let mut logs = String::new();
    use std::io::Read;
    serve
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(
        logs.contains(body["request_id"].as_str().unwrap()),
        "{logs}"
    );
    assert!(
        !logs.contains(wxgate_fake_wechat::demo::OA_SECRET),
        "{logs}"
    );
    assert!(!logs.contains(key), "{logs}");
    let calls: Vec<Value> = reqwest::get(format!("http://{fake_listen}/_fake/calls"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for c in &calls {
        if let Some(token) = c["access_token"].as_str() {
            assert!(!logs.contains(token), "a token reached the logs");
        }
    }
}

#[test]
fn check_config_accepts_the_example_and_names_the_field_at_fault() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/wxgate.example.toml");
    let dir = std::env::temp_dir().join(format!("wxgate-it-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mini_secret = dir.join("mini");
    std::fs::write(&mini_secret, "mini-secret-value").unwrap();
    let text = std::fs::read_to_string(example).unwrap().replace(
        "/run/secrets/mini-appsecret",
        &mini_secret.display().to_string(),
    );
    let good = dir.join("good.toml");
    std::fs::write(&good, &text).unwrap();
    let out = Command::new(binary())
        .args(["check-config"])
        .arg(&good)
        .env("SHOP_APPSECRET", "shop-secret-value")
        .env("ORDERS_API_KEY", "orders-key-0123456789")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("app shop: appid wx0123456789abcdef"),
        "{stdout}"
    );
    assert!(!stdout.contains("shop-secret-value") && !stdout.contains("orders-key-0123456789"));

    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        text.replace("kind = \"mini_program\"", "kind = \"mini-program\""),
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["check-config"])
        .arg(&bad)
        .env("SHOP_APPSECRET", "shop-secret-value")
        .env("ORDERS_API_KEY", "orders-key-0123456789")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("apps.mini.kind"), "{stderr}");
}

// Multi-threaded: the test blocks its thread on the child process while the fake serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_online_compares_the_registry_with_wechat() {
    let fake = wxgate_fake_wechat::FakeWechat::start(
        wxgate_fake_wechat::FakeConfig::demo(),
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    )
    .await
    .unwrap();
    let dir = temp_dir("check-online");
    let config = |id: &str, fields: &str| {
        format!(
            r#"
[upstream]
base_url = "{}"
[apps.shop]
appid = "{}"
kind = "official_account"
token_mode = "classic"
secret = "{}"
[apps.shop.templates.shipped]
kind = "template"
id = "{id}"
fields = {fields}
"#,
            fake.base_url(),
            wxgate_fake_wechat::demo::OA_APPID,
            wxgate_fake_wechat::demo::OA_SECRET
        )
    };
    let run = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        Command::new(binary())
            .args(["check-config", "--online"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let good = run(
        "good.toml",
        config(
            wxgate_fake_wechat::demo::OA_TEMPLATE_ID,
            r#"["character_string1", "thing2", "time3"]"#,
        ),
    );
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(String::from_utf8_lossy(&good.stdout).contains("fields match"));
    let wrong_fields = run(
        "fields.toml",
        config(wxgate_fake_wechat::demo::OA_TEMPLATE_ID, r#"["thing2"]"#),
    );
    assert_eq!(wrong_fields.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&wrong_fields.stderr).contains("differ from WeChat's"));
    let missing = run("missing.toml", config("tmpl-prod-gone", r#"["thing2"]"#));
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("tmpl-prod-gone"));
    // A classic app is checked with a stable token: no classic token was fetched (that would
    // invalidate the one production uses).
    let calls = fake.state().calls();
    assert!(
        calls.iter().all(|c| c.path != "/cgi-bin/token"),
        "{calls:?}"
    );
    fake.stop().await;
}

/// The README's test command without cargo-nextest falls back to `cargo test` (forced here with
/// `WXGATE_TEST_RUNNER=cargo`, the branch a machine without nextest takes), running one test.
#[test]
fn test_command_falls_back_to_cargo_test_without_nextest() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // Only the environment a user's shell would give it: the variables the test runner sets
    // for this test (CARGO_*, NEXTEST_*, LD_LIBRARY_PATH, ...) make cargo rebuild and relink
    // target/debug/wxgate, which the cross-process tests running beside this one spawn.
    let keep = [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
        "TMPDIR",
        "USER",
        "LANG",
    ];
    let out = Command::new("bash")
        .arg("scripts/test.sh")
        .arg("api::tests::names_round_trip")
        .current_dir(&root)
        .env_clear()
        .envs(std::env::vars().filter(|(k, _)| keep.contains(&k.as_str())))
        .env("WXGATE_TEST_RUNNER", "cargo")
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/test.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("cargo-nextest not found"), "{text}");
    assert!(
        text.contains("test api::tests::names_round_trip ... ok"),
        "{text}"
    );
}

/// Every `curl` example of the README's quick start and HTTP API sections, run as written
/// (only the port changed) against `wxgate dev` — started through `WXGATE_SERVER__LISTEN`, which
/// `dev` honours — answers 2xx JSON, never an error shape.
#[tokio::test]
async fn readme_examples_work_against_dev() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (_dev, _) = start(
        &["dev"],
        &[("WXGATE_SERVER__LISTEN", listen.as_str())],
        "Stop with Ctrl-C",
    );
    wait_ready(&format!("http://{listen}")).await;
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .expect("README.md");
    let mut examples = Vec::new();
    let mut block: Option<String> = None;
    for line in readme.lines() {
        match (&mut block, line.trim_start()) {
            (None, "```sh") => block = Some(String::new()),
            (Some(b), "```") => {
                if b.trim_start().starts_with("curl ") && b.contains("127.0.0.1:8080/v1/") {
                    examples.push(b.replace("127.0.0.1:8080", &listen));
                }
                block = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    assert!(examples.len() >= 5, "README curl examples: {examples:#?}");
    for example in &examples {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{example}\n"))
            .output()
            .expect("run the example");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{example}\n-> {stdout}");
        let body: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{example}\n-> not JSON ({e}): {stdout}"));
        assert!(body.get("code").is_none(), "{example}\n-> an error: {body}");
        assert!(
            body.get("status").is_some() || body.get("access_token").is_some(),
            "{example}\n-> {body}"
        );
    }
}
