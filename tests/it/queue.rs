//! Queued delivery on one gateway with a real `redis-server` and the fake WeChat:
//! `Prefer: respond-async` → 202 + Location → status `sent` with the msgid; bad input refused
//! with nothing queued; back-pressure (503 + Retry-After); a permanent failure dead-lettered
//! and re-driven; the memory store refuses async with 501.

use std::time::{Duration, Instant};

use serde_json::Value;
use wxgate_fake_wechat::{demo, Fault, FaultAction};
use wxgate_protocol::wire::paths;
use wxgate_redis_testkit::{require_redis, RedisServer};
use wxgate_tests::*;

const TPL: &str = "/v1/apps/oa/messages/template";
const OPS_KEY: &str = "test-key-ops-admin-0001";

fn queue_toml(redis: &RedisServer, prefix: &str, queue: &str) -> String {
    format!(
        "{}\n[queue]\nclaim_idle_ms = 1000\nblock_ms = 200\n{queue}\n[api_keys.ops]\nkey = \"{OPS_KEY}\"\napps = [\"*\"]\nscopes = [\"admin\"]\n",
        redis_store_toml(&redis.url(), prefix, "")
    )
}

async fn post_async(gw: &TestGateway, body: &Value, headers: &[(&str, &str)]) -> Resp {
    let mut req = gw
        .http
        .post(format!("{}{TPL}", gw.url))
        .bearer_auth(API_KEY)
        .header("Prefer", "respond-async")
        .json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Resp::read(req.send().await.unwrap()).await
}

async fn get(gw: &TestGateway, path: &str, key: &str) -> Resp {
    gw.request(reqwest::Method::GET, path, Some(key), None, "")
        .await
}

/// Polls the status at `location` until it is `sent` or `failed`.
async fn final_status(gw: &TestGateway, location: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = get(gw, location, API_KEY).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let st = r.body["status"].as_str().unwrap_or("").to_string();
        if st == "sent" || st == "failed" {
            return r.body;
        }
        assert!(Instant::now() < deadline, "still {st}: {:?}", r.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stream_len(redis: &RedisServer, prefix: &str) -> u64 {
    redis
        .cli(&["XLEN", &format!("{prefix}:{{{}}}:q", demo::OA_APPID)])
        .parse()
        .unwrap()
}

#[tokio::test]
async fn async_send_is_accepted_then_sent_once() {
    require_redis();
    let redis = RedisServer::start();
    let prefix = unique_prefix();
    let gw = spawn_with(Options {
        extra_toml: queue_toml(&redis, &prefix, ""),
        ..Default::default()
    })
    .await;
    gw.wait_ready(Duration::from_secs(10)).await;
    let r = post_async(&gw, &template_body(), &[("Idempotency-Key", "order-1")]).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let location = r.header("location").unwrap().to_string();
    assert_eq!(location, format!("/v1/apps/oa/messages/{id}"));
    // The same key: the same message, not a second one.
    let again = post_async(&gw, &template_body(), &[("Idempotency-Key", "order-1")]).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.body["id"], id.as_str());
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let st = final_status(&gw, &location).await;
    assert_eq!(st["status"], "sent", "{st:?}");
    assert!(st["msgid"].as_str().unwrap().parse::<u64>().is_ok());
    assert_eq!(gw.calls_to(paths::TEMPLATE_SEND).len(), 1);
    // Acknowledged entries are deleted from the stream.
    wait_until("the stream is empty", Duration::from_secs(5), || {
        stream_len(&redis, &prefix) == 0
    })
    .await;
    // Status of an unknown id: 404; another app's key cannot read an app it may not use.
    let r = get(&gw, "/v1/apps/oa/messages/nope", API_KEY).await;
    assert_eq!((r.status, r.code()), (404, "message_not_found"));
    let r = get(&gw, &location.replace("/oa/", "/mini/"), OA_ONLY_KEY).await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    // Only the key that enqueued it sees it.
    let r = get(&gw, &location, OA_ONLY_KEY).await;
    assert_eq!((r.status, r.code()), (404, "message_not_found"));
    // The queue metrics are exposed.
    let m = gw
        .request(reqwest::Method::GET, "/metrics", None, None, "")
        .await;
    let text = m.body.as_str().unwrap();
    assert!(
        text.contains("wxgate_queue_drained_total{app=\"oa\",state=\"sent\"} 1"),
        "{text}"
    );
    assert!(text.contains("wxgate_queue_depth"), "{text}");
    gw.stop().await;
}

#[tokio::test]
async fn async_bad_request_is_refused_and_nothing_is_queued() {
    require_redis();
    let redis = RedisServer::start();
    let prefix = unique_prefix();
    let gw = spawn_with(Options {
        extra_toml: queue_toml(&redis, &prefix, "callback_hosts = [\"hooks.example.com\"]"),
        ..Default::default()
    })
    .await;
    let mut bad = template_body();
    bad.as_object_mut().unwrap().remove("touser");
    let r = post_async(&gw, &bad, &[]).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let r = post_async(
        &gw,
        &template_body(),
        &[("Callback-Url", "https://evil.example.net/hook")],
    )
    .await;
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (400, Some("Callback-Url"))
    );
    assert_eq!(stream_len(&redis, &prefix), 0);
    assert!(gw.calls_to(paths::TEMPLATE_SEND).is_empty());
    // An allowed host is accepted.
    let r = post_async(
        &gw,
        &template_body(),
        &[("Callback-Url", "https://hooks.example.com/wxgate")],
    )
    .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    gw.stop().await;
}

