//! Hostile clients, with real sockets: a body trickled byte by byte, a chunked body announcing
//! a huge chunk, more connections than `server.max_connections`, garbage instead of HTTP; and a
//! `wxgate serve` with nothing configured.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use wxgate_tests::*;

/// An in-process gateway with `[server]` keys replaced.
async fn gateway(server_keys: &str) -> TestGateway {
    let keys = server_keys.to_string();
    spawn_with_edit(Options::default(), move |toml| {
        toml.replacen("[server]\n", &format!("[server]\n{keys}\n"), 1)
    })
    .await
}

fn connect(url: &str) -> TcpStream {
    let addr = url.trim_start_matches("http://");
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until the peer closes (or the read timeout); the text received.
fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn head(url: &str, extra: &str) -> String {
    let host = url.trim_start_matches("http://");
    format!(
        "POST /v1/apps/oa/messages/template HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n{extra}\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_cut_off_at_the_request_timeout() {
    let gw = gateway("request_timeout_ms = 800").await;
    let url = gw.url.clone();
    let (held, answer) = tokio::task::spawn_blocking(move || {
        let mut s = connect(&url);
        s.write_all(head(&url, "Content-Length: 200\r\n").as_bytes())
            .unwrap();
        let started = Instant::now();
        // One byte every 100 ms: 20 s for the whole body.
        let mut writer = s.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..200 {
                if writer.write_all(b" ").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let answer = read_all(&mut s);
        (started.elapsed(), answer)
    })
    .await
    .unwrap();
    println!("trickled body: answered and closed after {held:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(held < Duration::from_secs(3), "held {held:?}");
    assert!(gw
        .calls_to(wxgate_protocol::wire::paths::TEMPLATE_SEND)
        .is_empty());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_announced_chunk_is_cut_off_at_the_request_timeout() {
    let gw = gateway("request_timeout_ms = 800").await;
    let url = gw.url.clone();
    let (held, answer) = tokio::task::spawn_blocking(move || {
        let mut s = connect(&url);
        s.write_all(head(&url, "Transfer-Encoding: chunked\r\n").as_bytes())
            .unwrap();
        s.write_all(b"ffffffffffffffff\r\n{\"touser\"").unwrap();
        let started = Instant::now();
        let answer = read_all(&mut s);
        (started.elapsed(), answer)
    })
    .await
    .unwrap();
    println!("huge chunk: answered and closed after {held:?}: {answer}");
    assert!(
        answer.starts_with("HTTP/1.1 408") || answer.starts_with("HTTP/1.1 413"),
        "{answer}"
    );
    assert!(held < Duration::from_secs(3), "held {held:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_wait_until_one_closes() {
    // One worker, two connections at most.
    let gw = gateway("max_connections = 2").await;
    let url = gw.url.clone();
    let held: Vec<TcpStream> = (0..2).map(|_| connect(&url)).collect();
    // Let the server accept both (they send nothing yet).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(700))
        .build()
        .unwrap();
    let third = client.get(format!("{url}/healthz")).send().await;
    assert!(third.is_err(), "a third connection was served: {third:?}");
    drop(held);
    let mut ok = false;
    for _ in 0..30 {
        if let Ok(r) = client.get(format!("{url}/healthz")).send().await {
            ok = r.status().is_success();
            if ok {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "served once the held connections closed");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_sends_are_counted_by_their_code() {
    let gw = spawn().await;
    let r = gw
        .post(
            "/v1/apps/oa/messages/template",
            &serde_json::json!({"touser": 5}),
        )
        .await;
    assert_eq!(r.status, 400);
    let scrape = gw
        .http
        .get(format!("{}/metrics", gw.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        scrape.lines().any(|l| l.starts_with("wxgate_sends_total{")
            && l.contains("outcome=\"invalid_request\"")
            && l.contains("app=\"oa\"")),
        "{scrape}"
    );
    gw.stop().await;
}

#[test]
fn serve_without_apps_or_keys_refuses_to_start() {
    let port = free_port();
    let out = std::process::Command::new(binary())
        .arg("serve")
        .env_remove("WXGATE_CONFIG")
        .env("WXGATE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run wxgate serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no apps") && stderr.contains("api_keys"),
        "{stderr}"
    );
    assert!(stderr.contains("allow_empty_config"), "{stderr}");
}

#[tokio::test]
async fn serve_with_allow_empty_config_starts() {
    let dir = temp_dir("allow-empty");
    let mut p = GatewayProcess::start(
        &dir,
        "empty",
        "[server]\nlisten = \"127.0.0.1:{port}\"\nallow_empty_config = true\n",
    );
    assert!(
        p.wait_listening(Duration::from_secs(10)).await,
        "{}",
        p.logs()
    );
    p.kill();
}

/// Garbage instead of HTTP: the client gets its 400 from actix, and the log gets no ERROR line
/// per connection — one WARN summary per 10 s instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_protocol_errors_are_summarised_not_logged_as_errors() {
    let dir = temp_dir("protocol-errors");
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:{{port}}\"\nallow_empty_config = true\n[upstream]\nbase_url = \"http://127.0.0.1:9\"\n[api_keys.k]\nkey = \"{API_KEY}\"\napps = [\"*\"]\n"
    );
    let mut p = GatewayProcess::start(&dir, "garbage", &cfg);
    assert!(
        p.wait_listening(Duration::from_secs(10)).await,
        "{}",
        p.logs()
    );
    let url = p.url.clone();
    tokio::task::spawn_blocking(move || {
        for _ in 0..5 {
            let mut s = connect(&url);
            let _ = s.write_all(b"\x16\x03\x01 NOT HTTP AT ALL\r\n\r\n");
            let _ = read_all(&mut s);
        }
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !p.logs().contains("HTTP protocol errors") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logs = p.logs();
    p.kill();
    assert!(logs.contains("HTTP protocol errors"), "{logs}");
    assert!(
        !logs.lines().any(|l| l.contains("\"level\":\"ERROR\"")),
        "{logs}"
    );
}
