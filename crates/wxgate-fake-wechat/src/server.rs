//! HTTP: the WeChat paths, the `/_fake/` control API, and the running server.
//!
//! Every WeChat path goes through one default handler that parses the request *before* taking
//! the world's lock and serialises the answer *after* releasing it, so the lock is held only
//! for the state change itself.

use std::borrow::Cow;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, HttpServer};
use serde::{Deserialize, Serialize};

use crate::config::FakeConfig;
use crate::record::{CallRecord, Fault};
use crate::world::{Answer, Api, CallFilter, Outcome, Params, Request, World};

/// WeChat's own content type.
const JSON: &str = "application/json; encoding=utf-8";

/// The world behind its lock. A `std` mutex, not tokio's: it is never held across an
/// `.await`, and it is cheaper.
pub(crate) struct Shared {
    world: Mutex<World>,
}

impl Shared {
    /// A panic while the lock was held (a bug) must not take every later call down with it.
    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A handle on a fake's state, for tests in the same process. Cloning is cheap (an `Arc`).
#[derive(Clone)]
pub struct FakeState {
    shared: Arc<Shared>,
}

impl FakeState {
    fn new(config: &FakeConfig) -> FakeState {
        FakeState {
            shared: Arc::new(Shared {
                world: Mutex::new(World::new(config)),
            }),
        }
    }

    /// Every WeChat-API call received (within `max_records`), in arrival order.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.shared.world().calls(&CallFilter::default())
    }

    /// Forgets the recorded calls; sequence numbers keep counting.
    pub fn clear_calls(&self) {
        self.shared.world().clear_calls();
    }

    /// Adds a fault after the ones already there (the first matching one applies).
    pub fn add_fault(&self, fault: Fault) {
        self.shared.world().add_fault(fault);
    }

    pub fn clear_faults(&self) {
        self.shared.world().clear_faults();
    }

    /// Moves the fake's clock forward (tokens expire, minutes and days roll over). The clock
    /// is system time plus the total advance, so it also keeps running on its own.
    pub fn advance_clock(&self, by: Duration) {
        self.shared.world().advance_clock(by.as_millis() as u64);
    }

    /// The fake's clock, in unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.shared.world().now_ms()
    }

    /// Makes every current token of the app (both families) answer 40001, as if another
    /// system had fetched a classic token behind the gateway's back.
    pub fn invalidate_tokens(&self, appid: &str) {
        self.shared.world().invalidate_tokens(appid);
    }
}

/// A running fake WeChat.
pub struct FakeWechat {
    addr: SocketAddr,
    state: FakeState,
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<io::Result<()>>,
}

impl FakeWechat {
    /// Serves on an already bound listener (tests bind `127.0.0.1:0`). Works inside any tokio
    /// runtime: actix runs its workers on their own threads, and the server future is spawned
    /// on the caller's runtime.
    pub async fn start(config: FakeConfig, listener: TcpListener) -> io::Result<FakeWechat> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let addr = listener.local_addr()?;
        let state = FakeState::new(&config);
        let data = web::Data::from(state.shared.clone());
        let server = HttpServer::new(move || {
            actix_web::App::new()
                .app_data(data.clone())
                .configure(control_routes)
                .default_service(web::to(wechat))
        })
        .listen(listener)?
        .workers(config.workers)
        .disable_signals()
        // Idle keep-alive connections of test clients must not hold `stop` for 30 s.
        .shutdown_timeout(1)
        .run();
        let handle = server.handle();
        let task = tokio::spawn(server);
        tracing::info!(%addr, apps = config.apps.len(), "fake WeChat listening");
        Ok(FakeWechat {
            addr,
            state,
            handle,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (a wildcard bind address is reached through loopback).
    pub fn base_url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}")
    }

    pub fn state(&self) -> FakeState {
        self.state.clone()
    }

    /// Stops accepting, lets calls in flight finish (for at most a second) and waits for the
    /// server task.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        if let Ok(Err(e)) = self.task.await {
            tracing::warn!(error = %e, "fake WeChat server ended with an error");
        }
    }
}

// ---- WeChat paths --------------------------------------------------------------------------

async fn wechat(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let path = req.path();
    if path.starts_with("/_fake") || path == "/favicon.ico" {
        return HttpResponse::NotFound().finish();
    }
    let api = Api::from_path(path);
    let query = req.query_string();
    let params = match api {
        Api::Token => Params::Token {
            grant_type: query_param(query, "grant_type"),
            appid: query_param(query, "appid"),
            secret: query_param(query, "secret"),
        },
        Api::StableToken => Params::Stable(serde_json::from_slice(&body).map_err(drop)),
        Api::TemplateSend | Api::SubscribeSend | Api::Bizsend => Params::Send {
            access_token: query_param(query, "access_token"),
            body: serde_json::from_slice(&body).map_err(drop),
        },
        Api::PrivateTemplates | Api::NewTemplates => Params::List {
            access_token: query_param(query, "access_token"),
        },
        Api::Unknown => Params::None,
    };
    let mut request = Request {
        api,
        path,
        is_post: req.method() == Method::POST,
        params,
        traceparent: req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
    };
    let mut latency_applied = false;
    loop {
        let outcome = shared.world().handle(&mut request, latency_applied);
        match outcome {
            Outcome::Answer(answer) => return respond(answer),
            Outcome::Latency(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                latency_applied = true;
            }
            Outcome::Drop => return dropped(),
        }
    }
}

