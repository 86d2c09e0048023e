//! The reference "bare hop" of `shared/design/toolbox.md` §6, for `bench/gateway.sh`: an
//! actix-web program that does only what every send must — parse the JSON body, one Redis
//! sliding-log script by EVALSHA, one reqwest POST upstream, answer — so the gateway's cost can
//! be compared against the floor with the same upstream, Redis and load on the same machine.
//!
//! `bare_hop LISTEN REDIS_URL UPSTREAM_URL APPID SECRET`

use actix_web::{web, App, HttpResponse, HttpServer};
use redis::Script;

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
    redis: redis::aio::ConnectionManager,
    script: Script,
    http: reqwest::Client,
    url: String,
}

async fn send(hop: web::Data<Hop>, body: web::Bytes) -> HttpResponse {
    let msg: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return HttpResponse::BadRequest().body(e.to_string()),
    };
    let id = fastrand::u64(..).to_string();
    let allowed: i64 = match hop
        .script
        .key("barehop:rl")
        .arg(1_000_000)
        .arg(1_000_000)
        .arg(&id)
        .invoke_async(&mut hop.redis.clone())
        .await
    {
        Ok(v) => v,
        Err(e) => return HttpResponse::ServiceUnavailable().body(e.to_string()),
    };
    if allowed == 0 {
        return HttpResponse::TooManyRequests().finish();
    }
    match hop.http.post(&hop.url).json(&msg).send().await {
        Ok(r) => HttpResponse::Ok().body(r.bytes().await.unwrap_or_default()),
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
    );
    let redis =
        redis::aio::ConnectionManager::new(redis::Client::open(redis_url.as_str()).unwrap())
            .await
            .expect("redis");
    let hop = web::Data::new(Hop {
        redis,
        script: Script::new(SLIDING_LOG),
        http: reqwest::Client::new(),
        url,
    });
    HttpServer::new(move || {
        App::new()
            .app_data(hop.clone())
            .route("/send", web::post().to(send))
    })
    .workers(1)
    .bind(listen.as_str())?
    .run()
    .await
}
