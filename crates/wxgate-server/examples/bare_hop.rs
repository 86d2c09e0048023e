//! The reference "bare hop" for `bench/gateway.sh`: an actix-web program that does only what
//! every send must — parse the JSON body, one Redis sliding-log script by EVALSHA, one POST
//! upstream (hyper's client, as the gateway's), answer — so the gateway's cost can be compared
//! against the floor with the same upstream, Redis and load on the same machine.
//!
//! `bare_hop LISTEN REDIS_URL UPSTREAM_URL APPID SECRET [hyper|reqwest]` — `reqwest` posts with
//! reqwest instead (the hop as first written, kept so the bench can show what the client
//! costs).

use actix_web::{web, App, HttpResponse, HttpServer};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use redis::Script;

/// The same allocator as the gateway's binary, so neither side is measured with a handicap
/// the other has not (it makes no measurable difference to the hop: BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SLIDING_LOG: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], 2000)
return 1
";

struct Hop {
    redis: redis::Client,
    script: Script,
    /// hyper's client, as the gateway's upstream crate uses (reqwest's per-request URL parsing
    /// would make the floor slower than the gateway).
    http: Client<HttpConnector, Full<Bytes>>,
    url: http::Uri,
    /// Set when the hop posts with reqwest.
    reqwest: Option<reqwest::Client>,
}

/// The worker's own Redis connection, made on its first request: a multiplexed connection's
/// driver runs on the runtime that made it, so one made on another runtime would make every
/// command cross threads (the gateway does the same, see the store's connection module).
#[derive(Default)]
struct WorkerRedis(tokio::sync::OnceCell<redis::aio::MultiplexedConnection>);

async fn send(
    hop: web::Data<Hop>,
    worker: web::Data<WorkerRedis>,
    body: web::Bytes,
) -> HttpResponse {
    let msg: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return HttpResponse::BadRequest().body(e.to_string()),
    };
    let conn = worker
        .0
        .get_or_try_init(|| hop.redis.get_multiplexed_async_connection())
        .await;
    let mut conn = match conn {
        Ok(c) => c.clone(),
        Err(e) => return HttpResponse::ServiceUnavailable().body(e.to_string()),
    };
    let id = fastrand::u64(..).to_string();
    let allowed: i64 = match hop
        .script
        .key("barehop:rl")
        .arg(1_000_000)
        .arg(1_000_000)
        .arg(&id)
        .invoke_async(&mut conn)
        .await
    {
        Ok(v) => v,
        Err(e) => return HttpResponse::ServiceUnavailable().body(e.to_string()),
    };
    if allowed == 0 {
        return HttpResponse::TooManyRequests().finish();
    }
    if let Some(client) = &hop.reqwest {
        return match client.post(hop.url.to_string()).json(&msg).send().await {
            Ok(r) => HttpResponse::Ok().body(r.bytes().await.unwrap_or_default()),
            Err(e) => HttpResponse::BadGateway().body(e.to_string()),
        };
    }
    let body = serde_json::to_vec(&msg).unwrap_or_default();
    let req = http::Request::post(hop.url.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    match hop.http.request(req).await {
        Ok(r) => match r.into_body().collect().await {
            Ok(b) => HttpResponse::Ok().body(b.to_bytes()),
            Err(e) => HttpResponse::BadGateway().body(e.to_string()),
        },
        Err(e) => HttpResponse::BadGateway().body(e.to_string()),
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let (listen, redis_url, upstream, appid, secret) = (&a[1], &a[2], &a[3], &a[4], &a[5]);
    let token: serde_json::Value = reqwest::Client::new()
        .post(format!("{upstream}/cgi-bin/stable_token"))
        .json(&serde_json::json!({"grant_type": "client_credential", "appid": appid, "secret": secret}))
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("token json");
    let url = format!(
        "{upstream}/cgi-bin/message/template/send?access_token={}",
        token["access_token"].as_str().expect("access_token")
    )
    .parse()
    .expect("upstream URL");
    let redis = redis::Client::open(redis_url.as_str()).expect("redis url");
    let hop = web::Data::new(Hop {
        redis,
        script: Script::new(SLIDING_LOG),
        http: Client::builder(TokioExecutor::new()).build_http(),
        reqwest: (a.get(6).map(String::as_str) == Some("reqwest")).then(reqwest::Client::new),
        url,
    });
    HttpServer::new(move || {
        App::new()
            .app_data(hop.clone())
            .app_data(web::Data::new(WorkerRedis::default()))
            .route("/send", web::post().to(send))
    })
    .workers(1)
    .bind(listen.as_str())?
    .run()
    .await
}