#[tokio::test]
async fn async_backlog_full_answers_503_with_retry_after() {
    require_redis();
    let redis = RedisServer::start();
    let prefix = unique_prefix();
    // One send per minute: the first is sent, the next wait in the queue. (At stop, the node
    // waits server.shutdown_timeout_secs for the delivery waiting on its permit: 1 s here.)
    let gw = spawn_with_edit(
        Options {
            extra_toml: queue_toml(&redis, &prefix, "max_backlog = 2"),
            oa_extra: "limits = { template_send = [{ limit = 1, window_ms = 60000 }] }".into(),
            ..Default::default()
        },
        |t| t.replacen("[server]\n", "[server]\nshutdown_timeout_secs = 1\n", 1),
    )
    .await;
    let first = post_async(&gw, &template_body(), &[]).await;
    assert_eq!(first.status, 202);
    let st = final_status(&gw, first.header("location").unwrap()).await;
    assert_eq!(st["status"], "sent");
    for _ in 0..2 {
        assert_eq!(post_async(&gw, &template_body(), &[]).await.status, 202);
    }
    let r = post_async(&gw, &template_body(), &[]).await;
    assert_eq!((r.status, r.code()), (503, "queue_full"), "{:?}", r.body);
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(secs >= 1, "{secs}");
    assert_eq!(stream_len(&redis, &prefix), 2);
    gw.stop().await;
}

#[tokio::test]
async fn async_permanent_failure_is_dead_lettered_and_redriven() {
    require_redis();
    let redis = RedisServer::start();
    let prefix = unique_prefix();
    let gw = spawn_with(Options {
        extra_toml: queue_toml(&redis, &prefix, ""),
        ..Default::default()
    })
    .await;
    gw.wait_ready(Duration::from_secs(10)).await;
    gw.fake_state().add_fault(Fault {
        path: Some(paths::TEMPLATE_SEND.into()),
        appid: None,
        count: 1,
        action: FaultAction::Errcode {
            errcode: 40037,
            errmsg: None,
        },
    });
    let r = post_async(&gw, &template_body(), &[]).await;
    assert_eq!(r.status, 202);
    let id = r.body["id"].as_str().unwrap().to_string();
    let st = final_status(&gw, r.header("location").unwrap()).await;
    assert_eq!(st["status"], "failed", "{st:?}");
    assert_eq!(st["error"]["wechat_errcode"], 40037, "{st:?}");
    assert_eq!(st["error"]["retryable"], false);
    // Listed by an operator (the send key may not).
    let r = get(&gw, "/v1/admin/apps/oa/dlq", API_KEY).await;
    assert_eq!(r.status, 403);
    let r = get(&gw, "/v1/admin/apps/oa/dlq", OPS_KEY).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let letters = r.body["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["id"], id.as_str());
    assert_eq!(letters[0]["message"]["status"], "failed");
    // The same through the CLI.
    let dir = temp_dir("dlq");
    let cfg = dir.join("wxgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}\n[apps.oa]\nappid = \"{}\"\nkind = \"official_account\"\nsecret = \"{}\"\n",
            redis_store_toml(&redis.url(), &prefix, ""),
            demo::OA_APPID,
            demo::OA_SECRET
        ),
    )
    .unwrap();
    let out = std::process::Command::new(binary())
        .args(["dlq", "list", "--json", "--config"])
        .arg(&cfg)
        .arg("oa")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["dead_letters"][0]["id"], id.as_str(), "{listed}");
    assert_eq!(
        listed["dead_letters"][0]["message"]["error"]["wechat_errcode"],
        40037
    );
    // Inspection shows the queue: the admin state and `wxgate inspect --json`.
    let r = get(&gw, "/v1/admin/apps/oa/state", OPS_KEY).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["queue"]["dead_letters"], 1, "{:?}", r.body);
    assert_eq!(r.body["queue"]["depth"], 0, "{:?}", r.body);
    let out = std::process::Command::new(binary())
        .args(["inspect", "--json", "--config"])
        .arg(&cfg)
        .arg("oa")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(state["queue"]["dead_letters"], 1, "{state}");
    // Re-driven (the template is fixed now): sent, and out of the dead letters.
    let r = gw
        .request(
            reqwest::Method::POST,
            "/v1/admin/apps/oa/dlq/redrive",
            Some(OPS_KEY),
            Some(serde_json::json!({ "ids": [id] }).to_string()),
            "application/json",
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["redriven"][0], id.as_str());
    let st = final_status(&gw, &format!("/v1/apps/oa/messages/{id}")).await;
    assert_eq!(st["status"], "sent", "{st:?}");
    let r = get(&gw, "/v1/admin/apps/oa/dlq", OPS_KEY).await;
    assert!(r.body["dead_letters"].as_array().unwrap().is_empty());
    let sends = gw.calls_to(paths::TEMPLATE_SEND);
    assert_eq!(sends.len(), 2);
    assert_eq!(sends.iter().filter(|c| notified(c)).count(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn async_on_the_memory_store_is_501() {
    let gw = spawn().await;
    let r = post_async(&gw, &template_body(), &[]).await;
    assert_eq!(
        (r.status, r.code()),
        (501, "queue_unavailable"),
        "{:?}",
        r.body
    );
    assert!(gw.calls_to(paths::TEMPLATE_SEND).is_empty());
    gw.stop().await;
}

/// A one-shot HTTP receiver: the body of the first POST, answered 200.
async fn receive_one_post(listener: tokio::net::TcpListener) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut sock, _) = listener.accept().await.unwrap();
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed early");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await
                    .unwrap();
                return serde_json::from_slice(&buf[end + 4..end + 4 + len]).unwrap();
            }
        }
    }
}

