//! A zero-cost WeChat for `bench/gateway.sh`: one actix worker that answers every token request
//! with the same token and every message send with the same success, without parsing, checking
//! or recording anything. It is the upstream of the gateway's hot-path benchmark, where the
//! full fake's checks and call record (its own cost on the shared cores) would hide part of the
//! gateway's. Never use it for tests: it proves nothing about what arrived.
//!
//! `zero [LISTEN=127.0.0.1:0]` prints `http://ADDR` once listening.

use actix_web::{web, App, HttpResponse, HttpServer};

const TOKEN: &str = r#"{"access_token":"zero-cost-upstream-token","expires_in":7200}"#;
/// The one template of `bench/gateway.sh`'s sends, for the gateway's template registry.
const TEMPLATES: &str = r#"{"errcode":0,"errmsg":"ok","template_list":[{"template_id":"demo-order-shipped","title":"Order shipped","content":"{{character_string1.DATA}}{{thing2.DATA}}{{time3.DATA}}"}]}"#;
const SENT: &str = r#"{"errcode":0,"errmsg":"ok","msgid":1}"#;

async fn token() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(TOKEN)
}

async fn templates() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(TEMPLATES)
}

/// The body is read (keep-alive needs it) but never parsed.
async fn send(_body: web::Bytes) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(SENT)
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let server = HttpServer::new(|| {
        App::new()
            .route("/cgi-bin/token", web::get().to(token))
            .route("/cgi-bin/stable_token", web::post().to(token))
            .route(
                "/cgi-bin/template/get_all_private_template",
                web::get().to(templates),
            )
            .default_service(web::to(send))
    })
    .workers(1)
    .bind(listen.as_str())?;
    for addr in server.addrs() {
        println!("http://{addr}");
    }
    server.run().await
}