#[derive(Serialize)]
struct ErrBody<'a> {
    errcode: i64,
    errmsg: &'a str,
}

#[derive(Serialize)]
struct SentBody {
    errcode: i64,
    errmsg: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    msgid: Option<u64>,
}

#[derive(Serialize)]
struct TokenBody<'a> {
    access_token: &'a str,
    expires_in: u64,
}

fn respond(answer: Answer) -> HttpResponse {
    let (status, body) = match &answer {
        Answer::Error { errcode, errmsg } => (
            StatusCode::OK,
            serde_json::to_vec(&ErrBody {
                errcode: *errcode,
                errmsg,
            }),
        ),
        Answer::NotFound => (
            StatusCode::NOT_FOUND,
            serde_json::to_vec(&ErrBody {
                errcode: 40066,
                errmsg: "invalid url",
            }),
        ),
        Answer::Token {
            access_token,
            expires_in,
        } => (
            StatusCode::OK,
            serde_json::to_vec(&TokenBody {
                access_token,
                expires_in: *expires_in,
            }),
        ),
        Answer::Sent { msgid } => (
            StatusCode::OK,
            serde_json::to_vec(&SentBody {
                errcode: 0,
                errmsg: "ok",
                msgid: *msgid,
            }),
        ),
        Answer::PrivateTemplates(list) => (StatusCode::OK, serde_json::to_vec(list)),
        Answer::NewTemplates(list) => (StatusCode::OK, serde_json::to_vec(list)),
    };
    // Serialising these plain structs cannot fail; answer like WeChat if it ever did.
    let body = body.unwrap_or_else(|_| br#"{"errcode":-1,"errmsg":"system error"}"#.to_vec());
    HttpResponse::build(status).content_type(JSON).body(body)
}

/// A response whose body stream fails at once: actix closes the connection before it has
/// written anything, so the client sees an empty reply (`curl: Empty reply from server`,
/// reqwest: an error from `send`), as when WeChat or a proxy drops a connection. Used by both
/// `drop` and `drop_after_processing` faults.
fn dropped() -> HttpResponse {
    let stream = futures_util::stream::once(async {
        Err::<web::Bytes, io::Error>(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "fake WeChat: injected drop",
        ))
    });
    HttpResponse::Ok().content_type(JSON).streaming(stream)
}

/// The first value of `name` in a query string, percent-decoded (borrowed when it needs no
/// decoding, which is always the case for tokens).
fn query_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

// ---- control API ---------------------------------------------------------------------------

fn control_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/_fake")
            .route("/health", web::get().to(health))
            .route("/calls", web::get().to(get_calls))
            .route("/calls", web::delete().to(delete_calls))
            .route("/faults", web::post().to(post_fault))
            .route("/faults", web::delete().to(delete_faults))
            .route("/clock", web::get().to(get_clock))
            .route("/clock", web::post().to(post_clock))
            .route(
                "/apps/{appid}/invalidate_tokens",
                web::post().to(invalidate),
            ),
    );
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn get_calls(shared: web::Data<Shared>, filter: web::Query<CallFilter>) -> HttpResponse {
    let calls = shared.world().calls(&filter);
    HttpResponse::Ok().json(calls)
}

async fn delete_calls(shared: web::Data<Shared>) -> HttpResponse {
    shared.world().clear_calls();
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn post_fault(shared: web::Data<Shared>, fault: web::Json<Fault>) -> HttpResponse {
    shared.world().add_fault(fault.into_inner());
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn delete_faults(shared: web::Data<Shared>) -> HttpResponse {
    shared.world().clear_faults();
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

#[derive(Deserialize)]
struct Advance {
    advance_ms: u64,
}

async fn get_clock(shared: web::Data<Shared>) -> HttpResponse {
    let now_ms = shared.world().now_ms();
    HttpResponse::Ok().json(serde_json::json!({"now_ms": now_ms}))
}

async fn post_clock(shared: web::Data<Shared>, body: web::Json<Advance>) -> HttpResponse {
    let now_ms = {
        let mut world = shared.world();
        world.advance_clock(body.advance_ms);
        world.now_ms()
    };
    HttpResponse::Ok().json(serde_json::json!({"now_ms": now_ms}))
}

async fn invalidate(shared: web::Data<Shared>, appid: web::Path<String>) -> HttpResponse {
    let n = shared.world().invalidate_tokens(&appid);
    HttpResponse::Ok().json(serde_json::json!({"status": "ok", "invalidated": n}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        let q = "grant_type=client_credential&appid=wx1&secret=a%2Bb+c&flag";
        assert_eq!(query_param(q, "appid").as_deref(), Some("wx1"));
        assert_eq!(query_param(q, "secret").as_deref(), Some("a+b c"));
        assert_eq!(query_param(q, "flag").as_deref(), Some(""));
        assert_eq!(query_param(q, "nope"), None);
        assert_eq!(percent_decode("100%").as_ref(), "100%");
        assert_eq!(percent_decode("%zz").as_ref(), "%zz");
    }
}