#[tokio::test]
async fn async_retryable_failure_is_retried_and_the_callback_gets_the_final_status() {
    require_redis();
    let redis = RedisServer::start();
    let prefix = unique_prefix();
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = hook.local_addr().unwrap();
    let received = tokio::spawn(receive_one_post(hook));
    let gw = spawn_with(Options {
        extra_toml: queue_toml(
            &redis,
            &prefix,
            &format!("callback_hosts = [\"127.0.0.1:{}\"]", hook_addr.port()),
        ),
        ..Default::default()
    })
    .await;
    gw.wait_ready(Duration::from_secs(10)).await;
    // WeChat busy for every retry of the first delivery (retry.max_attempts = 3).
    gw.fake_state().add_fault(Fault {
        path: Some(paths::TEMPLATE_SEND.into()),
        appid: None,
        count: 3,
        action: FaultAction::Errcode {
            errcode: -1,
            errmsg: None,
        },
    });
    let r = post_async(
        &gw,
        &template_body(),
        &[("Callback-Url", &format!("http://{hook_addr}/wxgate-done"))],
    )
    .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    // The entry stays pending after the first delivery fails, and is claimed again once idle.
    let st = final_status(&gw, r.header("location").unwrap()).await;
    assert_eq!(st["status"], "sent", "{st:?}");
    assert_eq!(st["attempts"], 2, "{st:?}");
    let sends = gw.calls_to(paths::TEMPLATE_SEND);
    assert_eq!(sends.len(), 4);
    assert_eq!(sends.iter().filter(|c| notified(c)).count(), 1);
    // Every attempt carried the same client_msg_id (WeChat de-duplicates repeats).
    let cmids: std::collections::HashSet<_> =
        sends.iter().map(|c| c.client_msg_id.clone()).collect();
    assert_eq!(cmids.len(), 1, "{cmids:?}");
    let posted = tokio::time::timeout(Duration::from_secs(10), received)
        .await
        .expect("the callback arrives")
        .unwrap();
    assert_eq!(posted["id"], id.as_str());
    assert_eq!(posted["status"], "sent");
    assert_eq!(posted["msgid"], st["msgid"]);
    gw.stop().await;
}

#[tokio::test]
async fn async_attempts_exhausted_is_failed_and_dead_lettered() {
    require_redis();
    let redis = RedisServer::start();
    let prefix = unique_prefix();
    let gw = spawn_with(Options {
        extra_toml: queue_toml(&redis, &prefix, "max_attempts = 2"),
        ..Default::default()
    })
    .await;
    gw.wait_ready(Duration::from_secs(10)).await;
    // WeChat busy for every call of two deliveries (3 calls each).
    gw.fake_state().add_fault(Fault {
        path: Some(paths::TEMPLATE_SEND.into()),
        appid: None,
        count: 6,
        action: FaultAction::Errcode {
            errcode: -1,
            errmsg: None,
        },
    });
    let r = post_async(&gw, &template_body(), &[]).await;
    assert_eq!(r.status, 202);
    let st = final_status(&gw, r.header("location").unwrap()).await;
    assert_eq!(st["status"], "failed", "{st:?}");
    assert_eq!(st["attempts"], 2, "{st:?}");
    assert_eq!(st["error"]["code"], "upstream_unavailable", "{st:?}");
    assert_eq!(st["error"]["wechat_errcode"], -1);
    let r = get(&gw, "/v1/admin/apps/oa/dlq", OPS_KEY).await;
    assert_eq!(r.body["dead_letters"].as_array().unwrap().len(), 1);
    assert!(gw
        .calls_to(paths::TEMPLATE_SEND)
        .iter()
        .all(|c| !notified(c)));
    gw.stop().await;
}
